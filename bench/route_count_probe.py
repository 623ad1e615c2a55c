"""Probe, prepared 2026-11-27 and not yet run on a GPU: the layer's route and
align_count in one launch (`route_count`). Each program routes the CHUNK / top_k tokens
of its chunk of slots as one [tokens, experts] tile (route.py's semantics, the top-k by
rows), writes their ids and weights, and stores the chunk's expert histogram as the
column sums of the chosen mask, so align_scatter follows directly: route, align_count,
align_scatter become two launches. Timed beside the three bundled kernels as
bench/align_time.py times align (CUDA-graph replays of back-to-back copies); ids and
weights are compared exactly with the route kernel's, the alignment with the torch
reference of the kernel tests. Only where top_k divides the chunk.

Usage (GPU machine, repository root):  PYTHONPATH=. python3 bench/route_count_probe.py
"""
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels" / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels.route import SIGMOID_GROUPED_TOPK, TOPK_SOFTMAX, argmax_lowest  # noqa: E402

REPS = 20


@triton.jit
def kept_groups_rows(selection, valid, lanes, E, n_group, topk_group, BLOCK_E: tl.constexpr):
    """route.kept_groups along each row."""
    group_size = E // n_group
    group_of = lanes // group_size
    group_score = tl.full(selection.shape, float("-inf"), tl.float32)  # column g holds group g
    for g in range(n_group):
        in_group = valid & (group_of == g)[None, :]
        first = argmax_lowest(selection, in_group, lanes[None, :], BLOCK_E, 1)
        best = tl.max(tl.where(in_group, selection, float("-inf")), 1)
        second = tl.max(tl.where(in_group & (lanes[None, :] != first[:, None]), selection, float("-inf")), 1)
        score = best + tl.where(group_size > 1, second, 0.0)
        group_score = tl.where(lanes[None, :] == g, score[:, None], group_score)
    group_left = (lanes < n_group)[None, :] & valid
    kept = (lanes < 0)[None, :] & valid
    for _ in range(topk_group):
        g = argmax_lowest(group_score, group_left, lanes[None, :], BLOCK_E, 1)
        group_left = group_left & (lanes[None, :] != g[:, None])
        kept = kept | (group_of[None, :] == g[:, None])
    return kept & valid


@triton.jit
def route_count(logits, correction_bias, topk_ids, topk_weights, chunk_counts, sorted_slots, num_tokens, E, top_k,
                mode, renormalize, n_group, topk_group, routed_scaling_factor, has_correction_bias, capacity,
                CHUNK: tl.constexpr, TOKENS: tl.constexpr, BLOCK_E: tl.constexpr):
    chunk = tl.program_id(0)
    num_slots = num_tokens * top_k
    if chunk < tl.cdiv(num_slots, CHUNK):
        tokens = (chunk * TOKENS + tl.arange(0, TOKENS)).to(tl.int64)
        lanes = tl.arange(0, BLOCK_E)
        token_ok = tokens < num_tokens
        valid = token_ok[:, None] & (lanes < E)[None, :]
        x = tl.load(logits + tokens[:, None] * E + lanes[None, :], mask=valid, other=float("-inf")).to(tl.float32)
        x = tl.where(token_ok[:, None], x, 0.0)  # rows past the tokens: finite, never chosen
        if mode == SIGMOID_GROUPED_TOPK:
            weight_of = tl.sigmoid(x)
            selection = weight_of
            if has_correction_bias != 0:
                selection = selection + tl.load(correction_bias + lanes, mask=lanes < E, other=0.0)[None, :]
            eligible = kept_groups_rows(selection, valid, lanes, E, n_group, topk_group, BLOCK_E)
        else:
            unnormalised = tl.exp(x - tl.max(x, 1)[:, None])
            weight_of = tl.where(mode == TOPK_SOFTMAX, unnormalised,
                                 unnormalised / tl.sum(unnormalised, 1)[:, None])
            selection = tl.where(mode == TOPK_SOFTMAX, x, weight_of)
            eligible = valid
        rank = tl.full([TOKENS, BLOCK_E], -1, tl.int32)
        for j in range(top_k):
            chosen = argmax_lowest(selection, eligible & (rank < 0), lanes[None, :], BLOCK_E, 1)
            rank = tl.where(lanes[None, :] == chosen[:, None], j, rank)
        picked = (rank >= 0) & valid
        weights = tl.where(picked, weight_of, 0.0)
        if (renormalize != 0) | (mode == TOPK_SOFTMAX):
            total = tl.sum(weights, 1)[:, None]
            weights = tl.where(total > 0, weights / total, weights)
        if mode == SIGMOID_GROUPED_TOPK:
            weights = weights * routed_scaling_factor
        out = tokens[:, None] * top_k + rank
        tl.store(topk_ids + out, lanes[None, :] + 0 * rank, mask=picked)
        tl.store(topk_weights + out, weights, mask=picked)
        tl.store(chunk_counts + chunk * E + lanes, tl.sum(picked.to(tl.int32), 0), mask=lanes < E)
    # As align_count: the sentinel everywhere, align_scatter overwrites the real positions.
    positions = tl.arange(0, CHUNK)
    for start in range(chunk * CHUNK, capacity, tl.num_programs(0) * CHUNK):
        tl.store(sorted_slots + start + positions, num_slots, mask=start + positions < capacity)


