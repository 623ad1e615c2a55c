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

#include "backend_fixture.hpp"
#include "core/numeric.hpp"
#include "core/problem.hpp"
#include "reference/reference.hpp"

namespace tmoe::testing {
namespace {

enum class Source { kGivenIds, kSoftmaxTopk, kTopkSoftmax, kSigmoidGroupedTopk };
enum class Placement { kRandom, kAllOnOneExpert, kEvenExpertsOnly };

struct LayerCase {
  int64_t T, E, k, H, I;
  tmoe_dtype dtype;
  Source source = Source::kGivenIds;
  int64_t shared_I = 0;
  Placement placement = Placement::kRandom;  // given ids only
  bool renormalize = false;
  int32_t n_group = 1, topk_group = 1;  // sigmoid_grouped_topk
  float routed_scaling_factor = 1.0f;
  bool correction_bias = false;
  tmoe_dtype logits_dtype = TMOE_DTYPE_F32;
  int64_t checked_rows = 0;  // rows compared with the reference; 0: all
};

std::string case_name(const LayerCase& c) {
  std::string name = "T";
  for (auto [separator, value] : {std::pair{"", c.T}, {"_E", c.E}, {"_k", c.k}, {"_H", c.H}, {"_I", c.I}}) {
    name.append(separator).append(std::to_string(value));
  }
  name.append("_").append(tmoe_dtype_name(c.dtype));
  switch (c.source) {
    case Source::kGivenIds: name += "_ids"; break;
    case Source::kSoftmaxTopk: name += "_softmax_topk"; break;
    case Source::kTopkSoftmax: name += "_topk_softmax"; break;
    case Source::kSigmoidGroupedTopk:
      name.append("_grouped").append(std::to_string(c.n_group)).append("x").append(std::to_string(c.topk_group));
      break;
  }
  if (c.renormalize) name += "_renorm";
  if (c.correction_bias) name += "_bias";
  if (c.routed_scaling_factor != 1.0f) name += "_scaled";
  if (c.source != Source::kGivenIds && c.logits_dtype != TMOE_DTYPE_F32) {
    name.append("_").append(tmoe_dtype_name(c.logits_dtype)).append("logits");
  }
  if (c.placement == Placement::kAllOnOneExpert) name += "_one_expert";
  if (c.placement == Placement::kEvenExpertsOnly) name += "_idle_experts";
  if (c.shared_I > 0) name.append("_shared").append(std::to_string(c.shared_I));
  return name;
}

// Test names and failure messages show the case, not its bytes.
void PrintTo(const LayerCase& c, std::ostream* os) { *os << case_name(c); }

// Relative L2 bounds against the float64 reference. Both sides read the same
// stored inputs, so what separates them is:
//  bf16: rounding of the output to 8 significant bits (unit roundoff 2^-9 =
//        2e-3 per element, ~1e-3 in L2), and of the SwiGLU intermediate where a
//        GPU pipeline stores it in bf16; 1e-2 leaves room for both;
//  f16:  the same with 11 bits (2^-12 = 2.4e-4 per element); 2e-3;
//  f32:  no storage rounding; f32 accumulation over H or I terms gives ~1e-7
//        to 1e-6 relative; 1e-5.
double tolerance(tmoe_dtype dtype) {
  switch (dtype) {
    case TMOE_DTYPE_BF16: return 1e-2;
    case TMOE_DTYPE_F16: return 2e-3;
    default: return 1e-5;
  }
}
// A single row may stray further than the whole tensor (fewer elements to
// average over), but a row that is wrong (a missed expert, a wrong weight)
// is off by far more than this.
constexpr double kWorstRowFactor = 5.0;

// splitmix64: a counter hash, so large tensors fill in parallel, reproducibly.
uint64_t mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Uniform values of standard deviation `stddev`, stored as dtype.
std::vector<uint8_t> random_tensor(int64_t n, tmoe_dtype dtype, double stddev, uint64_t seed) {
  std::vector<uint8_t> bytes(static_cast<size_t>(n) * dtype_size(dtype));
  const double half_width = stddev * std::sqrt(3.0);
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    const double u = static_cast<double>(mix(seed ^ mix(static_cast<uint64_t>(i))) >> 11) * 0x1.0p-53;
    store_from_f32(bytes.data(), dtype, i, static_cast<float>((2.0 * u - 1.0) * half_width));
  }
  return bytes;
}

// A problem on the host: the inputs, and args describing them (out absent).
// Not copyable: args points into the vectors.
struct HostProblem {
  HostProblem(const LayerCase& c, uint64_t seed);
  HostProblem(const HostProblem&) = delete;
  HostProblem& operator=(const HostProblem&) = delete;

