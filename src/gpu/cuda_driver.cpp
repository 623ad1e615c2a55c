// The CUDA driver API through dlopen("libcuda.so.1"). The few types and enum
// values used are declared here (values from cuda.h) so the build needs no
// CUDA headers. Symbols are looked up under the names cuda.h maps the API to
// (cuMemAlloc -> cuMemAlloc_v2, ...), since those are what libcuda exports.
#include <cstddef>
#include <memory>
#include <string>

#include "gpu/driver_impls.hpp"
#include "gpu/shared_library.hpp"

namespace tmoe::gpu {
namespace {

using CUresult = int;
using CUdevice = int;
using CUdeviceptr = unsigned long long;

constexpr CUresult CUDA_SUCCESS = 0;
constexpr CUresult CUDA_ERROR_OUT_OF_MEMORY = 2;
constexpr CUresult CUDA_ERROR_NO_DEVICE = 100;

constexpr int CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16;
constexpr int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75;
constexpr int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76;
constexpr int CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97;
constexpr int CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;
constexpr unsigned CU_STREAM_NON_BLOCKING = 1;
constexpr unsigned CU_EVENT_DEFAULT = 0;
constexpr int CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1;
constexpr int CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6;

// cuda.h's CUlaunchAttribute (an id, then a 64-byte value union at offset 8) and
// CUlaunchConfig, for cuLaunchKernelEx.
struct CUlaunchAttribute {
  int id;
  char pad[4];
  union {
    char bytes[64];
    int programmatic_stream_serialization_allowed;
  } value;
};
struct CUlaunchConfig {
  unsigned grid_x, grid_y, grid_z, block_x, block_y, block_z, shared_bytes;
  void* stream;
  CUlaunchAttribute* attrs;
  unsigned num_attrs;
};
static_assert(sizeof(CUlaunchAttribute) == 72 && offsetof(CUlaunchAttribute, value) == 8, "cuda.h's layout");
static_assert(sizeof(CUlaunchConfig) == 56 && offsetof(CUlaunchConfig, stream) == 32 &&
                  offsetof(CUlaunchConfig, num_attrs) == 48,
              "cuda.h's layout");

struct CudaFunctions {
  CUresult (*cuInit)(unsigned);
  CUresult (*cuGetErrorName)(CUresult, const char**);
  CUresult (*cuGetErrorString)(CUresult, const char**);
  CUresult (*cuDeviceGetCount)(int*);
  CUresult (*cuDeviceGet)(CUdevice*, int);
  CUresult (*cuDeviceGetName)(char*, int, CUdevice);
  CUresult (*cuDeviceGetAttribute)(int*, int, CUdevice);
  CUresult (*cuDevicePrimaryCtxRetain)(void**, CUdevice);
  CUresult (*cuDevicePrimaryCtxRelease)(CUdevice);
  CUresult (*cuCtxSetCurrent)(void*);
  CUresult (*cuCtxGetCurrent)(void**);
  CUresult (*cuModuleLoadData)(void**, const void*);
  CUresult (*cuModuleGetFunction)(void**, void*, const char*);
  CUresult (*cuModuleUnload)(void*);
  CUresult (*cuFuncSetAttribute)(void*, int, int);
  CUresult (*cuLaunchKernel)(void*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void*,
                             void**, void**);
  CUresult (*cuLaunchKernelEx)(const CUlaunchConfig*, void*, void**, void**);
  CUresult (*cuMemAlloc)(CUdeviceptr*, size_t);
  CUresult (*cuMemFree)(CUdeviceptr);
  CUresult (*cuMemsetD8Async)(CUdeviceptr, unsigned char, size_t, void*);
  CUresult (*cuMemcpyHtoD)(CUdeviceptr, const void*, size_t);
  CUresult (*cuMemcpyDtoH)(void*, CUdeviceptr, size_t);
  CUresult (*cuMemcpyHtoDAsync)(CUdeviceptr, const void*, size_t, void*);
  CUresult (*cuMemcpyDtoHAsync)(void*, CUdeviceptr, size_t, void*);
  CUresult (*cuEventCreate)(void**, unsigned);
  CUresult (*cuEventRecord)(void*, void*);
  CUresult (*cuEventSynchronize)(void*);
  CUresult (*cuEventElapsedTime)(float*, void*, void*);
  CUresult (*cuEventDestroy)(void*);
  CUresult (*cuStreamCreate)(void**, unsigned);
  CUresult (*cuStreamDestroy)(void*);
  CUresult (*cuStreamSynchronize)(void*);
  CUresult (*cuStreamBeginCapture)(void*, int);
  CUresult (*cuStreamEndCapture)(void*, void**);
  CUresult (*cuGraphInstantiateWithFlags)(void**, void*, unsigned long long);
  CUresult (*cuGraphLaunch)(void*, void*);
  CUresult (*cuGraphDestroy)(void*);
  CUresult (*cuGraphExecDestroy)(void*);
};

Status load_functions(const SharedLibrary& lib, CudaFunctions* f) {
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuInit, "cuInit"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuGetErrorName, "cuGetErrorName"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuGetErrorString, "cuGetErrorString"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuDeviceGetCount, "cuDeviceGetCount"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuDeviceGet, "cuDeviceGet"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuDeviceGetName, "cuDeviceGetName"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuDeviceGetAttribute, "cuDeviceGetAttribute"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuCtxSetCurrent, "cuCtxSetCurrent"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuCtxGetCurrent, "cuCtxGetCurrent"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuModuleLoadData, "cuModuleLoadData"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuModuleGetFunction, "cuModuleGetFunction"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuModuleUnload, "cuModuleUnload"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuFuncSetAttribute, "cuFuncSetAttribute"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuLaunchKernel, "cuLaunchKernel"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuLaunchKernelEx, "cuLaunchKernelEx"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuMemAlloc, "cuMemAlloc_v2"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuMemFree, "cuMemFree_v2"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuMemsetD8Async, "cuMemsetD8Async"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuMemcpyHtoD, "cuMemcpyHtoD_v2"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuMemcpyDtoH, "cuMemcpyDtoH_v2"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuMemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuEventCreate, "cuEventCreate"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuEventRecord, "cuEventRecord"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuEventSynchronize, "cuEventSynchronize"));
  // CUDA 12.8 added the _v2 spelling; older drivers export only the original.
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuEventElapsedTime, "cuEventElapsedTime_v2", "cuEventElapsedTime"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuEventDestroy, "cuEventDestroy_v2"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuStreamCreate, "cuStreamCreate"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuStreamDestroy, "cuStreamDestroy_v2"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuStreamSynchronize, "cuStreamSynchronize"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuStreamBeginCapture, "cuStreamBeginCapture_v2"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuStreamEndCapture, "cuStreamEndCapture"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuGraphInstantiateWithFlags, "cuGraphInstantiateWithFlags"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuGraphLaunch, "cuGraphLaunch"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuGraphDestroy, "cuGraphDestroy"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->cuGraphExecDestroy, "cuGraphExecDestroy"));
  return Status::ok();
}

