#include "reference/random.hpp"

#include <cmath>

#include "core/numeric.hpp"

namespace tmoe::reference {

std::vector<uint8_t> random_tensor(int64_t n, tmoe_dtype dtype, double stddev, uint64_t seed) {
  const size_t element_bytes = dtype == TMOE_DTYPE_F32 ? 4 : 2;  // f32, f16 or bf16
  std::vector<uint8_t> bytes(static_cast<size_t>(n) * element_bytes);
  const double half_width = stddev * std::sqrt(3.0);
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    const double u = static_cast<double>(mix(seed ^ mix(static_cast<uint64_t>(i))) >> 11) * 0x1.0p-53;
    store_from_f32(bytes.data(), dtype, i, static_cast<float>((2.0 * u - 1.0) * half_width));
  }
  return bytes;
}

}  // namespace tmoe::reference
