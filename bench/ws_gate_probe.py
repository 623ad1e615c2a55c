"""Session probe: gate_up_swiglu through Triton 3.6's Hopper warp specialization, with
h stored through a tensor descriptor (h is indexed by padded position), x gathered by
pointers or pre-gathered (TMA), gate and up joined in one dot or as two. Correctness
against a float reference on the valid rows, time beside the library's tiles.

  PYTHONPATH=. python3 bench/ws_gate_probe.py   [env MODELS=... TOKENS=...]
"""
import os
import sys

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gemm_vs_vllm as g  # noqa: E402
import peers  # noqa: E402
from kernels.gate_up_swiglu import gate_up_swiglu, joined_weights, split_joined  # noqa: E402
from kernels.grouped_gemm import grouped_tile  # noqa: E402
from tools.aot import variants  # noqa: E402


@triton.jit
def gate_up_ws(x, xs, w13, h, sorted_slots, block_expert, padded_total, num_slots, top_k, H, I, E, num_m_blocks,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
               XS: tl.constexpr, JOIN: tl.constexpr, WS: tl.constexpr):
    num_n_blocks = tl.cdiv(I, BLOCK_N)
    x_desc = tl.make_tensor_descriptor(xs, shape=[num_m_blocks * BLOCK_M, H], strides=[H, 1],
                                       block_shape=[BLOCK_M, BLOCK_K])
    h_desc = tl.make_tensor_descriptor(h, shape=[num_m_blocks * BLOCK_M, I], strides=[I, 1],
                                       block_shape=[BLOCK_M, BLOCK_N])
    if JOIN:
        w_desc = joined_weights(w13, E, H, I, BLOCK_N, BLOCK_K)
    else:
        w_desc = tl.make_tensor_descriptor(w13, shape=[E * 2 * I, H], strides=[H, 1], block_shape=[BLOCK_N, BLOCK_K])
    m_blocks = tl.load(padded_total) // BLOCK_M
    ks = tl.arange(0, BLOCK_K)
    for tile in tl.range(tl.program_id(0), m_blocks * num_n_blocks, tl.num_programs(0), warp_specialize=WS):
        pid_m, pid_n = grouped_tile(tile, m_blocks, num_n_blocks, GROUP_M)
        expert = tl.load(block_expert + pid_m)
        first = pid_m * BLOCK_M
        slots = tl.load(sorted_slots + first + tl.arange(0, BLOCK_M))
        has_slot = slots < num_slots
        x_rows = x + (slots // top_k).to(tl.int64)[:, None] * H + ks[None, :]
        if JOIN:
            acc = tl.zeros([BLOCK_M, 2 * BLOCK_N], tl.float32)
        else:
            acc_gate = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            acc_up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        gate_row = expert * 2 * I + pid_n * BLOCK_N
        for k0 in range(0, H, BLOCK_K):
            if XS:
                a = x_desc.load([first, k0])
            else:
                a = tl.load(x_rows + k0, mask=has_slot[:, None] & (ks < H - k0)[None, :], other=0.0)
            if JOIN:
                w = w_desc.load([expert, 0, pid_n * BLOCK_N, k0]).reshape(2 * BLOCK_N, BLOCK_K)
                acc = tl.dot(a, w.T, acc)
            else:
                acc_gate = tl.dot(a, w_desc.load([gate_row, k0]).T, acc_gate)
                acc_up = tl.dot(a, w_desc.load([gate_row + I, k0]).T, acc_up)
        if JOIN:
            acc_gate, acc_up = split_joined(acc, BLOCK_M, BLOCK_N)
        h_desc.store([first, pid_n * BLOCK_N], (acc_gate * tl.sigmoid(acc_gate) * acc_up).to(h.dtype.element_ty))


FORMS = {  # name -> (BLOCK_N, BLOCK_K, warps, stages, programs per SM, XS, JOIN, WS)
    "ptr two": (128, 64, 8, 3, 1, False, False, False),
    "ptr two ws": (128, 64, 4, 3, 1, False, False, True),
    "xs two ws": (128, 64, 4, 3, 1, True, False, True),
    "xs two ws s4": (128, 64, 4, 4, 1, True, False, True),
    "ptr join ws": (128, 64, 4, 3, 1, False, True, True),
    "xs join ws": (128, 64, 4, 3, 1, True, True, True),
    "xs two": (128, 64, 8, 3, 1, True, False, False),
    "ptr two n64 ws s4": (64, 64, 4, 4, 1, False, False, True),
}


def main():
    models = peers.env_list("MODELS", "qwen3-30b-a3b,gpt-oss-120b,deepseek-v3,mixtral-8x7b")
    tokens = [int(t) for t in peers.env_list("TOKENS", "2048,8192")]
    print(f"{torch.cuda.get_device_name()}; {peers.gpu_state()}", flush=True)
    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, device=g.DEV, dtype=torch.int8))
    for name, m, w13, w2, T, weights, ids, gen in g.routed_cases(models, tokens):
        E, H, I, k = m["E"], m["H"], m["I"], m["k"]
        S = T * k
        sorted_slots, block_expert, (_, _, total) = g.aligned(ids, E, 128)
        capacity = sorted_slots.numel()
        valid = sorted_slots < S
        m_blocks = capacity // 128
        real_blocks = total.item() // 128
        print(f"{name} T={T}: {real_blocks} real blocks of {m_blocks}", flush=True)
        x = torch.randn(T, H, device=g.DEV, dtype=torch.bfloat16, generator=gen)
        rows_token = torch.where(valid, sorted_slots // k, 0).long()
        row_expert = torch.full((capacity,), -1, device=g.DEV, dtype=torch.long)
        row_expert[:m_blocks * 128] = block_expert.repeat_interleave(128).long()
        ref = torch.zeros(capacity, I, device=g.DEV)
        for e in range(E):
            rows = torch.nonzero(valid & (row_expert == e)).flatten()
            if rows.numel():
                gu = x[rows_token[rows]].float() @ w13[e].float().T
                ref[rows] = F.silu(gu[:, :I]) * gu[:, I:]
        ref = ref[valid]
        flops = 2 * S * 2 * I * H
        h = torch.empty(capacity, I, device=g.DEV, dtype=torch.bfloat16)
        for index in (7, 11):
            config = g.variants.target_config(g.variants.tile_configs(
                variants.GATE_UP_TILES[128][index], dict(variants.GATE_UP_DEFAULTS, ROUTED=True, BLOCK_M=128)),
                g.TARGET)
            h.fill_(float("nan"))
            programs = g.launch_grid(config, m_blocks, I)
            ms = peers.replay_ms(lambda: gate_up_swiglu[programs](  # noqa: E731
                x, w13, h, sorted_slots, block_expert, S, k, H, I, E, m_blocks, **config.constexprs,
                num_warps=config.num_warps, num_stages=config.num_stages), g.REPS)
            print(f"  lib t{index}: {ms:.3f} ms {flops / ms / 1e9:.0f} TFLOP/s err {g.rel_err(h[valid], ref):.1e}",
                  flush=True)
        xs = x[rows_token]
        for form, (bn, bk, warps, stages, per_sm, use_xs, join, ws) in FORMS.items():
            h.fill_(float("nan"))
            programs = (min(real_blocks * triton.cdiv(I, bn), per_sm * g.SMS),)
            try:
                ms = peers.replay_ms(lambda: gate_up_ws[programs](  # noqa: E731
                    x, xs, w13, h, sorted_slots, block_expert, total, S, k, H, I, E, m_blocks, BLOCK_M=128,
                    BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, XS=use_xs, JOIN=join, WS=ws, num_warps=warps,
                    num_stages=stages), g.REPS)
                out = h[valid].float()
                nan = out.isnan().any(1).float().mean().item()
                print(f"  {form}: {ms:.3f} ms {flops / ms / 1e9:.0f} TFLOP/s err "
                      f"{g.rel_err(torch.nan_to_num(out), ref):.1e}, rows with NaN {nan:.1%}", flush=True)
            except Exception as error:  # noqa: BLE001 - a probe reports what fails to compile
                print(f"  {form}: failed: {str(error).splitlines()[0][:160]}", flush=True)


if __name__ == "__main__":
    main()
