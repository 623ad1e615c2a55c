"""Describing the caller's tensors to the C ABI.

torch tensors are read through data_ptr()/dtype/shape/stride() (no export, and
tensors that require grad work); anything else goes through DLPack. Strides are
passed on as they are: the library checks contiguity and names the argument.
"""
import ctypes
import sys
from typing import NamedTuple

from ._capi import MAX_RANK, DType, Tensor, invalid


class Device(NamedTuple):
    kind: str  # "cpu" or "gpu"
    index: int
    rocm: bool  # picks the DLPack stream convention

    def __str__(self):
        return "cpu" if self.kind == "cpu" else f"gpu:{self.index}"


class View(NamedTuple):
    desc: Tensor
    device: Device
    keep: tuple  # owners of the memory, held until the call returns
    read_only: bool


# dlpack.h
_DL_HOST_TYPES = {1, 3, 11}  # kDLCPU, kDLCUDAHost, kDLROCMHost: addressable from the host
_DL_CUDA_TYPES = {2, 13}  # kDLCUDA, kDLCUDAManaged
_DL_ROCM = 10
_DL_FLAG_READ_ONLY = 1
_DL_DTYPES = {(2, 32): DType.F32, (2, 16): DType.F16, (4, 16): DType.BF16, (0, 32): DType.I32}  # (code, bits)
_DL_TYPE_CODES = {0: "int", 1: "uint", 2: "float", 4: "bfloat", 5: "complex", 6: "bool"}
_EXPECTED = "float32, float16, bfloat16 or int32"


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


class _DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [
        ("version_major", ctypes.c_uint32),
        ("version_minor", ctypes.c_uint32),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", ctypes.c_void_p),
        ("flags", ctypes.c_uint64),
        ("dl_tensor", _DLTensor),
    ]


# Private prototypes: setting argtypes on ctypes.pythonapi would change them for every user.
_capsule_is_valid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_IsValid", ctypes.pythonapi))
_capsule_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi))


def is_torch(obj):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def is_numpy(obj):
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(obj, numpy.ndarray)


def _dl_device(name, device_type, device_id):
    if device_type in _DL_HOST_TYPES:
        return Device("cpu", 0, False)
    if device_type in _DL_CUDA_TYPES or device_type == _DL_ROCM:
        return Device("gpu", device_id, device_type == _DL_ROCM)
    raise invalid(f"{name}: DLPack device type {device_type} is not supported (host, CUDA or ROCm memory)")


def _require_dlpack(name, obj):
    if not hasattr(obj, "__dlpack__") or not hasattr(obj, "__dlpack_device__"):
        raise invalid(f"{name}: expected a tensor (a torch.Tensor or an object with __dlpack__, such as a "
                      f"numpy, cupy or jax array), got {type(obj).__name__}")


def device_of(name, obj):
    """Where a tensor lives, without exporting it."""
    if is_torch(obj):
        if obj.device.type == "cpu":
            return Device("cpu", 0, False)
        if obj.device.type == "cuda":
            return Device("gpu", obj.device.index, sys.modules["torch"].version.hip is not None)
        raise invalid(f"{name}: torch tensors on {obj.device.type} are not supported (cpu or cuda)")
    _require_dlpack(name, obj)
    device_type, device_id = obj.__dlpack_device__()
    return _dl_device(name, int(device_type), int(device_id))


def dlpack_stream(device, stream):
    """The consumer stream argument of __dlpack__ for work enqueued on `stream` (a handle, 0 for the default)."""
    if device.kind == "cpu":
        return None
    if stream:
        return stream
    # The default stream is 1 (legacy) on CUDA and 0 on ROCm in the protocol.
    return 0 if device.rocm else 1


def _descriptor(name, data, dtype, shape, strides):
    if len(shape) > MAX_RANK:
        raise invalid(f"{name}: expected rank <= {MAX_RANK}, got shape {tuple(shape)}")
    desc = Tensor()
    desc.data = data or None
    desc.dtype = dtype
    desc.rank = len(shape)
    for i, (size, stride) in enumerate(zip(shape, strides, strict=True)):
        desc.shape[i] = size
        desc.strides[i] = stride
    return desc


def _torch_view(name, t):
    torch = sys.modules["torch"]
    dtypes = {torch.float32: DType.F32, torch.float16: DType.F16, torch.bfloat16: DType.BF16, torch.int32: DType.I32}
    if t.dtype not in dtypes:
        raise invalid(f"{name}: unsupported dtype {t.dtype}; expected {_EXPECTED}")
    desc = _descriptor(name, t.data_ptr(), dtypes[t.dtype], tuple(t.shape), t.stride())
    return View(desc, device_of(name, t), (t,), False)


def _dlpack_view(name, obj, stream):
    _require_dlpack(name, obj)
    try:
        try:
            capsule = obj.__dlpack__(stream=stream, max_version=(1, 0))
        except TypeError:  # a producer that predates DLPack 1.0
            capsule = obj.__dlpack__(stream=stream)
    except BufferError as e:
        raise invalid(f"{name}: cannot be exported through DLPack: {e}") from None
    # The capsule keeps ownership (we never rename it to "used_dltensor"), so the
    # producer's capsule destructor frees the export once we drop it.
    if _capsule_is_valid(capsule, b"dltensor_versioned"):
        managed = _DLManagedTensorVersioned.from_address(_capsule_pointer(capsule, b"dltensor_versioned"))
        if managed.version_major != 1:
            raise invalid(f"{name}: DLPack version {managed.version_major}.{managed.version_minor} is not supported")
        read_only = bool(managed.flags & _DL_FLAG_READ_ONLY)
    elif _capsule_is_valid(capsule, b"dltensor"):
        managed = _DLManagedTensor.from_address(_capsule_pointer(capsule, b"dltensor"))
        read_only = False
    else:
        raise invalid(f"{name}: __dlpack__ returned no DLPack capsule")
    dl = managed.dl_tensor
    key = (dl.dtype.code, dl.dtype.bits)
    if dl.dtype.lanes != 1 or key not in _DL_DTYPES:
        code_name = _DL_TYPE_CODES.get(key[0])
        found = f"{code_name}{key[1]}" if code_name else f"of DLPack type code {key[0]} ({key[1]} bits)"
        if dl.dtype.lanes != 1:
            found += f" x{dl.dtype.lanes}"
        raise invalid(f"{name}: unsupported dtype {found}; expected {_EXPECTED}")
    shape = [dl.shape[i] for i in range(dl.ndim)]
    if dl.strides:
        strides = [dl.strides[i] for i in range(dl.ndim)]
    else:  # NULL strides mean compact row-major (older DLPack versions allow it)
        strides, step = [0] * dl.ndim, 1
        for i in reversed(range(dl.ndim)):
            strides[i], step = step, step * shape[i]
    data = (dl.data or 0) + dl.byte_offset
    device = _dl_device(name, dl.device.device_type, dl.device.device_id)
    return View(_descriptor(name, data, _DL_DTYPES[key], shape, strides), device, (obj, capsule), read_only)


def view(name, obj, stream):
    """Describes `obj` for the C ABI; `stream` is the DLPack consumer stream (dlpack_stream)."""
    return _torch_view(name, obj) if is_torch(obj) else _dlpack_view(name, obj, stream)
