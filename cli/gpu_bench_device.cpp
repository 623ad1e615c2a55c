// Device memory, and timing with device events around CUDA/HIP-graph replays:
// a graph replay shows the layer's own time, not the host's launch overhead.
// The cache is flushed before each timed replay, as bench/peers.py does for every
// system: a decode layer's weights (75 MB for qwen3-30b-a3b at T = 1) would
// otherwise partly stay in an H100's 50 MB L2 between replays. The flush reads
// (kernels/cache.py): a memset would leave dirty lines whose write-back the timed
// replay pays (docs/performance-log.md #23).
#include <algorithm>
#include <map>
#include <stdexcept>
#include <tmoe/tmoe.hpp>
#include <vector>

#include "bench_device.hpp"
#include "gpu/device.hpp"
#include "gpu/launcher.hpp"

namespace tmoe::cli {

namespace {

// Read before each timed replay: larger than the L2 of current GPUs (H100 and
// H200 50 MB, MI300X's last-level cache 256 MB).
constexpr size_t kCacheFlushBytes = size_t{512} << 20;

// Evicts the cache by reading a buffer larger than it with the bundle's read_through kernel.
class CacheFlush {
 public:
  CacheFlush(const std::shared_ptr<gpu::Device>& device, gpu::StreamHandle stream) {
    const gpu::Bundle* bundle = nullptr;
    check(gpu::embedded_bundle(&bundle));
    std::string target;
    check(gpu::resolve_target(*bundle, *device, &target));
    check(gpu::select_variant(*bundle, {.kernel = "read_through", .dtype = "i32", .target = target}, &entry_));
    launcher_ = std::make_unique<gpu::Launcher>(device, *bundle);
    const size_t words = kCacheFlushBytes / sizeof(int32_t);
    const auto block = static_cast<size_t>(entry_->constexpr_or("BLOCK", 0));
    grid_ = {static_cast<uint32_t>((words + block - 1) / block)};
    check(gpu::DeviceBuffer::allocate(device, kCacheFlushBytes, &src_));
    check(device->driver().memset_async(src_.address(), 0, src_.bytes(), stream));  // read, so defined
    check(gpu::DeviceBuffer::allocate(device, grid_.x * sizeof(int32_t), &sums_));
    args_ = {{"src", gpu::DeviceAddress{src_.address()}},
             {"sums", gpu::DeviceAddress{sums_.address()}},
             {"words", static_cast<int32_t>(words)}};
  }

  void run(gpu::StreamHandle stream) { check(launcher_->launch(*entry_, grid_, args_, stream)); }

 private:
  const gpu::KernelEntry* entry_ = nullptr;
  std::unique_ptr<gpu::Launcher> launcher_;
  gpu::Dim3 grid_;
  gpu::DeviceBuffer src_;
  gpu::DeviceBuffer sums_;
  gpu::ArgMap args_;
};

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
    if (!flush_) flush_ = std::make_unique<CacheFlush>(device_, stream_.handle());
    gpu::Event start, end;
    check(gpu::Event::create(device_, &start));
    check(gpu::Event::create(device_, &end));
    std::vector<double> ms;
    for (int i = 0; i < reps; ++i) {
      flush_->run(stream_.handle());
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
  std::unique_ptr<CacheFlush> flush_;
};

}  // namespace

std::unique_ptr<BenchDevice> make_gpu_bench_device(int device) { return std::make_unique<GpuBenchDevice>(device); }

}  // namespace tmoe::cli
