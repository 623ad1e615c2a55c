"""tritonmoe: a Mixture-of-Experts layer for LLM inference.

A thin binding over libtmoe's C ABI through ctypes (nothing to compile). It
takes torch tensors (through data_ptr) or any DLPack producer (numpy >= 1.22,
cupy, jax, ...). libtmoe.so is found through $TMOE_LIBRARY (the file or its
build directory), else <repository>/build/libtmoe.so, else the system loader.

    import tmoe
    out = tmoe.fused_moe(x, w13, w2, topk_weights, topk_ids)
    out = tmoe.moe_layer(x, router_logits, w13, w2, top_k=2, renormalize=True)
    tmoe.plan(tmoe.moe_layer, x, router_logits, w13, w2, top_k=2)  # what it would launch

`import tmoe.torch_ops` registers torch.ops.tmoe.fused_moe and
torch.ops.tmoe.moe_layer for torch.compile and CUDA graphs; importing tmoe
after torch does so too.
"""
import sys

from ._api import Context, Plan, build_info, device_count, fused_moe, get_context, moe_layer, plan, version
from ._capi import Error, Status

__all__ = [
    "Context", "Error", "Plan", "Status", "build_info", "device_count", "fused_moe", "get_context", "moe_layer", "plan",
    "version",
]

# Registering the ops needs torch; only do it here when torch is loaded anyway,
# so that numpy users never pay for importing it.
if "torch" in sys.modules:
    from . import torch_ops  # noqa: F401
