#!/usr/bin/env python3
"""Checks a kernel bundle (OUTDIR/bundle.bin + OUTDIR/manifest.json) without a GPU:

- the manifest's format, Triton version and targets;
- every variant of tools/aot/variants.py present once for every target, and no other;
- every binary in range, 256-byte aligned, not overlapping another, an ELF file;
- the same parameter list for a variant on every target, the same parameter
  names for every variant of a kernel, the two hidden scratch pointers last.

    python3 tools/aot/check_bundle.py build/kernels
"""
import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import variants as matrix  # noqa: E402
FIELDS = ("kernel", "variant", "target", "backend", "arch", "warp_size", "entry", "format", "offset", "size",
          "num_warps", "num_stages", "shared", "dtype", "constexprs", "params", "global_scratch_size",
          "global_scratch_align", "profile_scratch_size", "profile_scratch_align")
HIDDEN = ["global_scratch", "profile_scratch"]


def pinned_triton():
    """The Triton version pinned in tools/aot/requirements.txt, the one place that names it."""
    for line in (HERE / "requirements.txt").read_text().splitlines():
        if line.startswith("triton=="):
            return line.split("==", 1)[1].strip()
    raise RuntimeError("tools/aot/requirements.txt pins no triton version")


def check_bundle(out_dir, expected_targets=matrix.TARGETS):
    """The list of problems found (empty when the bundle is sound)."""
    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / "manifest.json").read_text())
    bundle = (out_dir / "bundle.bin").read_bytes()
    problems = []
    if manifest.get("format") != 1:
        problems.append(f"format is {manifest.get('format')}, expected 1")
    if manifest.get("triton_version") != pinned_triton():
        problems.append(f"triton_version is {manifest.get('triton_version')}, expected {pinned_triton()}")
    if list(manifest.get("targets", [])) != list(expected_targets):
        problems.append(f"targets are {manifest.get('targets')}, expected {list(expected_targets)}")

    by_variant = defaultdict(dict)  # (kernel, variant) -> target -> entry
    spans = []
    for entry in manifest.get("kernels", []):
        missing = [f for f in FIELDS if f not in entry]
        if missing:
            problems.append(f"an entry lacks {missing}: {entry.get('kernel')}/{entry.get('variant')}")
            continue
        where = f"{entry['kernel']}/{entry['variant']} for {entry['target']}"
        if entry["target"] in by_variant[entry["kernel"], entry["variant"]]:
            problems.append(f"{where}: listed twice")
        by_variant[entry["kernel"], entry["variant"]][entry["target"]] = entry
        offset, size = entry["offset"], entry["size"]
        if offset % 256 or size <= 0 or offset + size > len(bundle):
            problems.append(f"{where}: binary at {offset}+{size} is misaligned or outside the {len(bundle)}-byte bundle")
        elif bundle[offset:offset + 4] != b"\x7fELF":
            problems.append(f"{where}: binary at {offset} is not an ELF file")
        spans.append((offset, offset + size, where))
        expected_format, warp_size = ("cubin", 32) if entry["backend"] == "cuda" else ("hsaco", 64)
        if entry["target"] != f"{entry['backend']}:{entry['arch']}" or entry["format"] != expected_format \
                or entry["warp_size"] != warp_size:
            problems.append(f"{where}: target, backend, arch, format and warp_size disagree")
        names = [p["name"] for p in entry["params"]]
        if names[-2:] != HIDDEN or not all(p.get("hidden") for p in entry["params"][-2:]) \
                or any(p.get("hidden") for p in entry["params"][:-2]):
            problems.append(f"{where}: params must end with the hidden {HIDDEN}, and only them: {names}")
        if entry["shared"] > matrix.SHARED_LIMIT.get(entry["target"], 0):
            problems.append(f"{where}: {entry['shared']} bytes of shared memory exceed its target's limit")
    spans.sort()
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            problems.append(f"{first} and {second} overlap in the bundle")

    param_names = {}
    for (kernel, variant), per_target in sorted(by_variant.items()):
        absent = [t for t in expected_targets if t not in per_target]
        if absent:
            problems.append(f"{kernel}/{variant}: missing for {absent}")
        lists = {json.dumps(e["params"], sort_keys=True) for e in per_target.values()}
        if len(lists) != 1:
            problems.append(f"{kernel}/{variant}: parameter lists differ between targets")
        names = [p["name"] for p in next(iter(per_target.values()))["params"]]
        if param_names.setdefault(kernel, names) != names:
            problems.append(f"{kernel}/{variant}: parameter names {names} differ from its other variants' "
                            f"{param_names[kernel]}")
    expected = {(v.kernel, v.name) for v in matrix.all_variants()}
    if expected - set(by_variant):
        problems.append(f"variants missing from the bundle: {sorted(expected - set(by_variant))}")
    if set(by_variant) - expected:
        problems.append(f"variants not in tools/aot/variants.py: {sorted(set(by_variant) - expected)}")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle_dir", type=Path, help="folder holding bundle.bin and manifest.json")
    args = parser.parse_args()
    problems = check_bundle(args.bundle_dir)
    for problem in problems:
        print("error: " + problem, file=sys.stderr)
    if problems:
        sys.exit(1)
    manifest = json.loads((args.bundle_dir / "manifest.json").read_text())
    print(f"ok: {len(manifest['kernels'])} binaries for {', '.join(manifest['targets'])}")


if __name__ == "__main__":
    main()
