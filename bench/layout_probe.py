"""Session probe (not kept in the tree): does the weights' layout hold the memory-bound
grouped GEMMs under a plain read's rate? One m-block per expert (the memory-bound
buckets), x pre-gathered, both operands through TMA, the GEMM alone:

  rowmajor: w [E, N, K] as the library takes it; a [BN, BK] box reads BN rows of BK*2
            bytes, rows K*2 bytes apart (DRAM pages opened for 128-256 bytes each)
  blocked:  w [E, N/BN, K/BK, BN, BK]: every box one contiguous BN*BK*2-byte chunk
  read:     one plain read of the same bytes (the floor's rate)

  PYTHONPATH=. python3 bench/layout_probe.py
"""
import torch
import triton
import triton.language as tl

DEV = "cuda"


@triton.jit
def grouped_gemm(x, w, y, N, K, BLOCKED: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid = tl.program_id(0)
    num_n = N // BN
    e = pid // num_n
    n = pid % num_n
    E = tl.num_programs(0) // num_n
    x_desc = tl.make_tensor_descriptor(x, shape=[E * BM, K], strides=[K, 1], block_shape=[BM, BK])
    if BLOCKED:
        w_desc = tl.make_tensor_descriptor(w, shape=[E * N * (K // BK), BK], strides=[BK, 1], block_shape=[BN, BK])
        row = (e * num_n + n) * (K // BK) * BN
    else:
        w_desc = tl.make_tensor_descriptor(w, shape=[E * N, K], strides=[K, 1], block_shape=[BN, BK])
        row = e * N + n * BN
    acc = tl.zeros([BM, BN], tl.float32)
    for k0 in range(0, K, BK):
        if BLOCKED:
            w_tile = w_desc.load([row + (k0 // BK) * BN, 0])
        else:
            w_tile = w_desc.load([row, k0])
        acc = tl.dot(x_desc.load([e * BM, k0]), w_tile.T, acc)
    y_desc = tl.make_tensor_descriptor(y, shape=[E * BM, N], strides=[N, 1], block_shape=[BM, BN])
    y_desc.store([e * BM, n * BN], acc.to(y.dtype.element_ty))


@triton.jit
def plain_read(w, out, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(w + offs, mask=offs < n, other=0.0)
    tl.store(out + tl.program_id(0), tl.sum(v.to(tl.float32)))


def blocked(w, BN, BK):
    E, N, K = w.shape
    return w.view(E, N // BN, BN, K // BK, BK).permute(0, 1, 3, 2, 4).contiguous()


def median_ms(fn, reps=9):
    fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def main():
    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, device=DEV, dtype=torch.int8))
    print(torch.cuda.get_device_name(), flush=True)
    # (name, experts with one block, N, K): deepseek-v3 T = 2048 (gate_up, down), qwen3-30b-a3b T = 512,
    # mixtral-8x7b T = 512 (one block per expert, 8 experts).
    shapes = [("deepseek gate_up", 200, 4096, 7168), ("deepseek down", 200, 7168, 2048),
              ("qwen3 gate_up", 128, 1536, 2048), ("qwen3 down", 128, 2048, 768),
              ("mixtral gate_up", 8, 28672, 4096), ("mixtral down", 8, 4096, 14336)]
    configs = [(128, 256, 64, 8, 3), (128, 256, 64, 8, 4), (128, 256, 128, 8, 2), (64, 256, 128, 4, 3),
               (64, 128, 128, 4, 4), (64, 128, 256, 4, 3)]
    torch.manual_seed(0)
    for name, E, N, K in shapes:
        w = torch.randn(E, N, K, device=DEV, dtype=torch.bfloat16) * 0.02
        gb = w.numel() * 2 / 1e9
        out = torch.empty(triton.cdiv(w.numel(), 8192), device=DEV, dtype=torch.float32)
        ms = median_ms(lambda: plain_read[(out.numel(),)](w, out, w.numel(), BLOCK=8192, num_warps=8))
        print(f"{name} E={E} N={N} K={K}: {gb:.2f} GB; plain read {ms:.3f} ms {gb / ms:.2f} TB/s", flush=True)
        for BM, BN, BK, warps, stages in configs:
            if N % BN or K % BK:
                continue
            x = torch.randn(E * BM, K, device=DEV, dtype=torch.bfloat16)
            ref = None
            line = f"  BM{BM} BN{BN} BK{BK} w{warps} s{stages}:"
            for layout in ("rowmajor", "blocked"):
                wl = blocked(w, BN, BK) if layout == "blocked" else w
                y = torch.empty(E * BM, N, device=DEV, dtype=torch.bfloat16)
                try:
                    run = lambda: grouped_gemm[(E * (N // BN),)](x, wl, y, N, K, BLOCKED=layout == "blocked", BM=BM,
                                                                  BN=BN, BK=BK, num_warps=warps, num_stages=stages)
                    ms = median_ms(run)
                except Exception as err:  # noqa: BLE001 (a config past shared memory)
                    line += f" {layout} failed ({type(err).__name__})"
                    continue
                if ref is None:
                    e = E // 2
                    ref = (x[e * BM:(e + 1) * BM].float() @ w[e].float().T)
                    err = (y[e * BM:(e + 1) * BM].float() - ref).norm() / ref.norm()
                else:
                    err = (y[e * BM:(e + 1) * BM].float() - ref).norm() / ref.norm()
                line += f" {layout} {ms:.3f} ms {gb / ms:.2f} TB/s (err {err:.1e})"
                del wl
            print(line, flush=True)
        del w
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
