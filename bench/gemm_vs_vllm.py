"""The grouped GEMMs alone: tritonmoe's `gate_up_swiglu` and `down` kernels beside
vLLM's w13 and w2 launches of `fused_moe_kernel`, on the same inputs, one kernel per
timed graph replay (L2 flushed before each). Where the large-T gap to vLLM sits
(docs/performance-log.md #10, #15): run it after a change to kernels/gate_up_swiglu.py,
kernels/down_combine.py or kernels/grouped_gemm.py.

vLLM runs its best large-T config of the peers run (BLOCK 128x256x64, GROUP_SIZE_M
16, 8 warps, 3 stages, bf16 output; its w13 writes gate and up, SwiGLU is a further
kernel not timed here), or the config env VLLM gives; ours runs each tile of
tools/aot/variants.py for BLOCK_M (env, default 128) as bundled (h and y in bf16, as
in the library), compiled here by Triton's JIT, each tile also with GROUP_BY_EXPERT
where it has none (kernels/grouped_gemm.py), and in more forms: at BLOCK_M 128,
where it is not a TMA or persistent tile, its TMA form (weights, and for down also h,
through device-side tensor descriptors); a TMA or persistent tile (not FLATTEN) with
HALF_TAIL where it has none (blocks whose slots fit in half the rows multiply only
those, performance-log.md #31, #53) and with FOLD_TAIL (such a block's rows taken by
the block before it, its expert's, from the same weight tiles, #84); at smaller
BLOCK_M, with GROUP_M 1 (programs walk N first, as vLLM's small-T configs). Persistent
tiles run on PERSISTENT programs per SM, as the library launches them. Each row
names the compiled kernel's registers and spilled registers.
Both read the same routing: vLLM's alignment (in torch, bench/peers.py) is exactly
ours (sorted_slots with sentinel S, one expert per block).

Usage (GPU machine, repository root; .peers/ as in bench/README.md):
  PYTHONPATH=. python3 bench/gemm_vs_vllm.py   [env MODELS=mixtral-8x7b,... TOKENS=1024,8192 STAGES=gate_up,down
                                              TILES=t7,t11 BLOCK_M=128 VLLM=M,N,K,GROUP_SIZE_M,num_warps,num_stages]
"""
import math
import os
import sys

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402
from kernels.down_combine import down  # noqa: E402
from kernels.gate_up_swiglu import gate_up_swiglu  # noqa: E402
from tools.aot import variants  # noqa: E402

DEV = "cuda"
BLOCK_M = int(os.environ.get("BLOCK_M", "128"))
VLLM_CONFIG = dict(zip(("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages"),
                       map(int, os.environ.get("VLLM", "128,256,64,16,8,3").split(","))))
TILES = peers.env_list("TILES", "")  # t0,t7,...: only these tiles (all when empty)
REPS = 15  # graph replays per timing, the median reported
VLLM_NAME = "{BLOCK_SIZE_M}x{BLOCK_SIZE_N}x{BLOCK_SIZE_K} g{GROUP_SIZE_M} w{num_warps} s{num_stages}".format(**VLLM_CONFIG)


def tile_forms(tiles, defaults):
    """(name, CUDA Config) of each BLOCK_M tile as bundled, then at BLOCK_M 128 its TMA form
    where it has none, or for a TMA or persistent tile (not FLATTEN) its HALF_TAIL form where
    it has none and its FOLD_TAIL form; at smaller BLOCK_M its GROUP_M 1 form."""
    for index, per_backend in enumerate(tiles[BLOCK_M]):
        if TILES and f"t{index}" not in TILES:
            continue
        config = variants.target_config(variants.tile_configs(per_backend, dict(defaults, ROUTED=True, BLOCK_M=BLOCK_M)),
                                        TARGET)
        c = config.constexprs
        yield f"t{index}", config
        if not c["GROUP_BY_EXPERT"]:
            yield f"t{index} +byexpert", variants.Config(dict(c, GROUP_BY_EXPERT=True), config.num_warps,
                                                         config.num_stages)
        if c.get("PADDED_Y"):  # no other form
            continue
        if BLOCK_M < 128:
            yield f"t{index} +g1", variants.Config(dict(c, GROUP_M=1), config.num_warps, config.num_stages)
        elif (c["PERSISTENT"] or c["TMA"]) and not c["FLATTEN"]:  # a FLATTEN tile has no half-height branch
            if not c["HALF_TAIL"]:
                yield f"t{index} +half", variants.Config(dict(c, HALF_TAIL=True), config.num_warps, config.num_stages)
            if not c["FOLD_TAIL"]:
                yield f"t{index} +fold", variants.Config(dict(c, HALF_TAIL=True, FOLD_TAIL=True), config.num_warps,
                                                         config.num_stages)
        else:
            yield f"t{index} +tma", variants.Config(dict(c, TMA=True), config.num_warps, config.num_stages)


