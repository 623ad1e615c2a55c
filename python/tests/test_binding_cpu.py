"""The Python binding on the CPU backend, without torch.

numpy float32 inputs against an independent float64 numpy reference written
here. Needs libtmoe.so: TMOE_LIBRARY names it or its build directory. Inputs are
random on every run; each test prints its seed, and TMOE_TEST_SEED=<seed>
replays it.
"""
import concurrent.futures
import ctypes
import os
import pathlib
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest

import tmoe
from tmoe import _capi

REPO = pathlib.Path(__file__).resolve().parents[2]
BOUND_F32 = 1e-5
BOUND_F16 = 2e-3  # the bench's bound for f16


@pytest.fixture
def rng():
    seed = int(os.environ.get("TMOE_TEST_SEED", np.random.SeedSequence().entropy % 2**63))
    print(f"seed {seed} (TMOE_TEST_SEED={seed} replays it)")
    return np.random.default_rng(seed)


# ---- float64 reference ---------------------------------------------------------------------------------------

def silu(v):
    return v / (1.0 + np.exp(-v))


def swiglu_mlp(x, w13, w2):
    """x [n,H] @ w13 [2I,H] -> silu(gate) * up -> @ w2 [H,I]."""
    i = w13.shape[0] // 2
    gate_up = x @ w13.T
    return (silu(gate_up[:, :i]) * gate_up[:, i:]) @ w2.T


def reference_layer(x, w13, w2, weights, ids, shared=None):
    x = x.astype(np.float64)
    out = np.zeros_like(x)
    for e in range(w13.shape[0]):
        t, j = np.nonzero(ids == e)
        if t.size:
            y = swiglu_mlp(x[t], w13[e].astype(np.float64), w2[e].astype(np.float64))
            np.add.at(out, t, weights[t, j, None].astype(np.float64) * y)
    if shared is not None:
        out += swiglu_mlp(x, *(w.astype(np.float64) for w in shared))
    return out


def ranked(scores):
    """Indices by descending score, ties to the lower index."""
    return np.argsort(-scores, kind="stable")


def reference_route(logits, mode, k, renormalize=False, n_group=1, topk_group=1, scale=1.0, bias=None):
    logits = logits.astype(np.float64)
    n_tokens, n_experts = logits.shape
    ids = np.empty((n_tokens, k), np.int64)
    weights = np.empty((n_tokens, k))
    for t, row in enumerate(logits):
        if mode == "softmax_topk":
            probs = np.exp(row - row.max())
            probs /= probs.sum()
            chosen = ranked(probs)[:k]
            w = probs[chosen]
            if renormalize:
                w = w / w.sum()
        elif mode == "topk_softmax":
            chosen = ranked(row)[:k]
            w = np.exp(row[chosen] - row[chosen[0]])
            w /= w.sum()
        else:
            scores = 1.0 / (1.0 + np.exp(-row))
            biased = scores + (0.0 if bias is None else bias.astype(np.float64))
            size = n_experts // n_group
            groups = biased.reshape(n_group, size)
            group_scores = -np.sort(-groups, axis=1)[:, :min(2, size)].sum(axis=1)
            candidates = np.full(n_experts, -np.inf)
            for g in ranked(group_scores)[:topk_group]:
                candidates[g * size:(g + 1) * size] = groups[g]
            chosen = ranked(candidates)[:k]
            w = scores[chosen]
            if renormalize:
                w = w / w.sum()
            w = w * scale
        ids[t], weights[t] = chosen, w
    return ids, weights


def rel_l2(ref, actual):
    return float(np.linalg.norm(actual.astype(np.float64) - ref) / np.linalg.norm(ref))


# ---- inputs --------------------------------------------------------------------------------------------------

def make_weights(rng, n_experts, hidden, inter, dtype=np.float32, shared_inter=0):
    """w13, w2 (and the shared expert's, or None), scaled so activations stay O(1)."""
    w13 = (rng.standard_normal((n_experts, 2 * inter, hidden)) / np.sqrt(hidden)).astype(dtype)
    w2 = (rng.standard_normal((n_experts, hidden, inter)) / np.sqrt(inter)).astype(dtype)
    shared = None
    if shared_inter:
        shared = ((rng.standard_normal((2 * shared_inter, hidden)) / np.sqrt(hidden)).astype(dtype),
                  (rng.standard_normal((hidden, shared_inter)) / np.sqrt(shared_inter)).astype(dtype))
    return w13, w2, shared


