#!/usr/bin/env python3
"""GPU check of every pipeline stage against torch in float64, on fresh random inputs
with poisoned outputs. Runs on a GPU machine with torch and Triton:

    python3 kernels/tests/test_kernels_gpu.py [--only aot|jit]

When a bundle built for this GPU exists (TMOE_BUNDLE_DIR, default build-aot/kernels),
every stage first runs from its precompiled binaries through the CUDA driver, with
params filled by name from the manifest as the C++ runtime does; then every stage
runs through Triton's JIT with the tiles of tools/aot/variants.py.

With --interpret the same checks run in Triton's interpreter on a machine without a
GPU (torch for the CPU needed; fp16 and f32 only, as the interpreter has no bf16
arithmetic; smaller cases), with the H100's configs, and then every routed GEMM tile
of every BLOCK_M in a layer (persistent ones on a small grid) and every decode tile:
a check of kernel logic before a device call, not of the compiled code.
Prints every failure, each layer case, a line per section and a summary; exits 1 on any failure.
"""
import argparse
import ctypes
import json
import math
import os
import sys
import time
from pathlib import Path

# Triton reads this when it defines the kernels: set before they are imported.
INTERPRET = "--interpret" in sys.argv
if INTERPRET:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import triton  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools" / "aot"))

import variants as matrix  # noqa: E402
from kernels import align, decode, down_combine, gate_up_swiglu, route  # noqa: E402

DEVICE = "cpu" if INTERPRET else "cuda"
INTERPRETED_TARGET = "cuda:90"  # whose configs the interpreter runs (it ignores warps and stages)
INTERPRETED_MULTIPROCESSORS = 2  # the persistent tiles' grid cap, small so that programs walk tiles
TORCH_DTYPE = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
POINTEE = {"*bf16": torch.bfloat16, "*fp16": torch.float16, "*fp32": torch.float32, "*i32": torch.int32}
MODES = {"softmax_topk": 0, "topk_softmax": 1, "sigmoid_grouped_topk": 2}
FUNCTIONS = {"route": route.route, "align_count": align.align_count, "align_scatter": align.align_scatter,
             "align_count_scatter": align.align_count_scatter,
             "gate_up_swiglu": gate_up_swiglu.gate_up_swiglu, "down": down_combine.down,
             "combine": down_combine.combine, "decode_gate_up_swiglu": decode.decode_gate_up_swiglu,
             "decode_down_combine": decode.decode_down_combine}
RESULTS = []


def report(name, ok, detail, always=False):
    """Failures always print; passes only where their numbers matter (always=True)."""
    RESULTS.append(ok)
    if always or not ok:
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


def section(name, run, *args):
    start, before = time.time(), len(RESULTS)
    try:
        run(*args)
    except Exception as error:  # a broken stage fails its section; the next sections still run
        report(f"{name} aborted", False, f"{type(error).__name__}: {error}")
    results = RESULTS[before:]
    print(f"{name}: {results.count(True)} of {len(results)} passed, {time.time() - start:.0f} s", flush=True)


def poisoned(shape, dtype):
    fill = float("nan") if dtype.is_floating_point else -12345
    return torch.full(shape if isinstance(shape, tuple) else (shape, ), fill, dtype=dtype, device=DEVICE)


# ----------------------------------------------------------------------------- launchers

def device_target():
    if INTERPRET:
        return INTERPRETED_TARGET
    major, minor = torch.cuda.get_device_capability()
    return f"cuda:{major}{minor}"


def multiprocessors():
    return INTERPRETED_MULTIPROCESSORS if INTERPRET else torch.cuda.get_device_properties(0).multi_processor_count


class JitLauncher:
    """Launches the Triton sources with this device's configs of the AOT matrix."""
    name = "interpreter" if INTERPRET else "jit"

    def __init__(self):
        self.variants = {(v.kernel, v.name): v for v in matrix.all_variants()}
        self.target = device_target()
        self.dummies = {}
        # The TMA tiles build their tensor descriptors in scratch from here (the library's workspace).
        triton.set_allocator(lambda size, alignment, stream: torch.empty(size, device=DEVICE, dtype=torch.int8))

    def constexprs(self, kernel, variant):
        return matrix.target_config(self.variants[kernel, variant].configs, self.target).constexprs

    def launch(self, kernel, variant, grid, **params):
        v = self.variants[kernel, variant]
        config = matrix.target_config(v.configs, self.target)
        for arg, value in params.items():
            if value is None:  # absent pointer: any tensor of the type, never read
                ty = v.types[arg]
                params[arg] = self.dummies.setdefault(ty, torch.zeros(16, dtype=POINTEE[ty], device=DEVICE))
        constexprs = dict(config.constexprs)
        if INTERPRET and constexprs.get("PDL"):
            constexprs["PDL"] = False  # the interpreter runs no inline PTX (the dependent launch's wait)
        FUNCTIONS[kernel][(grid, )](**params, **constexprs, num_warps=config.num_warps, num_stages=config.num_stages)


