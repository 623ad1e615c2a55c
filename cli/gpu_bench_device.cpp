// Device memory, and timing with device events around CUDA/HIP-graph replays:
// a graph replay shows the layer's own time, not the host's launch overhead.
// The cache is flushed before each timed replay, as bench/peers.py does for every
// system: a decode layer's weights (75 MB for qwen3-30b-a3b at T = 1) would
// otherwise partly stay in an H100's 50 MB L2 between replays.
#include <algorithm>
#include <map>
#include <stdexcept>
#include <tmoe/tmoe.hpp>
#include <vector>

#include "bench_device.hpp"
#include "gpu/device.hpp"

namespace tmoe::cli {

namespace {

// Written before each timed replay: larger than the L2 of current GPUs (H100 and
// H200 50 MB, MI300X's last-level cache 256 MB).
constexpr size_t kCacheFlushBytes = size_t{512} << 20;

class GpuBenchDevice final : public BenchDevice {
 public:
  explicit GpuBenchDevice(int index) {
    check(gpu::Device::open(index, &device_));
    check(device_->make_current(&current_));  // for the copies below, until the bench ends
    check(gpu::Stream::create(device_, &stream_));
  }

  bool is_host() const override { return false; }

  void* alloc(size_t bytes) override {
    gpu::DeviceBuffer buffer;
    check(gpu::DeviceBuffer::allocate(device_, bytes, &buffer));
    void* ptr = reinterpret_cast<void*>(static_cast<uintptr_t>(buffer.address()));
    buffers_.emplace(ptr, std::move(buffer));
    return ptr;
  }
  void release(void* ptr) override { buffers_.erase(ptr); }

  void upload(void* dst, const void* src, size_t bytes) override {
    check(device_->driver().copy_to_device(address(dst), src, bytes));
  }
  void download(void* dst, const void* src, size_t bytes) override {
    check(stream_.synchronize());
    check(device_->driver().copy_to_host(dst, address(src), bytes));
  }
  void* stream() override { return stream_.handle(); }

  double median_ms(const std::function<void()>& forward, int warmup, int reps) override {
    gpu::Graph graph;
    check(gpu::Graph::capture(device_, stream_.handle(), [&]() -> Status {
      try {
        forward();
        return Status::ok();
      } catch (const tmoe::Error& e) {
        return Status(e.status(), e.what());
      }
    }, &graph));
    for (int i = 0; i < warmup; ++i) check(graph.launch(stream_.handle()));
    if (flush_.bytes() == 0) check(gpu::DeviceBuffer::allocate(device_, kCacheFlushBytes, &flush_));
    gpu::Event start, end;
    check(gpu::Event::create(device_, &start));
    check(gpu::Event::create(device_, &end));
    std::vector<double> ms;
    for (int i = 0; i < reps; ++i) {
      check(device_->driver().memset_async(flush_.address(), static_cast<uint8_t>(i), flush_.bytes(), stream_.handle()));
      check(start.record(stream_.handle()));
      check(graph.launch(stream_.handle()));
      check(end.record(stream_.handle()));
      float elapsed = 0;
      check(start.elapsed_ms_until(end, &elapsed));
      ms.push_back(elapsed);
    }
    std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
    return ms[ms.size() / 2];
  }

 private:
  static gpu::DevicePtr address(const void* p) { return reinterpret_cast<uintptr_t>(p); }

  std::shared_ptr<gpu::Device> device_;
  gpu::ScopedCurrent current_;  // declared after device_: puts the caller's back before the device goes
  gpu::Stream stream_;
  std::map<void*, gpu::DeviceBuffer> buffers_;
  gpu::DeviceBuffer flush_;
};

}  // namespace

std::unique_ptr<BenchDevice> make_gpu_bench_device(int device) { return std::make_unique<GpuBenchDevice>(device); }

}  // namespace tmoe::cli
