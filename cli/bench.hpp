// `tmoe bench`: the layer on random inputs, checked against the float64
// reference, timed, and printed as a table (optionally JSON).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models.hpp"

namespace tmoe::cli {

struct BenchOptions {
  ModelShape model;
  std::vector<int64_t> tokens;
  std::string backend = "auto";  // cpu | gpu | auto
  int device = 0;
  std::string dtype = "bf16";
  std::string json_file;
  int check_rows = 16;  // token rows compared against the float64 reference
  int reps = 0;         // 0: chosen from the first timing
  uint64_t seed = 0;    // 0: random
};

// Returns the process exit code: 0 when every error is within its bound.
int run_bench(const BenchOptions& options);

}  // namespace tmoe::cli
