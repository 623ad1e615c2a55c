"""Tile addressing shared by the two grouped GEMMs (gate_up_swiglu, down).

Rows of a GEMM are padded positions of the alignment (src/core/align.hpp): the
program's BLOCK_M block of sorted_slots belongs to one expert, block_expert[block].
With ROUTED false the same kernels run a dense problem (the shared expert): row r
is slot r, of expert 0, and sorted_slots and block_expert are not read.
The grid is num_m_blocks * cdiv(N, BLOCK_N) programs. Consecutive programs walk
the M blocks of a group, then step to the next N block: with many M blocks (many
experts, or large T) a group of GROUP_M keeps the programs in flight on a few A
tiles and a few weight tiles, which then stay in L2 (measured on an H100: 10-22%
faster at T >= 512 on qwen3-30b-a3b, gpt-oss-120b and deepseek-v3). With few M
blocks all of them form one group (M fastest over the whole grid): grouping there
split mixtral's weight stream and cost 17% at T = 256. GROUP_M is a tile
constexpr: the best group differs by shape (16 helped mixtral T = 8192 by 4% and
cost qwen3 2.5%), so `tmoe tune` picks it with the tile. With GROUP_BY_EXPERT no
group holds two experts' blocks (an expert's blocks form groups of GROUP_M from its
first): a group that splits an expert reads the expert's weights once for each part,
from DRAM where the other part runs a group later (on an H200 alone: 1-9% faster at
T >= 2048 on deepseek-v3, gpt-oss-120b and mixtral-8x7b, performance-log.md #79).

The weight tiles are loaded without a column mask: a program's columns past N read
wrapped, valid rows (column % N) whose results are never stored. The masked load
(K mask and column mask) cost the down GEMM 22% at mixtral-8x7b T = 8192 on an H100
(3.91 -> 3.07 ms for the same tile; performance-log.md #10); vLLM's kernel wraps the same way.
"""
import triton
import triton.language as tl


# Below this many M blocks the whole grid is one group.
MIN_BLOCKS_TO_GROUP = tl.constexpr(32)


@triton.jit
def tile_place(tile, num_m_blocks, num_n_blocks, block_expert, expert_offsets, ROUTED: tl.constexpr,
               BLOCK_M: tl.constexpr, GROUP_M: tl.constexpr, GROUP_BY_EXPERT: tl.constexpr):
    """(M block, N block, expert) of the tile-th tile in the grouped order; expert -1 for
    blocks past the padded total (grids are sized for the worst case)."""
    pid_m, pid_n = grouped_tile(tile, num_m_blocks, num_n_blocks, GROUP_M)
    if GROUP_BY_EXPERT:
        tl.static_assert(ROUTED, "GROUP_BY_EXPERT groups a routed GEMM's blocks")
        by_expert_m, by_expert_n = expert_grouped_tile(tile, num_n_blocks, block_expert, expert_offsets, BLOCK_M,
                                                       GROUP_M)
        grouped = num_m_blocks >= MIN_BLOCKS_TO_GROUP
        pid_m = tl.where(grouped, by_expert_m, pid_m)
        pid_n = tl.where(grouped, by_expert_n, pid_n)
    if ROUTED:
        expert = tl.load(block_expert + pid_m)
    else:
        expert = tl.zeros([], tl.int32)
    return pid_m, pid_n, expert


@triton.jit
def program_tile(N, block_expert, expert_offsets, ROUTED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 GROUP_M: tl.constexpr, GROUP_BY_EXPERT: tl.constexpr):
    """tile_place of this program's tile: one tile per program, the grid M blocks * N blocks."""
    num_n_blocks = tl.cdiv(N, BLOCK_N)
    return tile_place(tl.program_id(0), tl.num_programs(0) // num_n_blocks, num_n_blocks, block_expert, expert_offsets,
                      ROUTED, BLOCK_M, GROUP_M, GROUP_BY_EXPERT)