CASES = [  # model, E, k, routing, T and block_m as the H100 table plans them
    ("qwen3", 128, 8, dict(mode=0, renormalize=1), [(16, 16), (64, 16), (256, 32), (512, 32)]),
    ("gpt-oss", 128, 4, dict(mode=1, renormalize=0), [(16, 16), (64, 16), (256, 32), (512, 64)]),
    ("deepseek", 256, 8, dict(mode=2, renormalize=1, n_group=8, topk_group=4, scale=2.5),
     [(16, 16), (64, 32), (256, 64), (512, 128)]),
    ("mixtral", 8, 2, dict(mode=0, renormalize=1), [(64, 32), (512, 128)]),
]


def main():
    import peers
    import test_kernels_gpu as kt

    def per_copy_us(fn):
        return peers.replay_ms(fn, reps=9, copies=REPS, flush=False) * 1000 / REPS

    print(f"card: {torch.cuda.get_device_name()}; us per copy, {REPS} copies per graph replay, median of 9")
    g = torch.Generator(device="cuda").manual_seed(0)
    jit = kt.JitLauncher()
    for model, E, k, routing, points in CASES:
        block_e = min(b for b in kt.matrix.EXPERT_BUCKETS if b >= E)
        bias = 0.1 * torch.randn(E, generator=g, device="cuda")
        for T, block_m in points:
            S = T * k
            chunk = kt.align_chunk(S)
            tokens = chunk // k
            logits = torch.randn(T, E, generator=g, device="cuda")
            variant = f"c{chunk}_e{block_e}"
            block_b = jit.constexprs("align_scatter", variant)["BLOCK_B"]
            capacity = kt.max_padded_slots(S, E, block_m)
            programs = kt.align_programs(S, capacity, block_m, chunk, block_b)
            chunk_counts = torch.empty(triton.cdiv(S, chunk) * E, dtype=torch.int32, device="cuda")
            route_args = dict(E=E, top_k=k, mode=routing["mode"], renormalize=routing["renormalize"],
                              n_group=routing.get("n_group", 1), topk_group=routing.get("topk_group", 1),
                              routed_scaling_factor=routing.get("scale", 1.0),
                              has_correction_bias=int(routing["mode"] == 2))
            results = {}
            for name in ("three", "fused"):
                ids, weights = kt.poisoned((T, k), torch.int32), kt.poisoned((T, k), torch.float32)
                out = dict(counts=kt.poisoned(E, torch.int32), offsets=kt.poisoned(E + 1, torch.int32),
                           sorted_slots=kt.poisoned(capacity, torch.int32),
                           block_expert=kt.poisoned(capacity // block_m, torch.int32))

                def scatter(ids=ids, out=out):
                    jit.launch("align_scatter", variant, programs, topk_ids=ids, chunk_counts=chunk_counts,
                               expert_counts=out["counts"], expert_offsets=out["offsets"],
                               sorted_slots=out["sorted_slots"], block_expert=out["block_expert"], num_slots=S,
                               E=E, block_m=block_m, capacity=capacity)

                if name == "three":
                    def stage(ids=ids, weights=weights, out=out, scatter=scatter):
                        jit.launch("route", f"f32_e{block_e}", T, logits=logits, correction_bias=bias,
                                   topk_ids=ids, topk_weights=weights, **route_args)
                        jit.launch("align_count", variant, programs, topk_ids=ids, chunk_counts=chunk_counts,
                                   sorted_slots=out["sorted_slots"], num_slots=S, E=E, capacity=capacity)
                        scatter()
                else:
                    def stage(ids=ids, weights=weights, out=out, scatter=scatter):
                        route_count[(programs,)](logits, bias, ids, weights, chunk_counts, out["sorted_slots"], T,
                                                 capacity=capacity, CHUNK=chunk, TOKENS=tokens, BLOCK_E=block_e,
                                                 num_warps=8 if tokens * block_e > 4096 else 4, **route_args)
                        scatter()
                us = per_copy_us(stage)
                results[name] = (us, ids, weights, out)
            ref = kt.align_reference(results["three"][1], E, block_m)
            wrong = [key for key in ref if not torch.equal(results["fused"][3][key].long(), ref[key])]
            # The same picks; weights within f32 rounding (the row sums reduce in another order).
            same = (torch.equal(results["fused"][1], results["three"][1])
                    and torch.allclose(results["fused"][2], results["three"][2], rtol=1e-6, atol=0))
            print(f"{model} T={T} S={S} m{block_m} chunk {chunk}: route+align_count+align_scatter "
                  f"{results['three'][0]:.1f} us | route_count+align_scatter {results['fused'][0]:.1f} us"
                  + ("" if same else " | ids/weights DIFFER") + (f" | WRONG {wrong}" if wrong else ""), flush=True)


if __name__ == "__main__":
    main()
