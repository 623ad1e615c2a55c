// The public surface as a user sees it: libtmoe.so and the two public headers,
// nothing else. The C ABI end to end on a small problem, checked against a
// float64 loop written here, and the C++ wrapper's RAII and exceptions.
#include <gtest/gtest.h>
#include <tmoe/tmoe.h>
#include <tmoe/tmoe.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace {

float from_bf16(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t to_bf16(float f) {  // round to nearest even; the inputs here are finite
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// A small layer with a shared expert, its inputs stored as f32 or bf16.
struct SmallProblem {
  static constexpr int64_t T = 5, H = 16, I = 12, E = 4, k = 2, Is = 8;

  explicit SmallProblem(tmoe_dtype dtype) : dtype(dtype) {
    std::mt19937 rng(2024);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    auto draw = [&](size_t n, float scale) {
      std::vector<float> v(n);
      for (float& f : v) f = dtype == TMOE_DTYPE_BF16 ? from_bf16(to_bf16(scale * uniform(rng))) : scale * uniform(rng);
      return v;
    };
    x = draw(T * H, 1.0f);
    w13 = draw(E * 2 * I * H, 0.5f);
    w2 = draw(E * H * I, 0.5f);
    shared_w13 = draw(2 * Is * H, 0.5f);
    shared_w2 = draw(H * Is, 0.5f);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t j = 0; j < k; ++j) {
        ids.push_back(static_cast<int32_t>((t + 2 * j) % E));
        weights.push_back(0.25f + 0.5f * static_cast<float>(j));
      }
      // Distinct logits one unit apart: no near-tie for the routing check.
      for (int64_t e = 0; e < E; ++e) logits.push_back(static_cast<float>((3 * t + 5 * e) % E) - 1.5f);
    }
  }

  // The inputs in the storage dtype (bf16 copies made here; f32 used as is).
  void* stored(std::vector<float>& v, std::vector<uint16_t>& bf16_copy) {
    if (dtype != TMOE_DTYPE_BF16) return v.data();
    bf16_copy.resize(v.size());
    std::transform(v.begin(), v.end(), bf16_copy.begin(), to_bf16);
    return bf16_copy.data();
  }

  tmoe_moe_args args(void* out, bool routed_from_logits) {
    tmoe_moe_args a{};
    a.x = tmoe::tensor(stored(x, x16), dtype, {T, H});
    a.w13 = tmoe::tensor(stored(w13, w13_16), dtype, {E, 2 * I, H});
    a.w2 = tmoe::tensor(stored(w2, w2_16), dtype, {E, H, I});
    a.shared_w13 = tmoe::tensor(stored(shared_w13, shared_w13_16), dtype, {2 * Is, H});
    a.shared_w2 = tmoe::tensor(stored(shared_w2, shared_w2_16), dtype, {H, Is});
    if (routed_from_logits) {
      a.router_logits = tmoe::tensor(logits.data(), TMOE_DTYPE_F32, {T, E});
      a.routing = tmoe::routing(TMOE_ROUTING_SOFTMAX_TOPK, static_cast<int32_t>(k), /*renormalize=*/true);
    } else {
      a.topk_ids = tmoe::tensor(ids.data(), TMOE_DTYPE_I32, {T, k});
      a.topk_weights = tmoe::tensor(weights.data(), TMOE_DTYPE_F32, {T, k});
    }
    a.out = tmoe::tensor(out, dtype, {T, H});
    return a;
  }

  // out[t] = sum_j w_j * w2[e_j] (silu(g) * u) + the shared expert, in double.
  std::vector<double> expected(bool routed_from_logits) const {
    std::vector<double> out(T * H, 0.0);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<int32_t> chosen(ids.begin() + t * k, ids.begin() + (t + 1) * k);
      std::vector<double> w(weights.begin() + t * k, weights.begin() + (t + 1) * k);
      if (routed_from_logits) {
        // softmax_topk with renormalisation: the k largest logits, their
        // probabilities renormalised to sum to 1 (the softmax denominator cancels).
        std::vector<int32_t> order(E);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(),
                         [&](int32_t a, int32_t b) { return logits[t * E + a] > logits[t * E + b]; });
        double sum = 0.0;
        for (int64_t j = 0; j < k; ++j) {
          chosen[j] = order[j];
          w[j] = std::exp(static_cast<double>(logits[t * E + order[j]]));
          sum += w[j];
        }
        for (double& v : w) v /= sum;
      }
      for (int64_t j = 0; j < k; ++j) add_mlp(&w13[chosen[j] * 2 * I * H], &w2[chosen[j] * H * I], I, t, w[j], out);
      add_mlp(shared_w13.data(), shared_w2.data(), Is, t, 1.0, out);
    }
    return out;
  }

  void add_mlp(const float* w13_e, const float* w2_e, int64_t inter, int64_t t, double weight,
               std::vector<double>& out) const {
    std::vector<double> act(inter);
    for (int64_t i = 0; i < inter; ++i) {
      double g = 0.0, u = 0.0;
      for (int64_t h = 0; h < H; ++h) {
        g += static_cast<double>(w13_e[i * H + h]) * x[t * H + h];
        u += static_cast<double>(w13_e[(inter + i) * H + h]) * x[t * H + h];
      }
      act[i] = g / (1.0 + std::exp(-g)) * u;
    }
    for (int64_t h = 0; h < H; ++h) {
      double y = 0.0;
      for (int64_t i = 0; i < inter; ++i) y += static_cast<double>(w2_e[h * inter + i]) * act[i];
      out[t * H + h] += weight * y;
    }
  }

  tmoe_dtype dtype;
  std::vector<float> x, w13, w2, shared_w13, shared_w2, weights, logits;
  std::vector<int32_t> ids;
  std::vector<uint16_t> x16, w13_16, w2_16, shared_w13_16, shared_w2_16;
};

