"""The down GEMM alone: tritonmoe's `down` kernel beside vLLM's w2 launch of
`fused_moe_kernel`, on the same inputs, one kernel per timed graph replay (L2
flushed before each). Where the large-T gap to vLLM sits (docs/performance-log.md
#10): run it after a change to kernels/down_combine.py or kernels/grouped_gemm.py.

vLLM runs its best large-T config of the peers run (BLOCK 128x256x64, GROUP_SIZE_M
16, 8 warps, 3 stages, bf16 output); ours runs each BLOCK_M 128 tile of
tools/aot/variants.py (y in bf16, as in the library), compiled here by Triton's JIT,
each also in its TMA form (kernels/down_combine.py, TMA=True: h and w2 through
device-side tensor descriptors; not in the bundle until it measures faster).
Both read the same routing: vLLM's alignment (in torch, bench/peers.py) is exactly
ours (sorted_slots with sentinel S, one expert per block).

Usage (GPU machine, repository root; .peers/ as in bench/README.md):
  PYTHONPATH=. python3 bench/down_vs_vllm.py   [env MODELS=mixtral-8x7b,... TOKENS=1024,8192]
"""
import math
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402
from kernels.down_combine import down  # noqa: E402
from tools.aot.variants import DOWN_TILES, GROUP8  # noqa: E402

DEV = "cuda"
BLOCK_M = 128
VLLM_CONFIG = dict(BLOCK_SIZE_M=BLOCK_M, BLOCK_SIZE_N=256, BLOCK_SIZE_K=64, GROUP_SIZE_M=16, num_warps=8,
                   num_stages=3)
flush = torch.empty(512 * 2**20, dtype=torch.uint8, device=DEV)


def graph_ms(fn, reps=15):
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    times = []
    for _ in range(reps):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[reps // 2]


def main():
    models = peers.env_list("MODELS", "mixtral-8x7b,qwen3-30b-a3b,gpt-oss-120b")
    tokens = [int(t) for t in peers.env_list("TOKENS", "1024,8192")]
    print(f"{torch.cuda.get_device_name()}; {peers.gpu_state()}")
    # The TMA form builds its tensor descriptors on the device, in scratch from here.
    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, device=DEV, dtype=torch.int8))
    for name in models:
        m = peers.MODELS[name]
        E, H, I, k = m["E"], m["H"], m["I"], m["k"]
        gen = torch.Generator(device=DEV).manual_seed(1)
        w2 = torch.randn(E, H, I, device=DEV, dtype=torch.bfloat16, generator=gen) / math.sqrt(I)
        for T in tokens:
            S = T * k
            weights, ids = peers.torch_route(torch.randn(T, E, device=DEV, generator=gen), m, None)
            a = torch.randn(S, I, device=DEV, dtype=torch.bfloat16, generator=gen)
            sorted_slots, expert_ids, total = peers.vllm_align(ids, E, BLOCK_M)
            capacity = sorted_slots.numel()
            # Ours reads h by padded position (gate_up writes it so); vLLM gathers rows of a by slot.
            h = torch.zeros(capacity, I, device=DEV, dtype=torch.bfloat16)
            valid = sorted_slots < S
            h[valid] = a[sorted_slots[valid].long()]
            m_blocks = capacity // BLOCK_M
            block_expert = torch.where(torch.arange(m_blocks, device=DEV) * BLOCK_M < total, expert_ids, -1).int()
            flops = 2 * S * H * I

            y_vllm = torch.empty(T, k, H, device=DEV, dtype=torch.bfloat16)
            grid, kw = peers.vllm_launch("w2", m, T, VLLM_CONFIG,
                                         (a, w2, y_vllm, weights.view(-1), (sorted_slots, expert_ids, total)))
            kernel = peers.vllm_module().fused_moe_kernel
            ms = graph_ms(lambda: kernel[grid](**kw))
            print(f"{name} T={T} vllm w2 128x256x64 w8 s3: {ms:.3f} ms {flops / ms / 1e9:.0f} TFLOP/s", flush=True)
            reference = y_vllm.float().view(S, H)
            for index, per_backend in enumerate(DOWN_TILES[BLOCK_M]):
                block_n, block_k, warps, stages, *extra = per_backend["cuda"]
                group_m = dict(GROUP8, **(extra[0] if extra else {}))["GROUP_M"]
                for tma in (False, True):
                    y = torch.empty(S, H, device=DEV, dtype=torch.bfloat16)
                    ours = lambda: down[(m_blocks * triton.cdiv(H, block_n),)](  # noqa: E731
                        h, w2, y, sorted_slots, block_expert, weights.view(-1), S, k, H, I, k, 0, ROUTED=True,
                        BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m, TMA=tma,
                        num_warps=warps, num_stages=stages)
                    ms = graph_ms(ours)
                    err = ((y - reference).norm() / reference.norm()).item()
                    print(f"  tmoe down t{index}{' tma' if tma else ''} {BLOCK_M}x{block_n}x{block_k} w{warps} "
                          f"s{stages} g{group_m}: {ms:.3f} ms {flops / ms / 1e9:.0f} TFLOP/s, rel err vs vLLM {err:.1e}",
                          flush=True)


if __name__ == "__main__":
    main()
