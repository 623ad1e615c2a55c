#!/usr/bin/env python3
"""DRAM bytes moved by one MoE layer call, read from Nsight Compute's hardware counters.

Systems, on the same inputs (bf16, weights as in bench/peers.py):
  tmoe_experts    tmoe.fused_moe from given ids/weights (gate_up_swiglu writes h [slots, I],
                  down writes y f32 [slots, H], combine sums over k)
  tmoe_layer      tmoe.moe_layer from router logits (route + align + the above)
  unfused         vLLM's fused_moe_kernel as an unfused pipeline (bench/peers.py's VllmPipe):
                  w13 GEMM writes [slots, 2I], a separate SiLU-and-mul kernel writes [slots, I],
                  w2 GEMM writes y bf16 [slots, H] (routing weight applied), torch sum over k.
                  Alignment precomputed, outside the measured region (as peers.py's "experts").
  unfused_layer   torch routing + torch alignment + the unfused pipeline (peers.py's vllm "layer").

Each system runs twice un-measured (compile, warm-up), then the L2 is flushed (a 256 MB buffer
written, then read, so the L2 holds only clean lines of it) and the call runs once between
cudaProfilerStart/Stop (and an NVTX range "bytes:<model>:<T>:<system>"), bracketed by two tiny
marker kernels whose grid encodes the region's index. ncu, started with --profile-from-start off,
profiles only those kernels; `report` sums dram__bytes_read/write.sum per region.

Modes:
  run     (under ncu) the measured calls; writes manifest.json (regions, analytic bytes) in --out
  report  CSV(s) from `ncu -i rep --csv --page details --print-units base` + manifest ->
          bytes.json and the bytes section of docs/PERFORMANCE.md

Usage (GPU machine, repository root; see bench/README.md for the exact command):
  ncu --profile-from-start off --clock-control none --cache-control none \
      --metrics dram__bytes_read.sum,dram__bytes_write.sum,gpu__time_duration.sum \
      -o $OUT/none python3 bench/bytes.py run --out $OUT
  ncu -i $OUT/none.ncu-rep --csv --page details --print-units base > $OUT/ncu-none.csv
Here:
  python3 bench/bytes.py report --csv none=DIR/ncu-none.csv [--csv all=...] --manifest DIR/manifest.json \
      --out bench/results/h100-2026-11-26
"""
import argparse
import csv
import io
import json
import math
import os
import re
import sys

MODELS = {
    "mixtral-8x7b": dict(E=8, H=4096, I=14336, k=2, routing="softmax_topk", renormalize=True),
    "qwen3-30b-a3b": dict(E=128, H=2048, I=768, k=8, routing="softmax_topk", renormalize=True),
}
TOKENS = "64,512,4096"
SYSTEMS = ["tmoe_experts", "tmoe_layer", "unfused", "unfused_layer"]
PEERS_JSON = os.path.join("bench", "results", "h100-2026-11-26", "peers.json")
TUNE_TOKENS = [1, 16, 128, 1024, 8192]


def analytic(m, T, active, system):
    """Compulsory DRAM bytes of one call: each byte of every buffer read or written once, nothing cached."""
    E, H, I, k = m["E"], m["H"], m["I"], m["k"]
    S = T * k
    b = 2  # bf16
    parts = dict(weights=active * 3 * H * I * b, x=T * H * b, out=T * H * b)
    if system.startswith("tmoe"):
        parts["h_SxI_w+r"] = 2 * S * I * b
        parts["y_f32_w+r"] = 2 * S * H * 4
    else:
        parts["h_Sx2I_w+r"] = 2 * S * 2 * I * b
        parts["a_SxI_w+r"] = 2 * S * I * b
        parts["y_bf16_w+r"] = 2 * S * H * b
    if system.endswith("layer"):
        parts["logits"] = T * E * 4
        parts["ids_weights_w+r"] = 2 * S * 8
    return sum(parts.values()), parts


# ---- run (on the GPU, under ncu) ----------------------------------------------------------------------------------

