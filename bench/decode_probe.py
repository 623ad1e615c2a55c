"""Probe (performance-log.md #44, not kept): decode gate_up with its K split over
programs (f32 partial sums; down makes SwiGLU and the sum when loading its vector), and
both decode kernels with each column block starting its K loop at its own block,
beside the bundled pointer kernels and a plain read of the same bytes; outputs checked
against torch.

Usage (GPU machine, repository root):  PYTHONPATH=. python3 bench/decode_probe.py
  [env MODELS=qwen3-30b-a3b,gpt-oss-120b TOKENS=1,4]
"""
import os
import sys

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402
from model_shapes import routed_models  # noqa: E402
from kernels.decode import VECTOR_ROWS, decode_down_combine, decode_gate_up_swiglu, weight_tile  # noqa: E402

REPS = 15


@triton.jit
def row_and_columns(N, BLOCK: tl.constexpr, pid):
    col_blocks = tl.cdiv(N, BLOCK)
    cols = (pid % col_blocks) * BLOCK + tl.arange(0, BLOCK)
    return pid // col_blocks, cols, cols < N


@triton.jit
def vector_cols(v, k0, K, BLOCK_K: tl.constexpr):
    """[BLOCK_K, VECTOR_ROWS]: v[k0:k0+BLOCK_K] in column 0, zeros elsewhere."""
    ks = tl.arange(0, BLOCK_K)
    col0 = tl.arange(0, VECTOR_ROWS) == 0
    return tl.load(v + k0 + ks[:, None] + 0 * col0[None, :], mask=col0[None, :] & (ks < K - k0)[:, None], other=0.0)


@triton.jit
def vector_rows(v, k0, K, BLOCK_K: tl.constexpr):
    ks = tl.arange(0, BLOCK_K)
    row0 = tl.arange(0, VECTOR_ROWS) == 0
    return tl.load(v + k0 + ks[None, :] + 0 * row0[:, None], mask=row0[:, None] & (ks < K - k0)[None, :], other=0.0)


