// Random inputs for checks and benchmarks: reproducible from a seed, filled in
// parallel, never zeros (zeros hide unwritten outputs and run faster).
#pragma once

#include <tmoe/tmoe.h>

#include <cstdint>
#include <vector>

namespace tmoe::reference {

// splitmix64: a counter hash, so large tensors fill in parallel, reproducibly.
inline uint64_t mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// n uniform values of standard deviation `stddev`, stored as dtype.
std::vector<uint8_t> random_tensor(int64_t n, tmoe_dtype dtype, double stddev, uint64_t seed);

}  // namespace tmoe::reference
