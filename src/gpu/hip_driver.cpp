// The HIP module API through dlopen("libamdhip64.so"), for AMD GPUs. Types,
// enum values and the one struct layout used are declared here (from ROCm 6's
// hip_runtime_api.h) so the build needs no ROCm headers.
#include <array>
#include <cstring>
#include <memory>
#include <string>

#include "gpu/driver_impls.hpp"
#include "gpu/shared_library.hpp"

namespace tmoe::gpu {
namespace {

using hipError_t = int;

constexpr hipError_t hipSuccess = 0;
constexpr hipError_t hipErrorOutOfMemory = 2;
constexpr hipError_t hipErrorNoDevice = 100;

constexpr int hipFuncAttributeMaxDynamicSharedMemorySize = 8;
constexpr unsigned hipStreamNonBlocking = 1;
constexpr int hipStreamCaptureModeThreadLocal = 1;

// hipDeviceProp_tR0600: ROCm 6 versioned the struct (and the entry point
// hipGetDevicePropertiesR0600) so this layout stays fixed; offsets computed
// from its definition. The arch name is only available through it.
constexpr size_t kPropsSize = 1472;
constexpr size_t kPropsNameOffset = 0;
constexpr size_t kPropsMultiprocessorCountOffset = 388;
constexpr size_t kPropsSharedMemPerBlockOptinOffset = 696;
constexpr size_t kPropsGcnArchNameOffset = 1160;
constexpr size_t kPropsStringSize = 256;

struct HipFunctions {
  hipError_t (*hipInit)(unsigned);
  const char* (*hipGetErrorName)(hipError_t);
  const char* (*hipGetErrorString)(hipError_t);
  hipError_t (*hipGetDeviceCount)(int*);
  hipError_t (*hipGetDevicePropertiesR0600)(void*, int);
  hipError_t (*hipSetDevice)(int);
  hipError_t (*hipGetDevice)(int*);
  hipError_t (*hipModuleLoadData)(void**, const void*);
  hipError_t (*hipModuleGetFunction)(void**, void*, const char*);
  hipError_t (*hipModuleUnload)(void*);
  hipError_t (*hipFuncSetAttribute)(const void*, int, int);
  hipError_t (*hipModuleLaunchKernel)(void*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                      void*, void**, void**);
  hipError_t (*hipMalloc)(void**, size_t);
  hipError_t (*hipFree)(void*);
  hipError_t (*hipMemsetD8Async)(void*, unsigned char, size_t, void*);
  hipError_t (*hipMemcpyHtoD)(void*, const void*, size_t);
  hipError_t (*hipMemcpyDtoH)(void*, void*, size_t);
  hipError_t (*hipMemcpyHtoDAsync)(void*, const void*, size_t, void*);
  hipError_t (*hipMemcpyDtoHAsync)(void*, void*, size_t, void*);
  hipError_t (*hipEventCreate)(void**);
  hipError_t (*hipEventRecord)(void*, void*);
  hipError_t (*hipEventSynchronize)(void*);
  hipError_t (*hipEventElapsedTime)(float*, void*, void*);
  hipError_t (*hipEventDestroy)(void*);
  hipError_t (*hipStreamCreateWithFlags)(void**, unsigned);
  hipError_t (*hipStreamDestroy)(void*);
  hipError_t (*hipStreamSynchronize)(void*);
  hipError_t (*hipStreamBeginCapture)(void*, int);
  hipError_t (*hipStreamEndCapture)(void*, void**);
  hipError_t (*hipGraphInstantiateWithFlags)(void**, void*, unsigned long long);
  hipError_t (*hipGraphLaunch)(void*, void*);
  hipError_t (*hipGraphDestroy)(void*);
  hipError_t (*hipGraphExecDestroy)(void*);
};

Status load_functions(const SharedLibrary& lib, HipFunctions* f) {
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipInit, "hipInit"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipGetErrorName, "hipGetErrorName"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipGetErrorString, "hipGetErrorString"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipGetDeviceCount, "hipGetDeviceCount"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipGetDevicePropertiesR0600, "hipGetDevicePropertiesR0600"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipSetDevice, "hipSetDevice"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipGetDevice, "hipGetDevice"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipModuleLoadData, "hipModuleLoadData"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipModuleGetFunction, "hipModuleGetFunction"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipModuleUnload, "hipModuleUnload"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipFuncSetAttribute, "hipFuncSetAttribute"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipModuleLaunchKernel, "hipModuleLaunchKernel"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipMalloc, "hipMalloc"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipFree, "hipFree"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipMemsetD8Async, "hipMemsetD8Async"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipMemcpyHtoD, "hipMemcpyHtoD"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipMemcpyDtoH, "hipMemcpyDtoH"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipMemcpyHtoDAsync, "hipMemcpyHtoDAsync"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipMemcpyDtoHAsync, "hipMemcpyDtoHAsync"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipEventCreate, "hipEventCreate"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipEventRecord, "hipEventRecord"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipEventSynchronize, "hipEventSynchronize"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipEventElapsedTime, "hipEventElapsedTime"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipEventDestroy, "hipEventDestroy"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipStreamCreateWithFlags, "hipStreamCreateWithFlags"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipStreamDestroy, "hipStreamDestroy"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipStreamSynchronize, "hipStreamSynchronize"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipStreamBeginCapture, "hipStreamBeginCapture"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipStreamEndCapture, "hipStreamEndCapture"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipGraphInstantiateWithFlags, "hipGraphInstantiateWithFlags"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipGraphLaunch, "hipGraphLaunch"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipGraphDestroy, "hipGraphDestroy"));
  TMOE_RETURN_IF_ERROR(lib.symbol(&f->hipGraphExecDestroy, "hipGraphExecDestroy"));
  return Status::ok();
}