@triton.jit
def split_gate_up(x, w13, part, topk_ids, top_k, H, I, K_SPLITS: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr):
    """part[split, slot, :I] / [.., I:]: gate and up summed over one of K_SPLITS ranges of H."""
    pid = tl.program_id(0)
    split = pid % K_SPLITS
    slot, cols, col_ok = row_and_columns(I, BLOCK_N, pid // K_SPLITS)
    num_slots = tl.num_programs(0) // K_SPLITS // tl.cdiv(I, BLOCK_N)
    expert = tl.load(topk_ids + slot).to(tl.int64)
    token = (slot // top_k).to(tl.int64)
    gate_rows = w13 + expert * 2 * I * H + cols.to(tl.int64) * H
    up_rows = gate_rows + I.to(tl.int64) * H
    x_row = x + token * H
    span = tl.cdiv(tl.cdiv(H, K_SPLITS), BLOCK_K) * BLOCK_K
    k_end = tl.minimum(H, (split + 1) * span)
    gate = tl.zeros([VECTOR_ROWS, BLOCK_N], tl.float32)
    up = tl.zeros([VECTOR_ROWS, BLOCK_N], tl.float32)
    for k0 in range(split * span, k_end, BLOCK_K):
        x_tile = vector_rows(x_row, k0, k_end, BLOCK_K)
        gate = tl.dot(x_tile, weight_tile(gate_rows, k0, k_end, col_ok, BLOCK_K), gate)
        up = tl.dot(x_tile, weight_tile(up_rows, k0, k_end, col_ok, BLOCK_K), up)
    dst = part + (split * num_slots + slot).to(tl.int64) * 2 * I + cols
    tl.store(dst, tl.sum(gate, 0), mask=col_ok)
    tl.store(dst + I, tl.sum(up, 0), mask=col_ok)


@triton.jit
def split_down(part, w2, out, topk_ids, topk_weights, top_k, H, I, K_SPLITS: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr, EXPERTS_PER_PASS: tl.constexpr):
    """decode_down_combine with h = silu(gate) * up made from the partial sums (rounded to w2's type)."""
    token, cols, col_ok = row_and_columns(H, BLOCK_N, tl.program_id(0))
    token = token.to(tl.int64)
    num_slots = tl.num_programs(0) // tl.cdiv(H, BLOCK_N) * top_k
    ks = tl.arange(0, BLOCK_K)
    row0 = tl.arange(0, VECTOR_ROWS) == 0
    lanes = tl.arange(0, EXPERTS_PER_PASS)
    total = tl.zeros([BLOCK_N], tl.float32)
    for j0 in range(0, top_k, EXPERTS_PER_PASS):
        j_ok = j0 + lanes < top_k
        slots = token * top_k + j0 + lanes
        experts = tl.load(topk_ids + slots, mask=j_ok, other=0).to(tl.int64)
        w_rows = w2 + experts[:, None] * H * I + cols.to(tl.int64)[None, :] * I
        acc = tl.zeros([EXPERTS_PER_PASS, VECTOR_ROWS, BLOCK_N], tl.float32)
        for k0 in range(0, I, BLOCK_K):
            k_ok = ks < I - k0
            v_mask = j_ok[:, None] & k_ok[None, :]
            gate = tl.zeros([EXPERTS_PER_PASS, BLOCK_K], tl.float32)
            up = tl.zeros([EXPERTS_PER_PASS, BLOCK_K], tl.float32)
            for split in tl.static_range(K_SPLITS):
                src = part + (split * num_slots + slots)[:, None] * 2 * I + k0 + ks[None, :]
                gate += tl.load(src, mask=v_mask, other=0.0)
                up += tl.load(src + I, mask=v_mask, other=0.0)
            v = (gate * tl.sigmoid(gate) * up).to(w2.dtype.element_ty)
            a = tl.where(row0[None, :, None], v[:, None, :], tl.zeros_like(v)[:, None, :])
            w = tl.load(w_rows[:, None, :] + k0 + ks[None, :, None],
                        mask=j_ok[:, None, None] & k_ok[None, :, None] & col_ok[None, None, :], other=0.0)
            acc = tl.dot(a, w, acc)
        weights = tl.load(topk_weights + slots, mask=j_ok, other=0.0)
        total += tl.sum(tl.sum(acc, 1) * weights[:, None], 0)
    tl.store(out + token * H + cols, total.to(out.dtype.element_ty), mask=col_ok)


@triton.jit
def rot_gate_up(x, w13, h, topk_ids, top_k, H, I, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """decode_gate_up_swiglu with each column block starting its K loop at its own block of H."""
    pid = tl.program_id(0)
    slot, cols, col_ok = row_and_columns(I, BLOCK_N, pid)
    expert = tl.load(topk_ids + slot).to(tl.int64)
    token = (slot // top_k).to(tl.int64)
    gate_rows = w13 + expert * 2 * I * H + cols.to(tl.int64) * H
    up_rows = gate_rows + I.to(tl.int64) * H
    x_row = x + token * H
    k_blocks = tl.cdiv(H, BLOCK_K)
    first = pid % tl.cdiv(I, BLOCK_N) % k_blocks
    gate = tl.zeros([VECTOR_ROWS, BLOCK_N], tl.float32)
    up = tl.zeros([VECTOR_ROWS, BLOCK_N], tl.float32)
    for i in range(0, k_blocks):
        kb = first + i
        k0 = tl.where(kb >= k_blocks, kb - k_blocks, kb) * BLOCK_K
        x_tile = vector_rows(x_row, k0, H, BLOCK_K)
        gate = tl.dot(x_tile, weight_tile(gate_rows, k0, H, col_ok, BLOCK_K), gate)
        up = tl.dot(x_tile, weight_tile(up_rows, k0, H, col_ok, BLOCK_K), up)
    gate = tl.sum(gate, 0)
    up = tl.sum(up, 0)
    out = gate * tl.sigmoid(gate) * up
    tl.store(h + slot.to(tl.int64) * I + cols, out.to(h.dtype.element_ty), mask=col_ok)


@triton.jit
def rot_down(h, w2, out, topk_ids, topk_weights, top_k, H, I, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
             EXPERTS_PER_PASS: tl.constexpr):
    """decode_down_combine (no shared expert) with each column block starting its K loop at its own block of I."""
    pid = tl.program_id(0)
    token, cols, col_ok = row_and_columns(H, BLOCK_N, pid)
    token = token.to(tl.int64)
    ks = tl.arange(0, BLOCK_K)
    row0 = tl.arange(0, VECTOR_ROWS) == 0
    lanes = tl.arange(0, EXPERTS_PER_PASS)
    k_blocks = tl.cdiv(I, BLOCK_K)
    first = pid % tl.cdiv(H, BLOCK_N) % k_blocks
    total = tl.zeros([BLOCK_N], tl.float32)
    for j0 in range(0, top_k, EXPERTS_PER_PASS):
        j_ok = j0 + lanes < top_k
        slots = token * top_k + j0 + lanes
        experts = tl.load(topk_ids + slots, mask=j_ok, other=0).to(tl.int64)
        h_rows = h + slots * I
        w_rows = w2 + experts[:, None] * H * I + cols.to(tl.int64)[None, :] * I
        acc = tl.zeros([EXPERTS_PER_PASS, VECTOR_ROWS, BLOCK_N], tl.float32)
        for i in range(0, k_blocks):
            kb = first + i
            k0 = tl.where(kb >= k_blocks, kb - k_blocks, kb) * BLOCK_K
            k_ok = ks < I - k0
            a = tl.load(h_rows[:, None, None] + k0 + ks[None, None, :] + 0 * row0[None, :, None],
                        mask=j_ok[:, None, None] & row0[None, :, None] & k_ok[None, None, :], other=0.0)
            w = tl.load(w_rows[:, None, :] + k0 + ks[None, :, None],
                        mask=j_ok[:, None, None] & k_ok[None, :, None] & col_ok[None, None, :], other=0.0)
            acc = tl.dot(a, w, acc)
        weights = tl.load(topk_weights + slots, mask=j_ok, other=0.0)
        total += tl.sum(tl.sum(acc, 1) * weights[:, None], 0)
    tl.store(out + token * H + cols, total.to(out.dtype.element_ty), mask=col_ok)


SPLITS = (1, 2, 3, 4, 6, 8)
GATE_UP = [(32, 128, 4, 4), (32, 128, 4, 6), (16, 128, 2, 6), (32, 256, 4, 3), (64, 128, 4, 4), (16, 256, 2, 4)]
BASE_UP = {"qwen3-30b-a3b": (32, 128, 4, 4), "gpt-oss-120b": (32, 128, 4, 6)}
BASE_DOWN = {"qwen3-30b-a3b": (16, 64, 4, 4, 8), "gpt-oss-120b": (32, 64, 4, 6, 4)}
DOWN = [(16, 64, 4, 4, 8), (32, 64, 4, 6, 4), (16, 128, 4, 4, 4), (16, 64, 4, 6, 8), (32, 64, 4, 4, 4),
        (16, 64, 4, 8, 4), (16, 128, 4, 6, 4)]


def main():
    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, device="cuda", dtype=torch.int8))
    models = routed_models()
    print(f"card: {torch.cuda.get_device_name()}; us, median of {REPS} graph replays, L2 flushed before each")
    g = torch.Generator(device="cuda").manual_seed(5)
    for model in os.environ.get("MODELS", "qwen3-30b-a3b,gpt-oss-120b").split(","):
        E, H, I, k = (models[model][key] for key in ("E", "H", "I", "k"))
        w13 = torch.randn(E, 2 * I, H, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
        w2 = torch.randn(E, H, I, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
        for T in [int(t) for t in os.environ.get("TOKENS", "1").split(",")]:
            cell(model, E, H, I, k, T, w13, w2, g)
        del w13, w2
        torch.cuda.empty_cache()


def cell(model, E, H, I, k, T, w13, w2, g):
    x = torch.randn(T, H, device="cuda", dtype=torch.bfloat16, generator=g)
    ids = torch.rand(T, E, device="cuda", generator=g).topk(k, dim=1).indices.to(torch.int32).contiguous()
    weights = torch.softmax(torch.randn(T, k, device="cuda", generator=g), 1).contiguous()
    S = T * k
    w13_s, w2_s = w13[ids.flatten().long()].float(), w2[ids.flatten().long()].float()
    gate_up = torch.einsum("sih,sh->si", w13_s, x.float().repeat_interleave(k, 0))
    h_ref = F.silu(gate_up[:, :I]) * gate_up[:, I:]
    h = torch.empty(S, I, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(T, H, device="cuda", dtype=torch.bfloat16)
    out_ref = (torch.einsum("shi,si->sh", w2_s, h_ref).view(T, k, H) * weights[..., None]).sum(1)
    scalar = torch.empty(1, device="cuda", dtype=torch.bfloat16)

    def base_up(tile):
        bn, bk, warps, stages = tile
        decode_gate_up_swiglu[(S * -(-I // bn),)](x, w13, h, ids, k, H, I, ROUTED=True, BLOCK_N=bn, BLOCK_K=bk,
                                                  PDL=False, num_warps=warps, num_stages=stages)

    def base_down(tile):
        bn, bk, warps, stages, per_pass = tile
        decode_down_combine[(T * -(-H // bn),)](h, w2, out, ids, weights, scalar, scalar, k, H, I, 0,
                                                HAS_SHARED=False, BLOCK_N=bn, BLOCK_K=bk, EXPERTS_PER_PASS=per_pass,
                                                PDL=False, num_warps=warps, num_stages=stages)

    part = torch.empty(max(SPLITS), S, 2 * I, device="cuda", dtype=torch.float32)

    def split_up(splits):
        def run(tile):
            bn, bk, warps, stages = tile
            split_gate_up[(splits * S * -(-I // bn),)](x, w13, part, ids, k, H, I, K_SPLITS=splits, BLOCK_N=bn,
                                                       BLOCK_K=bk, num_warps=warps, num_stages=stages)
            g = part[:splits].sum(0)
            h.copy_(F.silu(g[:, :I]) * g[:, I:])  # for the check only: timed runs skip it
        return run

    def split_up_timed(splits, tile):
        bn, bk, warps, stages = tile
        split_gate_up[(splits * S * -(-I // bn),)](x, w13, part, ids, k, H, I, K_SPLITS=splits, BLOCK_N=bn,
                                                   BLOCK_K=bk, num_warps=warps, num_stages=stages)

    def split_down_run(splits, tile):
        bn, bk, warps, stages, per_pass = tile
        split_down[(T * -(-H // bn),)](part, w2, out, ids, weights, k, H, I, K_SPLITS=splits, BLOCK_N=bn,
                                       BLOCK_K=bk, EXPERTS_PER_PASS=per_pass, num_warps=warps, num_stages=stages)

    def timed(label, run, tile, result, ref, time=True):
        result.fill_(float("nan"))
        try:
            run(tile)
        except Exception as error:  # noqa: BLE001
            print(f"  {label} {tile}: {type(error).__name__} {str(error)[:120]}", flush=True)
            return None
        err = ((result.float() - ref).norm() / ref.norm()).item()
        if not err < 1e-2:
            print(f"  {label} {tile}: WRONG rel err {err:.1e}", flush=True)
            return None
        return peers.replay_ms(lambda: run(tile), REPS) * 1000 if time else 0.0

    def rot_up(tile):
        bn, bk, warps, stages = tile
        rot_gate_up[(S * -(-I // bn),)](x, w13, h, ids, k, H, I, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps,
                                        num_stages=stages)

    def rot_down_run(tile):
        bn, bk, warps, stages, per_pass = tile
        rot_down[(T * -(-H // bn),)](h, w2, out, ids, weights, k, H, I, BLOCK_N=bn, BLOCK_K=bk,
                                     EXPERTS_PER_PASS=per_pass, num_warps=warps, num_stages=stages)

    def ranked(stage, runs, result, ref):
        rows = sorted((t, label, tile) for label, run, tiles in runs for tile in tiles
                      for t in [timed(label, run, tile, result, ref)] if t is not None)
        print(f"{model} T={T} {stage}: " + " | ".join(f"{lab} {'x'.join(map(str, tile))} {t:.1f}"
                                                     for t, lab, tile in rows), flush=True)
        return {lab: min((r for r in rows if r[1] == lab), default=None) for lab in ("base", "rot")}

    ups = ranked("gate_up", [("base", base_up, GATE_UP), ("rot", rot_up, GATE_UP)], h, h_ref)
    base_up(GATE_UP[0])
    downs = ranked("down", [("base", base_down, DOWN), ("rot", rot_down_run, DOWN)], out, out_ref)
    pairs = {}
    for lab, up_run, down_run in (("base", base_up, base_down), ("rot", rot_up, rot_down_run)):
        up_tile, down_tile = ups[lab][2], downs[lab][2]

        def pair(up_run=up_run, down_run=down_run, up_tile=up_tile, down_tile=down_tile):
            up_run(up_tile)
            down_run(down_tile)
        pairs[lab] = peers.replay_ms(pair, REPS) * 1000
    print(f"{model} T={T} best pairs: " + " | ".join(f"{lab} {t:.1f}" for lab, t in pairs.items()), flush=True)
    from decode_time import stream_us  # needs the GPU at import
    active = ids.unique().numel()
    up_bytes, down_bytes = active * 2 * I * H * 2, active * H * I * 2
    print(f"{model} T={T} read_through gate_up's {up_bytes / 1e6:.0f} MB {stream_us(up_bytes):.1f} us, "
          f"down's {down_bytes / 1e6:.0f} MB {stream_us(down_bytes):.1f} us", flush=True)


if __name__ == "__main__":
    main()
