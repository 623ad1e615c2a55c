"""Stage 4, down_combine: y = (h @ w2[expert]^T) * routing weight, per slot, then
out[t] = sum of token t's rows of y, in fixed order, in f32.

y has y_rows_per_token rows per token: the routed down GEMM writes slot t*top_k + j
to row t*y_rows_per_token + j, and the shared expert, run as a dense problem
(ROUTED false, weight 1), writes row t*y_rows_per_token + y_first_row. combine then
sums every row of a token in one pass over out: deterministic, no atomics.
y is typed as the activations (each expert's output rounded once; the sum is f32),
so with one row per token and no shared expert, down writes out itself.
With PADDED_Y (a warp-specialized tile, padded_tiles below) the routed down writes
each slot's row unweighted at its padded position instead, the shared expert's rows
from y_first_row on, and combine gathers each slot's row through slot_positions and
weighs it.
"""
import triton
import triton.language as tl

from kernels.dependent_launch import wait_for_previous_kernel
from kernels.grouped_gemm import (FOLDS_NEXT, FULL_BLOCK, HALF_BLOCK, padded_blocks, program_tile, tail_plan, tile_place,
                                  tile_slots, walked_blocks)
from kernels.row_tiles import row_and_columns


@triton.jit
def down(h, w2, y, sorted_slots, block_expert, topk_weights, expert_offsets, num_slots, top_k, H, I, E, num_m_blocks,
         y_rows_per_token, y_first_row, ROUTED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
         BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, GROUP_BY_EXPERT: tl.constexpr, TMA: tl.constexpr,
         PERSISTENT: tl.constexpr, HALF_TAIL: tl.constexpr, FOLD_TAIL: tl.constexpr, PADDED_Y: tl.constexpr,
         WARP_SPECIALIZE: tl.constexpr, FLATTEN: tl.constexpr, PDL: tl.constexpr):
    wait_for_previous_kernel(PDL)
    if PADDED_Y:
        tl.static_assert(ROUTED and PERSISTENT > 0, "PADDED_Y is a routed persistent tile")
        padded_tiles(h, w2, y, block_expert, expert_offsets, H, I, E, num_m_blocks, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M,
                     GROUP_BY_EXPERT, WARP_SPECIALIZE)
    elif PERSISTENT:
        persistent_tiles(h, w2, y, sorted_slots, block_expert, topk_weights, expert_offsets, num_slots, top_k, H, I, E,
                         num_m_blocks, y_rows_per_token, y_first_row, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M,
                         GROUP_BY_EXPERT, HALF_TAIL, FOLD_TAIL, FLATTEN)
    else:
        pid_m, pid_n, expert = program_tile(H, block_expert, expert_offsets, ROUTED, BLOCK_M, BLOCK_N, GROUP_M,
                                            GROUP_BY_EXPERT)
        if expert < 0:
            return
        if HALF_TAIL:
            # The persistent tiles' half-height tail blocks on one tile per program (#53).
            tl.static_assert(ROUTED and TMA, "HALF_TAIL needs a routed TMA tile")
            h_desc, h_half_desc, w_desc = routed_descriptors(h, w2, E, H, I, num_m_blocks, BLOCK_M, BLOCK_N, BLOCK_K,
                                                             HALF_TAIL)
            half_or_full_tile(h_desc, h_half_desc, w_desc, y, sorted_slots, block_expert, topk_weights, pid_m, expert,
                              pid_n, num_slots, num_m_blocks, top_k, H, I, y_rows_per_token, y_first_row, BLOCK_M,
                              BLOCK_N, BLOCK_K, HALF_TAIL, FOLD_TAIL)
            return
        rows, slots, has_slot = tile_slots(sorted_slots, pid_m, num_slots, BLOCK_M, ROUTED)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < H
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        if TMA:
            # Both operands through device-side tensor descriptors (TMA on Hopper, which
            # zero-fills past the edges: no masks; 16% faster than the pointer loads on
            # mixtral T = 8192, performance-log.md #15). h's rows are contiguous per block;
            # padding rows are never stored.
            h_rows = num_m_blocks * BLOCK_M if ROUTED else num_slots
            h_desc = tl.make_tensor_descriptor(h, shape=[h_rows, I], strides=[I, 1], block_shape=[BLOCK_M, BLOCK_K])
            w_desc = tl.make_tensor_descriptor(w2 + expert.to(tl.int64) * H * I, shape=[H, I], strides=[I, 1],
                                               block_shape=[BLOCK_N, BLOCK_K])
            for k0 in range(0, I, BLOCK_K):
                acc = tl.dot(h_desc.load([pid_m * BLOCK_M, k0]), w_desc.load([pid_n * BLOCK_N, k0]).T, acc)
        else:
            ks = tl.arange(0, BLOCK_K)
            h_tile = h + rows.to(tl.int64)[:, None] * I + ks[None, :]
            # Weight rows past H wrap to valid ones (never stored): no column mask on the weight loads.
            w_tile = w2 + expert.to(tl.int64) * H * I + (cols % H).to(tl.int64)[None, :] * I + ks[:, None]
            for k0 in range(0, I, BLOCK_K):
                k_ok = ks < I - k0
                a = tl.load(h_tile, mask=has_slot[:, None] & k_ok[None, :], other=0.0)
                acc = tl.dot(a, tl.load(w_tile, mask=k_ok[:, None], other=0.0), acc)
                h_tile += BLOCK_K
                w_tile += BLOCK_K
        store_rows(y, acc, topk_weights, slots, has_slot, cols, col_ok, top_k, H, y_rows_per_token, y_first_row,
                   ROUTED)


