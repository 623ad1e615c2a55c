"""The specialization matrix: which compiled variants of each kernel the bundle holds.

Every variant is built for every target, under the same name, so the runtime
selects by name (or by constexprs) the same way on every GPU; only the tile
details behind a name (BLOCK_N, BLOCK_K, warps, stages) may differ per backend.
A name says dtype, mode, BLOCK_M, the tile ("t0", "t1", ...: the index into the
tile lists below, which `tmoe tune` chooses among) and whether the variant's hinted
arguments must be multiples of 16 ("div16") or may be anything ("any": the fallback
for odd shapes and unaligned pointers).
"""
from dataclasses import dataclass

TARGETS = ("cuda:80", "cuda:90", "hip:gfx90a", "hip:gfx942", "hip:gfx950")

# Most shared memory (LDS) one program may use on each target: a variant above it fails the build.
SHARED_LIMIT = {"cuda:80": 166912, "cuda:90": 232448, "hip:gfx90a": 65536, "hip:gfx942": 65536, "hip:gfx950": 163840}

# Manifest dtype name -> Triton type name.
TRITON_TYPE = {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "i32": "i32"}

ACTIVATION_DTYPES = ("bf16", "f16")
LOGITS_DTYPES = ("f32", "bf16", "f16")
EXPERT_BUCKETS = (64, 128, 256, 1024)  # BLOCK_E: the variant serves E <= BLOCK_E
# route's TOP_K: a power of two >= k > 1 takes one bitonic top-k ("_k{TOP_K}" variants); 0
# (no suffix) serves any k by rounds (kernels/route.py).
ROUTE_TOP_K = (0, 2, 4, 8)
ALIGN_CHUNKS = (256, 2048)        # slots per align program
COMBINE_BLOCK_H = 1024
CACHE_READ_BLOCK = 4096  # int32 words per read_through program (cli/gpu_bench_device.cpp)


@dataclass(frozen=True)
class Config:
    constexprs: dict
    num_warps: int
    num_stages: int


# gate_up's gate and up tiles as one [BLOCK_K, 2*BLOCK_N] operand of a single dot (one
# wgmma of N = 256 instead of two of 128 on Hopper), split after the loop.
JOINED = dict(JOINED=True)
# Programs walk GROUP_M blocks of M before the next N block (kernels/grouped_gemm.py);
# 8 unless a tile says otherwise.
GROUP8 = dict(GROUP_M=8)
GROUP16 = dict(GROUP_M=16)
# ... and no group holds two experts' blocks (kernels/grouped_gemm.expert_grouped_tile).
GROUP_BY_EXPERT = dict(GROUP_BY_EXPERT=True)
# The weights (and down's h) through device-side tensor descriptors: TMA on Hopper;
# Triton rewrites them to pointer loads on other targets.
TMA = dict(TMA=True)
# The layer's kernels carry PDL (kernels/dependent_launch.py), on for the targets here,
# whose host may launch them as programmatic dependents of the kernel before them
# (where the tuned choice asks, performance-log.md #37); off in the persistent tiles
# (#36).
LAYER_KERNEL = dict(PDL=False)
DEPENDENT_LAUNCH_TARGETS = ("cuda:90",)
# Persistent or TMA tiles: a block whose slots fit in its first BLOCK_M / 2 rows (an
# expert's last, mostly padding) multiplies only those (kernels/grouped_gemm.fits_half).
HALF_TAIL = dict(HALF_TAIL=True)
# down writes y by padded position, unweighted, through a tensor descriptor, and combine
# gathers and weighs the rows (kernels/down_combine.padded_tiles); the host sizes y
# and picks combine's padded variant by this constexpr.
PADDED_Y = dict(PADDED_Y=True)
# A persistent tile walks only the alignment's padded total, so Triton fuses its tile
# and K loops into one pipelined loop (kernels/grouped_gemm.walked_blocks).
FLATTEN = dict(FLATTEN=True)
# Triton's warp specialization of the persistent tile loop (a TMA producer warp group
# and MMA consumers: num_warps 4 a group, 12 in all), on cuda:90 only.
WARP_SPECIALIZE = dict(WARP_SPECIALIZE=True)


