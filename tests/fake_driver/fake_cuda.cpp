// A stand-in for libcuda.so.1: the CUDA driver API entry points the runtime
// uses, under the names libcuda exports, over the simulated device.
#include <cstdio>
#include <cstring>
#include <string>

#include "fake_state.hpp"

namespace {

using CUresult = int;
using CUdeviceptr = unsigned long long;

constexpr int kMaxDevices = 8;
char primary_contexts[kMaxDevices];  // their addresses are the context handles
thread_local void* current_context = nullptr;
bool initialised = false;

CUresult needs_init() { return initialised ? fake::kSuccess : 3; /* CUDA_ERROR_NOT_INITIALIZED */ }

// Module and memory calls act on the current context, as on the real driver.
CUresult needs_context() { return current_context != nullptr ? fake::kSuccess : fake::kInvalidContext; }

void* as_pointer(CUdeviceptr p) { return reinterpret_cast<void*>(static_cast<uintptr_t>(p)); }

}  // namespace

FAKE_EXPORT CUresult cuInit(unsigned flags) {
  if (flags != 0) return fake::kInvalidValue;
  if (fake::device_count() == 0) return fake::kNoDevice;
  initialised = true;
  return fake::kSuccess;
}

FAKE_EXPORT CUresult cuGetErrorName(CUresult error, const char** name) {
  switch (error) {
    case 0: *name = "CUDA_SUCCESS"; return 0;
    case 1: *name = "CUDA_ERROR_INVALID_VALUE"; return 0;
    case 2: *name = "CUDA_ERROR_OUT_OF_MEMORY"; return 0;
    case 3: *name = "CUDA_ERROR_NOT_INITIALIZED"; return 0;
    case 100: *name = "CUDA_ERROR_NO_DEVICE"; return 0;
    case 101: *name = "CUDA_ERROR_INVALID_DEVICE"; return 0;
    case 200: *name = "CUDA_ERROR_INVALID_IMAGE"; return 0;
    case 201: *name = "CUDA_ERROR_INVALID_CONTEXT"; return 0;
    case 400: *name = "CUDA_ERROR_INVALID_HANDLE"; return 0;
    case 500: *name = "CUDA_ERROR_NOT_FOUND"; return 0;
    case 900: *name = "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"; return 0;
  }
  *name = nullptr;
  return fake::kInvalidValue;
}

FAKE_EXPORT CUresult cuGetErrorString(CUresult error, const char** text) {
  switch (error) {
    case 0: *text = "no error"; return 0;
    case 1: *text = "invalid argument"; return 0;
    case 2: *text = "out of memory"; return 0;
    case 3: *text = "initialization error"; return 0;
    case 100: *text = "no CUDA-capable device is detected"; return 0;
    case 101: *text = "invalid device ordinal"; return 0;
    case 200: *text = "device kernel image is invalid"; return 0;
    case 201: *text = "invalid device context"; return 0;
    case 400: *text = "invalid resource handle"; return 0;
    case 500: *text = "named symbol not found"; return 0;
    case 900: *text = "operation not permitted when stream is capturing"; return 0;
  }
  *text = nullptr;
  return fake::kInvalidValue;
}

FAKE_EXPORT CUresult cuDeviceGetCount(int* count) {
  if (CUresult r = needs_init()) return r;
  *count = fake::device_count();
  return fake::kSuccess;
}

FAKE_EXPORT CUresult cuDeviceGet(int* device, int ordinal) {
  if (CUresult r = needs_init()) return r;
  if (!fake::valid_device(ordinal) || ordinal >= kMaxDevices) return fake::kInvalidDevice;
  *device = ordinal;
  return fake::kSuccess;
}

FAKE_EXPORT CUresult cuDeviceGetName(char* name, int length, int device) {
  if (!fake::valid_device(device)) return fake::kInvalidDevice;
  std::snprintf(name, static_cast<size_t>(length), "Fake CUDA GPU sm_%s", fake::arch("90").c_str());
  return fake::kSuccess;
}

FAKE_EXPORT CUresult cuDeviceGetAttribute(int* value, int attribute, int device) {
  if (!fake::valid_device(device)) return fake::kInvalidDevice;
  const int arch = std::stoi(fake::arch("90"));
  switch (attribute) {
    case 16: *value = 132; return fake::kSuccess;           // MULTIPROCESSOR_COUNT
    case 75: *value = arch / 10; return fake::kSuccess;     // COMPUTE_CAPABILITY_MAJOR
    case 76: *value = arch % 10; return fake::kSuccess;     // COMPUTE_CAPABILITY_MINOR
    case 97: *value = 232448; return fake::kSuccess;        // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
  }
  return fake::kInvalidValue;
}

FAKE_EXPORT CUresult cuDevicePrimaryCtxRetain(void** context, int device) {
  if (!fake::valid_device(device) || device >= kMaxDevices) return fake::kInvalidDevice;
  *context = &primary_contexts[device];
  fake::count_context_retain(+1);
  return fake::kSuccess;
}

FAKE_EXPORT CUresult cuDevicePrimaryCtxRelease_v2(int device) {
  if (!fake::valid_device(device) || device >= kMaxDevices) return fake::kInvalidDevice;
  fake::count_context_retain(-1);
  return fake::kSuccess;
}

FAKE_EXPORT CUresult cuCtxSetCurrent(void* context) {
  current_context = context;
  return fake::kSuccess;
}

