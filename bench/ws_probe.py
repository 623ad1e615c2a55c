"""Session probe (not kept in the tree): Triton 3.6's Hopper warp specialization on
persistent grouped GEMM loops, and gate_up reading x pre-gathered in padded order
through TMA. Correctness against a float reference and time, beside the library's tiles.

  PYTHONPATH=. python3 bench/ws_probe.py   [env MODELS=... TOKENS=... ]
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
from kernels.down_combine import down, routed_descriptors, rows_tile, store_rows  # noqa: E402
from kernels.gate_up_swiglu import gate_up_swiglu, split_joined, store_swiglu, joined_weights  # noqa: E402
from kernels.grouped_gemm import grouped_tile  # noqa: E402
from tools.aot import variants  # noqa: E402


@triton.jit
def down_probe(h, w2, y, sorted_slots, block_expert, topk_weights, padded_total, num_slots, top_k, H, I, E,
               num_m_blocks, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
               GROUP_M: tl.constexpr, WS: tl.constexpr, FLATTEN: tl.constexpr, BOUND: tl.constexpr):
    num_n_blocks = tl.cdiv(H, BLOCK_N)
    h_desc, _, w_desc = routed_descriptors(h, w2, E, H, I, num_m_blocks, BLOCK_M, BLOCK_N, BLOCK_K, False)
    if BOUND:
        m_blocks = tl.load(padded_total) // BLOCK_M
    else:
        m_blocks = num_m_blocks
    for tile in tl.range(tl.program_id(0), m_blocks * num_n_blocks, tl.num_programs(0), flatten=FLATTEN,
                         warp_specialize=WS):
        pid_m, pid_n = grouped_tile(tile, m_blocks, num_n_blocks, GROUP_M)
        expert = tl.load(block_expert + pid_m)
        if BOUND:
            rows_tile(h_desc, w_desc, y, sorted_slots, topk_weights, pid_m * BLOCK_M, expert, pid_n, num_slots, top_k,
                      H, I, top_k, 0, BLOCK_M, BLOCK_N, BLOCK_K)
        else:
            if expert >= 0:
                rows_tile(h_desc, w_desc, y, sorted_slots, topk_weights, pid_m * BLOCK_M, expert, pid_n, num_slots,
                          top_k, H, I, top_k, 0, BLOCK_M, BLOCK_N, BLOCK_K)


@triton.jit
def gate_up_probe(xs, w13, h, sorted_slots, block_expert, padded_total, num_slots, H, I, E, num_m_blocks,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                  WS: tl.constexpr, PERSISTENT: tl.constexpr):
    """gate_up with x already gathered into padded order (xs[row] = x[token of row]): both operands TMA."""
    num_n_blocks = tl.cdiv(I, BLOCK_N)
    x_desc = tl.make_tensor_descriptor(xs, shape=[num_m_blocks * BLOCK_M, H], strides=[H, 1],
                                       block_shape=[BLOCK_M, BLOCK_K])
    w_desc = joined_weights(w13, E, H, I, BLOCK_N, BLOCK_K)
    m_blocks = tl.load(padded_total) // BLOCK_M
    if PERSISTENT:
        first, step = tl.program_id(0), tl.num_programs(0)
    else:
        first, step = tl.program_id(0), m_blocks * num_n_blocks
    for tile in tl.range(first, m_blocks * num_n_blocks, step, warp_specialize=WS):
        pid_m, pid_n = grouped_tile(tile, m_blocks, num_n_blocks, GROUP_M)
        expert = tl.load(block_expert + pid_m)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        has_slot = tl.load(sorted_slots + rows) < num_slots
        acc = tl.zeros([BLOCK_M, 2 * BLOCK_N], tl.float32)
        for k0 in range(0, H, BLOCK_K):
            w = w_desc.load([expert, 0, pid_n * BLOCK_N, k0]).reshape(2 * BLOCK_N, BLOCK_K)
            acc = tl.dot(x_desc.load([pid_m * BLOCK_M, k0]), w.T, acc)
        acc_gate, acc_up = split_joined(acc, BLOCK_M, BLOCK_N)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        store_swiglu(h, acc_gate, acc_up, rows, has_slot, cols, cols < I, I)


@triton.jit
def down_diag(h, w2, y, y_pad, sorted_slots, block_expert, topk_weights, padded_total, num_slots, top_k, H, I, E,
              num_m_blocks, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
              GROUP_M: tl.constexpr, EPI: tl.constexpr, WS: tl.constexpr = True):
    """EPI 0: slots read before the K loop (the library's order); 1: after it; 2: y_pad in padded
    order by pointers, unweighted, no mask; 3: y_pad through a tensor descriptor store."""
    num_n_blocks = tl.cdiv(H, BLOCK_N)
    h_desc, _, w_desc = routed_descriptors(h, w2, E, H, I, num_m_blocks, BLOCK_M, BLOCK_N, BLOCK_K, False)
    y_desc = tl.make_tensor_descriptor(y_pad, shape=[num_m_blocks * BLOCK_M, H], strides=[H, 1],
                                       block_shape=[BLOCK_M, BLOCK_N])
    m_blocks = tl.load(padded_total) // BLOCK_M
    for tile in tl.range(tl.program_id(0), m_blocks * num_n_blocks, tl.num_programs(0), warp_specialize=WS):
        pid_m, pid_n = grouped_tile(tile, m_blocks, num_n_blocks, GROUP_M)
        expert = tl.load(block_expert + pid_m)
        first_row = pid_m * BLOCK_M
        if EPI == 0:
            slots = tl.load(sorted_slots + (first_row + tl.arange(0, BLOCK_M)))
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(0, I, BLOCK_K):
            w = w_desc.load([expert, pid_n * BLOCK_N, k0]).reshape(BLOCK_N, BLOCK_K)
            acc = tl.dot(h_desc.load([first_row, k0]), w.T, acc)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        if EPI == 1:
            slots = tl.load(sorted_slots + (first_row + tl.arange(0, BLOCK_M)))
        if EPI <= 1:
            store_rows(y, acc, topk_weights, slots, slots < num_slots, cols, cols < H, top_k, H, top_k, 0, True)
        elif EPI == 2:
            rows = first_row + tl.arange(0, BLOCK_M)
            tl.store(y_pad + rows.to(tl.int64)[:, None] * H + cols[None, :], acc.to(y_pad.dtype.element_ty))
        elif EPI == 3:
            y_desc.store([first_row, pid_n * BLOCK_N], acc.to(y_pad.dtype.element_ty))
        else:
            slots = tl.load(sorted_slots + (first_row + tl.arange(0, BLOCK_M)))
            weight = tl.load(topk_weights + slots, mask=slots < num_slots, other=0.0)
            y_desc.store([first_row, pid_n * BLOCK_N], (acc * weight[:, None]).to(y_pad.dtype.element_ty))


@triton.jit
def combine_gather(y_pad, position, out, H, top_k, BLOCK_H: tl.constexpr):
    """out[t] = sum over j of y_pad[position[t * top_k + j]] (rows of down in padded order)."""
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_ok = cols < H
    acc = tl.zeros([BLOCK_H], tl.float32)
    for j in range(top_k):
        row = tl.load(position + token * top_k + j).to(tl.int64)
        acc += tl.load(y_pad + row * H + cols, mask=col_ok, other=0.0)
    tl.store(out + token * H + cols, acc.to(out.dtype.element_ty), mask=col_ok)


DOWN_FORMS = {  # name -> (BLOCK_N, BLOCK_K, warps, stages, programs per SM, WS, FLATTEN, BOUND)
    # Triton 3.6 specializes on sm_90 only at 4 warps a group: 4 become 12 (a producer and two consumers).
    "p256 if": (256, 64, 8, 3, 1, False, False, False),
    "p256 if ws": (256, 64, 4, 3, 1, True, False, False),
    "p256 bound": (256, 64, 8, 3, 1, False, False, True),
    "p256 bound ws": (256, 64, 4, 3, 1, True, False, True),
    "p256 bound ws s4": (256, 64, 4, 4, 1, True, False, True),
    "p128 bound": (128, 64, 8, 3, 2, False, False, True),
    "p128 bound ws": (128, 64, 4, 3, 1, True, False, True),
    "p128 bound ws s5": (128, 64, 4, 5, 1, True, False, True),
}
GATE_UP_FORMS = {  # name -> (BLOCK_N, BLOCK_K, warps, stages, programs per SM or 0 for one tile each, WS)
    "xs tma": (128, 64, 8, 4, 0, False),
    "xs p1": (128, 64, 8, 3, 1, False),
    "xs p1 ws": (128, 64, 4, 3, 1, True),
    "xs p1 ws s4": (128, 64, 4, 4, 1, True),
    "xs tma ws": (128, 64, 4, 3, 0, True),
}
LIBRARY_TILES = {"gate_up": (7, 11), "down": (6, 7, 10)}


def library(tiles, defaults, index):
    per_backend = tiles[128][index]
    return variants.target_config(variants.tile_configs(per_backend, dict(defaults, ROUTED=True, BLOCK_M=128)),
                                  g.TARGET)


def compiled_ws(kernel):
    """Whether the last compiled instance of kernel was warp-specialized (its TTGIR has partitions)."""
    for cache in kernel.device_caches.values():
        for compiled in cache[0].values():
            last = compiled
    return "ttg.warp_specialize" in last.asm["ttgir"], last.metadata.num_warps


def combines(y, sorted_slots, valid, S, k, H, T):
    """The library's combine (rows of y in slot order) against combine_gather (rows in padded order)."""
    from kernels.down_combine import combine
    out = torch.empty(T, H, device=g.DEV, dtype=torch.bfloat16)
    ms = peers.replay_ms(lambda: combine[(T, triton.cdiv(H, 1024))](y, out, H, k, BLOCK_H=1024, PDL=False), g.REPS)
    reference = y.float().view(T, k, H).sum(1)
    position = torch.empty(S, device=g.DEV, dtype=torch.int32)
    position[sorted_slots[valid].long()] = torch.nonzero(valid).flatten().int()
    y_pad = torch.zeros(sorted_slots.numel(), H, device=g.DEV, dtype=torch.bfloat16)
    y_pad[valid] = y[sorted_slots[valid].long()]
    out2 = torch.empty_like(out)
    ms2 = peers.replay_ms(lambda: combine_gather[(T, triton.cdiv(H, 1024))](y_pad, position, out2, H, k, BLOCK_H=1024),
                          g.REPS)
    print(f"  combine {ms:.3f} ms err {g.rel_err(out, reference):.1e}; combine_gather {ms2:.3f} ms err "
          f"{g.rel_err(out2, reference):.1e}", flush=True)


def diagnose(h, w2, y, sorted_slots, block_expert, weights, total, S, k, H, I, E, m_blocks, valid, ref_y):
    """Which of a warp-specialized down's outputs are wrong: NaN rows (never stored) by row within
    the block and column within the tile, and the error of the rest."""
    y_pad = torch.empty(m_blocks * 128, H, device=g.DEV, dtype=torch.bfloat16)
    slot_rows = sorted_slots[:m_blocks * 128].long()
    valid = valid[:m_blocks * 128]
    unweighted = torch.zeros(m_blocks * 128, H, device=g.DEV)
    unweighted[valid] = ref_y[slot_rows[valid]] / weights.view(-1).float()[slot_rows[valid], None]
    forms = [(256, 4, 3, e) for e in range(5)] + [(128, 4, 3, e) for e in range(5)]
    if os.environ.get("DIAG") == "plain":  # (BLOCK_N, warps, stages, EPI, WS, programs per SM)
        forms = [(256, 8, 3, 3, False, 1), (128, 8, 3, 3, False, 2), (256, 4, 3, 3, True, 1), (128, 4, 4, 3, True, 1),
                 (256, 8, 3, 1, False, 1)]
    if os.environ.get("DIAG") == "store":
        forms = [(bn, 4, st, e) for e in (3, 4) for bn, st in ((256, 3), (256, 4), (128, 3), (128, 4), (128, 5))]
    weighted = torch.zeros(m_blocks * 128, H, device=g.DEV)
    weighted[valid] = ref_y[slot_rows[valid]]
    for bn, warps, stages, epi, *rest in forms:
        ws, per_sm = rest or (True, 1)
        y.fill_(float("nan"))
        y_pad.fill_(float("nan"))
        programs = (min(m_blocks * triton.cdiv(H, bn), per_sm * g.SMS),)
        try:
            ms = peers.replay_ms(lambda: down_diag[programs](  # noqa: E731
                h, w2, y, y_pad, sorted_slots, block_expert, weights.view(-1), total, S, k, H, I, E, m_blocks,
                BLOCK_M=128, BLOCK_N=bn, BLOCK_K=64, GROUP_M=8, EPI=epi, WS=ws, num_warps=warps, num_stages=stages),
                g.REPS)
        except Exception as error:  # noqa: BLE001
            print(f"  diag n{bn} epi{epi}: failed: {str(error).splitlines()[0][:200]}", flush=True)
            continue
        if epi <= 1:
            out, ref = y.float(), ref_y
            row_in_block = torch.empty(S, device=g.DEV, dtype=torch.long)
            row_in_block[slot_rows[valid]] = torch.nonzero(valid).flatten() % 128
        else:
            out, ref = y_pad.float()[valid], (weighted if epi == 4 else unweighted)[valid]
            row_in_block = torch.nonzero(valid).flatten() % 128
        nan = out.isnan()
        bad_rows = torch.bincount(row_in_block[nan.any(1)] // 16, minlength=8).tolist()
        bad_cols = torch.bincount(torch.nonzero(nan.any(0)).flatten() % bn // 32, minlength=bn // 32).tolist()
        ok = ~nan
        err = ((out[ok] - ref[ok]).norm() / ref[ok].norm()).item() if ok.any() else float("nan")
        print(f"  diag n{bn} w{warps} s{stages} epi{epi} ws {ws} x{per_sm}: {ms:.3f} ms, NaN {nan.float().mean().item():.1%} of outputs; NaN rows by "
              f"16-row group of the block {bad_rows}, NaN columns by 32 of the tile {bad_cols}; rel err of the "
              f"rest {err:.1e}", flush=True)


def main():
    models = peers.env_list("MODELS", "qwen3-30b-a3b,deepseek-v3,gpt-oss-120b,mixtral-8x7b")
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
        real_tiles = total.item() // 128
        print(f"{name} T={T}: {real_tiles} real blocks of {m_blocks}, useful rows {S / total.item():.0%}", flush=True)
        x = torch.randn(T, H, device=g.DEV, dtype=torch.bfloat16, generator=gen)
        if "gate_up" in peers.env_list("STAGES", "gate_up,down"):
            tokens_of_rows = torch.where(valid, sorted_slots // k, 0).long()
            ref_h = None
            # gate_up: reference from float math on the valid rows
            xf = x.float()
            ids_rows = torch.full((capacity,), -1, device=g.DEV, dtype=torch.long)
            ids_rows[:m_blocks * 128] = block_expert.repeat_interleave(128).long()
            flops = 2 * S * 2 * I * H
            out = torch.empty(capacity, I, device=g.DEV, dtype=torch.bfloat16)
            ref_h = torch.empty(capacity, I, device=g.DEV, dtype=torch.float32)
            for e in range(E):
                rows = torch.nonzero(valid & (ids_rows == e)).flatten()
                if rows.numel():
                    gu = xf[tokens_of_rows[rows]] @ w13[e].float().T
                    ref_h[rows] = F.silu(gu[:, :I]) * gu[:, I:]
            ref_h = ref_h[valid]
            for index in LIBRARY_TILES["gate_up"]:
                config = library(variants.GATE_UP_TILES, variants.GATE_UP_DEFAULTS, index)
                out.fill_(float("nan"))
                programs = g.launch_grid(config, m_blocks, I)
                ms = peers.replay_ms(lambda: gate_up_swiglu[programs](  # noqa: E731
                    x, w13, out, sorted_slots, block_expert, S, k, H, I, E, m_blocks, **config.constexprs,
                    num_warps=config.num_warps, num_stages=config.num_stages), g.REPS)
                print(f"  gate_up lib t{index}: {ms:.3f} ms {flops / ms / 1e9:.0f} TFLOP/s err {g.rel_err(out[valid], ref_h):.1e}",
                      flush=True)
            xs = x[tokens_of_rows]
            ms = peers.replay_ms(lambda: torch.index_select(x, 0, tokens_of_rows, out=xs), g.REPS)
            print(f"  gather x into padded order (torch.index_select, {xs.numel() * 2 / 1e6:.0f} MB): {ms:.3f} ms", flush=True)
            for form, (bn, bk, warps, stages, per_sm, ws) in GATE_UP_FORMS.items():
                out.fill_(float("nan"))
                programs = (min(real_tiles * triton.cdiv(I, bn), per_sm * g.SMS) if per_sm else real_tiles * triton.cdiv(I, bn),)
                try:
                    ms = peers.replay_ms(lambda: gate_up_probe[programs](  # noqa: E731
                        xs, w13, out, sorted_slots, block_expert, total, S, H, I, E, m_blocks, BLOCK_M=128, BLOCK_N=bn,
                        BLOCK_K=bk, GROUP_M=8, WS=ws, PERSISTENT=per_sm > 0, num_warps=warps, num_stages=stages), g.REPS)
                    spec, nw = compiled_ws(gate_up_probe)
                    print(f"  gate_up {form}: {ms:.3f} ms {flops / ms / 1e9:.0f} TFLOP/s err "
                          f"{g.rel_err(out[valid], ref_h):.1e} (warp-specialized {spec}, {nw} warps)", flush=True)
                except Exception as error:  # noqa: BLE001 - a probe reports what fails to compile
                    print(f"  gate_up {form}: failed: {str(error).splitlines()[0][:200]}", flush=True)
        # down
        a = torch.randn(S, I, device=g.DEV, dtype=torch.bfloat16, generator=gen)
        h = torch.zeros(capacity, I, device=g.DEV, dtype=torch.bfloat16)
        h[valid] = a[sorted_slots[valid].long()]
        ref_y = torch.empty(S, H, device=g.DEV, dtype=torch.float32)
        flat_ids = ids.view(-1).long()
        wflat = weights.view(-1).float()
        for e in range(E):
            s = torch.nonzero(flat_ids == e).flatten()
            if s.numel():
                ref_y[s] = (a[s].float() @ w2[e].float().T) * wflat[s, None]
        flops = 2 * S * H * I
        y = torch.empty(S, H, device=g.DEV, dtype=torch.bfloat16)
        for index in LIBRARY_TILES["down"]:
            config = library(variants.DOWN_TILES, variants.DOWN_DEFAULTS, index)
            y.fill_(float("nan"))
            programs = g.launch_grid(config, m_blocks, H)
            ms = peers.replay_ms(lambda: down[programs](  # noqa: E731
                h, w2, y, sorted_slots, block_expert, weights.view(-1), S, k, H, I, E, m_blocks, k, 0,
                **config.constexprs, num_warps=config.num_warps, num_stages=config.num_stages), g.REPS)
            print(f"  down lib t{index}: {ms:.3f} ms {flops / ms / 1e9:.0f} TFLOP/s err {g.rel_err(y, ref_y):.1e}",
                  flush=True)
        if os.environ.get("DIAG"):
            for index in LIBRARY_TILES["down"]:
                config = library(variants.DOWN_TILES, variants.DOWN_DEFAULTS, index)
                programs = g.launch_grid(config, m_blocks, H)
                ms = peers.replay_ms(lambda: down[programs](  # noqa: E731
                    h, w2, y, sorted_slots, block_expert, weights.view(-1), S, k, H, I, E, m_blocks, k, 0,
                    **config.constexprs, num_warps=config.num_warps, num_stages=config.num_stages), g.REPS)
                print(f"  down lib t{index}: {ms:.3f} ms", flush=True)
            combines(y, sorted_slots, valid, S, k, H, T)
            diagnose(h, w2, y, sorted_slots, block_expert, weights, total, S, k, H, I, E, m_blocks, valid, ref_y)
            continue
        for form, (bn, bk, warps, stages, per_sm, ws, flat, bound) in DOWN_FORMS.items():
            y.fill_(float("nan"))
            programs = (min(m_blocks * triton.cdiv(H, bn), per_sm * g.SMS),)
            try:
                ms = peers.replay_ms(lambda: down_probe[programs](  # noqa: E731
                    h, w2, y, sorted_slots, block_expert, weights.view(-1), total, S, k, H, I, E, m_blocks,
                    BLOCK_M=128, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, WS=ws, FLATTEN=flat, BOUND=bound,
                    num_warps=warps, num_stages=stages), g.REPS)
                spec, nw = compiled_ws(down_probe)
                print(f"  down {form}: {ms:.3f} ms {flops / ms / 1e9:.0f} TFLOP/s err {g.rel_err(y, ref_y):.1e} "
                      f"(warp-specialized {spec}, {nw} warps)", flush=True)
            except Exception as error:  # noqa: BLE001
                print(f"  down {form}: failed: {str(error).splitlines()[0][:200]}", flush=True)


if __name__ == "__main__":
    main()