def persistent(programs_per_multiprocessor):
    """A persistent grid of this many programs per multiprocessor (the host caps the
    grid), each walking tiles through tensor descriptors (performance-log.md #20, #26)."""
    return dict(PERSISTENT=programs_per_multiprocessor)


# BLOCK_M -> tiles, each backend -> (BLOCK_N, BLOCK_K, num_warps, num_stages[, constexprs]). A tile's
# index is its name ("t0", "t1", ...): `tmoe tune` times them and configs/<device>.json
# records the winner; the heuristic for untuned devices is in src/gpu/gpu_backend.cpp
# (docs/kernels.md). The optional last field adds constexprs. gate_up and down pair
# by BLOCK_M (one alignment serves both GEMMs) and choose their tiles independently.
# CUDA tiles fit the A100's shared memory (163 KiB) as well as the H100's, unless the
# tile names a target ("cuda:90") whose config replaces the backend's there. AMD keeps
# two stages: its pipeliner holds one buffer in LDS (64 KiB on gfx90a/gfx942), the
# next in registers. Of BLOCK_M 32's hinted tiles the heuristic runs t0/t0, the rest
# are for `tmoe tune`; the unhinted fallback ("m32_any") has FALLBACK_TILE.
GATE_UP_TILES = {
    16: ({"cuda": (64, 128, 4, 4), "hip": (64, 64, 4, 2)},
         {"cuda": (32, 128, 4, 4), "hip": (32, 128, 4, 2)},
         {"cuda": (128, 64, 4, 4), "hip": (128, 64, 4, 2)},
         # vLLM's tuned config for gpt-oss-120b and qwen3 at T = 16-256 (64 of w13's rows,
         # BLOCK_K 256): here 32 gate and 32 up rows, joined.
         {"cuda": (32, 256, 4, 3, JOINED), "hip": (32, 256, 4, 2, JOINED)}),
    # vLLM's tuned config for deepseek-v3 at T = 64-256 (BLOCK_M 32, 128 of w13's
    # [gate; up] rows, BLOCK_K 128): here 64 gate and 64 up rows, joined.
    32: ({"cuda": (64, 128, 4, 3, JOINED), "hip": (64, 64, 4, 2, JOINED)},),
    64: ({"cuda": (64, 64, 4, 3), "hip": (64, 64, 4, 2)},
         {"cuda": (128, 64, 4, 3), "hip": (128, 64, 8, 2)},
         {"cuda": (64, 128, 4, 3), "hip": (64, 128, 4, 2)},
         {"cuda": (128, 64, 4, 3, JOINED), "hip": (128, 64, 4, 2, JOINED)}),
    128: ({"cuda": (128, 64, 8, 3), "hip": (128, 64, 8, 2)},
          {"cuda": (64, 64, 4, 4), "hip": (64, 64, 4, 2)},
          {"cuda": (128, 32, 8, 4), "hip": (128, 32, 8, 2)},
          {"cuda": (128, 64, 8, 3, JOINED), "hip": (128, 64, 8, 2, JOINED)},
          {"cuda": (128, 64, 8, 3, JOINED | GROUP16), "hip": (128, 64, 8, 2, JOINED | GROUP16)},
          {"cuda": (128, 64, 8, 3, JOINED | TMA), "hip": (128, 64, 8, 2, JOINED | TMA)},
          {"cuda": (128, 64, 8, 3, JOINED | GROUP16 | TMA), "hip": (128, 64, 8, 2, JOINED | GROUP16 | TMA)},
          # t3 on a persistent grid of one program per SM (persistent tiles are joined).
          {"cuda": (128, 64, 8, 3, JOINED | persistent(1)), "hip": (128, 64, 8, 2, JOINED | persistent(1))},
          # vLLM's tuned w13 config for deepseek-v3 at T = 512-2048 (128 of w13's rows,
          # BLOCK_K 128): 64 gate and 64 up rows, joined. Three stages (192 KiB) fit the
          # H100 only; two were 25% slower there (performance-log.md #30).
          {"cuda:90": (64, 128, 8, 3, JOINED | GROUP16), "cuda": (64, 128, 8, 2, JOINED | GROUP16),
           "hip": (64, 64, 8, 2, JOINED | GROUP16)},
          # t7 with half-height tail blocks (performance-log.md #31).
          {"cuda": (128, 64, 8, 3, JOINED | persistent(1) | HALF_TAIL),
           "hip": (128, 64, 8, 2, JOINED | persistent(1) | HALF_TAIL)},
          # t5 with half-height tail blocks (performance-log.md #53).
          {"cuda": (128, 64, 8, 3, JOINED | TMA | HALF_TAIL), "hip": (128, 64, 8, 2, JOINED | TMA | HALF_TAIL)}),
}
DOWN_TILES = {
    16: ({"cuda": (64, 128, 4, 4), "hip": (64, 64, 4, 2)},
         {"cuda": (32, 128, 4, 4), "hip": (32, 128, 4, 2)},
         {"cuda": (128, 64, 4, 4), "hip": (128, 64, 4, 2)},
         {"cuda": (64, 256, 4, 3), "hip": (64, 256, 4, 2)}),  # vLLM's, as gate_up's t3
    32: ({"cuda": (128, 128, 4, 3), "hip": (128, 64, 4, 2)},),
    64: ({"cuda": (128, 64, 4, 3), "hip": (128, 64, 4, 2)},
         {"cuda": (64, 64, 4, 3), "hip": (64, 64, 4, 2)},
         {"cuda": (128, 128, 4, 3), "hip": (128, 64, 8, 2)}),
    128: ({"cuda": (128, 64, 8, 3), "hip": (128, 64, 8, 2)},
          {"cuda": (256, 64, 8, 3), "hip": (256, 32, 8, 2)},
          {"cuda": (128, 128, 8, 2), "hip": (128, 64, 4, 2)},
          {"cuda": (256, 64, 8, 3, GROUP16), "hip": (256, 32, 8, 2, GROUP16)},
          {"cuda": (128, 64, 8, 3, GROUP16), "hip": (128, 64, 8, 2, GROUP16)},
          {"cuda": (256, 64, 8, 3, TMA), "hip": (256, 32, 8, 2, TMA)},
          # The persistent forms of t0 and t1 (two and one programs per SM by shared memory).
          {"cuda": (128, 64, 8, 3, persistent(2)), "hip": (128, 64, 8, 2, persistent(2))},
          {"cuda": (256, 64, 8, 3, persistent(1)), "hip": (256, 32, 8, 2, persistent(1))},
          # t6 with half-height tail blocks (performance-log.md #31).
          {"cuda": (128, 64, 8, 3, persistent(2) | HALF_TAIL), "hip": (128, 64, 8, 2, persistent(2) | HALF_TAIL)},
          # t5 with half-height tail blocks (performance-log.md #53).
          {"cuda": (256, 64, 8, 3, TMA | HALF_TAIL), "hip": (256, 32, 8, 2, TMA | HALF_TAIL)}),
}