  std::vector<uint8_t> x, w13, w2, shared_w13, shared_w2, logits;
  std::vector<int32_t> ids;
  std::vector<float> weights, bias;
  tmoe_moe_args args{};

 private:
  void draw_ids(const LayerCase& c, std::mt19937_64& rng);
  void draw_logits(const LayerCase& c, std::mt19937_64& rng);
};

HostProblem::HostProblem(const LayerCase& c, uint64_t seed) {
  const int64_t T = c.T, E = c.E, H = c.H, I = c.I;
  // Scaled so that g, u and the output are O(1): SwiGLU works in its nonlinear
  // range and no format overflows.
  x = random_tensor(T * H, c.dtype, 1.0, mix(seed + 1));
  w13 = random_tensor(E * 2 * I * H, c.dtype, 1.0 / std::sqrt(static_cast<double>(H)), mix(seed + 2));
  w2 = random_tensor(E * H * I, c.dtype, 1.0 / std::sqrt(static_cast<double>(I)), mix(seed + 3));
  args.x = tmoe::tensor(x.data(), c.dtype, {T, H});
  args.w13 = tmoe::tensor(w13.data(), c.dtype, {E, 2 * I, H});
  args.w2 = tmoe::tensor(w2.data(), c.dtype, {E, H, I});
  if (c.shared_I > 0) {
    const int64_t Is = c.shared_I;
    shared_w13 = random_tensor(2 * Is * H, c.dtype, 1.0 / std::sqrt(static_cast<double>(H)), mix(seed + 4));
    shared_w2 = random_tensor(H * Is, c.dtype, 1.0 / std::sqrt(static_cast<double>(Is)), mix(seed + 5));
    args.shared_w13 = tmoe::tensor(shared_w13.data(), c.dtype, {2 * Is, H});
    args.shared_w2 = tmoe::tensor(shared_w2.data(), c.dtype, {H, Is});
  }
  std::mt19937_64 rng(mix(seed + 6));
  if (c.source == Source::kGivenIds) {
    draw_ids(c, rng);
  } else {
    draw_logits(c, rng);
  }
}

// k distinct experts per token and weights in [0.05, 1).
void HostProblem::draw_ids(const LayerCase& c, std::mt19937_64& rng) {
  const int64_t T = c.T, E = c.E, k = c.k;
  std::vector<int32_t> candidates;
  for (int32_t e = 0; e < E; ++e) {
    if (c.placement != Placement::kEvenExpertsOnly || e % 2 == 0) candidates.push_back(e);
  }
  const int32_t hot = static_cast<int32_t>(rng() % static_cast<uint64_t>(E));
  if (c.placement == Placement::kAllOnOneExpert) {
    std::erase(candidates, hot);
  }
  std::uniform_real_distribution<float> weight(0.05f, 1.0f);
  ids.resize(static_cast<size_t>(T * k));
  weights.resize(static_cast<size_t>(T * k));
  for (int64_t t = 0; t < T; ++t) {
    std::shuffle(candidates.begin(), candidates.end(), rng);
    for (int64_t j = 0; j < k; ++j) {
      if (c.placement == Placement::kAllOnOneExpert) {
        ids[t * k + j] = j == 0 ? hot : candidates[j - 1];
      } else {
        ids[t * k + j] = candidates[j];
      }
      weights[t * k + j] = weight(rng);
    }
  }
  args.topk_ids = tmoe::tensor(ids.data(), TMOE_DTYPE_I32, {T, k});
  args.topk_weights = tmoe::tensor(weights.data(), TMOE_DTYPE_F32, {T, k});
}

// Router logits that f32 routing (the library) and f64 routing (the reference)
// rank identically: each row is a random permutation of evenly spaced values,
// plus a jitter of 5% of the spacing so the values are not all exactly
// representable. A near-tie would let the two precisions pick different experts
// and fail the test for no fault of the layer; spaced values leave a gap of at
// least 90% of the spacing, far above f32 rounding.
//
// For sigmoid_grouped_topk the spacing is laid out in score space (the logits
// are the inverse sigmoid of the scores), and the group ranking must be just as
// clear: the groups take random ranks and a group of rank r holds the values
// r*G .. r*G+G-1 (G experts per group), so the sums of each group's two best
// scores differ by at least 2*G spacings. The correction bias moves whole groups
// by -1, 0 or +1 times the full score range (E spacings), which changes the
// selection without creating a tie: biased scores and group sums stay distinct
// multiples of the spacing.
void HostProblem::draw_logits(const LayerCase& c, std::mt19937_64& rng) {
  const int64_t T = c.T, E = c.E;
  std::uniform_real_distribution<double> jitter(-0.05, 0.05);
  std::vector<double> values(static_cast<size_t>(T * E));
  std::vector<int64_t> order(static_cast<size_t>(E));
  std::iota(order.begin(), order.end(), 0);
  if (c.source != Source::kSigmoidGroupedTopk) {
    const double spacing = 8.0 / static_cast<double>(E);  // logits within [-4, 4]
    for (int64_t t = 0; t < T; ++t) {
      std::shuffle(order.begin(), order.end(), rng);
      for (int64_t e = 0; e < E; ++e) {
        values[t * E + e] = (static_cast<double>(order[e]) - 0.5 * static_cast<double>(E) + jitter(rng)) * spacing;
      }
    }
  } else {
    const int64_t G = E / c.n_group;
    const double spacing = 0.8 / static_cast<double>(E);  // scores within (0.1, 0.9)
    std::vector<int64_t> group_rank(static_cast<size_t>(c.n_group)), within(static_cast<size_t>(G));
    std::iota(group_rank.begin(), group_rank.end(), 0);
    std::iota(within.begin(), within.end(), 0);
    for (int64_t t = 0; t < T; ++t) {
      std::shuffle(group_rank.begin(), group_rank.end(), rng);
      for (int64_t g = 0; g < c.n_group; ++g) {
        std::shuffle(within.begin(), within.end(), rng);
        for (int64_t i = 0; i < G; ++i) {
          const double score = 0.1 + (static_cast<double>(group_rank[g] * G + within[i]) + 0.5 + jitter(rng)) * spacing;
          values[t * E + g * G + i] = std::log(score / (1.0 - score));
        }
      }
    }
    if (c.correction_bias) {
      bias.resize(static_cast<size_t>(E));
      for (int64_t g = 0; g < c.n_group; ++g) {
        const double shift = static_cast<double>(static_cast<int64_t>(rng() % 3) - 1) * 0.8;
        for (int64_t i = 0; i < G; ++i) bias[g * G + i] = static_cast<float>(shift);
      }
    }
  }
  logits.resize(static_cast<size_t>(T * E) * dtype_size(c.logits_dtype));
  for (int64_t i = 0; i < T * E; ++i) store_from_f32(logits.data(), c.logits_dtype, i, static_cast<float>(values[i]));

  const tmoe_routing_mode mode = c.source == Source::kSoftmaxTopk   ? TMOE_ROUTING_SOFTMAX_TOPK
                                 : c.source == Source::kTopkSoftmax ? TMOE_ROUTING_TOPK_SOFTMAX
                                                                    : TMOE_ROUTING_SIGMOID_GROUPED_TOPK;
  args.routing = tmoe::routing(mode, static_cast<int32_t>(c.k), c.renormalize);
  args.routing.n_group = c.n_group;
  args.routing.topk_group = c.topk_group;
  args.routing.routed_scaling_factor = c.routed_scaling_factor;
  if (!bias.empty()) args.routing.correction_bias = tmoe::tensor(bias.data(), TMOE_DTYPE_F32, {E});
  args.router_logits = tmoe::tensor(logits.data(), c.logits_dtype, {T, E});
}

// The same problem in the backend's memory, with an output buffer filled with
// 0xFF bytes: NaN in f32, f16 and bf16 alike, which the layer never produces.
struct DeviceProblem {
  tmoe_moe_args args;
  void* out;
  size_t out_bytes;
};

DeviceProblem upload(BackendHarness& harness, const HostProblem& host) {
  DeviceProblem d{host.args, nullptr, 0};
  auto move = [&](tmoe_tensor& t, const auto& data) {
    const bool present = t.rank != 0 || t.data != nullptr;  // tmoe.h: absent tensors are zeroed
    if (present) t.data = harness.upload(data);
  };
  move(d.args.x, host.x);
  move(d.args.w13, host.w13);
  move(d.args.w2, host.w2);
  move(d.args.shared_w13, host.shared_w13);
  move(d.args.shared_w2, host.shared_w2);
  move(d.args.router_logits, host.logits);
  move(d.args.topk_ids, host.ids);
  move(d.args.topk_weights, host.weights);
  move(d.args.routing.correction_bias, host.bias);
  const int64_t T = host.args.x.shape[0], H = host.args.x.shape[1];
  d.out_bytes = static_cast<size_t>(T * H) * dtype_size(host.args.x.dtype);
  d.out = harness.alloc(d.out_bytes);
  harness.fill(d.out, 0xFF, d.out_bytes);
  d.args.out = tmoe::tensor(d.out, host.args.x.dtype, {T, H});
  return d;
}

std::vector<uint8_t> run_layer(BackendHarness& harness, const DeviceProblem& d) {
  const tmoe_status status = tmoe_moe_forward(harness.context().get(), &d.args);
  EXPECT_EQ(status, TMOE_SUCCESS) << tmoe_last_error();
  std::vector<uint8_t> out(d.out_bytes);
  harness.download(out.data(), d.out, d.out_bytes);
  return out;
}

// Every row, or the first, the last and a random sample of the others.
std::vector<int64_t> rows_to_check(const LayerCase& c, uint64_t seed) {
  std::vector<int64_t> rows(static_cast<size_t>(c.T));
  std::iota(rows.begin(), rows.end(), 0);
  if (c.checked_rows == 0 || c.checked_rows >= c.T) return rows;
  std::mt19937_64 rng(mix(seed + 7));
  std::shuffle(rows.begin() + 1, rows.end() - 1, rng);
  rows.resize(static_cast<size_t>(c.checked_rows - 1));
  rows.push_back(c.T - 1);
  std::sort(rows.begin(), rows.end());
  return rows;
}

class LayerTest : public ::testing::TestWithParam<std::tuple<std::string, LayerCase>> {};

TEST_P(LayerTest, MatchesFloat64Reference) {
  const auto& [backend, c] = GetParam();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  const HostProblem host(c, seed);
  BackendHarness harness(backend);
  const DeviceProblem device = upload(harness, host);
  const std::vector<uint8_t> out = run_layer(harness, device);
  if (HasFailure()) return;

  int64_t unwritten = 0;
  for (int64_t i = 0; i < c.T * c.H; ++i) unwritten += std::isnan(load_as_f32(out.data(), c.dtype, i)) ? 1 : 0;
  EXPECT_EQ(unwritten, 0) << "elements of out left as the NaN poison (or computed as NaN)";

  const std::vector<int64_t> rows = rows_to_check(c, seed);
  const std::vector<double> expected = reference::moe_layer(host.args, rows);
  std::vector<double> actual(expected.size());
  for (size_t r = 0; r < rows.size(); ++r) {
    for (int64_t h = 0; h < c.H; ++h) actual[r * c.H + h] = load_as_f32(out.data(), c.dtype, rows[r] * c.H + h);
  }
  const double tol = tolerance(c.dtype);
  EXPECT_LE(reference::relative_l2(expected, actual), tol) << rows.size() << " rows compared";

  double worst = 0.0;
  int64_t worst_row = -1;
  for (size_t r = 0; r < rows.size(); ++r) {
    const auto begin = static_cast<std::ptrdiff_t>(r * c.H), end = begin + c.H;
    const double err = reference::relative_l2(std::vector<double>(expected.begin() + begin, expected.begin() + end),
                                              std::vector<double>(actual.begin() + begin, actual.begin() + end));
    if (!(err <= worst)) {
      worst = err;
      worst_row = rows[r];
    }
  }
  EXPECT_LE(worst, kWorstRowFactor * tol) << "worst row: token " << worst_row;
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
      // gpt-oss; and k = E.
      {.T = 255, .E = 128, .k = 4, .H = 33, .I = 47, .dtype = kBF16, .source = topk},
      {.T = 255, .E = 8, .k = 8, .H = 33, .I = 47, .dtype = kF32, .source = topk, .logits_dtype = kF16},
      // DeepSeek-V3: groups, correction bias, renormalisation, scaling, a shared expert.
      {.T = 255, .E = 128, .k = 8, .H = 33, .I = 47, .dtype = kBF16, .source = grouped, .shared_I = 47,
       .renormalize = true, .n_group = 8, .topk_group = 4, .routed_scaling_factor = 2.5f, .correction_bias = true},
      {.T = 255, .E = 60, .k = 6, .H = 33, .I = 47, .dtype = kF32, .source = grouped, .n_group = 4, .topk_group = 2},
      {.T = 17, .E = 8, .k = 1, .H = 33, .I = 47, .dtype = kF16, .source = grouped, .correction_bias = true},
  };
}