double relative_l2(const std::vector<double>& expected, const std::vector<double>& actual) {
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < expected.size(); ++i) {
    diff += (actual[i] - expected[i]) * (actual[i] - expected[i]);
    norm += expected[i] * expected[i];
  }
  return std::sqrt(diff / norm);
}

TEST(CAbi, VersionAndNames) {
  EXPECT_STRNE(tmoe_version(), "");
  EXPECT_STRNE(tmoe_build_info(), "");
  std::set<std::string> names;
  for (tmoe_status s : {TMOE_SUCCESS, TMOE_ERROR_INVALID_ARGUMENT, TMOE_ERROR_UNSUPPORTED, TMOE_ERROR_NO_DEVICE,
                        TMOE_ERROR_DRIVER, TMOE_ERROR_OUT_OF_MEMORY, TMOE_ERROR_INTERNAL}) {
    names.insert(tmoe_status_string(s));
  }
  EXPECT_EQ(names.size(), 7u) << "every status has its own string";
  EXPECT_STREQ(tmoe_status_string(TMOE_SUCCESS), "success");
  EXPECT_STREQ(tmoe_status_string(static_cast<tmoe_status>(99)), "unknown status");
  EXPECT_STREQ(tmoe_dtype_name(TMOE_DTYPE_BF16), "bf16");
}