def vllm_cfgs(model, T):
    """The configs bench/peers.py chose on the H100 (its peers.json), for the tuning size nearest T."""
    tuned_at = min(TUNE_TOKENS, key=lambda u: (abs(math.log(u) - math.log(T)), u))
    with open(PEERS_JSON) as f:
        rows = json.load(f)["rows"]
    for r in rows:
        c = r.get("vllm_cfg")
        if r["model"] == model and r["system"] == "vllm" and c and c["tuned_at"] == tuned_at:
            return c["w13"], c["w2"], tuned_at
    raise SystemExit(f"no vLLM config for {model} tuned at {tuned_at} in {PEERS_JSON}")


def run(args):
    global triton, tl  # the marker kernel below resolves tl from the module's globals
    import torch
    import triton
    import triton.language as tl
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import peers  # VllmPipe, torch_route, vllm_align: the same unfused pipeline the timing harness runs
    import tmoe
    import tmoe.torch_ops  # noqa: F401

    @triton.jit
    def _bytes_marker(p):
        tl.store(p + tl.program_id(0), tl.program_id(1))

    DEV = "cuda"
    mark_buf = torch.zeros(64, dtype=torch.int32, device=DEV)
    flush = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device=DEV)
    flush_sum = torch.empty((), dtype=torch.int64, device=DEV)

    def flush_l2():
        flush.fill_(1)  # write 256 MB: evicts everything
        flush_sum.copy_(flush.view(torch.int32).sum())  # read it back: the dirty lines go out here, not later
        torch.cuda.synchronize()

    models = [s for s in os.environ.get("MODELS", ",".join(MODELS)).split(",") if s]
    tokens = [int(t) for t in os.environ.get("TOKENS", TOKENS).split(",") if t]
    systems = [s for s in os.environ.get("SYSTEMS", ",".join(SYSTEMS)).split(",") if s]
    card = torch.cuda.get_device_name()
    regions = []
    os.makedirs(args.out, exist_ok=True)

    def measure(model, T, system, fn, active, m):
        try:
            fn(); fn(); torch.cuda.synchronize()
        except Exception as e:  # recorded as not run; the other systems go on
            print(f"FAILED {model} T={T} {system}: {type(e).__name__}: {e}"[:400], flush=True)
            return
        idx = len(regions)
        flush_l2()
        torch.cuda.nvtx.range_push(f"bytes:{model}:{T}:{system}")
        torch.cuda.profiler.start()
        _bytes_marker[(idx + 1, 1)](mark_buf)
        fn()
        _bytes_marker[(idx + 1, 2)](mark_buf)
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
        torch.cuda.nvtx.range_pop()
        tot, parts = analytic(m, T, active, system)
        regions.append(dict(idx=idx, card=card, model=model, T=T, system=system, active=active,
                            analytic_bytes=tot, analytic_parts=parts))
        print(f"measured {idx}: {model} T={T} {system} (analytic {tot / 1e6:.1f} MB)", flush=True)

    for name in models:
        m = MODELS[name]
        E, H, I, k = m["E"], m["H"], m["I"], m["k"]
        gen = torch.Generator(device=DEV).manual_seed(1)
        w13 = torch.randn(E, 2 * I, H, device=DEV, dtype=torch.bfloat16, generator=gen) / math.sqrt(H)
        w2 = torch.randn(E, H, I, device=DEV, dtype=torch.bfloat16, generator=gen) / math.sqrt(I)
        rk = dict(top_k=k, routing=m["routing"], renormalize=m.get("renormalize", False))
        for T in tokens:
            x = torch.randn(T, H, device=DEV, dtype=torch.bfloat16, generator=gen)
            logits = torch.randn(T, E, device=DEV, dtype=torch.float32, generator=gen)
            tw, ids = peers.torch_route(logits, m, None)
            active = ids.unique().numel()
            out = torch.empty_like(x)
            if "tmoe_experts" in systems:
                measure(name, T, "tmoe_experts", lambda: tmoe.fused_moe(x, w13, w2, tw, ids, out=out,
                                                                        trust_routing_values=True), active, m)
            if "tmoe_layer" in systems:
                measure(name, T, "tmoe_layer", lambda: tmoe.moe_layer(x, logits, w13, w2, out=out, **rk), active, m)
            c1, c2, tuned_at = vllm_cfgs(name, T)
            pipe = peers.VllmPipe(m, T, w13, w2, c1, c2)
            if "unfused" in systems:
                al1, al2 = pipe.aligned(ids)
                measure(name, T, "unfused", lambda: pipe.gemms(x, tw, al1, al2), active, m)
            if "unfused_layer" in systems:
                def layer():
                    tw2, ids2 = peers.torch_route(logits, m, None)
                    b1, b2 = pipe.aligned(ids2)
                    return pipe.gemms(x, tw2, b1, b2)
                measure(name, T, "unfused_layer", layer, active, m)
            for r in regions:
                if r["model"] == name and r["T"] == T and r["system"].startswith("unfused"):
                    r["vllm_cfg"] = dict(w13=c1, w2=c2, tuned_at=tuned_at)
            del pipe
            torch.cuda.empty_cache()
        del w13, w2
        torch.cuda.empty_cache()
        with open(os.path.join(args.out, "manifest.json"), "w") as f:
            json.dump(dict(card=card, torch=torch.__version__, triton=triton.__version__, regions=regions), f, indent=1)
    print(f"wrote {os.path.join(args.out, 'manifest.json')} ({len(regions)} regions)")


