// A whole layer forward through the public C ABI (tmoe_context_create with
// TMOE_BACKEND_GPU, then tmoe_moe_forward) against the fake CUDA and HIP
// drivers, so it runs in CI without a GPU. The recorded launches are checked
// against docs/kernels.md: the expected sequence, variants, grids, blocks and
// arguments are derived here from the doc's rules and the manifest entries,
// not from the backend's code.
//
// A build without kernels (TMOE_BUILD_KERNELS=OFF, the sanitizer CI build) runs
// the same tests; there each one checks that the GPU context is refused with
// TMOE_ERROR_UNSUPPORTED saying the build has no GPU kernels.
#include <dlfcn.h>
#include <unistd.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <tmoe/tmoe.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "fake_driver/fake_control.h"
#include "fake_driver/fake_test_support.hpp"
#include "gpu/bundle.hpp"
#include "gpu/device.hpp"
#include "gpu/driver.hpp"

namespace tmoe::gpu {
namespace {

using ::tmoe::testing::FakeDriver;
using ::tmoe::testing::ScopedEnv;




int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t b) { return cdiv(a, b) * b; }
uint64_t address(const void* p) { return reinterpret_cast<uintptr_t>(p); }
size_t element_bytes(tmoe_dtype dtype) { return dtype == TMOE_DTYPE_F32 || dtype == TMOE_DTYPE_I32 ? 4 : 2; }
std::string dtype_key(tmoe_dtype dtype) {
  return dtype == TMOE_DTYPE_BF16 ? "bf16" : dtype == TMOE_DTYPE_F16 ? "f16" : "f32";
}

// One layer call's shapes and how its inputs are given.
struct Case {
  const char* name;
  int64_t T, E, k, H, I, Is;  // Is = 0: no shared expert
  tmoe_dtype act = TMOE_DTYPE_BF16;
  std::optional<tmoe_dtype> logits = TMOE_DTYPE_F32;  // nullopt: topk_ids / topk_weights given
  size_t x_offset = 0;  // x starts this many bytes into its (256-byte aligned) allocation
};

// A tuning table's sorted-path choice (TMOE_TUNING_TABLE) in place of the heuristic's.
struct TunedTiles {
  int64_t block_m;
  int gate_up, down;
  bool dependent_launch = false;
};

// What one recorded argument must be.
struct Want {
  enum class Kind { exact, buffer } kind = Kind::exact;
  uint64_t value = 0;  // exact: the raw value, zero-extended from its size
  std::string buffer;  // buffer: a workspace buffer of the doc's table, by name
  uint64_t bytes = 0;  // its size by that table
};
Want exact(uint64_t v) { return {Want::Kind::exact, v, {}, 0}; }
Want i32(int64_t v) { return exact(static_cast<uint32_t>(v)); }
Want ptr(const void* p) { return exact(address(p)); }
Want fp32(float f) {
  uint32_t bits = 0;
  std::memcpy(&bits, &f, 4);
  return exact(bits);
}
Want buffer(const std::string& name, int64_t bytes) {
  return {Want::Kind::buffer, 0, name, static_cast<uint64_t>(bytes)};
}

struct ExpectedLaunch {
  const KernelEntry* entry;
  int64_t grid;
  std::map<std::string, Want> args;
  bool programmatic_dependent = false;
};

// The first expected launch of `kernel` (the routed GEMMs launch before the shared expert's).
const ExpectedLaunch& launch_of(const std::vector<ExpectedLaunch>& launches, const std::string& kernel) {
  for (const ExpectedLaunch& l : launches) {
    if (l.entry->kernel == kernel) return l;
  }
  throw std::logic_error("no expected launch of " + kernel);
}

#define OPEN_CONTEXT_OR_RETURN()                             \
  do {                                                       \
    bool has_kernels_ = false;                               \
    ASSERT_NO_FATAL_FAILURE(open_context(&has_kernels_));    \
    if (!has_kernels_) return; /* checked: no GPU kernels */ \
  } while (0)

class GpuForwardFakeTest : public ::testing::TestWithParam<Api> {
 protected:
  void SetUp() override {
    // HIP: no CUDA driver, so the library falls back to the HIP runtime.
    env_.set("TMOE_CUDA_DRIVER", cuda() ? TMOE_FAKE_CUDA_LIBRARY : "/nonexistent/libcuda.so.1");
    env_.set("TMOE_HIP_RUNTIME", TMOE_FAKE_HIP_LIBRARY);
    env_.set("FAKE_GPU_ARCH", cuda() ? "90" : "gfx942:sramecc+:xnack-");
    env_.unset("FAKE_GPU_COUNT");
    env_.unset("TMOE_LOG");
    fake().reset();
    ASSERT_OK(embedded_bundle(&bundle_));
    // The test's own view of the same fake device: the caller's buffers and stream.
    std::shared_ptr<Driver> driver;
    ASSERT_OK(shared_driver(GetParam(), &driver));
    ASSERT_OK(Device::open(driver, 0, &device_));
    ASSERT_OK(Stream::create(device_, &stream_));
    modules_before_ = fake().stats().modules_live;
    allocations_before_ = fake().stats().live_allocations;
  }

  void TearDown() override {
    if (ctx_ != nullptr) tmoe_context_destroy(ctx_);
    ctx_ = nullptr;
    // The context unloads its modules and frees its workspace.
    EXPECT_EQ(fake().stats().modules_live, modules_before_);
    EXPECT_EQ(fake().stats().live_allocations, allocations_before_ + static_cast<int>(buffers_.size()));
  }

  bool cuda() const { return GetParam() == Api::cuda; }
  std::string target() const { return cuda() ? "cuda:90" : "hip:gfx942"; }
  const FakeDriver& fake() const { return FakeDriver::of(GetParam()); }

  // Creates the GPU context. Without kernels in this build, checks that it is
  // refused as the library promises and sets *has_kernels = false.
  void open_context(bool* has_kernels) {
    *has_kernels = false;
    const tmoe_status status = tmoe_context_create(TMOE_BACKEND_GPU, 0, &ctx_);
    const std::string message = tmoe_last_error();
    if (!bundle_->built_with_kernels()) {
      EXPECT_EQ(status, TMOE_ERROR_UNSUPPORTED) << message;
      EXPECT_EQ(ctx_, nullptr);
      EXPECT_NE(message.find("this build has no GPU kernels"), std::string::npos) << message;
      EXPECT_EQ(fake().stats().load_calls, 0);
      EXPECT_EQ(fake().stats().launches, 0);
      return;
    }
    ASSERT_EQ(status, TMOE_SUCCESS) << message;
    ASSERT_NE(ctx_, nullptr);
    EXPECT_STREQ(tmoe_context_backend_name(ctx_), "gpu");
    EXPECT_EQ(std::string(tmoe_context_device_name(ctx_)),
              cuda() ? "Fake CUDA GPU sm_90 (cuda:90)" : "Fake HIP GPU gfx942 (hip:gfx942)");
    const auto& targets = bundle_->targets();
    ASSERT_NE(std::find(targets.begin(), targets.end(), target()), targets.end())
        << "the embedded bundle has no " << target() << ": " << bundle_->targets_text();
    install_arg_sizes();
    *has_kernels = true;
  }

  // The fake records each argument at its byte size: tell it each kernel's,
  // from the manifest (the variants of one kernel share their parameter list).
  void install_arg_sizes() {
    for (const char* kernel : {"route", "align_count", "align_scatter", "align_count_scatter", "gate_up_swiglu", "down",
                               "combine", "decode_gate_up_swiglu", "decode_down_combine"}) {
      const std::vector<const KernelEntry*> entries = bundle_->find(kernel, target());
      ASSERT_FALSE(entries.empty()) << kernel;
      const std::vector<int> sizes = arg_sizes(*entries.front());
      for (const KernelEntry* e : entries) {
        ASSERT_EQ(arg_sizes(*e), sizes) << e->describe();
        ASSERT_EQ(e->entry, entries.front()->entry) << e->describe();
      }
      fake().set_function_arg_sizes(entries.front()->entry.c_str(), sizes.data(), static_cast<int>(sizes.size()));
    }
  }

  static std::vector<int> arg_sizes(const KernelEntry& e) {
    std::vector<int> sizes;
    for (const KernelParam& p : e.params) {
      sizes.push_back(p.kind == ParamKind::i32 || p.kind == ParamKind::fp32 ? 4 : 8);
    }
    return sizes;
  }

  // Forgets the launches and loads recorded so far.
  void restart_log() {
    fake().reset();
    if (bundle_->built_with_kernels()) install_arg_sizes();
  }

