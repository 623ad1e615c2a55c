// Routing: the f32 router (core) and the f64 reference, each against
// hand-worked examples, then against each other on random logits of the
// supported models' shapes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <numeric>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/numeric.hpp"
#include "core/routing.hpp"
#include "reference/reference.hpp"

namespace {

struct RoutingSpec {
  tmoe_routing_mode mode = TMOE_ROUTING_SOFTMAX_TOPK;
  int32_t top_k = 1;
  bool renormalize = false;
  int32_t n_group = 1;
  int32_t topk_group = 1;
  float routed_scaling_factor = 1.0f;
  const float* correction_bias = nullptr;  // [E] or null
};

tmoe_routing public_routing(const RoutingSpec& spec, int64_t E) {
  tmoe_routing routing{};
  routing.mode = spec.mode;
  routing.top_k = spec.top_k;
  routing.renormalize = spec.renormalize ? 1 : 0;
  routing.n_group = spec.n_group;
  routing.topk_group = spec.topk_group;
  routing.routed_scaling_factor = spec.routed_scaling_factor;
  routing.correction_bias.data = const_cast<float*>(spec.correction_bias);
  routing.correction_bias.dtype = TMOE_DTYPE_F32;
  routing.correction_bias.rank = 1;
  routing.correction_bias.shape[0] = E;
  routing.correction_bias.strides[0] = 1;
  return routing;
}

tmoe::RoutingConfig core_routing(const RoutingSpec& spec) {
  tmoe::RoutingConfig config;
  config.mode = spec.mode;
  config.top_k = spec.top_k;
  config.renormalize = spec.renormalize;
  config.n_group = spec.n_group;
  config.topk_group = spec.topk_group;
  config.routed_scaling_factor = spec.routed_scaling_factor;
  config.correction_bias = spec.correction_bias;
  return config;
}

struct CoreRouted {
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

CoreRouted core_route(const RoutingSpec& spec, const void* logits, tmoe_dtype dtype, int64_t T, int64_t E) {
  CoreRouted routed{std::vector<int32_t>(T * spec.top_k, -1), std::vector<float>(T * spec.top_k, NAN)};
  tmoe::route(core_routing(spec), logits, dtype, T, E, routed.ids.data(), routed.weights.data());
  return routed;
}

// The logit whose sigmoid is `score`, so hand-worked sigmoid examples can be
// written in scores.
float logit_of(double score) { return static_cast<float>(std::log(score / (1.0 - score))); }

std::vector<float> logs_of(const std::vector<double>& values) {
  std::vector<float> logits;
  for (double v : values) logits.push_back(static_cast<float>(std::log(v)));
  return logits;
}

// One token through both routers against the hand-worked answer. The logits
// are f32 roundings of exact values (relative error 2^-24) and the weights are
// O(1), so 1e-6 absolute is ~10 ulps of room for either router, while any
// semantic mistake moves a weight by far more.
void expect_hand_worked(const RoutingSpec& spec, const std::vector<float>& logits,
                        const std::vector<int32_t>& expected_ids, const std::vector<double>& expected_weights) {
  const int64_t E = static_cast<int64_t>(logits.size());
  const CoreRouted core = core_route(spec, logits.data(), TMOE_DTYPE_F32, 1, E);
  const tmoe::reference::Routed ref =
      tmoe::reference::route(public_routing(spec, E), std::vector<double>(logits.begin(), logits.end()), 1, E);
  EXPECT_EQ(core.ids, expected_ids) << "f32 router";
  EXPECT_EQ(ref.ids, expected_ids) << "f64 reference";
  ASSERT_EQ(core.weights.size(), expected_weights.size());
  ASSERT_EQ(ref.weights.size(), expected_weights.size());
  for (size_t j = 0; j < expected_weights.size(); ++j) {
    EXPECT_NEAR(core.weights[j], expected_weights[j], 1e-6) << "f32 router, choice " << j;
    EXPECT_NEAR(ref.weights[j], expected_weights[j], 1e-6) << "f64 reference, choice " << j;
  }
}

// ---- softmax_topk (Mixtral, Qwen3) ----

TEST(RoutingSoftmaxTopk, TopKOfProbabilitiesWithAndWithoutRenormalize) {
  // logits ln{1,2,3,4}: probabilities {1,2,3,4}/10.
  const std::vector<float> logits = logs_of({1, 2, 3, 4});
  RoutingSpec spec{.mode = TMOE_ROUTING_SOFTMAX_TOPK, .top_k = 2};
  expect_hand_worked(spec, logits, {3, 2}, {0.4, 0.3});
  spec.renormalize = true;  // 0.4/0.7, 0.3/0.7
  expect_hand_worked(spec, logits, {3, 2}, {4.0 / 7.0, 3.0 / 7.0});
  spec = {.mode = TMOE_ROUTING_SOFTMAX_TOPK, .top_k = 4};  // all experts, best first
  expect_hand_worked(spec, logits, {3, 2, 1, 0}, {0.4, 0.3, 0.2, 0.1});
}

TEST(RoutingSoftmaxTopk, TieGoesToLowerIndex) {
  // ln{4,2,2,2}: {0.4, 0.2, 0.2, 0.2}; experts 1, 2, 3 tie (the same f32 logit),
  // so 1 then 2 are chosen.
  RoutingSpec spec{.mode = TMOE_ROUTING_SOFTMAX_TOPK, .top_k = 2};
  expect_hand_worked(spec, logs_of({4, 2, 2, 2}), {0, 1}, {0.4, 0.2});
  spec.top_k = 3;
  expect_hand_worked(spec, logs_of({4, 2, 2, 2}), {0, 1, 2}, {0.4, 0.2, 0.2});
  // A tie for the best: ln{1,3,3,1} gives {1,3,3,1}/8; expert 1 wins, and a
  // single renormalized choice weighs 1.
  spec = {.mode = TMOE_ROUTING_SOFTMAX_TOPK, .top_k = 1};
  expect_hand_worked(spec, logs_of({1, 3, 3, 1}), {1}, {0.375});
  spec.renormalize = true;
  expect_hand_worked(spec, logs_of({1, 3, 3, 1}), {1}, {1.0});
}

TEST(RoutingSoftmaxTopk, LargeLogitsDoNotOverflow) {
  // exp(1000) overflows f32 and f64; with the maximum subtracted the
  // probabilities are {1, e, 1/e} / (1 + e + 1/e) = {0.244728, 0.665241, 0.090031}.
  const RoutingSpec spec{.mode = TMOE_ROUTING_SOFTMAX_TOPK, .top_k = 2};
  expect_hand_worked(spec, {1000.0f, 1001.0f, 999.0f}, {1, 0}, {0.66524095577, 0.24472847105});
}

TEST(RoutingSoftmaxTopk, MaskedExpertsGetZeroProbability) {
  // ln 0 = -inf: {0, 1/4, 0, 3/4}. The third choice is a tie at 0 between
  // experts 0 and 2: the lower index wins.
  const RoutingSpec spec{.mode = TMOE_ROUTING_SOFTMAX_TOPK, .top_k = 3};
  expect_hand_worked(spec, {-INFINITY, 0.0f, -INFINITY, std::log(3.0f)}, {3, 1, 0}, {0.75, 0.25, 0.0});
}

TEST(RoutingSoftmaxTopk, DecodesEveryLogitsDtype) {
  // {0.5, -1, 2, 0.25} is exact in bf16, f16 and f32. exp: {1.648721, 0.367879,
  // 7.389056, 1.284025}, sum 10.689681: p2 = 0.691233, p0 = 0.154235;
  // renormalized: 7.389056 / 9.037777 = 0.817574 and 0.182426.
  const std::vector<float> values = {0.5f, -1.0f, 2.0f, 0.25f};
  const RoutingSpec spec{.mode = TMOE_ROUTING_SOFTMAX_TOPK, .top_k = 2, .renormalize = true};
  for (tmoe_dtype dtype : {TMOE_DTYPE_F32, TMOE_DTYPE_BF16, TMOE_DTYPE_F16}) {
    SCOPED_TRACE(tmoe_dtype_name(dtype));
    std::vector<uint32_t> storage(values.size());  // room for 4-byte or 2-byte elements
    for (size_t e = 0; e < values.size(); ++e) tmoe::store_from_f32(storage.data(), dtype, e, values[e]);
    const CoreRouted core = core_route(spec, storage.data(), dtype, 1, 4);
    EXPECT_EQ(core.ids, (std::vector<int32_t>{2, 0}));
    EXPECT_NEAR(core.weights[0], 0.81757447619, 1e-6);
    EXPECT_NEAR(core.weights[1], 0.18242552381, 1e-6);
  }
}

TEST(RoutingSoftmaxTopk, RoutesEveryRowOfABatch) {
  // Three tokens, each with its own answer: rows must not leak into each other.
  const std::vector<float> logits = {0.0f, 0.0f, 5.0f, 0.0f, 5.0f, 0.0f, 5.0f, 0.0f, 0.0f};
  const RoutingSpec spec{.mode = TMOE_ROUTING_SOFTMAX_TOPK, .top_k = 1, .renormalize = true};
  const CoreRouted core = core_route(spec, logits.data(), TMOE_DTYPE_F32, 3, 3);
  EXPECT_EQ(core.ids, (std::vector<int32_t>{2, 1, 0}));
  EXPECT_EQ(core.weights, (std::vector<float>{1.0f, 1.0f, 1.0f}));
}

// ---- topk_softmax (gpt-oss) ----

TEST(RoutingTopkSoftmax, SoftmaxOverTheChosenOnly) {
  // Top-2 of {-1, ln 3, 0, -2} are experts 1 and 2; softmax over {ln 3, 0}
  // gives {3/4, 1/4} (a softmax over all four would give 3/(4 + e^-1 + e^-2)).
  // renormalize changes nothing: the weights already sum to 1.
  const std::vector<float> logits = {-1.0f, std::log(3.0f), 0.0f, -2.0f};
  RoutingSpec spec{.mode = TMOE_ROUTING_TOPK_SOFTMAX, .top_k = 2};
  expect_hand_worked(spec, logits, {1, 2}, {0.75, 0.25});
  spec.renormalize = true;
  expect_hand_worked(spec, logits, {1, 2}, {0.75, 0.25});
}

TEST(RoutingTopkSoftmax, TieGoesToLowerIndex) {
  // Experts 1, 2, 3 tie at 5: 1 and 2 are chosen, weights 1/2 each.
  const RoutingSpec spec{.mode = TMOE_ROUTING_TOPK_SOFTMAX, .top_k = 2};
  expect_hand_worked(spec, {2.0f, 5.0f, 5.0f, 5.0f}, {1, 2}, {0.5, 0.5});
}

// ---- sigmoid_grouped_topk (DeepSeek-V3) ----

// Eight experts in four groups of two; sigmoid scores
//   group 0: {0.9, 0.1} -> 1.0    group 1: {0.6, 0.6} -> 1.2
//   group 2: {0.7, 0.4} -> 1.1    group 3: {0.2, 0.3} -> 0.5
// With topk_group = 2, groups 1 and 2 are kept, so expert 0 (0.9, above every
// expert of a kept group) is excluded. Top-2 of {0.6, 0.6, 0.7, 0.4}: expert 4,
// then experts 2 and 3 tie at 0.6 and expert 2 wins.
std::vector<float> eight_expert_logits() {
  std::vector<float> logits;
  for (double score : {0.9, 0.1, 0.6, 0.6, 0.7, 0.4, 0.2, 0.3}) logits.push_back(logit_of(score));
  return logits;
}

TEST(RoutingSigmoidGroupedTopk, GroupWithTheSingleBestExpertIsDropped) {
  RoutingSpec spec{.mode = TMOE_ROUTING_SIGMOID_GROUPED_TOPK, .top_k = 2, .n_group = 4, .topk_group = 2};
  expect_hand_worked(spec, eight_expert_logits(), {4, 2}, {0.7, 0.6});
  spec.renormalize = true;  // 0.7/1.3, 0.6/1.3
  expect_hand_worked(spec, eight_expert_logits(), {4, 2}, {0.7 / 1.3, 0.6 / 1.3});
}

TEST(RoutingSigmoidGroupedTopk, RoutedScalingFactorMultipliesTheFinalWeights) {
  RoutingSpec spec{.mode = TMOE_ROUTING_SIGMOID_GROUPED_TOPK,
                   .top_k = 2,
                   .n_group = 4,
                   .topk_group = 2,
                   .routed_scaling_factor = 2.5f};
  expect_hand_worked(spec, eight_expert_logits(), {4, 2}, {1.75, 1.5});  // 2.5 * {0.7, 0.6}
  // Renormalized first, then scaled: 2.5 * {0.7, 0.6} / 1.3.
  spec.renormalize = true;
  expect_hand_worked(spec, eight_expert_logits(), {4, 2}, {1.75 / 1.3, 1.5 / 1.3});
}

TEST(RoutingSigmoidGroupedTopk, CorrectionBiasChangesTheSelectionNotTheWeights) {
  // One group; scores {0.9, 0.5, 0.6, 0.2}. Unbiased: experts 0 and 2,
  // renormalized {0.9, 0.6}/1.5. Bias +0.5 on expert 1 makes the selection
  // scores {0.9, 1.0, 0.6, 0.2}: experts 1 then 0, weighted by their unbiased
  // scores {0.5, 0.9}/1.4, listed in selection order although 0.5 < 0.9.
  std::vector<float> logits;
  for (double score : {0.9, 0.5, 0.6, 0.2}) logits.push_back(logit_of(score));
  RoutingSpec spec{.mode = TMOE_ROUTING_SIGMOID_GROUPED_TOPK, .top_k = 2, .renormalize = true};
  expect_hand_worked(spec, logits, {0, 2}, {0.6, 0.4});
  const std::vector<float> bias = {0.0f, 0.5f, 0.0f, 0.0f};
  spec.correction_bias = bias.data();
  expect_hand_worked(spec, logits, {1, 0}, {0.5 / 1.4, 0.9 / 1.4});
}

TEST(RoutingSigmoidGroupedTopk, CorrectionBiasChangesTheKeptGroups) {
  // The eight-expert example with +1.0 on expert 6: group 3 becomes
  // {1.2, 0.3} -> 1.5 and is kept with group 1 (1.2). Top-2 of
  // {0.6, 0.6, 1.2, 0.3}: expert 6, then expert 2 (tie with 3). Weights are the
  // unbiased {0.2, 0.6}, renormalized to {0.25, 0.75}, times 2.5.
  const std::vector<float> bias = {0, 0, 0, 0, 0, 0, 1.0f, 0};
  const RoutingSpec spec{.mode = TMOE_ROUTING_SIGMOID_GROUPED_TOPK,
                         .top_k = 2,
                         .renormalize = true,
                         .n_group = 4,
                         .topk_group = 2,
                         .routed_scaling_factor = 2.5f,
                         .correction_bias = bias.data()};
  expect_hand_worked(spec, eight_expert_logits(), {6, 2}, {0.625, 1.875});
}

TEST(RoutingSigmoidGroupedTopk, GroupTieGoesToLowerIndex) {
  // Groups: {0.2, 0.3} -> 0.5, {0.7, 0.5} -> 1.2, {0.5, 0.7} -> 1.2, {0.1, 0.4} -> 0.5.
  // One group is kept; groups 1 and 2 tie and group 1 wins: experts 2 then 3
  // (group 2 would have given 5 then 4).
  std::vector<float> logits;
  for (double score : {0.2, 0.3, 0.7, 0.5, 0.5, 0.7, 0.1, 0.4}) logits.push_back(logit_of(score));
  const RoutingSpec spec{.mode = TMOE_ROUTING_SIGMOID_GROUPED_TOPK, .top_k = 2, .n_group = 4, .topk_group = 1};
  expect_hand_worked(spec, logits, {2, 3}, {0.7, 0.5});
}

TEST(RoutingSigmoidGroupedTopk, SingleExpertGroupsRankByTheirOnlyScore) {
  // Groups of one expert score that expert alone: {0.1, 0.2, 0.9, 0.8} keeps
  // groups 2 and 3. (Scoring a lone expert with a missing second best, e.g.
  // -inf, would tie all groups and keep groups 0 and 1.)
  std::vector<float> logits;
  for (double score : {0.1, 0.2, 0.9, 0.8}) logits.push_back(logit_of(score));
  const RoutingSpec spec{.mode = TMOE_ROUTING_SIGMOID_GROUPED_TOPK, .top_k = 2, .n_group = 4, .topk_group = 2};
  expect_hand_worked(spec, logits, {2, 3}, {0.9, 0.8});
}

// ---- the f32 router against the f64 reference on random logits ----

struct ModelRouting {
  const char* name;
  int64_t E;
  RoutingSpec spec;
  bool random_bias = false;  // a fresh correction bias per run
};

// Names the case in gtest's output instead of dumping the struct's bytes.
void PrintTo(const ModelRouting& model, std::ostream* os) { *os << model.name; }

// The shapes of configs/models.json, plus the switches those leave off.
const ModelRouting kModelRoutings[] = {
    {"mixtral_8x7b", 8, {.mode = TMOE_ROUTING_SOFTMAX_TOPK, .top_k = 2, .renormalize = true}},
    {"qwen3_30b_a3b", 128, {.mode = TMOE_ROUTING_SOFTMAX_TOPK, .top_k = 8, .renormalize = true}},
    {"softmax_topk_no_renormalize", 128, {.mode = TMOE_ROUTING_SOFTMAX_TOPK, .top_k = 8}},
    {"deepseek_v3",
     256,
     {.mode = TMOE_ROUTING_SIGMOID_GROUPED_TOPK,
      .top_k = 8,
      .renormalize = true,
      .n_group = 8,
      .topk_group = 4,
      .routed_scaling_factor = 2.5f},
     true},
    {"deepseek_v3_no_bias_no_renormalize",
     256,
     {.mode = TMOE_ROUTING_SIGMOID_GROUPED_TOPK,
      .top_k = 8,
      .n_group = 8,
      .topk_group = 4,
      .routed_scaling_factor = 2.5f}},
    {"gpt_oss_120b", 128, {.mode = TMOE_ROUTING_TOPK_SOFTMAX, .top_k = 4}},
};

unsigned test_seed() {
  // TMOE_TEST_SEED replays a failure with the seed its trace printed.
  if (const char* fixed = std::getenv("TMOE_TEST_SEED")) return static_cast<unsigned>(std::strtoul(fixed, nullptr, 10));
  return std::random_device{}();
}

// Smallest f64 gap between two scores whose order decides one token's grouped
// routing: the last kept group against the first dropped one, and neighbours
// among the k+1 best experts of the kept groups.
double grouped_decision_margin(const double* logits, const float* bias, int64_t E, const RoutingSpec& spec) {
  std::vector<double> biased(E);
  for (int64_t e = 0; e < E; ++e) biased[e] = 1.0 / (1.0 + std::exp(-logits[e])) + (bias ? bias[e] : 0.0);
  const int64_t group_size = E / spec.n_group;
  std::vector<double> group_scores;
  for (int64_t g = 0; g < spec.n_group; ++g) {
    std::vector<double> members(biased.begin() + g * group_size, biased.begin() + (g + 1) * group_size);
    std::sort(members.rbegin(), members.rend());
    group_scores.push_back(group_size == 1 ? members[0] : members[0] + members[1]);
  }
  std::vector<int64_t> groups(spec.n_group);
  std::iota(groups.begin(), groups.end(), 0);
  std::stable_sort(groups.begin(), groups.end(),
                   [&](int64_t a, int64_t b) { return group_scores[a] > group_scores[b]; });
  double margin = INFINITY;
  if (spec.topk_group < spec.n_group) {
    margin = group_scores[groups[spec.topk_group - 1]] - group_scores[groups[spec.topk_group]];
  }
  std::vector<double> candidates;
  for (int64_t rank = 0; rank < spec.topk_group; ++rank) {
    const int64_t g = groups[rank];
    candidates.insert(candidates.end(), biased.begin() + g * group_size, biased.begin() + (g + 1) * group_size);
  }
  std::sort(candidates.rbegin(), candidates.rend());
  for (size_t j = 0; j + 1 < candidates.size() && j < static_cast<size_t>(spec.top_k); ++j) {
    margin = std::min(margin, candidates[j] - candidates[j + 1]);
  }
  return margin;
}

class RoutingVsReference : public testing::TestWithParam<std::tuple<ModelRouting, tmoe_dtype>> {};

TEST_P(RoutingVsReference, MatchesFloat64) {
  const auto& [model, dtype] = GetParam();
  const int64_t E = model.E, k = model.spec.top_k;
  // Enough rows to take the router's multithreaded path for E >= 128.
  const int64_t T = 600;
  const unsigned seed = test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " (set TMOE_TEST_SEED to replay)");
  std::mt19937 rng(seed);