FAKE_EXPORT CUresult cuCtxGetCurrent(void** context) {
  *context = current_context;
  return fake::kSuccess;
}

FAKE_EXPORT CUresult cuModuleLoadData(void** module, const void* image) {
  if (CUresult r = needs_context()) return r;
  return fake::load_module(image, module);
}

FAKE_EXPORT CUresult cuModuleGetFunction(void** function, void* module, const char* name) {
  return fake::get_function(module, name, function);
}

FAKE_EXPORT CUresult cuModuleUnload(void* module) {
  if (CUresult r = needs_context()) return r;
  return fake::unload_module(module);
}

FAKE_EXPORT CUresult cuFuncSetAttribute(void* function, int attribute, int value) {
  if (attribute != 8) return fake::kInvalidValue;  // MAX_DYNAMIC_SHARED_SIZE_BYTES
  return fake::set_max_dynamic_shared(function, value);
}

FAKE_EXPORT CUresult cuLaunchKernel(void* function, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                    unsigned bz, unsigned shared, void* stream, void** params, void** extra) {
  if (CUresult r = needs_context()) return r;
  const unsigned grid[3] = {gx, gy, gz};
  const unsigned block[3] = {bx, by, bz};
  return fake::launch(function, grid, block, shared, stream, params, extra);
}

// cuda.h's CUlaunchConfig and CUlaunchAttribute: the only attribute accepted is
// programmatic stream serialization (id 6), allowed (1).
struct LaunchAttribute {
  int id;
  char pad[4];
  union {
    char bytes[64];
    int allowed;
  } value;
};
struct LaunchConfig {
  unsigned grid[3], block[3], shared;
  void* stream;
  LaunchAttribute* attrs;
  unsigned num_attrs;
};

FAKE_EXPORT CUresult cuLaunchKernelEx(const LaunchConfig* config, void* function, void** params, void** extra) {
  if (CUresult r = needs_context()) return r;
  if (config == nullptr || config->num_attrs != 1 || config->attrs == nullptr || config->attrs[0].id != 6 ||
      config->attrs[0].value.allowed != 1) {
    return fake::kInvalidValue;
  }
  return fake::launch(function, config->grid, config->block, config->shared, config->stream, params, extra, true);
}

FAKE_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr* ptr, size_t bytes) {
  if (CUresult r = needs_context()) return r;
  void* p = nullptr;
  CUresult r = fake::allocate(bytes, &p);
  *ptr = reinterpret_cast<uintptr_t>(p);
  return r;
}

FAKE_EXPORT CUresult cuMemFree_v2(CUdeviceptr ptr) { return fake::release(as_pointer(ptr)); }

FAKE_EXPORT CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char value, size_t bytes, void* stream) {
  if (!fake::valid_stream(stream)) return fake::kInvalidHandle;
  std::memset(as_pointer(dst), value, bytes);
  return fake::kSuccess;
}

FAKE_EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t bytes) {
  std::memcpy(as_pointer(dst), src, bytes);
  return fake::kSuccess;
}

FAKE_EXPORT CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t bytes) {
  std::memcpy(dst, as_pointer(src), bytes);
  return fake::kSuccess;
}

FAKE_EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t bytes, void* stream) {
  if (!fake::valid_stream(stream)) return fake::kInvalidHandle;
  std::memcpy(as_pointer(dst), src, bytes);
  return fake::kSuccess;
}

FAKE_EXPORT CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t bytes, void* stream) {
  if (!fake::valid_stream(stream)) return fake::kInvalidHandle;
  std::memcpy(dst, as_pointer(src), bytes);
  return fake::kSuccess;
}

FAKE_EXPORT CUresult cuEventCreate(void** event, unsigned) { return fake::create_event(event); }
FAKE_EXPORT CUresult cuEventRecord(void* event, void* stream) { return fake::record_event(event, stream); }
FAKE_EXPORT CUresult cuEventSynchronize(void*) { return fake::kSuccess; }
FAKE_EXPORT CUresult cuEventElapsedTime_v2(float* ms, void* start, void* end) {
  return fake::elapsed_ms(ms, start, end);
}
FAKE_EXPORT CUresult cuEventDestroy_v2(void* event) { return fake::destroy_event(event); }

FAKE_EXPORT CUresult cuStreamCreate(void** stream, unsigned) { return fake::create_stream(stream); }
FAKE_EXPORT CUresult cuStreamDestroy_v2(void* stream) { return fake::destroy_stream(stream); }
FAKE_EXPORT CUresult cuStreamSynchronize(void* stream) {
  return fake::valid_stream(stream) ? fake::kSuccess : fake::kInvalidHandle;
}

FAKE_EXPORT CUresult cuStreamBeginCapture_v2(void* stream, int) { return fake::begin_capture(stream); }
FAKE_EXPORT CUresult cuStreamEndCapture(void* stream, void** graph) { return fake::end_capture(stream, graph); }
FAKE_EXPORT CUresult cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long) {
  return fake::instantiate(exec, graph);
}
FAKE_EXPORT CUresult cuGraphLaunch(void* exec, void* stream) { return fake::launch_graph(exec, stream); }
FAKE_EXPORT CUresult cuGraphDestroy(void* graph) { return fake::destroy_graph(graph); }
FAKE_EXPORT CUresult cuGraphExecDestroy(void* exec) { return fake::destroy_exec(exec); }