def make_ids(rng, n_tokens, n_experts, k):
    ids = np.stack([rng.permutation(n_experts)[:k] for _ in range(n_tokens)]).astype(np.int32)
    weights = rng.uniform(0.05, 1.0, (n_tokens, k)).astype(np.float32)
    return ids, weights


def spaced_logits(rng, n_tokens, n_experts):
    """Rows of evenly spaced values in random order, jittered by 5% of the spacing: f32 and f64 routing rank
    them alike (a near-tie could make the two precisions pick different experts)."""
    spacing = 8.0 / n_experts
    order = np.stack([rng.permutation(n_experts) for _ in range(n_tokens)])
    return ((order - 0.5 * n_experts + rng.uniform(-0.05, 0.05, order.shape)) * spacing).astype(np.float32)


def spaced_sigmoid_logits(rng, n_tokens, n_experts, n_group):
    """The same in sigmoid-score space, with a clear group ranking too: a group of rank r holds the scores r*G
    .. r*G+G-1 spacings. The bias shifts whole groups by -1, 0 or +1 times the score range, which changes the
    selection and keeps every biased score and group sum distinct."""
    size = n_experts // n_group
    spacing = 0.8 / n_experts
    logits = np.empty((n_tokens, n_experts))
    for t in range(n_tokens):
        group_rank = rng.permutation(n_group)
        for g in range(n_group):
            steps = group_rank[g] * size + rng.permutation(size) + 0.5 + rng.uniform(-0.05, 0.05, size)
            score = 0.1 + steps * spacing
            logits[t, g * size:(g + 1) * size] = np.log(score / (1.0 - score))
    bias = np.repeat(rng.integers(-1, 2, n_group) * 0.8, size).astype(np.float32)
    return logits.astype(np.float32), bias


def poisoned(shape, dtype=np.float32):
    return np.full(shape, np.nan, dtype)


# ---- the layer -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_tokens", [1, 37, 130])
@pytest.mark.parametrize("shared_inter", [0, 24])
def test_fused_moe_matches_reference(rng, n_tokens, shared_inter):
    hidden, inter, n_experts, k = 64, 48, 8, 2
    x = rng.standard_normal((n_tokens, hidden)).astype(np.float32)
    w13, w2, shared = make_weights(rng, n_experts, hidden, inter, shared_inter=shared_inter)
    ids, weights = make_ids(rng, n_tokens, n_experts, k)
    out = poisoned((n_tokens, hidden))
    kwargs = {"shared_w13": shared[0], "shared_w2": shared[1]} if shared else {}
    result = tmoe.fused_moe(x, w13, w2, weights, ids, out=out, backend="cpu", **kwargs)
    assert result is out
    assert np.isfinite(out).all(), "out was not fully written"
    assert rel_l2(reference_layer(x, w13, w2, weights, ids, shared), out) <= BOUND_F32


def test_fused_moe_allocates_out_for_numpy(rng):
    x = rng.standard_normal((9, 32)).astype(np.float32)
    w13, w2, _ = make_weights(rng, 4, 32, 16)
    ids, weights = make_ids(rng, 9, 4, 2)
    out = tmoe.fused_moe(x, w13, w2, weights, ids)  # backend "auto": x is in host memory
    assert isinstance(out, np.ndarray) and out.shape == x.shape and out.dtype == np.float32
    assert rel_l2(reference_layer(x, w13, w2, weights, ids), out) <= BOUND_F32


def test_fused_moe_float16(rng):
    x = rng.standard_normal((21, 64)).astype(np.float16)
    w13, w2, shared = make_weights(rng, 6, 64, 32, dtype=np.float16, shared_inter=16)
    ids, weights = make_ids(rng, 21, 6, 3)
    out = poisoned((21, 64), np.float16)
    tmoe.fused_moe(x, w13, w2, weights, ids, out=out, shared_w13=shared[0], shared_w2=shared[1], backend="cpu")
    assert np.isfinite(out).all()
    assert rel_l2(reference_layer(x, w13, w2, weights, ids, shared), out) <= BOUND_F16


