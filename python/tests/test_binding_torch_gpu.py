"""The binding and its torch custom ops on a CUDA GPU.

bf16 (and f16) against a float64 torch reference, the ops under torch.compile
and inside a CUDA graph, and work on the caller's current stream. Needs torch
with CUDA and a libtmoe.so built with the GPU kernels (TMOE_LIBRARY names it or
its build directory). Inputs are random on every run; each test prints its
seed, and TMOE_TEST_SEED=<seed> replays it.
"""
import os

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("torch sees no CUDA device", allow_module_level=True)

import tmoe  # noqa: E402
import tmoe.torch_ops  # noqa: E402,F401  (registers torch.ops.tmoe.*)

DEVICE = "cuda"
BOUNDS = {torch.bfloat16: 1e-2, torch.float16: 2e-3}  # the bench's bounds


@pytest.fixture
def gen():
    seed = int(os.environ.get("TMOE_TEST_SEED", int.from_bytes(os.urandom(8), "little") >> 1))
    print(f"seed {seed} (TMOE_TEST_SEED={seed} replays it)")
    return torch.Generator().manual_seed(seed)


def randn(gen, *shape, scale=1.0, dtype=torch.bfloat16):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(DEVICE, dtype)


# ---- float64 reference ---------------------------------------------------------------------------------------

def swiglu_mlp(x, w13, w2):
    i = w13.shape[0] // 2
    gate_up = x @ w13.T
    return (torch.nn.functional.silu(gate_up[:, :i]) * gate_up[:, i:]) @ w2.T


def reference_layer(x, w13, w2, weights, ids, shared=None):
    x = x.double()
    out = torch.zeros_like(x)
    for e in range(w13.shape[0]):
        t, j = torch.nonzero(ids == e, as_tuple=True)
        if t.numel():
            y = swiglu_mlp(x[t], w13[e].double(), w2[e].double())
            out.index_add_(0, t, weights[t, j, None].double() * y)
    if shared is not None:
        out += swiglu_mlp(x, *(w.double() for w in shared))
    return out


def ranked(scores):
    """Indices by descending score, ties to the lower index."""
    return torch.sort(-scores, stable=True).indices


def reference_route(logits, routing, top_k, renormalize=False, n_group=1, topk_group=1,
                    routed_scaling_factor=1.0, correction_bias=None):
    logits = logits.double().cpu()
    ids, weights = [], []
    for row in logits:
        if routing == "softmax_topk":
            probs = torch.softmax(row, 0)
            chosen = ranked(probs)[:top_k]
            w = probs[chosen]
            if renormalize:
                w = w / w.sum()
        elif routing == "topk_softmax":
            chosen = ranked(row)[:top_k]
            w = torch.softmax(row[chosen], 0)
        else:
            scores = torch.sigmoid(row)
            biased = scores + (0.0 if correction_bias is None else correction_bias.double().cpu())
            groups = biased.view(n_group, -1)
            size = groups.shape[1]
            group_scores = groups.sort(dim=1, descending=True).values[:, :min(2, size)].sum(1)
            candidates = torch.full_like(biased, float("-inf"))
            for g in ranked(group_scores)[:topk_group].tolist():
                candidates[g * size:(g + 1) * size] = groups[g]
            chosen = ranked(candidates)[:top_k]
            w = scores[chosen]
            if renormalize:
                w = w / w.sum()
            w = w * routed_scaling_factor
        ids.append(chosen)
        weights.append(w)
    return torch.stack(ids).to(DEVICE), torch.stack(weights).to(DEVICE)


def rel_l2(ref, actual):
    return ((actual.double() - ref).norm() / ref.norm()).item()


# ---- inputs --------------------------------------------------------------------------------------------------

def make_weights(gen, n_experts, hidden, inter, dtype=torch.bfloat16, shared_inter=0):
    w13 = randn(gen, n_experts, 2 * inter, hidden, scale=hidden**-0.5, dtype=dtype)
    w2 = randn(gen, n_experts, hidden, inter, scale=inter**-0.5, dtype=dtype)
    shared = None
    if shared_inter:
        shared = (randn(gen, 2 * shared_inter, hidden, scale=hidden**-0.5, dtype=dtype),
                  randn(gen, hidden, shared_inter, scale=shared_inter**-0.5, dtype=dtype))
    return w13, w2, shared