void* as_pointer(DevicePtr ptr) { return reinterpret_cast<void*>(static_cast<uintptr_t>(ptr)); }

class HipDriver final : public Driver {
 public:
  explicit HipDriver(SharedLibrary library) : library_(std::move(library)) {}

  Status init() {
    TMOE_RETURN_IF_ERROR(load_functions(library_, &f_));
    return check(f_.hipInit(0), "hipInit");
  }

  Api api() const override { return Api::hip; }
  const std::string& library() const override { return library_.name(); }

  Status device_count(int* count) override { return check(f_.hipGetDeviceCount(count), "hipGetDeviceCount"); }

  Status device_name(int device, std::string* name) override {
    Properties props;
    TMOE_RETURN_IF_ERROR(properties(device, &props));
    *name = props.string_at(kPropsNameOffset);
    return Status::ok();
  }

  Status device_arch(int device, std::string* arch) override {
    Properties props;
    TMOE_RETURN_IF_ERROR(properties(device, &props));
    // "gfx942:sramecc+:xnack-": the features after ':' do not select a binary.
    std::string name = props.string_at(kPropsGcnArchNameOffset);
    *arch = name.substr(0, name.find(':'));
    return Status::ok();
  }

  Status multiprocessor_count(int device, int* count) override {
    Properties props;
    TMOE_RETURN_IF_ERROR(properties(device, &props));
    *count = props.value_at<int>(kPropsMultiprocessorCountOffset);
    return Status::ok();
  }

  Status max_shared_per_block(int device, int* bytes) override {
    Properties props;
    TMOE_RETURN_IF_ERROR(properties(device, &props));
    *bytes = static_cast<int>(props.value_at<size_t>(kPropsSharedMemPerBlockOptinOffset));
    return Status::ok();
  }

  Status retain_context(int device, ContextHandle* context) override {
    int count = 0;
    TMOE_RETURN_IF_ERROR(device_count(&count));
    if (device < 0 || device >= count) {
      return Status::invalid("device: HIP sees " + std::to_string(count) + " device(s), got index " +
                             std::to_string(device));
    }
    *context = nullptr;
    return Status::ok();
  }

  Status release_context(int) override { return Status::ok(); }

  Status make_current(int device, ContextHandle) override { return check(f_.hipSetDevice(device), "hipSetDevice"); }
  Status current(int* device, ContextHandle* context) override {
    *context = nullptr;
    return check(f_.hipGetDevice(device), "hipGetDevice");
  }

  Status load_module(const void* image, ModuleHandle* module) override {
    return check(f_.hipModuleLoadData(module, image), "hipModuleLoadData");
  }

  Status get_function(ModuleHandle module, const char* name, FunctionHandle* function) override {
    return check(f_.hipModuleGetFunction(function, module, name), "hipModuleGetFunction");
  }

  Status unload_module(ModuleHandle module) override {
    return check(f_.hipModuleUnload(module), "hipModuleUnload");
  }

  Status set_max_dynamic_shared(FunctionHandle function, int bytes) override {
    return check(f_.hipFuncSetAttribute(function, hipFuncAttributeMaxDynamicSharedMemorySize, bytes),
                 "hipFuncSetAttribute(MaxDynamicSharedMemorySize)");
  }

  Status launch(FunctionHandle function, Dim3 grid, Dim3 block, uint32_t shared_bytes, StreamHandle stream,
                void** params, bool programmatic_dependent) override {
    if (programmatic_dependent) return Status::unsupported("HIP has no programmatic dependent launch");
    return check(f_.hipModuleLaunchKernel(function, grid.x, grid.y, grid.z, block.x, block.y, block.z,
                                          shared_bytes, stream, params, nullptr),
                 "hipModuleLaunchKernel");
  }

  Status allocate(size_t bytes, DevicePtr* ptr) override {
    void* p = nullptr;
    TMOE_RETURN_IF_ERROR(check(f_.hipMalloc(&p, bytes), "hipMalloc"));
    *ptr = reinterpret_cast<uintptr_t>(p);
    return Status::ok();
  }

  Status release(DevicePtr ptr) override { return check(f_.hipFree(as_pointer(ptr)), "hipFree"); }

  Status memset_async(DevicePtr dst, uint8_t value, size_t bytes, StreamHandle stream) override {
    return check(f_.hipMemsetD8Async(as_pointer(dst), value, bytes, stream), "hipMemsetD8Async");
  }