ROUTING_CASES = {
    "softmax_topk_renormalize": dict(routing="softmax_topk", top_k=2, renormalize=True),
    "softmax_topk": dict(routing="softmax_topk", top_k=3),
    "topk_softmax": dict(routing="topk_softmax", top_k=2),
    "sigmoid_grouped_topk_bias": dict(routing="sigmoid_grouped_topk", top_k=4, renormalize=True, n_group=4,
                                      topk_group=2, routed_scaling_factor=2.5),
}


@pytest.mark.parametrize("case", ROUTING_CASES)
@pytest.mark.parametrize("shared_inter", [0, 40])
def test_moe_layer_matches_reference(rng, case, shared_inter):
    n_tokens, hidden, inter, n_experts = 45, 64, 32, 16
    params = ROUTING_CASES[case]
    x = rng.standard_normal((n_tokens, hidden)).astype(np.float32)
    w13, w2, shared = make_weights(rng, n_experts, hidden, inter, shared_inter=shared_inter)
    kwargs = {"shared_w13": shared[0], "shared_w2": shared[1]} if shared else {}
    bias = None
    if params["routing"] == "sigmoid_grouped_topk":
        logits, bias = spaced_sigmoid_logits(rng, n_tokens, n_experts, params["n_group"])
        kwargs["correction_bias"] = bias
    else:
        logits = spaced_logits(rng, n_tokens, n_experts)
    out = poisoned((n_tokens, hidden))
    result = tmoe.moe_layer(x, logits, w13, w2, out=out, backend="cpu", **params, **kwargs)
    assert result is out
    assert np.isfinite(out).all(), "out was not fully written"

    ids, weights = reference_route(logits, params["routing"], params["top_k"], params.get("renormalize", False),
                                   params.get("n_group", 1), params.get("topk_group", 1),
                                   params.get("routed_scaling_factor", 1.0), bias)
    assert rel_l2(reference_layer(x, w13, w2, weights, ids, shared), out) <= BOUND_F32


def test_plan_describes_without_running(rng):
    x = rng.standard_normal((5, 32)).astype(np.float32)
    w13, w2, _ = make_weights(rng, 4, 32, 16)
    ids, weights = make_ids(rng, 5, 4, 2)
    out = poisoned((5, 32))
    plan = tmoe.plan(tmoe.fused_moe, x, w13, w2, weights, ids, out=out, backend="cpu")
    assert isinstance(plan, tmoe.Plan)
    assert plan.launches == 0  # the CPU backend launches no kernels
    assert plan.description.startswith("cpu: ")
    assert np.isnan(out).all(), "planning wrote out"
    logits = spaced_logits(rng, 5, 4)
    assert tmoe.plan(tmoe.moe_layer, x, logits, w13, w2, top_k=2) == plan  # out allocated, backend from x
    # The same checks as a call: bad arguments are named, an unknown function is refused.
    with pytest.raises(tmoe.Error, match=r"topk_weights: expected shape \[T=5, k=1\], got \[5, 2\]"):
        tmoe.plan(tmoe.fused_moe, x, w13, w2, weights, ids[:, :1].copy())
    for not_an_entry_point in (print, [tmoe.fused_moe]):
        with pytest.raises(tmoe.Error, match="fn: expected tmoe.fused_moe or tmoe.moe_layer, got "):
            tmoe.plan(not_an_entry_point, x)
    assert tmoe.fused_moe.__name__ == "fused_moe" and "vLLM" in tmoe.fused_moe.__doc__


def test_zero_tokens(rng):
    w13, w2, _ = make_weights(rng, 4, 16, 8)
    x = np.empty((0, 16), np.float32)
    out = tmoe.fused_moe(x, w13, w2, np.empty((0, 2), np.float32), np.empty((0, 2), np.int32), backend="cpu")
    assert out.shape == (0, 16)


class Producer:
    """A DLPack producer that is neither numpy nor torch; `legacy` exports the pre-1.0 capsule."""

    def __init__(self, array, legacy=False):
        self.array, self.legacy = array, legacy

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()

    def __dlpack__(self, *, stream=None, **versioned):
        if self.legacy and versioned:
            raise TypeError("no max_version")
        return self.array.__dlpack__(stream=stream, **versioned)


