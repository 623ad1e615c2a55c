"""Stage 3, gate_up_swiglu: h = silu(x @ gate^T) * (x @ up^T) over the sorted slots.

Each program gathers the token rows of its BLOCK_M block of slots (token = slot //
top_k), streams the gate rows n and the up rows I + n of w13[expert] through two
f32 accumulators and writes only h: the [slots, 2I] intermediate never exists.
With JOINED the gate and up tiles form one [BLOCK_K, 2*BLOCK_N] operand of a single
dot (on Hopper one m64n256 wgmma instead of two m64n128), split after the loop.
h is indexed by padded position (its rows line up with the down GEMM's blocks).
"""
import triton
import triton.language as tl

from kernels.dependent_launch import wait_for_previous_kernel
from kernels.grouped_gemm import (FOLDS_NEXT, FULL_BLOCK, HALF_BLOCK, program_tile, tail_plan, tile_place, tile_slots,
                                  walked_blocks)


@triton.jit
def gate_up_swiglu(x, w13, h, sorted_slots, block_expert, expert_offsets, num_slots, top_k, H, I, E, num_m_blocks,
                   ROUTED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   JOINED: tl.constexpr, GROUP_M: tl.constexpr, GROUP_BY_EXPERT: tl.constexpr, TMA: tl.constexpr,
                   PERSISTENT: tl.constexpr, HALF_TAIL: tl.constexpr, FOLD_TAIL: tl.constexpr, FLATTEN: tl.constexpr,
                   PDL: tl.constexpr):
    wait_for_previous_kernel(PDL)
    if PERSISTENT:
        persistent_tiles(x, w13, h, sorted_slots, block_expert, expert_offsets, num_slots, top_k, H, I, E,
                         num_m_blocks, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, GROUP_BY_EXPERT, HALF_TAIL, FOLD_TAIL,
                         FLATTEN)
    else:
        one_tile(x, w13, h, sorted_slots, block_expert, expert_offsets, num_slots, top_k, H, I, E, num_m_blocks,
                 ROUTED, BLOCK_M, BLOCK_N, BLOCK_K, JOINED, GROUP_M, GROUP_BY_EXPERT, TMA, HALF_TAIL, FOLD_TAIL)


