#!/usr/bin/env python3
"""Plots of a bench/peers.py run and the generated peers section of docs/PERFORMANCE.md.

    python3 bench/plot.py [bench/results/<card>-<date>]   (default: the newest dir holding peers.json)

Writes time_vs_T.png, ratio_to_best_peer.png and pct_of_floor.png beside peers.json, and
replaces the run's card's peers block in docs/PERFORMANCE.md (appended at the end the
first time) and its targets block (where each performance target of issue 5 stands in
the run); other cards' blocks and the rest of that file are left as they are. --no-docs
skips the docs.
"""
import argparse
import glob
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS_SOURCE = "bench/plot.py from bench/results/*/peers.json"
MODEL_ORDER = ["mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v3", "gpt-oss-120b"]
STYLE = {  # (system, mode): (label, color, linestyle)
    ("tmoe", "layer"): ("tritonmoe layer", "tab:red", "-"),
    ("tmoe", "experts"): ("tritonmoe experts", "tab:red", "--"),
    ("vllm", "layer"): ("vLLM layer (torch routing+align)", "tab:blue", "-"),
    ("vllm", "experts"): ("vLLM experts (tuned)", "tab:blue", "--"),
    ("grouped_mm", "experts"): ("torch._grouped_mm", "tab:green", "--"),
    ("eager", "experts"): ("PyTorch eager", "tab:gray", "--"),
    ("megablocks", "experts"): ("MegaBlocks dMoE", "tab:purple", "--"),
    ("triton_kernels", "experts"): ("triton_kernels matmul_ogs", "tab:orange", "--"),
    ("read", "bytes"): ("one plain read of the floor's bytes", "tab:brown", ":"),
}


def load(d):
    with open(os.path.join(d, "peers.json")) as f:
        return json.load(f)


def index(rows):
    by = {}
    for r in rows:
        by.setdefault(r["model"], {}).setdefault(r["T"], {})[(r["system"], r["mode"])] = r
    return by


def models_of(by):
    return [m for m in MODEL_ORDER if m in by] + sorted(m for m in by if m not in MODEL_ORDER)


def best_peer(cell):
    peers = [r for (s, md), r in cell.items() if s != "tmoe" and md == "experts" and r.get("ms")]
    return min(peers, key=lambda r: r["ms"]) if peers else None


def floor_ms(cell):
    """The cell's floor as its first row gives it: one run's rows share it; rows appended
    by another run (--append) carry that run's ceilings."""
    return next(iter(cell.values()))["floor_ms"]


def read_pct(cell):
    """% of the floor that one plain read of the floor's bytes reaches (None where not run)."""
    r = cell.get(("read", "bytes"))
    return 100.0 * floor_ms(cell) / r["ms"] if r and r.get("ms") else None


