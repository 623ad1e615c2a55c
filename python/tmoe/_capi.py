"""ctypes mirror of include/tmoe/tmoe.h, the loading of libtmoe.so and tmoe.Error.

The structures must match the C header byte for byte: tests/test_binding_cpu.py
compiles the header and compares every size and offset.
"""
import ctypes
import enum
import os
import pathlib
import threading

MAX_RANK = 4


class Status(enum.IntEnum):
    SUCCESS = 0
    INVALID_ARGUMENT = 1
    UNSUPPORTED = 2
    NO_DEVICE = 3
    DRIVER = 4
    OUT_OF_MEMORY = 5
    INTERNAL = 6


class DType(enum.IntEnum):
    F32 = 0
    F16 = 1
    BF16 = 2
    I32 = 3


class RoutingMode(enum.IntEnum):
    SOFTMAX_TOPK = 0
    TOPK_SOFTMAX = 1
    SIGMOID_GROUPED_TOPK = 2


class Backend(enum.IntEnum):
    AUTO = 0
    CPU = 1
    GPU = 2


# C enums are int-sized on every ABI the library builds for.
_enum = ctypes.c_int


class Tensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("dtype", _enum),
        ("rank", ctypes.c_int32),
        ("shape", ctypes.c_int64 * MAX_RANK),
        ("strides", ctypes.c_int64 * MAX_RANK),
    ]


class Routing(ctypes.Structure):
    _fields_ = [
        ("mode", _enum),
        ("top_k", ctypes.c_int32),
        ("renormalize", ctypes.c_int32),
        ("n_group", ctypes.c_int32),
        ("topk_group", ctypes.c_int32),
        ("routed_scaling_factor", ctypes.c_float),
        ("correction_bias", Tensor),
    ]


class MoeArgs(ctypes.Structure):
    _fields_ = [
        ("x", Tensor),
        ("router_logits", Tensor),
        ("routing", Routing),
        ("topk_ids", Tensor),
        ("topk_weights", Tensor),
        ("w13", Tensor),
        ("w2", Tensor),
        ("shared_w13", Tensor),
        ("shared_w2", Tensor),
        ("out", Tensor),
        ("stream", ctypes.c_void_p),
        ("workspace", ctypes.c_void_p),
        ("workspace_bytes", ctypes.c_size_t),
        ("trust_routing_values", ctypes.c_int32),
    ]


class Error(RuntimeError):
    """A failure reported by tritonmoe or by this binding's argument checks.

    `status` is a tmoe.Status (its .name, e.g. "INVALID_ARGUMENT", is the status
    name); `message` is the library's text (tmoe_last_error()), which starts with
    the name of the offending argument, e.g. "w2: expected shape ...".
    """

    __module__ = "tmoe"  # its public name, for tracebacks and pickling

    def __init__(self, status, message):
        self.status = Status(status)
        self.message = message
        super().__init__(f"{self.status.name}: {message}")

    def __reduce__(self):
        return Error, (self.status, self.message)


def invalid(message):
    return Error(Status.INVALID_ARGUMENT, message)


_context = ctypes.c_void_p
_PROTOTYPES = {
    "tmoe_version": (ctypes.c_char_p, []),
    "tmoe_build_info": (ctypes.c_char_p, []),
    "tmoe_last_error": (ctypes.c_char_p, []),
    "tmoe_device_count": (_enum, [_enum, ctypes.POINTER(ctypes.c_int32)]),
    "tmoe_context_create": (_enum, [_enum, ctypes.c_int32, ctypes.POINTER(_context)]),
    "tmoe_context_destroy": (_enum, [_context]),
    "tmoe_context_backend_name": (ctypes.c_char_p, [_context]),
    "tmoe_context_device_name": (ctypes.c_char_p, [_context]),
    "tmoe_moe_workspace_size": (_enum, [_context, ctypes.POINTER(MoeArgs), ctypes.POINTER(ctypes.c_size_t)]),
    "tmoe_moe_forward": (_enum, [_context, ctypes.POINTER(MoeArgs)]),
    "tmoe_moe_plan": (_enum, [_context, ctypes.POINTER(MoeArgs), ctypes.POINTER(ctypes.c_int32), ctypes.c_char_p,
                              ctypes.c_size_t]),
}

_lib = None
_lib_lock = threading.Lock()


def _open():
    env = os.environ.get("TMOE_LIBRARY")
    if env:
        # An explicit choice never falls back to another copy.
        path = pathlib.Path(env).absolute()
        if path.is_dir():
            path = path / "libtmoe.so"
        if not path.is_file():
            raise OSError(f"TMOE_LIBRARY={env!r}: no such file (expected libtmoe.so or the build directory holding it)")
        return ctypes.CDLL(str(path))
    build = pathlib.Path(__file__).resolve().parents[2] / "build" / "libtmoe.so"
    if build.is_file():
        return ctypes.CDLL(str(build))
    try:
        return ctypes.CDLL("libtmoe.so")
    except OSError as e:
        raise OSError(
            "libtmoe.so not found: set TMOE_LIBRARY to it (or to its build directory), build it into "
            f"{build.parent} (cmake -S . -B build && cmake --build build --target tmoe), or install it where "
            f"the system loader looks ({e})"
        ) from None


def lib():
    """The loaded libtmoe.so with its prototypes declared (loaded on first use)."""
    global _lib
    with _lib_lock:
        if _lib is None:
            handle = _open()
            for name, (restype, argtypes) in _PROTOTYPES.items():
                fn = getattr(handle, name)
                fn.restype = restype
                fn.argtypes = argtypes
            _lib = handle
        return _lib


def check(status):
    """Raises tmoe.Error for a failed call; read on the calling thread (the message is thread-local)."""
    if status != Status.SUCCESS:
        raise Error(status, lib().tmoe_last_error().decode(errors="replace"))