@triton.jit
def persistent_tiles(h, w2, y, sorted_slots, block_expert, topk_weights, expert_offsets, num_slots, top_k, H, I, E,
                     num_m_blocks, y_rows_per_token, y_first_row, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, GROUP_BY_EXPERT: tl.constexpr,
                     HALF_TAIL: tl.constexpr, FOLD_TAIL: tl.constexpr, FLATTEN: tl.constexpr):
    """The routed down GEMM on a persistent grid (PERSISTENT programs per multiprocessor,
    the host caps the grid at that many): each program walks tiles pid, pid + programs,
    ... in the grouped order, both operands through tensor descriptors made once for
    all its tiles (w2 seen as [E, H, I]), so one tile's epilogue overlaps the next
    tile's loads and padding blocks cost a loop step (qwen3-30b-a3b T = 8192 on an
    H100: 10% faster than one tile per program, performance-log.md #20).
    With HALF_TAIL (m128 t8, performance-log.md #31) a
    block whose slots fit in its first BLOCK_M / 2 rows (an expert's last block:
    the slots of a block are a prefix) multiplies only those rows; with FOLD_TAIL the
    block before such a block takes its rows as a tail of its own tile
    (grouped_gemm.tail_plan), from the same weight tiles. With FLATTEN
    (grouped_gemm.walked_blocks) Triton fuses the tile and K loops into one pipelined
    loop."""
    num_n_blocks = tl.cdiv(H, BLOCK_N)
    h_desc, h_half_desc, w_desc = routed_descriptors(h, w2, E, H, I, num_m_blocks, BLOCK_M, BLOCK_N, BLOCK_K, HALF_TAIL)
    m_blocks = walked_blocks(num_m_blocks, expert_offsets, E, BLOCK_M, HALF_TAIL, FLATTEN)
    for tile in tl.range(tl.program_id(0), m_blocks * num_n_blocks, tl.num_programs(0), flatten=FLATTEN):
        pid_m, pid_n, expert = tile_place(tile, m_blocks, num_n_blocks, block_expert, expert_offsets, True, BLOCK_M,
                                          GROUP_M, GROUP_BY_EXPERT)
        if FLATTEN:  # every walked block is an expert's: no branch to keep the loops apart
            rows_tile(h_desc, None, w_desc, y, sorted_slots, topk_weights, pid_m * BLOCK_M, expert, pid_n, num_slots,
                      top_k, H, I, y_rows_per_token, y_first_row, BLOCK_M, BLOCK_N, BLOCK_K, 0)
        elif expert >= 0:
            half_or_full_tile(h_desc, h_half_desc, w_desc, y, sorted_slots, block_expert, topk_weights, pid_m, expert,
                              pid_n, num_slots, num_m_blocks, top_k, H, I, y_rows_per_token, y_first_row, BLOCK_M,
                              BLOCK_N, BLOCK_K, HALF_TAIL, FOLD_TAIL)


