"""Tile addressing shared by the two grouped GEMMs (gate_up_swiglu, down).

Rows of a GEMM are padded positions of the alignment (src/core/align.hpp): the
program's BLOCK_M block of sorted_slots belongs to one expert, block_expert[block].
With ROUTED false the same kernels run a dense problem (the shared expert): row r
is slot r, of expert 0, and sorted_slots and block_expert are not read.
The grid is num_m_blocks * cdiv(N, BLOCK_N) programs, M blocks varying fastest so
that the programs in flight share the weight tile of one N block.
"""
import triton
import triton.language as tl


@triton.jit
def tile_coords(N, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    num_m_blocks = tl.num_programs(0) // tl.cdiv(N, BLOCK_N)
    return pid % num_m_blocks, pid // num_m_blocks


@triton.jit
def tile_expert(block_expert, pid_m, ROUTED: tl.constexpr):
    """The block's expert; -1 for blocks past the padded total (the grid is sized for the worst case)."""
    if ROUTED:
        return tl.load(block_expert + pid_m)
    else:
        return tl.zeros([], tl.int32)


@triton.jit
def tile_slots(sorted_slots, pid_m, num_slots, BLOCK_M: tl.constexpr, ROUTED: tl.constexpr):
    """Padded positions of the block's rows, their slots, and which rows hold a slot."""
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if ROUTED:
        slots = tl.load(sorted_slots + rows)
    else:
        slots = rows
    return rows, slots, slots < num_slots
