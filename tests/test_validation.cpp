// Bad arguments on every backend: each is rejected with
// TMOE_ERROR_INVALID_ARGUMENT, a message that starts with the argument's name,
// and no byte of out written.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "backend_fixture.hpp"
#include "core/numeric.hpp"
#include "core/problem.hpp"

namespace tmoe::testing {
namespace {

constexpr uint8_t kOutPattern = 0xA5;

class ValidationTest : public ::testing::TestWithParam<std::string> {
 protected:
  // A small valid problem: bf16, ids given, optional shared expert and logits.
  static constexpr int64_t T = 4, H = 8, I = 6, E = 4, k = 2, Is = 4;

  void SetUp() override {
    harness_ = std::make_unique<BackendHarness>(GetParam());
    x_ = buffer(T * H, TMOE_DTYPE_BF16);
    w13_ = buffer(E * 2 * I * H, TMOE_DTYPE_BF16);
    w2_ = buffer(E * H * I, TMOE_DTYPE_BF16);
    shared_w13_ = buffer(2 * Is * H, TMOE_DTYPE_BF16);
    shared_w2_ = buffer(H * Is, TMOE_DTYPE_BF16);
    logits_ = buffer(T * E, TMOE_DTYPE_F32);
    bias_ = buffer(E, TMOE_DTYPE_F32);
    ids_ = harness_->upload(valid_ids());
    weights_ = harness_->upload(std::vector<float>(static_cast<size_t>(T * k) + kSlack, 0.5f));
    out_bytes_ = static_cast<size_t>((T + 1) * (H + 1)) * 4;
    out_ = harness_->alloc(out_bytes_);
  }

  // Every buffer is larger than its tensor (by kSlack elements and a row's
  // worth for the shapes below that claim one more row or column), so a check
  // that fails to reject a bad shape cannot make the test read out of bounds.
  static constexpr int64_t kSlack = 4096;

  void* buffer(int64_t elements, tmoe_dtype dtype) {
    std::vector<uint8_t> bytes(static_cast<size_t>(elements + kSlack) * dtype_size(dtype));
    for (int64_t i = 0; i < elements + kSlack; ++i) store_from_f32(bytes.data(), dtype, i, 0.01f * static_cast<float>(i % 7));
    return harness_->upload(bytes);
  }

  static std::vector<int32_t> valid_ids() {
    std::vector<int32_t> ids(static_cast<size_t>(T * k) + kSlack, 0);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t j = 0; j < k; ++j) ids[t * k + j] = static_cast<int32_t>((t + j) % E);
    }
    return ids;
  }

  tmoe_moe_args valid_args() const {
    tmoe_moe_args a{};
    a.x = tmoe::tensor(x_, TMOE_DTYPE_BF16, {T, H});
    a.w13 = tmoe::tensor(w13_, TMOE_DTYPE_BF16, {E, 2 * I, H});
    a.w2 = tmoe::tensor(w2_, TMOE_DTYPE_BF16, {E, H, I});
    a.topk_ids = tmoe::tensor(ids_, TMOE_DTYPE_I32, {T, k});
    a.topk_weights = tmoe::tensor(weights_, TMOE_DTYPE_F32, {T, k});
    a.out = tmoe::tensor(out_, TMOE_DTYPE_BF16, {T, H});
    return a;
  }
  tmoe_moe_args with_shared(tmoe_moe_args a) const {
    a.shared_w13 = tmoe::tensor(shared_w13_, TMOE_DTYPE_BF16, {2 * Is, H});
    a.shared_w2 = tmoe::tensor(shared_w2_, TMOE_DTYPE_BF16, {H, Is});
    return a;
  }
  tmoe_moe_args with_logits(tmoe_moe_args a, tmoe_routing_mode mode = TMOE_ROUTING_SOFTMAX_TOPK) const {
    a.topk_ids = tmoe_tensor{};
    a.topk_weights = tmoe_tensor{};
    a.router_logits = tmoe::tensor(logits_, TMOE_DTYPE_F32, {T, E});
    a.routing = tmoe::routing(mode, static_cast<int32_t>(k), true);
    return a;
  }
  tmoe_moe_args with_grouped_routing(int32_t n_group, int32_t topk_group) const {
    tmoe_moe_args a = with_logits(valid_args(), TMOE_ROUTING_SIGMOID_GROUPED_TOPK);
    a.routing.n_group = n_group;
    a.routing.topk_group = topk_group;
    return a;
  }

  tmoe_context ctx() { return harness_->context().get(); }

