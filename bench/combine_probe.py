"""Session probe: combine's k loads issued one after another (the library's runtime
loop, num_stages 1) against the loop unrolled (R constexpr) or pipelined, alone, one
graph replay per timing (y written just before, as down leaves it: L2 not flushed).

  PYTHONPATH=. python3 bench/combine_probe.py
"""
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402
from kernels.down_combine import combine  # noqa: E402
from kernels.row_tiles import row_and_columns  # noqa: E402


@triton.jit
def combine_unrolled(y, out, H, ROWS: tl.constexpr, BLOCK_H: tl.constexpr):
    token, cols, col_ok = row_and_columns(H, BLOCK_H)
    token = token.to(tl.int64)
    acc = tl.zeros([BLOCK_H], tl.float32)
    for j in tl.static_range(ROWS):
        acc += tl.load(y + (token * ROWS + j) * H + cols, mask=col_ok, other=0.0)
    tl.store(out + token * H + cols, acc.to(out.dtype.element_ty), mask=col_ok)


CASES = [("qwen3", 2048, 8, (256, 512, 2048, 8192)), ("gpt-oss", 2880, 4, (256, 2048)),
         ("deepseek", 7168, 8, (256, 2048)), ("mixtral", 4096, 2, (256, 512))]


def main():
    print(f"{torch.cuda.get_device_name()}; {peers.gpu_state()}", flush=True)
    for name, H, k, tokens in CASES:
        for T in tokens:
            y = torch.randn(T * k, H, device="cuda", dtype=torch.bfloat16)
            ref = y.float().view(T, k, H).sum(1)
            row = [f"{name} T={T} H={H} k={k}"]
            for block_h in (1024, 512):
                grid = (T * triton.cdiv(H, block_h),)
                for stages in (1, 3):
                    out = torch.empty(T, H, device="cuda", dtype=torch.bfloat16)
                    ms = peers.replay_ms(lambda: combine[grid](  # noqa: E731
                        y, out, y, y, H, k, k, 0, BLOCK_H=block_h, PADDED_Y=False, PDL=False, num_warps=4,
                        num_stages=stages), 15, copies=10, flush=False) / 10
                    err = ((out.float() - ref).norm() / ref.norm()).item()
                    row.append(f"loop h{block_h} s{stages} {ms * 1000:.1f} us ({err:.0e})")
                out = torch.empty(T, H, device="cuda", dtype=torch.bfloat16)
                ms = peers.replay_ms(lambda: combine_unrolled[grid](  # noqa: E731
                    y, out, H, ROWS=k, BLOCK_H=block_h, num_warps=4), 15, copies=10, flush=False) / 10
                err = ((out.float() - ref).norm() / ref.norm()).item()
                row.append(f"unrolled h{block_h} {ms * 1000:.1f} us ({err:.0e})")
            print("; ".join(row), flush=True)


if __name__ == "__main__":
    main()