// Experts without tokens, and every token on one expert.
std::vector<LayerCase> placements() {
  const Placement one = Placement::kAllOnOneExpert, even = Placement::kEvenExpertsOnly;
  return {
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

// The same inputs give bit-identical outputs: within one context, and from a
// fresh one (no state carried between calls changes the result).
class DeterminismTest : public ::testing::TestWithParam<std::tuple<std::string, LayerCase>> {};

TEST_P(DeterminismTest, RepeatedCallsAreBitIdentical) {
  const auto& [backend, c] = GetParam();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  const HostProblem host(c, seed);
  BackendHarness harness(backend);
  const DeviceProblem device = upload(harness, host);
  const std::vector<uint8_t> first = run_layer(harness, device);
  harness.fill(device.out, 0xFF, device.out_bytes);
  const std::vector<uint8_t> second = run_layer(harness, device);
  EXPECT_TRUE(first == second) << "two calls in one context differ";

  BackendHarness fresh(backend);
  const DeviceProblem fresh_device = upload(fresh, host);
  EXPECT_TRUE(first == run_layer(fresh, fresh_device)) << "a fresh context differs";
}

INSTANTIATE_TEST_SUITE_P(
    Determinism, DeterminismTest,
    ::testing::Combine(::testing::ValuesIn(backend_names()),
                       ::testing::Values(LayerCase{.T = 255, .E = 60, .k = 6, .H = 47, .I = 33, .dtype = kBF16,
                                                   .source = Source::kSoftmaxTopk, .shared_I = 33},
                                         LayerCase{.T = 255, .E = 8, .k = 2, .H = 1024, .I = 1408, .dtype = kBF16})),
    [](const ::testing::TestParamInfo<DeterminismTest::ParamType>& info) {
      return std::get<0>(info.param) + "_" + case_name(std::get<1>(info.param));
    });

}  // namespace
}  // namespace tmoe::testing