@triton.jit
def padded_tiles(h, w2, y, block_expert, expert_offsets, H, I, E, num_m_blocks, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, GROUP_BY_EXPERT: tl.constexpr,
                 WARP_SPECIALIZE: tl.constexpr):
    """The routed down GEMM on a persistent grid that writes y by padded position,
    unweighted, through a tensor descriptor (combine gathers and weighs the rows).
    With WARP_SPECIALIZE (cuda:90) Triton splits the tile loop into a TMA producer
    warp group and two MMA consumers, so one tile's epilogue overlaps the next tile's
    loads: on an H100 qwen3-30b-a3b T = 8192 0.389 ms against the persistent t7's
    0.434 (performance-log.md #62). Triton 3.6 miscompiles pointer loads and stores
    after the K loop of such a loop (rows 64-127 of each block never stored, routing
    weights misread, #62): hence this epilogue touches memory only through the
    descriptor, and the walk ends at the alignment's padded total, read here, instead
    of branching around blocks past it."""
    num_n_blocks = tl.cdiv(H, BLOCK_N)
    h_desc, _, w_desc = routed_descriptors(h, w2, E, H, I, num_m_blocks, BLOCK_M, BLOCK_N, BLOCK_K, False)
    y_desc = tl.make_tensor_descriptor(y, shape=[num_m_blocks * BLOCK_M, H], strides=[H, 1],
                                       block_shape=[BLOCK_M, BLOCK_N])
    m_blocks = padded_blocks(expert_offsets, E, BLOCK_M)
    for tile in tl.range(tl.program_id(0), m_blocks * num_n_blocks, tl.num_programs(0),
                         warp_specialize=WARP_SPECIALIZE):
        pid_m, pid_n, expert = tile_place(tile, m_blocks, num_n_blocks, block_expert, expert_offsets, True, BLOCK_M,
                                          GROUP_M, GROUP_BY_EXPERT)
        acc = expert_rows_product(h_desc, None, w_desc, pid_m * BLOCK_M, expert, pid_n, I, BLOCK_M, BLOCK_N, BLOCK_K, 0)
        y_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], acc.to(y.dtype.element_ty))