@pytest.mark.parametrize("legacy", [False, True])
def test_other_dlpack_producers(rng, legacy):
    x = rng.standard_normal((11, 32)).astype(np.float32)
    w13, w2, _ = make_weights(rng, 4, 32, 16)
    ids, weights = make_ids(rng, 11, 4, 2)
    out = poisoned((11, 32))
    wrap = lambda a: Producer(a, legacy)  # noqa: E731
    with pytest.raises(tmoe.Error, match="out: required"):
        tmoe.fused_moe(wrap(x), wrap(w13), wrap(w2), wrap(weights), wrap(ids))
    tmoe.fused_moe(wrap(x), wrap(w13), wrap(w2), wrap(weights), wrap(ids), out=wrap(out))
    assert rel_l2(reference_layer(x, w13, w2, weights, ids), out) <= BOUND_F32


def test_read_only_inputs_and_output(rng):
    x = rng.standard_normal((5, 32)).astype(np.float32)
    w13, w2, _ = make_weights(rng, 4, 32, 16)
    ids, weights = make_ids(rng, 5, 4, 2)
    out = poisoned(x.shape)
    out.setflags(write=False)
    with pytest.raises(tmoe.Error, match="out: .*read.?only"):
        tmoe.fused_moe(x, w13, w2, weights, ids, out=out)
    for a in (x, w13, w2, ids, weights):
        a.setflags(write=False)
    if np.lib.NumpyVersion(np.__version__) < "2.1.0":
        # Only the versioned DLPack capsule (numpy >= 2.1) can flag an export read-only.
        with pytest.raises(tmoe.Error, match="x: cannot be exported through DLPack"):
            tmoe.fused_moe(x, w13, w2, weights, ids)
    else:
        result = tmoe.fused_moe(x, w13, w2, weights, ids)
        assert rel_l2(reference_layer(x, w13, w2, weights, ids), result) <= BOUND_F32


def test_threads_share_the_cached_context(rng):
    x = rng.standard_normal((64, 64)).astype(np.float32)
    w13, w2, _ = make_weights(rng, 8, 64, 32)
    ids, weights = make_ids(rng, 64, 8, 2)
    ref = reference_layer(x, w13, w2, weights, ids)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: tmoe.fused_moe(x, w13, w2, weights, ids, backend="cpu"), range(16)))
    for out in outs:
        assert rel_l2(ref, out) <= BOUND_F32


# ---- errors --------------------------------------------------------------------------------------------------

@pytest.fixture
def problem(rng):
    n_tokens, hidden, inter, n_experts, k = 7, 32, 16, 4, 2
    x = rng.standard_normal((n_tokens, hidden)).astype(np.float32)
    w13, w2, _ = make_weights(rng, n_experts, hidden, inter)
    ids, weights = make_ids(rng, n_tokens, n_experts, k)
    return dict(x=x, w13=w13, w2=w2, topk_weights=weights, topk_ids=ids)


def call_rejected(problem, match, **changes):
    """Runs fused_moe with `changes`; expects a tmoe.Error matching `match` and out untouched."""
    out = changes.pop("out", poisoned(problem["x"].shape))
    backend = changes.pop("backend", "cpu")
    with pytest.raises(tmoe.Error, match=match) as info:
        tmoe.fused_moe(**{**problem, **changes}, out=out, backend=backend)
    assert np.isnan(out).all(), "out was written by a failed call"
    return info.value


def test_wrong_shape_names_the_argument(problem):
    e = call_rejected(problem, r"^INVALID_ARGUMENT: w2: expected shape", w2=problem["w2"][:, :, :8].copy())
    assert e.status is tmoe.Status.INVALID_ARGUMENT and e.status.name == "INVALID_ARGUMENT"
    assert isinstance(e, RuntimeError)
    assert repr(pickle.loads(pickle.dumps(e))) == repr(e)
    assert e.message.startswith("w2: expected shape [E=4, H=32, I=16], got [4, 32, 8]")


def test_non_contiguous_rejected(problem):
    call_rejected(problem, "x: expected contiguous", x=np.asfortranarray(problem["x"]))
    call_rejected(problem, "w13: expected contiguous", w13=np.repeat(problem["w13"], 2, axis=2)[:, :, ::2])
    strided_out = np.full((7, 64), np.nan, np.float32)[:, ::2]
    call_rejected(problem, "out: expected contiguous", out=strided_out)