  // The call fails as an invalid argument, the message (also in
  // tmoe_last_error) starts with "<argument>:", and out keeps its pattern.
  void expect_rejected(const std::string& what, const tmoe_moe_args& args, const std::string& argument,
                       const std::string& also_mentions = "") {
    SCOPED_TRACE(what);
    harness_->fill(out_, kOutPattern, out_bytes_);
    EXPECT_EQ(tmoe_moe_forward(ctx(), &args), TMOE_ERROR_INVALID_ARGUMENT);
    expect_message(argument, also_mentions);
    expect_out_untouched();
  }

  void expect_message(const std::string& argument, const std::string& also_mentions = "") {
    const std::string message = tmoe_last_error();
    EXPECT_EQ(message.rfind(argument + ":", 0), 0u) << "message: " << message;
    if (!also_mentions.empty()) {
      EXPECT_NE(message.find(also_mentions), std::string::npos) << "message: " << message;
    }
  }

  void expect_out_untouched() {
    std::vector<uint8_t> out(out_bytes_);
    harness_->download(out.data(), out_, out_bytes_);
    size_t changed = 0;
    for (uint8_t b : out) changed += b != kOutPattern ? 1 : 0;
    EXPECT_EQ(changed, 0u) << "bytes of out written by a rejected call";
  }

  std::unique_ptr<BackendHarness> harness_;
  void *x_, *w13_, *w2_, *shared_w13_, *shared_w2_, *logits_, *bias_, *ids_, *weights_, *out_;
  size_t out_bytes_ = 0;
};

TEST_P(ValidationTest, ValidProblemRuns) {
  // The baseline every other test breaks one thing of.
  for (const tmoe_moe_args& args : {valid_args(), with_shared(valid_args()), with_logits(valid_args())}) {
    EXPECT_EQ(tmoe_moe_forward(ctx(), &args), TMOE_SUCCESS) << tmoe_last_error();
    EXPECT_STREQ(tmoe_last_error(), "");
  }
}

TEST_P(ValidationTest, WrongRank) {
  tmoe_moe_args a = valid_args();
  a.x = tmoe::tensor(x_, TMOE_DTYPE_BF16, {1, T, H});
  expect_rejected("x rank 3", a, "x");
  a = valid_args();
  a.w13 = tmoe::tensor(w13_, TMOE_DTYPE_BF16, {E * 2 * I, H});
  expect_rejected("w13 rank 2", a, "w13");
  a = valid_args();
  a.w2 = tmoe::tensor(w2_, TMOE_DTYPE_BF16, {1, E, H, I});
  expect_rejected("w2 rank 4", a, "w2");
  a = valid_args();
  a.out = tmoe::tensor(out_, TMOE_DTYPE_BF16, {T * H});
  expect_rejected("out rank 1", a, "out");
  a = valid_args();
  a.topk_ids = tmoe::tensor(ids_, TMOE_DTYPE_I32, {T * k});
  expect_rejected("topk_ids rank 1", a, "topk_ids");
  a = valid_args();
  a.topk_weights = tmoe::tensor(weights_, TMOE_DTYPE_F32, {T, k, 1});
  expect_rejected("topk_weights rank 3", a, "topk_weights");
  a = with_shared(valid_args());
  a.shared_w13 = tmoe::tensor(shared_w13_, TMOE_DTYPE_BF16, {1, 2 * Is, H});
  expect_rejected("shared_w13 rank 3", a, "shared_w13");
  a = with_logits(valid_args());
  a.router_logits = tmoe::tensor(logits_, TMOE_DTYPE_F32, {T * E});
  expect_rejected("router_logits rank 1", a, "router_logits");
}

TEST_P(ValidationTest, WrongShape) {
  tmoe_moe_args a = valid_args();
  a.x = tmoe::tensor(x_, TMOE_DTYPE_BF16, {T, 0});
  expect_rejected("x with H = 0", a, "x");
  a = valid_args();
  a.w13 = tmoe::tensor(w13_, TMOE_DTYPE_BF16, {E, 2 * I - 1, H});
  expect_rejected("w13 with an odd 2*I", a, "w13");
  a = valid_args();
  a.w13 = tmoe::tensor(w13_, TMOE_DTYPE_BF16, {0, 2 * I, H});
  expect_rejected("w13 without experts", a, "w13");
  a = valid_args();
  a.topk_weights = tmoe::tensor(weights_, TMOE_DTYPE_F32, {T, k + 1});
  expect_rejected("topk_weights wider than topk_ids", a, "topk_weights");
  a = valid_args();
  a.topk_weights = tmoe::tensor(weights_, TMOE_DTYPE_F32, {T, -k});
  expect_rejected("negative size", a, "topk_weights");
  a = with_shared(valid_args());
  a.shared_w13 = tmoe::tensor(shared_w13_, TMOE_DTYPE_BF16, {2 * Is + 1, H});
  expect_rejected("shared_w13 with an odd 2*Is", a, "shared_w13");
  a = with_logits(valid_args());
  a.routing.correction_bias = tmoe::tensor(bias_, TMOE_DTYPE_F32, {E, 1});
  a.routing.mode = TMOE_ROUTING_SIGMOID_GROUPED_TOPK;
  expect_rejected("correction_bias of rank 2", a, "routing.correction_bias");
}