  // Device memory of the fake (host memory underneath), kept until the test ends.
  void* alloc(size_t bytes) {
    DeviceBuffer b;
    Status status = DeviceBuffer::allocate(device_, std::max<size_t>(bytes, 1), &b);
    EXPECT_TRUE(status.is_ok()) << status.message();
    EXPECT_EQ(b.address() % 256, 0u);
    buffers_.push_back(std::move(b));
    return reinterpret_cast<void*>(static_cast<uintptr_t>(buffers_.back().address()));
  }
  void upload(void* device, const void* host, size_t bytes) {
    ScopedCurrent current;
    ASSERT_OK(device_->make_current(&current));
    ASSERT_OK(device_->driver().copy_to_device(address(device), host, bytes));
  }

  // The caller's tensors for one case, in the fake's memory, and their descriptors.
  struct Layer {
    Case c;
    void *x = nullptr, *logits = nullptr, *ids = nullptr, *weights = nullptr, *w13 = nullptr, *w2 = nullptr;
    void *shared_w13 = nullptr, *shared_w2 = nullptr, *out = nullptr;
    tmoe_moe_args args{};
  };

  Layer make_layer(const Case& c) {
    Layer l;
    l.c = c;
    const size_t es = element_bytes(c.act);
    auto tensor = [](void* data, tmoe_dtype dtype, std::vector<int64_t> shape) {
      return tmoe_make_tensor(data, dtype, static_cast<int32_t>(shape.size()), shape.data());
    };
    l.x = static_cast<uint8_t*>(alloc(c.T * c.H * es + c.x_offset)) + c.x_offset;
    l.w13 = alloc(c.E * 2 * c.I * c.H * es);
    l.w2 = alloc(c.E * c.H * c.I * es);
    l.out = alloc(c.T * c.H * es);
    l.args.x = tensor(l.x, c.act, {c.T, c.H});
    l.args.w13 = tensor(l.w13, c.act, {c.E, 2 * c.I, c.H});
    l.args.w2 = tensor(l.w2, c.act, {c.E, c.H, c.I});
    l.args.out = tensor(l.out, c.act, {c.T, c.H});
    if (c.logits) {
      l.logits = alloc(c.T * c.E * element_bytes(*c.logits));
      l.args.router_logits = tensor(l.logits, *c.logits, {c.T, c.E});
      l.args.routing.mode = TMOE_ROUTING_SOFTMAX_TOPK;
      l.args.routing.top_k = static_cast<int32_t>(c.k);
      l.args.routing.renormalize = 1;
      l.args.routing.n_group = 1;
      l.args.routing.topk_group = 1;
      l.args.routing.routed_scaling_factor = 1.0f;
    } else {
      // Valid routing values: the backend reads them back to check them.
      std::vector<int32_t> ids(c.T * c.k);
      std::vector<float> weights(c.T * c.k);
      for (int64_t s = 0; s < c.T * c.k; ++s) {
        ids[s] = static_cast<int32_t>((s / c.k + 3 * (s % c.k)) % c.E);
        weights[s] = 0.25f + 0.5f * static_cast<float>(s % c.k);
      }
      l.ids = alloc(ids.size() * 4);
      l.weights = alloc(weights.size() * 4);
      upload(l.ids, ids.data(), ids.size() * 4);
      upload(l.weights, weights.data(), weights.size() * 4);
      l.args.topk_ids = tensor(l.ids, TMOE_DTYPE_I32, {c.T, c.k});
      l.args.topk_weights = tensor(l.weights, TMOE_DTYPE_F32, {c.T, c.k});
      l.args.routing.routed_scaling_factor = 1.0f;
    }
    if (c.Is > 0) {
      l.shared_w13 = alloc(2 * c.Is * c.H * es);
      l.shared_w2 = alloc(c.H * c.Is * es);
      l.args.shared_w13 = tensor(l.shared_w13, c.act, {2 * c.Is, c.H});
      l.args.shared_w2 = tensor(l.shared_w2, c.act, {c.H, c.Is});
    }
    l.args.stream = stream_.handle();
    return l;
  }

  const KernelEntry* entry(const std::string& kernel, const std::string& variant) const {
    auto found = bundle_->find(kernel, target(), [&](const KernelEntry& e) { return e.variant == variant; });
    if (found.size() == 1) return found.front();
    // Keep going with some entry, so the rest of the comparison still reports.
    ADD_FAILURE() << "the bundle has " << found.size() << " entries " << kernel << "/" << variant << " for "
                  << target();
    return &bundle_->kernels().front();
  }

  // A forward in a workspace of tmoe_moe_workspace_size's bytes, which must hold the
  // buffers of `expected` plus `scratch` bytes of Triton global scratch.
  void forward_in_sized_workspace(Layer& l, const std::vector<ExpectedLaunch>& expected, uint64_t scratch) {
    size_t bytes = 0;
    ASSERT_EQ(tmoe_moe_workspace_size(ctx_, &l.args, &bytes), TMOE_SUCCESS) << tmoe_last_error();
    EXPECT_GE(bytes, workspace_lower_bound(expected) + scratch);
    void* workspace = alloc(bytes);
    l.args.workspace = workspace;
    l.args.workspace_bytes = bytes;
    ASSERT_EQ(forward(l), TMOE_SUCCESS) << tmoe_last_error();
    check_launches(l, expected, workspace, bytes);
  }

  // A forward whose table names a PADDED_Y down tile: that tile, combine's padded
  // variant, and every launch and buffer as expected_launches derives them.
  void check_padded_down(const Case& c, const TunedTiles& tuned) {
    const std::string table = use_tuning_table(c, tuned);
    OPEN_CONTEXT_OR_RETURN();
    Layer l = make_layer(c);
    const std::vector<ExpectedLaunch> expected = expected_launches(l, tuned);
    const ExpectedLaunch& down = launch_of(expected, "down");
    ASSERT_EQ(down.entry->variant, routed_variant("bf16", 128, tuned.down));
    EXPECT_EQ(down.entry->constexprs.at("PADDED_Y"), 1);
    EXPECT_EQ(launch_of(expected, "combine").entry->variant, "bf16_padded_div16");
    forward_in_sized_workspace(l, expected, down.entry->global_scratch_size * down.grid);
    std::remove(table.c_str());
  }

  // The fake drivers' device (tests/fake_driver): an H100's count for CUDA, an MI300X's for HIP.
  int64_t fake_multiprocessors() const { return cuda() ? 132 : 304; }

  // A grouped GEMM's programs: one per tile, or for a persistent variant at most
  // PERSISTENT per multiprocessor.
  int64_t gemm_grid(const KernelEntry* e, int64_t m_blocks, int64_t n) const {
    const int64_t tiles = m_blocks * cdiv(n, constexpr_of(e, "BLOCK_N"));
    const int64_t per_multiprocessor = constexpr_of(e, "PERSISTENT");
    return per_multiprocessor > 0 ? std::min(tiles, per_multiprocessor * fake_multiprocessors()) : tiles;
  }

  static int64_t constexpr_of(const KernelEntry* e, const char* name) {
    auto it = e->constexprs.find(name);
    EXPECT_NE(it, e->constexprs.end()) << e->describe() << " has no constexpr " << name;
    return it == e->constexprs.end() ? 0 : it->second;
  }

  // The heuristic's (gate_up, down) tiles of the routed GEMMs for BLOCK_M m, `rows`
  // slots per expert and intermediate size I (docs/kernels.md): the tunes' winners on
  // CUDA (the fake is sm_90: at m64 and m128 the four-stage gate_up, m128's grouped by
  // expert; under 128 rows the four-stage TMA down, from 128 rows its FOLD_TAIL form,
  // from 256 rows the warp-specialized PADDED_Y down with I <= 4096, else the persistent
  // one), t0 on HIP.
  std::pair<int, int> heuristic_tiles(int64_t m, int64_t rows, int64_t I) const {
    if (!cuda()) return {0, 0};
    const int gate_up = m == 16 ? 3 : m == 32 ? 0 : m == 64 ? 4 : 14;
    return {gate_up, m == 64 ? 1 : m == 128 ? (rows < 128 ? 10 : rows < 256 ? 19 : I <= 4096 ? 11 : 7) : 0};
  }

  // A GEMM variant's name: "bf16_routed_m128_t11_div16", "bf16_dense_m32_any".
  static std::string gemm_variant(const std::string& act, const char* mode, int64_t m, bool hinted, int tile) {
    return act + "_" + mode + "_m" + std::to_string(m) + (hinted ? "_t" + std::to_string(tile) + "_div16" : "_any");
  }
  static std::string routed_variant(const std::string& act, int64_t m, int tile) {
    return gemm_variant(act, "routed", m, true, tile);
  }
  // The heuristic's routed gate_up and down variants for BLOCK_M m, as variant_names() lists them.
  std::string routed(const std::string& act, int64_t m, int64_t rows = 0, int64_t I = 0) const {
    const auto [g, d] = heuristic_tiles(m, rows, I);
    return "gate_up_swiglu/" + routed_variant(act, m, g) + " down/" + routed_variant(act, m, d);
  }
  // combine's hinted variant after routed(act, m, rows, I): `padded` after a PADDED_Y down.
  std::string combine(const std::string& act, int64_t m, int64_t rows, int64_t I) const {
    const KernelEntry* down = entry("down", routed_variant(act, m, heuristic_tiles(m, rows, I).second));
    return "combine/" + act + (constexpr_of(down, "PADDED_Y") != 0 ? "_padded" : "") + "_div16";
  }

