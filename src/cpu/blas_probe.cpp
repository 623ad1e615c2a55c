#include "cpu/blas_probe.hpp"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <limits>
#include <random>
#include <vector>

namespace tmoe {

double openblas_sgemm_gflops(int64_t m, int64_t n, int64_t kdim, int reps) {
  constexpr int64_t kBlasMax = std::numeric_limits<blasint>::max();
  if (m < 1 || n < 1 || kdim < 1 || reps < 1) return 0.0;
  if (m > kBlasMax || n > kBlasMax || kdim > kBlasMax) return 0.0;

  // Random values, because some BLAS kernels and CPUs run faster on zeros.
  std::mt19937 rng(12345);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> a(static_cast<size_t>(m * kdim)), b(static_cast<size_t>(n * kdim)), c(static_cast<size_t>(m * n));
  for (float& v : a) v = uniform(rng);
  for (float& v : b) v = uniform(rng);

  const auto M = static_cast<blasint>(m), N = static_cast<blasint>(n), K = static_cast<blasint>(kdim);
  auto sgemm = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a.data(), K, b.data(), K, 0.0f, c.data(), N);
  };
  sgemm();
  std::vector<double> seconds;
  for (int r = 0; r < reps; ++r) {
    const auto start = std::chrono::steady_clock::now();
    sgemm();
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::nth_element(seconds.begin(), seconds.begin() + reps / 2, seconds.end());
  return 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(kdim) / seconds[reps / 2] * 1e-9;
}

}  // namespace tmoe
