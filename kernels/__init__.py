"""Triton kernels of the MoE pipeline, one module per stage (see docs/kernels.md).

They know nothing of the host: tools/aot compiles them into a bundle that the
C++ runtime launches through the manifest, and kernels/tests runs them with
Triton's JIT against torch.
"""