@triton.jit
def grouped_tile(tile, num_m_blocks, num_n_blocks, GROUP_M: tl.constexpr):
    """(M block, N block) of the tile-th tile in the grouped order, groups of GROUP_M blocks from block 0."""
    group_m = tl.where(num_m_blocks < MIN_BLOCKS_TO_GROUP, num_m_blocks, GROUP_M)
    tiles_per_group = group_m * num_n_blocks
    first_m = (tile // tiles_per_group) * group_m
    group_rows = tl.minimum(num_m_blocks - first_m, group_m)
    within = tile % tiles_per_group
    return first_m + within % group_rows, within // group_rows


@triton.jit
def expert_grouped_tile(tile, num_n_blocks, block_expert, expert_offsets, BLOCK_M: tl.constexpr,
                        GROUP_M: tl.constexpr):
    """(M block, N block) of the tile-th tile when each expert's blocks form groups of GROUP_M
    from its first. Expert e's tiles are first_m * num_n_blocks ... (first_m + its blocks) *
    num_n_blocks - 1, so block tile // num_n_blocks is one of e's; a block past the padded
    total (expert -1) stays itself."""
    block = tile // num_n_blocks
    expert = tl.load(block_expert + block)
    offsets = expert_offsets + tl.maximum(expert, 0)
    first_row = tl.load(offsets)
    first_m = first_row // BLOCK_M
    expert_blocks = (tl.load(offsets + 1) - first_row) // BLOCK_M
    within_expert = tile - first_m * num_n_blocks
    group = within_expert // (GROUP_M * num_n_blocks)
    group_rows = tl.maximum(tl.minimum(expert_blocks - group * GROUP_M, GROUP_M), 1)
    within = within_expert - group * GROUP_M * num_n_blocks
    pid_m = tl.where(expert >= 0, first_m + group * GROUP_M + within % group_rows, block)
    pid_n = tl.where(expert >= 0, within // group_rows, tile % num_n_blocks)
    return pid_m, pid_n


@triton.jit
def padded_blocks(expert_offsets, E, BLOCK_M: tl.constexpr):
    """The alignment's padded total in M blocks (expert_offsets[E]), read on the device."""
    return tl.load(expert_offsets + E) // BLOCK_M


@triton.jit
def walked_blocks(num_m_blocks, expert_offsets, E, BLOCK_M: tl.constexpr, HALF_TAIL: tl.constexpr,
                  FLATTEN: tl.constexpr):
    """The M blocks a persistent tile walks: the grid's worst case, or with FLATTEN the
    padded total. Then every walked block is an expert's and the tile loop holds no
    branch around padding blocks, which would keep Triton from fusing it with the K
    loop into one pipelined loop (the next tile's loads in flight during this tile's
    last K steps and epilogue; on an H200 alone, qwen3-30b-a3b's down 4% faster at T = 512-1024,
    performance-log.md #82)."""
    if FLATTEN:
        tl.static_assert(not HALF_TAIL, "a FLATTEN tile has no half-height branch")
        return padded_blocks(expert_offsets, E, BLOCK_M)
    else:
        return num_m_blocks


@triton.jit
def tile_slots(sorted_slots, pid_m, num_slots, BLOCK_M: tl.constexpr, ROUTED: tl.constexpr):
    """Padded positions of the block's rows, their slots, and which rows hold a slot."""
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if ROUTED:
        slots = tl.load(sorted_slots + rows)
    else:
        slots = rows
    return rows, slots, slots < num_slots


@triton.jit
def fits_half(sorted_slots, pid_m, num_slots, BLOCK_M: tl.constexpr):
    """Whether the block's slots fit in its first BLOCK_M / 2 rows (an expert's last
    block: a block's slots are a prefix), for HALF_TAIL."""
    _, _, has_slot = tile_slots(sorted_slots, pid_m, num_slots, BLOCK_M, True)
    return tl.sum(has_slot.to(tl.int32)) <= BLOCK_M // 2


# What a HALF_TAIL tile does with its block (tail_plan).
FULL_BLOCK = tl.constexpr(0)  # all BLOCK_M rows
HALF_BLOCK = tl.constexpr(1)  # its first BLOCK_M / 2 rows, where its slots all are
FOLDS_NEXT = tl.constexpr(2)  # FOLD_TAIL: all its rows, and the next block's first BLOCK_M / 2
FOLDED = tl.constexpr(3)      # FOLD_TAIL: nothing, the block before multiplies its rows


@triton.jit
def tail_plan(sorted_slots, block_expert, pid_m, expert, num_slots, num_m_blocks, BLOCK_M: tl.constexpr,
              FOLD_TAIL: tl.constexpr):
    """For a HALF_TAIL tile: HALF_BLOCK, FOLDS_NEXT, FOLDED or FULL_BLOCK for block pid_m.
    FOLD_TAIL folds an expert's last block, where its slots fit in BLOCK_M / 2 rows, into
    the block before: then the weight tiles stream once for an expert a few rows past a
    multiple of BLOCK_M, where a tail block of its own reads them all again through L2
    (mixtral-8x7b T = 512 on an H100: gate_up bound by L2, performance-log.md #76)."""
    half = fits_half(sorted_slots, pid_m, num_slots, BLOCK_M)
    plan = tl.where(half, HALF_BLOCK, FULL_BLOCK)
    if FOLD_TAIL:
        next_m = tl.minimum(pid_m + 1, num_m_blocks - 1)
        next_expert = tl.where(pid_m + 1 < num_m_blocks, tl.load(block_expert + next_m), -1)
        previous_expert = tl.where(pid_m > 0, tl.load(block_expert + tl.maximum(pid_m - 1, 0)), -1)
        takes_next = (next_expert == expert) & fits_half(sorted_slots, next_m, num_slots, BLOCK_M)
        taken = (previous_expert == expert) & half
        plan = tl.where(takes_next, FOLDS_NEXT, tl.where(taken, FOLDED, plan))
    return plan