def one_more_stage_on_hopper(tile):
    """The tile with one more pipeline stage on cuda:90, whose shared memory holds what
    the A100's may not (the m128 TMA tiles then take 192 KiB, performance-log.md #57)."""
    n, k, warps, stages, *extra = tile["cuda"]
    return dict(tile, **{"cuda:90": (n, k, warps, stages + 1, *extra)})


# Appended, so the indices above keep their meaning: gate_up t11 is t10 one stage deeper
# on cuda:90, down t10 is t9 (3-10% faster alone at T >= 1024; the other m128 tiles
# deepened gained alone but never in the layer's tune, #58).
GATE_UP_TILES[128] += (one_more_stage_on_hopper(GATE_UP_TILES[128][10]),)
DOWN_TILES[128] += (one_more_stage_on_hopper(DOWN_TILES[128][9]),)
# gate_up m32 t1 is m16's t3 (vLLM's small-T tile) on 32 rows: tune took it at gpt-oss
# T = 512 (-1.2%) and deepseek-v3 T = 64; down m16 t4 is m32's t0 on 16 rows, taken at
# deepseek T = 32 (performance-log.md #60).
GATE_UP_TILES[32] += (GATE_UP_TILES[16][3],)
# down m128 t11, t12: warp-specialized persistent tiles writing y in padded order (#62:
# 3-12% faster than t6/t7 alone on qwen3-30b-a3b at T = 2048-8192, gpt-oss-120b and
# deepseek-v3 at 8192; the rows' gather in combine adds 0.003-0.012 ms).
DOWN_TILES[128] += (
    {"cuda:90": (256, 64, 4, 3, PADDED_Y | WARP_SPECIALIZE | persistent(1)),
     "cuda": (128, 64, 8, 3, PADDED_Y | persistent(1)), "hip": (256, 32, 8, 2, PADDED_Y | persistent(1))},
    {"cuda:90": (128, 64, 4, 4, PADDED_Y | WARP_SPECIALIZE | persistent(1)),
     "cuda": (128, 64, 8, 3, PADDED_Y | persistent(2)), "hip": (128, 64, 8, 2, PADDED_Y | persistent(2))},
)
DOWN_TILES[16] += (DOWN_TILES[32][0],)
# gate_up m32 t2 (128 of w13's rows) and t3 (t0 one stage deeper), down m32 t1 (vLLM's
# small-T tile, as m16's t3): tune took them at deepseek-v3 T = 64 and 256, qwen3-30b-a3b
# T = 256, gpt-oss-120b T = 512 (-0.1 to -1.0%, performance-log.md #67).
GATE_UP_TILES[32] += ({"cuda": (128, 128, 4, 3, JOINED), "hip": (128, 64, 4, 2, JOINED)},
                      one_more_stage_on_hopper(GATE_UP_TILES[32][0]))
