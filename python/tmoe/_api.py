"""Contexts and the layer entry points over the C ABI."""
import collections
import collections.abc
import ctypes
import functools
import operator
import sys
import threading

from . import _capi, _tensors
from ._capi import Backend, MoeArgs, RoutingMode, invalid

_BACKENDS = {"auto": Backend.AUTO, "cpu": Backend.CPU, "gpu": Backend.GPU}
_ROUTING = {
    "softmax_topk": RoutingMode.SOFTMAX_TOPK,
    "topk_softmax": RoutingMode.TOPK_SOFTMAX,
    "sigmoid_grouped_topk": RoutingMode.SIGMOID_GROUPED_TOPK,
}


def _backend(backend):
    if backend not in _BACKENDS:
        raise invalid(f"backend: expected 'auto', 'cpu' or 'gpu', got {backend!r}")
    return _BACKENDS[backend]


def _i32(name, value):
    # ctypes would silently wrap an out-of-range value.
    value = operator.index(value)
    if not -2**31 <= value < 2**31:
        raise invalid(f"{name}: expected a 32-bit integer, got {value}")
    return value


def version():
    return _capi.lib().tmoe_version().decode()


def build_info():
    return _capi.lib().tmoe_build_info().decode()


def device_count(backend):
    """Devices the backend ("cpu" or "gpu") sees: 1 for the CPU, 0 where no GPU or driver exists."""
    count = ctypes.c_int32()
    _capi.check(_capi.lib().tmoe_device_count(_backend(backend), ctypes.byref(count)))
    return count.value


