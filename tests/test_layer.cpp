// The MoE layer of every backend against the float64 reference, on fresh
// random inputs each run (the seed is printed with any failure).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "layer_problem.hpp"

namespace tmoe::testing {
namespace {

class LayerTest : public ::testing::TestWithParam<std::tuple<std::string, LayerCase>> {};

TEST_P(LayerTest, MatchesFloat64Reference) {
  const auto& [backend, c] = GetParam();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  const HostProblem host(c, seed);
  BackendHarness harness(backend);
  const DeviceProblem device = upload(harness, host);
  if (!harness.runs_dtype(c.dtype)) {
    EXPECT_EQ(tmoe_moe_forward(harness.context().get(), &device.args), TMOE_ERROR_UNSUPPORTED);
    EXPECT_NE(std::string(tmoe_last_error()).find("f32"), std::string::npos) << tmoe_last_error();
    return;
  }
  const std::vector<uint8_t> out = run_layer(harness, device);
  if (HasFailure()) return;

  expect_matches_reference(c, host, out, seed);
}

constexpr tmoe_dtype kBF16 = TMOE_DTYPE_BF16, kF16 = TMOE_DTYPE_F16, kF32 = TMOE_DTYPE_F32;

// T in {0, 1, 3, 17, 255, 1000} in every dtype, on a small odd shape.
std::vector<LayerCase> token_counts() {
  std::vector<LayerCase> cases;
  for (int64_t T : {0, 1, 3, 17, 255, 1000}) {
    for (tmoe_dtype dtype : {kBF16, kF16, kF32}) cases.push_back({.T = T, .E = 8, .k = 2, .H = 33, .I = 47, .dtype = dtype});
  }
  // More rows than one sgemm pass takes (1024), for an expert and for the shared expert.
  cases.push_back({.T = 1500, .E = 1, .k = 1, .H = 33, .I = 47, .dtype = kF32, .shared_I = 21});
  // Prefill sizes: 65536 slots take the align kernels' large chunks on a GPU.
  cases.push_back({.T = 8192, .E = 64, .k = 8, .H = 256, .I = 128, .dtype = kBF16, .source = Source::kSoftmaxTopk,
                   .renormalize = true, .checked_rows = 64});
  cases.push_back({.T = 8192, .E = 8, .k = 2, .H = 512, .I = 384, .dtype = kF16, .shared_I = 256, .checked_rows = 64});
  return cases;
}

// E in {1, 8, 60, 128} with k in {1, 2, 6, 8} (k <= E), dtypes in turn.
std::vector<LayerCase> experts_and_top_k() {
  std::vector<LayerCase> cases;
  const tmoe_dtype dtypes[] = {kBF16, kF16, kF32};
  int turn = 0;
  for (int64_t E : {1, 8, 60, 128}) {
    for (int64_t k : {1, 2, 6, 8}) {
      if (k > E) continue;
      cases.push_back({.T = 255, .E = E, .k = k, .H = 47, .I = 33, .dtype = dtypes[turn++ % 3]});
    }
  }
  return cases;
}

// Every routing mode and its options, routed inside the layer from logits.
std::vector<LayerCase> routing_modes() {
  const Source softmax = Source::kSoftmaxTopk, topk = Source::kTopkSoftmax, grouped = Source::kSigmoidGroupedTopk;
  return {
      // Mixtral, Qwen3.
      {.T = 255, .E = 8, .k = 2, .H = 33, .I = 47, .dtype = kBF16, .source = softmax, .renormalize = true},
      {.T = 255, .E = 128, .k = 8, .H = 33, .I = 47, .dtype = kBF16, .source = softmax, .renormalize = true},
      // Qwen2-MoE: no renormalisation, a shared expert.
      {.T = 255, .E = 60, .k = 4, .H = 33, .I = 47, .dtype = kF16, .source = softmax, .shared_I = 94},
      {.T = 17, .E = 1, .k = 1, .H = 33, .I = 47, .dtype = kF32, .source = softmax},
      {.T = 255, .E = 60, .k = 6, .H = 33, .I = 47, .dtype = kBF16, .source = softmax, .renormalize = true,
       .logits_dtype = kBF16},
      // k > 8: the GPU's route by rounds (its bitonic variants stop at TOP_K 8).
      {.T = 255, .E = 60, .k = 12, .H = 33, .I = 47, .dtype = kBF16, .source = softmax, .renormalize = true},
      {.T = 255, .E = 128, .k = 16, .H = 33, .I = 47, .dtype = kF16, .source = grouped, .renormalize = true,
       .n_group = 8, .topk_group = 4, .correction_bias = true},
      // gpt-oss; and k = E.
      {.T = 255, .E = 128, .k = 4, .H = 33, .I = 47, .dtype = kBF16, .source = topk},
      {.T = 255, .E = 8, .k = 8, .H = 33, .I = 47, .dtype = kF32, .source = topk, .logits_dtype = kF16},
      // DeepSeek-V3: groups, correction bias, renormalisation, scaling, a shared expert.
      {.T = 255, .E = 128, .k = 8, .H = 33, .I = 47, .dtype = kBF16, .source = grouped, .shared_I = 47,
       .renormalize = true, .n_group = 8, .topk_group = 4, .routed_scaling_factor = 2.5f, .correction_bias = true},
      {.T = 255, .E = 60, .k = 6, .H = 33, .I = 47, .dtype = kF32, .source = grouped, .n_group = 4, .topk_group = 2},
      {.T = 17, .E = 8, .k = 1, .H = 33, .I = 47, .dtype = kF16, .source = grouped, .correction_bias = true},
      // NaN logits rank as -inf: every token keeps k experts. Decode-sized T too.
      {.T = 255, .E = 128, .k = 8, .H = 33, .I = 47, .dtype = kBF16, .source = softmax, .renormalize = true,
       .nan_logits = true},
      {.T = 1, .E = 128, .k = 8, .H = 33, .I = 47, .dtype = kBF16, .source = softmax, .renormalize = true,
       .nan_logits = true},
      {.T = 255, .E = 128, .k = 4, .H = 33, .I = 47, .dtype = kBF16, .source = topk, .logits_dtype = kBF16,
       .nan_logits = true},
      {.T = 3, .E = 128, .k = 4, .H = 33, .I = 47, .dtype = kF16, .source = topk, .nan_logits = true},
      {.T = 255, .E = 128, .k = 8, .H = 33, .I = 47, .dtype = kBF16, .source = grouped, .shared_I = 47,
       .renormalize = true, .n_group = 8, .topk_group = 4, .routed_scaling_factor = 2.5f, .correction_bias = true,
       .nan_logits = true},
  };
}

// Experts without tokens, every token on one expert, and ids repeated within tokens.
std::vector<LayerCase> placements() {
  const Placement one = Placement::kAllOnOneExpert, even = Placement::kEvenExpertsOnly,
                  repeats = Placement::kRepeatsInToken;
  return {
      {.T = 12, .E = 32, .k = 4, .H = 33, .I = 47, .dtype = kBF16, .placement = repeats},
      {.T = 12, .E = 32, .k = 4, .H = 64, .I = 48, .dtype = kF16, .shared_I = 32, .placement = repeats},
      {.T = 255, .E = 60, .k = 1, .H = 33, .I = 47, .dtype = kBF16, .placement = one},
      {.T = 255, .E = 8, .k = 2, .H = 33, .I = 47, .dtype = kF32, .placement = one},
      {.T = 255, .E = 128, .k = 8, .H = 33, .I = 47, .dtype = kF16, .placement = even},
      {.T = 17, .E = 8, .k = 2, .H = 33, .I = 47, .dtype = kBF16, .placement = even},
  };
}

std::vector<LayerCase> shared_experts() {
  return {
      {.T = 17, .E = 8, .k = 2, .H = 33, .I = 47, .dtype = kBF16, .shared_I = 47},
      {.T = 17, .E = 8, .k = 2, .H = 33, .I = 47, .dtype = kF16, .shared_I = 13},
      {.T = 17, .E = 8, .k = 2, .H = 33, .I = 47, .dtype = kF32, .shared_I = 64},
      {.T = 1000, .E = 60, .k = 4, .H = 33, .I = 47, .dtype = kBF16, .shared_I = 128},
  };
}

// Model-size hidden and intermediate sizes (odd multiples of small powers of
// two, as in gpt-oss and DeepSeek-V2-Lite), few experts to keep the weights
// small; a sample of rows is compared.
std::vector<LayerCase> model_sizes() {
  return {
      {.T = 255, .E = 8, .k = 2, .H = 2880, .I = 1408, .dtype = kBF16, .source = Source::kSoftmaxTopk,
       .renormalize = true, .checked_rows = 12},
      {.T = 17, .E = 16, .k = 6, .H = 2880, .I = 768, .dtype = kF16, .source = Source::kSigmoidGroupedTopk,
       .shared_I = 1408, .renormalize = true, .n_group = 4, .topk_group = 2, .routed_scaling_factor = 2.5f,
       .correction_bias = true, .checked_rows = 6},
      {.T = 1000, .E = 4, .k = 2, .H = 2880, .I = 1408, .dtype = kF32, .shared_I = 768, .checked_rows = 8},
      // Few tokens per expert (one matrix-vector product per token) and many.
      {.T = 3, .E = 8, .k = 2, .H = 1001, .I = 1409, .dtype = kF16},
      {.T = 255, .E = 8, .k = 2, .H = 1001, .I = 1409, .dtype = kF16, .checked_rows = 8},
  };
}

std::string layer_test_name(const ::testing::TestParamInfo<LayerTest::ParamType>& info) {
  return std::get<0>(info.param) + "_" + case_name(std::get<1>(info.param));
}

#define TMOE_LAYER_CASES(group, cases)                                                                     \
  INSTANTIATE_TEST_SUITE_P(group, LayerTest,                                                              \
                           ::testing::Combine(::testing::ValuesIn(backend_names()), ::testing::ValuesIn(cases)), \
                           layer_test_name)

TMOE_LAYER_CASES(TokenCounts, token_counts());
TMOE_LAYER_CASES(ExpertsAndTopK, experts_and_top_k());
TMOE_LAYER_CASES(RoutingModes, routing_modes());
TMOE_LAYER_CASES(Placements, placements());
TMOE_LAYER_CASES(SharedExperts, shared_experts());
TMOE_LAYER_CASES(ModelSizes, model_sizes());

// The same inputs give bit-identical outputs: over 20 calls in one context, and
// from a fresh one (no state carried between calls changes the result).
class DeterminismTest : public ::testing::TestWithParam<std::tuple<std::string, LayerCase>> {};

TEST_P(DeterminismTest, RepeatedCallsAreBitIdentical) {
  const auto& [backend, c] = GetParam();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  const HostProblem host(c, seed);
  BackendHarness harness(backend);
  const DeviceProblem device = upload(harness, host);
  const std::vector<uint8_t> first = run_layer(harness, device);
  constexpr int kRepeats = 20;
  for (int run = 1; run < kRepeats && !HasFailure(); ++run) {
    harness.fill(device.out, 0xFF, device.out_bytes);
    EXPECT_TRUE(first == run_layer(harness, device)) << "call " << run << " in one context differs from the first";
  }

  BackendHarness fresh(backend);
  const DeviceProblem fresh_device = upload(fresh, host);
  EXPECT_TRUE(first == run_layer(fresh, fresh_device)) << "a fresh context differs";
}

INSTANTIATE_TEST_SUITE_P(
    Determinism, DeterminismTest,
    ::testing::Combine(::testing::ValuesIn(backend_names()),
                       ::testing::Values(LayerCase{.T = 255, .E = 60, .k = 6, .H = 47, .I = 33, .dtype = kBF16,
                                                   .source = Source::kSoftmaxTopk, .shared_I = 33},
                                         LayerCase{.T = 255, .E = 8, .k = 2, .H = 1024, .I = 1408, .dtype = kBF16},
                                         // One token: on a GPU, the decode path (no align, no combine).
                                         LayerCase{.T = 1, .E = 64, .k = 8, .H = 2048, .I = 128, .dtype = kBF16,
                                                   .shared_I = 64})),
    [](const ::testing::TestParamInfo<DeterminismTest::ParamType>& info) {
      return std::get<0>(info.param) + "_" + case_name(std::get<1>(info.param));
    });

}  // namespace
}  // namespace tmoe::testing