@pytest.mark.parametrize("bad", [4, -1])
def test_bad_ids_rejected(problem, bad):
    ids = problem["topk_ids"].copy()
    ids[3, 1] = bad
    call_rejected(problem, r"topk_ids: expected expert ids in \[0, E=4\), got %d at token 3, slot 1" % bad,
                  topk_ids=ids)


@pytest.mark.parametrize("bad", [-0.5, np.nan, np.inf])
def test_bad_weights_rejected(problem, bad):
    weights = problem["topk_weights"].copy()
    weights[6, 0] = bad
    call_rejected(problem, "topk_weights: expected finite weights >= 0", topk_weights=weights)


def test_binding_side_errors_name_the_argument(problem):
    call_rejected(problem, "x: unsupported dtype float64; expected float32, float16, bfloat16 or int32",
                  x=problem["x"].astype(np.float64))
    call_rejected(problem, "topk_ids: unsupported dtype int64", topk_ids=problem["topk_ids"].astype(np.int64))
    call_rejected(problem, "w2: expected rank <= 4", w2=problem["w2"].reshape(1, 1, *problem["w2"].shape))
    call_rejected(problem, "shared_w13: expected a tensor", shared_w13=[[1.0]], shared_w2=[[1.0]])
    call_rejected(problem, "x: is in cpu memory, but backend='gpu'", backend="gpu")
    call_rejected(problem, "backend: expected", backend="tpu")
    call_rejected(problem, "shared_w2: the shared expert needs both", shared_w13=np.zeros((8, 32), np.float32))
    with pytest.raises(tmoe.Error, match="topk_ids: required"):
        tmoe.fused_moe(problem["x"], problem["w13"], problem["w2"], problem["topk_weights"], None)


@pytest.mark.parametrize("match, kwargs", [
    ("routing: expected one of", dict(routing="softmax")),
    (r"routing.top_k: expected 1 <= k <= E=4, got 5", dict(top_k=5)),
    ("top_k: expected a 32-bit integer", dict(top_k=2**40)),
    ("routing.n_group: expected a divisor of E=4", dict(routing="sigmoid_grouped_topk", n_group=3)),
    ("routing.correction_bias: expected shape",
     dict(routing="sigmoid_grouped_topk", correction_bias=np.zeros(5, np.float32))),
    ("router_logits: expected shape", dict(router_columns=3)),
])
def test_moe_layer_errors(problem, rng, match, kwargs):
    logits = spaced_logits(rng, 7, kwargs.pop("router_columns", 4))
    out = poisoned(problem["x"].shape)
    with pytest.raises(tmoe.Error, match=match):
        tmoe.moe_layer(problem["x"], logits, problem["w13"], problem["w2"], out=out, backend="cpu",
                       **{"top_k": 2, **kwargs})
    assert np.isnan(out).all()


# ---- contexts, library ---------------------------------------------------------------------------------------

def test_contexts():
    assert tmoe.get_context("cpu") is tmoe.get_context("cpu")
    assert tmoe.device_count("cpu") == 1
    with tmoe.Context("cpu") as ctx:
        assert ctx.backend_name == "cpu" and ctx.device_name
    assert ctx.closed
    ctx.close()  # closing twice is harmless
    with pytest.raises(tmoe.Error, match="ctx: the context is closed"):
        _ = ctx.backend_name
    with pytest.raises(tmoe.Error, match="device: the CPU backend has one device") as info:
        tmoe.Context("cpu", 1)
    assert info.value.status is tmoe.Status.INVALID_ARGUMENT
    with pytest.raises(tmoe.Error, match="backend: expected 'cpu' or 'gpu'"):
        tmoe.get_context("auto")


def library_path():
    return pathlib.Path(_capi.lib()._name)


def run_python(code, cwd=None, unset=(), **env):
    env = {**{k: v for k, v in os.environ.items() if k not in unset}, **env}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=cwd or pathlib.Path(tmoe.__file__).parents[1])


