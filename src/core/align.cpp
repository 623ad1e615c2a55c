// Alignment of routed slots into expert-contiguous, block-padded regions
// (the contract is in align.hpp).
#include "core/align.hpp"

#include <algorithm>

namespace tmoe {
namespace {

int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

}  // namespace

// Each expert that receives a slot wastes at most block_m - 1 rows of padding,
// and at most min(E, slots) experts receive one.
int64_t max_padded_slots(int64_t slots, int64_t E, int64_t block_m) {
  return round_up(slots + std::min(E, slots) * (block_m - 1), block_m);
}

Alignment align_slots(const int32_t* ids, int64_t slots, int64_t E, int64_t block_m) {
  Alignment alignment;
  alignment.block_m = block_m;
  alignment.counts.assign(E, 0);
  for (int64_t s = 0; s < slots; ++s) ++alignment.counts[ids[s]];

  alignment.offsets.assign(E + 1, 0);
  for (int64_t e = 0; e < E; ++e) {
    alignment.offsets[e + 1] = static_cast<int32_t>(alignment.offsets[e] + round_up(alignment.counts[e], block_m));
  }

  const int64_t capacity = max_padded_slots(slots, E, block_m);
  const int32_t sentinel = static_cast<int32_t>(slots);
  alignment.sorted_slots.assign(capacity, sentinel);
  // A counting sort: visiting slots in ascending order keeps each expert's slots ascending.
  std::vector<int32_t> next_position(alignment.offsets.begin(), alignment.offsets.end() - 1);
  for (int64_t s = 0; s < slots; ++s) alignment.sorted_slots[next_position[ids[s]]++] = static_cast<int32_t>(s);

  alignment.block_expert.assign(capacity / block_m, -1);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t first_block = alignment.offsets[e] / block_m, end_block = alignment.offsets[e + 1] / block_m;
    std::fill(alignment.block_expert.begin() + first_block, alignment.block_expert.begin() + end_block,
              static_cast<int32_t>(e));
  }
  return alignment;
}

}  // namespace tmoe