  // docs/kernels.md, "Launch order", "Variants and how to pick one", "Workspace"
  // and each kernel's section: what this layer call must launch. The order is
  // the doc's listed launch order (the doc would also let the two shared-expert
  // launches move anywhere before combine; this test pins the listed order).
  std::vector<ExpectedLaunch> expected_launches(const Layer& l, std::optional<TunedTiles> tuned = {}) const {
    const Case& c = l.c;
    const bool from_logits = c.logits.has_value();
    const int64_t S = c.T * c.k;
    const int64_t R = c.k + (c.Is > 0 ? 1 : 0);
    const int64_t es = static_cast<int64_t>(element_bytes(c.act));
    const std::string act = dtype_key(c.act);
    auto a16 = [](const void* p) { return address(p) % 16 == 0; };
    auto block_m_rule = [](int64_t rows, bool hinted) -> int64_t {
      if (!hinted) return 32;
      return rows < 16 ? 16 : rows < 32 ? 32 : rows < 64 ? 64 : 128;
    };
    auto dense_block_m_rule = [](int64_t T, bool hinted) -> int64_t {
      if (!hinted) return 32;
      return T <= 16 ? 16 : T <= 128 ? 64 : 128;
    };

    // Routed GEMMs: one BLOCK_M for both, which is also the alignment's.
    const bool hinted = c.H % 16 == 0 && c.I % 16 == 0 && a16(l.x) && a16(l.w13) && a16(l.w2) && a16(l.out) &&
                        (from_logits || a16(l.weights));
    const bool shared_hinted =
        c.Is == 0 || (c.H % 16 == 0 && c.Is % 16 == 0 && a16(l.x) && a16(l.shared_w13) && a16(l.shared_w2));
    const int64_t e_bucket = c.E <= 64 ? 64 : c.E <= 128 ? 128 : c.E <= 256 ? 256 : 1024;
    const Want ids = from_logits ? buffer("topk_ids", S * 4) : ptr(l.ids);
    const Want weights = from_logits ? buffer("topk_weights", S * 4) : ptr(l.weights);
    const Want null = exact(0);
    std::vector<ExpectedLaunch> launches;
    if (from_logits) {
      // 1 < k <= 8: the variant of one bitonic top-k of the next power of two; else rounds.
      const std::string top_k_suffix = c.k == 1 ? "" : c.k == 2 ? "_k2" : c.k <= 4 ? "_k4" : c.k <= 8 ? "_k8" : "";
      const KernelEntry* route =
          entry("route", dtype_key(*c.logits) + "_e" + std::to_string(e_bucket) + top_k_suffix);
      EXPECT_GE(constexpr_of(route, "BLOCK_E"), c.E);
      EXPECT_GE(constexpr_of(route, "TOP_K"), c.k == 1 || c.k > 8 ? 0 : c.k);
      launches.push_back({route, c.T,
                          {{"logits", ptr(l.logits)},
                           {"correction_bias", null},
                           {"topk_ids", ids},
                           {"topk_weights", weights},
                           {"E", i32(c.E)},
                           {"top_k", i32(c.k)},
                           {"mode", i32(TMOE_ROUTING_SOFTMAX_TOPK)},
                           {"renormalize", i32(1)},
                           {"n_group", i32(1)},
                           {"topk_group", i32(1)},
                           {"routed_scaling_factor", fp32(1.0f)},
                           {"has_correction_bias", i32(0)}}});
    }

    // An untuned device runs one token on the decode path when every hint holds.
    if (c.T == 1 && hinted && shared_hinted) {
      // The widest BLOCK_N with rows * cdiv(N, BLOCK_N) >= SMs, else the narrowest;
      // the lowest t<i> among equals.
      auto widest = [&](const std::string& kernel, const std::string& prefix, int64_t rows, int64_t N) {
        std::vector<const KernelEntry*> tiles;
        for (int t = 0;; ++t) {
          auto found = bundle_->find(kernel, target(), [&](const KernelEntry& e) {
            return e.variant == prefix + "_t" + std::to_string(t);
          });
          if (found.empty()) break;
          tiles.push_back(found.front());
        }
        EXPECT_FALSE(tiles.empty()) << "no " << kernel << " variant " << prefix << "_t0";
        const KernelEntry* filling = nullptr;
        const KernelEntry* narrowest = nullptr;
        for (const KernelEntry* e : tiles) {
          const int64_t n = constexpr_of(e, "BLOCK_N");
          if (rows * cdiv(N, n) >= fake_multiprocessors()) {
            if (filling == nullptr || n > constexpr_of(filling, "BLOCK_N")) filling = e;
          } else if (narrowest == nullptr || n < constexpr_of(narrowest, "BLOCK_N")) {
            narrowest = e;
          }
        }
        return filling != nullptr ? filling : narrowest;
      };
      const KernelEntry* gate_up = widest("decode_gate_up_swiglu", act + "_routed", c.k, c.I);
      const KernelEntry* down = widest("decode_down_combine", act + (c.Is > 0 ? "_shared" : "_routed"), 1, c.H);
      const Want h = buffer("h", S * c.I * es);
      launches.push_back({gate_up, S * cdiv(c.I, constexpr_of(gate_up, "BLOCK_N")),
                          {{"x", ptr(l.x)},
                           {"w13", ptr(l.w13)},
                           {"h", h},
                           {"topk_ids", ids},
                           {"top_k", i32(c.k)},
                           {"H", i32(c.H)},
                           {"I", i32(c.I)}}});
      const Want h_shared = c.Is > 0 ? buffer("h_shared", c.Is * es) : null;
      if (c.Is > 0) {
        // The shared expert's gate_up: the dense variant of the routed one's tile.
        const std::string tile = gate_up->variant.substr(gate_up->variant.rfind("_t"));
        const KernelEntry* shared_gate_up = entry("decode_gate_up_swiglu", act + "_dense" + tile);
        launches.push_back({shared_gate_up, cdiv(c.Is, constexpr_of(shared_gate_up, "BLOCK_N")),
                            {{"x", ptr(l.x)},
                             {"w13", ptr(l.shared_w13)},
                             {"h", h_shared},
                             {"topk_ids", null},
                             {"top_k", i32(1)},
                             {"H", i32(c.H)},
                             {"I", i32(c.Is)}}});
      }
      launches.push_back({down, cdiv(c.H, constexpr_of(down, "BLOCK_N")),
                          {{"h", h},
                           {"w2", ptr(l.w2)},
                           {"out", ptr(l.out)},
                           {"topk_ids", ids},
                           {"topk_weights", weights},
                           {"h_shared", h_shared},
                           {"shared_w2", c.Is > 0 ? ptr(l.shared_w2) : null},
                           {"top_k", i32(c.k)},
                           {"H", i32(c.H)},
                           {"I", i32(c.I)},
                           {"shared_I", i32(c.Is)}}});
      return launches;
    }

    const int64_t rows = S / std::min(c.E, S);
    const int64_t rule_m = tuned ? tuned->block_m : block_m_rule(rows, hinted);
    const auto [gate_up_tile, down_tile] =
        tuned ? std::pair{tuned->gate_up, tuned->down} : heuristic_tiles(rule_m, rows, c.I);
    const KernelEntry* gate_up = entry("gate_up_swiglu", gemm_variant(act, "routed", rule_m, hinted, gate_up_tile));
    const KernelEntry* down = entry("down", gemm_variant(act, "routed", rule_m, hinted, down_tile));
    const int64_t block_m = constexpr_of(gate_up, "BLOCK_M");
    EXPECT_EQ(block_m, rule_m) << gate_up->describe();
    EXPECT_EQ(constexpr_of(down, "BLOCK_M"), block_m) << down->describe();
    const int64_t capacity = round_up(S + std::min(c.E, S) * (block_m - 1), block_m);
    const int64_t m_blocks = capacity / block_m;

    std::string align_variant = "c";  // (built with += : GCC 12 warns falsely on "c" + std::string)
    align_variant += std::to_string(S <= 16384 ? 256 : 2048) + "_e" + std::to_string(e_bucket);
    const int64_t chunk = S <= 16384 ? 256 : 2048;
    const int64_t chunks = cdiv(S, chunk);
    // Up to two chunks, align_count_scatter alone; else the pair. Programs past the
    // chunks only fill: each at most BLOCK_B block_expert entries (and, for the pair,
    // CHUNK sentinel positions).
    const bool one_align_launch = chunks <= 2;
    const KernelEntry* align_scatter = entry(one_align_launch ? "align_count_scatter" : "align_scatter", align_variant);
    EXPECT_EQ(constexpr_of(align_scatter, "CHUNK"), chunk);
    EXPECT_GE(constexpr_of(align_scatter, "BLOCK_E"), c.E);
    const int64_t block_programs = cdiv(m_blocks, constexpr_of(align_scatter, "BLOCK_B"));
    const int64_t align_programs =
        one_align_launch ? std::max(chunks, block_programs) : std::max({chunks, cdiv(capacity, chunk), block_programs});

    // Workspace buffers, sized by the doc's table.
    const Want sorted_slots = buffer("sorted_slots", capacity * 4);
    const Want block_expert = buffer("block_expert", capacity / block_m * 4);
    const Want h = buffer("h", capacity * c.I * es);
    // A PADDED_Y down writes y by padded position, the shared expert's rows after them.
    const bool padded = constexpr_of(down, "PADDED_Y") != 0;
    const bool direct = R == 1 && !padded;
    const int64_t y_rows = padded ? capacity + (c.Is > 0 ? c.T : 0) : c.T * R;
    const Want y = direct ? ptr(l.out) : buffer("y", y_rows * c.H * es);
    const Want slot_positions = buffer("slot_positions", S * 4);
    const Want expert_offsets = buffer("expert_offsets", (c.E + 1) * 4);
    std::map<std::string, Want> alignment{{"topk_ids", ids},
                                          {"expert_counts", buffer("expert_counts", c.E * 4)},
                                          {"expert_offsets", expert_offsets},
                                          {"sorted_slots", sorted_slots},
                                          {"slot_positions", slot_positions},
                                          {"block_expert", block_expert},
                                          {"num_slots", i32(S)},
                                          {"E", i32(c.E)},
                                          {"block_m", i32(block_m)},
                                          {"capacity", i32(capacity)}};
    if (!one_align_launch) {
      const KernelEntry* align_count = entry("align_count", align_variant);
      EXPECT_EQ(constexpr_of(align_count, "CHUNK"), chunk);
      const Want chunk_counts = buffer("chunk_counts", chunks * c.E * 4);
      launches.push_back({align_count, align_programs,
                          {{"topk_ids", ids},
                           {"chunk_counts", chunk_counts},
                           {"sorted_slots", sorted_slots},
                           {"num_slots", i32(S)},
                           {"E", i32(c.E)},
                           {"capacity", i32(capacity)}}});
      alignment.emplace("chunk_counts", chunk_counts);
    }
    launches.push_back({align_scatter, align_programs, alignment});
    launches.push_back({gate_up, gemm_grid(gate_up, m_blocks, c.I),
                        {{"x", ptr(l.x)},
                         {"w13", ptr(l.w13)},
                         {"h", h},
                         {"sorted_slots", sorted_slots},
                         {"block_expert", block_expert},
                         {"expert_offsets", expert_offsets},
                         {"num_slots", i32(S)},
                         {"top_k", i32(c.k)},
                         {"H", i32(c.H)},
                         {"I", i32(c.I)},
                         {"E", i32(c.E)},
                         {"num_m_blocks", i32(m_blocks)}}});
    launches.push_back({down, gemm_grid(down, m_blocks, c.H),
                        {{"h", h},
                         {"w2", ptr(l.w2)},
                         {"y", y},
                         {"sorted_slots", sorted_slots},
                         {"block_expert", block_expert},
                         {"topk_weights", weights},
                         {"expert_offsets", expert_offsets},
                         {"num_slots", i32(S)},
                         {"top_k", i32(c.k)},
                         {"H", i32(c.H)},
                         {"I", i32(c.I)},
                         {"E", i32(c.E)},
                         {"num_m_blocks", i32(m_blocks)},
                         {"y_rows_per_token", i32(direct ? 1 : R)},
                         {"y_first_row", i32(0)}}});
    if (c.Is > 0) {
      // Dense: BLOCK_M from T by the same rule, m128 stepping down to m64 where its grid
      // would leave over half the multiprocessors idle, each GEMM alone; m32_any when
      // H or Is is not a multiple of 16.
      auto dense_entry = [&](const char* kernel, int64_t N) {
        const int64_t m = dense_block_m_rule(c.T, shared_hinted);
        const KernelEntry* e = entry(kernel, gemm_variant(act, "dense", m, shared_hinted, 0));
        if (m == 128 && 2 * cdiv(c.T, m) * cdiv(N, constexpr_of(e, "BLOCK_N")) < fake_multiprocessors()) {
          e = entry(kernel, gemm_variant(act, "dense", 64, true, 0));
        }
        return e;
      };
      const KernelEntry* shared_gate_up = dense_entry("gate_up_swiglu", c.Is);
      const KernelEntry* shared_down = dense_entry("down", c.H);
      const int64_t shared_blocks = cdiv(c.T, constexpr_of(shared_gate_up, "BLOCK_M"));
      const int64_t shared_down_blocks = cdiv(c.T, constexpr_of(shared_down, "BLOCK_M"));
      const Want h_shared = buffer("h_shared", c.T * c.Is * es);
      launches.push_back({shared_gate_up, shared_blocks * cdiv(c.Is, constexpr_of(shared_gate_up, "BLOCK_N")),
                          {{"x", ptr(l.x)},
                           {"w13", ptr(l.shared_w13)},
                           {"h", h_shared},
                           {"sorted_slots", null},
                           {"block_expert", null},
                           {"expert_offsets", null},
                           {"num_slots", i32(c.T)},
                           {"top_k", i32(1)},
                           {"H", i32(c.H)},
                           {"I", i32(c.Is)},
                           {"E", i32(1)},
                           {"num_m_blocks", i32(shared_blocks)}}});
      launches.push_back({shared_down, shared_down_blocks * cdiv(c.H, constexpr_of(shared_down, "BLOCK_N")),
                          {{"h", h_shared},
                           {"w2", ptr(l.shared_w2)},
                           {"y", y},
                           {"sorted_slots", null},
                           {"block_expert", null},
                           {"topk_weights", null},
                           {"expert_offsets", null},
                           {"num_slots", i32(c.T)},
                           {"top_k", i32(1)},
                           {"H", i32(c.H)},
                           {"I", i32(c.Is)},
                           {"E", i32(1)},
                           {"num_m_blocks", i32(shared_down_blocks)},
                           {"y_rows_per_token", i32(padded ? 1 : R)},
                           {"y_first_row", i32(padded ? capacity : c.k)}}});
    }
    if (!direct) {
      const KernelEntry* combine =
          entry("combine", act + (padded ? "_padded" : "") + (c.H % 16 == 0 && a16(l.out) ? "_div16" : "_any"));
      launches.push_back({combine, c.T * cdiv(c.H, constexpr_of(combine, "BLOCK_H")),
                          {{"y", y},
                           {"out", ptr(l.out)},
                           {"slot_positions", slot_positions},
                           {"topk_weights", weights},
                           {"H", i32(c.H)},
                           {"rows_per_token", i32(R)},
                           {"top_k", i32(c.k)},
                           {"shared_first_row", i32(capacity)}}});
    }
    // Only a table's choice launches dependents, and only the variants compiled to wait.
    for (ExpectedLaunch& launch : launches) {
      launch.programmatic_dependent = tuned && tuned->dependent_launch && constexpr_of(launch.entry, "PDL") != 0;
    }
    return launches;
  }