TEST_P(ValidationTest, WrongDtype) {
  tmoe_moe_args a = valid_args();
  a.x.dtype = TMOE_DTYPE_I32;
  expect_rejected("x i32", a, "x");
  a = valid_args();
  a.w13.dtype = TMOE_DTYPE_F16;
  expect_rejected("w13 f16 beside bf16 x", a, "w13");
  a = valid_args();
  a.w2.dtype = TMOE_DTYPE_F32;
  expect_rejected("w2 f32 beside bf16 x", a, "w2");
  a = valid_args();
  a.out.dtype = TMOE_DTYPE_F16;
  expect_rejected("out f16 beside bf16 x", a, "out");
  a = valid_args();
  a.topk_ids.dtype = TMOE_DTYPE_F32;
  expect_rejected("topk_ids f32", a, "topk_ids");
  a = valid_args();
  a.topk_weights.dtype = TMOE_DTYPE_BF16;
  expect_rejected("topk_weights bf16", a, "topk_weights");
  a = with_shared(valid_args());
  a.shared_w2.dtype = TMOE_DTYPE_F16;
  expect_rejected("shared_w2 f16", a, "shared_w2");
  a = with_logits(valid_args());
  a.router_logits.dtype = TMOE_DTYPE_I32;
  expect_rejected("router_logits i32", a, "router_logits");
  a = with_grouped_routing(2, 1);
  a.routing.correction_bias = tmoe::tensor(bias_, TMOE_DTYPE_BF16, {E});
  expect_rejected("correction_bias bf16", a, "routing.correction_bias");
  // A value no enumerator has, stored as a C caller can (memcpy: storing it
  // through the C++ enum type would itself be undefined).
  a = valid_args();
  const int32_t unknown = 42;
  std::memcpy(&a.w2.dtype, &unknown, sizeof unknown);
  expect_rejected("w2 dtype 42", a, "w2");
}

TEST_P(ValidationTest, SizesThatDisagreeBetweenTensors) {
  tmoe_moe_args a = valid_args();
  a.w13 = tmoe::tensor(w13_, TMOE_DTYPE_BF16, {E, 2 * I, H + 1});
  expect_rejected("H of w13", a, "w13");
  a = valid_args();
  a.w2 = tmoe::tensor(w2_, TMOE_DTYPE_BF16, {E, H + 1, I});
  expect_rejected("H of w2", a, "w2");
  a = valid_args();
  a.out = tmoe::tensor(out_, TMOE_DTYPE_BF16, {T, H + 1});
  expect_rejected("H of out", a, "out");
  a = with_shared(valid_args());
  a.shared_w13 = tmoe::tensor(shared_w13_, TMOE_DTYPE_BF16, {2 * Is, H - 1});
  expect_rejected("H of shared_w13", a, "shared_w13");
  a = valid_args();
  a.w2 = tmoe::tensor(w2_, TMOE_DTYPE_BF16, {E, H, I + 1});
  expect_rejected("I of w2", a, "w2");
  a = with_shared(valid_args());
  a.shared_w2 = tmoe::tensor(shared_w2_, TMOE_DTYPE_BF16, {H, Is + 1});
  expect_rejected("Is of shared_w2", a, "shared_w2");
  a = valid_args();
  a.w2 = tmoe::tensor(w2_, TMOE_DTYPE_BF16, {E - 1, H, I});
  expect_rejected("E of w2", a, "w2");
  a = with_logits(valid_args());
  a.router_logits = tmoe::tensor(logits_, TMOE_DTYPE_F32, {T, E + 1});
  expect_rejected("E of router_logits", a, "router_logits");
  a = with_grouped_routing(2, 1);
  a.routing.correction_bias = tmoe::tensor(bias_, TMOE_DTYPE_F32, {E + 1});
  expect_rejected("E of correction_bias", a, "routing.correction_bias");
  a = valid_args();
  a.topk_ids = tmoe::tensor(ids_, TMOE_DTYPE_I32, {T + 1, k});
  expect_rejected("T of topk_ids", a, "topk_ids");
  a = valid_args();
  a.out = tmoe::tensor(out_, TMOE_DTYPE_BF16, {T - 1, H});
  expect_rejected("T of out", a, "out");
  a = with_logits(valid_args());
  a.router_logits = tmoe::tensor(logits_, TMOE_DTYPE_F32, {T + 1, E});
  expect_rejected("T of router_logits", a, "router_logits");
}

