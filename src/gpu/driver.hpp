// The GPU driver seen through one small interface, with two implementations:
// the CUDA driver API (libcuda) and the HIP module API (libamdhip64). Both are
// loaded with dlopen at run time, so libtmoe links against neither, builds
// without their headers and runs where no GPU exists.
//
// Every call returns a Status; driver failures read
// "cuModuleLoadData: CUDA_ERROR_INVALID_IMAGE (device kernel image is invalid)".
// Calls that act on a device's memory, modules or streams expect that device to
// be current on the calling thread (Device::make_current).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/status.hpp"

namespace tmoe::gpu {

enum class Api { cuda, hip };

// "cuda" or "hip": the backend name used in manifest targets ("cuda:90").
const char* api_name(Api api);

// Device addresses travel as 64-bit integers (CUdeviceptr; hipDeviceptr_t is a
// pointer of the same size).
using DevicePtr = uint64_t;

// Opaque driver handles (CUmodule/hipModule_t, CUfunction/hipFunction_t, ...).
using ContextHandle = void*;
using ModuleHandle = void*;
using FunctionHandle = void*;
using StreamHandle = void*;
using EventHandle = void*;
using GraphHandle = void*;
using GraphExecHandle = void*;

struct Dim3 {
  uint32_t x = 1;
  uint32_t y = 1;
  uint32_t z = 1;
};

class Driver {
 public:
  virtual ~Driver() = default;

  virtual Api api() const = 0;
  // The library that was loaded, for messages ("libcuda.so.1").
  virtual const std::string& library() const = 0;

  virtual Status device_count(int* count) = 0;
  virtual Status device_name(int device, std::string* name) = 0;
  // CUDA: compute capability as Triton names it ("90", "100"); HIP: the
  // gcnArchName without feature suffixes ("gfx942").
  virtual Status device_arch(int device, std::string* arch) = 0;
  virtual Status multiprocessor_count(int device, int* count) = 0;
  // The most dynamic shared memory one block may use after opting in.
  virtual Status max_shared_per_block(int device, int* bytes) = 0;

  // CUDA retains the device's primary context; HIP checks the index (its
  // runtime owns the contexts). Each retain is paired with one release.
  virtual Status retain_context(int device, ContextHandle* context) = 0;
  virtual Status release_context(int device) = 0;
  // cuCtxSetCurrent / hipSetDevice on the calling thread.
  virtual Status make_current(int device, ContextHandle context) = 0;
  // What the calling thread has current, for make_current to put back: its context
  // (cuCtxGetCurrent, null when none) or its device (hipGetDevice).
  virtual Status current(int* device, ContextHandle* context) = 0;

  // `image` is a complete cubin / hsaco; the driver reads its length from it.
  virtual Status load_module(const void* image, ModuleHandle* module) = 0;
  virtual Status get_function(ModuleHandle module, const char* name, FunctionHandle* function) = 0;
  virtual Status unload_module(ModuleHandle module) = 0;
  // Dynamic shared memory above 48 KiB needs this opt-in before launch.
  virtual Status set_max_dynamic_shared(FunctionHandle function, int bytes) = 0;
  // `params` points to one pointer per kernel parameter, each to its value.
  // `programmatic_dependent`: the kernel may start while the kernel before it on the
  // stream still runs (CUDA's programmatic stream serialization; a kernel launched so
  // waits for its predecessor itself, kernels/dependent_launch.py). HIP has no such
  // launch: unsupported there.
  virtual Status launch(FunctionHandle function, Dim3 grid, Dim3 block, uint32_t shared_bytes,
                        StreamHandle stream, void** params, bool programmatic_dependent) = 0;

  virtual Status allocate(size_t bytes, DevicePtr* ptr) = 0;
  virtual Status release(DevicePtr ptr) = 0;
  virtual Status memset_async(DevicePtr dst, uint8_t value, size_t bytes, StreamHandle stream) = 0;
  virtual Status copy_to_device(DevicePtr dst, const void* src, size_t bytes) = 0;
  virtual Status copy_to_host(void* dst, DevicePtr src, size_t bytes) = 0;
  virtual Status copy_to_device_async(DevicePtr dst, const void* src, size_t bytes, StreamHandle stream) = 0;
  virtual Status copy_to_host_async(void* dst, DevicePtr src, size_t bytes, StreamHandle stream) = 0;

  virtual Status create_event(EventHandle* event) = 0;
  virtual Status record_event(EventHandle event, StreamHandle stream) = 0;
  virtual Status synchronize_event(EventHandle event) = 0;
  virtual Status elapsed_ms(EventHandle start, EventHandle end, float* ms) = 0;
  virtual Status destroy_event(EventHandle event) = 0;

  // Streams are created non-blocking: they do not wait on the legacy default stream.
  virtual Status create_stream(StreamHandle* stream) = 0;
  virtual Status destroy_stream(StreamHandle stream) = 0;
  virtual Status synchronize_stream(StreamHandle stream) = 0;

  // Capture is thread-local: other threads' unsafe calls do not break it.
  virtual Status begin_capture(StreamHandle stream) = 0;
  virtual Status end_capture(StreamHandle stream, GraphHandle* graph) = 0;
  virtual Status instantiate_graph(GraphHandle graph, GraphExecHandle* exec) = 0;
  virtual Status launch_graph(GraphExecHandle exec, StreamHandle stream) = 0;
  virtual Status destroy_graph(GraphHandle graph) = 0;
  virtual Status destroy_graph_exec(GraphExecHandle exec) = 0;
};

// Loads and initialises a driver library: `library` is a name or path for
// dlopen. A library that is absent, or a driver that sees no device, is
// Status::no_device; a library that loads but fails otherwise is Status::driver.
Status open_driver(Api api, const std::string& library, std::unique_ptr<Driver>* driver);

// The library each API is loaded from: $TMOE_CUDA_DRIVER (default
// "libcuda.so.1") or $TMOE_HIP_RUNTIME (default "libamdhip64.so").
std::string driver_library(Api api);

// The process-wide driver for `api`, opened from driver_library(api) on first
// use and shared afterwards (one per library name, so tests can switch fakes).
Status shared_driver(Api api, std::shared_ptr<Driver>* driver);

// The driver of this machine's GPUs: CUDA if it sees a device, else HIP.
// Status::no_device (naming each library tried and why) when neither does.
Status machine_driver(std::shared_ptr<Driver>* driver);

}  // namespace tmoe::gpu