class CudaDriver final : public Driver {
 public:
  explicit CudaDriver(SharedLibrary library) : library_(std::move(library)) {}

  Status init() {
    TMOE_RETURN_IF_ERROR(load_functions(library_, &f_));
    return check(f_.cuInit(0), "cuInit");
  }

  Api api() const override { return Api::cuda; }
  const std::string& library() const override { return library_.name(); }

  Status device_count(int* count) override { return check(f_.cuDeviceGetCount(count), "cuDeviceGetCount"); }

  Status device_name(int device, std::string* name) override {
    CUdevice dev = 0;
    TMOE_RETURN_IF_ERROR(get_device(device, &dev));
    char buffer[256] = {};
    TMOE_RETURN_IF_ERROR(check(f_.cuDeviceGetName(buffer, sizeof buffer - 1, dev), "cuDeviceGetName"));
    *name = buffer;
    return Status::ok();
  }

  Status device_arch(int device, std::string* arch) override {
    int major = 0;
    int minor = 0;
    TMOE_RETURN_IF_ERROR(attribute(device, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, &major));
    TMOE_RETURN_IF_ERROR(attribute(device, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, &minor));
    *arch = std::to_string(major * 10 + minor);
    return Status::ok();
  }

  Status multiprocessor_count(int device, int* count) override {
    return attribute(device, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, count);
  }

