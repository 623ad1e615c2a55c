// Tuned tables (configs/<device>.json, docs/tuning.md): parsing, bucket lookup,
// the errors a damaged table gets, TMOE_TUNING_TABLE, and the tables embedded in
// this build: each parses and names only variants its target's bundle holds.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <unistd.h>

#include "fake_driver/fake_test_support.hpp"
#include "gpu/bundle.hpp"
#include "gpu/tuning.hpp"

namespace tmoe::gpu {
namespace {

using testing::ScopedEnv;

const char* kTable = R"({"format": 1, "device": "Some GPU", "target": "cuda:90",
  "shapes": [{"name": "m", "E": 8, "H": 256, "I": 128, "k": 2, "buckets": [
    {"max_tokens": 1, "path": "decode", "gate_up_tile": 1, "down_tile": 2},
    {"max_tokens": 16, "path": "sorted", "block_m": 16, "gate_up_tile": 0, "down_tile": 1},
    {"max_tokens": 512, "path": "sorted", "block_m": 64, "gate_up_tile": 2, "down_tile": 0}]}]})";

TEST(TuningTableTest, BucketsServeTheTokensUpToTheirBoundAndTheLastServesMore) {
  TuningTable table;
  const Status s = TuningTable::parse(kTable, "test", &table);
  ASSERT_TRUE(s.is_ok()) << s.message();
  EXPECT_EQ(table.device(), "Some GPU");
  EXPECT_EQ(table.target(), "cuda:90");
  const ExpertShape shape{8, 256, 128, 2};
  const KernelChoice decode{GemmPath::decode, 0, 1, 2};
  const KernelChoice small{GemmPath::sorted, 16, 0, 1};
  const KernelChoice large{GemmPath::sorted, 64, 2, 0};
  ASSERT_NE(table.find(shape, 1), nullptr);
  EXPECT_EQ(*table.find(shape, 1), decode);
  EXPECT_EQ(*table.find(shape, 2), small);
  EXPECT_EQ(*table.find(shape, 16), small);
  EXPECT_EQ(*table.find(shape, 17), large);
  EXPECT_EQ(*table.find(shape, 100000), large);
  EXPECT_EQ(table.find({8, 256, 128, 3}, 1), nullptr) << "another k is another shape";
  EXPECT_EQ(table.find({16, 256, 128, 2}, 1), nullptr);
  EXPECT_EQ(decode.describe(), "decode t1/t2");
  EXPECT_EQ(large.describe(), "sorted m64 t2/t0");
  EXPECT_FALSE(large.dependent_launch) << "tables tuned before PDL launched without it";
  EXPECT_EQ((KernelChoice{GemmPath::sorted, 16, 3, 0, true}).describe(), "sorted m16 t3/t0 pdl");
}

TEST(TuningTableTest, ChoicesRoundTripThroughTheirJson) {
  for (const KernelChoice& c : {KernelChoice{GemmPath::decode, 0, 1, 2}, KernelChoice{GemmPath::sorted, 128, 2, 1},
                                KernelChoice{GemmPath::decode, 0, 1, 2, true}, KernelChoice{GemmPath::sorted, 16, 3, 0, true}}) {
    nlohmann::json bucket = choice_to_json(c);
    bucket["max_tokens"] = 4;
    const nlohmann::json doc = {{"format", 1}, {"device", "d"}, {"target", "cuda:80"},
                                {"shapes", {{{"E", 1}, {"H", 16}, {"I", 16}, {"k", 1}, {"buckets", {bucket}}}}}};
    TuningTable table;
    const Status s = TuningTable::parse(doc.dump(), "round trip", &table);
    ASSERT_TRUE(s.is_ok()) << s.message();
    EXPECT_EQ(*table.find({1, 16, 16, 1}, 4), c);
  }
}