DOWN_TILES[32] += (DOWN_TILES[16][3],)
# gate_up m64 t4 is t2 one stage deeper on cuda:90 (four stages of 128-deep K steps:
# 256-byte weight rows a stage), taken at qwen3-30b-a3b T = 512 (-1.0%) and
# gpt-oss-120b T = 1024 (-1.8%); the same deepening of down m64 t2 and m32 t0, and TMA
# half-tail m128 tiles at BLOCK_K 128, led no bucket by more than 0.2% (performance-log.md #74).
GATE_UP_TILES[64] += (one_more_stage_on_hopper(GATE_UP_TILES[64][2]),)


def with_constexprs(tile, constexprs):
    """The tile with these constexprs added on every backend."""
    return {backend: (n, k, warps, stages, dict(*extra, **constexprs))
            for backend, (n, k, warps, stages, *extra) in tile.items()}


# gate_up m128 t12-t14 are t7, t10, t11 and down m128 t13-t16 are t7, t10, t11, t12, the
# tiles tune takes from T = 1024, with no group across two experts (on an H200 alone:
# deepseek-v3 T = 8192 gate_up t7 -3.1%, down t11 -4.1%; mixtral-8x7b T = 2048 gate_up
# t7 -7.0%; performance-log.md #79).
GATE_UP_TILES[128] += tuple(with_constexprs(GATE_UP_TILES[128][index], GROUP_BY_EXPERT) for index in (7, 10, 11))
DOWN_TILES[128] += tuple(with_constexprs(DOWN_TILES[128][index], GROUP_BY_EXPERT) for index in (7, 10, 11, 12))

