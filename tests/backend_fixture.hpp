// What every backend-parameterised suite shares: the list of backends under
// test, a context per test, and the memory the layer's tensors live in. Tests
// build their inputs on the host and move them with upload/download, so a GPU
// backend joins by adding its name and its allocation and copies here.
#pragma once

#include <gtest/gtest.h>
#include <tmoe/tmoe.hpp>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "gpu/device.hpp"

namespace tmoe::testing {

// The CPU always; the GPU where one is present (CI has none: the GPU suites are
// then not instantiated, rather than skipped).
inline std::vector<std::string> backend_names() {
  std::vector<std::string> names = {"cpu"};
  int32_t gpus = 0;
  if (tmoe_device_count(TMOE_BACKEND_GPU, &gpus) == TMOE_SUCCESS && gpus > 0) names.push_back("gpu");
  return names;
}

inline std::vector<std::string> gpu_backend_names() {
  std::vector<std::string> names = backend_names();
  std::erase(names, "cpu");
  return names;
}

inline tmoe_backend backend_from_name(const std::string& name) {
  if (name == "cpu") return TMOE_BACKEND_CPU;
  if (name == "gpu") return TMOE_BACKEND_GPU;
  throw std::invalid_argument("unknown backend name '" + name + "'");
}

// A context for one backend and the buffers it reads and writes: host memory
// for the CPU backend; device memory and a stream of its own for the GPU.
class BackendHarness {
 public:
  explicit BackendHarness(const std::string& backend) : context_(backend_from_name(backend)) {
    if (backend == "gpu") {
      expect_ok(gpu::Device::open(0, &device_));
      // The test is the application: its own copies below need the device current
      // (library calls put back whatever they find).
      expect_ok(device_->make_current(&current_));
      expect_ok(gpu::Stream::create(device_, &stream_));
    }
  }

  tmoe::Context& context() { return context_; }
  bool on_gpu() const { return device_ != nullptr; }
  // The stream forwards run on (null on the CPU).
  void* stream() const { return stream_.handle(); }
  // The dtypes of x, weights and out the backend runs (the GPU: bf16, f16).
  bool runs_dtype(tmoe_dtype dtype) const { return !on_gpu() || dtype != TMOE_DTYPE_F32; }

  void* alloc(size_t bytes) {
    bytes = bytes == 0 ? 1 : bytes;  // never null: a zero-size tensor still has an address that must stay untouched
    if (on_gpu()) {
      gpu::DeviceBuffer buffer;
      expect_ok(gpu::DeviceBuffer::allocate(device_, bytes, &buffer));
      device_buffers_.push_back(std::move(buffer));
      return reinterpret_cast<void*>(static_cast<uintptr_t>(device_buffers_.back().address()));
    }
    // 64-byte aligned like a caller's tensors would be.
    buffers_.emplace_back(new (std::align_val_t{64}) uint8_t[bytes]);
    return buffers_.back().get();
  }
  void upload(void* device, const void* host, size_t bytes) {
    if (bytes == 0) return;  // an empty vector's data() may be null
    if (!on_gpu()) return void(std::memcpy(device, host, bytes));
    expect_ok(stream_.synchronize());
    expect_ok(device_->driver().copy_to_device(address(device), host, bytes));
  }
  void download(void* host, const void* device, size_t bytes) {
    if (bytes == 0) return;
    if (!on_gpu()) return void(std::memcpy(host, device, bytes));
    expect_ok(stream_.synchronize());
    expect_ok(device_->driver().copy_to_host(host, address(device), bytes));
  }
  void fill(void* device, uint8_t byte, size_t bytes) {
    if (!on_gpu()) return void(std::memset(device, byte, bytes));
    expect_ok(device_->driver().memset_async(address(device), byte, bytes, stream_.handle()));
    expect_ok(stream_.synchronize());
  }

  template <typename T>
  void* upload(const std::vector<T>& host) {
    void* device = alloc(host.size() * sizeof(T));
    upload(device, host.data(), host.size() * sizeof(T));
    return device;
  }

  const std::shared_ptr<gpu::Device>& device() const { return device_; }

 private:
  static gpu::DevicePtr address(const void* p) { return reinterpret_cast<uintptr_t>(p); }
  static void expect_ok(const Status& s) {
    if (!s.is_ok()) throw std::runtime_error(s.message());
  }

  struct AlignedDelete {
    void operator()(uint8_t* p) const { ::operator delete[](p, std::align_val_t{64}); }
  };
  tmoe::Context context_;
  std::vector<std::unique_ptr<uint8_t[], AlignedDelete>> buffers_;
  std::shared_ptr<gpu::Device> device_;
  gpu::ScopedCurrent current_;  // declared after device_: destroyed before it
  gpu::Stream stream_;
  std::vector<gpu::DeviceBuffer> device_buffers_;
};

// A fresh seed per run, so runs cover new inputs; TMOE_TEST_SEED replays one.
inline uint64_t test_seed() {
  if (const char* fixed = std::getenv("TMOE_TEST_SEED")) return std::strtoull(fixed, nullptr, 10);
  std::random_device device;
  return (static_cast<uint64_t>(device()) << 32) | device();
}

inline std::string seed_note(uint64_t seed) {
  return "seed " + std::to_string(seed) + " (replay with TMOE_TEST_SEED=" + std::to_string(seed) + ")";
}

}  // namespace tmoe::testing