class AotLauncher:
    """Launches the bundle's cubins through the CUDA driver, params filled by name from the manifest."""
    name = "aot"

    def __init__(self, bundle_dir, target):
        manifest = json.loads((bundle_dir / "manifest.json").read_text())
        self.bundle = (bundle_dir / "bundle.bin").read_bytes()
        self.entries = {(e["kernel"], e["variant"]): e for e in manifest["kernels"] if e["target"] == target}
        self.cuda = ctypes.CDLL("libcuda.so.1")
        self.functions = {}
        self.keep = []

    def constexprs(self, kernel, variant):
        return self.entries[kernel, variant]["constexprs"]

    def check(self, result, what):
        if result != 0:
            raise RuntimeError(f"{what} failed with CUDA error {result}")

    def function(self, entry):
        key = (entry["kernel"], entry["variant"])
        if key not in self.functions:
            image = self.bundle[entry["offset"]:entry["offset"] + entry["size"]]
            self.keep.append(image)
            module, function = ctypes.c_void_p(), ctypes.c_void_p()
            self.check(self.cuda.cuModuleLoadData(ctypes.byref(module), image), "cuModuleLoadData")
            self.check(self.cuda.cuModuleGetFunction(ctypes.byref(function), module, entry["entry"].encode()),
                       "cuModuleGetFunction")
            if entry["shared"] > 48 * 1024:  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
                self.check(self.cuda.cuFuncSetAttribute(function, 8, entry["shared"]), "cuFuncSetAttribute")
            self.functions[key] = function
        return self.functions[key]

    def launch(self, kernel, variant, grid, **params):
        entry = self.entries[kernel, variant]
        visible = [p for p in entry["params"] if not p.get("hidden")]
        names = [p["name"] for p in visible]
        if sorted(names) != sorted(params):
            raise RuntimeError(f"{kernel}/{variant}: manifest params {names}, given {sorted(params)}")
        if entry["global_scratch_size"] or entry["profile_scratch_size"]:
            raise RuntimeError(f"{kernel}/{variant}: scratch needed; this test passes none")
        values = []
        for p in entry["params"]:
            value = None if p.get("hidden") else params[p["name"]]
            if p["type"].startswith("*"):
                values.append(ctypes.c_void_p(0 if value is None else value.data_ptr()))
            elif p["type"] == "fp32":
                values.append(ctypes.c_float(value))
            else:
                values.append(ctypes.c_int32(value))
            if p.get("divisibility") and (values[-1].value or 0) % p["divisibility"]:
                raise RuntimeError(f"{kernel}/{variant}: {p['name']} breaks its divisibility promise")
        args = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        self.check(self.cuda.cuLaunchKernel(self.function(entry), grid, 1, 1, entry["num_warps"] * 32, 1, 1,
                                            entry["shared"], stream, args, None), f"launch {kernel}/{variant}")


# ----------------------------------------------------------------------------- the host side, as documented

def expert_bucket(E):
    return next(b for b in matrix.EXPERT_BUCKETS if E <= b)


def max_padded_slots(slots, E, block_m):
    return triton.cdiv(slots + min(E, slots) * (block_m - 1), block_m) * block_m


def route_variant(logits_dtype, E, k, rounds=False):
    """The library's route variant (docs/kernels.md): one bitonic top-k where a TOP_K
    >= k > 1 is bundled, unless `rounds` asks for the any-k form."""
    top_k = min((t for t in matrix.ROUTE_TOP_K if t >= k > 1), default=0)
    return f"{logits_dtype}_e{expert_bucket(E)}" + (f"_k{top_k}" if top_k and not rounds else "")


def run_route(launcher, logits, routing, rounds=False):
    T, E = logits.shape
    k = routing["k"]
    ids, weights = poisoned((T, k), torch.int32), poisoned((T, k), torch.float32)
    bias = routing.get("bias")
    logits_dtype = next(n for n, t in TORCH_DTYPE.items() if t == logits.dtype)
    launcher.launch("route", route_variant(logits_dtype, E, k, rounds), T,
                    logits=logits, correction_bias=bias, topk_ids=ids, topk_weights=weights, E=E, top_k=k,
                    mode=MODES[routing["mode"]], renormalize=int(routing.get("renormalize", False)),
                    n_group=routing.get("n_group", 1), topk_group=routing.get("topk_group", 1),
                    routed_scaling_factor=routing.get("scale", 1.0), has_correction_bias=int(bias is not None))
    return ids, weights


def align_chunk(slots):
    return matrix.ALIGN_CHUNKS[0] if slots <= 16384 else matrix.ALIGN_CHUNKS[-1]


