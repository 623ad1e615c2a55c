"""The small launches before the GEMMs, alone: align (align_count + align_scatter, and
align_count_scatter: both in one launch) on
routed ids of the benchmark models with one program per chunk and with the library's
grid (docs/kernels.md), for the expert bucket (BLOCK_E) the library picks and the next
one; and route in both forms for the library's bucket. Each align result is checked exactly
against the torch reference of the kernel tests. Timed as the layer runs them:
CUDA-graph replays of REPS back-to-back copies of the stage (no flush: ids come fresh
from route), per copy. performance-log.md #28.

Usage (GPU machine, repository root):  PYTHONPATH=. python3 bench/align_time.py
"""
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels" / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402
import test_kernels_gpu as kt  # noqa: E402

REPS = 20
CASES = [  # model, E, k, (T, block_m) as the H100 table plans them
    ("qwen3", 128, 8, [(16, 16), (64, 16), (128, 16), (256, 32), (512, 32), (1024, 64), (2048, 128), (8192, 128)]),
    ("deepseek", 256, 8, [(16, 16), (64, 32), (128, 32), (256, 32), (512, 32), (1024, 128), (2048, 128)]),
    ("gpt-oss", 128, 4, [(16, 16), (64, 16), (256, 32), (512, 64)]),
    ("mixtral", 8, 2, [(4, 16), (64, 32), (512, 128)]),
]


def per_copy_us(fn):
    return peers.replay_ms(fn, reps=9, copies=REPS, flush=False) * 1000 / REPS


def outputs(S, E, block_m):
    capacity = kt.max_padded_slots(S, E, block_m)
    return dict(counts=kt.poisoned(E, torch.int32), offsets=kt.poisoned(E + 1, torch.int32),
                sorted_slots=kt.poisoned(capacity, torch.int32), slot_positions=kt.poisoned(S, torch.int32),
                block_expert=kt.poisoned(capacity // block_m, torch.int32)), capacity


def main():
    print(f"card: {torch.cuda.get_device_name()}; us per copy, {REPS} copies per graph replay, median of 9")
    g = torch.Generator(device="cuda").manual_seed(0)
    jit = kt.JitLauncher()  # the bundled configs (warps, BLOCK_B) of each variant
    for model, E, k, points in CASES:
        buckets = [b for b in kt.matrix.EXPERT_BUCKETS if b >= E][:2]  # the library's, and the next
        for T, block_m in points:
            ids = torch.rand(T, E, generator=g, device="cuda").topk(k, dim=1).indices.to(torch.int32).flatten()
            S = ids.numel()
            ref = kt.align_reference(ids, E, block_m)
            row = [f"{model} T={T} S={S} m{block_m}"]
            for block_e in buckets:
                chunk = kt.align_chunk(S)
                variant = f"c{chunk}_e{block_e}"
                block_b = jit.constexprs("align_scatter", variant)["BLOCK_B"]
                chunk_counts = torch.empty(triton.cdiv(S, chunk) * E, dtype=torch.int32, device="cuda")
                for name, programs in grids(S, E, block_m, block_b, chunk):
                    out, capacity = outputs(S, E, block_m)

                    def pair(out=out, capacity=capacity, programs=programs, variant=variant):
                        jit.launch("align_count", variant, programs, topk_ids=ids, chunk_counts=chunk_counts,
                                   sorted_slots=out["sorted_slots"], num_slots=S, E=E, capacity=capacity)
                        jit.launch("align_scatter", variant, programs, topk_ids=ids, chunk_counts=chunk_counts,
                                   expert_counts=out["counts"], expert_offsets=out["offsets"],
                                   sorted_slots=out["sorted_slots"], slot_positions=out["slot_positions"],
                                   block_expert=out["block_expert"], num_slots=S, E=E, block_m=block_m,
                                   capacity=capacity)

                    row.append(result(f"e{block_e} pair{name}", pair, out, ref))
                if chunk == kt.matrix.ALIGN_CHUNKS[0]:
                    out, capacity = outputs(S, E, block_m)
                    programs = kt.align_programs(S, capacity, block_m, chunk, block_b, one_launch=True)

                    def one_launch(out=out, capacity=capacity, programs=programs, variant=variant):
                        jit.launch("align_count_scatter", variant, programs, topk_ids=ids,
                                   expert_counts=out["counts"], expert_offsets=out["offsets"],
                                   sorted_slots=out["sorted_slots"], slot_positions=out["slot_positions"],
                                   block_expert=out["block_expert"], num_slots=S, E=E, block_m=block_m,
                                   capacity=capacity)

                    row.append(result(f"e{block_e} one/{programs}", one_launch, out, ref))
            logits = torch.randn(T, E, device="cuda")
            topk_ids, topk_weights = torch.empty(T, k, dtype=torch.int32, device="cuda"), torch.empty(
                T, k, device="cuda")
            # The library's route variant (one bitonic top-k where k allows) and the rounds any k
            # takes, for the library's bucket; logits stand in for the correction bias, never
            # read with has_correction_bias 0.
            for rounds in (False, True):
                route_variant = kt.route_variant("f32", E, k, rounds)
                row.append(f"route {route_variant} %.1f" % per_copy_us(lambda: jit.launch(
                    "route", route_variant, T, logits=logits, correction_bias=logits, topk_ids=topk_ids,
                    topk_weights=topk_weights, E=E, top_k=k, mode=0, renormalize=1, n_group=1, topk_group=1,
                    routed_scaling_factor=1.0, has_correction_bias=0)))
            print(" | ".join(row), flush=True)


def grids(S, E, block_m, block_b, chunk):
    """The chunks alone, then the library's grid."""
    chunks = triton.cdiv(S, chunk)
    wide = kt.align_programs(S, kt.max_padded_slots(S, E, block_m), block_m, chunk, block_b)
    return [("", chunks), (f"/{wide}", wide)]


def result(name, fn, out, ref):
    us = per_copy_us(fn)
    wrong = [key for key in ref if not torch.equal(out[key].long(), ref[key])]
    return f"{name} {us:.1f}" + (f" WRONG {wrong}" if wrong else "")


if __name__ == "__main__":
    main()