def plots(data, d):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = index(data["rows"])
    models = models_of(by)
    card = data["meta"]["card"]
    n = len(models)
    cols = 2 if n > 1 else 1
    rws = (n + cols - 1) // cols

    def grid(title):
        fig, axes = plt.subplots(rws, cols, figsize=(6 * cols, 3.6 * rws), squeeze=False)
        fig.suptitle(f"{title} - {card}, {data['meta']['date']}", fontsize=10)
        return fig, [ax for row in axes for ax in row]

    def label_axes(ax, m, ylabel):
        ax.set_xscale("log", base=2)
        ax.set_title(m, fontsize=9); ax.set_xlabel("T (tokens)", fontsize=8); ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7); ax.grid(alpha=0.3)

    def plot_systems(ax, m, field):
        """One curve per (system, mode) of `field` against T."""
        Ts = sorted(by[m])
        for key, (name, color, ls) in STYLE.items():
            pts = [(T, by[m][T][key][field]) for T in Ts if key in by[m][T]]
            if pts:
                ax.plot(*zip(*pts), color=color, ls=ls, marker=".", label=name, lw=1.2)
        return Ts

    def save(fig, axes, name):
        axes[0].legend(fontsize=6)
        for ax in axes[n:]:
            ax.axis("off")
        fig.tight_layout()
        path = os.path.join(d, name)
        fig.savefig(path, dpi=70)
        plt.close(fig)
        try:  # a 64-colour palette keeps each PNG small in git
            from PIL import Image
            Image.open(path).convert("RGB").quantize(64).save(path, optimize=True)
        except ImportError:
            pass

    # time vs T
    fig, axes = grid("MoE layer time vs tokens (median ms, log-log)")
    for ax, m in zip(axes, models):
        Ts = plot_systems(ax, m, "ms")
        ax.plot(Ts, [floor_ms(by[m][T]) for T in Ts], color="black", ls=":", label="floor")
        ax.set_yscale("log")
        label_axes(ax, m, "ms")
    save(fig, axes, "time_vs_T.png")

    # ratio to the best peer
    fig, axes = grid("tritonmoe time / best peer time (below 1: tritonmoe faster)")
    for ax, m in zip(axes, models):
        ex, lay = [], []
        for T in sorted(by[m]):
            c = by[m][T]
            bp = best_peer(c)
            if bp and ("tmoe", "experts") in c:
                ex.append((T, c[("tmoe", "experts")]["ms"] / bp["ms"]))
            if ("vllm", "layer") in c and ("tmoe", "layer") in c:
                lay.append((T, c[("tmoe", "layer")]["ms"] / c[("vllm", "layer")]["ms"]))
        if ex:
            ax.plot(*zip(*ex), color="tab:red", ls="--", marker=".", label="experts: tmoe / best peer (experts)")
        if lay:
            ax.plot(*zip(*lay), color="tab:red", ls="-", marker=".", label="layer: tmoe / vLLM layer")
        ax.axhline(1.0, color="black", lw=0.8)
        label_axes(ax, m, "ratio")
    save(fig, axes, "ratio_to_best_peer.png")

    # % of floor
    fig, axes = grid("% of floor (floor = max(bytes / read BW, flops / matmul rate))")
    for ax, m in zip(axes, models):
        plot_systems(ax, m, "pct_floor")
        ax.set_ylim(0, 110)
        label_axes(ax, m, "% of floor")
    save(fig, axes, "pct_of_floor.png")


