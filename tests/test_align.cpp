// Alignment: every invariant of the contract in core/align.hpp, checked from
// the ids alone, on a hand-worked example, edge cases and random routings.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "core/align.hpp"

namespace {

void expect_alignment_invariants(const std::vector<int32_t>& ids, int64_t E, int64_t block_m) {
  const int64_t slots = static_cast<int64_t>(ids.size());
  SCOPED_TRACE("slots " + std::to_string(slots) + ", E " + std::to_string(E) + ", block_m " + std::to_string(block_m));
  const tmoe::Alignment a = tmoe::align_slots(ids.data(), slots, E, block_m);
  const int64_t capacity = tmoe::max_padded_slots(slots, E, block_m);

  EXPECT_EQ(a.block_m, block_m);
  ASSERT_EQ(static_cast<int64_t>(a.counts.size()), E);
  ASSERT_EQ(static_cast<int64_t>(a.offsets.size()), E + 1);
  ASSERT_EQ(static_cast<int64_t>(a.sorted_slots.size()), capacity);
  ASSERT_EQ(capacity % block_m, 0);
  ASSERT_EQ(static_cast<int64_t>(a.block_expert.size()), capacity / block_m);

  int64_t counted = 0;
  for (int64_t e = 0; e < E; ++e) {
    EXPECT_EQ(a.counts[e], std::count(ids.begin(), ids.end(), static_cast<int32_t>(e))) << "expert " << e;
    counted += a.counts[e];
  }
  EXPECT_EQ(counted, slots);

  // Each region is the smallest multiple of block_m that holds its slots.
  ASSERT_EQ(a.offsets[0], 0);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t region = a.offsets[e + 1] - a.offsets[e];
    EXPECT_EQ(region % block_m, 0) << "expert " << e;
    EXPECT_GE(region, a.counts[e]) << "expert " << e;
    EXPECT_LT(region, a.counts[e] + block_m) << "expert " << e;
  }
  ASSERT_LE(a.offsets[E], capacity);

  const int32_t sentinel = static_cast<int32_t>(slots);
  std::vector<int> seen(slots, 0);
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t i = a.offsets[e]; i < a.offsets[e + 1]; ++i) {
      const int32_t slot = a.sorted_slots[i];
      if (i - a.offsets[e] >= a.counts[e]) {
        EXPECT_EQ(slot, sentinel) << "padding at " << i << " of expert " << e;
        continue;
      }
      ASSERT_GE(slot, 0) << "position " << i;
      ASSERT_LT(slot, slots) << "position " << i;
      EXPECT_EQ(ids[slot], e) << "slot " << slot << " in the region of expert " << e;
      if (i > a.offsets[e]) {
        EXPECT_LT(a.sorted_slots[i - 1], slot) << "slots of expert " << e << " not ascending";
      }
      ++seen[slot];
    }
  }
  for (int64_t i = a.offsets[E]; i < capacity; ++i) EXPECT_EQ(a.sorted_slots[i], sentinel) << "position " << i;
  for (int64_t s = 0; s < slots; ++s) EXPECT_EQ(seen[s], 1) << "slot " << s;

  for (int64_t b = 0; b < capacity / block_m; ++b) {
    const int64_t row = b * block_m;
    int32_t expected = -1;
    for (int64_t e = 0; e < E; ++e) {
      if (a.offsets[e] <= row && row < a.offsets[e + 1]) expected = static_cast<int32_t>(e);
    }
    EXPECT_EQ(a.block_expert[b], expected) << "block " << b;
  }
}

const int64_t kBlockSizes[] = {1, 16, 64, 128};

TEST(Align, HandWorkedExample) {
  // T=3, k=2, E=4, block_m=2: slot s is token s/2's choice s%2.
  // counts {2, 1, 3, 0}; regions 2, 2, 4, 0 -> offsets {0, 2, 4, 8, 8}.
  // Capacity: 6 + min(4, 6) * 1 = 10. Expert 0 holds slots 1, 5; expert 1
  // slot 4 and one pad; expert 2 slots 0, 2, 3 and one pad; then two pads
  // past offsets[E]. Blocks of two rows: experts 0, 1, 2, 2, then -1.
  const std::vector<int32_t> ids = {2, 0, 2, 2, 1, 0};
  const tmoe::Alignment a = tmoe::align_slots(ids.data(), 6, 4, 2);
  EXPECT_EQ(a.counts, (std::vector<int32_t>{2, 1, 3, 0}));
  EXPECT_EQ(a.offsets, (std::vector<int32_t>{0, 2, 4, 8, 8}));
  EXPECT_EQ(a.sorted_slots, (std::vector<int32_t>{1, 5, 4, 6, 0, 2, 3, 6, 6, 6}));
  EXPECT_EQ(a.block_expert, (std::vector<int32_t>{0, 1, 2, 2, -1}));
  expect_alignment_invariants(ids, 4, 2);
}