  Status copy_to_device(DevicePtr dst, const void* src, size_t bytes) override {
    return check(f_.hipMemcpyHtoD(as_pointer(dst), src, bytes), "hipMemcpyHtoD");
  }

  Status copy_to_host(void* dst, DevicePtr src, size_t bytes) override {
    return check(f_.hipMemcpyDtoH(dst, as_pointer(src), bytes), "hipMemcpyDtoH");
  }

  Status copy_to_device_async(DevicePtr dst, const void* src, size_t bytes, StreamHandle stream) override {
    return check(f_.hipMemcpyHtoDAsync(as_pointer(dst), src, bytes, stream), "hipMemcpyHtoDAsync");
  }

  Status copy_to_host_async(void* dst, DevicePtr src, size_t bytes, StreamHandle stream) override {
    return check(f_.hipMemcpyDtoHAsync(dst, as_pointer(src), bytes, stream), "hipMemcpyDtoHAsync");
  }

  Status create_event(EventHandle* event) override { return check(f_.hipEventCreate(event), "hipEventCreate"); }
  Status record_event(EventHandle event, StreamHandle stream) override {
    return check(f_.hipEventRecord(event, stream), "hipEventRecord");
  }
  Status synchronize_event(EventHandle event) override {
    return check(f_.hipEventSynchronize(event), "hipEventSynchronize");
  }
  Status elapsed_ms(EventHandle start, EventHandle end, float* ms) override {
    return check(f_.hipEventElapsedTime(ms, start, end), "hipEventElapsedTime");
  }
  Status destroy_event(EventHandle event) override { return check(f_.hipEventDestroy(event), "hipEventDestroy"); }

  Status create_stream(StreamHandle* stream) override {
    return check(f_.hipStreamCreateWithFlags(stream, hipStreamNonBlocking), "hipStreamCreateWithFlags");
  }
  Status destroy_stream(StreamHandle stream) override {
    return check(f_.hipStreamDestroy(stream), "hipStreamDestroy");
  }
  Status synchronize_stream(StreamHandle stream) override {
    return check(f_.hipStreamSynchronize(stream), "hipStreamSynchronize");
  }

  Status begin_capture(StreamHandle stream) override {
    return check(f_.hipStreamBeginCapture(stream, hipStreamCaptureModeThreadLocal), "hipStreamBeginCapture");
  }
  Status end_capture(StreamHandle stream, GraphHandle* graph) override {
    return check(f_.hipStreamEndCapture(stream, graph), "hipStreamEndCapture");
  }
  Status instantiate_graph(GraphHandle graph, GraphExecHandle* exec) override {
    return check(f_.hipGraphInstantiateWithFlags(exec, graph, 0), "hipGraphInstantiateWithFlags");
  }
  Status launch_graph(GraphExecHandle exec, StreamHandle stream) override {
    return check(f_.hipGraphLaunch(exec, stream), "hipGraphLaunch");
  }
  Status destroy_graph(GraphHandle graph) override { return check(f_.hipGraphDestroy(graph), "hipGraphDestroy"); }
  Status destroy_graph_exec(GraphExecHandle exec) override {
    return check(f_.hipGraphExecDestroy(exec), "hipGraphExecDestroy");
  }

 private:
  // hipDeviceProp_tR0600 as raw bytes, read at the documented offsets.
  struct Properties {
    alignas(8) std::array<char, kPropsSize> bytes{};
    std::string string_at(size_t offset) const {
      return std::string(bytes.data() + offset, strnlen(bytes.data() + offset, kPropsStringSize));
    }
    template <typename T>
    T value_at(size_t offset) const {
      T value;
      std::memcpy(&value, bytes.data() + offset, sizeof value);
      return value;
    }
  };

  Status properties(int device, Properties* props) const {
    return check(f_.hipGetDevicePropertiesR0600(props->bytes.data(), device), "hipGetDeviceProperties");
  }

  Status check(hipError_t result, const char* call) const {
    if (result == hipSuccess) return Status::ok();
    const char* name = f_.hipGetErrorName(result);
    const char* text = f_.hipGetErrorString(result);
    std::string message = std::string(call) + ": " + (name ? name : "unknown hipError_t") + " (" +
                          (text ? text : "no description") + ")";
    if (result == hipErrorOutOfMemory) return Status::out_of_memory(message);
    if (result == hipErrorNoDevice) return Status::no_device(library_.name() + ": " + message);
    return Status::driver(message);
  }

  SharedLibrary library_;
  HipFunctions f_{};
};

}  // namespace

Status open_hip_driver(const std::string& library, std::unique_ptr<Driver>* driver) {
  SharedLibrary lib;
  TMOE_RETURN_IF_ERROR(SharedLibrary::open(library, &lib));
  auto hip = std::make_unique<HipDriver>(std::move(lib));
  TMOE_RETURN_IF_ERROR(hip->init());
  *driver = std::move(hip);
  return Status::ok();
}

}  // namespace tmoe::gpu