# ---- report -------------------------------------------------------------------------------------------------------

def parse_ncu_csv(text):
    """Kernels in launch order: [{id, name, grid, metrics{name: float}}]."""
    lines = [ln for ln in text.splitlines() if ln.startswith('"')]
    kernels = {}
    for r in csv.DictReader(io.StringIO("\n".join(lines))):
        kid = int(r["ID"])
        k = kernels.setdefault(kid, dict(id=kid, name=r["Kernel Name"], grid=r["Grid Size"], metrics={}))
        unit = r.get("Metric Unit", "")
        v = float(r["Metric Value"].replace(",", ""))
        scale = {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "nsecond": 1, "usecond": 1e3,
                 "msecond": 1e6}.get(unit, 1)
        k["metrics"][r["Metric Name"]] = v * scale
    return [kernels[i] for i in sorted(kernels)]


def split_regions(kernels):
    """{region idx: [kernels]} from the marker pairs (grid (idx+1, 1, 1) opens, (idx+1, 2, 1) closes)."""
    out, cur, idx = {}, None, None
    for k in kernels:
        if "_bytes_marker" in k["name"]:
            g = [int(v) for v in re.findall(r"\d+", k["grid"])]
            if g[1] == 1:
                idx, cur = g[0] - 1, []
            else:
                if idx is not None and g[0] - 1 == idx:
                    out[idx] = cur
                idx, cur = None, None
        elif cur is not None:
            cur.append(k)
    return out