@triton.jit
def one_tile(x, w13, h, sorted_slots, block_expert, expert_offsets, num_slots, top_k, H, I, E, num_m_blocks,
             ROUTED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
             JOINED: tl.constexpr, GROUP_M: tl.constexpr, GROUP_BY_EXPERT: tl.constexpr, TMA: tl.constexpr,
             HALF_TAIL: tl.constexpr, FOLD_TAIL: tl.constexpr):
    pid_m, pid_n, expert = program_tile(I, block_expert, expert_offsets, ROUTED, BLOCK_M, BLOCK_N, GROUP_M,
                                        GROUP_BY_EXPERT)
    if expert < 0:
        return
    if HALF_TAIL:
        # The persistent tiles' half-height tail blocks (performance-log.md #31, #53) on one
        # tile per program: joined routed tiles through tensor descriptors only.
        tl.static_assert(ROUTED and JOINED and TMA, "HALF_TAIL needs a routed, joined TMA tile")
        half_or_full_tile(x, joined_weights(w13, E, H, I, BLOCK_N, BLOCK_K), h, sorted_slots, block_expert, pid_m,
                          expert, pid_n, num_slots, num_m_blocks, top_k, H, I, BLOCK_M, BLOCK_N, BLOCK_K, HALF_TAIL,
                          FOLD_TAIL)
        return
    rows, slots, has_slot = tile_slots(sorted_slots, pid_m, num_slots, BLOCK_M, ROUTED)
    tokens = slots // top_k
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < I
    ks = tl.arange(0, BLOCK_K)
    x_tile = x + tokens.to(tl.int64)[:, None] * H + ks[None, :]
    # Weight rows past I wrap to valid ones (their results are never stored), so the
    # weight loads carry no column mask (see grouped_gemm.py: it cost up to 22%).
    w_cols = cols % I
    gate_tile = w13 + expert.to(tl.int64) * 2 * I * H + w_cols.to(tl.int64)[None, :] * H + ks[:, None]
    up_offset = I.to(tl.int64) * H
    if TMA:
        # The weight tiles through a device-side tensor descriptor over w13[expert] seen as
        # [2, I, H] (TMA on Hopper, zero-filled past the edges; up to 10% faster at large T,
        # performance-log.md #16); x's rows are gathered by token, so they stay pointer loads.
        n0 = pid_n * BLOCK_N
        w_expert = w13 + expert.to(tl.int64) * 2 * I * H
        if JOINED:
            w_desc = tl.make_tensor_descriptor(w_expert, shape=[2, I, H], strides=[up_offset, H, 1],
                                               block_shape=[2, BLOCK_N, BLOCK_K])
            acc = tl.zeros([BLOCK_M, 2 * BLOCK_N], tl.float32)
        else:
            w_desc = tl.make_tensor_descriptor(w_expert, shape=[2, I, H], strides=[up_offset, H, 1],
                                               block_shape=[1, BLOCK_N, BLOCK_K])
            acc_gate = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            acc_up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(0, H, BLOCK_K):
            a = tl.load(x_tile, mask=has_slot[:, None] & (ks < H - k0)[None, :], other=0.0)
            if JOINED:
                acc = tl.dot(a, w_desc.load([0, n0, k0]).reshape(2 * BLOCK_N, BLOCK_K).T, acc)
            else:
                acc_gate = tl.dot(a, w_desc.load([0, n0, k0]).reshape(BLOCK_N, BLOCK_K).T, acc_gate)
                acc_up = tl.dot(a, w_desc.load([1, n0, k0]).reshape(BLOCK_N, BLOCK_K).T, acc_up)
            x_tile += BLOCK_K
        if JOINED:
            acc_gate, acc_up = split_joined(acc, BLOCK_M, BLOCK_N)
    elif JOINED:
        # Columns 0..BLOCK_N-1 of one operand are the gate rows, the next BLOCK_N the up rows.
        halves = tl.arange(0, 2 * BLOCK_N)
        is_up = halves >= BLOCK_N
        joined_cols = (pid_n * BLOCK_N + tl.where(is_up, halves - BLOCK_N, halves)) % I
        joined_tile = (w13 + expert.to(tl.int64) * 2 * I * H + joined_cols.to(tl.int64)[None, :] * H +
                       tl.where(is_up, I.to(tl.int64) * H, 0)[None, :] + ks[:, None])
        acc = tl.zeros([BLOCK_M, 2 * BLOCK_N], tl.float32)
        for k0 in range(0, H, BLOCK_K):
            k_ok = ks < H - k0
            a = tl.load(x_tile, mask=has_slot[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(joined_tile, mask=k_ok[:, None], other=0.0)
            acc = tl.dot(a, w, acc)
            x_tile += BLOCK_K
            joined_tile += BLOCK_K
        acc_gate, acc_up = split_joined(acc, BLOCK_M, BLOCK_N)
    else:
        acc_gate = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        acc_up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(0, H, BLOCK_K):
            k_ok = ks < H - k0
            a = tl.load(x_tile, mask=has_slot[:, None] & k_ok[None, :], other=0.0)
            acc_gate = tl.dot(a, tl.load(gate_tile, mask=k_ok[:, None], other=0.0), acc_gate)
            acc_up = tl.dot(a, tl.load(gate_tile + up_offset, mask=k_ok[:, None], other=0.0), acc_up)
            x_tile += BLOCK_K
            gate_tile += BLOCK_K
    store_swiglu(h, acc_gate, acc_up, rows, has_slot, cols, col_ok, I)


@triton.jit
def split_joined(acc, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(gate, up) accumulators of a joined [BLOCK_M, 2*BLOCK_N] one."""
    return tl.split(tl.permute(tl.reshape(acc, [BLOCK_M, 2, BLOCK_N]), [0, 2, 1]))


@triton.jit
def store_swiglu(h, acc_gate, acc_up, rows, has_slot, cols, col_ok, I):
    out = acc_gate * tl.sigmoid(acc_gate) * acc_up
    h_tile = h + rows.to(tl.int64)[:, None] * I + cols[None, :]
    tl.store(h_tile, out.to(h.dtype.element_ty), mask=has_slot[:, None] & col_ok[None, :])


@triton.jit
def persistent_tiles(x, w13, h, sorted_slots, block_expert, expert_offsets, num_slots, top_k, H, I, E, num_m_blocks,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                     GROUP_BY_EXPERT: tl.constexpr, HALF_TAIL: tl.constexpr, FOLD_TAIL: tl.constexpr,
                     FLATTEN: tl.constexpr):
    """The routed GEMM on a persistent grid (PERSISTENT programs per multiprocessor; the
    host caps the grid), as down's (down_combine.py): each program walks tiles in the
    grouped order, the joined gate and up tiles through one tensor descriptor over w13
    seen as [E, 2, I, H]; x's rows are gathered by token, so they stay pointer loads.
    HALF_TAIL, FOLD_TAIL and FLATTEN as in down_combine.py (m128 t9, t15)."""
    num_n_blocks = tl.cdiv(I, BLOCK_N)
    w_desc = joined_weights(w13, E, H, I, BLOCK_N, BLOCK_K)
    m_blocks = walked_blocks(num_m_blocks, expert_offsets, E, BLOCK_M, HALF_TAIL, FLATTEN)
    for tile in tl.range(tl.program_id(0), m_blocks * num_n_blocks, tl.num_programs(0), flatten=FLATTEN):
        pid_m, pid_n, expert = tile_place(tile, m_blocks, num_n_blocks, block_expert, expert_offsets, True, BLOCK_M,
                                          GROUP_M, GROUP_BY_EXPERT)
        if FLATTEN:  # every walked block is an expert's: no branch to keep the loops apart
            joined_rows_tile(x, w_desc, h, sorted_slots, pid_m * BLOCK_M, expert, pid_n, num_slots, top_k, H, I,
                             BLOCK_M, BLOCK_N, BLOCK_K, 0)
        elif expert >= 0:
            half_or_full_tile(x, w_desc, h, sorted_slots, block_expert, pid_m, expert, pid_n, num_slots, num_m_blocks,
                              top_k, H, I, BLOCK_M, BLOCK_N, BLOCK_K, HALF_TAIL, FOLD_TAIL)


@triton.jit
def joined_weights(w13, E, H, I, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """A tensor descriptor over w13 seen as [E, 2, I, H], one block the joined gate and up tiles."""
    return tl.make_tensor_descriptor(w13, shape=[E, 2, I, H], strides=[2 * I * H, I * H, H, 1],
                                     block_shape=[1, 2, BLOCK_N, BLOCK_K])


@triton.jit
def half_or_full_tile(x, w_desc, h, sorted_slots, block_expert, pid_m, expert, pid_n, num_slots, num_m_blocks, top_k,
                      H, I, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      HALF_TAIL: tl.constexpr, FOLD_TAIL: tl.constexpr):
    """Block pid_m's rows as grouped_gemm.tail_plan says."""
    if HALF_TAIL:  # a constexpr test of its own: without it no half-height code is compiled
        plan = tail_plan(sorted_slots, block_expert, pid_m, expert, num_slots, num_m_blocks, BLOCK_M, FOLD_TAIL)
        if plan == FOLDS_NEXT:
            joined_rows_tile(x, w_desc, h, sorted_slots, pid_m * BLOCK_M, expert, pid_n, num_slots, top_k, H, I, BLOCK_M,
                             BLOCK_N, BLOCK_K, BLOCK_M // 2)
        elif plan == HALF_BLOCK:
            joined_rows_tile(x, w_desc, h, sorted_slots, pid_m * BLOCK_M, expert, pid_n, num_slots, top_k, H, I,
                             BLOCK_M // 2, BLOCK_N, BLOCK_K, 0)
        elif plan == FULL_BLOCK:
            joined_rows_tile(x, w_desc, h, sorted_slots, pid_m * BLOCK_M, expert, pid_n, num_slots, top_k, H, I, BLOCK_M,
                             BLOCK_N, BLOCK_K, 0)
    else:
        joined_rows_tile(x, w_desc, h, sorted_slots, pid_m * BLOCK_M, expert, pid_n, num_slots, top_k, H, I, BLOCK_M,
                         BLOCK_N, BLOCK_K, 0)


@triton.jit
def joined_rows_tile(x, w_desc, h, sorted_slots, first_row, expert, pid_n, num_slots, top_k, H, I, ROWS: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, TAIL_ROWS: tl.constexpr):
    """h's ROWS rows from padded position first_row, BLOCK_N block pid_n: the tokens' rows of
    x times w13[expert]'s joined gate and up tiles, SwiGLU, stored; and TAIL_ROWS more rows
    from first_row + ROWS (FOLD_TAIL's next block; 0: none) in an accumulator of their own,
    from the same weight tiles."""
    ks = tl.arange(0, BLOCK_K)
    rows, has_slot, x_tile = gathered_rows(x, sorted_slots, first_row, num_slots, top_k, H, ROWS, BLOCK_K)
    acc = tl.zeros([ROWS, 2 * BLOCK_N], tl.float32)
    if TAIL_ROWS:
        tail_rows, tail_has_slot, tail_x_tile = gathered_rows(x, sorted_slots, first_row + ROWS, num_slots, top_k, H,
                                                              TAIL_ROWS, BLOCK_K)
        tail_acc = tl.zeros([TAIL_ROWS, 2 * BLOCK_N], tl.float32)
    for k0 in range(0, H, BLOCK_K):
        k_ok = ks < H - k0
        w = w_desc.load([expert, 0, pid_n * BLOCK_N, k0]).reshape(2 * BLOCK_N, BLOCK_K)
        acc = tl.dot(tl.load(x_tile, mask=has_slot[:, None] & k_ok[None, :], other=0.0), w.T, acc)
        x_tile += BLOCK_K
        if TAIL_ROWS:
            tail_acc = tl.dot(tl.load(tail_x_tile, mask=tail_has_slot[:, None] & k_ok[None, :], other=0.0), w.T,
                              tail_acc)
            tail_x_tile += BLOCK_K
    store_joined(h, acc, rows, has_slot, pid_n, I, ROWS, BLOCK_N)
    if TAIL_ROWS:
        store_joined(h, tail_acc, tail_rows, tail_has_slot, pid_n, I, TAIL_ROWS, BLOCK_N)


@triton.jit
def gathered_rows(x, sorted_slots, first_row, num_slots, top_k, H, ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    """ROWS padded positions from first_row, which of them hold a slot, and pointers to
    their tokens' rows of x at columns 0..BLOCK_K-1."""
    rows = first_row + tl.arange(0, ROWS)
    slots = tl.load(sorted_slots + rows)
    has_slot = slots < num_slots
    return rows, has_slot, x + (slots // top_k).to(tl.int64)[:, None] * H + tl.arange(0, BLOCK_K)[None, :]


@triton.jit
def store_joined(h, acc, rows, has_slot, pid_n, I, ROWS: tl.constexpr, BLOCK_N: tl.constexpr):
    """SwiGLU of a joined accumulator, stored to h's rows, BLOCK_N block pid_n."""
    acc_gate, acc_up = split_joined(acc, ROWS, BLOCK_N)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    store_swiglu(h, acc_gate, acc_up, rows, has_slot, cols, cols < I, I)