  Status max_shared_per_block(int device, int* bytes) override {
    return attribute(device, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, bytes);
  }

  Status retain_context(int device, ContextHandle* context) override {
    CUdevice dev = 0;
    TMOE_RETURN_IF_ERROR(get_device(device, &dev));
    return check(f_.cuDevicePrimaryCtxRetain(context, dev), "cuDevicePrimaryCtxRetain");
  }

  Status release_context(int device) override {
    CUdevice dev = 0;
    TMOE_RETURN_IF_ERROR(get_device(device, &dev));
    return check(f_.cuDevicePrimaryCtxRelease(dev), "cuDevicePrimaryCtxRelease");
  }

  Status make_current(int, ContextHandle context) override {
    return check(f_.cuCtxSetCurrent(context), "cuCtxSetCurrent");
  }
  Status current(int* device, ContextHandle* context) override {
    *device = -1;
    return check(f_.cuCtxGetCurrent(context), "cuCtxGetCurrent");
  }

  Status load_module(const void* image, ModuleHandle* module) override {
    return check(f_.cuModuleLoadData(module, image), "cuModuleLoadData");
  }

  Status get_function(ModuleHandle module, const char* name, FunctionHandle* function) override {
    return check(f_.cuModuleGetFunction(function, module, name), "cuModuleGetFunction");
  }

  Status unload_module(ModuleHandle module) override { return check(f_.cuModuleUnload(module), "cuModuleUnload"); }

  Status set_max_dynamic_shared(FunctionHandle function, int bytes) override {
    return check(f_.cuFuncSetAttribute(function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes),
                 "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)");
  }

  Status launch(FunctionHandle function, Dim3 grid, Dim3 block, uint32_t shared_bytes, StreamHandle stream,
                void** params, bool programmatic_dependent) override {
    if (programmatic_dependent) {
      CUlaunchAttribute attribute{};
      attribute.id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
      attribute.value.programmatic_stream_serialization_allowed = 1;
      const CUlaunchConfig config{grid.x, grid.y, grid.z, block.x, block.y, block.z, shared_bytes, stream, &attribute, 1};
      return check(f_.cuLaunchKernelEx(&config, function, params, nullptr), "cuLaunchKernelEx");
    }
    return check(f_.cuLaunchKernel(function, grid.x, grid.y, grid.z, block.x, block.y, block.z, shared_bytes,
                                   stream, params, nullptr),
                 "cuLaunchKernel");
  }

  Status allocate(size_t bytes, DevicePtr* ptr) override {
    CUdeviceptr p = 0;
    TMOE_RETURN_IF_ERROR(check(f_.cuMemAlloc(&p, bytes), "cuMemAlloc"));
    *ptr = p;
    return Status::ok();
  }

  Status release(DevicePtr ptr) override { return check(f_.cuMemFree(ptr), "cuMemFree"); }

  Status memset_async(DevicePtr dst, uint8_t value, size_t bytes, StreamHandle stream) override {
    return check(f_.cuMemsetD8Async(dst, value, bytes, stream), "cuMemsetD8Async");
  }

  Status copy_to_device(DevicePtr dst, const void* src, size_t bytes) override {
    return check(f_.cuMemcpyHtoD(dst, src, bytes), "cuMemcpyHtoD");
  }

  Status copy_to_host(void* dst, DevicePtr src, size_t bytes) override {
    return check(f_.cuMemcpyDtoH(dst, src, bytes), "cuMemcpyDtoH");
  }

  Status copy_to_device_async(DevicePtr dst, const void* src, size_t bytes, StreamHandle stream) override {
    return check(f_.cuMemcpyHtoDAsync(dst, src, bytes, stream), "cuMemcpyHtoDAsync");
  }