// tmoe tune's final rounds: the sweep's leaders, the fastest of each path, the
// heuristic, and the updated table's choice where the bundle still offers it, each
// once, in that order.
TEST(TuningTableTest, FinalRoundsHoldTheLeadersEachPathTheHeuristicAndTheTablesChoice) {
  const KernelChoice a{GemmPath::sorted, 16, 3, 0}, b{GemmPath::sorted, 16, 1, 0}, c{GemmPath::sorted, 32, 0, 0},
      d{GemmPath::sorted, 64, 2, 1}, e{GemmPath::decode, 0, 1, 2}, gone{GemmPath::sorted, 128, 9, 9};
  const std::vector<KernelChoice> candidates = {a, b, c, d, e};
  const std::vector<KernelChoice> swept = {c, a, d, b, e};  // fastest first
  using V = std::vector<KernelChoice>;
  EXPECT_EQ(final_round_choices(swept, 3, b, &d, candidates, false), (V{c, a, d, e, b})) << "decode, the leaders' lack";
  EXPECT_EQ(final_round_choices(swept, 3, a, &d, candidates, false), (V{c, a, d, e})) << "each choice once";
  EXPECT_EQ(final_round_choices(swept, 3, b, nullptr, candidates, false), (V{c, a, d, e, b})) << "no table";
  EXPECT_EQ(final_round_choices(swept, 3, b, &gone, candidates, false), (V{c, a, d, e, b}))
      << "a choice the bundle lacks";
  EXPECT_EQ(final_round_choices({c, a}, 3, b, &e, candidates, false), (V{c, a, b, e})) << "fewer swept than leaders";
  EXPECT_EQ(final_round_choices({e, c, a, d}, 1, b, nullptr, candidates, false), (V{e, c, b})) << "the fastest sorted";
}

// Where the target offers dependent launch, each finalist also runs with it flipped;
// the table's choice made with it is kept where its tiles are still candidates.
TEST(TuningTableTest, FinalRoundsTryEachFinalistWithAndWithoutDependentLaunch) {
  const KernelChoice a{GemmPath::sorted, 16, 3, 0}, c{GemmPath::sorted, 32, 0, 0}, e{GemmPath::decode, 0, 1, 2};
  auto dependent = [](KernelChoice k) {
    k.dependent_launch = true;
    return k;
  };
  const std::vector<KernelChoice> candidates = {a, c, e};
  using V = std::vector<KernelChoice>;
  EXPECT_EQ(final_round_choices({c, a, e}, 1, a, nullptr, candidates, true),
            (V{c, e, a, dependent(c), dependent(e), dependent(a)}));
  const KernelChoice previous = dependent(e);
  EXPECT_EQ(final_round_choices({c, a, e}, 1, a, &previous, candidates, true),
            (V{c, e, a, dependent(e), dependent(c), dependent(a)}))
      << "the table's dependent choice once, its twin among the others";
  const KernelChoice gone = dependent(KernelChoice{GemmPath::sorted, 128, 9, 9});
  EXPECT_EQ(final_round_choices({c}, 1, c, &gone, candidates, true), (V{c, dependent(c)})) << "tiles the bundle lacks";
}

// Every pair of gate_up_tiles x down_tiles tiles of one (path, block_m).
std::vector<KernelChoice> pairs(GemmPath path, int block_m, int gate_up_tiles, int down_tiles) {
  std::vector<KernelChoice> all;
  for (int g = 0; g < gate_up_tiles; ++g) {
    for (int d = 0; d < down_tiles; ++d) all.push_back({path, block_m, g, d});
  }
  return all;
}

