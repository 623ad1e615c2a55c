"""Probe, prepared 2026-11-27 and not yet run on a GPU (performance-log.md #50):
sigmoid_grouped_topk's kept groups from one bitonic sort instead of n_group rounds.

route.kept_groups finds each group's two best selection scores with an argmax and two
maxes per group (24 warp reductions at n_group 8), then the topk_group best groups by
rounds; with #49's bitonic expert top-k, deepseek-v3's route still takes 7.5-7.9 us a
launch against 2.3-2.6 for qwen3's plain top-8. Here one descending tl.sort of keys
packing (n_group - group, the score's order-preserving bits, BLOCK_E - lane) lists
every group's lanes together, best first, so a group's two best sit at g * group_size
and the next position. Both forms run in a minimal kernel (the logits' sigmoid and
bias, the kept groups, the mask stored) so that the timing difference is theirs; the
masks must be equal on every row, NaN logits and quantised ties included.

Usage (GPU machine, repository root):  PYTHONPATH=. python3 bench/route_groups_probe.py
"""
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels" / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels.route import experts_of_best_groups, kept_groups  # noqa: E402

REPS = 20


@triton.jit
def kept_groups_sorted(selection, valid, lanes, E, n_group, topk_group, BLOCK_E: tl.constexpr):
    """route.kept_groups from one sort (E = n_group * group_size, as validated)."""
    group_size = E // n_group
    group_of = tl.where(valid, lanes // group_size, n_group)  # lanes past E sort last
    canonical = tl.where(selection != selection, float("-inf"), selection) + 0.0
    bits = canonical.to(tl.int32, bitcast=True)
    ordered = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64) + 2147483648  # 0 .. 2^32 - 1, order kept
    keys = (n_group - group_of).to(tl.int64) * 4398046511104 + ordered * 1024 + (BLOCK_E - lanes)
    ranked = tl.sort(keys, descending=True)
    bits_back = ((ranked >> 10) & 0xFFFFFFFF) - 2147483648
    score_bits = bits_back.to(tl.int32)
    scores = (score_bits ^ ((score_bits >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)
    group_lane = lanes < n_group  # lane g holds group g
    first = tl.minimum(lanes * group_size, BLOCK_E - 1)
    best = tl.gather(scores, first, 0)
    second = tl.gather(scores, tl.minimum(first + 1, BLOCK_E - 1), 0)
    group_score = tl.where(group_lane, best + tl.where(group_size > 1, second, 0.0), float("-inf"))
    return experts_of_best_groups(group_score, group_of, valid, lanes, n_group, topk_group, BLOCK_E)


@triton.jit
def kept_mask(logits, correction_bias, kept_out, E, n_group, topk_group, BLOCK_E: tl.constexpr,
              SORTED: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    lanes = tl.arange(0, BLOCK_E)
    valid = lanes < E
    x = tl.load(logits + token * E + lanes, mask=valid, other=float("-inf")).to(tl.float32)
    selection = tl.sigmoid(x) + tl.load(correction_bias + lanes, mask=valid, other=0.0)
    if SORTED:
        kept = kept_groups_sorted(selection, valid, lanes, E, n_group, topk_group, BLOCK_E)
    else:
        kept = kept_groups(selection, valid, lanes, E, n_group, topk_group, BLOCK_E)
    tl.store(kept_out + token * E + lanes, kept.to(tl.int8), mask=valid)


CASES = [  # E, n_group, topk_group, BLOCK_E
    (256, 8, 4, 256),  # deepseek-v3
    (160, 8, 3, 256),  # deepseek-v2
    (64, 1, 1, 64),
    (16, 16, 4, 64),   # groups of one expert
]


def kept_masks(logits, bias, E, n_group, topk_group, block_e, sorted_form, device):
    out = torch.full(logits.shape, -1, dtype=torch.int8, device=device)
    kept_mask[(logits.shape[0], )](logits, bias, out, E, n_group, topk_group, BLOCK_E=block_e, SORTED=sorted_form,
                                   num_warps=1)
    return out


def main(device="cuda"):
    g = torch.Generator(device=device).manual_seed(0)
    timing = device == "cuda"
    if timing:
        import peers
        print(f"card: {torch.cuda.get_device_name()}; us per copy, {REPS} copies per graph replay, median of 9")
    for E, n_group, topk_group, block_e in CASES:
        bias = 0.1 * torch.randn(E, generator=g, device=device)
        for T in ((16, 512, 4096) if timing else (37, )):
            draws = [torch.randn(T, E, generator=g, device=device),
                     torch.randint(-4, 5, (T, E), generator=g, device=device).float()]  # quantised: ties
            draws[0][::5, 7] = float("nan")
            quantised_bias = torch.randint(-2, 3, (E, ), generator=g, device=device).float() / 8
            row = [f"E={E} groups {topk_group}/{n_group} T={T}"]
            for logits, b in ((draws[0], bias), (draws[1], quantised_bias)):
                rounds, by_sort = (kept_masks(logits, b, E, n_group, topk_group, block_e, s, device) for s in (False, True))
                row.append("masks equal" if torch.equal(rounds, by_sort) else
                           f"masks DIFFER in {int((rounds != by_sort).any(1).sum())} rows")
            if timing:
                for name, s in (("rounds", False), ("sort", True)):
                    out = torch.empty(T, E, dtype=torch.int8, device=device)
                    us = peers.replay_ms(lambda: kept_mask[(T, )](draws[0], bias, out, E, n_group, topk_group,
                                                                   BLOCK_E=block_e, SORTED=s, num_warps=1),
                                         reps=9, copies=REPS, flush=False) * 1000 / REPS
                    row.append(f"{name} {us:.2f} us")
            print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cuda")