TEST(Align, MaxPaddedSlotsHandWorked) {
  EXPECT_EQ(tmoe::max_padded_slots(6, 4, 2), 10);       // 6 + 4*1
  EXPECT_EQ(tmoe::max_padded_slots(1, 256, 128), 128);  // 1 + 1*127
  EXPECT_EQ(tmoe::max_padded_slots(5, 2, 4), 12);       // 5 + 2*3 = 11, rounded up to 12
  EXPECT_EQ(tmoe::max_padded_slots(7, 3, 1), 7);        // no padding with block_m = 1
  // DeepSeek-V3 prefill: 8192 tokens * 8 + 256 * 127 = 98048 = 766 * 128.
  EXPECT_EQ(tmoe::max_padded_slots(8192 * 8, 256, 128), 98048);
}

TEST(Align, WorstCaseFillsTheCapacity) {
  // One slot per expert: every region pads to a full block, which is exactly
  // the capacity; the bound is tight.
  for (int64_t block_m : kBlockSizes) {
    std::vector<int32_t> ids(64);
    for (int32_t s = 0; s < 64; ++s) ids[s] = 63 - s;
    const tmoe::Alignment a = tmoe::align_slots(ids.data(), 64, 64, block_m);
    EXPECT_EQ(a.offsets[64], tmoe::max_padded_slots(64, 64, block_m)) << "block_m " << block_m;
    expect_alignment_invariants(ids, 64, block_m);
  }
}

TEST(Align, OneSlot) {
  for (int64_t block_m : kBlockSizes) expect_alignment_invariants({5}, 8, block_m);
}

TEST(Align, EverySlotOnOneExpert) {
  for (int64_t block_m : kBlockSizes) expect_alignment_invariants(std::vector<int32_t>(300, 7), 128, block_m);
}

TEST(Align, ExpertsWithNoSlot) {
  // Only even experts, first and last included, receive slots.
  std::vector<int32_t> ids;
  for (int32_t s = 0; s < 200; ++s) ids.push_back((s * 6) % 16);
  for (int64_t block_m : kBlockSizes) expect_alignment_invariants(ids, 16, block_m);
}

TEST(Align, SingleExpert) {
  for (int64_t block_m : kBlockSizes) {
    expect_alignment_invariants({0}, 1, block_m);
    expect_alignment_invariants(std::vector<int32_t>(129, 0), 1, block_m);
  }
}

unsigned test_seed() {
  // TMOE_TEST_SEED replays a failure with the seed its trace printed.
  if (const char* fixed = std::getenv("TMOE_TEST_SEED")) return static_cast<unsigned>(std::strtoul(fixed, nullptr, 10));
  return std::random_device{}();
}

TEST(Align, RandomRoutings) {
  const unsigned seed = test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " (set TMOE_TEST_SEED to replay)");
  std::mt19937 rng(seed);
  struct Shape {
    int64_t T, k, E;
  };
  // Decode and prefill sizes of the models' (E, k), and uneven ones.
  const Shape shapes[] = {{1, 2, 8}, {7, 2, 8}, {64, 8, 128}, {513, 8, 256}, {33, 4, 128}, {100, 3, 5}};
  for (const Shape& shape : shapes) {
    std::uniform_int_distribution<int32_t> uniform(0, static_cast<int32_t>(shape.E - 1));
    // A skewed routing too: a few hot experts take most slots, as in real traffic.
    std::geometric_distribution<int32_t> skewed(0.3);
    for (bool skew : {false, true}) {
      std::vector<int32_t> ids(shape.T * shape.k);
      for (int32_t& id : ids) id = skew ? std::min<int32_t>(skewed(rng), shape.E - 1) : uniform(rng);
      for (int64_t block_m : kBlockSizes) expect_alignment_invariants(ids, shape.E, block_m);
    }
  }
}

}  // namespace
