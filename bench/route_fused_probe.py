"""Probe (performance-log.md #90): what fusing route into decode gate_up would save at
T = 1, before building it into the library. At T = 1 the layer from logits runs route,
decode gate_up and decode down; the peers run puts route's cost at 2-4 us (layer minus
experts-only: qwen3-30b-a3b 4.1, gpt-oss-120b 2.2, mixtral-8x7b 2.6 on an H200). Here
`routed_decode_gate_up` routes the token itself in every program (its logits, softmax and
one bitonic top-k: route.py's TOP_K path for the softmax modes), writes the slot's id and
weight from its first column block for down, and streams the slot's expert.

Timed per model, each a CUDA-graph replay with L2 flushed by a read before it (median
of REPS), with the H200 table's decode tiles:
  experts: decode gate_up + decode down from given ids (the experts-only figure);
  layer:   route + decode gate_up + decode down (PDL on both, as the layer launches them);
  fused:   routed_decode_gate_up + decode down (PDL on down).
Every output is checked against torch first.

Usage (GPU machine, repository root):  PYTHONPATH=. python3 bench/route_fused_probe.py
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
from kernels.decode import decode_down_combine, decode_gate_up_swiglu, swiglu_tile  # noqa: E402
from kernels.dependent_launch import wait_for_previous_kernel  # noqa: E402
from kernels.route import lane_of, rank_key, route  # noqa: E402
from kernels.row_tiles import row_and_columns  # noqa: E402
from tools.aot import variants  # noqa: E402

REPS = 51
TARGET = "cuda:{}{}".format(*torch.cuda.get_device_capability())
# The H200 table's T = 1 decode tiles (configs/nvidia-h200.json): gate_up, down.
TILES = {"qwen3-30b-a3b": (2, 3), "gpt-oss-120b": (2, 5), "mixtral-8x7b": (4, 1)}


@triton.jit
def routed_decode_gate_up(x, w13, h, logits, topk_ids, topk_weights, E, top_k, H, I,
                          TOPK_SOFTMAX: tl.constexpr, RENORMALIZE: tl.constexpr, BLOCK_E: tl.constexpr,
                          TOP_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    slot, cols, col_ok = row_and_columns(I, BLOCK_N)
    lanes = tl.arange(0, BLOCK_E)
    valid = lanes < E
    logit = tl.load(logits + lanes, mask=valid, other=float("-inf")).to(tl.float32)
    unnormalised = tl.exp(logit - tl.max(logit, 0))
    if TOPK_SOFTMAX:
        weight_of = unnormalised
        selection = logit
    else:
        weight_of = unnormalised / tl.sum(unnormalised, 0)
        selection = weight_of
    choice = tl.arange(0, TOP_K)
    experts = lane_of(tl.topk(rank_key(selection, valid, lanes, BLOCK_E), TOP_K), BLOCK_E)
    picked = (choice < top_k) & (experts < BLOCK_E)
    weights = tl.where(picked, tl.gather(weight_of, tl.minimum(experts, BLOCK_E - 1), 0), 0.0)
    if RENORMALIZE or TOPK_SOFTMAX:
        total = tl.sum(weights, 0)
        weights = tl.where(total > 0, weights / total, weights)
    expert = tl.sum(tl.where(choice == slot, experts, 0), 0)
    if tl.program_id(0) % tl.cdiv(I, BLOCK_N) == 0:
        tl.store(topk_ids + slot, expert)
        tl.store(topk_weights + slot, tl.sum(tl.where(choice == slot, weights, 0.0), 0))
    gate_rows = w13 + expert.to(tl.int64) * 2 * I * H + cols.to(tl.int64) * H
    up_rows = gate_rows + I.to(tl.int64) * H
    out = tl.sum(swiglu_tile(x, None, gate_rows, up_rows, col_ok, H, BLOCK_N, BLOCK_K, ONE_ROW=True), 0)
    tl.store(h + slot.to(tl.int64) * I + cols, out.to(h.dtype.element_ty), mask=col_ok)


def tile(tiles, index):
    config = variants.target_config(variants.tile_configs(tiles[index], {}), TARGET)
    return config.constexprs, config.num_warps, config.num_stages


def cell(model, shape, g):
    E, H, I, k = (shape[key] for key in ("E", "H", "I", "k"))
    topk_softmax = shape["routing"] == "topk_softmax"
    renormalize = bool(shape.get("renormalize", False))
    w13 = torch.randn(E, 2 * I, H, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
    w2 = torch.randn(E, H, I, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
    x = torch.randn(1, H, device="cuda", dtype=torch.bfloat16, generator=g)
    logits = torch.randn(1, E, device="cuda", dtype=torch.float32, generator=g)
    if topk_softmax:
        top = logits.topk(k, dim=1)
        ref_ids, ref_weights = top.indices, torch.softmax(top.values, 1)
    else:
        top = torch.softmax(logits, 1).topk(k, dim=1)
        ref_ids, ref_weights = top.indices, top.values
        if renormalize:
            ref_weights = ref_weights / ref_weights.sum(1, keepdim=True)
    w13_s, w2_s = w13[ref_ids.flatten()].float(), w2[ref_ids.flatten()].float()
    gate_up = torch.einsum("sih,h->si", w13_s, x[0].float())
    h_ref = F.silu(gate_up[:, :I]) * gate_up[:, I:]
    out_ref = (torch.einsum("shi,si->sh", w2_s, h_ref) * ref_weights[0][:, None]).sum(0, keepdim=True)
    ids = torch.empty(1, k, device="cuda", dtype=torch.int32)
    weights = torch.empty(1, k, device="cuda", dtype=torch.float32)
    given_ids, given_weights = ref_ids.to(torch.int32).contiguous(), ref_weights.contiguous()
    h = torch.empty(k, I, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(1, H, device="cuda", dtype=torch.bfloat16)
    scalar = torch.empty(1, device="cuda", dtype=torch.bfloat16)
    (up_c, up_warps, up_stages), (down_c, down_warps, down_stages) = (
        tile(variants.DECODE_GATE_UP_TILES, TILES[model][0]), tile(variants.DECODE_DOWN_TILES, TILES[model][1]))
    up_grid, down_grid = (k * -(-I // up_c["BLOCK_N"]),), (-(-H // down_c["BLOCK_N"]),)
    block_e, top_k_pow2 = triton.next_power_of_2(E), triton.next_power_of_2(k)
    mode = 1 if topk_softmax else 0

    def gate_up(routing_ids, pdl):
        decode_gate_up_swiglu[up_grid](x, w13, h, routing_ids, k, H, I, ROUTED=True, BLOCK_N=up_c["BLOCK_N"],
                                       BLOCK_K=up_c["BLOCK_K"], PDL=pdl, num_warps=up_warps, num_stages=up_stages,
                                       launch_pdl=pdl)

    def down(routing_ids, routing_weights):
        decode_down_combine[down_grid](h, w2, out, routing_ids, routing_weights, scalar, scalar, k, H, I, 0,
                                       HAS_SHARED=False, BLOCK_N=down_c["BLOCK_N"], BLOCK_K=down_c["BLOCK_K"],
                                       EXPERTS_PER_PASS=down_c["EXPERTS_PER_PASS"], PDL=True,
                                       num_warps=down_warps, num_stages=down_stages, launch_pdl=True)

    def experts():
        gate_up(given_ids, False)
        down(given_ids, given_weights)

    def layer():
        route[(1,)](logits, logits, ids, weights, E, k, mode, int(renormalize), 1, 1, 1.0, 0, BLOCK_E=block_e,
                    TOP_K=top_k_pow2, PDL=False, num_warps=1, num_stages=1)
        gate_up(ids, True)
        down(ids, weights)

    def fused():
        routed_decode_gate_up[up_grid](x, w13, h, logits, ids, weights, E, k, H, I, TOPK_SOFTMAX=topk_softmax,
                                       RENORMALIZE=renormalize, BLOCK_E=block_e, TOP_K=top_k_pow2,
                                       BLOCK_N=up_c["BLOCK_N"], BLOCK_K=up_c["BLOCK_K"], num_warps=up_warps,
                                       num_stages=up_stages)
        down(ids, weights)

    times = {}
    for label, run in (("experts", experts), ("layer", layer), ("fused", fused)):
        out.fill_(float("nan"))
        run()
        torch.cuda.synchronize()
        err = ((out.float() - out_ref).norm() / out_ref.norm()).item()
        if not err < 1e-2:
            print(f"{model} {label}: WRONG rel err {err:.1e}", flush=True)
            continue
        times[label] = [peers.replay_ms(run, REPS) * 1000 for _ in range(3)]
    print(f"{model} T=1 us (three medians of {REPS} replays each): " +
          "; ".join(f"{label} " + " ".join(f"{t:.2f}" for t in ts) for label, ts in times.items()), flush=True)


def main():
    print(f"card: {torch.cuda.get_device_name()}")
    g = torch.Generator(device="cuda").manual_seed(7)
    shapes = routed_models()
    for model in os.environ.get("MODELS", ",".join(TILES)).split(","):
        cell(model, shapes[model], g)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
