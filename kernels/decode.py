"""The decode path: the experts for a few slots, with no alignment and no combine.

At decode (T = 1, or a few tokens whose experts rarely repeat) every slot reads a
whole expert of its own, so the work is a set of GEMVs bound by the weight stream.
Sorting slots by expert buys nothing there, and the align and combine launches
cost more than they save (on an H100, qwen3-30b-a3b T = 1: ~12 of 47 us). Here:

- decode_gate_up_swiglu: one program per (slot, BLOCK_N columns of I) reads its
  slot's token row of x and the gate and up rows of w13[expert], and writes
  h[slot] = silu(gate) * up. No tensor cores: one row of x does not fill a dot tile,
  and the CUDA cores keep up with the weight stream. With ROUTED false it runs the
  shared expert (slot = token, expert 0).
- decode_down_combine: one program per (token, BLOCK_N columns of H) sums, in fixed
  order j = 0..k-1 and then the shared expert, weight_j * (h[slot j] @ w2[expert j]^T)
  in f32 and writes out once: the combine of down_combine.py, same order, no y.

Many narrow programs keep every SM streaming even when only a few experts are active.
"""
import triton
import triton.language as tl


@triton.jit
def rows_dot_vector(w_rows, v, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, row_ok):
    """f32 [BLOCK_N]: the rows at w_rows (pointers to each row's first element) times v, both K long."""
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = ks < K - k0
        vector = tl.load(v + k0 + ks, mask=k_ok, other=0.0).to(tl.float32)
        rows = tl.load(w_rows[:, None] + k0 + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        acc += rows.to(tl.float32) * vector[None, :]
    return tl.sum(acc, 1)


@triton.jit
def decode_gate_up_swiglu(x, w13, h, topk_ids, top_k, H, I, ROUTED: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    col_blocks = tl.cdiv(I, BLOCK_N)
    slot = pid // col_blocks
    cols = (pid % col_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < I
    if ROUTED:
        expert = tl.load(topk_ids + slot).to(tl.int64)
        token = (slot // top_k).to(tl.int64)
    else:
        expert = tl.zeros([], tl.int64)
        token = slot.to(tl.int64)
    gate_rows = w13 + expert * 2 * I * H + cols.to(tl.int64) * H
    x_row = x + token * H
    gate = rows_dot_vector(gate_rows, x_row, H, BLOCK_N, BLOCK_K, col_ok)
    up = rows_dot_vector(gate_rows + I.to(tl.int64) * H, x_row, H, BLOCK_N, BLOCK_K, col_ok)
    out = gate * tl.sigmoid(gate) * up
    tl.store(h + slot.to(tl.int64) * I + cols, out.to(h.dtype.element_ty), mask=col_ok)


@triton.jit
def decode_down_combine(h, w2, out, topk_ids, topk_weights, h_shared, shared_w2, top_k, H, I, shared_I,
                        HAS_SHARED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    col_blocks = tl.cdiv(H, BLOCK_N)
    token = (pid // col_blocks).to(tl.int64)
    cols = (pid % col_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < H
    total = tl.zeros([BLOCK_N], tl.float32)
    for j in range(top_k):
        slot = token * top_k + j
        expert = tl.load(topk_ids + slot).to(tl.int64)
        rows = w2 + expert * H * I + cols.to(tl.int64) * I
        total += rows_dot_vector(rows, h + slot * I, I, BLOCK_N, BLOCK_K, col_ok) * tl.load(topk_weights + slot)
    if HAS_SHARED:
        rows = shared_w2 + cols.to(tl.int64) * shared_I
        total += rows_dot_vector(rows, h_shared + token * shared_I, shared_I, BLOCK_N, BLOCK_K, col_ok)
    tl.store(out + token * H + cols, total.to(out.dtype.element_ty), mask=col_ok)
