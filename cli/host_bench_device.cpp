#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <vector>

#include "bench_device.hpp"

namespace tmoe::cli {

namespace {

class HostBenchDevice final : public BenchDevice {
 public:
  bool is_host() const override { return true; }
  void* alloc(size_t bytes) override {
    // 64-byte alignment keeps vector loads aligned in the CPU backend.
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!p) throw std::runtime_error("host allocation of " + std::to_string(bytes) + " bytes failed");
    return p;
  }
  void release(void* ptr) override { std::free(ptr); }
  void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void* stream() override { return nullptr; }
  double median_ms(const std::function<void()>& forward, int warmup, int reps) override {
    for (int i = 0; i < warmup; ++i) forward();
    std::vector<double> ms;
    for (int i = 0; i < reps; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      forward();
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
    return ms[ms.size() / 2];
  }
};

}  // namespace

std::unique_ptr<BenchDevice> make_host_bench_device() { return std::make_unique<HostBenchDevice>(); }

}  // namespace tmoe::cli