def launch_grid(config, m_blocks, N):
    """One program per tile, or a persistent tile's PERSISTENT programs per SM at most (as the library)."""
    tiles = m_blocks * triton.cdiv(N, config.constexprs["BLOCK_N"])
    return (min(tiles, config.constexprs["PERSISTENT"] * SMS) if config.constexprs["PERSISTENT"] else tiles,)


def report(stage, name, config, compiled, ms, flops, err):
    c = config.constexprs
    print(f"  tmoe {stage} {name} {BLOCK_M}x{c['BLOCK_N']}x{c['BLOCK_K']} w{config.num_warps} s{config.num_stages} "
          f"g{c['GROUP_M']} ({compiled.n_regs} registers, {compiled.n_spills} spilled): {ms:.3f} ms "
          f"{flops / ms / 1e9:.0f} TFLOP/s, rel err vs vLLM {err:.1e}", flush=True)


SMS = triton.runtime.driver.active.utils.get_device_properties(torch.cuda.current_device())["multiprocessor_count"]
TARGET = "cuda:{}{}".format(*torch.cuda.get_device_capability())


def routed_cases(models, tokens):
    """(name, model, w13, w2, T, topk weights, topk ids, generator) for each model and T: bf16
    weights scaled for unit-variance outputs, random logits routed as the model routes; the
    generator (seed 1 per model) then draws the activations."""
    for name in models:
        m = peers.MODELS[name]
        E, H, I = m["E"], m["H"], m["I"]
        gen = torch.Generator(device=DEV).manual_seed(1)
        w13 = torch.randn(E, 2 * I, H, device=DEV, dtype=torch.bfloat16, generator=gen) / math.sqrt(H)
        w2 = torch.randn(E, H, I, device=DEV, dtype=torch.bfloat16, generator=gen) / math.sqrt(I)
        bias = 0.1 * torch.randn(E, device=DEV, generator=gen) if m["routing"] == "sigmoid_grouped_topk" else None
        for T in tokens:
            weights, ids = peers.torch_route(torch.randn(T, E, device=DEV, generator=gen), m, bias)
            yield name, m, w13, w2, T, weights, ids, gen


def aligned(ids, E, block_m):
    """(sorted_slots, block_expert, expert offsets, vLLM's routing triple) of ids for BLOCK_M block_m: vLLM's
    alignment is exactly ours; blocks past the padded total get expert -1, as ours."""
    sorted_slots, expert_ids, total = peers.vllm_align(ids, E, block_m)
    m_blocks = sorted_slots.numel() // block_m
    block_expert = torch.where(torch.arange(m_blocks, device=DEV) * block_m < total, expert_ids, -1).int()
    # Each expert's padded first row, as align writes them (offsets[E]: the padded total).
    rows = torch.bincount(block_expert[block_expert >= 0].long(), minlength=E) * block_m
    offsets = torch.cat([torch.zeros(1, device=DEV, dtype=torch.long), rows.cumsum(0)]).int()
    return sorted_slots, block_expert, offsets, (sorted_slots, expert_ids, total)


def rel_err(ours, reference):
    return ((ours.float() - reference).norm() / reference.norm()).item()