  RoutingSpec spec = model.spec;
  std::vector<float> bias;
  if (model.random_bias) {
    // Large enough against sigmoid scores in (0, 1) to change selections.
    std::uniform_real_distribution<float> bias_value(-0.25f, 0.25f);
    for (int64_t e = 0; e < E; ++e) bias.push_back(bias_value(rng));
    spec.correction_bias = bias.data();
  }

  // Each token's logits are a random permutation of the grid (i - (E-1)/2) * 0.05,
  // each moved by less than 0.005, then rounded to the logits dtype. Rounding
  // is monotonic and the coarsest spacing used (bf16 on |x| < 8) is 2^-5, so
  // any two logits stay >= 0.05 - 2*0.005 - 2^-5 > 0.008 apart: their
  // probabilities differ by ~1%, far beyond f32 rounding, and the f32 router
  // must choose exactly the experts of the f64 reference, in the same order.
  // Grouped routing also compares sums of two sigmoid scores plus bias, whose
  // gaps no grid controls; tokens whose deciding f64 gap is under 2e-6 (about
  // ten times the f32 error of such a sum) are skipped and must stay rare.
  std::vector<float> grid(E);
  for (int64_t i = 0; i < E; ++i) grid[i] = (static_cast<float>(i) - 0.5f * static_cast<float>(E - 1)) * 0.05f;
  std::uniform_real_distribution<float> jitter(-0.005f, 0.005f);
  std::vector<uint32_t> storage(T * E);  // room for 4-byte or 2-byte elements
  std::vector<double> decoded(T * E);
  for (int64_t t = 0; t < T; ++t) {
    std::shuffle(grid.begin(), grid.end(), rng);
    for (int64_t e = 0; e < E; ++e) {
      tmoe::store_from_f32(storage.data(), dtype, t * E + e, grid[e] + jitter(rng));
      decoded[t * E + e] = tmoe::load_as_f32(storage.data(), dtype, t * E + e);
    }
  }