def fmt(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def section(data, d):
    meta = data["meta"]
    by = index(data["rows"])
    rel = os.path.relpath(d, ROOT)
    ceil = meta["ceilings"]
    ran = sorted({(r["system"], r["mode"]) for r in data["rows"]})
    begin, end = markers("peers", meta["card"], PEERS_SOURCE)
    lines = [begin, "", f"## Peers side by side: {meta['card']}, {meta['date']}", ""]
    lines += [
        f"One process, one card, the same inputs for every system (`bench/peers.py`, command in "
        f"`bench/README.md`; raw rows `{rel}/peers.json`, plots beside it). bf16 weights and activations, random "
        f"router logits (f32), each model's routing; DeepSeek-V3 is its routed experts only (no shared expert). "
        f"Ceilings measured in the same run: read-only stream {ceil['read_Bps'] / 1e12:.2f} TB/s, bf16 8192^3 "
        f"matmul {ceil['mm_flops'] / 1e12:.0f} TFLOP/s. floor = max((active experts * 3*H*I*2 + x in and out) / "
        f"read bandwidth, 2*T*k*3*H*I / matmul rate).",
        "",
        "Times are medians of device events, one call per event pair, L2 flushed before each call by reading 512 MB "
        "(runs before 2026-11-27: by a memset, whose dirty lines the timed call wrote back, performance-log.md #23); CUDA-graph "
        "replays for tritonmoe and both vLLM modes, plain launches for torch._grouped_mm, eager and MegaBlocks "
        "(they synchronise with the host). At each T tritonmoe is measured right before vLLM (the pair the targets "
        "compare sees the same clocks under the power cap); the other peers follow, model by model. **layer** = from router logits: tritonmoe's `moe_layer`; vLLM = "
        "routing in torch (softmax/top-k, or the grouped sigmoid top-k) + the alignment in torch ops as in "
        "shared/bench/peers_baseline.py (vLLM itself uses one CUDA kernel for it) + its experts, timed as one "
        "graph. **experts** = from given ids/weights: tritonmoe's `fused_moe` (its own alignment included); "
        "vLLM's alignment is precomputed and not timed (as in the baseline); torch._grouped_mm and eager sort in "
        "torch (timed). vLLM = its Triton `fused_moe_kernel` (bf16 path), each of the two GEMMs given the best of "
        f"a pruned 18-config grid timed at T in {meta['tune_tokens']} (other T reuse the nearest), plus a "
        "SiLU-and-mul kernel and a sum over k. MegaBlocks = dMoE's `ParallelDroplessMLP.forward_once` (GLU with "
        "SiLU, `mlp_impl=\"grouped\"`: its sparse/stk path refuses Triton >= 3.2) from megablocks 0.10.0 and "
        "grouped_gemm 0.3.0 (its default cuBLAS build), built on the GPU machine by bench/setup_peers.sh with one "
        "compatibility edit (CUDA 13's CUB no longer takes the debug_synchronous argument). Host-bound systems "
        "(plain launches) move with CPU load: a run with a compile beside it measured eager and "
        "torch._grouped_mm up to 2x slower. Every output is checked against a float64 reference on "
        f"{meta['check_rows']} sampled rows (rel L2 err in the JSON: 2-3e-3 for tritonmoe, up to 6e-3 for the "
        "peers that round the intermediate to bf16).",
        "",
        "Ran: " + ", ".join(f"{s} ({md})" for s, md in ran) + ".",
    ]
    for key, why in sorted(meta.get("not_run", {}).items()):
        lines.append(f"Not run: **{key}**: {why}")
    lines.append("")
    lines.append("ratio = tritonmoe experts ms / best peer experts ms (above 1: tritonmoe slower). % floor of "
                 "tritonmoe layer and experts; read % floor: one plain read of the floor's bytes (system `read`, "
                 "not a peer; memory-bound cells, where the run has it), what one streaming kernel reaches at "
                 "that size. Plots: `time_vs_T.png`, `ratio_to_best_peer.png`, `pct_of_floor.png`.")
    for m in models_of(by):
        ratios = []
        for T in sorted(by[m]):
            c = by[m][T]
            bp, te = best_peer(c), c.get(("tmoe", "experts"))
            if bp and te:
                ratios.append((te["ms"] / bp["ms"], T, bp["system"]))
        summary = ""
        if ratios:
            lo, hi = min(ratios), max(ratios)
            wins = [T for r, T, _ in ratios if r <= 1.0]
            summary = (f"tritonmoe experts / best peer: {lo[0]:.2f} (T={lo[1]}) to {hi[0]:.2f} (T={hi[1]}, "
                       f"{hi[2]}); at or below 1 at T = {', '.join(map(str, wins)) or 'none'}.")
        lines += ["", f"### {m} (peers)", "", summary, "",
                  "| T | floor ms | tmoe layer ms | tmoe experts ms | best peer (experts) | peer ms | ratio | "
                  "vLLM layer ms | tmoe layer % floor | tmoe experts % floor | read % floor |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for T in sorted(by[m]):
            c = by[m][T]
            floor = floor_ms(c)
            tl, te = c.get(("tmoe", "layer")), c.get(("tmoe", "experts"))
            bp = best_peer(c)
            vl = c.get(("vllm", "layer"))
            ratio = (te["ms"] / bp["ms"]) if (te and bp) else None
            lines.append(
                f"| {T} | {fmt(floor)} | {fmt(tl and tl['ms'])} | {fmt(te and te['ms'])} | "
                f"{bp['system'] if bp else '-'} | {fmt(bp and bp['ms'])} | {fmt(ratio, 2)} | {fmt(vl and vl['ms'])} | "
                f"{fmt(tl and tl['pct_floor'], 0)} | {fmt(te and te['pct_floor'], 0)} | {fmt(read_pct(c), 0)} |")
    lines += ["", end]
    return "\n".join(lines) + "\n"


# issue 5's targets
FLOOR_MAX_T, FLOOR_PCT = 512, 92
DECODE_PCT = {"experts": 85, "layer": 75}
PREFILL_MIN_T, PREFILL_SPEEDUP = 2048, 1.15
CEILING_T, CEILING_PCT = 8192, 75


def targets_section(data, d):
    """Where each target of issue 5 stands in this run: cells met, and every miss with its value."""
    from model_shapes import routed_models
    shapes = routed_models()
    meta = data["meta"]
    by = index(data["rows"])
    models = models_of(by)
    cells = [(m, T, by[m][T]) for m in models for T in sorted(by[m])]

    def ms(c, system, mode):
        r = c.get((system, mode))
        return r["ms"] if r and r.get("ms") else None

    def listing(items):
        return "; ".join(items) if items else "none"

    # every cell: experts against the best peer, layer against vLLM's layer
    behind, ahead = [], 0
    layer_behind, layer_ahead = [], 0
    for m, T, c in cells:
        bp, te = best_peer(c), ms(c, "tmoe", "experts")
        if bp and te:
            ratio = te / bp["ms"]
            if ratio <= 1.0:
                ahead += 1
            else:
                behind.append((ratio, f"{m} T = {T} {ratio:.3f} ({bp['system']})"))
        tl_, vl = ms(c, "tmoe", "layer"), ms(c, "vllm", "layer")
        if tl_ and vl:
            if tl_ <= vl:
                layer_ahead += 1
            else:
                layer_behind.append(f"{m} T = {T} {tl_ / vl:.3f}")
    behind.sort(reverse=True)
    peer_row = (f"experts: at or below 1.00 in {ahead} of {ahead + len(behind)} cells; behind in "
                f"{len(behind)} ({sum(r <= 1.02 for r, _ in behind)} of them by 2% or less): "
                f"{listing([text for _, text in behind])}. Layer from logits against vLLM's layer: ahead in "
                f"{layer_ahead} of {layer_ahead + len(layer_behind)}; behind: {listing(layer_behind)}")

    def pct(c, mode):
        r = c.get(("tmoe", mode))
        return r.get("pct_floor") if r else None

    # A measurement that failed in the run (peers.py records it under "not run") counts as a miss.
    def pct_text(c, mode):
        return "not measured" if pct(c, mode) is None else f"{pct(c, mode):.0f}"

    def read_text(c):
        return "" if read_pct(c) is None else f"; one plain read of its bytes {read_pct(c):.0f}"

    floor_misses, floor_met = [], 0
    for m, T, c in cells:
        if 1 < T <= FLOOR_MAX_T:
            low = [f"{mode} {pct_text(c, mode)}" for mode in ("experts", "layer")
                   if pct(c, mode) is None or pct(c, mode) < FLOOR_PCT]
            if low:
                floor_misses.append(f"{m} T = {T} ({', '.join(low)}{read_text(c)})")
            else:
                floor_met += 1
    floor_row = (f"met in {floor_met} of {floor_met + len(floor_misses)} cells with 1 < T <= {FLOOR_MAX_T} (T = 1: "
                 f"next row); missed: {listing(floor_misses)}")

    decode = []
    for m in models:
        c = by[m].get(1)
        if c:
            met = all(pct(c, mode) is not None and pct(c, mode) >= DECODE_PCT[mode] for mode in DECODE_PCT)
            decode.append(f"{m} {pct_text(c, 'experts')} / {pct_text(c, 'layer')} ({'met' if met else 'not'}"
                          f"{read_text(c)})")

    prefill = []
    for m, T, c in cells:
        if T >= PREFILL_MIN_T:
            if None in [ms(c, system, mode) for system in ("tmoe", "vllm") for mode in ("experts", "layer")]:
                prefill.append(f"{m} T = {T} not measured")
                continue
            x = [ms(c, "vllm", mode) / ms(c, "tmoe", mode) for mode in ("experts", "layer")]
            notes = ["layer met"] if x[1] >= PREFILL_SPEEDUP > x[0] else []
            if x[0] < PREFILL_SPEEDUP:
                # What the experts-only target asks of tritonmoe, against the floor: above 100%,
                # vLLM is too close to the floor for any system to be that much faster.
                need = c[("tmoe", "experts")]["floor_ms"] / (ms(c, "vllm", "experts") / PREFILL_SPEEDUP) * 100
                notes.append(f"experts at {PREFILL_SPEEDUP}x: {need:.0f}% of the floor, "
                             + ("out of reach" if need > 100 else f"tritonmoe at {pct(c, 'experts'):.0f}%"))
            mark = " met" if min(x) >= PREFILL_SPEEDUP else (f" ({'; '.join(notes)})" if notes else "")
            prefill.append(f"{m} T = {T} {x[0]:.2f}x / {x[1]:.2f}x{mark}")

    mm = meta["ceilings"]["mm_flops"]
    ceiling = []
    for m in models:
        c = by[m].get(CEILING_T)
        if c:
            s_ = shapes[m]
            flops = 2 * CEILING_T * s_["k"] * 3 * s_["H"] * s_["I"]
            pcts = ["not measured" if ms(c, "tmoe", mode) is None else
                    f"{flops / (ms(c, 'tmoe', mode) * 1e-3) / mm * 100:.0f}" for mode in ("experts", "layer")]
            ceiling.append(f"{m} {pcts[0]} / {pcts[1]}")

    rel = os.path.relpath(d, ROOT)
    begin, end = markers("targets", meta["card"], PEERS_SOURCE)
    lines = [begin, f"## Where the performance targets stand ({meta['card']}, {meta['date']})", "",
             f"From the peers run `{rel}/peers.json` (its section is at the end): tritonmoe experts-only from "
             "given ids and weights, and the full layer from router logits, beside the peers in one process on one "
             "card.", "",
             "| target | status |", "|---|---|",
             f"| at least as fast as the best peer in every cell | {peer_row} |",
             f"| 1 < T <= {FLOOR_MAX_T}: >= {FLOOR_PCT}% of the memory floor (experts and layer) | {floor_row} |",
             f"| T = 1: >= {DECODE_PCT['experts']}% of the floor experts-only, >= {DECODE_PCT['layer']}% layer "
             f"(experts / layer %) | {listing(decode)} |",
             f"| T >= {PREFILL_MIN_T}: >= {PREFILL_SPEEDUP}x tuned vLLM (experts / layer) | {listing(prefill)} |",
             f"| T = {CEILING_T}: >= {CEILING_PCT}% of the bf16 matmul ceiling ({mm / 1e12:.0f} TFLOP/s measured in "
             f"the run; experts / layer %) | {listing(ceiling)} |",
             "", end]
    return "\n".join(lines) + "\n"


def device_slug(card):
    """The card's name as configs/<device>.json spells it (src/gpu/tuning.cpp's
    device_slug): "NVIDIA H200" -> "nvidia-h200". Not peers.py's card_slug, the short
    results-folder prefix ("h200")."""
    return "-".join(re.findall(r"[a-z0-9]+", card.lower()))


def markers(block, card, source):
    """The begin and end lines of a generated block of docs/PERFORMANCE.md: one block of
    each kind per card, so a run on one card leaves the other cards' blocks alone."""
    slug = device_slug(card)
    return (f"<!-- {block}:begin {slug} (generated by {source}; edit there, not here) -->",
            f"<!-- {block}:end {slug} -->")


def update_docs(text, path):
    """Replaces, in the file at path, the block that text's first and last lines (its
    markers) delimit; appends text the first time."""
    lines = text.strip("\n").split("\n")
    begin, end = lines[0], lines[-1]
    with open(path) as f:
        doc = f.read()
    if begin in doc and end in doc:
        head = doc[:doc.index(begin)]
        tail = doc[doc.index(end) + len(end):].lstrip("\n")
        doc = head + text + ("\n" + tail if tail else "")
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    with open(path, "w") as f:
        f.write(doc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--docs", default=os.path.join(ROOT, "docs", "PERFORMANCE.md"))
    a = ap.parse_args()
    d = a.dir
    if d is None:
        found = sorted(glob.glob(os.path.join(ROOT, "bench", "results", "*", "peers.json")), key=os.path.getmtime)
        if not found:
            sys.exit("no bench/results/*/peers.json")
        d = os.path.dirname(found[-1])
    data = load(d)
    if not a.no_plots:
        plots(data, d)
    if not a.no_docs:
        update_docs(section(data, d), a.docs)
        update_docs(targets_section(data, d), a.docs)
    print(f"{d}: {len(data['rows'])} rows" + ("" if a.no_plots else "; plots written") +
          ("" if a.no_docs else f"; {os.path.relpath(a.docs, ROOT)} updated"))


if __name__ == "__main__":
    main()
