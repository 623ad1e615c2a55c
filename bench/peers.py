#!/usr/bin/env python3
"""Side-by-side MoE peers on one GPU: one process, one card, the same inputs.

Systems (env SYSTEMS restricts, comma separated):
  tmoe          tritonmoe through its Python binding: the whole layer from router
                logits (tmoe.moe_layer, the model's routing) and experts only
                (tmoe.fused_moe from given ids/weights, trust_routing_values=True).
  vllm          vLLM's Triton fused_moe_kernel (bf16 path), loaded at run time from
                $VLLM_KERNEL (default .peers/vllm_fused_moe_kernel.py; never committed),
                each of its two GEMMs given the best launch config of a grid timed here.
                experts: given ids/weights, alignment precomputed and NOT timed (as in
                shared/bench/peers_baseline.py); layer: torch routing + torch alignment +
                the experts, timed as one pipeline.
  grouped_mm    torch._grouped_mm with sort/gather/scatter in PyTorch (experts).
  eager         a PyTorch loop over experts (experts).
  megablocks    MegaBlocks dMoE experts (ParallelDroplessMLP, GLU + SiLU, grouped impl),
                when importable (bench/setup_peers.sh builds it from sdists in .peers/src).
  triton_kernels  OpenAI's triton_kernels matmul_ogs, when importable.
  read          not a peer: one plain read of each memory-bound cell's floor bytes
                (the ceilings' read kernel over a buffer of that size, timed as the
                systems are), what one streaming kernel takes for those bytes on the
                card: below it no layer of two or more kernels can go.

Timing: median of device events around each call, the L2 flushed before each call
by reading 512 MB (a memset would leave dirty lines whose write-back the timed call
pays: docs/performance-log.md #23);
CUDA-graph replays where the system can be captured (tmoe, vllm experts), plain
stream launches otherwise (the row's "timing" says which). Ceilings (read-only
stream, bf16 8192^3 matmul) are measured in the same run; floor = max(bytes / read
bandwidth, flops / matmul rate) with bytes = active experts * 3*H*I*2 + x in and out.
Every output is checked on sampled rows against a float64 reference.

Usage (GPU machine, repository root):
  TMOE_LIBRARY=.gpu-build/libtmoe.so PYTHONPATH=python python3 bench/peers.py [--out DIR]
Env: MODELS, TOKENS, SYSTEMS, TUNE_TOKENS, CHECK_ROWS, VLLM_KERNEL, PEERS_JOBS.
"""
import argparse
import concurrent.futures as cf
import datetime
import importlib.util
import json
import math
import multiprocessing as mp
import os
import re
import subprocess
import time

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from model_shapes import routed_models

DEV = "cuda"
MODELS = routed_models()
ALL_TOKENS = "1,4,16,64,128,256,512,1024,2048,8192"
SYSTEMS = ["tmoe", "vllm", "grouped_mm", "eager", "megablocks", "triton_kernels", "read"]
# Why OpenAI's triton_kernels did not run (recorded in peers.json when it cannot be imported).
TRITON_KERNELS_WHY = (
    "OpenAI's triton_kernels ships only inside the triton repository (python/triton_kernels, installed from git); "
    "PyPI has no build of it (the PyPI 'triton-kernels' 0.1.0 is an unrelated 11 kB package), the GPU machine has "
    "no network, and the triton repository snapshot (842 MB) exceeds what this workspace can fetch (500 MB); "
    "no consistent v3.6.0 copy of its ~40 files could be assembled from the code index")


def env_list(name, default):
    v = os.environ.get(name, "")
    return [s for s in (v or default).split(",") if s]


def log(*a):
    print(*a, flush=True)


# ---- timing -----------------------------------------------------------------------------------------------------

_flush = None


def flush_cache():
    """Evicts the L2 (and MI300's 256 MB last-level cache) by reading a larger buffer: the
    lines left are clean, as after a real model's previous layer, so the timed call pays
    no write-back (tmoe bench does the same with kernels/cache.py)."""
    global _flush
    if _flush is None:
        _flush = torch.zeros(128 * 2**20, dtype=torch.int32, device=DEV)
    _flush.sum()


