// Alignment: the contract between routing and the grouped GEMMs. The CPU
// backend uses it, and the GPU align kernel must produce exactly the same
// arrays (tested against this implementation).
//
// Slots: token t's j-th choice is slot s = t*k + j, for s in [0, T*k).
// For a block size block_m:
//   counts[e]          number of slots routed to expert e
//   offsets[e]         start of expert e's region in sorted_slots;
//                      offsets[0] = 0, offsets[e+1] = offsets[e] + round_up(counts[e], block_m)
//                      (offsets has E+1 entries; offsets[E] is the padded total)
//   sorted_slots[i]    the slot at padded position i: slots of expert 0 first, then
//                      expert 1, ...; ascending slot order inside an expert (stable);
//                      padding positions hold the sentinel T*k
//   block_expert[b]    expert of the block of rows [b*block_m, (b+1)*block_m);
//                      -1 for blocks past offsets[E]
// Capacity (sized for the worst case, so a GPU can allocate without reading ids):
//   max_padded(T*k, E, block_m) = T*k + min(E, T*k) * (block_m - 1), rounded up to block_m
#pragma once

#include <cstdint>
#include <vector>

namespace tmoe {

int64_t max_padded_slots(int64_t slots, int64_t E, int64_t block_m);

struct Alignment {
  int64_t block_m = 0;
  std::vector<int32_t> counts;        // [E]
  std::vector<int32_t> offsets;       // [E+1]
  std::vector<int32_t> sorted_slots;  // [max_padded_slots]
  std::vector<int32_t> block_expert;  // [max_padded_slots / block_m]
};

// ids: [slots] expert ids, each in [0, E) (validated by the caller).
Alignment align_slots(const int32_t* ids, int64_t slots, int64_t E, int64_t block_m);

}  // namespace tmoe