  std::string recorded_functions() const {
    std::string names;
    fake_gpu_launch l{};
    for (int i = 0; fake().get_launch(i, &l) == 0; ++i) names += (names.empty() ? "" : ", ") + std::string(l.function);
    return names.empty() ? "none" : names;
  }

  // Compares the fake's launch log with `expected`. Workspace buffers must be
  // consistent between launches, non-null, 16-byte aligned, disjoint from each
  // other and from the caller's tensors; inside the caller's workspace at
  // 256-byte aligned offsets when one is given.
  void check_launches(const Layer& l, const std::vector<ExpectedLaunch>& expected, const void* workspace = nullptr,
                      size_t workspace_bytes = 0) const {
    ASSERT_EQ(fake().stats().launches, static_cast<int>(expected.size())) << "recorded: " << recorded_functions();
    struct Seen {
      uint64_t address;
      uint64_t bytes;
    };
    std::map<std::string, Seen> buffers;
    for (size_t i = 0; i < expected.size(); ++i) {
      const ExpectedLaunch& want = expected[i];
      ASSERT_NE(want.entry, nullptr);
      const KernelEntry& e = *want.entry;
      SCOPED_TRACE("launch " + std::to_string(i) + ": " + e.describe());
      const fake_gpu_launch got = fake().launch(static_cast<int>(i));
      EXPECT_STREQ(got.function, e.entry.c_str());
      EXPECT_EQ(got.image, bundle_->image(e).data()) << "another variant was launched";
      EXPECT_EQ(got.grid[0], static_cast<unsigned>(want.grid));
      EXPECT_EQ(got.grid[1], 1u);
      EXPECT_EQ(got.grid[2], 1u);
      EXPECT_EQ(e.warp_size, cuda() ? 32 : 64);
      EXPECT_EQ(got.block[0], static_cast<unsigned>(e.num_warps * e.warp_size));
      EXPECT_EQ(got.block[1], 1u);
      EXPECT_EQ(got.block[2], 1u);
      EXPECT_EQ(got.shared, e.shared);
      EXPECT_EQ(got.stream, stream_.handle());
      EXPECT_EQ(got.programmatic_dependent, want.programmatic_dependent ? 1 : 0);
      ASSERT_EQ(got.arg_count, static_cast<int>(e.params.size()));
      size_t visible = 0;
      for (size_t j = 0; j < e.params.size(); ++j) {
        const KernelParam& p = e.params[j];
        if (p.hidden) {
          // Per-program scratch (the TMA variants' tensor descriptors): a workspace
          // region at its alignment; null when the variant needs none.
          const bool global = p.name == "global_scratch";
          const uint64_t per_program = global ? e.global_scratch_size : e.profile_scratch_size;
          const uint64_t align = global ? e.global_scratch_align : e.profile_scratch_align;
          if (per_program == 0) {
            EXPECT_EQ(got.args[j], 0u) << "hidden param " << p.name << " must be null (its scratch size is 0)";
          } else {
            EXPECT_NE(got.args[j], 0u) << "hidden param " << p.name << " needs " << per_program << " bytes a program";
            EXPECT_EQ(got.args[j] % align, 0u) << p.name;
            buffers.try_emplace(p.name, Seen{got.args[j], per_program * static_cast<uint64_t>(want.grid)});
          }
          continue;
        }
        ++visible;
        auto w = want.args.find(p.name);
        if (w == want.args.end()) {
          ADD_FAILURE() << "param " << p.name << " is not in docs/kernels.md's table for " << e.kernel;
          continue;
        }
        if (w->second.kind == Want::Kind::exact) {
          EXPECT_EQ(got.args[j], w->second.value) << "param " << p.name;
          continue;
        }
        const uint64_t a = got.args[j];
        EXPECT_NE(a, 0u) << "workspace buffer " << w->second.buffer << " (param " << p.name << ") is null";
        EXPECT_EQ(a % 16, 0u) << "workspace buffer " << w->second.buffer;
        auto [seen, fresh] = buffers.try_emplace(w->second.buffer, Seen{a, w->second.bytes});
        if (!fresh) {
          EXPECT_EQ(a, seen->second.address) << "param " << p.name << " is not the " << w->second.buffer
                                             << " an earlier launch used";
        }
      }
      EXPECT_EQ(visible, want.args.size()) << "the doc's table lists params this entry lacks";
    }

    struct Range {
      std::string name;
      uint64_t begin, end;
    };
    std::vector<Range> caller;
    const Case& c = l.c;
    const uint64_t es = element_bytes(c.act);
    auto add = [&](const char* name, const void* p, uint64_t bytes) {
      if (p != nullptr) caller.push_back({name, address(p), address(p) + bytes});
    };
    add("x", l.x, c.T * c.H * es);
    add("router_logits", l.logits, c.logits ? c.T * c.E * element_bytes(*c.logits) : 0);
    add("topk_ids", l.ids, c.T * c.k * 4);
    add("topk_weights", l.weights, c.T * c.k * 4);
    add("w13", l.w13, c.E * 2 * c.I * c.H * es);
    add("w2", l.w2, c.E * c.H * c.I * es);
    add("shared_w13", l.shared_w13, 2 * c.Is * c.H * es);
    add("shared_w2", l.shared_w2, c.H * c.Is * es);
    add("out", l.out, c.T * c.H * es);
    std::vector<Range> scratch;
    for (const auto& [name, s] : buffers) scratch.push_back({name, s.address, s.address + s.bytes});
    auto overlap = [](const Range& a, const Range& b) { return a.begin < b.end && b.begin < a.end; };
    for (size_t i = 0; i < scratch.size(); ++i) {
      const Range& r = scratch[i];
      for (size_t j = i + 1; j < scratch.size(); ++j) {
        EXPECT_FALSE(overlap(r, scratch[j])) << "workspace buffers " << r.name << " and " << scratch[j].name
                                             << " overlap";
      }
      for (const Range& t : caller) {
        EXPECT_FALSE(overlap(r, t)) << "workspace buffer " << r.name << " overlaps " << t.name;
      }
      if (workspace != nullptr) {
        EXPECT_GE(r.begin, address(workspace)) << r.name;
        EXPECT_LE(r.end, address(workspace) + workspace_bytes) << r.name;
        EXPECT_EQ((r.begin - address(workspace)) % 256, 0u) << r.name;  // scratch: at most 256-byte aligned
      }
    }
  }

