// What only a GPU backend has to prove: a forward captured in a CUDA graph and
// replayed on new inputs, layers running on two streams at once, and every
// kernel choice a tuned table may name (GpuSanitizeChoices*) matching the
// reference. Plus a small set of representative shapes for compute-sanitizer
// (GpuSanitize*).
// Instantiated only where a GPU is present.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/problem.hpp"
#include "gpu/device.hpp"
#include "gpu/gpu_backend.hpp"
#include "layer_problem.hpp"

namespace tmoe::testing {
namespace {

constexpr tmoe_dtype kBF16 = TMOE_DTYPE_BF16, kF16 = TMOE_DTYPE_F16;

// Copies a new problem of the same shapes into the buffers of an uploaded one.
void reupload(BackendHarness& harness, const DeviceProblem& d, const HostProblem& host) {
  for_each_input(d.args, host, [&](const tmoe_tensor& dst, const auto& src) {
    if (dst.data != nullptr) harness.upload(dst.data, src.data(), src.size() * sizeof(src[0]));
  });
}

std::vector<uint8_t> download_out(BackendHarness& harness, const DeviceProblem& d) {
  std::vector<uint8_t> out(d.out_bytes);
  harness.download(out.data(), d.out, d.out_bytes);
  return out;
}

class GpuGraphTest : public ::testing::TestWithParam<std::string> {};

// The whole layer is captured once, with a caller workspace, then replayed on
// fresh inputs copied into the same buffers: no host sync or allocation in a
// forward, grids that do not depend on routing.
TEST_P(GpuGraphTest, ReplaysTheCapturedLayerOnNewInputs) {
  const LayerCase c{.T = 255, .E = 60, .k = 6, .H = 256, .I = 192, .dtype = kBF16, .source = Source::kSoftmaxTopk,
                    .shared_I = 128, .renormalize = true};
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  BackendHarness harness(GetParam());
  const HostProblem first(c, seed);
  DeviceProblem d = upload(harness, first);
  d.args.workspace_bytes = harness.context().workspace_size(d.args);
  d.args.workspace = harness.alloc(d.args.workspace_bytes);
  harness.context().forward(d.args);  // loads the modules outside the capture

  gpu::Graph graph;
  const Status captured = gpu::Graph::capture(harness.device(), harness.stream(), [&]() -> Status {
    const tmoe_status s = tmoe_moe_forward(harness.context().get(), &d.args);
    return s == TMOE_SUCCESS ? Status::ok() : Status(s, tmoe_last_error());
  }, &graph);
  ASSERT_TRUE(captured.is_ok()) << captured.message();

  for (uint64_t round = 1; round <= 3; ++round) {
    SCOPED_TRACE("replay " + std::to_string(round));
    const HostProblem fresh(c, mix(seed + round));
    reupload(harness, d, fresh);
    harness.fill(d.out, 0xFF, d.out_bytes);
    const Status replayed = graph.launch(harness.stream());
    ASSERT_TRUE(replayed.is_ok()) << replayed.message();
    expect_matches_reference(c, fresh, download_out(harness, d), mix(seed + round));
  }
}

class GpuStreamsTest : public ::testing::TestWithParam<std::string> {};

// Two layers, each with its own context and stream, enqueued back to back
// before either is waited for: neither may read the other's workspace.
TEST_P(GpuStreamsTest, TwoLayersOnTwoStreamsAtOnce) {
  const LayerCase a{.T = 1000, .E = 128, .k = 8, .H = 512, .I = 256, .dtype = kBF16, .source = Source::kSoftmaxTopk,
                    .renormalize = true, .checked_rows = 48};
  const LayerCase b{.T = 700, .E = 8, .k = 2, .H = 1024, .I = 768, .dtype = kF16, .shared_I = 256,
                    .checked_rows = 48};
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  const HostProblem host_a(a, seed), host_b(b, mix(seed));
  BackendHarness first(GetParam()), second(GetParam());
  const DeviceProblem da = upload(first, host_a), db = upload(second, host_b);
  for (int repeat = 0; repeat < 3; ++repeat) {
    ASSERT_EQ(tmoe_moe_forward(first.context().get(), &da.args), TMOE_SUCCESS) << tmoe_last_error();
    ASSERT_EQ(tmoe_moe_forward(second.context().get(), &db.args), TMOE_SUCCESS) << tmoe_last_error();
  }
  expect_matches_reference(a, host_a, download_out(first, da), seed);
  expect_matches_reference(b, host_b, download_out(second, db), mix(seed));
}

// Representative shapes for compute-sanitizer: every kernel, hinted and
// fallback variants, the direct (k = 1) path and the shared expert.
class GpuSanitizeTest : public ::testing::TestWithParam<std::tuple<std::string, LayerCase>> {};

TEST_P(GpuSanitizeTest, MatchesFloat64Reference) {
  const auto& [backend, c] = GetParam();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  const HostProblem host(c, seed);
  BackendHarness harness(backend);
  const DeviceProblem d = upload(harness, host);
  const std::vector<uint8_t> out = run_layer(harness, d);
  if (!HasFailure()) expect_matches_reference(c, host, out, seed);
}

const Source kSoftmax = Source::kSoftmaxTopk, kGrouped = Source::kSigmoidGroupedTopk;

// `tmoe tune` may write any candidate into a table: each must be right, on both
// paths, with and without a shared expert, from logits and from given ids.
class GpuSanitizeChoicesTest : public ::testing::TestWithParam<std::tuple<std::string, LayerCase>> {};

TEST_P(GpuSanitizeChoicesTest, EveryCandidateMatchesFloat64Reference) {
  const auto& [backend_name, c] = GetParam();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  const HostProblem host(c, seed);
  BackendHarness harness(backend_name);
  const DeviceProblem d = upload(harness, host);
  std::unique_ptr<gpu::TunableBackend> backend;
  const Status made = gpu::make_tunable_backend(0, &backend);
  ASSERT_TRUE(made.is_ok()) << made.message();
  MoeProblem problem;
  const Status valid = validate_moe_args(d.args, &problem);
  ASSERT_TRUE(valid.is_ok()) << valid.message();
  const std::vector<gpu::KernelChoice> candidates = backend->candidates(problem);
  EXPECT_GE(candidates.size(), 2u);
  bool saw_decode = false;
  for (const gpu::KernelChoice& choice : candidates) {
    SCOPED_TRACE(choice.describe());
    saw_decode = saw_decode || choice.path == gpu::GemmPath::decode;
    harness.fill(d.out, 0xFF, d.out_bytes);
    const Status ran = backend->forward_with(problem, ExecContext{harness.stream(), nullptr, 0, false}, choice);
    ASSERT_TRUE(ran.is_ok()) << ran.message();
    expect_matches_reference(c, host, download_out(harness, d), seed);
  }
  // Every case here is hinted; decode is a candidate for few tokens (T <= 16, T * k <= 2E).
  EXPECT_EQ(saw_decode, c.T <= 16 && c.T * c.k <= 2 * c.E);
}

INSTANTIATE_TEST_SUITE_P(
    Gpu, GpuSanitizeChoicesTest,
    ::testing::Combine(::testing::ValuesIn(gpu_backend_names()), ::testing::Values(
        LayerCase{.T = 1, .E = 64, .k = 8, .H = 256, .I = 96, .dtype = kBF16, .source = kGrouped, .shared_I = 64,
                  .renormalize = true, .n_group = 8, .topk_group = 4, .routed_scaling_factor = 2.5f},
        LayerCase{.T = 5, .E = 16, .k = 4, .H = 128, .I = 80, .dtype = kF16},
        // Given ids naming an expert twice in a token: up to 48 slots on one expert,
        // past the 16 rows the decode gate_up shares an expert's reads among.
        LayerCase{.T = 12, .E = 32, .k = 4, .H = 128, .I = 64, .dtype = kBF16, .shared_I = 48,
                  .placement = Placement::kRepeatsInToken},
        LayerCase{.T = 40, .E = 8, .k = 1, .H = 64, .I = 48, .dtype = kBF16, .source = kSoftmax},
        LayerCase{.T = 300, .E = 32, .k = 2, .H = 128, .I = 64, .dtype = kBF16, .source = kSoftmax, .shared_I = 32,
                  .checked_rows = 32},
        // 128 M blocks of 128 slots times 2-4 N blocks: more tiles than an H100 runs at
        // once, so the persistent tiles' programs walk several tiles each.
        LayerCase{.T = 2048, .E = 64, .k = 4, .H = 512, .I = 256, .dtype = kBF16, .source = kSoftmax,
                  .checked_rows = 32})),
    [](const ::testing::TestParamInfo<GpuSanitizeChoicesTest::ParamType>& info) {
      return std::get<0>(info.param) + "_" + case_name(std::get<1>(info.param));
    });

INSTANTIATE_TEST_SUITE_P(
    GpuSanitize, GpuSanitizeTest,
    ::testing::Combine(
        ::testing::ValuesIn(gpu_backend_names()),
        ::testing::Values(
            LayerCase{.T = 1, .E = 128, .k = 8, .H = 256, .I = 128, .dtype = kBF16, .source = kSoftmax, .renormalize = true},
            LayerCase{.T = 1, .E = 64, .k = 6, .H = 512, .I = 96, .dtype = kF16, .shared_I = 64},
            LayerCase{.T = 17, .E = 8, .k = 2, .H = 33, .I = 47, .dtype = kBF16, .source = Source::kTopkSoftmax},
            LayerCase{.T = 255, .E = 60, .k = 1, .H = 128, .I = 96, .dtype = kF16},
            LayerCase{.T = 300, .E = 64, .k = 8, .H = 256, .I = 64, .dtype = kBF16, .source = kGrouped, .shared_I = 128,
                      .renormalize = true, .n_group = 8, .topk_group = 4, .routed_scaling_factor = 2.5f,
                      .correction_bias = true},
            LayerCase{.T = 2100, .E = 8, .k = 8, .H = 64, .I = 48, .dtype = kF16, .checked_rows = 32})),
    [](const ::testing::TestParamInfo<GpuSanitizeTest::ParamType>& info) {
      return std::get<0>(info.param) + "_" + case_name(std::get<1>(info.param));
    });

INSTANTIATE_TEST_SUITE_P(Gpu, GpuGraphTest, ::testing::ValuesIn(gpu_backend_names()));
INSTANTIATE_TEST_SUITE_P(Gpu, GpuStreamsTest, ::testing::ValuesIn(gpu_backend_names()));
// Where no GPU is present these suites have no instance, by design.
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(GpuGraphTest);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(GpuStreamsTest);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(GpuSanitizeTest);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(GpuSanitizeChoicesTest);

}  // namespace
}  // namespace tmoe::testing
