// A stand-in for libamdhip64.so: the HIP module API entry points the runtime
// uses over the simulated device, with ROCm 6's hipDeviceProp_tR0600 layout.
#include <cstdio>
#include <cstring>
#include <string>

#include "fake_state.hpp"

namespace {

using hipError_t = int;

// Offsets into hipDeviceProp_tR0600 (ROCm 6 hip_runtime_api.h).
constexpr size_t kNameOffset = 0;
constexpr size_t kMultiprocessorCountOffset = 388;
constexpr size_t kSharedMemPerBlockOptinOffset = 696;
constexpr size_t kGcnArchNameOffset = 1160;
constexpr size_t kPropsSize = 1472;

bool initialised = false;
thread_local int current_device = 0;  // as HIP: device 0 until a thread sets another

void* as_pointer(const void* p) { return const_cast<void*>(p); }

}  // namespace

FAKE_EXPORT hipError_t hipInit(unsigned flags) {
  if (flags != 0) return fake::kInvalidValue;
  if (fake::device_count() == 0) return fake::kNoDevice;
  initialised = true;
  return fake::kSuccess;
}

FAKE_EXPORT const char* hipGetErrorName(hipError_t error) {
  switch (error) {
    case 0: return "hipSuccess";
    case 1: return "hipErrorInvalidValue";
    case 2: return "hipErrorOutOfMemory";
    case 100: return "hipErrorNoDevice";
    case 101: return "hipErrorInvalidDevice";
    case 200: return "hipErrorInvalidImage";
    case 201: return "hipErrorInvalidContext";
    case 400: return "hipErrorInvalidHandle";
    case 500: return "hipErrorNotFound";
    case 900: return "hipErrorStreamCaptureUnsupported";
  }
  return "hipErrorUnknown";
}

FAKE_EXPORT const char* hipGetErrorString(hipError_t error) {
  switch (error) {
    case 0: return "no error";
    case 1: return "invalid argument";
    case 2: return "out of memory";
    case 100: return "no ROCm-capable device is detected";
    case 101: return "invalid device ordinal";
    case 200: return "device kernel image is invalid";
    case 201: return "invalid device context";
    case 400: return "invalid resource handle";
    case 500: return "named symbol not found";
    case 900: return "operation not permitted when stream is capturing";
  }
  return "unknown error";
}

FAKE_EXPORT hipError_t hipGetDeviceCount(int* count) {
  if (!initialised) return 3;  // hipErrorNotInitialized
  *count = fake::device_count();
  return fake::kSuccess;
}

FAKE_EXPORT hipError_t hipGetDevicePropertiesR0600(void* props, int device) {
  if (!fake::valid_device(device)) return fake::kInvalidDevice;
  char* bytes = static_cast<char*>(props);
  std::memset(bytes, 0, kPropsSize);
  const std::string arch = fake::arch("gfx942:sramecc+:xnack-");
  std::snprintf(bytes + kNameOffset, 256, "Fake HIP GPU %s", arch.substr(0, arch.find(':')).c_str());
  std::snprintf(bytes + kGcnArchNameOffset, 256, "%s", arch.c_str());
  const int multiprocessors = 304;
  const size_t shared_optin = 65536;
  std::memcpy(bytes + kMultiprocessorCountOffset, &multiprocessors, sizeof multiprocessors);
  std::memcpy(bytes + kSharedMemPerBlockOptinOffset, &shared_optin, sizeof shared_optin);
  return fake::kSuccess;
}

FAKE_EXPORT hipError_t hipSetDevice(int device) {
  if (!fake::valid_device(device)) return fake::kInvalidDevice;
  current_device = device;
  return fake::kSuccess;
}

FAKE_EXPORT hipError_t hipGetDevice(int* device) {
  *device = current_device;
  return fake::kSuccess;
}

FAKE_EXPORT hipError_t hipModuleLoadData(void** module, const void* image) { return fake::load_module(image, module); }
FAKE_EXPORT hipError_t hipModuleGetFunction(void** function, void* module, const char* name) {
  return fake::get_function(module, name, function);
}
FAKE_EXPORT hipError_t hipModuleUnload(void* module) { return fake::unload_module(module); }