  const CoreRouted core = core_route(spec, storage.data(), dtype, T, E);
  const tmoe::reference::Routed ref = tmoe::reference::route(public_routing(spec, E), decoded, T, E);
  ASSERT_EQ(ref.ids.size(), static_cast<size_t>(T * k));

  // Worst-case relative error of the f32 weights: a sequential f32 sum of n
  // positive terms is within (n-1) * 2^-24 relative; 32 more units cover exp,
  // sigmoid, the max subtraction (|logit - max| < 13) and the final divisions.
  const int64_t summed_terms = spec.mode == TMOE_ROUTING_SOFTMAX_TOPK ? E + k : k;
  const double tolerance = static_cast<double>(summed_terms + 32) * std::ldexp(1.0, -24);
  int64_t skipped = 0;
  for (int64_t t = 0; t < T; ++t) {
    if (spec.mode == TMOE_ROUTING_SIGMOID_GROUPED_TOPK &&
        grouped_decision_margin(&decoded[t * E], spec.correction_bias, E, spec) < 2e-6) {
      ++skipped;
      continue;
    }
    std::ostringstream mismatch;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t i = t * k + j;
      const double allowed = tolerance * std::abs(ref.weights[i]);
      if (core.ids[i] != ref.ids[i] || !(std::abs(core.weights[i] - ref.weights[i]) <= allowed)) {
        mismatch << " choice " << j << ": f32 (" << core.ids[i] << ", " << core.weights[i] << ") vs f64 (" << ref.ids[i]
                 << ", " << ref.weights[i] << "), allowed weight error " << allowed << ";";
      }
    }
    // One token's report is enough to debug; the rest would only repeat it.
    ASSERT_TRUE(mismatch.str().empty()) << "token " << t << ":" << mismatch.str();
  }
  EXPECT_LE(skipped, T / 50) << "near-tied tokens skipped";
}