def main():
    models = peers.env_list("MODELS", "mixtral-8x7b,qwen3-30b-a3b,gpt-oss-120b")
    tokens = [int(t) for t in peers.env_list("TOKENS", "1024,8192")]
    stages = peers.env_list("STAGES", "gate_up,down")
    print(f"{torch.cuda.get_device_name()}; {peers.gpu_state()}")
    # The TMA forms build their tensor descriptors on the device, in scratch from here.
    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, device=DEV, dtype=torch.int8))
    kernel = peers.vllm_module().fused_moe_kernel
    for name, m, w13, w2, T, weights, ids, gen in routed_cases(models, tokens):
        E, H, I, k = m["E"], m["H"], m["I"], m["k"]
        S = T * k
        sorted_slots, block_expert, offsets, routing = aligned(ids, E, BLOCK_M)
        capacity = sorted_slots.numel()
        valid = sorted_slots < S
        m_blocks = capacity // BLOCK_M
        if "gate_up" in stages:
            x = torch.randn(T, H, device=DEV, dtype=torch.bfloat16, generator=gen)
            flops = 2 * S * 2 * I * H
            c = torch.empty(S, 2 * I, device=DEV, dtype=torch.bfloat16)
            grid, kw = peers.vllm_launch("w13", m, T, VLLM_CONFIG, (x, w13, c, weights.view(-1), routing))
            ms = peers.replay_ms(lambda: kernel[grid](**kw), REPS)
            print(f"{name} T={T} vllm w13 {VLLM_NAME}: {ms:.3f} ms {flops / ms / 1e9:.0f} TFLOP/s", flush=True)
            gate, up = c.float().split(I, dim=1)
            reference = (F.silu(gate) * up)[sorted_slots[valid].long()]
            for tile_name, config in tile_forms(variants.GATE_UP_TILES, variants.GATE_UP_DEFAULTS):
                h = torch.empty(capacity, I, device=DEV, dtype=torch.bfloat16)
                programs = launch_grid(config, m_blocks, I)
                launch = lambda: gate_up_swiglu[programs](  # noqa: E731
                    x, w13, h, sorted_slots, block_expert, offsets, S, k, H, I, E, m_blocks, **config.constexprs,
                    num_warps=config.num_warps, num_stages=config.num_stages)
                compiled = launch()
                ms = peers.replay_ms(launch, REPS)
                report("gate_up", f"{tile_name} x{programs[0]}", config, compiled, ms, flops,
                       rel_err(h[valid], reference))
        if "down" in stages:
            a = torch.randn(S, I, device=DEV, dtype=torch.bfloat16, generator=gen)
            flops = 2 * S * H * I
            y_vllm = torch.empty(T, k, H, device=DEV, dtype=torch.bfloat16)
            grid, kw = peers.vllm_launch("w2", m, T, VLLM_CONFIG, (a, w2, y_vllm, weights.view(-1), routing))
            ms = peers.replay_ms(lambda: kernel[grid](**kw), REPS)
            print(f"{name} T={T} vllm w2 {VLLM_NAME}: {ms:.3f} ms {flops / ms / 1e9:.0f} TFLOP/s", flush=True)
            reference = y_vllm.float().view(S, H)
            # Ours reads h by padded position (gate_up writes it so); vLLM gathers rows of a by slot.
            h = torch.zeros(capacity, I, device=DEV, dtype=torch.bfloat16)
            h[valid] = a[sorted_slots[valid].long()]
            slots_in_order = sorted_slots[valid].long()
            for tile_name, config in tile_forms(variants.DOWN_TILES, variants.DOWN_DEFAULTS):
                # A PADDED_Y tile writes unweighted rows by padded position (the combine weighs them).
                padded = config.constexprs["PADDED_Y"]
                y = torch.empty(capacity if padded else S, H, device=DEV, dtype=torch.bfloat16)
                programs = launch_grid(config, m_blocks, H)
                launch = lambda: down[programs](  # noqa: E731
                    h, w2, y, sorted_slots, block_expert, weights.view(-1), offsets, S, k, H, I, E, m_blocks, k,
                    0, **config.constexprs, num_warps=config.num_warps, num_stages=config.num_stages)
                compiled = launch()
                ms = peers.replay_ms(launch, REPS)
                if padded:
                    y = torch.zeros(S, H, device=DEV, dtype=torch.float32).index_put_(
                        (slots_in_order, ), y[valid].float() * weights.view(-1)[slots_in_order, None])
                report("down", f"{tile_name} x{programs[0]}", config, compiled, ms, flops, rel_err(y, reference))


if __name__ == "__main__":
    main()