FAKE_EXPORT hipError_t hipFuncSetAttribute(const void* function, int attribute, int value) {
  if (attribute != 8) return fake::kInvalidValue;  // hipFuncAttributeMaxDynamicSharedMemorySize
  return fake::set_max_dynamic_shared(as_pointer(function), value);
}

FAKE_EXPORT hipError_t hipModuleLaunchKernel(void* function, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                             unsigned by, unsigned bz, unsigned shared, void* stream, void** params,
                                             void** extra) {
  const unsigned grid[3] = {gx, gy, gz};
  const unsigned block[3] = {bx, by, bz};
  return fake::launch(function, grid, block, shared, stream, params, extra);
}

FAKE_EXPORT hipError_t hipMalloc(void** ptr, size_t bytes) { return fake::allocate(bytes, ptr); }
FAKE_EXPORT hipError_t hipFree(void* ptr) { return fake::release(ptr); }

FAKE_EXPORT hipError_t hipMemsetD8Async(void* dst, unsigned char value, size_t bytes, void* stream) {
  if (!fake::valid_stream(stream)) return fake::kInvalidHandle;
  std::memset(dst, value, bytes);
  return fake::kSuccess;
}
FAKE_EXPORT hipError_t hipMemcpyHtoD(void* dst, const void* src, size_t bytes) {
  std::memcpy(dst, src, bytes);
  return fake::kSuccess;
}
FAKE_EXPORT hipError_t hipMemcpyDtoH(void* dst, void* src, size_t bytes) {
  std::memcpy(dst, src, bytes);
  return fake::kSuccess;
}
FAKE_EXPORT hipError_t hipMemcpyHtoDAsync(void* dst, const void* src, size_t bytes, void* stream) {
  if (!fake::valid_stream(stream)) return fake::kInvalidHandle;
  std::memcpy(dst, src, bytes);
  return fake::kSuccess;
}
FAKE_EXPORT hipError_t hipMemcpyDtoHAsync(void* dst, void* src, size_t bytes, void* stream) {
  if (!fake::valid_stream(stream)) return fake::kInvalidHandle;
  std::memcpy(dst, src, bytes);
  return fake::kSuccess;
}

FAKE_EXPORT hipError_t hipEventCreate(void** event) { return fake::create_event(event); }
FAKE_EXPORT hipError_t hipEventRecord(void* event, void* stream) { return fake::record_event(event, stream); }
FAKE_EXPORT hipError_t hipEventSynchronize(void*) { return fake::kSuccess; }
FAKE_EXPORT hipError_t hipEventElapsedTime(float* ms, void* start, void* end) {
  return fake::elapsed_ms(ms, start, end);
}
FAKE_EXPORT hipError_t hipEventDestroy(void* event) { return fake::destroy_event(event); }

FAKE_EXPORT hipError_t hipStreamCreateWithFlags(void** stream, unsigned) { return fake::create_stream(stream); }
FAKE_EXPORT hipError_t hipStreamDestroy(void* stream) { return fake::destroy_stream(stream); }
FAKE_EXPORT hipError_t hipStreamSynchronize(void* stream) {
  return fake::valid_stream(stream) ? fake::kSuccess : fake::kInvalidHandle;
}

FAKE_EXPORT hipError_t hipStreamBeginCapture(void* stream, int) { return fake::begin_capture(stream); }
FAKE_EXPORT hipError_t hipStreamEndCapture(void* stream, void** graph) { return fake::end_capture(stream, graph); }
FAKE_EXPORT hipError_t hipGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long) {
  return fake::instantiate(exec, graph);
}
FAKE_EXPORT hipError_t hipGraphLaunch(void* exec, void* stream) { return fake::launch_graph(exec, stream); }
FAKE_EXPORT hipError_t hipGraphDestroy(void* graph) { return fake::destroy_graph(graph); }
FAKE_EXPORT hipError_t hipGraphExecDestroy(void* exec) { return fake::destroy_exec(exec); }
