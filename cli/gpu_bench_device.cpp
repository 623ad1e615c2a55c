#include <stdexcept>

#include "bench_device.hpp"

namespace tmoe::cli {

std::unique_ptr<BenchDevice> make_gpu_bench_device(int) {
  throw std::runtime_error("GPU benchmarking is not part of this build yet");
}

}  // namespace tmoe::cli
