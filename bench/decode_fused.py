"""Both decode GEMMs in one launch (kernels/decode.py `decode_fused`, experimental,
not in the bundle) beside the two launches the library runs (decode_gate_up_swiglu,
decode_down_combine), for the routed experts at small T, on the same inputs: Triton
JIT, one CUDA graph per timing, L2 flushed before each (docs/performance-log.md #18:
at T = 1 the two dependent kernels alone exceed the memory floor on qwen3-30b-a3b).

Every pair of a decode gate_up tile and a decode down tile of tools/aot/variants.py
runs both ways; the fused output must equal the two-launch output bit for bit (the
same sums in the same order), and the fused launch must leave its sync words zero.

Usage (GPU machine, repository root; .peers/ as in bench/README.md for the routing):
  PYTHONPATH=. python3 bench/decode_fused.py   [env MODELS=qwen3-30b-a3b,... TOKENS=1,2,4]
"""
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402
from gemm_vs_vllm import graph_ms, routed_cases  # noqa: E402
from kernels.decode import decode_down_combine, decode_fused, decode_gate_up_swiglu  # noqa: E402
from tools.aot import variants  # noqa: E402

DEV = "cuda"


def main():
    models = peers.env_list("MODELS", "qwen3-30b-a3b,gpt-oss-120b,mixtral-8x7b,deepseek-v3")
    tokens = [int(t) for t in peers.env_list("TOKENS", "1,2,4")]
    print(f"{torch.cuda.get_device_name()}; {peers.gpu_state()}")
    for name, m, w13, w2, T, weights, ids, gen in routed_cases(models, tokens):
        H, I, k = m["H"], m["I"], m["k"]
        S = T * k
        weights = weights.contiguous()
        x = torch.randn(T, H, device=DEV, dtype=torch.bfloat16, generator=gen)
        h = torch.empty(S, I, device=DEV, dtype=torch.bfloat16)
        sync = torch.zeros(2 + S, device=DEV, dtype=torch.int32)
        best = {}
        for g_index, g_tile in enumerate(variants.DECODE_GATE_UP_TILES):
            gn, gk, g_warps, g_stages = g_tile["cuda"]
            for d_index, d_tile in enumerate(variants.DECODE_DOWN_TILES):
                dn, dk, d_warps, d_stages, extra = d_tile["cuda"]
                gate_up_grid = S * triton.cdiv(I, gn)
                down_grid = T * triton.cdiv(H, dn)
                two = torch.empty(T, H, device=DEV, dtype=torch.bfloat16)
                fused = torch.empty(T, H, device=DEV, dtype=torch.bfloat16)

                def two_launches():
                    decode_gate_up_swiglu[(gate_up_grid,)](x, w13, h, ids, k, H, I, ROUTED=True, BLOCK_N=gn,
                                                           BLOCK_K=gk, num_warps=g_warps, num_stages=g_stages)
                    decode_down_combine[(down_grid,)](h, w2, two, ids, weights, h, w2, k, H, I, 0, HAS_SHARED=False,
                                                      BLOCK_N=dn, BLOCK_K=dk, **extra, num_warps=d_warps,
                                                      num_stages=d_stages)

                def one_launch():
                    decode_fused[(gate_up_grid + down_grid,)](x, w13, w2, h, fused, ids, weights, sync, T, k, H, I,
                                                              GATE_UP_N=gn, GATE_UP_K=gk, DOWN_N=dn, DOWN_K=dk,
                                                              **extra, num_warps=4, num_stages=g_stages)

                ms_two = graph_ms(two_launches)
                ms_fused = graph_ms(one_launch)
                same = torch.equal(two, fused)
                clean = int(sync.abs().sum().item()) == 0
                pair = f"t{g_index}/t{d_index}"
                print(f"{name} T={T} {pair}: two launches {ms_two * 1e3:.1f} us, one {ms_fused * 1e3:.1f} us"
                      f"{'' if same else '  OUTPUT DIFFERS'}{'' if clean else '  SYNC NOT ZEROED'}", flush=True)
                for key, ms in (("two", ms_two), ("fused", ms_fused)):
                    if key not in best or ms < best[key][0]:
                        best[key] = (ms, pair)
        print(f"{name} T={T} best: two launches {best['two'][0] * 1e3:.1f} us ({best['two'][1]}), "
              f"one launch {best['fused'][0] * 1e3:.1f} us ({best['fused'][1]})", flush=True)


if __name__ == "__main__":
    main()
