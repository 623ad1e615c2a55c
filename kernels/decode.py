"""The decode path: the experts for a few slots, with no alignment and no combine.

At decode (T = 1, or a few tokens whose experts rarely repeat) every slot reads a
whole expert of its own, so the work is a set of GEMVs bound by the weight stream.
Sorting slots by expert buys nothing there, and the align and combine launches
cost more than they save (ncu on an H100, qwen3-30b-a3b T = 1: align and combine
15 us beside 36 us of GEMMs). Here:

- decode_gate_up_swiglu: one program per (slot, BLOCK_N columns of I) reads its
  slot's token row of x and the gate and up rows of w13[expert], and writes
  h[slot] = silu(gate) * up. With ROUTED false it runs the shared expert (slot =
  token, expert 0). With several tokens, slots of one expert share its weight
  reads, 16 at a time (each slot reading its expert alone cost up to 2-4x at
  mixtral-8x7b T = 8-16, performance-log.md #56).
- decode_down_combine: one program per (token, BLOCK_N columns of H) sums
  weight_j * (h[slot j] @ w2[expert j]^T) over the k experts, then the shared expert,
  in f32 and in an order fixed by the code (deterministic), and writes out once:
  down_combine.py's combine without y.

The vector rides in row 0 of a 16-row tile (the rest masked to zero) so that the
weight tiles go through tl.dot: Triton then pipelines their loads (cp.async on
NVIDIA) as in the grouped GEMMs. A first version multiplied on the CUDA cores with
plain loads, which Triton does not pipeline: at T = 1 on an H100 it took 21-38%
longer than the sorted path on gpt-oss-120b, mixtral-8x7b and deepseek-v3.
Many narrow programs keep every SM streaming even when only a few experts are active.
"""
import triton
import triton.language as tl

from kernels.dependent_launch import wait_for_previous_kernel
from kernels.row_tiles import row_and_columns


VECTOR_ROWS = tl.constexpr(16)  # the smallest M of a tensor-core tile
SLOT_CHUNK = tl.constexpr(32)  # slot ids a program scans at a time (32: the fastest of 32-128, #56)


@triton.jit
def vector_tile(v, k0, K, BLOCK_K: tl.constexpr):
    """[VECTOR_ROWS, BLOCK_K]: v[k0:k0+BLOCK_K] in row 0, zeros elsewhere."""
    ks = tl.arange(0, BLOCK_K)
    row0 = tl.arange(0, VECTOR_ROWS) == 0
    return tl.load(v + k0 + ks[None, :] + 0 * row0[:, None], mask=row0[:, None] & (ks < K - k0)[None, :], other=0.0)


@triton.jit
def weight_tile(w_rows, k0, K, row_ok, BLOCK_K: tl.constexpr):
    """[BLOCK_K, BLOCK_N]: columns k0.. of the rows at w_rows (pointers to each row's start)."""
    ks = tl.arange(0, BLOCK_K)
    return tl.load(w_rows[None, :] + k0 + ks[:, None], mask=(ks < K - k0)[:, None] & row_ok[None, :], other=0.0)


