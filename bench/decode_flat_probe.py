"""Probe, prepared 2026-11-27 and not yet run on a GPU (performance-log.md #51): the
decode path's gate_up as a persistent kernel whose program walks its (item, K step)
pairs in one loop, so that the weight stream's pipeline runs on across item boundaries
(#41's single launch lost 8-21% to pipelines restarted per item; the T = 1 targets ask
for one kernel streaming at a plain read's rate, #39). Compiled here with Triton 3.6
for sm_90: with num_stages 8 the loop keeps three buffers of each weight tile in
flight (the expert id's load takes the first stages), as the bundled kernel's 4
stages do; Triton's own tl.range(flatten=True) of the nested form pipelined only the
x tile and loaded the weights synchronously.

Timed beside every bundled decode gate_up tile and read_through over the same bytes
(bench/decode_time.py's helpers, which check every output against torch first).

Usage (GPU machine, repository root):  PYTHONPATH=. python3 bench/decode_flat_probe.py
  [env MODELS=qwen3-30b-a3b,gpt-oss-120b TOKENS=1,4]
"""
import os
import sys

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import decode_time  # noqa: E402
from model_shapes import routed_models  # noqa: E402
from kernels.decode import VECTOR_ROWS, decode_gate_up_swiglu, vector_tile, weight_tile  # noqa: E402

# (BLOCK_N, BLOCK_K, warps, num_stages, programs per multiprocessor)
FLAT_TILES = [(32, 128, 4, 8, 1), (32, 128, 4, 8, 2), (32, 128, 4, 8, 3), (32, 64, 4, 10, 3), (64, 128, 4, 8, 1),
              (32, 256, 4, 6, 1), (16, 128, 4, 8, 4)]


@triton.jit
def decode_gate_up_flat(x, w13, h, topk_ids, top_k, H, I, num_slots, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        NUM_STAGES: tl.constexpr):
    """Program p takes items (slot, BLOCK_N columns) p, p + P, ... and their K steps in one loop."""
    n_blocks = tl.cdiv(I, BLOCK_N)
    k_steps = tl.cdiv(H, BLOCK_K)
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    my_items = tl.cdiv(num_slots * n_blocks - pid, programs)
    gate = tl.zeros([VECTOR_ROWS, BLOCK_N], tl.float32)
    up = tl.zeros([VECTOR_ROWS, BLOCK_N], tl.float32)
    for t in tl.range(0, my_items * k_steps, num_stages=NUM_STAGES):
        item = pid + (t // k_steps) * programs
        k0 = (t % k_steps) * BLOCK_K
        slot = item // n_blocks
        cols = (item % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < I
        expert = tl.load(topk_ids + slot).to(tl.int64)
        gate_rows = w13 + expert * 2 * I * H + cols.to(tl.int64) * H
        x_tile = vector_tile(x + (slot // top_k).to(tl.int64) * H, k0, H, BLOCK_K)
        gate = tl.dot(x_tile, weight_tile(gate_rows, k0, H, col_ok, BLOCK_K), gate)
        up = tl.dot(x_tile, weight_tile(gate_rows + I.to(tl.int64) * H, k0, H, col_ok, BLOCK_K), up)
        # The item's last K step writes h and starts the next item's sums (no branch: a
        # branch in the loop kept the pipeliner to one buffer).
        last = t % k_steps == k_steps - 1
        g = tl.sum(gate, 0)
        u = tl.sum(up, 0)
        tl.store(h + slot.to(tl.int64) * I + cols, (g * tl.sigmoid(g) * u).to(h.dtype.element_ty), mask=col_ok & last)
        gate = tl.where(last, 0.0, gate)
        up = tl.where(last, 0.0, up)


def main():
    models = routed_models()
    chosen = os.environ.get("MODELS", "qwen3-30b-a3b,gpt-oss-120b").split(",")
    tokens = [int(t) for t in os.environ.get("TOKENS", "1,4").split(",")]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"card: {torch.cuda.get_device_name()}; us, median of {decode_time.REPS} graph replays, L2 flushed by a "
          f"read before each")
    g = torch.Generator(device="cuda").manual_seed(5)
    for model in chosen:
        E, H, I, k = (models[model][key] for key in ("E", "H", "I", "k"))
        w13 = torch.randn(E, 2 * I, H, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
        for T in tokens:
            cell(model, w13, H, I, k, T, sms, g)


def cell(model, w13, H, I, k, T, sms, g):
    E = w13.shape[0]
    x = torch.randn(T, H, device="cuda", dtype=torch.bfloat16, generator=g)
    ids = torch.rand(T, E, device="cuda", generator=g).topk(k, dim=1).indices.to(torch.int32).contiguous()
    S = T * k
    gate_up = torch.einsum("sih,sh->si", w13[ids.flatten().long()].float(), x.float().repeat_interleave(k, 0))
    h_ref = F.silu(gate_up[:, :I]) * gate_up[:, I:]
    h = torch.empty(S, I, device="cuda", dtype=torch.bfloat16)
    runs = {}
    for bn, bk, warps, stages in decode_time.GATE_UP:
        runs[f"bundled {bn}x{bk}x{warps}x{stages}"] = lambda bn=bn, bk=bk, warps=warps, stages=stages: \
            decode_gate_up_swiglu[(S * triton.cdiv(I, bn), )](x, w13, h, ids, k, H, I, ROUTED=True, BLOCK_N=bn,
                                                             BLOCK_K=bk, PDL=False, num_warps=warps, num_stages=stages)
    for bn, bk, warps, stages, per_sm in FLAT_TILES:
        programs = min(per_sm * sms, S * triton.cdiv(I, bn))
        runs[f"flat {bn}x{bk}x{warps}x{stages} P={programs}"] = \
            lambda bn=bn, bk=bk, warps=warps, stages=stages, programs=programs: \
            decode_gate_up_flat[(programs, )](x, w13, h, ids, k, H, I, S, BLOCK_N=bn, BLOCK_K=bk, NUM_STAGES=stages,
                                              num_warps=warps)
    times = decode_time.checked_times(runs, h, h_ref)
    nbytes = ids.unique().numel() * 2 * I * H * 2
    print(f"{model} T={T} gate_up ({nbytes / 1e6:.0f} MB; read_through {decode_time.stream_us(nbytes):.1f} us): "
          + " | ".join(f"{label} {times[label]:.1f}" for label in sorted(times, key=times.get)), flush=True)

if __name__ == "__main__":
    main()