TEST_P(ValidationTest, TopKAboveExperts) {
  tmoe_moe_args a = valid_args();
  a.topk_ids = tmoe::tensor(ids_, TMOE_DTYPE_I32, {T, E + 1});
  a.topk_weights = tmoe::tensor(weights_, TMOE_DTYPE_F32, {T, E + 1});
  expect_rejected("ids wider than E", a, "topk_ids");
  a = with_logits(valid_args());
  a.routing.top_k = static_cast<int32_t>(E + 1);
  expect_rejected("routing.top_k above E", a, "routing.top_k");
}

TEST_P(ValidationTest, ExpertIdsOutsideRange) {
  for (int32_t bad : {-1, static_cast<int32_t>(E), std::numeric_limits<int32_t>::min()}) {
    std::vector<int32_t> ids = valid_ids();
    ids[5] = bad;
    tmoe_moe_args a = valid_args();
    a.topk_ids.data = harness_->upload(ids);
    expect_rejected("id " + std::to_string(bad), a, "topk_ids", std::to_string(bad));
  }
}

TEST_P(ValidationTest, BadRoutingWeights) {
  for (float bad : {-0.5f, std::nanf(""), std::numeric_limits<float>::infinity()}) {
    std::vector<float> weights(static_cast<size_t>(T * k), 0.5f);
    weights[3] = bad;
    tmoe_moe_args a = valid_args();
    a.topk_weights.data = harness_->upload(weights);
    expect_rejected("weight " + std::to_string(bad), a, "topk_weights");
  }
}

TEST_P(ValidationTest, NullPointers) {
  tmoe_moe_args a = valid_args();
  a.x.data = nullptr;
  expect_rejected("x", a, "x");
  a = valid_args();
  a.w13.data = nullptr;
  expect_rejected("w13", a, "w13");
  a = valid_args();
  a.w2.data = nullptr;
  expect_rejected("w2", a, "w2");
  a = valid_args();
  a.out.data = nullptr;
  expect_rejected("out", a, "out");
  a = valid_args();
  a.topk_ids.data = nullptr;
  expect_rejected("topk_ids (and no logits)", a, "topk_ids");
  a = valid_args();
  a.topk_weights.data = nullptr;
  expect_rejected("topk_weights", a, "topk_weights");
  a = with_logits(valid_args());
  a.router_logits.data = nullptr;
  expect_rejected("router_logits (present: it has a shape)", a, "router_logits");
  a = with_shared(valid_args());
  a.shared_w13.data = nullptr;
  expect_rejected("shared_w13", a, "shared_w13");

  const tmoe_moe_args valid = valid_args();
  harness_->fill(out_, kOutPattern, out_bytes_);
  EXPECT_EQ(tmoe_moe_forward(nullptr, &valid), TMOE_ERROR_INVALID_ARGUMENT);
  expect_message("ctx");
  EXPECT_EQ(tmoe_moe_forward(ctx(), nullptr), TMOE_ERROR_INVALID_ARGUMENT);
  expect_message("args");
  size_t bytes = 0;
  EXPECT_EQ(tmoe_moe_workspace_size(ctx(), &valid, nullptr), TMOE_ERROR_INVALID_ARGUMENT);
  expect_message("bytes");
  EXPECT_EQ(tmoe_moe_workspace_size(nullptr, &valid, &bytes), TMOE_ERROR_INVALID_ARGUMENT);
  expect_message("ctx");
  expect_out_untouched();
}

TEST_P(ValidationTest, OutOverlappingAnInput) {
  // out over x itself; over the middle of w13. The input must stay intact too.
  for (const char* input : {"x", "w13"}) {
    SCOPED_TRACE(input);
    tmoe_moe_args a = valid_args();
    void* target = std::string(input) == "x" ? x_ : static_cast<uint8_t*>(w13_) + 64;
    const size_t bytes = static_cast<size_t>(T * H) * 2;
    std::vector<uint8_t> before(bytes), after(bytes);
    harness_->download(before.data(), target, bytes);
    a.out.data = target;
    EXPECT_EQ(tmoe_moe_forward(ctx(), &a), TMOE_ERROR_INVALID_ARGUMENT);
    expect_message("out", std::string("input ") + input);
    harness_->download(after.data(), target, bytes);
    EXPECT_TRUE(before == after) << "the overlapped input was written";
  }
}