@triton.jit
def routed_descriptors(h, w2, E, H, I, num_m_blocks, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr, HALF_TAIL: tl.constexpr):
    """Tensor descriptors over h's padded rows (BLOCK_M-row blocks, and with HALF_TAIL
    half-height ones; without it the full one stands in) and over w2 seen as [E, H, I]."""
    h_desc = tl.make_tensor_descriptor(h, shape=[num_m_blocks * BLOCK_M, I], strides=[I, 1],
                                       block_shape=[BLOCK_M, BLOCK_K])
    if HALF_TAIL:
        h_half_desc = tl.make_tensor_descriptor(h, shape=[num_m_blocks * BLOCK_M, I], strides=[I, 1],
                                                block_shape=[BLOCK_M // 2, BLOCK_K])
    else:
        h_half_desc = h_desc
    w_desc = tl.make_tensor_descriptor(w2, shape=[E, H, I], strides=[H * I, I, 1], block_shape=[1, BLOCK_N, BLOCK_K])
    return h_desc, h_half_desc, w_desc


@triton.jit
def half_or_full_tile(h_desc, h_half_desc, w_desc, y, sorted_slots, block_expert, topk_weights, pid_m, expert, pid_n,
                      num_slots, num_m_blocks, top_k, H, I, y_rows_per_token, y_first_row, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, HALF_TAIL: tl.constexpr, FOLD_TAIL: tl.constexpr):
    """Block pid_m's rows as grouped_gemm.tail_plan says (half-height rows through h_half_desc)."""
    if HALF_TAIL:  # a constexpr test of its own: without it no half-height code is compiled
        plan = tail_plan(sorted_slots, block_expert, pid_m, expert, num_slots, num_m_blocks, BLOCK_M, FOLD_TAIL)
        if plan == FOLDS_NEXT:
            rows_tile(h_desc, h_half_desc, w_desc, y, sorted_slots, topk_weights, pid_m * BLOCK_M, expert, pid_n,
                      num_slots, top_k, H, I, y_rows_per_token, y_first_row, BLOCK_M, BLOCK_N, BLOCK_K, BLOCK_M // 2)
        elif plan == HALF_BLOCK:
            rows_tile(h_half_desc, None, w_desc, y, sorted_slots, topk_weights, pid_m * BLOCK_M, expert, pid_n,
                      num_slots, top_k, H, I, y_rows_per_token, y_first_row, BLOCK_M // 2, BLOCK_N, BLOCK_K, 0)
        elif plan == FULL_BLOCK:
            rows_tile(h_desc, None, w_desc, y, sorted_slots, topk_weights, pid_m * BLOCK_M, expert, pid_n, num_slots,
                      top_k, H, I, y_rows_per_token, y_first_row, BLOCK_M, BLOCK_N, BLOCK_K, 0)
    else:
        rows_tile(h_desc, None, w_desc, y, sorted_slots, topk_weights, pid_m * BLOCK_M, expert, pid_n, num_slots,
                  top_k, H, I, y_rows_per_token, y_first_row, BLOCK_M, BLOCK_N, BLOCK_K, 0)


@triton.jit
def rows_tile(h_desc, h_tail_desc, w_desc, y, sorted_slots, topk_weights, first_row, expert, pid_n, num_slots, top_k, H,
              I, y_rows_per_token, y_first_row, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
              TAIL_ROWS: tl.constexpr):
    """ROWS rows of h from padded position first_row, times w2[expert]'s BLOCK_N block pid_n, into
    y; and TAIL_ROWS more rows from first_row + ROWS (FOLD_TAIL's next block, through
    h_tail_desc; 0: none, h_tail_desc None) in an accumulator of their own, from the
    same weight tiles."""
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if TAIL_ROWS:
        acc, tail_acc = expert_rows_product(h_desc, h_tail_desc, w_desc, first_row, expert, pid_n, I, ROWS, BLOCK_N,
                                            BLOCK_K, TAIL_ROWS)
        store_block_rows(y, tail_acc, topk_weights, sorted_slots, first_row + ROWS, cols, num_slots, top_k, H,
                         y_rows_per_token, y_first_row, TAIL_ROWS)
    else:
        acc = expert_rows_product(h_desc, None, w_desc, first_row, expert, pid_n, I, ROWS, BLOCK_N, BLOCK_K, 0)
    store_block_rows(y, acc, topk_weights, sorted_slots, first_row, cols, num_slots, top_k, H, y_rows_per_token,
                     y_first_row, ROWS)


@triton.jit
def store_block_rows(y, acc, topk_weights, sorted_slots, first_row, cols, num_slots, top_k, H, y_rows_per_token,
                     y_first_row, ROWS: tl.constexpr):
    """store_rows for the ROWS padded positions from first_row."""
    slots = tl.load(sorted_slots + (first_row + tl.arange(0, ROWS)))
    has_slot = slots < num_slots
    store_rows(y, acc, topk_weights, slots, has_slot, cols, cols < H, top_k, H, y_rows_per_token, y_first_row, True)


@triton.jit
def expert_rows_product(h_desc, h_tail_desc, w_desc, first_row, expert, pid_n, I, ROWS: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, TAIL_ROWS: tl.constexpr):
    """ROWS rows of h from padded position first_row times w2[expert]'s BLOCK_N block pid_n, in
    float32; with TAIL_ROWS also the next TAIL_ROWS rows' (through h_tail_desc), as a second result."""
    acc = tl.zeros([ROWS, BLOCK_N], tl.float32)
    if TAIL_ROWS:
        tail_acc = tl.zeros([TAIL_ROWS, BLOCK_N], tl.float32)
    for k0 in range(0, I, BLOCK_K):
        w = w_desc.load([expert, pid_n * BLOCK_N, k0]).reshape(BLOCK_N, BLOCK_K)
        acc = tl.dot(h_desc.load([first_row, k0]), w.T, acc)
        if TAIL_ROWS:
            tail_acc = tl.dot(h_tail_desc.load([first_row + ROWS, k0]), w.T, tail_acc)
    if TAIL_ROWS:
        return acc, tail_acc
    else:
        return acc


@triton.jit
def store_rows(y, acc, topk_weights, slots, has_slot, cols, col_ok, top_k, H, y_rows_per_token, y_first_row,
               ROUTED: tl.constexpr):
    """A tile's rows of y: each slot's row times its routing weight (routed), rounded once."""
    if ROUTED:
        acc = acc * tl.load(topk_weights + slots, mask=has_slot, other=0.0)[:, None]
    tokens = slots // top_k
    y_rows = tokens * y_rows_per_token + y_first_row + (slots - tokens * top_k)
    y_tile = y + y_rows.to(tl.int64)[:, None] * H + cols[None, :]
    tl.store(y_tile, acc.to(y.dtype.element_ty), mask=has_slot[:, None] & col_ok[None, :])


@triton.jit
def combine(y, out, slot_positions, topk_weights, H, rows_per_token, top_k, shared_first_row, BLOCK_H: tl.constexpr,
            PADDED_Y: tl.constexpr, PDL: tl.constexpr):
    wait_for_previous_kernel(PDL)
    token, cols, col_ok = row_and_columns(H, BLOCK_H)
    token = token.to(tl.int64)
    acc = tl.zeros([BLOCK_H], tl.float32)
    if PADDED_Y:
        # Each slot's row where down wrote it (its padded position), weighed here; the
        # shared expert's row (weight 1) after them.
        for j in range(top_k):
            slot = token * top_k + j
            row = tl.load(slot_positions + slot).to(tl.int64)
            acc += tl.load(topk_weights + slot) * tl.load(y + row * H + cols, mask=col_ok, other=0.0).to(tl.float32)
        if rows_per_token > top_k:
            acc += tl.load(y + (shared_first_row + token) * H + cols, mask=col_ok, other=0.0).to(tl.float32)
    else:
        for j in range(rows_per_token):
            acc += tl.load(y + (token * rows_per_token + j) * H + cols, mask=col_ok, other=0.0)
    tl.store(out + token * H + cols, acc.to(out.dtype.element_ty), mask=col_ok)