  // The doc's workspace buffers of this plan, each rounded up to 256 bytes.
  static uint64_t workspace_lower_bound(const std::vector<ExpectedLaunch>& launches) {
    std::map<std::string, uint64_t> sizes;
    for (const ExpectedLaunch& l : launches) {
      for (const auto& [name, w] : l.args) {
        if (w.kind == Want::Kind::buffer) sizes[w.buffer] = w.bytes;
      }
    }
    uint64_t total = 0;
    for (const auto& [name, bytes] : sizes) total += static_cast<uint64_t>(round_up(static_cast<int64_t>(bytes), 256));
    return total;
  }

  tmoe_status forward(const Layer& l) { return tmoe_moe_forward(ctx_, &l.args); }

  // Writes a tuning table of the fake device that gives c's shape `tuned` at every
  // T and points TMOE_TUNING_TABLE at it (before the context opens); returns its path.
  std::string use_tuning_table(const Case& c, const TunedTiles& tuned) {
    // Per process: ctest runs tests (and CI runs whole builds) side by side.
    const std::string path = ::testing::TempDir() + "/tmoe_fake_table_" + std::to_string(getpid()) + ".json";
    std::ofstream(path) << nlohmann::json{
        {"format", 1},
        {"device", cuda() ? "Fake CUDA GPU sm_90" : "Fake HIP GPU gfx942"},
        {"target", target()},
        {"shapes", {{{"E", c.E}, {"H", c.H}, {"I", c.I}, {"k", c.k},
                     {"buckets", {{{"max_tokens", 1024}, {"path", "sorted"}, {"block_m", tuned.block_m},
                                   {"gate_up_tile", tuned.gate_up}, {"down_tile", tuned.down},
                                   {"dependent_launch", tuned.dependent_launch}}}}}}}};
    env_.set("TMOE_TUNING_TABLE", path);
    return path;
  }

