"""The decode path: the experts for a few slots, with no alignment and no combine.

At decode (T = 1, or a few tokens whose experts rarely repeat) every slot reads a
whole expert of its own, so the work is a set of GEMVs bound by the weight stream.
Sorting slots by expert buys nothing there, and the align and combine launches
cost more than they save (ncu on an H100, qwen3-30b-a3b T = 1: align and combine
15 us beside 36 us of GEMMs). Here:

- decode_gate_up_swiglu: one program per (slot, BLOCK_N columns of I) reads its
  slot's token row of x and the gate and up rows of w13[expert], and writes
  h[slot] = silu(gate) * up. With ROUTED false it runs the shared expert (slot =
  token, expert 0).
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
def decode_gate_up_swiglu(x, w13, h, topk_ids, top_k, H, I, ROUTED: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr, PDL: tl.constexpr, SHARED_READ: tl.constexpr):
    wait_for_previous_kernel(PDL)
    slot, cols, col_ok = row_and_columns(I, BLOCK_N)
    if SHARED_READ:
        tl.static_assert(ROUTED, "SHARED_READ: routed slots only")
        expert_rows_gate_up(x, w13, h, topk_ids, slot, cols, col_ok, top_k, H, I, BLOCK_N, BLOCK_K, SHARED_READ)
        return
    if ROUTED:
        expert = tl.load(topk_ids + slot).to(tl.int64)
        token = (slot // top_k).to(tl.int64)
    else:
        expert = tl.zeros([], tl.int64)
        token = slot.to(tl.int64)
    gate_rows = w13 + expert * 2 * I * H + cols.to(tl.int64) * H
    x_row = x + token * H
    up_rows = gate_rows + I.to(tl.int64) * H
    gate = tl.zeros([VECTOR_ROWS, BLOCK_N], tl.float32)
    up = tl.zeros([VECTOR_ROWS, BLOCK_N], tl.float32)
    for k0 in range(0, H, BLOCK_K):
        x_tile = vector_tile(x_row, k0, H, BLOCK_K)
        gate = tl.dot(x_tile, weight_tile(gate_rows, k0, H, col_ok, BLOCK_K), gate)
        up = tl.dot(x_tile, weight_tile(up_rows, k0, H, col_ok, BLOCK_K), up)
    gate = tl.sum(gate, 0)
    up = tl.sum(up, 0)
    out = gate * tl.sigmoid(gate) * up
    tl.store(h + slot.to(tl.int64) * I + cols, out.to(h.dtype.element_ty), mask=col_ok)


@triton.jit
def expert_rows_gate_up(x, w13, h, topk_ids, slot, cols, col_ok, top_k, H, I, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, SHARED_READ: tl.constexpr):
    """decode_gate_up_swiglu where several slots share an expert (performance-log.md #55,
    off in the bundled kernel): the program of the expert's first slot reads its weight
    tile once for all of them, their tokens' rows of x in the tile's rows (at most
    VECTOR_ROWS: at decode T <= 16, and a token's slots go to distinct experts); the
    other slots' programs do nothing. SHARED_READ is the power of two the slot count
    fits in (T * k, at most 128 at decode)."""
    tl.static_assert(SHARED_READ >= 16, "SHARED_READ: a power of two of at least 16")
    num_slots = tl.num_programs(0) // tl.cdiv(I, BLOCK_N)
    lanes = tl.arange(0, SHARED_READ)
    expert = tl.load(topk_ids + slot)
    same = tl.load(topk_ids + lanes, mask=lanes < num_slots, other=-1) == expert
    if tl.min(tl.where(same, lanes, SHARED_READ)) == slot:
        # Tile row r takes the r-th slot of this expert.
        rank = tl.cumsum(same.to(tl.int32), 0) - 1
        pick = same[None, :] & (rank[None, :] == tl.arange(0, VECTOR_ROWS)[:, None])
        row_slot = tl.sum(tl.where(pick, lanes[None, :], 0), 1)
        row_ok = tl.max(pick.to(tl.int32), 1) > 0
        x_rows = x + (row_slot // top_k).to(tl.int64) * H
        gate_rows = w13 + expert.to(tl.int64) * 2 * I * H + cols.to(tl.int64) * H
        up_rows = gate_rows + I.to(tl.int64) * H
        ks = tl.arange(0, BLOCK_K)
        gate = tl.zeros([VECTOR_ROWS, BLOCK_N], tl.float32)
        up = tl.zeros([VECTOR_ROWS, BLOCK_N], tl.float32)
        for k0 in range(0, H, BLOCK_K):
            x_tile = tl.load(x_rows[:, None] + k0 + ks[None, :], mask=row_ok[:, None] & (ks < H - k0)[None, :],
                             other=0.0)
            gate = tl.dot(x_tile, weight_tile(gate_rows, k0, H, col_ok, BLOCK_K), gate)
            up = tl.dot(x_tile, weight_tile(up_rows, k0, H, col_ok, BLOCK_K), up)
        out = gate * tl.sigmoid(gate) * up
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
