"""A read pass for the benchmarks' cache flush.

Timing a layer cold means evicting its weights from the last-level cache before each
call. A memset does that but leaves the cache full of dirty lines, whose write-back the
timed call then pays: on an H100 (50 MB L2) about 9 us of qwen3-30b-a3b's 44 us decode
at T = 1 (docs/performance-log.md #23). Reading a buffer larger than the cache evicts
as well and leaves clean lines, as the reads of a real model's previous layer do.
"""
import triton
import triton.language as tl


@triton.jit
def read_through(src, sums, words, BLOCK: tl.constexpr):
    """Reads src[0:words] (int32), BLOCK words per program, and writes each program's sum
    to sums[program] (the stores keep the loads from being optimised away)."""
    pid = tl.program_id(0)
    offsets = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(sums + pid, tl.sum(tl.load(src + offsets, mask=offsets < words, other=0), 0))
