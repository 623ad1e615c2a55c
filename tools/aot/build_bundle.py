#!/usr/bin/env python3
"""Ahead-of-time build of the GPU kernels: every variant of tools/aot/variants.py for
every target, compiled with no GPU visible, into OUTDIR/bundle.bin (the binaries,
each at a 256-byte aligned offset) and OUTDIR/manifest.json (docs/kernels.md).

    python3 tools/aot/build_bundle.py --out build/kernels [--jobs N]

The build fails on any compile error, on a Triton other than the pinned version,
on a compiled entry point whose parameter count differs from the manifest's
params, on a variant that needs more shared memory than its target has, and on a
variant that asks for warp specialization and compiled without it.
"""
import argparse
import concurrent.futures
import importlib
import json
import os
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import variants as matrix  # noqa: E402
from check_bundle import check_bundle, pinned_triton  # noqa: E402

BINARY_ALIGNMENT = 256
# Triton appends these to every entry point, after the visible arguments.
HIDDEN_PARAMS = [{"name": "global_scratch", "type": "*i8", "hidden": True},
                 {"name": "profile_scratch", "type": "*i8", "hidden": True}]


def parse_target(name):
    from triton.backends.compiler import GPUTarget
    backend, arch = name.split(":")
    if backend == "cuda":
        return GPUTarget("cuda", int(arch), 32)
    return GPUTarget("hip", arch, 64)