def make_ids(gen, n_tokens, n_experts, k):
    ids = torch.stack([torch.randperm(n_experts, generator=gen)[:k] for _ in range(n_tokens)])
    weights = torch.rand((n_tokens, k), generator=gen) * 0.95 + 0.05
    return ids.to(DEVICE, torch.int32), weights.to(DEVICE, torch.float32)


def spaced_logits(gen, n_tokens, n_experts, dtype=torch.float32):
    """Evenly spaced values in random order, jittered by 5% of the spacing: the layer's f32 routing and the f64
    reference rank them alike (a near-tie could make them pick different experts)."""
    spacing = 8.0 / n_experts
    order = torch.stack([torch.randperm(n_experts, generator=gen) for _ in range(n_tokens)]).double()
    jitter = torch.rand(order.shape, generator=gen, dtype=torch.float64) * 0.1 - 0.05
    return ((order - 0.5 * n_experts + jitter) * spacing).to(DEVICE, dtype)


def spaced_sigmoid_logits(gen, n_tokens, n_experts, n_group):
    """The same in sigmoid-score space with a clear group ranking (a group of rank r holds the scores r*G ..
    r*G+G-1 spacings); the bias moves whole groups by -1, 0 or +1 times the score range."""
    size = n_experts // n_group
    spacing = 0.8 / n_experts
    logits = torch.empty((n_tokens, n_experts), dtype=torch.float64)
    for t in range(n_tokens):
        group_rank = torch.randperm(n_group, generator=gen)
        for g in range(n_group):
            jitter = torch.rand(size, generator=gen, dtype=torch.float64) * 0.1 - 0.05
            steps = group_rank[g] * size + torch.randperm(size, generator=gen) + 0.5 + jitter
            score = 0.1 + steps * spacing
            logits[t, g * size:(g + 1) * size] = torch.log(score / (1.0 - score))
    bias = (torch.randint(-1, 2, (n_group,), generator=gen) * 0.8).repeat_interleave(size)
    return logits.to(DEVICE, torch.float32), bias.to(DEVICE, torch.float32)


def poisoned(like):
    return torch.full_like(like, float("nan"))


def expert_problem(gen, n_tokens, hidden=256, inter=128, n_experts=16, k=4, shared_inter=0, dtype=torch.bfloat16):
    x = randn(gen, n_tokens, hidden, dtype=dtype)
    w13, w2, shared = make_weights(gen, n_experts, hidden, inter, dtype, shared_inter)
    ids, weights = make_ids(gen, n_tokens, n_experts, k)
    kwargs = {"shared_w13": shared[0], "shared_w2": shared[1]} if shared else {}
    return (x, w13, w2, weights, ids), kwargs, shared


# ---- the layer -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_tokens", [1, 7, 64, 300])
@pytest.mark.parametrize("shared_inter", [0, 96])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_moe(gen, n_tokens, shared_inter, dtype):
    args, kwargs, shared = expert_problem(gen, n_tokens, shared_inter=shared_inter, dtype=dtype)
    out = poisoned(args[0])
    assert tmoe.fused_moe(*args, out=out, **kwargs) is out
    assert out.isfinite().all(), "out was not fully written"
    assert rel_l2(reference_layer(*args, shared), out) <= BOUNDS[dtype]


def test_fused_moe_unaligned_shapes_and_allocated_out(gen):
    args, kwargs, shared = expert_problem(gen, 33, hidden=200, inter=72, n_experts=6, k=2, shared_inter=40)
    out = tmoe.fused_moe(*args, **kwargs)
    assert out.device == args[0].device and out.dtype == torch.bfloat16 and out.shape == args[0].shape
    assert rel_l2(reference_layer(*args, shared), out) <= BOUNDS[torch.bfloat16]


ROUTING_CASES = {
    "softmax_topk_renormalize": dict(routing="softmax_topk", top_k=2, renormalize=True),
    "softmax_topk": dict(routing="softmax_topk", top_k=4),
    "topk_softmax": dict(routing="topk_softmax", top_k=4),
    "sigmoid_grouped_topk_bias": dict(routing="sigmoid_grouped_topk", top_k=8, renormalize=True, n_group=8,
                                      topk_group=4, routed_scaling_factor=2.5),
}