@triton.jit
def rows_dot_vector(w_rows, v, K, row_ok, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """f32 [BLOCK_N]: the rows at w_rows times v, both K long."""
    acc = tl.zeros([VECTOR_ROWS, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        acc = tl.dot(vector_tile(v, k0, K, BLOCK_K), weight_tile(w_rows, k0, K, row_ok, BLOCK_K), acc)
    return tl.sum(acc, 0)  # rows other than 0 are zero


@triton.jit
def slot_experts(topk_ids, slots, num_slots, ROUTED: tl.constexpr):
    """The expert of each slot, -1 past the last; the dense form's slots all run expert 0."""
    if ROUTED:
        return tl.load(topk_ids + slots, mask=slots < num_slots, other=-1)
    return tl.where(slots < num_slots, 0, -1)


@triton.jit
def swiglu_tile(x_rows, row_ok, gate_rows, up_rows, col_ok, H, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                ONE_ROW: tl.constexpr):
    """f32 [VECTOR_ROWS, BLOCK_N]: silu(x @ gate^T) * (x @ up^T) for the tile's rows of x
    (x_rows: each row's start, row_ok: which are real); zero in the other rows. ONE_ROW:
    x_rows is one pointer, the row rides in row 0 (vector_tile's constant mask)."""
    ks = tl.arange(0, BLOCK_K)
    gate = tl.zeros([VECTOR_ROWS, BLOCK_N], tl.float32)
    up = tl.zeros([VECTOR_ROWS, BLOCK_N], tl.float32)
    for k0 in range(0, H, BLOCK_K):
        if ONE_ROW:
            x_tile = vector_tile(x_rows, k0, H, BLOCK_K)
        else:
            x_tile = tl.load(x_rows[:, None] + k0 + ks[None, :], mask=row_ok[:, None] & (ks < H - k0)[None, :],
                             other=0.0)
        gate = tl.dot(x_tile, weight_tile(gate_rows, k0, H, col_ok, BLOCK_K), gate)
        up = tl.dot(x_tile, weight_tile(up_rows, k0, H, col_ok, BLOCK_K), up)
    return gate * tl.sigmoid(gate) * up


@triton.jit
def decode_gate_up_swiglu(x, w13, h, topk_ids, top_k, H, I, ROUTED: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """h = silu(x @ gate^T) * (x @ up^T) per slot; with several tokens the program of
    every VECTOR_ROWS-th slot of an expert (in slot order) runs that many of its slots
    in the tile's rows, reading the expert's weights once for them, and the other
    slots' programs return."""
    wait_for_previous_kernel(PDL)
    slot, cols, col_ok = row_and_columns(I, BLOCK_N)
    num_slots = tl.num_programs(0) // tl.cdiv(I, BLOCK_N)
    expert = slot_experts(topk_ids, slot, num_slots, ROUTED)
    gate_rows = w13 + expert.to(tl.int64) * 2 * I * H + cols.to(tl.int64) * H
    up_rows = gate_rows + I.to(tl.int64) * H
    if num_slots <= top_k:
        # One token (x's first row): its slots' experts are distinct as routed (given ids
        # that repeat one are read once per slot), and the pass below would only delay
        # the weight loads.
        out = tl.sum(swiglu_tile(x, None, gate_rows, up_rows, col_ok, H, BLOCK_N, BLOCK_K, ONE_ROW=True), 0)
        tl.store(h + slot.to(tl.int64) * I + cols, out.to(h.dtype.element_ty), mask=col_ok)
    else:
        # One pass over the slot ids (SLOT_CHUNK at a time): this slot's rank
        # among its expert's slots, and tile row r takes the expert's r-th slot from
        # this one on.
        lanes = tl.arange(0, SLOT_CHUNK)
        rows = tl.arange(0, VECTOR_ROWS)
        ahead = tl.zeros([], tl.int32)
        from_here = tl.zeros([], tl.int32)
        row_slot = tl.zeros([VECTOR_ROWS], tl.int32)
        for c0 in range(0, num_slots, SLOT_CHUNK):
            s = c0 + lanes
            same = slot_experts(topk_ids, s, num_slots, ROUTED) == expert
            ahead += tl.sum((same & (s < slot)).to(tl.int32), 0)
            after = (same & (s >= slot)).to(tl.int32)
            pick = (after > 0)[None, :] & ((from_here + tl.cumsum(after, 0) - 1)[None, :] == rows[:, None])
            row_slot += tl.sum(tl.where(pick, s[None, :], 0), 1)
            from_here += tl.sum(after, 0)
        if ahead % VECTOR_ROWS == 0:
            row_ok = rows < from_here  # rows 0..from_here-1 found a slot
            out = swiglu_tile(x + (row_slot // top_k).to(tl.int64) * H, row_ok, gate_rows, up_rows, col_ok, H,
                              BLOCK_N, BLOCK_K, ONE_ROW=False)
            tl.store(h + row_slot.to(tl.int64)[:, None] * I + cols[None, :], out.to(h.dtype.element_ty),
                     mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def decode_down_combine(h, w2, out, topk_ids, topk_weights, h_shared, shared_w2, top_k, H, I, shared_I,
                        HAS_SHARED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        EXPERTS_PER_PASS: tl.constexpr, PDL: tl.constexpr):
    wait_for_previous_kernel(PDL)
    token, cols, col_ok = row_and_columns(H, BLOCK_N)
    token = token.to(tl.int64)
    ks = tl.arange(0, BLOCK_K)
    row0 = tl.arange(0, VECTOR_ROWS) == 0
    lanes = tl.arange(0, EXPERTS_PER_PASS)
    total = tl.zeros([BLOCK_N], tl.float32)
    # EXPERTS_PER_PASS experts share one pipelined K loop (a batched dot): a loop per
    # expert restarts the load pipeline k times, which left decode_down at 25-30% of
    # DRAM bandwidth on qwen3-30b-a3b (I = 768, k = 8; ncu, H100).
    for j0 in range(0, top_k, EXPERTS_PER_PASS):
        j_ok = j0 + lanes < top_k
        slots = token * top_k + j0 + lanes
        experts = tl.load(topk_ids + slots, mask=j_ok, other=0).to(tl.int64)
        h_rows = h + slots * I
        w_rows = w2 + experts[:, None] * H * I + cols.to(tl.int64)[None, :] * I
        acc = tl.zeros([EXPERTS_PER_PASS, VECTOR_ROWS, BLOCK_N], tl.float32)
        for k0 in range(0, I, BLOCK_K):
            k_ok = ks < I - k0
            a = tl.load(h_rows[:, None, None] + k0 + ks[None, None, :] + 0 * row0[None, :, None],
                        mask=j_ok[:, None, None] & row0[None, :, None] & k_ok[None, None, :], other=0.0)
            w = tl.load(w_rows[:, None, :] + k0 + ks[None, :, None],
                        mask=j_ok[:, None, None] & k_ok[None, :, None] & col_ok[None, None, :], other=0.0)
            acc = tl.dot(a, w, acc)
        weights = tl.load(topk_weights + slots, mask=j_ok, other=0.0)
        total += tl.sum(tl.sum(acc, 1) * weights[:, None], 0)
    if HAS_SHARED:
        rows = shared_w2 + cols.to(tl.int64) * shared_I
        total += rows_dot_vector(rows, h_shared + token * shared_I, shared_I, col_ok, BLOCK_N, BLOCK_K)
    tl.store(out + token * H + cols, total.to(out.dtype.element_ty), mask=col_ok)