def replay_ms(fn, reps, copies=1, flush=True):
    """Median ms of a CUDA-graph replay of `copies` back-to-back calls of fn over reps
    replays, one per event pair, L2 flushed before each unless flush is false (for
    the GEMM and align scripts beside this one)."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(copies):
            fn()
    times = []
    for _ in range(reps):
        if flush:
            flush_cache()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[reps // 2]


def measure(fn, graph, budget_ms=120.0, max_reps=200, min_reps=5):
    """Median ms of fn (or of a CUDA-graph replay of it), one call per event pair, L2 flushed before each."""
    run, how, g = fn, "stream", None
    if graph:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn(); fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        run, how = g.replay, "graph"
    run(); torch.cuda.synchronize()
    st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    st.record()
    for _ in range(3):
        run()
    en.record(); torch.cuda.synchronize()
    est = max(st.elapsed_time(en) / 3, 1e-3)
    n = int(min(max_reps, max(min_reps, budget_ms / est)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        flush_cache()
        starts[i].record(); run(); ends[i].record()
    torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    del g
    return times[len(times) // 2], how


@triton.jit
def _read_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(ITERS):
        offs = (pid * ITERS + i) * BLOCK + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    tl.store(out_ptr + pid, tl.sum(acc))


READ_BLOCK, READ_ITERS = 4096, 8


def ceilings():
    n = 1024 ** 3  # 4 GiB of float32
    x = torch.randn(n, dtype=torch.float32, device=DEV)
    grid = triton.cdiv(n, READ_BLOCK * READ_ITERS)
    part = torch.empty(grid, dtype=torch.float32, device=DEV)
    t_tri = triton.testing.do_bench(lambda: _read_kernel[(grid,)](x, part, n, BLOCK=READ_BLOCK, ITERS=READ_ITERS),
                                    warmup=20, rep=200, return_mode="median")
    t_sum = triton.testing.do_bench(lambda: x.sum(), warmup=20, rep=200, return_mode="median")
    read_bw = 4 * n / (min(t_tri, t_sum) * 1e-3)
    del x, part
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device=DEV)
    b = torch.randn_like(a)
    t = triton.testing.do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="median")
    mm = 2 * 8192 ** 3 / (t * 1e-3)
    del a, b
    torch.cuda.empty_cache()
    return dict(read_Bps=read_bw, read_Bps_triton=4 * n / (t_tri * 1e-3), read_Bps_torch_sum=4 * n / (t_sum * 1e-3),
                mm_flops=mm)


# ---- routing and reference ---------------------------------------------------------------------------------------

def torch_route(logits, m, bias):
    """The model's routing in PyTorch ops (what vLLM does for these modes): float32 weights, int32 ids."""
    k = m["k"]
    lg = logits.float()
    if m["routing"] == "softmax_topk":
        w, ids = torch.topk(torch.softmax(lg, -1), k, dim=-1)
        if m.get("renormalize"):
            w = w / w.sum(-1, keepdim=True)
    elif m["routing"] == "topk_softmax":
        v, ids = torch.topk(lg, k, dim=-1)
        w = torch.softmax(v, -1)
    else:
        s = torch.sigmoid(lg)
        b = s + bias
        T, E = b.shape
        G, TG = m["n_group"], m["topk_group"]
        gs = b.view(T, G, -1).topk(2, dim=-1).values.sum(-1)
        gidx = gs.topk(TG, dim=-1).indices
        gmask = torch.zeros_like(gs).scatter_(1, gidx, 1.0)
        cand = b.masked_fill(gmask.repeat_interleave(E // G, dim=1) == 0, float("-inf"))
        ids = cand.topk(k, dim=-1).indices
        w = s.gather(1, ids)
        if m.get("renormalize"):
            w = w / w.sum(-1, keepdim=True)
        w = w * m.get("routed_scaling_factor", 1.0)
    return w.float().contiguous(), ids.to(torch.int32).contiguous()


def reference_rows(x, w13, w2, tw, ids, rows):
    """float64 outputs of the sampled rows."""
    I = w2.shape[2]
    out = torch.zeros(len(rows), x.shape[1], dtype=torch.float64, device=DEV)
    for n, r in enumerate(rows):
        xr = x[r].double()
        for j in range(ids.shape[1]):
            e = int(ids[r, j])
            h = w13[e].double() @ xr
            a = F.silu(h[:I]) * h[I:]
            out[n] += float(tw[r, j]) * (w2[e].double() @ a)
    return out


def rel_err(out, ref, rows):
    got = out.reshape(-1, out.shape[-1])[rows].double()
    return ((got - ref).norm() / ref.norm()).item()


# ---- vLLM's fused_moe_kernel -------------------------------------------------------------------------------------

_vk = None


def vllm_module():
    global _vk
    if _vk is None:
        path = os.environ.get("VLLM_KERNEL", os.path.join(".peers", "vllm_fused_moe_kernel.py"))
        spec = importlib.util.spec_from_file_location("vllm_fused_moe_kernel", path)
        _vk = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_vk)
    return _vk


def vllm_configs():
    """A pruned grid (the baseline's 69 cut to the shapes that won there and their neighbours)."""
    out = []
    for bm, bn, bk, gm, nw, ns in [
        (16, 64, 128, 1, 4, 4), (16, 128, 128, 1, 4, 3), (16, 64, 256, 1, 4, 3), (16, 128, 64, 1, 4, 4),
        (32, 64, 128, 1, 4, 4), (32, 128, 128, 1, 4, 3), (32, 64, 256, 1, 4, 3), (32, 128, 64, 16, 8, 3),
        (64, 64, 128, 1, 4, 4), (64, 128, 64, 16, 8, 3), (64, 128, 128, 16, 8, 3), (64, 256, 64, 16, 8, 3),
        (64, 64, 256, 1, 4, 3),
        (128, 128, 64, 16, 8, 3), (128, 128, 128, 16, 8, 3), (128, 256, 64, 16, 8, 3), (128, 64, 128, 1, 4, 4),
        (128, 128, 64, 1, 4, 4),
    ]:
        out.append(dict(BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=bk, GROUP_SIZE_M=gm, num_warps=nw,
                        num_stages=ns))
    return out


def vllm_launch(stage, m, T, cfg, tensors=None):
    """(grid, kwargs) of one fused_moe_kernel launch; with tensors=None, dtype stand-ins for warmup."""
    E, H, I, k = m["E"], m["H"], m["I"], m["k"]
    bm = cfg["BLOCK_SIZE_M"]
    cap = T * k + E * (bm - 1)
    if stage == "w13":
        M, top_k, N, K, mul = T, k, 2 * I, H, False
    else:
        M, top_k, N, K, mul = T * k, 1, H, I, True
    EM = cap if M >= bm else min(cap, M * top_k * bm)
    if tensors is None:
        from triton.runtime.jit import MockTensor
        A = B = C = MockTensor(torch.bfloat16)
        tw = MockTensor(torch.float32)
        sids = eids = tot = MockTensor(torch.int32)
    else:
        A, B, C, tw, (sids, eids, tot) = tensors
    kw = dict(a_ptr=A, b_ptr=B, c_ptr=C, a_scale_ptr=None, b_scale_ptr=None, topk_weights_ptr=tw,
              sorted_token_ids_ptr=sids, expert_ids_ptr=eids, num_tokens_post_padded_ptr=tot,
              N=N, K=K, EM=EM, num_valid_tokens=M * top_k,
              stride_am=K, stride_ak=1, stride_be=N * K, stride_bk=1, stride_bn=K, stride_cm=N, stride_cn=1,
              stride_asm=0, stride_ask=0, stride_bse=0, stride_bsk=0, stride_bsn=0, group_n=0, group_k=0,
              MUL_ROUTED_WEIGHT=mul, top_k=top_k, compute_type=tl.bfloat16, use_fp8_w8a8=False,
              use_int8_w8a8=False, use_int8_w8a16=False, per_channel_quant=False, **cfg)
    names = set(vllm_module().fused_moe_kernel.arg_names) | {"num_warps", "num_stages"}
    kw = {a: v for a, v in kw.items() if a in names}
    grid = (triton.cdiv(EM, bm) * triton.cdiv(N, cfg["BLOCK_SIZE_N"]),)
    return grid, kw


def _warm_jobs(jobs):
    """Pool worker: compile vLLM kernel variants into the Triton disk cache."""
    done = 0
    for stage, m, T, cfg in jobs:
        try:
            grid, kw = vllm_launch(stage, m, T, cfg)
            vllm_module().fused_moe_kernel.warmup(grid=grid, **kw)
            done += 1
        except Exception:
            pass
    return done


def precompile(jobs, workers):
    ctx = mp.get_context("spawn")
    ex = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    chunks = [jobs[i::workers * 3] for i in range(workers * 3)]
    futs = [ex.submit(_warm_jobs, c) for c in chunks if c]
    return ex, futs


def vllm_align(ids, E, bm):
    # vLLM's moe_align_block_size semantics in torch ops (vLLM uses one CUDA kernel), as in the baseline.
    flat = ids.view(-1)
    n = flat.numel()
    # counted with scatter_add_ where the baseline has bincount (same counts, no host sync, so the whole
    # layer can be captured in a CUDA graph like tmoe's)
    counts = torch.zeros(E, dtype=torch.int64, device=DEV).scatter_add_(0, flat.long(), torch.ones_like(flat, dtype=torch.int64))
    padded = (counts + bm - 1) // bm * bm
    cap = n + E * (bm - 1)
    sorted_ids = torch.full((cap,), n, dtype=torch.int32, device=DEV)
    order = flat.argsort(stable=True)
    starts = torch.cumsum(padded, 0) - padded
    cstarts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n, device=DEV) - cstarts[flat[order]]
    sorted_ids[starts[flat[order]] + rank] = order.to(torch.int32)
    nblocks = cap // bm
    blk = torch.arange(nblocks, device=DEV) * bm
    expert_ids = torch.searchsorted(torch.cumsum(padded, 0), blk, right=True).clamp(max=E - 1).to(torch.int32)
    total = padded.sum().view(1).to(torch.int32)
    return sorted_ids, expert_ids, total