TEST_P(ValidationTest, NonContiguousStrides) {
  tmoe_moe_args a = valid_args();
  a.x.strides[0] = H + 1;
  expect_rejected("x row stride", a, "x");
  a = valid_args();
  a.w13.strides[2] = 2;
  expect_rejected("w13 element stride", a, "w13");
  a = valid_args();
  a.w2.strides[0] = H * I + 8;
  expect_rejected("w2 expert stride", a, "w2");
  a = valid_args();
  a.out.strides[1] = 0;
  expect_rejected("out broadcast", a, "out");
  a = valid_args();
  a.topk_ids.strides[0] = 1;
  expect_rejected("topk_ids transposed", a, "topk_ids");
}

TEST_P(ValidationTest, OnlyOneSharedWeight) {
  tmoe_moe_args a = with_shared(valid_args());
  a.shared_w2 = tmoe_tensor{};
  expect_rejected("shared_w13 alone", a, "shared_w2");
  a = with_shared(valid_args());
  a.shared_w13 = tmoe_tensor{};
  expect_rejected("shared_w2 alone", a, "shared_w13");
}

TEST_P(ValidationTest, BadRoutingParameters) {
  tmoe_moe_args a = with_logits(valid_args());
  a.routing.top_k = static_cast<int32_t>(E + 1);
  expect_rejected("top_k above E", a, "routing.top_k");
  a = with_logits(valid_args());
  a.routing.top_k = 0;
  expect_rejected("top_k 0", a, "routing.top_k");
  a = with_logits(valid_args());
  // 3 is no mode, yet within the enum's value range (a larger number would be
  // undefined behaviour in C++ before the library could reject it).
  a.routing.mode = static_cast<tmoe_routing_mode>(3);
  expect_rejected("unknown mode", a, "routing.mode");
  const int32_t far_out = 1000;
  std::memcpy(&a.routing.mode, &far_out, sizeof far_out);
  expect_rejected("mode 1000", a, "routing.mode");
  a = with_grouped_routing(3, 1);
  expect_rejected("n_group not dividing E", a, "routing.n_group");
  a = with_grouped_routing(2, 3);
  expect_rejected("topk_group above n_group", a, "routing.topk_group");
  a = with_grouped_routing(4, 1);  // one group of one expert, fewer than k = 2
  expect_rejected("kept groups hold fewer than top_k", a, "routing.topk_group");
  a = with_logits(valid_args());
  a.routing.routed_scaling_factor = std::nanf("");
  expect_rejected("NaN scaling factor", a, "routing.routed_scaling_factor");
  a = valid_args();
  a.routing.top_k = static_cast<int32_t>(k + 1);
  expect_rejected("top_k disagreeing with the ids", a, "routing.top_k");
}

TEST_P(ValidationTest, ZeroTokensSucceedAndWriteNothing) {
  tmoe_moe_args a = valid_args();
  a.x = tmoe::tensor(x_, TMOE_DTYPE_BF16, {0, H});
  a.topk_ids = tmoe::tensor(ids_, TMOE_DTYPE_I32, {0, k});
  a.topk_weights = tmoe::tensor(weights_, TMOE_DTYPE_F32, {0, k});
  a.out = tmoe::tensor(out_, TMOE_DTYPE_BF16, {0, H});
  harness_->fill(out_, kOutPattern, out_bytes_);
  EXPECT_EQ(tmoe_moe_forward(ctx(), &a), TMOE_SUCCESS) << tmoe_last_error();
  expect_out_untouched();
  a = with_logits(a);
  a.router_logits = tmoe::tensor(logits_, TMOE_DTYPE_F32, {0, E});
  EXPECT_EQ(tmoe_moe_forward(ctx(), &a), TMOE_SUCCESS) << tmoe_last_error();
  expect_out_untouched();
  // Tensors without elements may have no data at all.
  a.x.data = nullptr;
  a.router_logits.data = nullptr;
  a.out.data = nullptr;
  EXPECT_EQ(tmoe_moe_forward(ctx(), &a), TMOE_SUCCESS) << tmoe_last_error();
}

INSTANTIATE_TEST_SUITE_P(Backends, ValidationTest, ::testing::ValuesIn(backend_names()),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

}  // namespace
}  // namespace tmoe::testing