def test_library_lookup():
    for form in (library_path(), library_path().parent):
        done = run_python("import tmoe; print(tmoe.version())", TMOE_LIBRARY=str(form))
        assert done.returncode == 0, done.stderr
    done = run_python("import tmoe; tmoe.version()", TMOE_LIBRARY="/nonexistent/libtmoe.so")
    assert done.returncode != 0
    assert "TMOE_LIBRARY='/nonexistent/libtmoe.so': no such file" in done.stderr
    done = run_python("import sys, tmoe; print('torch' in sys.modules)")
    assert done.stdout.strip() == "False", "import tmoe must not import torch"


def test_library_lookup_without_tmoe_library(tmp_path):
    """A copy of the package in <tmp>/python/tmoe: <tmp>/build/libtmoe.so, then the system loader."""
    shutil.copytree(pathlib.Path(tmoe.__file__).parent, tmp_path / "python" / "tmoe")
    show = "import tmoe, tmoe._capi; tmoe.version(); print(tmoe._capi.lib()._name)"
    unset = ("TMOE_LIBRARY", "LD_LIBRARY_PATH")
    done = run_python(show, tmp_path / "python", unset)
    assert done.returncode != 0 and "libtmoe.so not found: set TMOE_LIBRARY" in done.stderr
    done = run_python(show, tmp_path / "python", unset, LD_LIBRARY_PATH=str(library_path().parent))
    assert done.returncode == 0 and done.stdout.strip() == "libtmoe.so", done.stderr
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "libtmoe.so").symlink_to(library_path())
    done = run_python(show, tmp_path / "python", unset)
    assert done.returncode == 0 and done.stdout.strip() == str(tmp_path / "build" / "libtmoe.so"), done.stderr


# ---- struct layout against the C header -------------------------------------------------------------------------

C_STRUCTS = {"tmoe_tensor": _capi.Tensor, "tmoe_routing": _capi.Routing, "tmoe_moe_args": _capi.MoeArgs}
C_ENUMS = {"TMOE_DTYPE_": _capi.DType, "TMOE_ROUTING_": _capi.RoutingMode, "TMOE_BACKEND_": _capi.Backend}


def c_enum_names():
    names = {("TMOE_SUCCESS" if s is _capi.Status.SUCCESS else "TMOE_ERROR_" + s.name): s.value
             for s in _capi.Status}
    for prefix, enum in C_ENUMS.items():
        names.update({prefix + m.name: m.value for m in enum})
    return names


def compile_and_run(tmp_path, body):
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "the layout test needs a C compiler (gcc)"
    source = tmp_path / "layout.c"
    source.write_text("#include <stddef.h>\n#include <stdio.h>\n#include <tmoe/tmoe.h>\n"
                      "int main(void) {\n" + body + "  return 0;\n}\n")
    exe = tmp_path / "layout"
    subprocess.run([cc, "-std=c11", "-Wall", "-Werror", "-I", str(REPO / "include"), str(source), "-o", str(exe)],
                   check=True)
    return subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines()


def test_struct_layout_matches_c_header(tmp_path):
    body, expected = [], []
    for c_name, cls in C_STRUCTS.items():
        body.append(f'  printf("{c_name} size %zu align %zu\\n", sizeof({c_name}), _Alignof({c_name}));')
        expected.append(f"{c_name} size {ctypes.sizeof(cls)} align {ctypes.alignment(cls)}")
        for field, ctype in cls._fields_:
            body.append(f'  printf("{c_name}.{field} offset %zu size %zu\\n", offsetof({c_name}, {field}), '
                        f'sizeof((({c_name}*)0)->{field}));')
            expected.append(f"{c_name}.{field} offset {getattr(cls, field).offset} size {ctypes.sizeof(ctype)}")
    for name, value in c_enum_names().items():
        body.append(f'  printf("{name} %d\\n", (int){name});')
        expected.append(f"{name} {value}")
    body.append('  printf("TMOE_MAX_RANK %d\\n", TMOE_MAX_RANK);')
    expected.append(f"TMOE_MAX_RANK {_capi.MAX_RANK}")
    body.append('  printf("version %d.%d\\n", TMOE_VERSION_MAJOR, TMOE_VERSION_MINOR);')
    expected.append("version " + ".".join(tmoe.version().split(".")[:2]))
    assert compile_and_run(tmp_path, "\n".join(body) + "\n") == expected