// tmoe tune's staged sweep on layers whose time is made up: the pair each group's
// ranks lead to is found, no choice is timed twice, and fewer are timed than
// exhaustively, within staged_sweep_bound.
TEST(StagedSweepTest, FindsTheFastestPairOfEachRowBlockTimingEachChoiceOnce) {
  std::vector<KernelChoice> candidates = pairs(GemmPath::decode, 0, 6, 8);
  for (int block_m : {16, 64, 128}) {
    const std::vector<KernelChoice> more = pairs(GemmPath::sorted, block_m, 17, 21);
    candidates.insert(candidates.end(), more.begin(), more.end());
  }
  // A gate_up and a down cost each per tile and row block, the tiles' ranks
  // permutations of their indices (gate_up t0 ranks 1st, t15 4th; down t0 1st, t5
  // 5th), plus two pairs that cost less than their tiles: m64 t15/t5, among the
  // ranks' leaders, and t16/t20, whose tiles rank 11th and 17th.
  auto layer_ms = [](const KernelChoice& c) {
    const double gate_up = 2.0 + 0.1 * ((c.gate_up_tile * 7) % 17) + 0.01 * c.block_m;
    const double down = 1.0 + 0.05 * ((c.down_tile * 5) % 21);
    double ms = gate_up + down;
    if (c.block_m == 64 && c.gate_up_tile == 15 && c.down_tile == 5) ms -= 2.0;
    if (c.block_m == 64 && c.gate_up_tile == 16 && c.down_tile == 20) ms -= 5.0;
    return ms;
  };
  std::vector<KernelChoice> asked;
  const KernelChoice start{GemmPath::sorted, 64, 0, 9};
  const auto timed = staged_sweep(candidates, start, 5, 2, [&](const KernelChoice& c) {
    asked.push_back(c);
    return layer_ms(c);
  });
  ASSERT_EQ(asked.size(), timed.size());
  for (size_t i = 0; i < timed.size(); ++i) {
    EXPECT_EQ(timed[i].second, asked[i]);
    EXPECT_EQ(timed[i].first, layer_ms(asked[i]));
    EXPECT_NE(std::find(candidates.begin(), candidates.end(), asked[i]), candidates.end()) << asked[i].describe();
    EXPECT_EQ(std::count(asked.begin(), asked.end(), asked[i]), 1) << asked[i].describe() << " timed twice";
  }
  const auto fastest =
      std::min_element(timed.begin(), timed.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  EXPECT_EQ(fastest->second, (KernelChoice{GemmPath::sorted, 64, 15, 5}));
  EXPECT_EQ(std::count_if(asked.begin(), asked.end(), [](const KernelChoice& c) { return c.gate_up_tile == 16 &&
                                                                                          c.down_tile == 20; }),
            0)
      << "a pair neither of whose tiles ranks among the leaders is not timed";
  EXPECT_LE(timed.size(), staged_sweep_bound(candidates, 5, 2));
  EXPECT_LT(timed.size(), candidates.size() / 3);
  EXPECT_EQ(staged_sweep_bound(pairs(GemmPath::sorted, 32, 2, 3), 5, 2), 6u) << "never more than every pair";
  // In the start's group the first pass ranks the gate_up tiles beside its down tile;
  // other groups start from their first down tile.
  std::vector<KernelChoice> m64, m16;
  std::copy_if(asked.begin(), asked.end(), std::back_inserter(m64), [](const KernelChoice& c) { return c.block_m == 64; });
  std::copy_if(asked.begin(), asked.end(), std::back_inserter(m16), [](const KernelChoice& c) { return c.block_m == 16; });
  for (int g = 0; g < 17; ++g) {
    EXPECT_EQ(m64[g], (KernelChoice{GemmPath::sorted, 64, g, 9}));
    EXPECT_EQ(m16[g], (KernelChoice{GemmPath::sorted, 16, g, 0}));
  }
}

// With as many leaders as tiles, every pair is timed: the exhaustive sweep.
TEST(StagedSweepTest, LeadersCoveringEveryTileTimeEveryPair) {
  const std::vector<KernelChoice> candidates = pairs(GemmPath::sorted, 128, 4, 3);
  const auto timed = staged_sweep(candidates, candidates.front(), 8, 1, [](const KernelChoice& c) {
    return 1.0 + c.gate_up_tile + 0.5 * c.down_tile;
  });
  EXPECT_EQ(timed.size(), candidates.size());
  EXPECT_EQ(staged_sweep_bound(candidates, 8, 1), candidates.size());
}

TEST(TuningTableTest, DamagedTablesAreRejectedNamingTheProblem) {
  struct Damage {
    std::string from, to, message;
  };
  const Damage damages[] = {
      {"\"format\": 1", "\"format\": 2", "expected \"format\": 1"},
      {"\"device\": \"Some GPU\",", "", "expected a string \"device\""},
      {"\"path\": \"decode\"", "\"path\": \"fast\"", "\"path\" must be \"sorted\" or \"decode\", got \"fast\""},
      {"\"block_m\": 16,", "", "expected a positive integer \"block_m\""},
      {"\"gate_up_tile\": 1", "\"gate_up_tile\": -1", "expected a non-negative integer \"gate_up_tile\""},
      {"\"down_tile\": 2}", "\"down_tile\": 2, \"dependent_launch\": 1}", "expected a boolean \"dependent_launch\""},
      {"\"max_tokens\": 16", "\"max_tokens\": 1", "buckets must be in increasing max_tokens"},
      {"\"E\": 8", "\"E\": 0", "shape m: expected a positive integer \"E\""},
      {"{\"max_tokens\": 1,", "{", "expected a positive integer \"max_tokens\""},
      {"\"format\"", "\"format", "tuning table"},  // not JSON
  };
  for (const Damage& d : damages) {
    SCOPED_TRACE(d.to);
    std::string text = kTable;
    const size_t at = text.find(d.from);
    ASSERT_NE(at, std::string::npos);
    text.replace(at, d.from.size(), d.to);
    TuningTable table;
    const Status s = TuningTable::parse(text, "damaged.json", &table);
    EXPECT_EQ(s.code(), TMOE_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(s.message().find(d.message), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("damaged.json"), std::string::npos) << s.message();
  }
  nlohmann::json twice = nlohmann::json::parse(kTable);
  twice["shapes"].push_back(twice["shapes"][0]);
  TuningTable table;
  const Status s = TuningTable::parse(twice.dump(), "twice", &table);
  EXPECT_NE(s.message().find("the shape appears twice"), std::string::npos) << s.message();
}

TEST(TuningTableTest, EnvironmentTableMustBeReadableAndOfThisDevice) {
  // Per process: ctest runs tests (and CI runs whole builds) side by side.
  const std::string path = ::testing::TempDir() + "/tmoe_tuning_test_" + std::to_string(getpid()) + ".json";
  std::ofstream(path) << kTable;
  ScopedEnv env;
  env.set("TMOE_TUNING_TABLE", path);
  std::shared_ptr<const TuningTable> table;
  Status s = tuning_table_for("Some GPU", "cuda:90", &table);
  ASSERT_TRUE(s.is_ok()) << s.message();
  ASSERT_NE(table, nullptr);
  EXPECT_EQ(table->origin(), path);

  s = tuning_table_for("Other GPU", "cuda:90", &table);
  EXPECT_EQ(s.code(), TMOE_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(s.message().find("was tuned on Some GPU (cuda:90), this device is Other GPU (cuda:90)"), std::string::npos)
      << s.message();

  env.set("TMOE_TUNING_TABLE", path + ".missing");
  s = tuning_table_for("Some GPU", "cuda:90", &table);
  EXPECT_NE(s.message().find("TMOE_TUNING_TABLE: cannot read"), std::string::npos) << s.message();
  std::remove(path.c_str());

  env.unset("TMOE_TUNING_TABLE");
  s = tuning_table_for("A GPU no table was made for", "cuda:90", &table);
  ASSERT_TRUE(s.is_ok()) << s.message();
  EXPECT_EQ(table, nullptr) << "an untuned device gets the heuristic";
}

TEST(TuningTableTest, RetuningSomeShapesOrTokensKeepsTheRestOfTheSameDeviceOnly) {
  nlohmann::json fresh = nlohmann::json::parse(kTable);
  fresh["shapes"][0]["buckets"] = {{{"max_tokens", 8}, {"path", "sorted"}, {"block_m", 64}, {"gate_up_tile", 3},
                                    {"down_tile", 1}},
                                   {{"max_tokens", 16}, {"path", "sorted"}, {"block_m", 32}, {"gate_up_tile", 0},
                                    {"down_tile", 0}}};
  nlohmann::json existing = nlohmann::json::parse(kTable);
  existing["shapes"].push_back(existing["shapes"][0]);
  existing["shapes"][1]["name"] = "other";
  existing["shapes"][1]["k"] = 4;
  existing["shapes"][0]["command"] = "tmoe tune --model m";
  ASSERT_TRUE(merge_tuning_table(existing.dump(), "old.json", &fresh).is_ok());
  EXPECT_EQ(fresh["shapes"][0]["buckets"][0]["command"], "tmoe tune --model m") << "a kept bucket names its run";
  TuningTable merged;
  const Status s = TuningTable::parse(fresh.dump(), "merged", &merged);
  ASSERT_TRUE(s.is_ok()) << s.message();
  ASSERT_EQ(merged.entries().size(), 2u);
  // The re-tuned shape: its buckets 8 and 16 from this run, 1 and 512 kept, in order.
  EXPECT_EQ(*merged.find({8, 256, 128, 2}, 1), (KernelChoice{GemmPath::decode, 0, 1, 2}));
  EXPECT_EQ(*merged.find({8, 256, 128, 2}, 8), (KernelChoice{GemmPath::sorted, 64, 3, 1}));
  EXPECT_EQ(*merged.find({8, 256, 128, 2}, 16), (KernelChoice{GemmPath::sorted, 32, 0, 0}));
  EXPECT_EQ(*merged.find({8, 256, 128, 2}, 17), (KernelChoice{GemmPath::sorted, 64, 2, 0}));
  EXPECT_EQ(*merged.find({8, 256, 128, 4}, 1), (KernelChoice{GemmPath::decode, 0, 1, 2})) << "the kept shape";

  nlohmann::json elsewhere = nlohmann::json::parse(kTable);
  elsewhere["device"] = "Other GPU";
  nlohmann::json untouched = nlohmann::json::parse(kTable);
  const Status refused = merge_tuning_table(elsewhere.dump(), "old.json", &untouched);
  EXPECT_EQ(refused.code(), TMOE_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(refused.message().find("old.json was tuned on Other GPU (cuda:90), this device is Some GPU (cuda:90)"),
            std::string::npos)
      << refused.message();
  EXPECT_EQ(untouched, nlohmann::json::parse(kTable));
  const Status damaged = merge_tuning_table("{", "old.json", &untouched);
  EXPECT_NE(damaged.message().find("old.json"), std::string::npos) << damaged.message();
}

TEST(TuningTableTest, DeviceSlugsNameTheTableFiles) {
  EXPECT_EQ(device_slug("NVIDIA H100 80GB HBM3"), "nvidia-h100-80gb-hbm3");
  EXPECT_EQ(device_slug("  AMD Instinct MI300X "), "amd-instinct-mi300x");
  EXPECT_EQ(device_slug("NVIDIA H200"), "nvidia-h200");
}

// Every embedded table parses, is named after its device, and names only
// variants (docs/kernels.md's names) that the bundle holds for its target.
TEST(TuningTableTest, EmbeddedTablesNameOnlyCompiledVariants) {
  const std::vector<TuningTable>* tables = nullptr;
  const Status s = embedded_tuning_tables(&tables);
  ASSERT_TRUE(s.is_ok()) << s.message();
  const Bundle* bundle = nullptr;
  ASSERT_TRUE(embedded_bundle(&bundle).is_ok());
  for (const TuningTable& table : *tables) {
    SCOPED_TRACE(table.origin());
    EXPECT_EQ(table.origin(), "configs/" + device_slug(table.device()) + ".json");
    if (!bundle->built_with_kernels()) continue;  // nothing to look the names up in
    auto expect_variant = [&](const std::string& kernel, const std::string& variant) {
      EXPECT_EQ(bundle->find(kernel, table.target(), [&](const KernelEntry& e) { return e.variant == variant; }).size(),
                1u)
          << kernel << "/" << variant << " for " << table.target();
    };
    for (const TuningTable::Entry& entry : table.entries()) {
      for (const TuningTable::Bucket& b : entry.buckets) {
        const KernelChoice& c = b.choice;
        const std::string g = "_t" + std::to_string(c.gate_up_tile), d = "_t" + std::to_string(c.down_tile);
        for (const std::string act : {"bf16", "f16"}) {
          if (c.path == GemmPath::decode) {
            expect_variant("decode_gate_up_swiglu", act + "_routed" + g);
            expect_variant("decode_gate_up_swiglu", act + "_dense" + g);
            expect_variant("decode_down_combine", act + "_routed" + d);
            expect_variant("decode_down_combine", act + "_shared" + d);
          } else {
            const std::string m = "_m" + std::to_string(c.block_m);
            expect_variant("gate_up_swiglu", act + "_routed" + m + g + "_div16");
            expect_variant("down", act + "_routed" + m + d + "_div16");
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace tmoe::gpu