  ScopedEnv env_;
  const Bundle* bundle_ = nullptr;
  std::shared_ptr<Device> device_;
  std::vector<DeviceBuffer> buffers_;  // after device_: freed before it goes
  Stream stream_;
  tmoe_context ctx_ = nullptr;
  int modules_before_ = 0;
  int allocations_before_ = 0;
};

const Case kMain = {"logits_shared", 17, 8, 2, 256, 128, 64};

std::string variant_names(const std::vector<ExpectedLaunch>& launches) {
  std::string names;
  for (const ExpectedLaunch& l : launches) {
    names += (names.empty() ? "" : " ") + l.entry->kernel + "/" + l.entry->variant;
  }
  return names;
}

TEST_P(GpuForwardFakeTest, RoutedFromLogitsWithSharedExpertLaunchesTheDocumentedSequence) {
  OPEN_CONTEXT_OR_RETURN();
  Layer l = make_layer(kMain);
  const std::vector<ExpectedLaunch> expected = expected_launches(l);
  // The doc's launch order, and the rules worked by hand for this shape:
  // S = 34, 34 / min(8, 34) = 4 rows per expert -> BLOCK_M 16, capacity = round_up(34 + 8 * 15, 16) = 160;
  // the dense GEMMs take BLOCK_M 64 from T = 17.
  ASSERT_EQ(variant_names(expected),
            "route/f32_e64_k2 align_count_scatter/c256_e64 " + routed("bf16", 16) +
                " gate_up_swiglu/bf16_dense_m64_t0_div16 down/bf16_dense_m64_t0_div16 "
            "combine/bf16_div16");
  EXPECT_EQ(launch_of(expected, "align_count_scatter").args.at("capacity").value, 160u);
  EXPECT_EQ(launch_of(expected, "combine").grid, 17);  // T * cdiv(256, BLOCK_H) with BLOCK_H >= 256

  ASSERT_EQ(forward(l), TMOE_SUCCESS) << tmoe_last_error();
  EXPECT_STREQ(tmoe_last_error(), "");
  EXPECT_EQ(fake().stats().load_calls, 7);  // one module per variant used
  check_launches(l, expected);

  // A second call reloads nothing and launches exactly the same again.
  restart_log();
  ASSERT_EQ(forward(l), TMOE_SUCCESS) << tmoe_last_error();
  EXPECT_EQ(fake().stats().load_calls, 0);
  check_launches(l, expected);
}

// A library call leaves the caller's current context (CUDA) or device (HIP) as it
// found it: PyTorch, for one, reads its current device from there.
TEST_P(GpuForwardFakeTest, PutsBackWhatTheCallerHadCurrent) {
  OPEN_CONTEXT_OR_RETURN();
  env_.set("FAKE_GPU_COUNT", "2");
  int callers_context = 0;  // a context handle of the caller's own (the fake does not look inside)
  // Sets the caller's state through the fake's driver API, as a caller would.
  auto make_callers_current = [&] {
    if (cuda()) {
      auto set = reinterpret_cast<int (*)(void*)>(dlsym(fake().library, "cuCtxSetCurrent"));
      ASSERT_EQ(set(&callers_context), 0);
    } else {
      auto set = reinterpret_cast<int (*)(int)>(dlsym(fake().library, "hipSetDevice"));
      ASSERT_EQ(set(1), 0);
    }
  };
  auto expect_callers_current = [&](const char* after) {
    if (cuda()) {
      void* context = nullptr;
      auto get = reinterpret_cast<int (*)(void**)>(dlsym(fake().library, "cuCtxGetCurrent"));
      ASSERT_EQ(get(&context), 0);
      EXPECT_EQ(context, &callers_context) << "after " << after;
    } else {
      int device = -1;
      auto get = reinterpret_cast<int (*)(int*)>(dlsym(fake().library, "hipGetDevice"));
      ASSERT_EQ(get(&device), 0);
      EXPECT_EQ(device, 1) << "after " << after;
    }
  };
  Layer l = make_layer(kMain);
  ASSERT_NO_FATAL_FAILURE(make_callers_current());
  // The first forward loads modules and grows the internal workspace; the second only launches.
  ASSERT_EQ(forward(l), TMOE_SUCCESS) << tmoe_last_error();
  expect_callers_current("the first forward");
  ASSERT_EQ(forward(l), TMOE_SUCCESS) << tmoe_last_error();
  expect_callers_current("a forward");
  tmoe_context other = nullptr;
  ASSERT_EQ(tmoe_context_create(TMOE_BACKEND_GPU, 0, &other), TMOE_SUCCESS) << tmoe_last_error();
  expect_callers_current("tmoe_context_create");
  ASSERT_EQ(tmoe_moe_forward(other, &l.args), TMOE_SUCCESS) << tmoe_last_error();
  ASSERT_EQ(tmoe_context_destroy(other), TMOE_SUCCESS);
  expect_callers_current("tmoe_context_destroy");
}

TEST_P(GpuForwardFakeTest, SingleExpertWithoutSharedExpertWritesOutDirectly) {
  OPEN_CONTEXT_OR_RETURN();
  Layer l = make_layer({"k1_direct", 17, 8, 1, 256, 128, 0});
  const std::vector<ExpectedLaunch> expected = expected_launches(l);
  ASSERT_EQ(variant_names(expected),
            "route/f32_e64 align_count_scatter/c256_e64 " + routed("bf16", 16));
  EXPECT_EQ(launch_of(expected, "down").args.at("y").value, address(l.out));
  ASSERT_EQ(forward(l), TMOE_SUCCESS) << tmoe_last_error();
  check_launches(l, expected);  // no combine: 5 launches
}

TEST_P(GpuForwardFakeTest, OneTokenTakesTheDecodePathWithCombineFusedIntoDown) {
  OPEN_CONTEXT_OR_RETURN();
  Layer l = make_layer({"decode_shared", 1, 8, 2, 256, 128, 64});
  const std::vector<ExpectedLaunch> expected = expected_launches(l);
  // No align, no y, no combine. Worked by hand: gate_up has 2 * cdiv(128, BLOCK_N) programs and
  // down cdiv(256, BLOCK_N), fewer than one per SM for every tile, so both take their narrowest.
  ASSERT_EQ(variant_names(expected),
            "route/f32_e64_k2 decode_gate_up_swiglu/bf16_routed_t1 decode_gate_up_swiglu/bf16_dense_t1 "
            "decode_down_combine/bf16_shared_t2");
  ASSERT_EQ(forward(l), TMOE_SUCCESS) << tmoe_last_error();
  check_launches(l, expected);

  int32_t launches = 0;
  char description[512];
  ASSERT_EQ(tmoe_moe_plan(ctx_, &l.args, &launches, description, sizeof description), TMOE_SUCCESS);
  EXPECT_EQ(launches, 4);
  EXPECT_STREQ(description,
               "decode t1/t2 (heuristic): route/f32_e64_k2 decode_gate_up_swiglu/bf16_routed_t1 "
               "decode_gate_up_swiglu/bf16_dense_t1 decode_down_combine/bf16_shared_t2");
}

TEST_P(GpuForwardFakeTest, OneUnalignedTokenStaysOnTheSortedPath) {
  OPEN_CONTEXT_OR_RETURN();
  Layer l = make_layer({"decode_unaligned", 1, 8, 2, 256, 128, 0, TMOE_DTYPE_BF16, TMOE_DTYPE_F32, 2});
  const std::vector<ExpectedLaunch> expected = expected_launches(l);
  ASSERT_EQ(variant_names(expected),
            "route/f32_e64_k2 align_count_scatter/c256_e64 gate_up_swiglu/bf16_routed_m32_any "
            "down/bf16_routed_m32_any combine/bf16_div16");
  ASSERT_EQ(forward(l), TMOE_SUCCESS) << tmoe_last_error();
  check_launches(l, expected);
}

TEST_P(GpuForwardFakeTest, OddHiddenSizePicksTheAnyVariants) {
  OPEN_CONTEXT_OR_RETURN();
  Layer l = make_layer({"odd_h", 17, 8, 2, 33, 128, 64});
  const std::vector<ExpectedLaunch> expected = expected_launches(l);
  ASSERT_EQ(variant_names(expected),
            "route/f32_e64_k2 align_count_scatter/c256_e64 gate_up_swiglu/bf16_routed_m32_any "
            "down/bf16_routed_m32_any gate_up_swiglu/bf16_dense_m32_any down/bf16_dense_m32_any combine/bf16_any");
  EXPECT_EQ(launch_of(expected, "align_count_scatter").args.at("capacity").value, 288u);  // round_up(34 + 8 * 31, 32)
  ASSERT_EQ(forward(l), TMOE_SUCCESS) << tmoe_last_error();
  check_launches(l, expected);
}

TEST_P(GpuForwardFakeTest, VariantsFollowDtypesAlignmentAndShapes) {
  OPEN_CONTEXT_OR_RETURN();
  struct Variation {
    Case c;
    std::string variants;
  };
  // The m128 heuristic's routed GEMMs and the combine after them, bf16, nothing between.
  auto routed_m128 = [&](int64_t rows, int64_t I) {
    return routed("bf16", 128, rows, I) + " " + combine("bf16", 128, rows, I);
  };
  const Variation variations[] = {
      // f16 activations, bf16 logits: route by the logits' dtype, the rest by the activations'.
      {{"f16_bf16_logits", 17, 8, 2, 256, 128, 64, TMOE_DTYPE_F16, TMOE_DTYPE_BF16},
       "route/bf16_e64_k2 align_count_scatter/c256_e64 " + routed("f16", 16) +
           " gate_up_swiglu/f16_dense_m64_t0_div16 down/f16_dense_m64_t0_div16 combine/f16_div16"},
      // x 2 bytes past 16-byte alignment: every GEMM unhinted; combine reads y and out only.
      {{"x_unaligned", 17, 8, 2, 256, 128, 64, TMOE_DTYPE_BF16, TMOE_DTYPE_F32, 2},
       "route/f32_e64_k2 align_count_scatter/c256_e64 gate_up_swiglu/bf16_routed_m32_any "
       "down/bf16_routed_m32_any gate_up_swiglu/bf16_dense_m32_any down/bf16_dense_m32_any combine/bf16_div16"},
      // Is = 40: only the shared expert's GEMMs lose the hint.
      {{"odd_shared_I", 17, 8, 2, 256, 128, 40},
       "route/f32_e64_k2 align_count_scatter/c256_e64 " + routed("bf16", 16) +
           " gate_up_swiglu/bf16_dense_m32_any down/bf16_dense_m32_any combine/bf16_div16"},
      // E = 100: the 128-expert buckets; S = 1200, 12 rows per expert.
      {{"e100", 300, 100, 4, 64, 32, 0},
       "route/f32_e128_k4 align_count/c256_e128 align_scatter/c256_e128 " + routed("bf16", 16) +
           " combine/bf16_div16"},
      // E = 200: the 256-expert buckets.
      {{"e200", 300, 200, 4, 64, 32, 0},
       "route/f32_e256_k4 align_count/c256_e256 align_scatter/c256_e256 " + routed("bf16", 16) +
           " combine/bf16_div16"},
      // E = 1000: the largest bucket.
      {{"e1000", 64, 1000, 2, 32, 16, 0},
       "route/f32_e1024_k2 align_count_scatter/c256_e1024 " + routed("bf16", 16) +
           " combine/bf16_div16"},
      // One token: gate_up's 8 * cdiv(544, 32) = 136 programs give each of the fake
      // CUDA device's 132 SMs one, so BLOCK_N 32 (t0) over 16 (t1); down's cdiv(4224,
      // 32) = 132 likewise (t1 over t2). The fake HIP device's 304 stay on the narrowest.
      {{"decode_fills_once", 1, 8, 8, 256, 544, 0},
       std::string("route/f32_e64_k8 decode_gate_up_swiglu/bf16_routed_") + (cuda() ? "t0" : "t1") +
           " decode_down_combine/bf16_routed_t2"},
      {{"decode_down_fills_once", 1, 8, 2, 4224, 128, 0},
       std::string("route/f32_e64_k2 decode_gate_up_swiglu/bf16_routed_t1 decode_down_combine/bf16_routed_") +
           (cuda() ? "t1" : "t2")},
      // 15 and 16 rows per expert: BLOCK_M 16, then 32 (performance-log.md #69); 31 and
      // 32: 32, then 64; 63 and 64: 64, then 128 (#71); 127 and 128: m128's down t10,
      // then its FOLD_TAIL form t19 (#86); 255 and 256: t19, then the warp-specialized t11.
      {{"rows15", 60, 8, 2, 64, 32, 0},
       "route/f32_e64_k2 align_count_scatter/c256_e64 " + routed("bf16", 16) + " combine/bf16_div16"},
      {{"rows16", 64, 8, 2, 64, 32, 0},
       "route/f32_e64_k2 align_count_scatter/c256_e64 " + routed("bf16", 32) + " combine/bf16_div16"},
      {{"rows31", 124, 8, 2, 64, 32, 0},
       "route/f32_e64_k2 align_count_scatter/c256_e64 " + routed("bf16", 32) + " combine/bf16_div16"},
      {{"rows32", 128, 8, 2, 64, 32, 0},
       "route/f32_e64_k2 align_count_scatter/c256_e64 " + routed("bf16", 64) + " combine/bf16_div16"},
      {{"rows63", 252, 8, 2, 64, 32, 0},
       "route/f32_e64_k2 align_count_scatter/c256_e64 " + routed("bf16", 64) + " combine/bf16_div16"},
      {{"rows64", 256, 8, 2, 64, 32, 0},
       "route/f32_e64_k2 align_count_scatter/c256_e64 " + routed_m128(64, 32)},
      {{"rows127", 508, 8, 2, 64, 32, 0},
       "route/f32_e64_k2 align_count/c256_e64 align_scatter/c256_e64 " + routed_m128(127, 32)},
      {{"rows128", 512, 8, 2, 64, 32, 0},
       "route/f32_e64_k2 align_count/c256_e64 align_scatter/c256_e64 " + routed_m128(128, 32)},
      {{"rows255", 1020, 8, 2, 64, 32, 0},
       "route/f32_e64_k2 align_count/c256_e64 align_scatter/c256_e64 " + routed_m128(255, 32)},
      {{"rows256", 1024, 8, 2, 64, 32, 0},
       "route/f32_e64_k2 align_count/c256_e64 align_scatter/c256_e64 " + routed_m128(256, 32)},
      // 500 rows per expert: BLOCK_M 128; the dense rule's m128 from T = 2000 would run
      // 16 programs, under half the multiprocessors: m64.
      {{"prefill", 2000, 8, 2, 64, 32, 16},
       "route/f32_e64_k2 align_count/c256_e64 align_scatter/c256_e64 " + routed("bf16", 128, 500, 32) +
           " gate_up_swiglu/bf16_dense_m64_t0_div16 down/bf16_dense_m64_t0_div16 " + combine("bf16", 128, 500, 32)},
      // Wide enough that the shared expert's m128 grids (16 x 10 programs) keep m128.
      {{"prefill_wide_shared", 2000, 8, 2, 1280, 32, 1280},
       "route/f32_e64_k2 align_count/c256_e64 align_scatter/c256_e64 " + routed("bf16", 128, 500, 32) +
           " gate_up_swiglu/bf16_dense_m128_t0_div16 down/bf16_dense_m128_t0_div16 " + combine("bf16", 128, 500, 32)},
      // I past 4096: the persistent down stays, as on mixtral-8x7b's I = 14336 (#62).
      {{"prefill_long_I", 2000, 8, 2, 64, 4112, 0},
       "route/f32_e64_k2 align_count/c256_e64 align_scatter/c256_e64 " + routed_m128(500, 4112)},
      // S = 16400 > 16384: CHUNK 2048.
      {{"chunk2048", 8200, 8, 2, 32, 16, 0},
       "route/f32_e64_k2 align_count/c2048_e64 align_scatter/c2048_e64 " + routed_m128(2050, 16)},
  };
  for (const Variation& v : variations) {
    SCOPED_TRACE(v.c.name);
    restart_log();
    Layer l = make_layer(v.c);
    const std::vector<ExpectedLaunch> expected = expected_launches(l);
    EXPECT_EQ(variant_names(expected), v.variants);
    ASSERT_EQ(forward(l), TMOE_SUCCESS) << tmoe_last_error();
    check_launches(l, expected);
  }
}

TEST_P(GpuForwardFakeTest, GivenIdsSkipRouteAndAreCheckedUnlessTrusted) {
  OPEN_CONTEXT_OR_RETURN();
  Case c = kMain;
  c.name = "ids_given";
  c.logits = std::nullopt;
  Layer l = make_layer(c);
  const std::vector<ExpectedLaunch> expected = expected_launches(l);
  ASSERT_EQ(variant_names(expected),
            "align_count_scatter/c256_e64 " + routed("bf16", 16) +
                " gate_up_swiglu/bf16_dense_m64_t0_div16 down/bf16_dense_m64_t0_div16 "
            "combine/bf16_div16");
  ASSERT_EQ(forward(l), TMOE_SUCCESS) << tmoe_last_error();
  check_launches(l, expected);  // align_count reads the caller's ids, down the caller's weights

  // An id out of range: refused before anything is launched.
  int32_t bad_id = static_cast<int32_t>(c.E);
  upload(static_cast<int32_t*>(l.ids) + 3 * c.k + 1, &bad_id, 4);
  restart_log();
  EXPECT_EQ(forward(l), TMOE_ERROR_INVALID_ARGUMENT);
  EXPECT_STREQ(tmoe_last_error(), "topk_ids: expected expert ids in [0, E=8), got 8 at token 3, slot 1");
  EXPECT_EQ(fake().stats().launches, 0) << recorded_functions();

  // trust_routing_values skips the read-back (graph capture): the same call launches.
  l.args.trust_routing_values = 1;
  restart_log();
  ASSERT_EQ(forward(l), TMOE_SUCCESS) << tmoe_last_error();
  check_launches(l, expected);
  l.args.trust_routing_values = 0;

  // A weight that is not finite is refused too.
  int32_t good_id = 0;
  upload(static_cast<int32_t*>(l.ids) + 3 * c.k + 1, &good_id, 4);
  const float nan = std::nanf("");
  upload(static_cast<float*>(l.weights) + 5 * c.k, &nan, 4);
  restart_log();
  EXPECT_EQ(forward(l), TMOE_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(tmoe_last_error()).find("topk_weights: expected finite weights >= 0"), std::string::npos)
      << tmoe_last_error();
  EXPECT_NE(std::string(tmoe_last_error()).find("at token 5, slot 0"), std::string::npos) << tmoe_last_error();
  EXPECT_EQ(fake().stats().launches, 0) << recorded_functions();
}

TEST_P(GpuForwardFakeTest, ZeroTokensLaunchNothing) {
  OPEN_CONTEXT_OR_RETURN();
  Case c = kMain;
  c.T = 0;
  Layer l = make_layer(c);
  ASSERT_EQ(forward(l), TMOE_SUCCESS) << tmoe_last_error();
  EXPECT_EQ(fake().stats().launches, 0) << recorded_functions();
  EXPECT_EQ(fake().stats().load_calls, 0);
}

TEST_P(GpuForwardFakeTest, CallerWorkspaceHoldsEveryBufferAndMustBeLargeEnough) {
  OPEN_CONTEXT_OR_RETURN();
  Layer l = make_layer(kMain);
  const std::vector<ExpectedLaunch> expected = expected_launches(l);
  size_t bytes = 0;
  ASSERT_EQ(tmoe_moe_workspace_size(ctx_, &l.args, &bytes), TMOE_SUCCESS) << tmoe_last_error();
  EXPECT_GE(bytes, workspace_lower_bound(expected));
  const int allocations = fake().stats().live_allocations;

  void* workspace = alloc(bytes);
  l.args.workspace = workspace;
  l.args.workspace_bytes = bytes;
  ASSERT_EQ(forward(l), TMOE_SUCCESS) << tmoe_last_error();
  check_launches(l, expected, workspace, bytes);
  EXPECT_EQ(fake().stats().live_allocations, allocations + 1);  // only the test's: the backend allocated none

  restart_log();
  l.args.workspace_bytes = bytes - 1;
  EXPECT_EQ(forward(l), TMOE_ERROR_INVALID_ARGUMENT);
  EXPECT_STREQ(tmoe_last_error(), ("workspace_bytes: expected at least " + std::to_string(bytes) +
                                   " bytes (tmoe_moe_workspace_size), got " + std::to_string(bytes - 1))
                                      .c_str());
  EXPECT_EQ(fake().stats().launches, 0) << recorded_functions();

  void* big = alloc(bytes + 256);
  l.args.workspace = static_cast<uint8_t*>(big) + 16;
  l.args.workspace_bytes = bytes;
  EXPECT_EQ(forward(l), TMOE_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(tmoe_last_error()).find("workspace: expected a 256-byte aligned device address"),
            std::string::npos)
      << tmoe_last_error();
  EXPECT_EQ(fake().stats().launches, 0) << recorded_functions();
}

// The TMA form of down builds its tensor descriptors in Triton's per-program
// global scratch (CUDA sm_90; the pointer form elsewhere needs none): the plan
// sizes it for the grid and carves it from the workspace beside the other buffers.
TEST_P(GpuForwardFakeTest, TmaDownTileGetsItsScratchFromTheWorkspace) {
  const Case& c = kMain;
  const TunedTiles tuned{128, 0, 5};
  const std::string table = use_tuning_table(c, tuned);
  OPEN_CONTEXT_OR_RETURN();
  Layer l = make_layer(c);
  const std::vector<ExpectedLaunch> expected = expected_launches(l, tuned);
  const ExpectedLaunch& routed_down = launch_of(expected, "down");
  const KernelEntry* down = routed_down.entry;
  ASSERT_EQ(down->variant, "bf16_routed_m128_t5_div16");
  EXPECT_EQ(constexpr_of(down, "TMA"), 1);
  if (cuda()) {
    EXPECT_GT(down->global_scratch_size, 0u) << "sm_90 builds the descriptors on the device";
  }
  forward_in_sized_workspace(l, expected, down->global_scratch_size * routed_down.grid);
  std::remove(table.c_str());
}

// Persistent tiles: the grid stops at PERSISTENT programs per multiprocessor when
// the tiles outnumber them, and the program count sizes the TMA scratch.
TEST_P(GpuForwardFakeTest, PersistentTilesCapTheirGrids) {
  const Case c = {"persistent", 2048, 16, 8, 1024, 512, 0};  // 128+ M blocks, 4 N blocks
  const TunedTiles tuned{128, 7, 7};
  const std::string table = use_tuning_table(c, tuned);
  OPEN_CONTEXT_OR_RETURN();
  Layer l = make_layer(c);
  const std::vector<ExpectedLaunch> expected = expected_launches(l, tuned);
  const ExpectedLaunch& gate_up = launch_of(expected, "gate_up_swiglu");
  const ExpectedLaunch& down = launch_of(expected, "down");
  for (const ExpectedLaunch& gemm : {gate_up, down}) {
    ASSERT_EQ(gemm.entry->variant, "bf16_routed_m128_t7_div16") << gemm.entry->kernel;
    EXPECT_EQ(constexpr_of(gemm.entry, "PERSISTENT"), 1) << gemm.entry->kernel;
    EXPECT_EQ(gemm.grid, fake_multiprocessors()) << gemm.entry->kernel << ": more tiles than multiprocessors";
  }
  const uint64_t scratch_per_program =
      std::max(gate_up.entry->global_scratch_size, down.entry->global_scratch_size);
  forward_in_sized_workspace(l, expected, scratch_per_program * fake_multiprocessors());
  std::remove(table.c_str());
}

// A PADDED_Y down tile (performance-log.md #62) writes y unweighted by padded
// position: combine gathers each slot's row through slot_positions and weighs it,
// the shared expert's rows from row `capacity` on, and runs even with one row per
// token (no direct write of out).
TEST_P(GpuForwardFakeTest, PaddedDownTileLeavesTheWeightsAndTheOrderToCombine) {
  check_padded_down({"padded_shared", 300, 16, 4, 256, 128, 64}, {128, 7, 11});
}

TEST_P(GpuForwardFakeTest, PaddedDownTileWithOneRowPerTokenStillCombines) {
  check_padded_down({"padded_k1", 300, 16, 1, 256, 128, 0}, {128, 0, 12});
}

// BLOCK_M 32's hinted tiles serve a tuned table where the heuristic would not run
// them (kMain has 4 rows per expert: m16), beside the unhinted fallback of the same
// BLOCK_M.
TEST_P(GpuForwardFakeTest, TunedBlockM32RunsItsHintedTile) {
  const TunedTiles tuned{32, 0, 0};
  const std::string table = use_tuning_table(kMain, tuned);
  OPEN_CONTEXT_OR_RETURN();
  Layer l = make_layer(kMain);
  const std::vector<ExpectedLaunch> expected = expected_launches(l, tuned);
  EXPECT_EQ(launch_of(expected, "gate_up_swiglu").entry->variant, "bf16_routed_m32_t0_div16");
  EXPECT_EQ(launch_of(expected, "down").entry->variant, "bf16_routed_m32_t0_div16");
  ASSERT_EQ(forward(l), TMOE_SUCCESS) << tmoe_last_error();
  check_launches(l, expected);
  std::remove(table.c_str());
}

// On cuda:90 every kernel of the layer can wait for the one before it itself
// (kernels/dependent_launch.py); a tuned choice says whether they are launched so
// (KernelChoice::dependent_launch). HIP has no such launch.
TEST_P(GpuForwardFakeTest, ATableChoosingDependentLaunchLaunchesEveryLayerKernelSoOnHopper) {
  const TunedTiles tuned{32, 0, 0, true};
  const std::string table = use_tuning_table(kMain, tuned);
  OPEN_CONTEXT_OR_RETURN();
  Layer l = make_layer(kMain);
  const std::vector<ExpectedLaunch> expected = expected_launches(l, tuned);
  ASSERT_EQ(forward(l), TMOE_SUCCESS) << tmoe_last_error();
  check_launches(l, expected);
  for (const ExpectedLaunch& launch : expected) {
    EXPECT_EQ(launch.programmatic_dependent, cuda()) << launch.entry->describe();
  }
  std::remove(table.c_str());
}

// The heuristic launches none so: measured, dependent launch cost 5% at deepseek-v3
// T = 1 as it saved up to 2% elsewhere (performance-log.md #37).
TEST_P(GpuForwardFakeTest, TheHeuristicLaunchesNoKernelAsADependent) {
  OPEN_CONTEXT_OR_RETURN();
  for (const Case& c : {kMain, Case{"decode", 1, 8, 2, 256, 128, 64}}) {
    SCOPED_TRACE(c.name);
    restart_log();
    Layer l = make_layer(c);
    ASSERT_EQ(forward(l), TMOE_SUCCESS) << tmoe_last_error();
    ASSERT_GT(fake().stats().launches, 0);
    for (int i = 0; i < fake().stats().launches; ++i) EXPECT_EQ(fake().launch(i).programmatic_dependent, 0);
  }
}

TEST_P(GpuForwardFakeTest, MoreExpertsThanTheLargestBucketAreUnsupported) {
  OPEN_CONTEXT_OR_RETURN();
  Layer l = make_layer({"e1025", 4, 1025, 2, 32, 16, 0});
  EXPECT_EQ(forward(l), TMOE_ERROR_UNSUPPORTED);
  const std::string message = tmoe_last_error();
  EXPECT_NE(message.find("w13: the GPU kernels serve E <= 1024 experts, got 1025"), std::string::npos) << message;
  EXPECT_EQ(fake().stats().launches, 0) << recorded_functions();
}

TEST_P(GpuForwardFakeTest, F32IsUnsupported) {
  OPEN_CONTEXT_OR_RETURN();
  Case c = kMain;
  c.act = TMOE_DTYPE_F32;
  Layer l = make_layer(c);
  EXPECT_EQ(forward(l), TMOE_ERROR_UNSUPPORTED);
  const std::string message = tmoe_last_error();
  EXPECT_NE(message.find("x: the GPU backend runs bf16 and f16 activations and weights, got f32"), std::string::npos)
      << message;
  size_t bytes = 1;
  EXPECT_EQ(tmoe_moe_workspace_size(ctx_, &l.args, &bytes), TMOE_ERROR_UNSUPPORTED);
  EXPECT_EQ(fake().stats().launches, 0) << recorded_functions();
  EXPECT_EQ(fake().stats().load_calls, 0);
}

INSTANTIATE_TEST_SUITE_P(BothApis, GpuForwardFakeTest, ::testing::Values(Api::cuda, Api::hip),
                         [](const ::testing::TestParamInfo<Api>& info) { return std::string(api_name(info.param)); });

}  // namespace
}  // namespace tmoe::gpu