  Status copy_to_host_async(void* dst, DevicePtr src, size_t bytes, StreamHandle stream) override {
    return check(f_.cuMemcpyDtoHAsync(dst, src, bytes, stream), "cuMemcpyDtoHAsync");
  }

  Status create_event(EventHandle* event) override {
    return check(f_.cuEventCreate(event, CU_EVENT_DEFAULT), "cuEventCreate");
  }
  Status record_event(EventHandle event, StreamHandle stream) override {
    return check(f_.cuEventRecord(event, stream), "cuEventRecord");
  }
  Status synchronize_event(EventHandle event) override {
    return check(f_.cuEventSynchronize(event), "cuEventSynchronize");
  }
  Status elapsed_ms(EventHandle start, EventHandle end, float* ms) override {
    return check(f_.cuEventElapsedTime(ms, start, end), "cuEventElapsedTime");
  }
  Status destroy_event(EventHandle event) override { return check(f_.cuEventDestroy(event), "cuEventDestroy"); }

  Status create_stream(StreamHandle* stream) override {
    return check(f_.cuStreamCreate(stream, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
  }
  Status destroy_stream(StreamHandle stream) override {
    return check(f_.cuStreamDestroy(stream), "cuStreamDestroy");
  }
  Status synchronize_stream(StreamHandle stream) override {
    return check(f_.cuStreamSynchronize(stream), "cuStreamSynchronize");
  }

  Status begin_capture(StreamHandle stream) override {
    return check(f_.cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), "cuStreamBeginCapture");
  }
  Status end_capture(StreamHandle stream, GraphHandle* graph) override {
    return check(f_.cuStreamEndCapture(stream, graph), "cuStreamEndCapture");
  }
  Status instantiate_graph(GraphHandle graph, GraphExecHandle* exec) override {
    return check(f_.cuGraphInstantiateWithFlags(exec, graph, 0), "cuGraphInstantiateWithFlags");
  }
  Status launch_graph(GraphExecHandle exec, StreamHandle stream) override {
    return check(f_.cuGraphLaunch(exec, stream), "cuGraphLaunch");
  }
  Status destroy_graph(GraphHandle graph) override { return check(f_.cuGraphDestroy(graph), "cuGraphDestroy"); }
  Status destroy_graph_exec(GraphExecHandle exec) override {
    return check(f_.cuGraphExecDestroy(exec), "cuGraphExecDestroy");
  }

 private:
  Status check(CUresult result, const char* call) const {
    if (result == CUDA_SUCCESS) return Status::ok();
    const char* name = nullptr;
    const char* text = nullptr;
    if (f_.cuGetErrorName(result, &name) != CUDA_SUCCESS || name == nullptr) name = "unknown CUresult";
    if (f_.cuGetErrorString(result, &text) != CUDA_SUCCESS || text == nullptr) text = "no description";
    std::string message = std::string(call) + ": " + name + " (" + text + ")";
    if (result == CUDA_ERROR_OUT_OF_MEMORY) return Status::out_of_memory(message);
    if (result == CUDA_ERROR_NO_DEVICE) return Status::no_device(library_.name() + ": " + message);
    return Status::driver(message);
  }

  Status get_device(int index, CUdevice* dev) const { return check(f_.cuDeviceGet(dev, index), "cuDeviceGet"); }

  Status attribute(int device, int which, int* value) const {
    CUdevice dev = 0;
    TMOE_RETURN_IF_ERROR(get_device(device, &dev));
    return check(f_.cuDeviceGetAttribute(value, which, dev), "cuDeviceGetAttribute");
  }

  SharedLibrary library_;
  CudaFunctions f_{};
};

}  // namespace

Status open_cuda_driver(const std::string& library, std::unique_ptr<Driver>* driver) {
  SharedLibrary lib;
  TMOE_RETURN_IF_ERROR(SharedLibrary::open(library, &lib));
  auto cuda = std::make_unique<CudaDriver>(std::move(lib));
  TMOE_RETURN_IF_ERROR(cuda->init());
  *driver = std::move(cuda);
  return Status::ok();
}

}  // namespace tmoe::gpu
