"""Stage 1, route: router logits -> top-k expert ids and weights, one program per token.

Semantics are those of include/tmoe/tmoe.h, computed in f32: ties in every top-k go
to the lower index (expert or group) and the chosen experts are written in
descending order of their selection score.
"""
import triton
import triton.language as tl

from kernels.dependent_launch import wait_for_previous_kernel

# Numbered as tmoe_routing_mode in include/tmoe/tmoe.h.
SOFTMAX_TOPK = tl.constexpr(0)
TOPK_SOFTMAX = tl.constexpr(1)
SIGMOID_GROUPED_TOPK = tl.constexpr(2)
# Below the order-preserving bits of every float once NaN is -inf (they would be a
# negative NaN's).
UNAVAILABLE = tl.constexpr(-2147483648)


@triton.jit
def rank_key(values, available, lanes, NONE: tl.constexpr):
    """A key per lane ordering the available values, largest first and the lowest lane
    among equals (NaN ranks as -inf and -0.0 as 0.0, as in the reference): the value's
    bits, made order-preserving, above NONE - lane; an unavailable lane's key is below
    every available one's. One max of these keys is an argmax (a max and then a min over
    the lanes equal to it found no lane when the values were NaN: performance-log.md #42)."""
    canonical = tl.where(values != values, float("-inf"), values) + 0.0
    bits = canonical.to(tl.int32, bitcast=True)
    ordered = tl.where(available, bits ^ ((bits >> 31) & 0x7FFFFFFF), UNAVAILABLE)
    return ordered.to(tl.int64) * 4294967296 + (NONE - lanes).to(tl.int64)


@triton.jit
def lane_of(key, NONE: tl.constexpr):
    """The lane a rank_key belongs to; NONE for an unavailable lane's."""
    return tl.where((key >> 32) == UNAVAILABLE, NONE, NONE - (key & 0xFFFFFFFF).to(tl.int32))


@triton.jit
def argmax_lowest(values, available, lanes, NONE: tl.constexpr):
    """Lane of the largest available value, the lowest lane among equals; NONE if none is available."""
    return lane_of(tl.max(rank_key(values, available, lanes, NONE), 0), NONE)


@triton.jit
def kept_groups(selection, valid, lanes, E, n_group, topk_group, BLOCK_E: tl.constexpr):
    """Experts of the topk_group groups with the largest sum of their two best selection
    scores (DeepSeek-V3); a group of one expert scores that expert alone."""
    group_size = E // n_group
    group_of = lanes // group_size
    group_score = tl.full([BLOCK_E], float("-inf"), tl.float32)  # lane g holds group g
    for g in range(n_group):
        in_group = valid & (group_of == g)
        first = argmax_lowest(selection, in_group, lanes, BLOCK_E)
        best = tl.max(tl.where(in_group, selection, float("-inf")), 0)
        second = tl.max(tl.where(in_group & (lanes != first), selection, float("-inf")), 0)
        score = best + tl.where(group_size > 1, second, 0.0)
        group_score = tl.where(lanes == g, score, group_score)
    return experts_of_best_groups(group_score, group_of, valid, lanes, n_group, topk_group, BLOCK_E)


@triton.jit
def experts_of_best_groups(group_score, group_of, valid, lanes, n_group, topk_group, BLOCK_E: tl.constexpr):
    """The valid lanes in the topk_group groups of the best scores (lane g holds group
    g's), by rounds, ties to the lower group."""
    group_left = lanes < n_group
    kept = lanes < 0
    for _ in range(topk_group):
        g = argmax_lowest(group_score, group_left, lanes, BLOCK_E)
        group_left = group_left & (lanes != g)
        kept = kept | (group_of == g)
    return kept & valid


@triton.jit
def route(logits, correction_bias, topk_ids, topk_weights, E, top_k, mode, renormalize, n_group, topk_group,
          routed_scaling_factor, has_correction_bias, BLOCK_E: tl.constexpr, TOP_K: tl.constexpr,
          PDL: tl.constexpr):
    """TOP_K: a power of two >= top_k, whose top-k is one bitonic tl.topk of the rank
    keys (0.2-0.9 us a launch under top_k argmax rounds, performance-log.md #49); 0
    for any top_k, by rounds."""
    wait_for_previous_kernel(PDL)
    token = tl.program_id(0).to(tl.int64)
    lanes = tl.arange(0, BLOCK_E)
    valid = lanes < E
    x = tl.load(logits + token * E + lanes, mask=valid, other=float("-inf")).to(tl.float32)
    if mode == SIGMOID_GROUPED_TOPK:
        weight_of = tl.sigmoid(x)
        selection = weight_of
        if has_correction_bias != 0:
            selection = selection + tl.load(correction_bias + lanes, mask=valid, other=0.0)
        eligible = kept_groups(selection, valid, lanes, E, n_group, topk_group, BLOCK_E)
    else:
        unnormalised = tl.exp(x - tl.max(x, 0))
        # topk_softmax is a softmax over the chosen logits: normalised below over the
        # chosen only, so a NaN logit left unchosen does not reach the weights.
        weight_of = tl.where(mode == TOPK_SOFTMAX, unnormalised, unnormalised / tl.sum(unnormalised, 0))
        # softmax_topk ranks the probabilities, topk_softmax the logits (tmoe.h): the two
        # orders differ only where exp() rounds two logits to one probability.
        selection = tl.where(mode == TOPK_SOFTMAX, x, weight_of)
        eligible = valid
    if TOP_K == 0:
        # Per lane: rank[e] = j when expert e is the token's j-th choice, -1 when not chosen.
        rank = tl.full([BLOCK_E], -1, tl.int32)
        for j in range(top_k):
            chosen = argmax_lowest(selection, eligible & (rank < 0), lanes, BLOCK_E)
            rank = tl.where(lanes == chosen, j, rank)
        experts, choice, picked = lanes, rank, rank >= 0
        weights = tl.where(picked, weight_of, 0.0)
    else:
        # Per choice: the TOP_K largest keys, in descending order.
        choice = tl.arange(0, TOP_K)
        experts = lane_of(tl.topk(rank_key(selection, eligible, lanes, BLOCK_E), TOP_K), BLOCK_E)
        picked = (choice < top_k) & (experts < BLOCK_E)
        weights = tl.where(picked, tl.gather(weight_of, tl.minimum(experts, BLOCK_E - 1), 0), 0.0)
    if (renormalize != 0) | (mode == TOPK_SOFTMAX):
        total = tl.sum(weights, 0)
        # A zero total means every chosen sigmoid underflowed: keep 0, not NaN (as the CPU).
        weights = tl.where(total > 0, weights / total, weights)
    if mode == SIGMOID_GROUPED_TOPK:
        weights = weights * routed_scaling_factor
    out = token * top_k + choice
    tl.store(topk_ids + out, experts, mask=picked)
    tl.store(topk_weights + out, weights, mask=picked)