def argument_list(text, open_paren):
    """The comma-separated arguments between open_paren and its matching parenthesis."""
    depth, start, args = 0, open_paren + 1, []
    for i in range(open_paren, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                tail = text[start:i].strip()
                return args + [tail] if tail else args
        elif text[i] == "," and depth == 1:
            args.append(text[start:i].strip())
            start = i + 1
    raise ValueError("unbalanced parentheses")


def entry_param_count(asm, backend, entry):
    """Parameters of the compiled entry point: the PTX .entry on CUDA, the LLVM IR kernel on HIP."""
    if backend == "cuda":
        found = re.search(r"\.entry\s+" + re.escape(entry) + r"\s*\(", asm["ptx"])
        text = asm["ptx"]
    else:
        found = re.search(r"define\s+amdgpu_kernel\s+void\s+@" + re.escape(entry) + r"\s*\(", asm["llir"])
        text = asm["llir"]
    if found is None:
        raise RuntimeError(f"entry point {entry} not found in the {backend} assembly")
    return len(argument_list(text, found.end() - 1))


def compile_variant(variant, target_name):
    """Compiles one variant for one target; returns (manifest entry without offset, binary)."""
    import triton
    target = parse_target(target_name)
    config = matrix.target_config(variant.configs, target_name)
    fn = getattr(importlib.import_module("kernels." + variant.module), variant.kernel)
    unknown = set(variant.types) - set(fn.arg_names)
    untyped = [a for a in fn.arg_names if a not in variant.types and a not in config.constexprs]
    if unknown or untyped:
        raise RuntimeError(f"{variant.kernel}: signature mismatch: unknown {sorted(unknown)}, untyped {untyped}")
    # An explicit signature and explicit hints: nothing is specialised behind our back
    # (no argument dropped for being 1, no divisibility assumed that was not promised).
    signature = {a: "constexpr" if a in config.constexprs else variant.types[a] for a in fn.arg_names}
    attrs = {(fn.arg_names.index(a), ): [["tt.divisibility", 16]] for a in variant.divisible_by_16}
    source = triton.compiler.ASTSource(fn, signature, config.constexprs, attrs)
    kernel = triton.compile(source, target=target,
                            options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
    md = kernel.metadata
    binary_format = "cubin" if target.backend == "cuda" else "hsaco"
    params = [dict(name=a, type=variant.types[a], **({"divisibility": 16} if a in variant.divisible_by_16 else {}))
              for a in fn.arg_names if a not in config.constexprs] + HIDDEN_PARAMS
    compiled_params = entry_param_count(kernel.asm, target.backend, md.name)
    where = f"{variant.kernel}/{variant.name} for {target_name}"
    if compiled_params != len(params):
        raise RuntimeError(f"{where}: the entry point has {compiled_params} parameters, the manifest lists "
                           f"{len(params)} ({[p['name'] for p in params]})")
    if config.constexprs.get("WARP_SPECIALIZE") and md.num_warps == config.num_warps:
        # The tile's speed and its y layout's reason are the specialization (performance-log.md #62).
        raise RuntimeError(f"{where}: asks for warp specialization, and Triton compiled its loop without it")
    if md.shared > matrix.SHARED_LIMIT[target_name]:
        raise RuntimeError(f"{where}: needs {md.shared} bytes of shared memory, the target has "
                           f"{matrix.SHARED_LIMIT[target_name]}")
    entry = {
        "kernel": variant.kernel, "variant": variant.name, "target": target_name, "backend": target.backend,
        "arch": str(target.arch), "warp_size": target.warp_size, "entry": md.name, "format": binary_format,
        # The compiled kernel's warps: a warp-specialized loop adds its partitions' (4 -> 12).
        "offset": None, "size": None, "num_warps": md.num_warps, "num_stages": config.num_stages,
        "shared": md.shared, "dtype": variant.dtype, "constexprs": config.constexprs, "params": params,
        # HIP kernels have no global scratch in this Triton: its metadata has no such field.
        "global_scratch_size": getattr(md, "global_scratch_size", 0),
        "global_scratch_align": getattr(md, "global_scratch_align", 1),
        "profile_scratch_size": md.profile_scratch_size, "profile_scratch_align": md.profile_scratch_align,
    }
    return entry, kernel.asm[binary_format]


def compile_task(task):
    variant, target_name = task
    try:
        return compile_variant(variant, target_name), None
    except Exception as error:  # reported with its variant, and the build fails after all tasks ran
        return None, f"{variant.kernel}/{variant.name} for {target_name}: {type(error).__name__}: {error}"


def worker_setup():
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


def build(out_dir, jobs, targets):
    import triton
    if triton.__version__ != pinned_triton():
        raise SystemExit(f"error: Triton {pinned_triton()} is pinned (tools/aot/requirements.txt), found "
                         f"{triton.__version__}")
    variants = list(matrix.all_variants())
    tasks = [(v, t) for v in variants for t in targets]
    kernel_order = {k: i for i, k in enumerate(dict.fromkeys(v.kernel for v in variants))}
    # Biggest first (the GEMMs), so that no long compile starts last.
    tasks.sort(key=lambda task: -kernel_order[task[0].kernel])
    results, errors = [], []
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, initializer=worker_setup) as pool:
        for done, (result, error) in enumerate(pool.map(compile_task, tasks), 1):
            if error:
                errors.append(error)
                print("error: " + error, file=sys.stderr, flush=True)
            else:
                results.append(result)
            if done % 50 == 0 or done == len(tasks):
                print(f"  {done}/{len(tasks)} compiled", flush=True)
    if errors:
        raise SystemExit(f"error: {len(errors)} of {len(tasks)} compilations failed")

    target_order = {t: i for i, t in enumerate(targets)}
    results.sort(key=lambda r: (kernel_order[r[0]["kernel"]], r[0]["variant"], target_order[r[0]["target"]]))
    out_dir.mkdir(parents=True, exist_ok=True)
    entries, bundle = [], bytearray()
    for entry, binary in results:
        bundle += bytes(-len(bundle) % BINARY_ALIGNMENT)
        entry["offset"], entry["size"] = len(bundle), len(binary)
        bundle += binary
        entries.append(entry)
    manifest = {"format": 1, "triton_version": triton.__version__, "targets": list(targets), "kernels": entries}
    # Written through temporary names: an interrupted build leaves no half bundle behind.
    for name, data in (("bundle.bin", bytes(bundle)), ("manifest.json", json.dumps(manifest, indent=1) + "\n")):
        tmp = out_dir / (name + ".tmp")
        tmp.write_bytes(data) if isinstance(data, bytes) else tmp.write_text(data)
        tmp.replace(out_dir / name)
    return len(entries), len(bundle)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="output folder for bundle.bin and manifest.json")
    parser.add_argument("--jobs", "-j", type=int, default=0, help="parallel compiler processes (default: all cores)")
    parser.add_argument("--targets", default=",".join(matrix.TARGETS),
                        help="comma-separated subset of the targets, for development builds")
    args = parser.parse_args()
    targets = args.targets.split(",")
    unknown = [t for t in targets if t not in matrix.TARGETS]
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {', '.join(matrix.TARGETS)}")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    # A cache beside the bundle makes rebuilds after an edit recompile only what changed.
    os.environ.setdefault("TRITON_CACHE_DIR", str(args.out.resolve() / "triton-cache"))
    jobs = args.jobs or os.cpu_count() or 1
    start = time.time()
    count, size = build(args.out, jobs, targets)
    problems = check_bundle(args.out, expected_targets=targets)
    if problems:
        raise SystemExit("error: the bundle fails its check:\n  " + "\n  ".join(problems))
    print(f"bundle: {count} binaries, {size / 2**20:.1f} MiB, {time.time() - start:.0f} s with {jobs} processes "
          f"-> {args.out / 'bundle.bin'}", flush=True)


if __name__ == "__main__":
    main()