class Context:
    """One backend on one device (a tmoe_context) and what it caches.

    The C context is not thread-safe; calls through this object are serialised
    by a lock (ctypes releases the GIL during them). close() frees it; so does
    garbage collection.
    """

    def __init__(self, backend="auto", device=0):
        self._lib = _capi.lib()  # held so close() still works while the interpreter shuts down
        self._handle = None
        self._lock = threading.Lock()
        handle = ctypes.c_void_p()
        _capi.check(self._lib.tmoe_context_create(_backend(backend), _i32("device", device), ctypes.byref(handle)))
        self._handle = handle

    @property
    def closed(self):
        return self._handle is None

    @property
    def backend_name(self):
        return self._lib.tmoe_context_backend_name(self._live()).decode()

    @property
    def device_name(self):
        return self._lib.tmoe_context_device_name(self._live()).decode()

    def _live(self):
        if self._handle is None:
            raise invalid("ctx: the context is closed")
        return self._handle

    def workspace_size(self, args):
        """Bytes of device workspace the forward of `args` (a MoeArgs) needs when the caller provides it."""
        size = ctypes.c_size_t()
        with self._lock:
            _capi.check(self._lib.tmoe_moe_workspace_size(self._live(), ctypes.byref(args), ctypes.byref(size)))
        return size.value

    def forward(self, args):
        with self._lock:
            _capi.check(self._lib.tmoe_moe_forward(self._live(), ctypes.byref(args)))

    def plan(self, args):
        """What the forward of `args` would launch, as a Plan (nothing runs)."""
        launches = ctypes.c_int32()
        description = ctypes.create_string_buffer(4096)
        with self._lock:
            _capi.check(self._lib.tmoe_moe_plan(self._live(), ctypes.byref(args), ctypes.byref(launches), description,
                                                len(description)))
        return Plan(launches.value, description.value.decode())

    def close(self):
        with self._lock:
            if self._handle is not None:
                self._lib.tmoe_context_destroy(self._handle)
                self._handle = None

    def __del__(self):
        if getattr(self, "_handle", None) is not None:
            self._lib.tmoe_context_destroy(self._handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        if self.closed:
            return "<tmoe.Context closed>"
        return f"<tmoe.Context {self.backend_name} {self.device_name!r}>"


# launches: kernel launches of one forward (0 on the CPU); description: the path, its
# tiles, whether a tuned table or the heuristic chose them, and every kernel variant.
Plan = collections.namedtuple("Plan", ["launches", "description"])

_contexts = {}
_contexts_lock = threading.Lock()


def get_context(backend, device=0):
    """The shared Context of ("cpu" or "gpu", device), created on first use (again if it was closed)."""
    if backend not in ("cpu", "gpu"):
        raise invalid(f"backend: expected 'cpu' or 'gpu', got {backend!r}")
    key = (backend, device)
    with _contexts_lock:
        ctx = _contexts.get(key)
        if ctx is None or ctx.closed:
            ctx = _contexts[key] = Context(backend, device)
        return ctx


def _allocate_out(x):
    if _tensors.is_torch(x):
        return sys.modules["torch"].empty_like(x, memory_format=sys.modules["torch"].contiguous_format)
    if _tensors.is_numpy(x):
        return sys.modules["numpy"].empty_like(x, order="C")
    raise invalid(f"out: required when x is a {type(x).__name__} (outputs are allocated only for torch and numpy)")


class _Call:
    """One layer call before it runs: `tensors` (Python name -> (object or None, struct, field)) go into `args`."""

    def __init__(self, args, tensors, out, backend, stream, trust_routing_values):
        self.args, self.tensors, self.out, self.backend = args, tensors, out, backend
        self.stream, self.trust_routing_values = stream, trust_routing_values

    def device(self):
        """Where x lives, checked against the backend asked for."""
        device = _tensors.device_of("x", self.tensors["x"][0])
        if _backend(self.backend) != Backend.AUTO and self.backend != device.kind:
            raise invalid(f"x: is in {device} memory, but backend={self.backend!r} needs "
                          f"{'host' if self.backend == 'cpu' else 'GPU'} memory")
        return device


def _plan(call):
    device = call.device()
    out = call.out if call.out is not None else _allocate_out(call.tensors["x"][0])
    views = _describe(call.args, call.tensors, out, device, _tensors.dlpack_stream(device, None))  # noqa: F841
    return get_context(device.kind, device.index).plan(call.args)  # while views holds the exports


def _describe(args, tensors, out, device, dl_stream):
    """Exports every tensor and sets its descriptor in `args`; returns the exports, to be held during the call."""
    views = []
    for name, (obj, struct, field) in [*tensors.items(), ("out", (out, args, "out"))]:
        if obj is None:
            continue
        view = _tensors.view(name, obj, dl_stream)
        if view.device != device:
            raise invalid(f"{name}: is on {view.device}, expected {device} like x")
        setattr(struct, field, view.desc)
        views.append(view)
    return views


def _run(call):
    args, tensors, out = call.args, call.tensors, call.out
    stream, trust_routing_values = call.stream, call.trust_routing_values
    x = tensors["x"][0]
    device = call.device()
    torch_gpu = device.kind == "gpu" and _tensors.is_torch(x)
    if torch_gpu:
        torch = sys.modules["torch"]
        current = torch.cuda.current_stream(device.index).cuda_stream
    if stream is not None:
        stream = operator.index(stream)
    elif torch_gpu:
        stream = current
    dl_stream = _tensors.dlpack_stream(device, stream)
    if out is None:
        out = _allocate_out(x)

    views = _describe(args, tensors, out, device, dl_stream)  # held until the call returns
    if views[-1].read_only:
        raise invalid("out: the export is read-only")
    args.stream = stream or None
    args.trust_routing_values = 1 if trust_routing_values else 0

    ctx = get_context(device.kind, device.index)
    workspace = None
    if torch_gpu:
        # Checking given ids copies them to the host and waits, which a graph capture forbids.
        if "topk_ids" in tensors and not trust_routing_values and torch.cuda.is_current_stream_capturing():
            raise invalid("trust_routing_values: given topk_ids cannot be checked during CUDA-graph capture; "
                          "pass trust_routing_values=True")
        # Workspace from torch's caching allocator: stream-ordered, and drawn from the
        # graph's pool during capture (the library's own would allocate synchronously).
        size = ctx.workspace_size(args)
        if size:
            workspace = torch.empty(size, dtype=torch.uint8, device=x.device)
            args.workspace = workspace.data_ptr()
            args.workspace_bytes = size
            if stream != current:  # keep the allocator from reusing it before `stream` is done with it
                workspace.record_stream(torch.cuda.ExternalStream(stream, device=x.device))
    ctx.forward(args)
    return out


def _entry_point(name, call):
    """The public function `name`: runs what `call` (same signature and docstring) describes."""
    @functools.wraps(call)
    def run(*args, **kwargs):
        return _run(call(*args, **kwargs))
    run.__name__ = run.__qualname__ = name
    return run


def _fused_moe_call(x, w13, w2, topk_weights, topk_ids, *, out=None, shared_w13=None, shared_w2=None,
                    backend="auto", trust_routing_values=False, stream=None):
    """The experts of an MoE layer for given routing, as vLLM's fused_experts.

    x [T,H]; w13 [E,2I,H] (gate rows, then up rows); w2 [E,H,I]; topk_weights
    [T,k] float32; topk_ids [T,k] int32; optional shared expert shared_w13
    [2Is,H], shared_w2 [H,Is]. x, weights and out share one dtype (bfloat16 or
    float16; float32 on the CPU). Writes and returns out [T,H], allocated like x
    for torch and numpy inputs when not given.

    backend: "auto" (where x lives), "cpu" or "gpu". trust_routing_values skips
    the check of ids and weights (a host round trip on the GPU; required inside
    CUDA-graph capture). stream: a CUstream/hipStream_t handle as an int; by
    default torch's current stream for torch tensors, else the default stream.
    Raises tmoe.Error naming the argument on any invalid input; out is then untouched.
    """
    args = MoeArgs()
    tensors = {
        "x": (x, args, "x"),
        "w13": (w13, args, "w13"),
        "w2": (w2, args, "w2"),
        "topk_weights": (topk_weights, args, "topk_weights"),
        "topk_ids": (topk_ids, args, "topk_ids"),
        "shared_w13": (shared_w13, args, "shared_w13"),
        "shared_w2": (shared_w2, args, "shared_w2"),
    }
    for name in ("topk_weights", "topk_ids"):
        if tensors[name][0] is None:
            raise invalid(f"{name}: required")
    return _Call(args, tensors, out, backend, stream, trust_routing_values)


def _moe_layer_call(x, router_logits, w13, w2, *, top_k, routing="softmax_topk", renormalize=False, n_group=1,
                    topk_group=1, routed_scaling_factor=1.0, correction_bias=None, shared_w13=None, shared_w2=None,
                    out=None, backend="auto", stream=None):
    """The whole MoE layer from router logits [T,E] (float32, bfloat16 or float16).

    routing: "softmax_topk" (renormalize optional; Mixtral, Qwen3), "topk_softmax"
    (gpt-oss) or "sigmoid_grouped_topk" (correction_bias [E] float32, n_group,
    topk_group, renormalize, routed_scaling_factor; DeepSeek-V3). Other arguments
    as fused_moe.
    """
    if routing not in _ROUTING:
        raise invalid(f"routing: expected one of {', '.join(_ROUTING)}, got {routing!r}")
    args = MoeArgs()
    args.routing.mode = _ROUTING[routing]
    args.routing.top_k = _i32("top_k", top_k)
    args.routing.renormalize = 1 if renormalize else 0
    args.routing.n_group = _i32("n_group", n_group)
    args.routing.topk_group = _i32("topk_group", topk_group)
    args.routing.routed_scaling_factor = float(routed_scaling_factor)
    if router_logits is None:
        raise invalid("router_logits: required")
    tensors = {
        "x": (x, args, "x"),
        "router_logits": (router_logits, args, "router_logits"),
        "w13": (w13, args, "w13"),
        "w2": (w2, args, "w2"),
        "correction_bias": (correction_bias, args.routing, "correction_bias"),
        "shared_w13": (shared_w13, args, "shared_w13"),
        "shared_w2": (shared_w2, args, "shared_w2"),
    }
    return _Call(args, tensors, out, backend, stream, False)


fused_moe = _entry_point("fused_moe", _fused_moe_call)
moe_layer = _entry_point("moe_layer", _moe_layer_call)
_CALLS = {fused_moe: _fused_moe_call, moe_layer: _moe_layer_call}


def plan(fn, *args, **kwargs):
    """What tmoe.fused_moe or tmoe.moe_layer would launch for these arguments, as a
    Plan(launches, description); nothing runs and out is not written.

        tmoe.plan(tmoe.moe_layer, x, logits, w13, w2, top_k=8, renormalize=True)
    """
    call = _CALLS.get(fn) if isinstance(fn, collections.abc.Hashable) else None
    if call is None:
        raise invalid(f"fn: expected tmoe.fused_moe or tmoe.moe_layer, got {fn!r}")
    return _plan(call(*args, **kwargs))