def layer_problem(gen, case, n_tokens, logits_dtype=torch.float32, shared_inter=0, n_experts=64):
    params = dict(ROUTING_CASES[case])
    x = randn(gen, n_tokens, 256)
    w13, w2, shared = make_weights(gen, n_experts, 256, 128, shared_inter=shared_inter)
    if params["routing"] == "sigmoid_grouped_topk":
        logits, params["correction_bias"] = spaced_sigmoid_logits(gen, n_tokens, n_experts, params["n_group"])
    else:
        logits = spaced_logits(gen, n_tokens, n_experts, logits_dtype)
    if shared:
        params.update(shared_w13=shared[0], shared_w2=shared[1])
    return (x, logits, w13, w2), params, shared


def layer_reference(args, params, shared):
    x, logits, w13, w2 = args
    route = {k: v for k, v in params.items() if not k.startswith("shared")}
    ids, weights = reference_route(logits, **route)
    return reference_layer(x, w13, w2, weights, ids, shared)


@pytest.mark.parametrize("case", ROUTING_CASES)
@pytest.mark.parametrize("n_tokens", [3, 200])
def test_moe_layer(gen, case, n_tokens):
    args, params, shared = layer_problem(gen, case, n_tokens, shared_inter=64 if n_tokens == 3 else 0)
    out = poisoned(args[0])
    tmoe.moe_layer(*args, out=out, **params)
    assert out.isfinite().all(), "out was not fully written"
    assert rel_l2(layer_reference(args, params, shared), out) <= BOUNDS[torch.bfloat16]


def test_moe_layer_bf16_logits(gen):
    args, params, shared = layer_problem(gen, "softmax_topk_renormalize", 50, logits_dtype=torch.bfloat16)
    out = tmoe.moe_layer(*args, **params)
    assert rel_l2(layer_reference(args, params, shared), out) <= BOUNDS[torch.bfloat16]


def test_errors_leave_out_untouched(gen):
    (x, w13, w2, weights, ids), _, _ = expert_problem(gen, 16)
    out = poisoned(x)
    bad = ids.clone()
    bad[5, 2] = 16
    with pytest.raises(tmoe.Error, match=r"topk_ids: expected expert ids in \[0, E=16\), got 16 at token 5"):
        tmoe.fused_moe(x, w13, w2, weights, bad, out=out)
    with pytest.raises(tmoe.Error, match="w2: expected shape"):
        tmoe.fused_moe(x, w13, w2[:, :, :64], weights, ids, out=out)
    with pytest.raises(tmoe.Error, match="w13: is on cpu, expected gpu:"):
        tmoe.fused_moe(x, w13.cpu(), w2, weights, ids, out=out)
    with pytest.raises(tmoe.Error, match="x: is in gpu:.* memory, but backend='cpu'"):
        tmoe.fused_moe(x, w13, w2, weights, ids, out=out, backend="cpu")
    with pytest.raises(tmoe.Error, match="x: expected contiguous"):
        tmoe.fused_moe(x.t().contiguous().t(), w13, w2, weights, ids, out=out)
    torch.cuda.synchronize()
    assert out.isnan().all(), "out was written by a failed call"


def test_plan_names_the_launches(gen):
    (x, w13, w2, weights, ids), _, _ = expert_problem(gen, 1)
    out = poisoned(x)
    plan = tmoe.plan(tmoe.fused_moe, x, w13, w2, weights, ids, out=out)
    # One token, aligned tensors: the decode path, gate_up then down (no route, no align, no combine).
    assert plan.launches == 2, plan
    assert plan.description.startswith("decode "), plan
    assert "decode_gate_up_swiglu/" in plan.description and "decode_down_combine/" in plan.description, plan
    torch.cuda.synchronize()
    assert out.isnan().all(), "planning wrote out"
    (x, w13, w2, weights, ids), _, _ = expert_problem(gen, 300)
    plan = tmoe.plan(tmoe.fused_moe, x, w13, w2, weights, ids)
    assert plan.launches == 5 and plan.description.startswith("sorted "), plan  # align x2, gate_up, down, combine


# ---- torch integration ---------------------------------------------------------------------------------------

def test_ops_opcheck(gen):
    args, kwargs, _ = expert_problem(gen, 9, shared_inter=32)
    torch.library.opcheck(torch.ops.tmoe.fused_moe.default, args, kwargs)
    layer_args, params, _ = layer_problem(gen, "sigmoid_grouped_topk_bias", 9)
    torch.library.opcheck(torch.ops.tmoe.moe_layer.default, layer_args, params)


