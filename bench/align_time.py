"""The small launches before the GEMMs, alone: align (align_count + align_scatter) on
routed ids of the benchmark models with one program per chunk and with the library's
grid (docs/kernels.md), for the expert bucket (BLOCK_E) the library picks and the next
one; and route for the same buckets. Each align result is checked exactly
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
from kernels import align, route  # noqa: E402

REPS = 20
CASES = [  # model, E, k, (T, block_m) as the H100 table plans them
    ("qwen3", 128, 8, [(16, 16), (64, 16), (128, 16), (256, 32), (512, 32), (2048, 128), (8192, 128)]),
    ("deepseek", 256, 8, [(16, 16), (64, 32), (256, 32), (512, 32), (2048, 128)]),
    ("gpt-oss", 128, 4, [(16, 16), (64, 16), (256, 32), (512, 64)]),
    ("mixtral", 8, 2, [(4, 16), (64, 32), (512, 128)]),
]


def per_copy_us(fn):
    return peers.replay_ms(fn, reps=9, copies=REPS, flush=False) * 1000 / REPS


def outputs(S, E, block_m):
    capacity = kt.max_padded_slots(S, E, block_m)
    return dict(counts=kt.poisoned(E, torch.int32), offsets=kt.poisoned(E + 1, torch.int32),
                sorted_slots=kt.poisoned(capacity, torch.int32),
                block_expert=kt.poisoned(capacity // block_m, torch.int32)), capacity


def main():
    print(f"card: {torch.cuda.get_device_name()}; us per copy, {REPS} copies per graph replay, median of 9")
    g = torch.Generator(device="cuda").manual_seed(0)
    for model, E, k, points in CASES:
        buckets = [b for b in kt.matrix.EXPERT_BUCKETS if b >= E][:2]  # the library's, and the next
        for T, block_m in points:
            ids = torch.rand(T, E, generator=g, device="cuda").topk(k, dim=1).indices.to(torch.int32).flatten()
            S = ids.numel()
            ref = kt.align_reference(ids, E, block_m)
            row = [f"{model} T={T} S={S} m{block_m}"]
            for block_e in buckets:
                chunk = kt.align_chunk(S)
                warps = 4 if chunk <= 256 else 8
                chunk_counts = torch.empty(triton.cdiv(S, chunk) * E, dtype=torch.int32, device="cuda")
                for name, grid in grids(S, E, block_m, block_e, chunk):
                    out, capacity = outputs(S, E, block_m)

                    def pair(out=out, capacity=capacity, grid=grid, block_e=block_e, chunk=chunk, warps=warps):
                        align.align_count[grid](ids, chunk_counts, out["sorted_slots"], S, E, capacity, CHUNK=chunk,
                                                BLOCK_E=block_e, num_warps=warps)
                        align.align_scatter[grid](ids, chunk_counts, out["counts"], out["offsets"],
                                                  out["sorted_slots"], out["block_expert"], S, E, block_m, capacity,
                                                  CHUNK=chunk, BLOCK_E=block_e, BLOCK_B=4096 // block_e,
                                                  num_warps=warps)

                    row.append(result(f"e{block_e} pair{name}", pair, out, ref))
            logits = torch.randn(T, E, device="cuda")
            topk_ids, topk_weights = torch.empty(T, k, dtype=torch.int32, device="cuda"), torch.empty(
                T, k, device="cuda")
            for block_e in buckets:
                row.append(f"route e{block_e} %.1f" % per_copy_us(lambda: route.route[(T, )](
                    logits, logits, topk_ids, topk_weights, E, k, 0, 1, 1, 1, 1.0, 0, BLOCK_E=block_e, num_warps=1)))
            print(" | ".join(row), flush=True)


def grids(S, E, block_m, block_e, chunk):
    """The chunks alone, then enough programs that each fills at most one CHUNK of
    sentinels and one step of block_expert."""
    capacity = kt.max_padded_slots(S, E, block_m)
    chunks = triton.cdiv(S, chunk)
    wide = max(chunks, triton.cdiv(capacity, chunk), triton.cdiv(capacity // block_m, 4096 // block_e))
    return [("", (chunks, )), (f"/{wide}", (wide, ))]


def result(name, fn, out, ref):
    us = per_copy_us(fn)
    wrong = [key for key in ref if not torch.equal(out[key].long(), ref[key])]
    return f"{name} {us:.1f}" + (f" WRONG {wrong}" if wrong else "")


if __name__ == "__main__":
    main()