std::string routing_case_name(const testing::TestParamInfo<RoutingVsReference::ParamType>& info) {
  return std::string(std::get<0>(info.param).name) + "_" + tmoe_dtype_name(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Models, RoutingVsReference,
                         testing::Combine(testing::ValuesIn(kModelRoutings),
                                          testing::Values(TMOE_DTYPE_F32, TMOE_DTYPE_BF16, TMOE_DTYPE_F16)),
                         routing_case_name);

// ---- the reference's error measure ----

TEST(RoutingReference, RelativeL2) {
  using tmoe::reference::relative_l2;
  // ||(3,4) - (0,0)|| / ||(3,4)|| = 1; ||(0.3,0.4)|| / ||(3,4)|| = 0.1.
  EXPECT_DOUBLE_EQ(relative_l2({3.0, 4.0}, {0.0, 0.0}), 1.0);
  EXPECT_NEAR(relative_l2({3.0, 4.0}, {3.3, 4.4}), 0.1, 1e-12);
  EXPECT_DOUBLE_EQ(relative_l2({0.0, 0.0}, {3.0, 4.0}), 5.0);  // zero reference: ||actual||
  EXPECT_TRUE(std::isnan(relative_l2({3.0, 4.0}, {NAN, 4.0})));
  EXPECT_TRUE(std::isnan(relative_l2({3.0, 4.0}, {3.0})));
}

}  // namespace