# gate_up m128 t15 (t7 flattened, four stages on cuda:90), down m128 t17 (128x128
# persistent, flattened), t18 (t7 flattened, four stages on cuda:90) and down m64 t3 (128x128,
# flattened): the memory-bound buckets' next tile loads during a tile's epilogue (on an
# H200 alone, qwen3-30b-a3b T = 1024 down -3.9 to -4.6%, T = 512 down -3.7%; gate_up t15
# -5.3% in the probe, level with t11 in the library; performance-log.md #82).
FLAT_PERSISTENT = dict(persistent(1), **FLATTEN)
GATE_UP_TILES[128] += ({"cuda:90": (128, 64, 8, 4, JOINED | FLAT_PERSISTENT),
                        "cuda": (128, 64, 8, 3, JOINED | FLAT_PERSISTENT),
                        "hip": (64, 32, 8, 2, JOINED | FLAT_PERSISTENT)},)  # t7's HIP shape: 80 KiB flattened
DOWN_TILES[128] += ({"cuda:90": (128, 128, 8, 3, FLAT_PERSISTENT), "cuda": (128, 128, 8, 2, FLAT_PERSISTENT),
                     "hip": (128, 64, 4, 2, FLAT_PERSISTENT)},
                    {"cuda:90": (256, 64, 8, 4, FLAT_PERSISTENT), "cuda": (256, 64, 8, 3, FLAT_PERSISTENT),
                     "hip": (256, 32, 8, 2, FLAT_PERSISTENT)})
DOWN_TILES[64] += ({"cuda:90": (128, 128, 4, 4, FLAT_PERSISTENT), "cuda": (128, 128, 4, 3, FLAT_PERSISTENT),
                    "hip": (128, 64, 8, 2, FLAT_PERSISTENT)},)

# gate_up m128 t16 is t11 and down m128 t19, t20 are t10 and t14 with FOLD_TAIL: an expert's
# last block of at most 64 slots is multiplied by the block before it, from the same
# weight tiles (kernels/grouped_gemm.tail_plan; on an H200 alone, mixtral-8x7b T = 512
# down -14%, gate_up -1.6%, T = 2048 down -3.4%; the persistent down t8 folded ran 40%
# slower; performance-log.md #84).
FOLD_TAIL = dict(FOLD_TAIL=True)
GATE_UP_TILES[128] += (with_constexprs(GATE_UP_TILES[128][11], FOLD_TAIL),)
DOWN_TILES[128] += tuple(with_constexprs(DOWN_TILES[128][index], FOLD_TAIL) for index in (10, 14))

# The constexprs a grouped GEMM tile sets unless it says otherwise.
GATE_UP_DEFAULTS = dict(LAYER_KERNEL, **GROUP8, GROUP_BY_EXPERT=False, JOINED=False, TMA=False, PERSISTENT=0,
                        HALF_TAIL=False, FOLD_TAIL=False, FLATTEN=False)
DOWN_DEFAULTS = dict(LAYER_KERNEL, **GROUP8, GROUP_BY_EXPERT=False, TMA=False, PERSISTENT=0, HALF_TAIL=False,
                     FOLD_TAIL=False, PADDED_Y=False, WARP_SPECIALIZE=False, FLATTEN=False)
FALLBACK_BLOCK_M = 32
FALLBACK_TILE = {"cuda": (64, 64, 4, 3), "hip": (64, 64, 4, 2)}


def decode_tile(n, k, warps, stages, **constexprs):
    """A decode tile for both backends: HIP's the same with two stages."""
    extra = (constexprs,) if constexprs else ()
    return {"cuda": (n, k, warps, stages, *extra), "hip": (n, k, warps, 2, *extra)}