TEST(CAbi, CpuContext) {
  int32_t count = 0;
  ASSERT_EQ(tmoe_device_count(TMOE_BACKEND_CPU, &count), TMOE_SUCCESS);
  EXPECT_EQ(count, 1);
  tmoe_context ctx = nullptr;
  ASSERT_EQ(tmoe_context_create(TMOE_BACKEND_CPU, 0, &ctx), TMOE_SUCCESS) << tmoe_last_error();
  EXPECT_STREQ(tmoe_context_backend_name(ctx), "cpu");
  EXPECT_STRNE(tmoe_context_device_name(ctx), "");
  EXPECT_EQ(tmoe_context_destroy(ctx), TMOE_SUCCESS);

  ctx = reinterpret_cast<tmoe_context>(&count);  // must be reset on failure
  EXPECT_EQ(tmoe_context_create(TMOE_BACKEND_CPU, 1, &ctx), TMOE_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(ctx, nullptr);
  EXPECT_EQ(std::string(tmoe_last_error()).rfind("device:", 0), 0u) << tmoe_last_error();
  EXPECT_EQ(tmoe_context_create(TMOE_BACKEND_CPU, 0, nullptr), TMOE_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(std::string(tmoe_last_error()).rfind("ctx:", 0), 0u) << tmoe_last_error();
}

class CAbiForward : public ::testing::TestWithParam<std::tuple<tmoe_dtype, bool>> {};

TEST_P(CAbiForward, MatchesFloat64Loop) {
  const auto [dtype, routed] = GetParam();
  SmallProblem problem(dtype);
  const size_t elements = SmallProblem::T * SmallProblem::H;
  std::vector<float> out32(elements, std::nanf(""));
  std::vector<uint16_t> out16(elements, 0xFFFF);  // NaN
  void* out = dtype == TMOE_DTYPE_BF16 ? static_cast<void*>(out16.data()) : out32.data();
  const tmoe_moe_args args = problem.args(out, routed);

  tmoe_context ctx = nullptr;
  ASSERT_EQ(tmoe_context_create(TMOE_BACKEND_CPU, 0, &ctx), TMOE_SUCCESS) << tmoe_last_error();
  size_t workspace = 1;
  EXPECT_EQ(tmoe_moe_workspace_size(ctx, &args, &workspace), TMOE_SUCCESS) << tmoe_last_error();
  EXPECT_EQ(workspace, 0u) << "the CPU needs no caller workspace";
  EXPECT_EQ(tmoe_moe_forward(ctx, &args), TMOE_SUCCESS) << tmoe_last_error();
  tmoe_context_destroy(ctx);

  std::vector<double> actual(elements);
  for (size_t i = 0; i < elements; ++i) actual[i] = dtype == TMOE_DTYPE_BF16 ? from_bf16(out16[i]) : out32[i];
  // bf16: the output's rounding to 8 bits (2^-9 per element); f32: f32 sums of 16 terms.
  const double tolerance = dtype == TMOE_DTYPE_BF16 ? 1e-2 : 1e-5;
  EXPECT_LE(relative_l2(problem.expected(routed), actual), tolerance);
}

INSTANTIATE_TEST_SUITE_P(SmallProblem, CAbiForward,
                         ::testing::Combine(::testing::Values(TMOE_DTYPE_F32, TMOE_DTYPE_BF16), ::testing::Bool()),
                         [](const ::testing::TestParamInfo<CAbiForward::ParamType>& info) {
                           return std::string(tmoe_dtype_name(std::get<0>(info.param))) +
                                  (std::get<1>(info.param) ? "_routed" : "_ids");
                         });

TEST(CAbi, LastErrorNamesTheArgumentPerThread) {
  SmallProblem problem(TMOE_DTYPE_F32);
  std::vector<float> out(SmallProblem::T * SmallProblem::H, 7.0f);
  tmoe_moe_args bad = problem.args(out.data(), false);
  bad.w2 = tmoe::tensor(problem.w2.data(), TMOE_DTYPE_F32, {SmallProblem::E, SmallProblem::H + 1, SmallProblem::I});
  tmoe_context ctx = nullptr;
  ASSERT_EQ(tmoe_context_create(TMOE_BACKEND_CPU, 0, &ctx), TMOE_SUCCESS);
  EXPECT_EQ(tmoe_moe_forward(ctx, &bad), TMOE_ERROR_INVALID_ARGUMENT);
  const std::string message = tmoe_last_error();
  EXPECT_EQ(message.rfind("w2:", 0), 0u) << message;
  EXPECT_TRUE(std::all_of(out.begin(), out.end(), [](float v) { return v == 7.0f; })) << "out written";

  // The message is per thread: another thread's failure leaves this one's alone.
  std::string other;
  std::thread([&] {
    tmoe_context none = nullptr;
    EXPECT_EQ(tmoe_moe_forward(none, &bad), TMOE_ERROR_INVALID_ARGUMENT);
    other = tmoe_last_error();
  }).join();
  EXPECT_EQ(other.rfind("ctx:", 0), 0u) << other;
  EXPECT_EQ(std::string(tmoe_last_error()), message);
  tmoe_context_destroy(ctx);
}

// tmoe_moe_plan: what a forward would run, without running it; bad arguments named.
TEST(CAbi, PlanSaysWhatRunsAndChecksItsArguments) {
  SmallProblem problem(TMOE_DTYPE_F32);
  std::vector<float> out(SmallProblem::T * SmallProblem::H, 7.0f);
  const tmoe_moe_args args = problem.args(out.data(), true);
  tmoe_context ctx = nullptr;
  ASSERT_EQ(tmoe_context_create(TMOE_BACKEND_CPU, 0, &ctx), TMOE_SUCCESS);
  int32_t launches = -1;
  char text[256];
  ASSERT_EQ(tmoe_moe_plan(ctx, &args, &launches, text, sizeof text), TMOE_SUCCESS) << tmoe_last_error();
  EXPECT_EQ(launches, 0) << "the CPU launches no kernels";
  EXPECT_EQ(std::string(text).rfind("cpu: ", 0), 0u) << text;
  EXPECT_TRUE(std::all_of(out.begin(), out.end(), [](float v) { return v == 7.0f; })) << "a plan ran the layer";

  char cut[8];
  ASSERT_EQ(tmoe_moe_plan(ctx, &args, &launches, cut, sizeof cut), TMOE_SUCCESS);
  EXPECT_EQ(std::string(cut), std::string(text).substr(0, sizeof cut - 1)) << "cut and NUL-terminated";
  EXPECT_EQ(tmoe_moe_plan(ctx, &args, &launches, nullptr, 0), TMOE_SUCCESS) << "the description is optional";

  EXPECT_EQ(tmoe_moe_plan(ctx, &args, nullptr, text, sizeof text), TMOE_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(std::string(tmoe_last_error()).rfind("launches:", 0), 0u) << tmoe_last_error();
  EXPECT_EQ(tmoe_moe_plan(ctx, &args, &launches, text, 0), TMOE_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(std::string(tmoe_last_error()).rfind("description_bytes:", 0), 0u) << tmoe_last_error();
  tmoe_moe_args bad = args;
  bad.x = tmoe::tensor(problem.x.data(), TMOE_DTYPE_F32, {SmallProblem::T, SmallProblem::H + 1});
  EXPECT_EQ(tmoe_moe_plan(ctx, &bad, &launches, text, sizeof text), TMOE_ERROR_INVALID_ARGUMENT);
  tmoe_context_destroy(ctx);

  tmoe::Context cpp(TMOE_BACKEND_CPU);
  const tmoe::Context::Plan plan = cpp.plan(args);
  EXPECT_EQ(plan.launches, 0);
  EXPECT_EQ(plan.description, text);
}

TEST(CppWrapper, ContextForwardAndErrors) {
  EXPECT_EQ(tmoe::device_count(TMOE_BACKEND_CPU), 1);
  tmoe::Context ctx(TMOE_BACKEND_CPU);
  EXPECT_EQ(ctx.backend_name(), "cpu");
  EXPECT_FALSE(ctx.device_name().empty());

  SmallProblem problem(TMOE_DTYPE_F32);
  std::vector<float> out(SmallProblem::T * SmallProblem::H, 7.0f);
  tmoe_moe_args args = problem.args(out.data(), false);
  EXPECT_EQ(ctx.workspace_size(args), 0u);
  ASSERT_NO_THROW(ctx.forward(args));
  std::vector<double> actual(out.begin(), out.end());
  EXPECT_LE(relative_l2(problem.expected(false), actual), 1e-5);

  args.w2 = tmoe::tensor(problem.w2.data(), TMOE_DTYPE_BF16, {SmallProblem::E, SmallProblem::H, SmallProblem::I});
  try {
    ctx.forward(args);
    ADD_FAILURE() << "a w2 of the wrong dtype was accepted";
  } catch (const tmoe::Error& e) {
    EXPECT_EQ(e.status(), TMOE_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(e.what()).find("w2:"), std::string::npos) << e.what();
  }

  // Moving hands the handle over; the moved-from context holds none.
  tmoe::Context moved(std::move(ctx));
  EXPECT_EQ(ctx.get(), nullptr);
  EXPECT_EQ(moved.backend_name(), "cpu");
}

TEST(CppWrapper, ConstructionFailuresThrow) {
  try {
    tmoe::Context ctx(TMOE_BACKEND_CPU, 1);
    ADD_FAILURE() << "a second CPU device was accepted";
  } catch (const tmoe::Error& e) {
    EXPECT_EQ(e.status(), TMOE_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(e.what()).find("device:"), std::string::npos) << e.what();
  }
  // Never a silent fallback: without a GPU, asking for one fails; AUTO says what it chose.
  if (tmoe::device_count(TMOE_BACKEND_GPU) == 0) {
    try {
      tmoe::Context ctx(TMOE_BACKEND_GPU);
      ADD_FAILURE() << "a GPU context was created without a GPU";
    } catch (const tmoe::Error& e) {
      EXPECT_EQ(e.status(), TMOE_ERROR_NO_DEVICE) << e.what();
    }
    EXPECT_EQ(tmoe::Context(TMOE_BACKEND_AUTO).backend_name(), "cpu");
  }
}

}  // namespace
