// Which GEMM kernels and tiles run a forward: a tuned table (configs/<device>.json,
// written by `tmoe tune` on that device and embedded in the library) answers for
// the expert shapes it holds; a heuristic answers for the rest.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.hpp"

namespace tmoe::gpu {

enum class GemmPath {
  sorted,  // align (sort slots by expert), grouped GEMMs, combine: any T
  decode,  // per-slot GEMVs, combine fused into down: few slots whose experts rarely repeat
};

struct KernelChoice {
  GemmPath path = GemmPath::sorted;
  int block_m = 0;       // sorted path: the GEMMs' and the alignment's row block
  int gate_up_tile = 0;  // the "t<i>" of the gate_up variant (tools/aot/variants.py)
  int down_tile = 0;     // the "t<i>" of the down variant
  // Launch the variants compiled with PDL (cuda:90) as programmatic dependents of the
  // kernel before them. Chosen by measurement, not always on: it saved up to 2% at
  // qwen3 and gpt-oss T <= 512 and cost 5% at deepseek-v3 T = 1 (performance-log.md #37).
  bool dependent_launch = false;

  bool operator==(const KernelChoice&) const = default;
  // "sorted m64 t1/t0", "decode t1/t2 pdl".
  std::string describe() const;
};

// A bucket's choice fields, as TuningTable::parse reads them (for `tmoe tune`).
nlohmann::json choice_to_json(const KernelChoice& choice);

// The expert shape a table is keyed by (dtype and the shared expert are not part of it).
struct ExpertShape {
  int64_t E = 0, H = 0, I = 0, k = 0;
  bool operator==(const ExpertShape&) const = default;
};

// One device's tuned choices: for each expert shape, T buckets in increasing
// order, each serving the tokens up to its max_tokens (the last also serves more).
class TuningTable {
 public:
  struct Bucket {
    int64_t max_tokens = 0;
    KernelChoice choice;
  };
  struct Entry {
    ExpertShape shape;
    std::vector<Bucket> buckets;
  };

  // The format is that of configs/*.json (docs/tuning.md); `origin` names the text in errors.
  static Status parse(std::string_view json_text, const std::string& origin, TuningTable* table);

  const std::string& device() const { return device_; }
  const std::string& target() const { return target_; }
  const std::string& origin() const { return origin_; }
  const std::vector<Entry>& entries() const { return entries_; }
  // The choice for T tokens of `shape`; nullptr when the table lacks the shape.
  const KernelChoice* find(const ExpertShape& shape, int64_t T) const;

 private:
  std::string device_, target_, origin_;
  std::vector<Entry> entries_;
};

// The tables compiled into this library (configs/*.json other than models.json).
Status embedded_tuning_tables(const std::vector<TuningTable>** tables);

// The table for a device: the file named by TMOE_TUNING_TABLE when that is set
// (an unreadable file or another device's table is an error), else the embedded
// table of this device name and target, else null (the heuristic serves).
Status tuning_table_for(const std::string& device_name, const std::string& target,
                        std::shared_ptr<const TuningTable>* table);

// `tmoe tune` of some models or token counts into an existing table: appends to
// fresh["shapes"] the shapes of `existing` (a table's text, `origin` names it in
// errors) that fresh does not hold, and to a shape fresh holds the buckets of other
// max_tokens. A table of another device or target is refused: one file must not mix
// cards.
Status merge_tuning_table(std::string_view existing, const std::string& origin, nlohmann::json* fresh);

// `tmoe tune`'s sweep unless --exhaustive (docs/tuning.md). A layer's time is nearly its
// gate_up's plus its down's, so within each (path, block_m) of `candidates` it ranks
// the gate_up tiles beside one down tile (`start`'s where `start` is in that group,
// else the group's first), then the down tiles beside the fastest gate_up, `passes`
// times, and then times each pair of the last ranks' `leaders` fastest. Replayed on
// the 107 exhaustive sweeps in bench/results with 2 passes and 5 leaders, from any
// start tile, it timed 132-136 of 405 pairs and came within 1% of the sweep's fastest
// in 103 buckets (performance-log.md #87). `time` runs once per choice timed; returns
// each with its time, in the order timed.
std::vector<std::pair<double, KernelChoice>> staged_sweep(const std::vector<KernelChoice>& candidates,
                                                          const KernelChoice& start, size_t leaders, int passes,
                                                          const std::function<double(const KernelChoice&)>& time);
// The most choices staged_sweep times with these arguments (a progress bar's length).
size_t staged_sweep_bound(const std::vector<KernelChoice>& candidates, size_t leaders, int passes);

// `tmoe tune`'s final rounds: the choices timed again after the sweep. The sweep's
// `leaders` fastest (`swept` in increasing time), the fastest of each path (the
// routing draws of the final rounds can rank decode and sorted the other way, where
// the sweep's one draw left a path out of the leaders), the heuristic's choice, then
// `previous` (the updated table's choice for this T; null when none) where
// `candidates` still holds its tiles, each once; with `dependent_launch_too`, then
// each of those with dependent_launch flipped (the sweep runs without it). A re-tune
// then replaces the previous choice only by beating it in the same rounds.
std::vector<KernelChoice> final_round_choices(const std::vector<KernelChoice>& swept, size_t leaders,
                                              const KernelChoice& heuristic, const KernelChoice* previous,
                                              const std::vector<KernelChoice>& candidates, bool dependent_launch_too);

// "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3": the file name of its table.
std::string device_slug(std::string_view device_name);

}  // namespace tmoe::gpu
