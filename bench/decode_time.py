"""The decode path's two kernels alone: which (BLOCK_N, BLOCK_K, warps, stages[,
experts per pass]) streams the active experts fastest at small T, over the bundled
tiles (tools/aot/variants.py) and any extra ones given (performance-log.md #39). Each
kernel is timed alone (L2 flushed by a read before each graph replay), then the best
few pairs back to back; every output is checked against torch first. Beside them,
`read_through` (kernels/cache.py) over as many bytes as each kernel's weights: what
one plain streaming kernel takes for them on this card.

Usage (GPU machine, repository root):  PYTHONPATH=. python3 bench/decode_time.py
  [env MODELS=qwen3-30b-a3b,... TOKENS=1,4 GATE_UP=32x512x4x3,... DOWN=16x64x4x6x8,...]
"""
import itertools
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402
from model_shapes import routed_models  # noqa: E402
from kernels.cache import read_through  # noqa: E402
from kernels.decode import decode_down_combine, decode_gate_up_swiglu  # noqa: E402
from tools.aot import variants  # noqa: E402

REPS = 15
TARGET = "cuda:{}{}".format(*torch.cuda.get_device_capability())


def bundled(tiles, defaults):
    """(BLOCK_N, BLOCK_K, warps, stages[, EXPERTS_PER_PASS]) of each bundled tile on this target."""
    for per_backend in tiles:
        config = variants.target_config(variants.tile_configs(per_backend, defaults), TARGET)
        c = config.constexprs
        yield (c["BLOCK_N"], c["BLOCK_K"], config.num_warps, config.num_stages) + (
            (c["EXPERTS_PER_PASS"],) if "EXPERTS_PER_PASS" in c else ())


def extra(env):
    return [tuple(map(int, tile.split("x"))) for tile in os.environ.get(env, "").split(",") if tile]


GATE_UP = list(bundled(variants.DECODE_GATE_UP_TILES, {})) + extra("GATE_UP")
DOWN = list(bundled(variants.DECODE_DOWN_TILES, {})) + extra("DOWN")


def name(tile):
    return "x".join(map(str, tile))


def stream_us(nbytes):
    """One read_through launch over nbytes (as the bundle launches it), L2 flushed before each."""
    words = nbytes // 4
    src = torch.ones(words, device="cuda", dtype=torch.int32)
    block = variants.CACHE_READ_BLOCK
    sums = torch.empty(-(-words // block), device="cuda", dtype=torch.int32)
    return peers.replay_ms(lambda: read_through[(sums.numel(),)](src, sums, words, BLOCK=block), REPS) * 1000


def checked_times(runs, result, ref, label=str):
    """us of each run (key -> callable) whose output in `result` matches `ref` (relative
    error under 1e-2), L2 flushed before each replay; a run that fails to launch or is
    wrong is reported under label(key), not timed."""
    times = {}
    for key, run in runs.items():
        result.fill_(float("nan"))
        try:
            run()
        except Exception as error:  # noqa: BLE001 (out of shared memory: reported, not timed)
            print(f"  {label(key)}: {type(error).__name__}", flush=True)
            continue
        err = ((result.float() - ref).norm() / ref.norm()).item()
        if not err < 1e-2:
            print(f"  {label(key)}: WRONG rel err {err:.1e}", flush=True)
            continue
        times[key] = peers.replay_ms(run, REPS) * 1000
    return times


def main():
    models = routed_models()
    chosen = os.environ.get("MODELS", "qwen3-30b-a3b,gpt-oss-120b,deepseek-v3,mixtral-8x7b").split(",")
    tokens = [int(t) for t in os.environ.get("TOKENS", "1,4").split(",")]
    print(f"card: {torch.cuda.get_device_name()}; us, median of {REPS} graph replays, L2 flushed by a read before each")
    g = torch.Generator(device="cuda").manual_seed(5)
    for model in chosen:
        E, H, I, k = (models[model][key] for key in ("E", "H", "I", "k"))
        w13 = torch.randn(E, 2 * I, H, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
        w2 = torch.randn(E, H, I, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
        for T in tokens:
            cell(model, E, H, I, k, T, w13, w2, g)
        del w13, w2
        torch.cuda.empty_cache()


def cell(model, E, H, I, k, T, w13, w2, g):
    x = torch.randn(T, H, device="cuda", dtype=torch.bfloat16, generator=g)
    ids = torch.rand(T, E, device="cuda", generator=g).topk(k, dim=1).indices.to(torch.int32).contiguous()
    weights = torch.softmax(torch.randn(T, k, device="cuda", generator=g), 1).contiguous()
    S = T * k
    w13_s, w2_s = w13[ids.flatten().long()].float(), w2[ids.flatten().long()].float()
    gate_up = torch.einsum("sih,sh->si", w13_s, x.float().repeat_interleave(k, 0))
    h_ref = F.silu(gate_up[:, :I]) * gate_up[:, I:]
    h = torch.empty(S, I, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(T, H, device="cuda", dtype=torch.bfloat16)
    out_ref = (torch.einsum("shi,si->sh", w2_s, h_ref).view(T, k, H) * weights[..., None]).sum(1)
    scalar = torch.empty(1, device="cuda", dtype=torch.bfloat16)

    def run_gate_up(tile):
        bn, bk, warps, stages = tile
        decode_gate_up_swiglu[(S * -(-I // bn),)](x, w13, h, ids, k, H, I, ROUTED=True, BLOCK_N=bn, BLOCK_K=bk,
                                                  PDL=False, num_warps=warps, num_stages=stages)

    def run_down(tile):
        bn, bk, warps, stages, per_pass = tile
        decode_down_combine[(T * -(-H // bn),)](h, w2, out, ids, weights, scalar, scalar, k, H, I, 0,
                                                HAS_SHARED=False, BLOCK_N=bn, BLOCK_K=bk, EXPERTS_PER_PASS=per_pass,
                                                PDL=False, num_warps=warps, num_stages=stages)

    def sweep(stage, tiles, run, result, ref):
        times = checked_times({tile: (lambda tile=tile: run(tile)) for tile in tiles}, result, ref,
                              lambda tile: f"{stage} {name(tile)}")
        ranked = sorted(times, key=times.get)
        print(f"{model} T={T} {stage}: " + " | ".join(f"{name(c)} {times[c]:.1f}" for c in ranked), flush=True)
        return ranked

    ups = sweep("gate_up", GATE_UP, run_gate_up, h, h_ref)
    run_gate_up(ups[0])  # h for down's check
    downs = sweep("down", DOWN, run_down, out, out_ref)
    pairs = {}
    for up, down in itertools.product(ups[:4], downs[:4]):
        def both(up=up, down=down):
            run_gate_up(up)
            run_down(down)
        pairs[(up, down)] = peers.replay_ms(both, REPS) * 1000
    best = min(pairs, key=pairs.get)
    active = ids.unique().numel()
    up_bytes, down_bytes = active * 2 * I * H * 2, active * H * I * 2
    print(f"{model} T={T} pair ({S} slots on {active} experts): best {name(best[0])} + {name(best[1])} "
          f"{pairs[best]:.1f} us; read_through over "
          f"gate_up's {up_bytes / 1e6:.0f} MB {stream_us(up_bytes):.1f} us, down's {down_bytes / 1e6:.0f} MB "
          f"{stream_us(down_bytes):.1f} us, both {stream_us(up_bytes + down_bytes):.1f} us", flush=True)


if __name__ == "__main__":
    main()
