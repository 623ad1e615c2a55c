"""Probe, performance-log.md #49: route's top-k through Triton's bitonic tl.topk on the
packed (score, lane) keys instead of top_k rounds of a packed argmax. Timed beside the
bundled route (CUDA-graph replays of back-to-back copies, as bench/align_time.py);
ids must equal the bundled route's and weights agree to f32 rounding.

Usage (GPU machine, repository root):  PYTHONPATH=. python3 bench/route_topk_probe.py
"""
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels" / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels.route import SIGMOID_GROUPED_TOPK, TOPK_SOFTMAX, UNAVAILABLE, kept_groups  # noqa: E402

REPS = 20


@triton.jit
def route_topk(logits, correction_bias, topk_ids, topk_weights, E, top_k, mode, renormalize, n_group, topk_group,
               routed_scaling_factor, has_correction_bias, BLOCK_E: tl.constexpr, K: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    lanes = tl.arange(0, BLOCK_E)
    valid = lanes < E
    x = tl.load(logits + token * E + lanes, mask=valid, other=float("-inf")).to(tl.float32)
    if mode == SIGMOID_GROUPED_TOPK:
        weight_of = tl.sigmoid(x)
        selection = weight_of
        if has_correction_bias != 0:
            selection = selection + tl.load(correction_bias + lanes, mask=valid, other=0.0)
        eligible = kept_groups(selection, valid, lanes, E, n_group, topk_group, BLOCK_E)
    else:
        unnormalised = tl.exp(x - tl.max(x, 0))
        weight_of = tl.where(mode == TOPK_SOFTMAX, unnormalised, unnormalised / tl.sum(unnormalised, 0))
        selection = tl.where(mode == TOPK_SOFTMAX, x, weight_of)
        eligible = valid
    canonical = tl.where(selection != selection, float("-inf"), selection) + 0.0
    bits = canonical.to(tl.int32, bitcast=True)
    ordered = tl.where(eligible, bits ^ ((bits >> 31) & 0x7FFFFFFF), UNAVAILABLE)
    keys = ordered.to(tl.int64) * 4294967296 + (BLOCK_E - lanes).to(tl.int64)
    best = tl.topk(keys, K)  # descending
    j = tl.arange(0, K)
    chosen = BLOCK_E - (best & 0xFFFFFFFF).to(tl.int32)
    picked = (j < top_k) & ((best >> 32) != UNAVAILABLE)
    weights = tl.where(picked, tl.gather(weight_of, tl.minimum(chosen, BLOCK_E - 1), 0), 0.0)
    if (renormalize != 0) | (mode == TOPK_SOFTMAX):
        total = tl.sum(weights, 0)
        weights = tl.where(total > 0, weights / total, weights)
    if mode == SIGMOID_GROUPED_TOPK:
        weights = weights * routed_scaling_factor
    tl.store(topk_ids + token * top_k + j, chosen, mask=picked)
    tl.store(topk_weights + token * top_k + j, weights, mask=picked)


CASES = [  # model, E, k, routing
    ("qwen3", 128, 8, dict(mode=0, renormalize=1)),
    ("gpt-oss", 128, 4, dict(mode=1, renormalize=0)),
    ("deepseek", 256, 8, dict(mode=2, renormalize=1, n_group=8, topk_group=4, scale=2.5)),
    ("mixtral", 8, 2, dict(mode=0, renormalize=1)),
]


def main():
    import peers
    import test_kernels_gpu as kt

    def per_copy_us(fn):
        return peers.replay_ms(fn, reps=9, copies=REPS, flush=False) * 1000 / REPS

    print(f"card: {torch.cuda.get_device_name()}; us per copy, {REPS} copies per graph replay, median of 9")
    g = torch.Generator(device="cuda").manual_seed(0)
    jit = kt.JitLauncher()
    for model, E, k, routing in CASES:
        block_e = min(b for b in kt.matrix.EXPERT_BUCKETS if b >= E)
        bias = 0.1 * torch.randn(E, generator=g, device="cuda")
        args = dict(E=E, top_k=k, mode=routing["mode"], renormalize=routing["renormalize"],
                    n_group=routing.get("n_group", 1), topk_group=routing.get("topk_group", 1),
                    routed_scaling_factor=routing.get("scale", 1.0), has_correction_bias=int(routing["mode"] == 2))
        for T in (16, 64, 512, 4096):
            logits = torch.randn(T, E, generator=g, device="cuda")
            logits[::7, 3] = float("nan")
            outs = {}
            for name in ("argmax", "topk"):
                ids, weights = kt.poisoned((T, k), torch.int32), kt.poisoned((T, k), torch.float32)
                if name == "argmax":
                    def fn(ids=ids, weights=weights):
                        jit.launch("route", f"f32_e{block_e}", T, logits=logits, correction_bias=bias, topk_ids=ids,
                                   topk_weights=weights, **args)
                else:
                    def fn(ids=ids, weights=weights):
                        route_topk[(T, )](logits, bias, ids, weights, BLOCK_E=block_e, K=triton.next_power_of_2(k),
                                          num_warps=1, **args)
                outs[name] = (per_copy_us(fn), ids, weights)
            same_ids = torch.equal(outs["argmax"][1], outs["topk"][1])
            same_weights = torch.allclose(outs["argmax"][2], outs["topk"][2], rtol=1e-6, atol=0, equal_nan=True)
            print(f"{model} T={T}: route {outs['argmax'][0]:.2f} us | topk {outs['topk'][0]:.2f} us"
                  + ("" if same_ids else " | ids DIFFER") + ("" if same_weights else " | weights DIFFER"), flush=True)


if __name__ == "__main__":
    main()