# The decode path's tiles: (BLOCK_N, BLOCK_K, num_warps, num_stages) on CUDA.
# BLOCK_N >= 16 (a tensor-core tile). The heuristic takes the widest BLOCK_N that
# still launches a program per SM, else the narrowest (lowest index among equals).
# Beyond the first two per kernel: deeper pipelines with shorter K steps and two-warp
# programs (more programs per SM), for `tmoe tune` to weigh on small experts; from t4
# (gate_up) and t5 (down), the winners of bench/decode_time.py's sweep on an H100
# (performance-log.md #39: 1-3% faster at T = 1 and 4 on gpt-oss, deepseek, mixtral).
DECODE_GATE_UP_TILES = (decode_tile(32, 128, 4, 4), decode_tile(16, 256, 4, 4), decode_tile(32, 64, 4, 6),
                        decode_tile(16, 128, 2, 6), decode_tile(32, 256, 4, 4), decode_tile(32, 128, 4, 6))
# decode_down_combine's tiles also say how many experts share one K loop.
DECODE_DOWN_TILES = (decode_tile(64, 128, 4, 4, EXPERTS_PER_PASS=1), decode_tile(32, 128, 4, 4, EXPERTS_PER_PASS=2),
                     decode_tile(16, 128, 4, 4, EXPERTS_PER_PASS=4), decode_tile(16, 64, 4, 4, EXPERTS_PER_PASS=8),
                     decode_tile(32, 64, 4, 4, EXPERTS_PER_PASS=4), decode_tile(32, 64, 4, 6, EXPERTS_PER_PASS=4),
                     decode_tile(16, 128, 4, 6, EXPERTS_PER_PASS=4), decode_tile(16, 64, 4, 8, EXPERTS_PER_PASS=4))


@dataclass(frozen=True)
class Variant:
    kernel: str      # stage name in the manifest and @triton.jit function name
    module: str      # module under kernels/ that defines it
    name: str
    dtype: str
    types: dict      # every non-constexpr argument -> Triton type (argument order comes from the function)
    configs: dict    # backend ("cuda", "hip"), or a target ("cuda:90") that overrides its backend -> Config
    divisible_by_16: tuple = ()  # arguments promised multiples of 16 (pointers: 16-byte aligned addresses)


def same_on_all_backends(constexprs, num_warps, num_stages):
    config = Config(constexprs, num_warps, num_stages)
    return {"cuda": config, "hip": config}


def pointer(dtype):
    return "*" + TRITON_TYPE[dtype]


def route_variants():
    for logits in LOGITS_DTYPES:
        for block_e in EXPERT_BUCKETS:
            types = dict(logits=pointer(logits), correction_bias="*fp32", topk_ids="*i32", topk_weights="*fp32",
                         E="i32", top_k="i32", mode="i32", renormalize="i32", n_group="i32", topk_group="i32",
                         routed_scaling_factor="fp32", has_correction_bias="i32")
            # One warp: every reduction of the per-token top-k stays inside it.
            for top_k in ROUTE_TOP_K:
                name = f"{logits}_e{block_e}" + (f"_k{top_k}" if top_k else "")
                yield Variant("route", "route", name, logits, types,
                              same_on_all_backends(dict(LAYER_KERNEL, BLOCK_E=block_e, TOP_K=top_k), 1, 1))