@triton.jit
def silu_mul_kernel(h_ptr, o_ptr, I, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    msk = cols < I
    g = tl.load(h_ptr + row * 2 * I + cols, mask=msk).to(tl.float32)
    u = tl.load(h_ptr + row * 2 * I + I + cols, mask=msk).to(tl.float32)
    tl.store(o_ptr + row * I + cols, (g * tl.sigmoid(g) * u).to(o_ptr.dtype.element_ty), mask=msk)


class VllmPipe:
    def __init__(self, m, T, w13, w2, c1, c2):
        self.m, self.T, self.w13, self.w2, self.c1, self.c2 = m, T, w13, w2, c1, c2
        k, I, H = m["k"], m["I"], m["H"]
        self.h = torch.empty(T * k, 2 * I, dtype=torch.bfloat16, device=DEV)
        self.a = torch.empty(T * k, I, dtype=torch.bfloat16, device=DEV)
        self.y = torch.empty(T, k, H, dtype=torch.bfloat16, device=DEV)

    def gemms(self, x, tw, al1, al2):
        kern = vllm_module().fused_moe_kernel
        grid, kw = vllm_launch("w13", self.m, self.T, self.c1, (x, self.w13, self.h, tw, al1))
        kern[grid](**kw)
        I = self.m["I"]
        silu_mul_kernel[(self.T * self.m["k"], triton.cdiv(I, 1024))](self.h, self.a, I, BLOCK=1024)
        grid, kw = vllm_launch("w2", self.m, self.T, self.c2, (self.a, self.w2, self.y, tw.view(-1), al2))
        kern[grid](**kw)
        return self.y.sum(1)

    def aligned(self, ids):
        E = self.m["E"]
        al1 = vllm_align(ids, E, self.c1["BLOCK_SIZE_M"])
        al2 = al1 if self.c2["BLOCK_SIZE_M"] == self.c1["BLOCK_SIZE_M"] else vllm_align(ids, E, self.c2["BLOCK_SIZE_M"])
        return al1, al2


def vllm_tune(m, T, x, w13, w2, tw, ids):
    """Best config of the grid for each GEMM at this T (each timed alone, as in the baseline)."""
    k, I, H, E = m["k"], m["I"], m["H"], m["E"]
    kern = vllm_module().fused_moe_kernel
    h = torch.empty(T * k, 2 * I, dtype=torch.bfloat16, device=DEV)
    a = torch.randn(T * k, I, dtype=torch.bfloat16, device=DEV)
    y = torch.empty(T * k, H, dtype=torch.bfloat16, device=DEV)
    best = {}
    als = {}
    for stage in ("w13", "w2"):
        res = []
        for cfg in vllm_configs():
            bm = cfg["BLOCK_SIZE_M"]
            if bm not in als:
                als[bm] = vllm_align(ids, E, bm)
            ts = (x, w13, h, tw, als[bm]) if stage == "w13" else (a, w2, y, tw.view(-1), als[bm])
            try:
                grid, kw = vllm_launch(stage, m, T, cfg, ts)
                f = lambda: kern[grid](**kw)
                f(); torch.cuda.synchronize()
                res.append((triton.testing.do_bench(f, warmup=5, rep=20, return_mode="median"), cfg))
            except Exception as e:  # out of shared memory etc.
                continue
        best[stage] = min(res, key=lambda r: r[0])[1]
    return best["w13"], best["w2"]


# ---- PyTorch peers (as in shared/bench/peers_baseline.py) ---------------------------------------------------------

def eager_moe(x, w13, w2, tw, ids):
    T, H = x.shape
    I = w2.shape[2]
    out = torch.zeros(T, H, dtype=x.dtype, device=DEV)
    flat = ids.view(-1)
    order = flat.argsort()
    counts = torch.bincount(flat, minlength=w13.shape[0]).tolist()
    tok_sorted = order // ids.shape[1]
    start = 0
    for e, c in enumerate(counts):
        if c == 0:
            continue
        sel = order[start:start + c]
        tok = tok_sorted[start:start + c]
        start += c
        h = x[tok] @ w13[e].t()
        a = F.silu(h[:, :I]) * h[:, I:]
        out.index_add_(0, tok, (a @ w2[e].t()) * tw.view(-1)[sel, None].to(x.dtype))
    return out


def grouped_moe(x, w13t, w2t, tw, ids):
    T, H = x.shape
    k = ids.shape[1]
    I = w2t.shape[1]
    flat = ids.view(-1)
    order = flat.argsort()
    offs = torch.cumsum(torch.bincount(flat, minlength=w13t.shape[0]), 0).to(torch.int32)
    xs = x[order // k]
    h = torch._grouped_mm(xs, w13t, offs=offs)
    a = F.silu(h[:, :I]) * h[:, I:]
    y = torch._grouped_mm(a, w2t, offs=offs) * tw.view(-1)[order, None].to(x.dtype)
    out = torch.zeros(T, H, dtype=torch.float32, device=DEV)
    out.index_add_(0, order // k, y.float())
    return out.to(x.dtype)


# ---- the run ----------------------------------------------------------------------------------------------------

def card_slug(name):
    mt = re.search(r"\b([a-z]\d{2,4}[a-z]?)\b", name.lower())
    return mt.group(1) if mt else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


GPU_STATE_FIELDS = ("clocks.sm", "clocks.max.sm", "power.draw", "temperature.gpu", "clocks_event_reasons.active")


def gpu_state():
    """SM clock, power and what limits the clock, right after a measurement: long compute-bound
    cells moved up to 35% between runs of one build (docs/performance-log.md #7)."""
    try:
        out = subprocess.run(["nvidia-smi", f"--id={torch.cuda.current_device()}",
                              "--query-gpu=" + ",".join(GPU_STATE_FIELDS), "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return dict(zip(GPU_STATE_FIELDS, (v.strip() for v in out.split(","))))
    except (OSError, subprocess.SubprocessError) as e:
        return {"unavailable": f"{type(e).__name__}: {e}"[:200]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="directory for peers.json (default bench/results/<card>-<date>)")
    ap.add_argument("--append", action="store_true",
                    help="merge into an existing peers.json there (rows of the same model/T/system/mode replaced)")
    args = ap.parse_args()

    models = [n for n in env_list("MODELS", ",".join(MODELS)) if n in MODELS]
    tokens = [int(t) for t in env_list("TOKENS", ALL_TOKENS)]
    systems = env_list("SYSTEMS", ",".join(SYSTEMS))
    tune_tokens = [int(t) for t in env_list("TUNE_TOKENS", "1,16,128,1024,8192")]
    check_rows = int(os.environ.get("CHECK_ROWS", "8"))
    card = torch.cuda.get_device_name()
    date = os.environ.get("DATE", datetime.date.today().isoformat())
    out_dir = args.out or os.path.join("bench", "results", f"{card_slug(card)}-{date}")
    os.makedirs(out_dir, exist_ok=True)
    t_start = time.time()
    not_run = {}
    prev = None
    if args.append and os.path.exists(os.path.join(out_dir, "peers.json")):
        with open(os.path.join(out_dir, "peers.json")) as f:
            prev = json.load(f)

    # Peers that may be missing: find out first.
    if "vllm" in systems:
        try:
            vllm_module()
        except Exception as e:
            not_run["vllm"] = f"kernel file not loadable: {e!r}"[:300]
            systems.remove("vllm")
    if "megablocks" in systems:
        try:
            from megablocks.layers.arguments import Arguments as _A  # noqa: F401
            from megablocks.layers.dmoe import ParallelDroplessMLP as _P  # noqa: F401
            import grouped_gemm  # noqa: F401
        except Exception as e:
            why = f"import failed: {e!r}"
            be = os.path.join(".peers", "site", "BUILD_ERROR")
            if os.path.exists(be):
                why += "; build error (bench/setup_peers.sh): " + open(be).read().strip()
            not_run["megablocks"] = why[:700]
            systems.remove("megablocks")
    if "triton_kernels" in systems:
        try:
            import triton_kernels  # noqa: F401
            not_run["triton_kernels"] = "imported, but no adapter is written for it in this harness yet"
        except Exception as e:
            not_run["triton_kernels"] = (
                f"not importable ({type(e).__name__}): " + TRITON_KERNELS_WHY)[:800]
        systems.remove("triton_kernels")
    for s, why in not_run.items():
        log(f"NOT RUN {s}: {why}")

    tune_for = {}
    pool = None
    if "vllm" in systems:
        def nearest(T):
            return min(tune_tokens, key=lambda u: (abs(math.log(u) - math.log(T)), u))
        tune_for = {T: nearest(T) for T in tokens}
        jobs = [(st, MODELS[n], Tt, cfg) for n in models for Tt in sorted(set(tune_for.values()))
                for st in ("w13", "w2") for cfg in vllm_configs()]
        workers = int(os.environ.get("PEERS_JOBS", str(max(1, min(14, (os.cpu_count() or 2) - 2)))))
        t0 = time.time()
        pool, futs = precompile(jobs, workers)
        log(f"vllm: compiling {len(jobs)} kernel variants in {workers} processes (background)")

    torch.manual_seed(0)
    ceil = ceilings()
    read_bw, mm = ceil["read_Bps"], ceil["mm_flops"]
    log(f"card {card}: read-only stream {read_bw / 1e12:.2f} TB/s (triton {ceil['read_Bps_triton'] / 1e12:.2f}, "
        f"torch sum {ceil['read_Bps_torch_sum'] / 1e12:.2f}), bf16 8192^3 matmul {mm / 1e12:.0f} TFLOP/s")

    import tmoe
    import tmoe.torch_ops  # noqa: F401

    rows = []

    def add(model, T, system, mode, ms, err, floor_ms, **extra):
        r = dict(card=card, model=model, T=T, system=system, mode=mode, ms=ms, rel_err=err, floor_ms=floor_ms,
                 pct_floor=(100.0 * floor_ms / ms) if ms else None, gpu_state=gpu_state(), **extra)
        rows.append(r)
        log(f"  {model:14s} T={T:5d} {system:11s} {mode:7s} {ms:9.4f} ms  {r['pct_floor']:5.1f}% of floor  "
            f"err {err:.2e}  {extra.get('timing', '')}")

    def attempt(model, T, system, mode, floor_ms, make, graph, ref, rows_idx, **extra):
        """Run once for the check, then time; failures are logged and recorded as not run."""
        try:
            fn = make()
            out = fn(); torch.cuda.synchronize()
            err = rel_err(out, ref, rows_idx)
            try:
                ms, how = measure(fn, graph)
            except Exception as e:
                if not graph:
                    raise
                torch.cuda.synchronize()
                log(f"  {model} T={T} {system} {mode}: graph capture failed ({type(e).__name__}), timing plain launches")
                ms, how = measure(fn, False)
            add(model, T, system, mode, ms, err, floor_ms, timing=how, **extra)
        except Exception as e:
            msg = f"{type(e).__name__}: {e}"[:300]
            log(f"  {model} T={T} {system} {mode} FAILED: {msg}")
            not_run.setdefault(f"{system}/{mode}", f"{model} T={T}: {msg}")

    for name in models:
        m = MODELS[name]
        E, H, I, k = m["E"], m["H"], m["I"], m["k"]
        log(f"== {name}: E={E} H={H} I={I} k={k} routing={m['routing']}")
        gen = torch.Generator(device=DEV).manual_seed(1)
        w13 = (torch.randn(E, 2 * I, H, device=DEV, dtype=torch.bfloat16, generator=gen) / math.sqrt(H))
        w2 = (torch.randn(E, H, I, device=DEV, dtype=torch.bfloat16, generator=gen) / math.sqrt(I))
        bias = (0.1 * torch.randn(E, device=DEV, generator=gen)) if m["routing"] == "sigmoid_grouped_topk" else None
        cases = {}
        for T in tokens:
            x = torch.randn(T, H, device=DEV, dtype=torch.bfloat16, generator=gen)
            logits = torch.randn(T, E, device=DEV, dtype=torch.float32, generator=gen)
            tw, ids = torch_route(logits, m, bias)
            active = ids.unique().numel()
            rows_idx = sorted(set(int(round(i * (T - 1) / max(1, check_rows - 1))) for i in range(min(T, check_rows))))
            ref = reference_rows(x, w13, w2, tw, ids, rows_idx)
            bytes_min = active * 3 * H * I * 2 + 2 * T * H * 2
            flops = 2 * T * k * 3 * H * I
            floor_ms = max(bytes_min / read_bw, flops / mm) * 1e3
            cases[T] = dict(x=x, logits=logits, tw=tw, ids=ids, active=active, rows=rows_idx, ref=ref,
                            floor_ms=floor_ms, bytes=bytes_min if bytes_min / read_bw >= flops / mm else None)

        rk = dict(top_k=k, routing=m["routing"], renormalize=m.get("renormalize", False),
                  n_group=m.get("n_group", 1), topk_group=m.get("topk_group", 1),
                  routed_scaling_factor=m.get("routed_scaling_factor", 1.0), correction_bias=bias)
        tmoe_done = set()

        def run_tmoe(T, c):
            out = torch.empty_like(c["x"])
            attempt(name, T, "tmoe", "layer", c["floor_ms"],
                    lambda: (lambda: tmoe.moe_layer(c["x"], c["logits"], w13, w2, out=out, **rk)),
                    True, c["ref"], c["rows"], active=c["active"])
            attempt(name, T, "tmoe", "experts", c["floor_ms"],
                    lambda: (lambda: tmoe.fused_moe(c["x"], w13, w2, c["tw"], c["ids"], out=out,
                                                    trust_routing_values=True)),
                    True, c["ref"], c["rows"], active=c["active"])
            tmoe_done.add(T)

        if "vllm" in systems:
            if pool is not None:
                n_ok = sum(f.result() for f in futs)
                pool.shutdown()
                pool = None
                log(f"vllm: {n_ok}/{len(jobs)} kernel variants compiled in {time.time() - t0:.0f} s")
            best = {}
            t1 = time.time()
            for Tt in sorted(set(tune_for.values())):
                c = cases.get(Tt)
                if c is None:  # a tuning size outside TOKENS: make its inputs
                    x = torch.randn(Tt, H, device=DEV, dtype=torch.bfloat16)
                    tw, ids = torch_route(torch.randn(Tt, E, device=DEV), m, bias)
                else:
                    x, tw, ids = c["x"], c["tw"], c["ids"]
                try:
                    best[Tt] = vllm_tune(m, Tt, x, w13, w2, tw, ids)
                except Exception as e:
                    log(f"  vllm tuning failed at T={Tt}: {e!r}"[:300])
            log(f"  vllm tuned at T={sorted(best)} in {time.time() - t1:.0f} s")
            for T, c in cases.items():
                if tune_for[T] not in best:
                    continue
                # tritonmoe right before vLLM at each T: the pair that the targets compare
                # sees the same clocks (long cells drift under the power cap).
                if "tmoe" in systems:
                    run_tmoe(T, c)
                c1, c2 = best[tune_for[T]]
                cfg = dict(w13=c1, w2=c2, tuned_at=tune_for[T])
                pipe = VllmPipe(m, T, w13, w2, c1, c2)
                al1, al2 = pipe.aligned(c["ids"])
                attempt(name, T, "vllm", "experts", c["floor_ms"],
                        lambda: (lambda: pipe.gemms(c["x"], c["tw"], al1, al2)),
                        True, c["ref"], c["rows"], active=c["active"], vllm_cfg=cfg,
                        note="alignment precomputed, not timed")

                def layer():
                    tw, ids = torch_route(c["logits"], m, bias)
                    b1, b2 = pipe.aligned(ids)
                    return pipe.gemms(c["x"], tw, b1, b2)
                attempt(name, T, "vllm", "layer", c["floor_ms"], lambda: layer, True, c["ref"], c["rows"],
                        active=c["active"], vllm_cfg=cfg, note="torch routing + torch alignment + experts")
                del pipe
            torch.cuda.empty_cache()

        if "tmoe" in systems:
            for T, c in cases.items():
                if T not in tmoe_done:
                    run_tmoe(T, c)

        if "grouped_mm" in systems:
            try:
                w13t = w13.transpose(1, 2).contiguous()
                w2t = w2.transpose(1, 2).contiguous()
                for T, c in cases.items():
                    attempt(name, T, "grouped_mm", "experts", c["floor_ms"],
                            lambda: (lambda: grouped_moe(c["x"], w13t, w2t, c["tw"], c["ids"])),
                            False, c["ref"], c["rows"], active=c["active"])
                del w13t, w2t
            except torch.OutOfMemoryError as e:
                not_run.setdefault("grouped_mm/experts", f"{name}: {e}"[:200])
            torch.cuda.empty_cache()

        if "eager" in systems:
            for T, c in cases.items():
                attempt(name, T, "eager", "experts", c["floor_ms"],
                        lambda: (lambda: eager_moe(c["x"], w13, w2, c["tw"], c["ids"])),
                        False, c["ref"], c["rows"], active=c["active"])

        if "megablocks" in systems:
            try:
                from megablocks.layers.arguments import Arguments
                from megablocks.layers.dmoe import ParallelDroplessMLP
                noop = lambda t: t
                margs = Arguments(hidden_size=H, ffn_hidden_size=I, moe_num_experts=E, moe_top_k=k, mlp_type="glu",
                                  mlp_impl="grouped", activation_fn=F.silu, bias=False, return_bias=False,
                                  bf16=True, fp16=False, device=torch.cuda.current_device(),
                                  init_method=noop, output_layer_init_method=noop)
                mb = ParallelDroplessMLP(margs)
                with torch.no_grad():
                    mb.mlp.w1.copy_(w13[:, :I, :].reshape(E * I, H))
                    mb.mlp.v1.copy_(w13[:, I:, :].reshape(E * I, H))
                    mb.mlp.w2.copy_(w2.transpose(1, 2).reshape(E * I, H))
                mb.eval()

                def mb_fn(c):
                    def f():
                        with torch.no_grad():
                            return mb.forward_once(c["x"], c["tw"].to(torch.bfloat16).flatten(), c["ids"].flatten())[0]
                    return f
                for T, c in cases.items():
                    attempt(name, T, "megablocks", "experts", c["floor_ms"], lambda: mb_fn(c), False, c["ref"],
                            c["rows"], active=c["active"], note="dMoE ParallelDroplessMLP.forward_once, grouped GLU")
                del mb
            except Exception as e:
                not_run.setdefault("megablocks/experts", f"{name}: {type(e).__name__}: {e}"[:300])
                log(f"  megablocks failed on {name}: {e!r}"[:300])
            torch.cuda.empty_cache()

        if "read" in systems:
            streamed = {T: c for T, c in cases.items() if c["bytes"]}
            buf = None
            try:
                buf = torch.zeros(max([c["bytes"] for c in streamed.values()] or [0]) // 4, dtype=torch.float32,
                                  device=DEV)
            except torch.OutOfMemoryError as e:
                not_run.setdefault("read/bytes", f"{name}: {e}"[:200])
                streamed = {}
            for T, c in streamed.items():
                n = c["bytes"] // 4
                # The ceilings' shape (8 blocks a program) trails at a few MB; one block a
                # program (as tmoe bench's flush) does better there: the faster counts.
                timed = []
                for iters in (1, READ_ITERS):
                    grid = triton.cdiv(n, READ_BLOCK * iters)
                    part = torch.empty(grid, dtype=torch.float32, device=DEV)
                    read = lambda: _read_kernel[(grid,)](buf, part, n, BLOCK=READ_BLOCK, ITERS=iters)  # noqa: E731
                    timed.append(measure(read, True) + (iters,))
                ms, how, iters = min(timed)
                add(name, T, "read", "bytes", ms, 0.0, c["floor_ms"], timing=how, bytes=c["bytes"],
                    blocks_per_program=iters)
            del buf
            torch.cuda.empty_cache()

        del w13, w2, cases
        torch.cuda.empty_cache()
        # Write after every model, so that a run cut short still leaves its rows.
        meta = dict(card=card, date=date, torch=torch.__version__, triton=triton.__version__,
                    ceilings=ceil, tokens=tokens, models=models, tune_tokens=tune_tokens, check_rows=check_rows,
                    not_run=not_run, seconds=round(time.time() - t_start, 1),
                    notes=["ms: median of device events, L2 flushed before each call; timing 'graph' = one CUDA-graph "
                           "replay per event pair, 'stream' = plain launches",
                           "floor_ms = max((active*3*H*I*2 + 2*T*H*2) / read_Bps, 2*T*k*3*H*I / mm_flops)",
                           "vllm experts: alignment precomputed and not timed; vllm layer: torch routing + torch "
                           "alignment + experts in one timed pipeline",
                           "deepseek-v3: routed experts only (no shared expert)"])
        all_rows = rows
        if prev is not None:
            mine = {(r["model"], r["T"], r["system"], r["mode"]) for r in rows}
            all_rows = [r for r in prev["rows"] if (r["model"], r["T"], r["system"], r["mode"]) not in mine] + rows
            ran = {r["system"] for r in rows}
            old_nr = {key: why for key, why in prev["meta"].get("not_run", {}).items() if key.split("/")[0] not in ran}
            meta = dict(prev["meta"], not_run={**old_nr, **not_run},
                        appended=prev["meta"].get("appended", []) + [dict(systems=systems, models=models,
                                                                          ceilings=ceil, date=date)])
        with open(os.path.join(out_dir, "peers.json"), "w") as f:
            json.dump(dict(meta=meta, rows=all_rows), f, indent=1)

    if pool is not None:
        pool.shutdown(cancel_futures=True)
    summary(rows, not_run, card, ceil)
    log(f"wrote {os.path.join(out_dir, 'peers.json')} ({len(rows)} rows, {time.time() - t_start:.0f} s)")


def summary(rows, not_run, card, ceil):
    log(f"\n== summary: {card}; read {ceil['read_Bps'] / 1e12:.2f} TB/s, mm {ceil['mm_flops'] / 1e12:.0f} TFLOP/s; "
        f"ms (% of floor)")
    by = {}
    for r in rows:
        by.setdefault((r["model"], r["T"]), {})[(r["system"], r["mode"])] = r
    cols = [("tmoe", "layer"), ("tmoe", "experts"), ("vllm", "layer"), ("vllm", "experts"), ("grouped_mm", "experts"),
            ("eager", "experts"), ("megablocks", "experts")]
    log(f"{'model':14s} {'T':>5s} {'floor':>7s} " + " ".join(f"{s[:6] + '.' + md[:3]:>15s}" for s, md in cols))
    for (model, T), d in sorted(by.items(), key=lambda kv: (list(MODELS).index(kv[0][0]), kv[0][1])):
        floor = next(iter(d.values()))["floor_ms"]
        cells = []
        for key in cols:
            r = d.get(key)
            cells.append(f"{r['ms']:8.3f}({r['pct_floor']:3.0f}%)" if r else f"{'-':>15s}")
        log(f"{model:14s} {T:5d} {floor:7.3f} " + " ".join(cells))
    for s, why in not_run.items():
        log(f"not run: {s}: {why}")


if __name__ == "__main__":
    main()
