// The simulated device behind both fake drivers. Each fake library compiles
// its own copy, so the CUDA and the HIP fake keep separate state.
#pragma once

#include <cstddef>
#include <string>

#include "fake_control.h"

#define FAKE_EXPORT extern "C" __attribute__((visibility("default")))

namespace fake {

// Result codes: CUDA and HIP number these alike.
enum Code : int {
  kSuccess = 0,
  kInvalidValue = 1,
  kOutOfMemory = 2,
  kNoDevice = 100,
  kInvalidDevice = 101,
  kInvalidImage = 200,
  kInvalidContext = 201,
  kInvalidHandle = 400,
  kNotFound = 500,
  kCaptureUnsupported = 900,
};

int device_count();
bool valid_device(int device);
// $FAKE_GPU_ARCH, or `fallback` when unset.
std::string arch(const char* fallback);

int load_module(const void* image, void** module);
int get_function(void* module, const char* name, void** function);
int unload_module(void* module);
int set_max_dynamic_shared(void* function, int bytes);
int launch(void* function, const unsigned grid[3], const unsigned block[3], unsigned shared, void* stream,
           void** params, void** extra, bool programmatic_dependent = false);

int allocate(size_t bytes, void** ptr);
int release(void* ptr);

int create_stream(void** stream);
int destroy_stream(void* stream);
bool valid_stream(void* stream);  // null (the default stream) or one created here

int create_event(void** event);
int record_event(void* event, void* stream);
int elapsed_ms(float* ms, void* start, void* end);
int destroy_event(void* event);

int begin_capture(void* stream);
int end_capture(void* stream, void** graph);
int instantiate(void** exec, void* graph);
int launch_graph(void* exec, void* stream);
int destroy_graph(void* graph);
int destroy_exec(void* exec);

void count_context_retain(int delta);

}  // namespace fake