def align_variants():
    count_types = dict(topk_ids="*i32", chunk_counts="*i32", sorted_slots="*i32", num_slots="i32", E="i32",
                       capacity="i32")
    scatter_types = dict(topk_ids="*i32", chunk_counts="*i32", expert_counts="*i32", expert_offsets="*i32",
                         sorted_slots="*i32", slot_positions="*i32", block_expert="*i32", num_slots="i32", E="i32",
                         block_m="i32", capacity="i32")
    count_scatter_types = {arg: ty for arg, ty in scatter_types.items() if arg != "chunk_counts"}
    for chunk in ALIGN_CHUNKS:
        for block_e in EXPERT_BUCKETS:
            warps = 4 if chunk <= 256 else 8
            name = f"c{chunk}_e{block_e}"
            yield Variant("align_count", "align", name, "i32", count_types,
                          same_on_all_backends(dict(LAYER_KERNEL, CHUNK=chunk, BLOCK_E=block_e), warps, 1))
            # BLOCK_B block_expert entries per step keep the [BLOCK_B, BLOCK_E] comparison at 4096 lanes.
            scatter_constexprs = dict(LAYER_KERNEL, CHUNK=chunk, BLOCK_E=block_e, BLOCK_B=4096 // block_e)
            yield Variant("align_scatter", "align", name, "i32", scatter_types,
                          same_on_all_backends(scatter_constexprs, warps, 1))
            if chunk == ALIGN_CHUNKS[0]:  # one launch for few chunks: every program counts them all
                yield Variant("align_count_scatter", "align", name, "i32", count_scatter_types,
                              same_on_all_backends(scatter_constexprs, warps, 1))


def tile_configs(per_backend, constexprs):
    """backend (or target) -> Config for one tile: (BLOCK_N, BLOCK_K, num_warps, num_stages[, more constexprs])."""
    configs = {backend: Config(dict(constexprs, BLOCK_N=n, BLOCK_K=k, **(extra[0] if extra else {})), warps, stages)
               for backend, (n, k, warps, stages, *extra) in per_backend.items()}
    for config in configs.values():
        c = config.constexprs
        # Only persistent_tiles reads FLATTEN (kernels/grouped_gemm.walked_blocks): elsewhere it would be ignored.
        if c.get("FLATTEN") and (not c.get("PERSISTENT") or c.get("PADDED_Y")):
            raise ValueError(f"FLATTEN needs a persistent tile without PADDED_Y: {c}")
        # FOLD_TAIL picks among HALF_TAIL's paths (kernels/grouped_gemm.tail_plan): alone it would be ignored.
        if c.get("FOLD_TAIL") and not c.get("HALF_TAIL"):
            raise ValueError(f"FOLD_TAIL needs a HALF_TAIL tile: {c}")
    return configs


def target_config(configs, target):
    """The Config a target ("cuda:90") compiles: the target's own where the tile names it, else its backend's;
    a layer kernel's PDL on where the target launches it as a programmatic dependent."""
    config = configs.get(target, configs[target.split(":")[0]])
    if "PDL" in config.constexprs and not config.constexprs.get("PERSISTENT") and target in DEPENDENT_LAUNCH_TARGETS:
        return Config(dict(config.constexprs, PDL=True), config.num_warps, config.num_stages)
    return config


def gemm_variants(kernel, module, prefix, dtype, types, routed, tiles, defaults):
    """The hinted variants of every BLOCK_M and tile in tiles, then the unhinted fallback.
    `defaults`: constexprs every variant sets unless its tile overrides them."""
    pointers = tuple(arg for arg, ty in types.items() if ty.startswith("*"))
    choices = [(f"m{block_m}_t{index}_div16", block_m, per_backend, pointers + ("H", "I"))
               for block_m, per_block in tiles.items() for index, per_backend in enumerate(per_block)]
    choices.append((f"m{FALLBACK_BLOCK_M}_any", FALLBACK_BLOCK_M, FALLBACK_TILE, ()))
    for suffix, block_m, per_backend, hints in choices:
        configs = tile_configs(per_backend, dict(defaults, ROUTED=routed, BLOCK_M=block_m))
        yield Variant(kernel, module, f"{prefix}_{suffix}", dtype, types, configs, hints)


# The shared expert's BLOCK_M (the heuristic's, from T; src/gpu/gpu_backend.cpp).
DENSE_BLOCK_M = (16, 64, 128)


def dense_tiles(tiles):
    """The shared expert is not tuned: tile t0 of each BLOCK_M it uses."""
    return {block_m: tiles[block_m][:1] for block_m in DENSE_BLOCK_M}


def gate_up_variants():
    for dtype in ACTIVATION_DTYPES:
        a = pointer(dtype)
        types = dict(x=a, w13=a, h=a, sorted_slots="*i32", block_expert="*i32", expert_offsets="*i32",
                     num_slots="i32", top_k="i32", H="i32", I="i32", E="i32", num_m_blocks="i32")
        for mode, routed, tiles in (("routed", True, GATE_UP_TILES), ("dense", False, dense_tiles(GATE_UP_TILES))):
            yield from gemm_variants("gate_up_swiglu", "gate_up_swiglu", f"{dtype}_{mode}", dtype, types, routed, tiles,
                                     GATE_UP_DEFAULTS)


def down_variants():
    # y is typed as the activations, so with one row per token (k = 1, no shared
    # expert) the routed variant writes out itself and combine is skipped.
    for dtype in ACTIVATION_DTYPES:
        for mode, routed in (("routed", True), ("dense", False)):
            a = pointer(dtype)
            types = dict(h=a, w2=a, y=a, sorted_slots="*i32", block_expert="*i32", topk_weights="*fp32",
                         expert_offsets="*i32", num_slots="i32", top_k="i32", H="i32", I="i32", E="i32",
                         num_m_blocks="i32", y_rows_per_token="i32", y_first_row="i32")
            tiles = DOWN_TILES if routed else dense_tiles(DOWN_TILES)
            yield from gemm_variants("down", "down_combine", f"{dtype}_{mode}", dtype, types, routed, tiles,
                                     DOWN_DEFAULTS)


def combine_variants():
    for dtype in ACTIVATION_DTYPES:
        types = dict(y=pointer(dtype), out=pointer(dtype), slot_positions="*i32", topk_weights="*fp32", H="i32",
                     rows_per_token="i32", top_k="i32", shared_first_row="i32")
        for padded in (False, True):
            configs = same_on_all_backends(dict(LAYER_KERNEL, BLOCK_H=COMBINE_BLOCK_H, PADDED_Y=padded), 4, 1)
            prefix = f"{dtype}_padded" if padded else dtype
            yield Variant("combine", "down_combine", f"{prefix}_div16", dtype, types, configs, ("y", "out", "H"))
            if not padded:  # PADDED_Y down tiles are hinted ones: H and out aligned
                yield Variant("combine", "down_combine", f"{prefix}_any", dtype, types, configs)


def decode_variants():
    """Only hinted (div16) variants: an odd shape or unaligned pointer takes the sorted path."""
    for dtype in ACTIVATION_DTYPES:
        a = pointer(dtype)
        types = dict(x=a, w13=a, h=a, topk_ids="*i32", top_k="i32", H="i32", I="i32")
        for mode, routed in (("routed", True), ("dense", False)):
            for index, per_backend in enumerate(DECODE_GATE_UP_TILES):
                yield Variant("decode_gate_up_swiglu", "decode", f"{dtype}_{mode}_t{index}", dtype, types,
                              tile_configs(per_backend, dict(LAYER_KERNEL, ROUTED=routed)), ("x", "w13", "h", "H", "I"))
        types = dict(h=a, w2=a, out=a, topk_ids="*i32", topk_weights="*fp32", h_shared=a, shared_w2=a, top_k="i32",
                     H="i32", I="i32", shared_I="i32")
        for mode, shared in (("routed", False), ("shared", True)):
            for index, per_backend in enumerate(DECODE_DOWN_TILES):
                yield Variant("decode_down_combine", "decode", f"{dtype}_{mode}_t{index}", dtype, types,
                              tile_configs(per_backend, dict(LAYER_KERNEL, HAS_SHARED=shared)),
                              ("h", "w2", "out", "h_shared", "shared_w2", "H", "I", "shared_I"))


def cache_variants():
    configs = same_on_all_backends(dict(BLOCK=CACHE_READ_BLOCK), 4, 1)
    yield Variant("read_through", "cache", "i32", "i32", dict(src="*i32", sums="*i32", words="i32"), configs)


def all_variants():
    for family in (route_variants, align_variants, gate_up_variants, down_variants, combine_variants,
                   decode_variants, cache_variants):
        yield from family()
