#!/usr/bin/env python3
"""The `tmoe bench` section of docs/PERFORMANCE.md, from the bench-<model>.json files
that scripts/gpu-check.sh leaves in a results folder.

    python3 bench/bench_tables.py bench/results/<card>-<date> [a later folder ...]

Each model's table comes from the last folder given that has its bench-<model>.json
(a later run of some models over an earlier one of all). Replaces the bench block of
the last folder's card (appended the first time).
"""
import argparse
import json
import os

from plot import MODEL_ORDER, ROOT, markers, update_docs


def section(dirs):
    d = dirs[-1]
    rel = os.path.relpath(d, ROOT)
    sources = {m: [x for x in dirs if os.path.exists(os.path.join(x, f"bench-{m}.json"))] for m in MODEL_ORDER}
    sources = {m: found[-1] for m, found in sources.items() if found}
    runs = [json.load(open(os.path.join(sources[m], f"bench-{m}.json"))) for m in sources]
    card = open(os.path.join(d, "card.txt")).read().strip() if os.path.exists(os.path.join(d, "card.txt")) else runs[0]["device"]
    tokens = ",".join(str(r["T"]) for r in runs[0]["rows"])
    begin, end = markers("bench", card.split(",")[0], "bench/bench_tables.py from bench/results/*/bench-*.json")
    lines = [begin, f"## GPU: {card} ({os.path.basename(os.path.normpath(d))}), `tmoe bench`", "",
             "Commands (in `scripts/gpu-peers.sh`, or `scripts/gpu-check.sh` with `MODELS`; binaries from "
             "`scripts/gpu-pack.sh`): the table, from the same "
             "build (with `TUNE=1` in the same call, read through `TMOE_TUNING_TABLE`; or in an earlier call and "
             "committed to `configs/<device>.json`, which the library embeds), then the bench:", "",
             "    tmoe tune --tokens 1,2,4,8,16,32,64,128,256,512,1024,2048,4096,8192 --out tuned-table.json",
             f"    tmoe bench --backend gpu --model MODEL --tokens {tokens} --check-rows 8",
             "",
             (f"The run's table is `{rel}/tuned-table.json` and its sweep (winner beside the heuristic per T) "
              f"`{rel}/tune.log`; " if os.path.exists(os.path.join(d, "tuned-table.json")) else
              "The run used the committed table (its sweeps are in the tune.log of the runs that tuned it); ") +
             "`configs/<device>.json` holds the newest table. Timed: the full layer from random router logits (f32), bf16, median device time "
             "of CUDA-graph replays with the cache flushed before each by reading 512 MB (runs before 2026-11-27: by a memset, whose dirty lines the timed replay wrote back, performance-log.md #23). \"launches\": kernel launches per layer "
             "(`tmoe_moe_plan`); \"plan\": path and tiles, \"pdl\" where the kernels launch as programmatic dependents (performance-log.md #37). GB/s counts the active experts' weights once plus x, out "
             "and the logits; TFLOP/s counts 2·T·k·3·H·I (+ the shared expert). \"rel L2 err\": against the float64 "
             f"reference on 8 sampled token rows (bound 1e-2). Raw rows: `{rel}/`.", ""]
    for run in runs:
        source = os.path.basename(os.path.normpath(sources[run["model"]]))
        lines += [f"### {run['model']}" + (f" ({source})" if source != os.path.basename(os.path.normpath(d)) else ""),
                  "",
                  "| T | median ms | GB/s | TFLOP/s | active experts | launches | plan | rel L2 err |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in run["rows"]:
            plan = r["plan"].split(":")[0]
            lines.append(f"| {r['T']} | {r['ms']:.4f} | {r['GBps']:.0f} | {r['GFLOPps'] / 1000:.1f} | "
                         f"{r['active_experts']} | {r['launches']} | {plan} | {r['rel_err']:.2e} |")
        lines.append("")
    lines.append(end)
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--docs", default=os.path.join(ROOT, "docs", "PERFORMANCE.md"))
    a = ap.parse_args()
    update_docs(section(a.dirs), a.docs)
    print(f"{' '.join(a.dirs)}: {os.path.relpath(a.docs, ROOT)} updated")


if __name__ == "__main__":
    main()
