"""combine's sum inside down (performance-log.md #54): the program that writes a token's
last row of y in a column block sums the token's rows into out (kernels/down_combine.py
COMBINE_LAST), against the library's two launches, down then combine. Same tile (the
committed H100 table's choice for the model and T), same inputs; out compared bit for
bit (both sum the same bf16 rows in the same order in f32) and the arrival counts
checked back at zero after the timed replays (each last arriver resets its count); out
is compared again after each of ten more runs.
Times: down alone, down + combine, down with COMBINE_LAST, each one CUDA-graph replay
with L2 flushed before it.

Usage (GPU machine, repository root):
  PYTHONPATH=. python3 bench/down_combine_probe.py   [env MODELS=qwen3-30b-a3b,... TOKENS=256,8192]
"""
import json
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gemm_vs_vllm  # noqa: E402
import peers  # noqa: E402
from kernels.down_combine import combine, down, routed_down  # noqa: E402
from tools.aot import variants  # noqa: E402

DEV = "cuda"
REPS = 15
RECHECKS = 10  # eager runs of the one-launch form after the timing, each compared
TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "nvidia-h100-80gb-hbm3.json")


@triton.jit
def down_combine_last(h, w2, y, out, arrivals, sorted_slots, block_expert, topk_weights, num_slots, top_k, H, I, E,
                      num_m_blocks, ROUTED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, TMA: tl.constexpr, PERSISTENT: tl.constexpr,
                      HALF_TAIL: tl.constexpr, PDL: tl.constexpr):
    """down with COMBINE_LAST (routed rows only, k rows of y per token)."""
    routed_down(h, w2, y, out, arrivals, sorted_slots, block_expert, topk_weights, num_slots, top_k, H, I, E,
                num_m_blocks, top_k, 0, ROUTED, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, TMA, PERSISTENT, HALF_TAIL, True)


def tuned_down(model, T):
    """(BLOCK_M, down tile index) the committed table runs at T; None where it decodes."""
    shapes = {s["name"]: s for s in json.load(open(TABLE))["shapes"]}
    bucket = next(b for b in shapes[model]["buckets"] if T <= b["max_tokens"])
    return None if bucket["path"] == "decode" else (bucket["block_m"], bucket["down_tile"])


def main():
    models = peers.env_list("MODELS", "qwen3-30b-a3b,deepseek-v3,gpt-oss-120b,mixtral-8x7b")
    tokens = [int(t) for t in peers.env_list("TOKENS", "256,512,2048,8192")]
    print(f"{torch.cuda.get_device_name()}; ms, median of {REPS} graph replays, L2 flushed before each")
    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, device=DEV, dtype=torch.int8))
    for name, m, _, w2, T, weights, ids, gen in gemm_vs_vllm.routed_cases(models, tokens):
        E, H, I, k = m["E"], m["H"], m["I"], m["k"]
        choice = tuned_down(name, T)
        if choice is None:
            print(f"{name} T={T}: decode path, no combine")
            continue
        block_m, tile = choice
        config = variants.target_config(variants.tile_configs(
            variants.DOWN_TILES[block_m][tile], dict(variants.DOWN_DEFAULTS, ROUTED=True, BLOCK_M=block_m)),
            gemm_vs_vllm.TARGET)
        c = config.constexprs
        launch = dict(num_warps=config.num_warps, num_stages=config.num_stages)
        sorted_slots, block_expert, _ = gemm_vs_vllm.aligned(ids, E, block_m)
        m_blocks = sorted_slots.numel() // block_m
        grid = gemm_vs_vllm.launch_grid(config, m_blocks, H)
        S = T * k
        h = torch.randn(sorted_slots.numel(), I, device=DEV, dtype=torch.bfloat16, generator=gen)
        y = torch.empty(S, H, device=DEV, dtype=torch.bfloat16)
        out_two, out_one = (torch.full((T, H), float("nan"), device=DEV, dtype=torch.bfloat16) for _ in range(2))
        arrivals = torch.zeros(T * triton.cdiv(H, c["BLOCK_N"]), device=DEV, dtype=torch.int32)
        block_h = variants.COMBINE_BLOCK_H
        common = (sorted_slots, block_expert, weights.view(-1), S, k, H, I, E, m_blocks)

        def down_only():
            down[grid](h, w2, y, *common, k, 0, **c, **launch)

        def two_launches():
            down_only()
            combine[(T * triton.cdiv(H, block_h),)](y, out_two, H, k, BLOCK_H=block_h, PDL=False, num_warps=4,
                                                    num_stages=1)

        def one_launch():
            down_combine_last[grid](h, w2, y, out_one, arrivals, *common, **c, **launch)

        times = [peers.replay_ms(run, REPS) for run in (down_only, two_launches, one_launch)]
        same = torch.equal(out_two, out_one)
        for _ in range(RECHECKS):  # a race between arrivals and the rows' stores would show in some run
            out_one.fill_(float("nan"))
            one_launch()
            same &= torch.equal(out_two, out_one)
        clean = int(arrivals.count_nonzero())
        print(f"{name} T={T} m{block_m} t{tile} x{grid[0]}: down {times[0]:.4f} | down + combine {times[1]:.4f} | "
              f"COMBINE_LAST {times[2]:.4f} ({(times[2] / times[1] - 1) * 100:+.1f}%) | out "
              f"{'identical' if same else 'DIFFERENT'}, arrivals left nonzero {clean}", flush=True)


if __name__ == "__main__":
    main()