def align_programs(slots, capacity, block_m, chunk, block_b, one_launch=False):
    """The library's align grid (docs/kernels.md): a program per chunk, and more to fill
    (in one launch the sentinel goes by blocks, with block_expert)."""
    fills = [triton.cdiv(capacity // block_m, block_b)] + ([] if one_launch else [triton.cdiv(capacity, chunk)])
    return max(triton.cdiv(slots, chunk), *fills)


def run_align(launcher, ids, E, block_m, chunk, one_launch=False):
    slots = ids.numel()
    capacity = max_padded_slots(slots, E, block_m)
    num_chunks = triton.cdiv(slots, chunk)
    variant = f"c{chunk}_e{expert_bucket(E)}"
    programs = align_programs(slots, capacity, block_m, chunk, launcher.constexprs("align_scatter", variant)["BLOCK_B"],
                              one_launch)
    out = dict(counts=poisoned(E, torch.int32), offsets=poisoned(E + 1, torch.int32),
               sorted_slots=poisoned(capacity, torch.int32), slot_positions=poisoned(slots, torch.int32),
               block_expert=poisoned(capacity // block_m, torch.int32))
    outputs = dict(expert_counts=out["counts"], expert_offsets=out["offsets"], sorted_slots=out["sorted_slots"],
                   slot_positions=out["slot_positions"], block_expert=out["block_expert"], num_slots=slots, E=E,
                   block_m=block_m, capacity=capacity)
    if one_launch:
        launcher.launch("align_count_scatter", variant, programs, topk_ids=ids, **outputs)
        return out
    chunk_counts = poisoned(num_chunks * E, torch.int32)
    launcher.launch("align_count", variant, programs, topk_ids=ids, chunk_counts=chunk_counts,
                    sorted_slots=out["sorted_slots"], num_slots=slots, E=E, capacity=capacity)
    launcher.launch("align_scatter", variant, programs, topk_ids=ids, chunk_counts=chunk_counts, **outputs)
    return out


def tile_programs(launcher, kernel, variant, rows, N):
    """A program per (row block, BLOCK_N columns of N); a persistent tile's grid capped at
    PERSISTENT per multiprocessor, as the host's."""
    c = launcher.constexprs(kernel, variant)
    programs = rows * triton.cdiv(N, c["BLOCK_N"])
    return min(programs, c["PERSISTENT"] * multiprocessors()) if c.get("PERSISTENT") else programs


def moe_forward(launcher, x, w13, w2, block_m, logits=None, routing=None, ids=None, weights=None, shared=None,
                tiles=(0, 0)):
    """The whole layer: route (from logits), align, routed GEMMs (gate_up and down tiles `tiles`
    of BLOCK_M block_m), shared expert, combine. A PADDED_Y down tile writes y by padded
    position (the shared expert's rows after them) and combine gathers the rows."""
    T, H = x.shape
    E, I = w13.shape[0], w13.shape[1] // 2
    dtype = "bf16" if x.dtype == torch.bfloat16 else "f16"
    if logits is not None:
        ids, weights = run_route(launcher, logits, routing)
    k = ids.shape[1]
    slots = T * k
    al = run_align(launcher, ids, E, block_m, align_chunk(slots))
    capacity = al["sorted_slots"].numel()

    def gemm_variant(mode, block, *dims, tile=0):
        """The hinted variant of BLOCK_M block (tile `tile`) when the dims allow it, else the fallback.
        Routed GEMMs must match the alignment's block_m; a dense one (shared expert) picks freely."""
        if all(d % 16 == 0 for d in dims) and block != matrix.FALLBACK_BLOCK_M:
            return f"{dtype}_{mode}_m{block}_t{tile}_div16", block
        if mode == "dense" or block == matrix.FALLBACK_BLOCK_M:
            return f"{dtype}_{mode}_m{matrix.FALLBACK_BLOCK_M}_any", matrix.FALLBACK_BLOCK_M
        raise ValueError(f"H={H}, I={I}: not multiples of 16, align with block_m {matrix.FALLBACK_BLOCK_M}")

    rows_per_token = k + (shared is not None)
    down_variant, _ = gemm_variant("routed", block_m, H, I, tile=tiles[1])
    padded = bool(launcher.constexprs("down", down_variant).get("PADDED_Y"))
    out = poisoned((T, H), x.dtype)
    if padded:
        y = poisoned((capacity + (T if shared is not None else 0), H), x.dtype)
    else:
        y = out if rows_per_token == 1 else poisoned((T * rows_per_token, H), x.dtype)
    h = poisoned((capacity, I), x.dtype)
    v, _ = gemm_variant("routed", block_m, H, I, tile=tiles[0])
    launcher.launch("gate_up_swiglu", v, tile_programs(launcher, "gate_up_swiglu", v, capacity // block_m, I), x=x,
                    w13=w13, h=h, sorted_slots=al["sorted_slots"], block_expert=al["block_expert"],
                    expert_offsets=al["offsets"], num_slots=slots, top_k=k, H=H, I=I, E=E,
                    num_m_blocks=capacity // block_m)
    launcher.launch("down", down_variant, tile_programs(launcher, "down", down_variant, capacity // block_m, H), h=h,
                    w2=w2, y=y, sorted_slots=al["sorted_slots"], block_expert=al["block_expert"], topk_weights=weights,
                    expert_offsets=al["offsets"], num_slots=slots, top_k=k, H=H, I=I, E=E,
                    num_m_blocks=capacity // block_m, y_rows_per_token=rows_per_token, y_first_row=0)
    if shared is not None:
        shared_w13, shared_w2 = shared
        Is = shared_w2.shape[1]
        h_shared = poisoned((T, Is), x.dtype)
        v, dense_block_m = gemm_variant("dense", block_m, H, Is)
        m_blocks = triton.cdiv(T, dense_block_m)
        launcher.launch("gate_up_swiglu", v, tile_programs(launcher, "gate_up_swiglu", v, m_blocks, Is), x=x,
                        w13=shared_w13, h=h_shared, sorted_slots=None, block_expert=None, expert_offsets=None,
                        num_slots=T, top_k=1, H=H, I=Is, E=1, num_m_blocks=m_blocks)
        launcher.launch("down", v, tile_programs(launcher, "down", v, m_blocks, H), h=h_shared, w2=shared_w2, y=y,
                        sorted_slots=None, block_expert=None, topk_weights=None, expert_offsets=None, num_slots=T,
                        top_k=1, H=H, I=Is, E=1, num_m_blocks=m_blocks,
                        y_rows_per_token=1 if padded else rows_per_token, y_first_row=capacity if padded else k)
    if rows_per_token > 1 or padded:
        v = f"{dtype}{'_padded' if padded else ''}_{'div16' if H % 16 == 0 else 'any'}"
        launcher.launch("combine", v, T * triton.cdiv(H, launcher.constexprs("combine", v)["BLOCK_H"]), y=y, out=out,
                        slot_positions=al["slot_positions"], topk_weights=weights, H=H, rows_per_token=rows_per_token,
                        top_k=k, shared_first_row=capacity)
    return out, ids, weights


# ----------------------------------------------------------------------------- float64 references

def rank_key(scores):
    """The scores as every top-k ranks them: NaN as -inf (tmoe.h)."""
    return torch.where(scores.isnan(), -math.inf, scores)


def stable_topk(scores, k):
    """Indices of the k largest per row, ties to the lower index, best first."""
    return torch.sort(rank_key(scores), dim=-1, descending=True, stable=True).indices[..., :k]


def route_reference(logits, routing):
    """(ids, weights, selection scores, grouped) in float64 with the semantics of tmoe.h;
    grouped: (group scores, selection scores before the groups' mask) in
    sigmoid_grouped_topk, else None."""
    x = logits.double()
    k, mode = routing["k"], routing["mode"]
    grouped = None
    if mode == "sigmoid_grouped_topk":
        scores = torch.sigmoid(x)
        biased = scores + (routing["bias"].double() if routing.get("bias") is not None else 0)
        T, E = x.shape
        groups = biased.view(T, routing["n_group"], -1)
        best2 = torch.sort(rank_key(groups), dim=-1, descending=True).values[..., :2].sum(-1)
        group_score = best2 if groups.shape[-1] > 1 else groups[..., 0]
        kept = torch.zeros_like(group_score, dtype=torch.bool)
        kept.scatter_(1, stable_topk(group_score, routing["topk_group"]), True)
        selection = torch.where(kept.repeat_interleave(groups.shape[-1], 1), biased, -math.inf)
        grouped = (group_score, biased)
        ids = stable_topk(selection, k)
        weights = scores.gather(1, ids)
        if routing.get("renormalize"):
            weights = weights / weights.sum(-1, keepdim=True)
        weights = weights * routing.get("scale", 1.0)
    else:
        probs = torch.softmax(x, -1)
        selection = x if mode == "topk_softmax" else probs
        ids = stable_topk(selection, k)
        # topk_softmax: a softmax over the chosen logits (an unchosen NaN logit stays out of it).
        weights = torch.softmax(x.gather(1, ids), -1) if mode == "topk_softmax" else probs.gather(1, ids)
        if routing.get("renormalize") and mode != "topk_softmax":
            weights = weights / weights.sum(-1, keepdim=True)
    return ids, weights, selection, grouped


def kept_groups_near_tie(ids, routing, group_score, biased):
    """Rows where `ids` are the reference's choice had it kept other groups among those
    tied, within f32 rounding of their sums, with its last kept group (the device sums in
    f32 and may keep any of them): the groups ahead of the tie always kept, the tied
    groups `ids` use beside them, and `ids` the top-k of their experts."""
    n_group, topk_group = routing["n_group"], routing["topk_group"]
    if topk_group == n_group:
        return torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    group_size = biased.shape[1] // n_group
    ranked = rank_key(group_score)
    ordered = torch.sort(ranked, dim=-1, descending=True).values
    last_kept = ordered[:, topk_group - 1:topk_group]
    tied = (ranked - last_kept).abs() <= 1e-6
    ahead = ranked > last_kept + 1e-6
    used = torch.zeros_like(tied)
    used.scatter_(1, ids.clamp(0, biased.shape[1] - 1) // group_size, True)
    kept = ahead | (used & tied)
    choice = stable_topk(torch.where(kept.repeat_interleave(group_size, 1), biased, -math.inf), ids.shape[1])
    return ((ordered[:, topk_group] - last_kept[:, 0]).abs() <= 1e-6) & (used <= ahead | tied).all(1) & (
        kept.sum(1) <= topk_group) & (choice == ids).all(1)


def align_reference(ids, E, block_m):
    flat = ids.flatten().long()
    slots = flat.numel()
    counts = torch.bincount(flat, minlength=E)
    padded = (counts + block_m - 1) // block_m * block_m
    offsets = torch.cat([counts.new_zeros(1), torch.cumsum(padded, 0)])
    capacity = max_padded_slots(slots, E, block_m)
    order = torch.sort(flat, stable=True).indices
    rank = torch.arange(slots, device=DEVICE) - (torch.cumsum(counts, 0) - counts)[flat[order]]
    sorted_slots = torch.full((capacity, ), slots, dtype=torch.long, device=DEVICE)
    sorted_slots[offsets[flat[order]] + rank] = order
    slot_positions = torch.empty(slots, dtype=torch.long, device=DEVICE)
    slot_positions[order] = offsets[flat[order]] + rank
    first_rows = torch.arange(capacity // block_m, device=DEVICE) * block_m
    block_expert = torch.searchsorted(offsets[1:], first_rows, right=True)
    block_expert = torch.where(first_rows < offsets[-1], block_expert, -1)
    return dict(counts=counts, offsets=offsets, sorted_slots=sorted_slots, slot_positions=slot_positions,
                block_expert=block_expert)


def layer_reference(x, w13, w2, ids, weights, shared):
    x64 = x.double()
    I = w2.shape[2]
    out = torch.zeros(x.shape, dtype=torch.float64, device=DEVICE)
    for e in ids.unique().tolist():
        tokens, choice = (ids == e).nonzero(as_tuple=True)
        gu = x64[tokens] @ w13[e].double().t()
        act = torch.nn.functional.silu(gu[:, :I]) * gu[:, I:]
        out.index_add_(0, tokens, (act @ w2[e].double().t()) * weights[tokens, choice, None].double())
    if shared is not None:
        shared_w13, shared_w2 = shared
        Is = shared_w2.shape[1]
        gu = x64 @ shared_w13.double().t()
        out += (torch.nn.functional.silu(gu[:, :Is]) * gu[:, Is:]) @ shared_w2.double().t()
    return out


# ----------------------------------------------------------------------------- tests

def check_route(launcher, name, logits, routing):
    """Both forms where k has a bitonic variant: it, and the rounds any k takes."""
    E, k = logits.shape[1], routing["k"]
    bitonic = route_variant("f32", E, k) != route_variant("f32", E, k, rounds=True)
    for rounds in (False, True) if bitonic else (False, ):
        check_route_form(launcher, name + (" rounds" if rounds else ""), logits, routing, rounds)


def check_route_form(launcher, name, logits, routing, rounds):
    ids, weights = run_route(launcher, logits, routing, rounds)
    ref_ids, ref_weights, selection, grouped = route_reference(logits, routing)
    ids = ids.long()
    differ = (ids != ref_ids).any(1)
    # A differing row is accepted only as a near-tie: the scores of both picks agree at
    # every rank, or (grouped) they are the reference's picks from other tied groups.
    picked = selection.gather(1, ids.clamp(0, logits.shape[1] - 1))
    near_tie = (picked - selection.gather(1, ref_ids)).abs().amax(1) <= 1e-6
    if grouped is not None:
        near_tie |= kept_groups_near_tie(ids, routing, *grouped)
    bad_ids = int((differ & ~near_tie).sum())
    # NaN weights exactly where the reference has them (a NaN logit under softmax_topk), finite elsewhere.
    finite = torch.isfinite(ref_weights) & ~differ[:, None]
    weight_error = float((weights.double() - ref_weights).abs()[finite].max()) if finite.any() else 0.0
    ok = bad_ids == 0 and int(differ.sum()) <= max(1, logits.shape[0] // 100) and weight_error <= 2e-6 * max(
        1.0, routing.get("scale", 1.0)) and torch.equal(torch.isfinite(weights), torch.isfinite(ref_weights))
    report(name, ok, f"rows differing {int(differ.sum())} (near ties {int((differ & near_tie).sum())}), "
           f"max weight error {weight_error:.1e}")


def test_route(launcher):
    g = torch.Generator(device=DEVICE).manual_seed(1)
    cases = []
    for E, k in ((8, 1), (8, 2), (128, 8), (256, 8), (1000, 8), (60, 12), (128, 16)):
        cases.append((E, dict(mode="softmax_topk", k=k, renormalize=k > 1)))
        cases.append((E, dict(mode="softmax_topk", k=k, renormalize=False)))
        cases.append((E, dict(mode="topk_softmax", k=k)))
    for E, k, n_group, topk_group, with_bias, renorm in ((256, 8, 8, 4, True, True), (128, 8, 8, 3, False, True),
                                                         (64, 6, 1, 1, True, False), (16, 2, 16, 4, True, True),
                                                         (256, 16, 8, 4, True, True),
                                                         (8, 1, 2, 1, False, False)):
        bias = torch.randn(E, generator=g, device=DEVICE) * 0.1 if with_bias else None
        cases.append((E, dict(mode="sigmoid_grouped_topk", k=k, n_group=n_group, topk_group=topk_group,
                              renormalize=renorm, scale=2.5, bias=bias)))
    for E, routing in cases:
        for logits_dtype in ("f32", "f16") if INTERPRET else ("f32", "bf16", "f16"):
            T = 24 if INTERPRET else 1000 if logits_dtype == "f32" else 17
            logits = torch.randn(T, E, generator=g, device=DEVICE).to(TORCH_DTYPE[logits_dtype])
            check_route(launcher, f"route {routing['mode']} E={E} k={routing['k']} {logits_dtype}", logits, routing)
    # Quantised logits and bias: exact ties everywhere, the tie-break rule decides.
    for routing in (dict(mode="softmax_topk", k=8, renormalize=True), dict(mode="topk_softmax", k=4),
                    dict(mode="sigmoid_grouped_topk", k=8, n_group=8, topk_group=4, renormalize=True, scale=2.5,
                         bias=torch.randint(-2, 3, (128, ), generator=g, device=DEVICE).float() / 8)):
        logits = torch.randint(-4, 5, (24 if INTERPRET else 256, 128), generator=g,
                               device=DEVICE).to(torch.float16 if INTERPRET else torch.bfloat16)
        check_route(launcher, f"route {routing['mode']} ties", logits, routing)
    # A NaN logit in every third row ranks as -inf: k experts per row all the same.
    for routing in (dict(mode="softmax_topk", k=8, renormalize=True), dict(mode="topk_softmax", k=4),
                    dict(mode="sigmoid_grouped_topk", k=8, n_group=8, topk_group=4, renormalize=True, scale=2.5,
                         bias=torch.randn(256, generator=g, device=DEVICE) * 0.1)):
        E = 256 if routing["mode"] == "sigmoid_grouped_topk" else 128
        T = 30 if INTERPRET else 300
        logits = torch.randn(T, E, generator=g, device=DEVICE)
        nan_lanes = torch.randint(0, E, (T // 3, ), generator=g, device=DEVICE)
        logits[torch.arange(0, T, 3, device=DEVICE), nan_lanes] = math.nan
        check_route(launcher, f"route {routing['mode']} NaN logits", logits, routing)


def test_align(launcher):
    g = torch.Generator(device=DEVICE).manual_seed(2)
    cases = [(1, 8, 16, "uniform"), (34, 8, 16, "uniform"), (5000, 128, 64, "uniform"), (8000, 128, 128, "uniform"),
             (65536, 256, 16, "uniform"), (65536, 256, 128, "skewed"), (65536, 256, 64, "one"), (3, 1000, 32, "uniform"),
             (20000, 1000, 16, "uniform")]
    for slots, E, block_m, kind in cases:
        if INTERPRET and slots > INTERPRETED_MAX_SLOTS:
            continue
        if kind == "uniform":
            ids = torch.randint(0, E, (slots, ), generator=g, device=DEVICE)
        elif kind == "skewed":
            ids = (torch.rand(slots, generator=g, device=DEVICE) ** 4 * E).long()
        else:
            ids = torch.full((slots, ), E - 1, device=DEVICE)
        ids = ids.to(torch.int32)
        ref = align_reference(ids, E, block_m)
        for chunk, one_launch in [(chunk, False) for chunk in matrix.ALIGN_CHUNKS] + [(matrix.ALIGN_CHUNKS[0], True)]:
            got = run_align(launcher, ids, E, block_m, chunk, one_launch)
            wrong = [key for key in ref if not torch.equal(got[key].long(), ref[key])]
            report(f"align S={slots} E={E} block_m={block_m} {kind} chunk={chunk}{' one launch' if one_launch else ''}",
                   not wrong, "exact" if not wrong else f"differs in {wrong}")


PIPELINE_CASES = [  # T, H, I, E, k, dtype, block_m, routing (None: ids given), shared I (0: none)
    (1, 256, 512, 8, 2, "bf16", 16, dict(mode="softmax_topk", renormalize=True), 0),
    (1, 512, 256, 128, 1, "f16", 16, dict(mode="softmax_topk", renormalize=False), 0),
    (17, 2880, 1408, 128, 8, "bf16", 16, dict(mode="sigmoid_grouped_topk", n_group=8, topk_group=4,
                                              renormalize=True, scale=2.5), 1408),
    (17, 33, 40, 8, 2, "bf16", 32, dict(mode="topk_softmax"), 24),
    (256, 512, 256, 128, 8, "f16", 64, dict(mode="topk_softmax"), 512),
    (256, 200, 72, 128, 8, "f16", 32, dict(mode="softmax_topk", renormalize=True), 0),
    (256, 384, 768, 8, 2, "bf16", 64, None, 100),
    (1000, 1024, 768, 8, 2, "bf16", 128, dict(mode="softmax_topk", renormalize=False), 256),
    (1000, 256, 384, 128, 1, "f16", 64, dict(mode="softmax_topk", renormalize=False), 0),
    (1000, 2880, 1408, 8, 8, "f16", 128, dict(mode="softmax_topk", renormalize=True), 1408),
    (1000, 96, 48, 128, 8, "f16", 16, dict(mode="sigmoid_grouped_topk", n_group=4, topk_group=2,
                                           renormalize=False, scale=1.0), 0),
    (17, 144, 208, 8, 1, "bf16", 128, None, 64),
]
# Interpreted: fp16 only (the interpreter has no bf16 arithmetic), and small.
INTERPRETED_CASES = [
    (1, 64, 96, 8, 2, "f16", 16, dict(mode="softmax_topk", renormalize=True), 0),
    (17, 48, 40, 8, 2, "f16", 32, dict(mode="topk_softmax"), 24),
    (40, 64, 64, 64, 8, "f16", 64, dict(mode="sigmoid_grouped_topk", n_group=8, topk_group=4, renormalize=True,
                                         scale=2.5), 32),
    (60, 128, 96, 8, 2, "f16", 128, None, 0),
]
INTERPRETED_MAX_SLOTS = 5000


def make_problem(case, seed):
    T, H, I, E, k, dtype, block_m, routing, shared_I = case
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    dt = TORCH_DTYPE[dtype]

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=DEVICE) * scale).to(dt)

    problem = dict(x=randn(T, H), w13=randn(E, 2 * I, H, scale=H**-0.5), w2=randn(E, H, I, scale=I**-0.5),
                   block_m=block_m)
    if shared_I:
        problem["shared"] = (randn(2 * shared_I, H, scale=H**-0.5), randn(H, shared_I, scale=shared_I**-0.5))
    if routing is None:  # given ids: three quarters of the slots on expert 0, many blocks of one expert
        ids = torch.where(torch.rand(T, k, generator=g, device=DEVICE) < 0.75, 0,
                          torch.randint(0, E, (T, k), generator=g, device=DEVICE))
        problem["ids"] = ids.to(torch.int32)
        problem["weights"] = torch.rand(T, k, generator=g, device=DEVICE)
    else:
        problem["routing"] = dict(routing, k=k)
        if routing["mode"] == "sigmoid_grouped_topk":
            problem["routing"]["bias"] = torch.randn(E, generator=g, device=DEVICE) * 0.1
        problem["logits"] = torch.randn(T, E, generator=g, device=DEVICE)
    return problem


def report_layer(name, out, ref, dtype, always=False):
    """A layer's output against its float64 reference: finite, and within the dtype's relative L2 bound."""
    error = float((out.double() - ref).norm() / ref.norm())
    tolerance = 1e-2 if dtype == "bf16" else 2e-3
    report(name, bool(torch.isfinite(out).all()) and error <= tolerance,
           f"rel L2 {error:.1e} (tolerance {tolerance:.0e})", always)


def test_pipeline(launcher, cases):
    for i, case in enumerate(cases):
        T, H, I, E, k, dtype, block_m, routing, shared_I = case
        mode = routing["mode"] if routing else "given ids"
        name = (f"{launcher.name} layer T={T} H={H} I={I} E={E} k={k} {dtype} m{block_m} {mode}"
                f"{f' shared={shared_I}' if shared_I else ''}")
        try:
            problem = make_problem(case, seed=100 + i)
            out, ids, weights = moe_forward(launcher, **problem)
            ref = layer_reference(problem["x"], problem["w13"], problem["w2"], ids.long(), weights,
                                  problem.get("shared"))
        except Exception as error:  # reported, and the other cases still run
            report(name, False, f"{type(error).__name__}: {error}")
            continue
        report_layer(name, out, ref, dtype, always=True)


def test_tiles(launcher):
    """Every routed gate_up and down tile of every BLOCK_M in a layer (the other GEMM on t0), on
    given ids that put three quarters of the slots on expert 0: experts end in blocks both
    fuller and emptier than half (HALF_TAIL's two paths), and persistent tiles walk several.
    The PADDED_Y down tiles (their own y layout) also with a shared expert; the tiles with
    GROUP_BY_EXPERT also on 64 experts, whose padding makes the blocks that they group
    (kernels/grouped_gemm.MIN_BLOCKS_TO_GROUP), expert 0's more than a group's GROUP_M."""
    def has(kernel, block_m, tile, constexpr):
        return bool(launcher.constexprs(kernel, f"f16_routed_m{block_m}_t{tile}_div16").get(constexpr))

    for block_m in matrix.GATE_UP_TILES:
        pairs = [(g, 0) for g in range(len(matrix.GATE_UP_TILES[block_m]))]
        pairs += [(0, d) for d in range(1, len(matrix.DOWN_TILES[block_m]))]
        padded = [(0, d) for d in range(len(matrix.DOWN_TILES[block_m])) if has("down", block_m, d, "PADDED_Y")]
        by_expert = [(g, d) for g, d in pairs if has("gate_up_swiglu", block_m, g, "GROUP_BY_EXPERT")
                     or has("down", block_m, d, "GROUP_BY_EXPERT")]
        runs = [(T, 4, shared_I, padded if shared_I else pairs)
                for T in (3 * block_m // 4, 5 * block_m // 2) for shared_I in (0, 48)]
        runs += [(12 * block_m, 64, 0, by_expert)] if by_expert else []
        for T, E, shared_I, tile_pairs in runs:
            case = (T, 64, 96, E, 2, "f16", block_m, None, shared_I)
            problem = make_problem(case, seed=7 * block_m + T + shared_I)
            ref = layer_reference(problem["x"], problem["w13"], problem["w2"], problem["ids"].long(),
                                  problem["weights"], problem.get("shared"))
            for tiles in tile_pairs:
                name = (f"{launcher.name} tiles m{block_m} gate_up t{tiles[0]} down t{tiles[1]} T={T} E={E}"
                        f"{f' shared={shared_I}' if shared_I else ''}")
                try:
                    out, _, _ = moe_forward(launcher, **problem, tiles=tiles)
                except Exception as error:  # reported, and the other tiles still run
                    report(name, False, f"{type(error).__name__}: {error}")
                    continue
                report_layer(name, out, ref, "f16")


def decode_forward(launcher, x, w13, w2, ids, weights, shared=None, tiles=(0, 0)):
    """The decode path (docs/kernels.md): both decode kernels with tiles `tiles`, the shared expert's
    gate_up on the dense variant of the same tile."""
    T, H = x.shape
    I = w13.shape[1] // 2
    k = ids.shape[1]
    dtype = "bf16" if x.dtype == torch.bfloat16 else "f16"

    def launch(kernel, variant, rows, N, **params):
        launcher.launch(kernel, variant, tile_programs(launcher, kernel, variant, rows, N), **params)

    h = poisoned((T * k, I), x.dtype)
    launch("decode_gate_up_swiglu", f"{dtype}_routed_t{tiles[0]}", T * k, I, x=x, w13=w13, h=h, topk_ids=ids,
           top_k=k, H=H, I=I)
    h_shared, shared_w2, shared_I = None, None, 0
    if shared is not None:
        shared_w13, shared_w2 = shared
        shared_I = shared_w2.shape[1]
        h_shared = poisoned((T, shared_I), x.dtype)
        launch("decode_gate_up_swiglu", f"{dtype}_dense_t{tiles[0]}", T, shared_I, x=x, w13=shared_w13, h=h_shared,
               topk_ids=None, top_k=1, H=H, I=shared_I)
    out = poisoned((T, H), x.dtype)
    launch("decode_down_combine", f"{dtype}_{'routed' if shared is None else 'shared'}_t{tiles[1]}", T, H, h=h,
           w2=w2, out=out, topk_ids=ids, topk_weights=weights, h_shared=h_shared, shared_w2=shared_w2, top_k=k,
           H=H, I=I, shared_I=shared_I)
    return out


def test_decode(launcher):
    """The decode path at T = 1-18, with and without a shared expert, experts shared by several
    slots or not (up to 30 slots on one); in the interpreter every gate_up and down tile (the
    other on t0), on a GPU t0."""
    up_tiles, down_tiles = len(matrix.DECODE_GATE_UP_TILES), len(matrix.DECODE_DOWN_TILES)
    pairs = ([(g, 0) for g in range(up_tiles)] + [(0, d) for d in range(1, down_tiles)]) if INTERPRET else [(0, 0)]
    dtypes = ("f16",) if INTERPRET else ("bf16", "f16")
    # repeated: given ids from two experts, repeats within a token too, so more slots share
    # an expert than a program's tile has rows (and T = 18 groups the dense form's tokens twice).
    for T, H, I, E, k, shared_I, repeated in ((1, 64, 96, 8, 2, 0, False), (4, 64, 96, 8, 2, 32, False),
                                              (16, 128, 64, 128, 8, 0, False), (3, 48, 32, 16, 5, 48, False),
                                              (18, 64, 48, 4, 3, 32, True)):
        for dtype in dtypes:
            problem = make_problem((T, H, I, E, k, dtype, 16, None, shared_I), seed=31 * T + k)
            draws = torch.Generator(device=DEVICE).manual_seed(T)
            if repeated:
                ids = torch.randint(0, 2, (T, k), generator=draws, device=DEVICE, dtype=torch.int32)
            else:  # distinct experts per token, as routed
                ids = torch.rand(T, E, generator=draws, device=DEVICE).topk(k, dim=1).indices.to(torch.int32)
            ids = ids.contiguous()
            ref = layer_reference(problem["x"], problem["w13"], problem["w2"], ids.long(), problem["weights"],
                                  problem.get("shared"))
            for tiles in pairs:
                name = (f"{launcher.name} decode T={T} H={H} I={I} E={E} k={k} {dtype}"
                        f"{f' shared={shared_I}' if shared_I else ''}{' repeated ids' if repeated else ''}"
                        f" gate_up t{tiles[0]} down t{tiles[1]}")
                try:
                    out = decode_forward(launcher, problem["x"], problem["w13"], problem["w2"], ids,
                                         problem["weights"], problem.get("shared"), tiles)
                except Exception as error:  # reported, and the other cases still run
                    report(name, False, f"{type(error).__name__}: {error}")
                    continue
                report_layer(name, out, ref, dtype)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("aot", "jit"), help="run only the bundle's binaries, or only the JIT")
    parser.add_argument("--interpret", action="store_true",
                        help=f"Triton's interpreter on the CPU, {INTERPRETED_TARGET}'s configs, smaller cases")
    args = parser.parse_args()
    start = time.time()
    if args.interpret:
        print(f"Triton's interpreter on the CPU ({INTERPRETED_TARGET}'s configs), torch {torch.__version__}, "
              f"triton {triton.__version__}", flush=True)
        jit = JitLauncher()
        section("interpreted route", test_route, jit)
        section("interpreted align", test_align, jit)
        section("interpreted layer", test_pipeline, jit, INTERPRETED_CASES)
        section("interpreted tiles", test_tiles, jit)
        section("interpreted decode", test_decode, jit)
    else:
        print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}",
              flush=True)
        if args.only != "jit":
            bundle_dir = Path(os.environ.get("TMOE_BUNDLE_DIR", REPO / "build-aot" / "kernels"))
            target = device_target()
            if (bundle_dir / "manifest.json").exists() and target in matrix.TARGETS:
                aot = AotLauncher(bundle_dir, target)
                section("aot route", test_route, aot)
                section("aot align", test_align, aot)
                section("aot layer", test_pipeline, aot, PIPELINE_CASES)
            else:
                print(f"no bundle for {target} in {bundle_dir}: the AOT binaries were not run", flush=True)
        if args.only != "aot":
            # After the bundle, which needs no compiling: the JIT compiles every specialisation it meets.
            jit = JitLauncher()
            section("jit route", test_route, jit)
            section("jit align", test_align, jit)
            section("jit layer", test_pipeline, jit, PIPELINE_CASES)
            section("jit decode", test_decode, jit)
    failed = RESULTS.count(False)
    print(f"summary: {len(RESULTS) - failed} passed, {failed} failed, {time.time() - start:.0f} s", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
