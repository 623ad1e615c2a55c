// `tmoe tune`: on this GPU, times the kernel choices the bundle offers (decode and
// sorted paths, row blocks, tiles; every pair of tiles with --exhaustive, else a
// staged search, gpu/tuning.hpp) for each model and token count, and writes the
// fastest per T bucket as a tuned table (configs/<device>.json).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models.hpp"

namespace tmoe::cli {

struct TuneOptions {
  std::vector<ModelShape> models;
  std::vector<int64_t> tokens;  // each is a bucket's max_tokens
  int device = 0;
  std::string out;              // empty: configs/<device slug>.json
  std::string command;          // recorded in the table
  std::string sweep_file;       // empty: none; else every candidate's time per model and T (JSON)
  int check_rows = 4;           // rows of the winner's output checked against float64
  bool exhaustive = false;      // time every pair of tiles, not the staged search
  uint64_t seed = 1;
};

// Returns the process exit code (non-zero when a winner fails its check).
int run_tune(const TuneOptions& options);

}  // namespace tmoe::cli