def report(args):
    with open(args.manifest) as f:
        man = json.load(f)
    rows = []
    for spec in args.csv:
        mode, path = spec.split("=", 1)
        regions = {r["idx"]: r for r in man["regions"]}
        if "@" in path:  # MODE=csv@manifest: a run with its own manifest
            path, mpath = path.split("@", 1)
            with open(mpath) as f:
                regions = {r["idx"]: r for r in json.load(f)["regions"]}
        with open(path) as f:
            by = split_regions(parse_ncu_csv(f.read()))
        for idx, ks in sorted(by.items()):
            r = regions[idx]
            rd = sum(k["metrics"].get("dram__bytes_read.sum", 0) for k in ks)
            wr = sum(k["metrics"].get("dram__bytes_write.sum", 0) for k in ks)
            ns = sum(k["metrics"].get("gpu__time_duration.sum", 0) for k in ks)
            rows.append(dict(card=r["card"], model=r["model"], T=r["T"], system=r["system"],
                             dram_read_bytes=int(rd), dram_write_bytes=int(wr), total=int(rd + wr),
                             analytic_bytes=int(r["analytic_bytes"]), cache_control=mode, active=r["active"],
                             kernels=len(ks), kernel_time_us=round(ns / 1e3, 1),
                             analytic_parts=r["analytic_parts"],
                             per_kernel=[dict(name=k["name"][:60], read=int(k["metrics"].get("dram__bytes_read.sum", 0)),
                                              write=int(k["metrics"].get("dram__bytes_write.sum", 0))) for k in ks],
                             **({"vllm_cfg": r["vllm_cfg"]} if "vllm_cfg" in r else {})))
    os.makedirs(args.out, exist_ok=True)
    meta = dict(card=man["card"], torch=man.get("torch"), triton=man.get("triton"),
                notes=["dram bytes: sum over the kernels of one call of ncu's dram__bytes_read.sum and "
                       "dram__bytes_write.sum; cache_control 'none': L2 flushed by the script before the call only "
                       "(kernels of the call share the L2); 'all': ncu also flushes the L2 before every kernel",
                       "analytic_bytes: every buffer read/written once from DRAM: active experts' weights (3*H*I*2 "
                       "each), x, out, tmoe h [S,I] w+r and y f32 [S,H] w+r; unfused h [S,2I] w+r, a [S,I] w+r, "
                       "y bf16 [S,H] w+r; *_layer adds logits and ids/weights",
                       "writes still in L2 when the call ends are not counted (no kernel of the call evicts them)"])
    with open(os.path.join(args.out, "bytes.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    section = doc_section(rows, man["card"])
    print(section)
    if args.doc:
        with open(args.doc) as f:
            doc = f.read()
        b, e = "<!-- bytes:begin", "<!-- bytes:end -->"
        if b in doc:
            i, j = doc.index(b), doc.index(e) + len(e)
            doc = doc[:i] + section + doc[j:]
        else:
            doc = doc.rstrip("\n") + "\n\n" + section + "\n"
        with open(args.doc, "w") as f:
            f.write(doc)


def fewer(mine, theirs):
    d = 100 * (1 - mine / theirs)
    return f"{d:.1f}% fewer" if d >= 0 else f"{-d:.1f}% more"


def measured_verdict(verdict):
    """What the counters say of the 35% claim, from the rows of this run."""
    holds = [f"{m} T={T}" for m, T, meas, _, _ in verdict if meas >= 35]
    small = [abs(meas) for _, T, meas, _, _ in verdict if T <= 512]
    large = "; ".join(f"{m} T={T}: tmoe moves {fewer(100 - meas, 100)}" for m, T, meas, _, _ in verdict if T > 512)
    text = ("Measured, the claim holds at " + ", ".join(holds) + ". " if holds
            else "Measured, the claim does not hold at any point here. ")
    if small:
        text += f"Up to T=512 tmoe and the unfused pipeline are within {max(small):.1f}% of each other. "
    if large:
        text += f"Beyond: {large} than the unfused pipeline (per-kernel bytes in bytes.json)."
    return text


def doc_section(rows, card):
    pick = {(r["model"], r["T"], r["system"], r["cache_control"]): r for r in rows}
    modes = sorted({r["cache_control"] for r in rows}, key=lambda m: m != "none")
    L = ["<!-- bytes:begin (generated by bench/bytes.py report from bench/results/h100-2026-11-26/bytes.json) -->",
         "", f"### DRAM bytes per layer call ({card}, bf16, Nsight Compute counters)", "",
         "`dram__bytes_read.sum + dram__bytes_write.sum` summed over every kernel of one call, L2 flushed "
         "(256 MB written and read) before the call; `ncu --cache-control none` unless a column says `all` (ncu "
         "flushes the L2 before each kernel too, so nothing passes between kernels in L2). "
         "Analytic = each buffer once from DRAM (active experts' weights, x, out, the intermediate(s) and y "
         "written + read). unfused = vLLM's fused_moe_kernel w13 GEMM -> [S,2I], SiLU-and-mul kernel -> [S,I], "
         "w2 GEMM -> y bf16, torch sum over k (alignment outside the call); tmoe = gate_up_swiglu -> h [S,I], "
         "down -> y f32, combine. MB = 1e6 bytes.", ""]
    hdr = "| model | T | system | read MB | write MB | total MB | analytic MB | total / analytic |"
    extra = [m for m in modes if m != "none"]
    for m in extra:
        hdr += f" total MB (`{m}`) |"
    hdr += " vs unfused |"
    L += [hdr, "|" + "---|" * (hdr.count("|") - 1)]
    systems = ["tmoe_experts", "unfused", "tmoe_layer", "unfused_layer"]
    keys = sorted({(r["model"], r["T"]) for r in rows}, key=lambda k: (list(MODELS).index(k[0]), k[1]))
    verdict = []
    for model, T in keys:
        base = pick.get((model, T, "unfused", "none"))
        for s in systems:
            r = pick.get((model, T, s, "none"))
            if r is None:
                continue
            cells = [model, str(T), s, f"{r['dram_read_bytes'] / 1e6:.1f}", f"{r['dram_write_bytes'] / 1e6:.1f}",
                     f"{r['total'] / 1e6:.1f}", f"{r['analytic_bytes'] / 1e6:.1f}",
                     f"{r['total'] / r['analytic_bytes']:.2f}"]
            for m in extra:
                q = pick.get((model, T, s, m))
                cells.append(f"{q['total'] / 1e6:.1f}" if q else "-")
            vs = "-"
            if s == "tmoe_experts" and base:
                vs = fewer(r["total"], base["total"])
                an = 100 * (1 - r["analytic_bytes"] / base["analytic_bytes"])
                gu = 100 * base["analytic_parts"]["h_Sx2I_w+r"] / base["analytic_bytes"]
                verdict.append((model, T, 100 * (1 - r["total"] / base["total"]), an, gu))
            elif s == "tmoe_layer":
                bl = pick.get((model, T, "unfused_layer", "none"))
                if bl:
                    vs = fewer(r["total"], bl["total"]) + " (vs unfused_layer)"
            L.append("| " + " | ".join(cells) + " | " + vs + " |")
    L.append("")
    if verdict:
        parts = "; ".join(f"{m} T={T}: {meas:+.1f}% measured, {an:+.1f}% analytic, gate/up share {gu:.1f}%"
                          for m, T, meas, an, gu in verdict)
        best = max(verdict, key=lambda v: v[4])
        L.append("**The 35% claim.** Traffic removed by tmoe's experts against the unfused pipeline "
                 "(1 - tmoe/unfused; negative = tmoe moves more), and the share of the unfused pipeline's analytic "
                 f"bytes that is the [S,2I] intermediate (written + read) the gate/up fusion removes: {parts}. "
                 f"Even analytically that share peaks at {best[4]:.1f}% ({best[0]} T={best[1]}) here: the active "
                 "experts' weights dominate up to a few thousand tokens. The share passes 35% only for Mixtral "
                 "beyond about 11k tokens (it tends to 8I/(12I+4H+4H/k) = 58% per slot); for Qwen3-30B-A3B it "
                 "never reaches 35% (limit 8I/(12I+4H+4H/k) = 33%), and tmoe's f32 y (4*S*H more bytes than a "
                 "bf16 y) cancels it. " + measured_verdict(verdict))
        L.append("")
    L.append("<!-- bytes:end -->")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    p = sub.add_parser("report")
    p.add_argument("--csv", action="append", required=True, help="MODE=path of an ncu --csv export (MODE=path@manifest for a run with its own manifest)")
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", default=os.path.join("bench", "results", "h100-2026-11-26"))
    p.add_argument("--doc", default=None, help="docs/PERFORMANCE.md: replace the bytes:begin/end section there")
    args = ap.parse_args()
    run(args) if args.mode == "run" else report(args)


if __name__ == "__main__":
    main()
