// The layer tests' problems: cases, random host inputs, their copies in a
// backend's memory, and the comparison with the float64 reference. Shared by
// the suites every backend runs and by the GPU-only suites.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "backend_fixture.hpp"
#include "core/numeric.hpp"
#include "core/problem.hpp"
#include "reference/random.hpp"
#include "reference/reference.hpp"

namespace tmoe::testing {

using reference::mix;
using reference::random_tensor;

enum class Source { kGivenIds, kSoftmaxTopk, kTopkSoftmax, kSigmoidGroupedTopk };
// kRepeatsInToken: each id drawn from two experts, so a token may name one twice
// (given ids are not required to be distinct) and an expert may hold more slots than
// a token has ids or the decode kernel's tile has rows.
enum class Placement { kRandom, kAllOnOneExpert, kEvenExpertsOnly, kRepeatsInToken };

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
  bool nan_logits = false;    // every third token has one NaN logit (check all rows)
};

inline std::string case_name(const LayerCase& c) {
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
  if (c.placement == Placement::kRepeatsInToken) name += "_repeats_in_token";
  if (c.shared_I > 0) name.append("_shared").append(std::to_string(c.shared_I));
  if (c.nan_logits) name += "_nan_logits";
  return name;
}

// Test names and failure messages show the case, not its bytes.
inline void PrintTo(const LayerCase& c, std::ostream* os) { *os << case_name(c); }

// Relative L2 bounds against the float64 reference. Both sides read the same
// stored inputs, so what separates them is:
//  bf16: rounding of the output to 8 significant bits (unit roundoff 2^-9 =
//        2e-3 per element, ~1e-3 in L2), and of the SwiGLU intermediate and
//        each expert's output where a GPU pipeline stores them in bf16; 1e-2
//        leaves room for all three;
//  f16:  the same with 11 bits (2^-12 = 2.4e-4 per element); 2e-3;
//  f32:  no storage rounding; f32 accumulation over H or I terms gives ~1e-7
//        to 1e-6 relative; 1e-5.
inline double tolerance(tmoe_dtype dtype) {
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

inline HostProblem::HostProblem(const LayerCase& c, uint64_t seed) {
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

// k distinct experts per token (but kRepeatsInToken) and weights in [0.05, 1).
inline void HostProblem::draw_ids(const LayerCase& c, std::mt19937_64& rng) {
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
      } else if (c.placement == Placement::kRepeatsInToken) {
        ids[t * k + j] = static_cast<int32_t>((hot + rng() % 2) % E);
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
inline void HostProblem::draw_logits(const LayerCase& c, std::mt19937_64& rng) {
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
  // A NaN logit ranks as -inf, so its token still gets k experts; under
  // softmax_topk it makes every probability of the token, and so its output row,
  // NaN (as in the reference).
  if (c.nan_logits) {
    for (int64_t t = 0; t < T; t += 3) values[t * E + static_cast<int64_t>(rng() % static_cast<uint64_t>(E))] = NAN;
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

// Every input tensor of a problem beside its host data, so that each copy
// (upload, re-upload) walks the same list.
template <typename Args, typename Visit>
void for_each_input(Args& args, const HostProblem& host, Visit&& visit) {
  visit(args.x, host.x);
  visit(args.w13, host.w13);
  visit(args.w2, host.w2);
  visit(args.shared_w13, host.shared_w13);
  visit(args.shared_w2, host.shared_w2);
  visit(args.router_logits, host.logits);
  visit(args.topk_ids, host.ids);
  visit(args.topk_weights, host.weights);
  visit(args.routing.correction_bias, host.bias);
}

inline DeviceProblem upload(BackendHarness& harness, const HostProblem& host) {
  DeviceProblem d{host.args, nullptr, 0};
  for_each_input(d.args, host, [&](tmoe_tensor& t, const auto& data) {
    const bool present = t.rank != 0 || t.data != nullptr;  // tmoe.h: absent tensors are zeroed
    if (present) t.data = harness.upload(data);
  });
  const int64_t T = host.args.x.shape[0], H = host.args.x.shape[1];
  d.out_bytes = static_cast<size_t>(T * H) * dtype_size(host.args.x.dtype);
  d.out = harness.alloc(d.out_bytes);
  harness.fill(d.out, 0xFF, d.out_bytes);
  d.args.out = tmoe::tensor(d.out, host.args.x.dtype, {T, H});
  d.args.stream = harness.stream();
  return d;
}

inline std::vector<uint8_t> run_layer(BackendHarness& harness, const DeviceProblem& d) {
  const tmoe_status status = tmoe_moe_forward(harness.context().get(), &d.args);
  EXPECT_EQ(status, TMOE_SUCCESS) << tmoe_last_error();
  std::vector<uint8_t> out(d.out_bytes);
  harness.download(out.data(), d.out, d.out_bytes);
  return out;
}

// Every row, or the first, the last and a random sample of the others.
inline std::vector<int64_t> rows_to_check(const LayerCase& c, uint64_t seed) {
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

// The whole output written, and within the dtype's bound of the float64
// reference on the checked rows, overall and row by row. A row the reference
// gives as NaN (a NaN logit under softmax_topk) must be NaN throughout.
inline void expect_matches_reference(const LayerCase& c, const HostProblem& host, const std::vector<uint8_t>& out,
                                     uint64_t seed) {
  const std::vector<int64_t> checked = rows_to_check(c, seed);
  const std::vector<double> reference_rows = reference::moe_layer(host.args, checked);
  std::vector<char> nan_expected(static_cast<size_t>(c.T), 0);
  std::vector<int64_t> rows;
  std::vector<double> expected;
  for (size_t r = 0; r < checked.size(); ++r) {
    const auto begin = reference_rows.begin() + static_cast<std::ptrdiff_t>(r * c.H), end = begin + c.H;
    if (std::any_of(begin, end, [](double v) { return std::isnan(v); })) {
      nan_expected[checked[r]] = 1;
    } else {
      rows.push_back(checked[r]);
      expected.insert(expected.end(), begin, end);
    }
  }
  int64_t unwritten = 0, finite_in_nan_rows = 0;
  for (int64_t i = 0; i < c.T * c.H; ++i) {
    const bool is_nan = std::isnan(load_as_f32(out.data(), c.dtype, i));
    if (nan_expected[i / c.H]) {
      finite_in_nan_rows += is_nan ? 0 : 1;
    } else {
      unwritten += is_nan ? 1 : 0;
    }
  }
  EXPECT_EQ(unwritten, 0) << "elements of out left as the NaN poison (or computed as NaN)";
  EXPECT_EQ(finite_in_nan_rows, 0) << "elements finite in rows the reference gives as NaN";
  EXPECT_EQ(std::count(nan_expected.begin(), nan_expected.end(), 1) > 0,
            c.nan_logits && c.source == Source::kSoftmaxTopk && c.T > 0)
      << "rows the reference gives as NaN";

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

}  // namespace tmoe::testing
