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

namespace tmoe::testing {

inline std::vector<std::string> backend_names() { return {"cpu"}; }

inline tmoe_backend backend_from_name(const std::string& name) {
  if (name == "cpu") return TMOE_BACKEND_CPU;
  if (name == "gpu") return TMOE_BACKEND_GPU;
  throw std::invalid_argument("unknown backend name '" + name + "'");
}

// A context for one backend and the buffers it reads and writes (host memory
// for the CPU backend), freed with it.
class BackendHarness {
 public:
  explicit BackendHarness(const std::string& backend) : context_(backend_from_name(backend)) {}

  tmoe::Context& context() { return context_; }

  void* alloc(size_t bytes) {
    // 64-byte aligned like a caller's tensors would be; never null, so a
    // zero-size tensor still has an address that must stay untouched.
    buffers_.emplace_back(new (std::align_val_t{64}) uint8_t[bytes == 0 ? 1 : bytes]);
    return buffers_.back().get();
  }
  // (memcpy of zero bytes from an empty vector's null data() is still undefined)
  void upload(void* device, const void* host, size_t bytes) {
    if (bytes > 0) std::memcpy(device, host, bytes);
  }
  void download(void* host, const void* device, size_t bytes) {
    if (bytes > 0) std::memcpy(host, device, bytes);
  }
  void fill(void* device, uint8_t byte, size_t bytes) { std::memset(device, byte, bytes); }

  template <typename T>
  void* upload(const std::vector<T>& host) {
    void* device = alloc(host.size() * sizeof(T));
    upload(device, host.data(), host.size() * sizeof(T));
    return device;
  }

 private:
  struct AlignedDelete {
    void operator()(uint8_t* p) const { ::operator delete[](p, std::align_val_t{64}); }
  };
  tmoe::Context context_;
  std::vector<std::unique_ptr<uint8_t[], AlignedDelete>> buffers_;
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
