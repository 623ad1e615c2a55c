// Where `tmoe bench` keeps its tensors and how it times a forward. The CPU
// version works on host memory and a wall clock; the GPU version (device
// memory, device events around CUDA-graph replays) implements the same calls.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>

#include "core/status.hpp"

namespace tmoe::cli {

// The commands report a failed library call by throwing its message.
inline void check(const Status& s) {
  if (!s.is_ok()) throw std::runtime_error(s.message());
}

class BenchDevice {
 public:
  virtual ~BenchDevice() = default;
  // True when tensors can be used in place (no upload/download needed).
  virtual bool is_host() const = 0;
  virtual void* alloc(size_t bytes) = 0;  // throws std::runtime_error
  virtual void release(void* ptr) = 0;
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;
  virtual void download(void* dst, const void* src, size_t bytes) = 0;
  virtual void* stream() = 0;
  // Median milliseconds of one forward after warm-up.
  virtual double median_ms(const std::function<void()>& forward, int warmup, int reps) = 0;
};

std::unique_ptr<BenchDevice> make_host_bench_device();
// For the GPU backend (device index of the context); throws with the driver's reason.
std::unique_ptr<BenchDevice> make_gpu_bench_device(int device);

// A buffer on a BenchDevice, freed with it.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(BenchDevice& dev, size_t bytes) : dev_(&dev), ptr_(bytes ? dev.alloc(bytes) : nullptr) {}
  ~DeviceBuffer() {
    if (ptr_) dev_->release(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : dev_(o.dev_), ptr_(o.ptr_) { o.ptr_ = nullptr; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(dev_, o.dev_);
    std::swap(ptr_, o.ptr_);
    return *this;
  }
  void* get() const { return ptr_; }

 private:
  BenchDevice* dev_ = nullptr;
  void* ptr_ = nullptr;
};

}  // namespace tmoe::cli
