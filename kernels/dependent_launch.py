"""Programmatic dependent launch (Hopper): where the tuned choice asks for it
(KernelChoice::dependent_launch, performance-log.md #37), the host launches a kernel
whose variant sets PDL with the launch attribute that lets it start while the kernel
before it on the stream is still running. Such a kernel first lets the kernel after
it launch, then waits until every write of the kernel before it is visible, before
touching memory:
only the launch latency and the programs' start overlap, so no buffer is read or
written early (performance-log.md #36). The persistent GEMM tiles keep PDL off
(tools/aot/variants.py): their programs run the whole kernel, so the next kernel's
programs, let in at their start, would wait beside them all along (with PDL on there,
qwen3 T = 8192 ran 6% slower)."""
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


@triton.jit
def wait_for_previous_kernel(PDL: tl.constexpr):
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