def test_ops_under_torch_compile(gen):
    args, kwargs, shared = expert_problem(gen, 40, shared_inter=64)
    layer_args, params, _ = layer_problem(gen, "topk_softmax", 40)

    @torch.compile(fullgraph=True)
    def both(x, w13, w2, weights, ids, shared_w13, shared_w2, logits, lw13, lw2):
        a = torch.ops.tmoe.fused_moe(x * 2, w13, w2, weights, ids, shared_w13, shared_w2)
        b = torch.ops.tmoe.moe_layer(x * 2, logits, lw13, lw2, 4, "topk_softmax")
        return a, b

    x, w13, w2, weights, ids = args
    logits, lw13, lw2 = layer_args[1], layer_args[2], layer_args[3]
    a, b = both(x, w13, w2, weights, ids, shared[0], shared[1], logits, lw13, lw2)
    # The combine is deterministic, so the compiled graph matches eager bit for bit.
    assert torch.equal(a, torch.ops.tmoe.fused_moe(x * 2, w13, w2, weights, ids, shared[0], shared[1]))
    assert torch.equal(b, tmoe.moe_layer(x * 2, logits, lw13, lw2, top_k=4, routing="topk_softmax"))
    assert rel_l2(reference_layer(x * 2, w13, w2, weights, ids, shared), a) <= BOUNDS[torch.bfloat16]


def warm_up(fn):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)


def test_fused_moe_in_cuda_graph(gen):
    (x, w13, w2, weights, ids), kwargs, shared = expert_problem(gen, 24, shared_inter=64)
    def run():
        return torch.ops.tmoe.fused_moe(x, w13, w2, weights, ids, kwargs["shared_w13"], kwargs["shared_w2"],
                                        trust_routing_values=True)

    warm_up(run)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
    for _ in range(3):  # new tokens and new routing each replay
        (new_x, _, _, new_weights, new_ids), _, _ = expert_problem(gen, 24)
        x.copy_(new_x)
        weights.copy_(new_weights)
        ids.copy_(new_ids)
        graph.replay()
        assert torch.equal(out, tmoe.fused_moe(x, w13, w2, weights, ids, **kwargs))
        assert rel_l2(reference_layer(x, w13, w2, weights, ids, shared), out) <= BOUNDS[torch.bfloat16]


def test_moe_layer_in_cuda_graph(gen):
    (x, logits, w13, w2), params, shared = layer_problem(gen, "sigmoid_grouped_topk_bias", 17, shared_inter=32)
    def run():
        return torch.ops.tmoe.moe_layer(x, logits, w13, w2, **params)

    warm_up(run)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
    for _ in range(3):
        (new_x, new_logits, _, _), _, _ = layer_problem(gen, "sigmoid_grouped_topk_bias", 17)
        x.copy_(new_x)
        logits.copy_(new_logits)
        graph.replay()
        assert torch.equal(out, tmoe.moe_layer(x, logits, w13, w2, **params))
        assert rel_l2(layer_reference((x, logits, w13, w2), params, shared), out) <= BOUNDS[torch.bfloat16]


def test_capture_with_unchecked_ids_needs_trust(gen):
    args, _, _ = expert_problem(gen, 8)
    warm_up(lambda: tmoe.fused_moe(*args))
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(tmoe.Error, match="trust_routing_values: .* pass trust_routing_values=True"):
        with torch.cuda.graph(graph):
            tmoe.fused_moe(*args)


def test_runs_on_the_current_stream(gen):
    (x, w13, w2, weights, ids), _, _ = expert_problem(gen, 64)
    layer_args, params, shared = layer_problem(gen, "softmax_topk", 64)
    new_x = randn(gen, *x.shape)
    stream = torch.cuda.Stream()  # torch's streams do not wait for the default stream
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        # x changes on `stream` only after a long sleep: work enqueued anywhere else reads the old x.
        torch.cuda._sleep(200_000_000)
        x.copy_(new_x)
        out = tmoe.fused_moe(x, w13, w2, weights, ids)
        layer_out = torch.ops.tmoe.moe_layer(x, *layer_args[1:], **params)
    # The same stream named explicitly while the current stream is the default one.
    explicit_out = tmoe.fused_moe(x, w13, w2, weights, ids, stream=stream.cuda_stream)
    torch.cuda.current_stream().wait_stream(stream)
    reference = reference_layer(new_x, w13, w2, weights, ids)
    assert rel_l2(reference, out) <= BOUNDS[torch.bfloat16]
    assert torch.equal(explicit_out, out)
    assert rel_l2(layer_reference((new_x, *layer_args[1:]), params, shared), layer_out) <= BOUNDS[torch.bfloat16]
