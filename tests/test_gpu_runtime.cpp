// The GPU runtime (driver shims, bundle, module cache, launcher) against fake
// CUDA and HIP drivers, so it runs in CI without a GPU. Every device-facing
// test runs once through each API.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <tmoe/tmoe.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/backend.hpp"
#include "fake_driver/fake_control.h"
#include "fake_driver/fake_test_support.hpp"
#include "gpu/bundle.hpp"
#include "gpu/device.hpp"
#include "gpu/driver.hpp"
#include "gpu/launcher.hpp"
#include "gpu/module_cache.hpp"

namespace tmoe::gpu {
namespace {

using ::tmoe::testing::FakeDriver;
using ::tmoe::testing::ScopedEnv;


#define EXPECT_ERROR(expr, expected_code, fragment)                                         \
  do {                                                                                      \
    const ::tmoe::Status status_ = (expr);                                                  \
    EXPECT_EQ(status_.code(), expected_code) << status_.message();                          \
    EXPECT_NE(status_.message().find(fragment), std::string::npos) << status_.message();    \
  } while (0)



// A minimal ELF64 image whose bytes hold `entry`: enough for the fakes, which
// read the image's length from its headers and look functions up by name.
std::vector<uint8_t> elf_image(const std::string& entry) {
  constexpr size_t kHeader = 64;
  constexpr size_t kSectionHeader = 64;
  std::vector<uint8_t> payload(entry.begin(), entry.end());
  payload.resize((payload.size() + 1 + 15) / 16 * 16, 0);
  std::vector<uint8_t> image(kHeader + payload.size() + kSectionHeader, 0);
  const uint8_t ident[] = {0x7f, 'E', 'L', 'F', 2 /*64-bit*/, 1 /*little endian*/, 1 /*version*/};
  std::memcpy(image.data(), ident, sizeof ident);
  auto put16 = [&](size_t at, uint16_t v) { std::memcpy(image.data() + at, &v, 2); };
  auto put64 = [&](size_t at, uint64_t v) { std::memcpy(image.data() + at, &v, 8); };
  put64(0x28, kHeader + payload.size());  // e_shoff: one null section header at the end
  put16(0x34, kHeader);                   // e_ehsize
  put16(0x3a, kSectionHeader);            // e_shentsize
  put16(0x3c, 1);                         // e_shnum
  std::memcpy(image.data() + kHeader, payload.data(), payload.size());
  return image;
}

// A manifest and bundle in the AOT build's format, for builds without the real
// bundle and for cases the real one does not have (scratch, big shared memory).
struct SyntheticBundle {
  std::string manifest;
  std::vector<uint8_t> binaries;
  Bundle bundle;
};

nlohmann::json param(const char* name, const char* type, int divisibility = 1) {
  nlohmann::json p = {{"name", name}, {"type", type}};
  if (divisibility > 1) p["divisibility"] = divisibility;
  return p;
}

const nlohmann::json kHidden[] = {{{"name", "global_scratch"}, {"type", "*i8"}, {"hidden", true}},
                                  {{"name", "profile_scratch"}, {"type", "*i8"}, {"hidden", true}}};

nlohmann::json with_hidden(nlohmann::json params) {
  for (const auto& h : kHidden) params.push_back(h);
  return params;
}

std::unique_ptr<SyntheticBundle> make_synthetic_bundle() {
  auto out = std::make_unique<SyntheticBundle>();
  nlohmann::json scale_params =
      with_hidden({param("x", "*bf16"), param("y", "*fp32"), param("T", "i32"), param("n", "i64"),
                   param("alpha", "fp32")});
  nlohmann::json hinted_params = with_hidden(
      {param("x", "*bf16", 16), param("y", "*fp32"), param("T", "i32", 16), param("n", "i64"), param("alpha", "fp32")});
  struct Spec {
    const char* kernel;
    const char* variant;
    const char* dtype;
    uint32_t shared;
    nlohmann::json constexprs;
    nlohmann::json params;
    uint64_t global_scratch, global_align, profile_scratch, profile_align;
  };
  const std::vector<Spec> specs = {
      {"scale", "bf16_small", "bf16", 1024, {{"BLOCK", 64}, {"EVEN", true}}, scale_params, 0, 1, 0, 1},
      {"scale", "bf16_big_shared", "bf16", 64 * 1024, {{"BLOCK", 128}, {"EVEN", true}}, scale_params, 0, 1, 0, 1},
      {"scale", "bf16_div16", "bf16", 1024, {{"BLOCK", 256}, {"EVEN", false}}, hinted_params, 0, 1, 0, 1},
      {"scale", "f16_small", "f16", 1024, {{"BLOCK", 64}, {"EVEN", true}}, scale_params, 0, 1, 0, 1},
      {"scratchy", "f16", "f16", 0, nlohmann::json::object(), with_hidden({param("out", "*fp16")}), 256, 128, 64, 64},
  };
  const std::vector<std::pair<std::string, int>> targets = {{"cuda:80", 32}, {"cuda:90", 32}, {"hip:gfx942", 64}};
  nlohmann::json kernels = nlohmann::json::array();
  for (const auto& [target, warp] : targets) {
    const std::string backend = target.substr(0, target.find(':'));
    for (const Spec& s : specs) {
      // cuda:80 holds one variant only: enough for the compatible-target test.
      if (target == "cuda:80" && std::string(s.variant) != "bf16_small") continue;
      const std::string arch = target.substr(target.find(':') + 1);
      const std::string entry = std::string(s.kernel) + "_" + s.variant + "_" + backend + "_" + arch;
      std::vector<uint8_t> image = elf_image(entry);
      out->binaries.resize((out->binaries.size() + 255) / 256 * 256, 0);
      const size_t offset = out->binaries.size();
      out->binaries.insert(out->binaries.end(), image.begin(), image.end());
      kernels.push_back({{"kernel", s.kernel},
                         {"variant", s.variant},
                         {"target", target},
                         {"backend", backend},
                         {"arch", arch},
                         {"warp_size", warp},
                         {"entry", entry},
                         {"format", backend == "cuda" ? "cubin" : "hsaco"},
                         {"offset", offset},
                         {"size", image.size()},
                         {"num_warps", 4},
                         {"num_stages", 2},
                         {"shared", s.shared},
                         {"dtype", s.dtype},
                         {"constexprs", s.constexprs},
                         {"params", s.params},
                         {"global_scratch_size", s.global_scratch},
                         {"global_scratch_align", s.global_align},
                         {"profile_scratch_size", s.profile_scratch},
                         {"profile_scratch_align", s.profile_align}});
    }
  }
  nlohmann::json manifest = {{"format", 1},
                             {"triton_version", std::string(kPinnedTritonVersion)},
                             {"targets", {"cuda:80", "cuda:90", "hip:gfx942"}},
                             {"kernels", kernels}};
  out->manifest = manifest.dump();
  Status status = Bundle::parse(out->manifest, out->binaries, &out->bundle);
  EXPECT_TRUE(status.is_ok()) << status.message();
  return out;
}

const KernelEntry& entry_of(const Bundle& bundle, const std::string& kernel, const std::string& variant,
                            const std::string& target) {
  for (const KernelEntry& e : bundle.kernels()) {
    if (e.kernel == kernel && e.variant == variant && e.target == target) return e;
  }
  ADD_FAILURE() << "no entry " << kernel << "/" << variant << " for " << target;
  return bundle.kernels().front();
}

// Distinct, hint-respecting values for every visible param, and the raw values
// (hidden scratch pointers 0) the fake should record in manifest order.
ArgMap fill_arguments(const KernelEntry& entry, std::vector<uint64_t>* expected, std::vector<int>* sizes) {
  ArgMap args;
  uint64_t next = 1;
  for (const KernelParam& p : entry.params) {
    const uint64_t unique = next++;
    if (p.hidden) {
      expected->push_back(0);
      sizes->push_back(8);
      continue;
    }
    switch (p.kind) {
      case ParamKind::pointer: {
        const uint64_t address = 0x7f0000000000ull + unique * 0x1000;
        args[p.name] = DeviceAddress{address};
        expected->push_back(address);
        sizes->push_back(8);
        break;
      }
      case ParamKind::i32:
        args[p.name] = static_cast<int32_t>(unique * 16);
        expected->push_back(unique * 16);
        sizes->push_back(4);
        break;
      case ParamKind::i64:
        args[p.name] = static_cast<int64_t>(unique * 16 + (int64_t{1} << 40));
        expected->push_back(unique * 16 + (uint64_t{1} << 40));
        sizes->push_back(8);
        break;
      case ParamKind::fp32: {
        const float value = 0.5f + static_cast<float>(unique);
        uint32_t bits = 0;
        std::memcpy(&bits, &value, 4);
        args[p.name] = value;
        expected->push_back(bits);
        sizes->push_back(4);
        break;
      }
    }
  }
  return args;
}

class GpuRuntimeTest : public ::testing::TestWithParam<Api> {
 protected:
  void SetUp() override {
    env_.set("TMOE_CUDA_DRIVER", TMOE_FAKE_CUDA_LIBRARY);
    env_.set("TMOE_HIP_RUNTIME", TMOE_FAKE_HIP_LIBRARY);
    env_.set("FAKE_GPU_ARCH", cuda() ? "90" : "gfx942:sramecc+:xnack-");
    env_.unset("FAKE_GPU_COUNT");
    env_.unset("TMOE_LOG");
    fake().reset();
    synthetic_ = make_synthetic_bundle();
    ASSERT_OK(shared_driver(GetParam(), &driver_));
    ASSERT_OK(Device::open(driver_, 0, &device_));
  }

  bool cuda() const { return GetParam() == Api::cuda; }
  std::string target() const { return cuda() ? "cuda:90" : "hip:gfx942"; }
  const FakeDriver& fake() const { return FakeDriver::of(GetParam()); }
  const Bundle& bundle() const { return synthetic_->bundle; }
  const KernelEntry& entry(const std::string& kernel, const std::string& variant) const {
    return entry_of(bundle(), kernel, variant, target());
  }

  // The arguments of the synthetic "scale" kernel, given out of manifest order.
  ArgMap scale_args() const {
    return ArgMap{{"alpha", 2.5f}, {"T", int32_t{48}}, {"y", DeviceAddress{0x2000}}, {"n", int64_t{1} << 33},
                  {"x", DeviceAddress{0x1000}}};
  }
  void expect_scale_sizes() const {
    const int sizes[] = {8, 8, 4, 8, 4, 8, 8};
    fake().set_arg_sizes(sizes, 7);
  }

  ScopedEnv env_;
  std::unique_ptr<SyntheticBundle> synthetic_;
  std::shared_ptr<Driver> driver_;
  std::shared_ptr<Device> device_;
};

TEST_P(GpuRuntimeTest, ReportsTheDeviceThroughTheDriver) {
  int count = 0;
  ASSERT_OK(driver_->device_count(&count));
  EXPECT_EQ(count, 1);
  EXPECT_EQ(device_->api(), GetParam());
  EXPECT_EQ(device_->arch(), cuda() ? "90" : "gfx942");  // HIP: feature suffixes stripped
  EXPECT_EQ(device_->target(), target());
  EXPECT_EQ(device_->name(), cuda() ? "Fake CUDA GPU sm_90" : "Fake HIP GPU gfx942");
  EXPECT_EQ(device_->multiprocessor_count(), cuda() ? 132 : 304);
  EXPECT_EQ(device_->max_shared_per_block(), cuda() ? 232448 : 65536);
  if (cuda()) {
    const int retained = fake().stats().contexts_retained;
    EXPECT_GE(retained, 1);
    device_.reset();
    EXPECT_EQ(fake().stats().contexts_retained, retained - 1);
  }
}

TEST_P(GpuRuntimeTest, LoadsAndLaunchesABundleEntryForTheDeviceArch) {
  // The real bundle when this build has one for the fake's arch, else the synthetic one.
  const Bundle* real = nullptr;
  ASSERT_OK(embedded_bundle(&real));
  const Bundle* chosen = &bundle();
  if (real->built_with_kernels() && !real->find("gate_up_swiglu", target()).empty()) chosen = real;
  const KernelEntry& e =
      chosen == real ? *real->find("gate_up_swiglu", target()).front() : entry("scale", "bf16_small");
  SCOPED_TRACE(e.describe() + (chosen == real ? " (real bundle)" : " (synthetic bundle)"));

  Launcher launcher(device_, *chosen);
  const Module* module = nullptr;
  ASSERT_OK(launcher.modules().get(e, &module));
  fake_gpu_stats stats = fake().stats();
  EXPECT_EQ(stats.load_calls, 1);
  EXPECT_EQ(stats.modules_live, 1);
  EXPECT_EQ(stats.last_module_bytes, e.size);
  EXPECT_STREQ(stats.last_function, e.entry.c_str());

  std::vector<uint64_t> expected;
  std::vector<int> sizes;
  ArgMap args = fill_arguments(e, &expected, &sizes);
  fake().set_arg_sizes(sizes.data(), static_cast<int>(sizes.size()));
  Stream stream;
  ASSERT_OK(Stream::create(device_, &stream));
  ASSERT_OK(launcher.launch(e, Dim3{5, 2, 1}, args, stream.handle()));
  fake_gpu_launch l = fake().launch(0);
  EXPECT_STREQ(l.function, e.entry.c_str());
  EXPECT_EQ(l.grid[0], 5u);
  EXPECT_EQ(l.grid[1], 2u);
  EXPECT_EQ(l.block[0], static_cast<unsigned>(e.num_warps * e.warp_size));
  EXPECT_EQ(l.shared, e.shared);
  EXPECT_EQ(l.stream, stream.handle());
  ASSERT_EQ(l.arg_count, static_cast<int>(expected.size()));
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_EQ(l.args[i], expected[i]) << "param " << e.params[i].name;
}

TEST_P(GpuRuntimeTest, LaunchPutsNamedArgumentsInManifestOrder) {
  Launcher launcher(device_, bundle());
  const KernelEntry& e = entry("scale", "bf16_small");
  expect_scale_sizes();
  ASSERT_OK(launcher.launch(e, Dim3{2, 3, 1}, scale_args(), nullptr));
  ASSERT_EQ(fake().stats().launches, 1);
  fake_gpu_launch l = fake().launch(0);
  EXPECT_STREQ(l.function, e.entry.c_str());
  EXPECT_EQ(l.grid[0], 2u);
  EXPECT_EQ(l.grid[1], 3u);
  EXPECT_EQ(l.grid[2], 1u);
  EXPECT_EQ(l.block[0], cuda() ? 128u : 256u);  // 4 warps of 32 or 64
  EXPECT_EQ(l.block[1], 1u);
  EXPECT_EQ(l.shared, 1024u);
  uint32_t alpha_bits = 0;
  const float alpha = 2.5f;
  std::memcpy(&alpha_bits, &alpha, 4);
  const uint64_t expected[] = {0x1000, 0x2000, 48, uint64_t{1} << 33, alpha_bits, 0, 0};
  ASSERT_EQ(l.arg_count, 7);
  for (int i = 0; i < 7; ++i) EXPECT_EQ(l.args[i], expected[i]) << "param " << e.params[i].name;
}

TEST_P(GpuRuntimeTest, ScratchComesFromTheCallersWorkspace) {
  Launcher launcher(device_, bundle());
  const KernelEntry& e = entry("scratchy", "f16");
  const Dim3 grid{3, 2, 1};  // 6 programs: 6 * 256 global + 6 * 64 profile bytes, plus alignment slack
  EXPECT_EQ(scratch_bytes(e, grid), size_t{6 * 256 + 127 + 6 * 64 + 63});
  EXPECT_EQ(scratch_bytes(entry("scale", "bf16_small"), grid), 0u);

  DeviceBuffer workspace;
  ASSERT_OK(DeviceBuffer::allocate(device_, 4096, &workspace));
  // A base that is not aligned, as a slice of a larger workspace can be.
  const ScratchSpace scratch{workspace.address() + 8, scratch_bytes(e, grid)};
  const int sizes[] = {8, 8, 8};
  fake().set_arg_sizes(sizes, 3);
  const ArgMap args{{"out", DeviceAddress{0x3000}}};
  ASSERT_OK(launcher.launch(e, grid, args, nullptr, scratch));
  fake_gpu_launch l = fake().launch(0);
  const uint64_t global = l.args[1];
  const uint64_t profile = l.args[2];
  EXPECT_EQ(l.args[0], 0x3000u);
  EXPECT_EQ(global % 128, 0u);
  EXPECT_EQ(profile % 64, 0u);
  EXPECT_GE(global, scratch.base);
  EXPECT_GE(profile, global + 6 * 256);
  EXPECT_LE(profile + 6 * 64, scratch.base + scratch.bytes);

  EXPECT_ERROR(launcher.launch(e, grid, args, nullptr, ScratchSpace{scratch.base, scratch.bytes - 1}),
               TMOE_ERROR_INVALID_ARGUMENT, "needs 2110 bytes of scratch for grid (3,2,1)");
  EXPECT_ERROR(launcher.launch(e, grid, args, nullptr), TMOE_ERROR_INVALID_ARGUMENT, "ScratchSpace gives 0");
  EXPECT_EQ(fake().stats().launches, 1);
}

TEST_P(GpuRuntimeTest, OptsIntoSharedMemoryAbove48KiBOnceAtLoad) {
  Launcher launcher(device_, bundle());
  const KernelEntry& big = entry("scale", "bf16_big_shared");
  const KernelEntry& small = entry("scale", "bf16_small");
  expect_scale_sizes();
  ASSERT_OK(launcher.launch(big, Dim3{1, 1, 1}, scale_args(), nullptr));
  ASSERT_OK(launcher.launch(big, Dim3{1, 1, 1}, scale_args(), nullptr));
  ASSERT_OK(launcher.launch(small, Dim3{1, 1, 1}, scale_args(), nullptr));
  EXPECT_EQ(fake().shared_optin(big.entry.c_str()), 64 * 1024);
  EXPECT_EQ(fake().shared_optin(small.entry.c_str()), -1);  // 1 KiB needs no opt-in
  EXPECT_EQ(fake().stats().load_calls, 2);
  EXPECT_EQ(fake().launch(0).shared, 64u * 1024);
}

TEST_P(GpuRuntimeTest, ArgumentErrorsNameTheKernelAndTheParam) {
  Launcher launcher(device_, bundle());
  const KernelEntry& e = entry("scale", "bf16_small");
  const std::string kernel = "scale/bf16_small for " + target();
  const Dim3 grid{1, 1, 1};

  ArgMap missing = scale_args();
  missing.erase("T");
  EXPECT_ERROR(launcher.launch(e, grid, missing, nullptr), TMOE_ERROR_INVALID_ARGUMENT,
               kernel + ": missing argument 'T' (i32)");

  ArgMap extra = scale_args();
  extra["bogus"] = int32_t{1};
  EXPECT_ERROR(launcher.launch(e, grid, extra, nullptr), TMOE_ERROR_INVALID_ARGUMENT,
               kernel + ": argument 'bogus' is not a parameter of scale; it takes x (*bf16), y (*fp32), T (i32)");

  ArgMap constexpr_given = scale_args();
  constexpr_given["BLOCK"] = int32_t{64};
  EXPECT_ERROR(launcher.launch(e, grid, constexpr_given, nullptr), TMOE_ERROR_INVALID_ARGUMENT,
               "argument 'BLOCK' is compiled into this variant (BLOCK=64)");

  ArgMap hidden_given = scale_args();
  hidden_given["global_scratch"] = DeviceAddress{0x10};
  EXPECT_ERROR(launcher.launch(e, grid, hidden_given, nullptr), TMOE_ERROR_INVALID_ARGUMENT,
               "argument 'global_scratch' is filled by the launcher");

  ArgMap wrong_kind = scale_args();
  wrong_kind["T"] = int64_t{48};
  EXPECT_ERROR(launcher.launch(e, grid, wrong_kind, nullptr), TMOE_ERROR_INVALID_ARGUMENT,
               kernel + ": argument 'T' must be i32 (i32), got i64");
  ArgMap pointer_as_int = scale_args();
  pointer_as_int["x"] = int64_t{0x1000};
  EXPECT_ERROR(launcher.launch(e, grid, pointer_as_int, nullptr), TMOE_ERROR_INVALID_ARGUMENT,
               "argument 'x' must be a device pointer (*bf16), got i64");

  const KernelEntry& hinted = entry("scale", "bf16_div16");
  ArgMap odd = scale_args();
  odd["T"] = int32_t{50};
  EXPECT_ERROR(launcher.launch(hinted, grid, odd, nullptr), TMOE_ERROR_INVALID_ARGUMENT,
               "argument 'T' = 50 must be a multiple of 16");
  ArgMap unaligned = scale_args();
  unaligned["x"] = DeviceAddress{0x1008};
  EXPECT_ERROR(launcher.launch(hinted, grid, unaligned, nullptr), TMOE_ERROR_INVALID_ARGUMENT,
               "argument 'x' = 4104 must be a multiple of 16");

  EXPECT_ERROR(launcher.launch(e, Dim3{0, 1, 1}, scale_args(), nullptr), TMOE_ERROR_INVALID_ARGUMENT,
               "grid (0,1,1) is out of range");
  EXPECT_EQ(fake().stats().launches, 0);
  EXPECT_EQ(fake().stats().load_calls, 0);  // refused before anything was loaded
}

TEST_P(GpuRuntimeTest, ArchWithoutACompiledTargetIsAClearError) {
  env_.set("FAKE_GPU_ARCH", cuda() ? "75" : "gfx1100");
  std::shared_ptr<Device> other;
  ASSERT_OK(Device::open(driver_, 0, &other));
  std::string resolved;
  const std::string arch = cuda() ? "cuda:75" : "hip:gfx1100";
  EXPECT_ERROR(resolve_target(bundle(), *other, &resolved), TMOE_ERROR_UNSUPPORTED,
               "no compiled GPU kernels for " + other->name() + ": its architecture is " + arch +
                   "; this build has kernels for cuda:80, cuda:90, hip:gfx942");

  ASSERT_OK(resolve_target(bundle(), *device_, &resolved));
  EXPECT_EQ(resolved, target());
  if (cuda()) {
    // sm_89 runs sm_80 cubins; sm_100 runs neither sm_80 nor sm_90a ones.
    env_.set("FAKE_GPU_ARCH", "89");
    ASSERT_OK(Device::open(driver_, 0, &other));
    ASSERT_OK(resolve_target(bundle(), *other, &resolved));
    EXPECT_EQ(resolved, "cuda:80");
    env_.set("FAKE_GPU_ARCH", "100");
    ASSERT_OK(Device::open(driver_, 0, &other));
    EXPECT_ERROR(resolve_target(bundle(), *other, &resolved), TMOE_ERROR_UNSUPPORTED, "architecture is cuda:100");
  }
  // A binary of the other vendor is refused before the driver sees it.
  const KernelEntry& foreign = entry_of(bundle(), "scale", "bf16_small", cuda() ? "hip:gfx942" : "cuda:90");
  Launcher launcher(device_, bundle());
  const Module* module = nullptr;
  EXPECT_ERROR(launcher.modules().get(foreign, &module), TMOE_ERROR_INVALID_ARGUMENT, "is " + target());
}

TEST_P(GpuRuntimeTest, UnloadsModulesWhenTheCacheGoes) {
  {
    ModuleCache cache(device_, bundle());
    const Module* a = nullptr;
    const Module* b = nullptr;
    ASSERT_OK(cache.get(entry("scale", "bf16_small"), &a));
    ASSERT_OK(cache.get(entry("scale", "f16_small"), &b));
    ASSERT_OK(cache.get(entry("scale", "bf16_small"), &a));
    EXPECT_EQ(cache.loaded_count(), 2u);
    EXPECT_EQ(fake().stats().modules_live, 2);
    EXPECT_EQ(fake().stats().load_calls, 2);
  }
  EXPECT_EQ(fake().stats().modules_live, 0);
}

TEST_P(GpuRuntimeTest, ConcurrentFirstUseLoadsOnce) {
  ModuleCache cache(device_, bundle());
  const KernelEntry& e = entry("scale", "bf16_small");
  fake().set_load_delay_ms(50);  // every thread arrives while the load is under way
  constexpr int kThreads = 8;
  std::vector<const Module*> seen(kThreads, nullptr);
  std::vector<Status> results(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] { results[i] = cache.get(e, &seen[i]); });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kThreads; ++i) {
    ASSERT_TRUE(results[i].is_ok()) << results[i].message();
    EXPECT_EQ(seen[i], seen[0]);
  }
  EXPECT_EQ(fake().stats().load_calls, 1);
  EXPECT_EQ(cache.loaded_count(), 1u);
}

TEST_P(GpuRuntimeTest, MemoryEventsStreamsAndGraphCapture) {
  const int allocations_before = fake().stats().live_allocations;
  {
    DeviceBuffer buffer;
    ASSERT_OK(DeviceBuffer::allocate(device_, 64, &buffer));
    EXPECT_EQ(fake().stats().live_allocations, allocations_before + 1);
    Stream stream;
    ASSERT_OK(Stream::create(device_, &stream));
    std::vector<uint8_t> in(64), out(64, 0);
    for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<uint8_t>(i);
    ASSERT_OK(driver_->copy_to_device(buffer.address(), in.data(), in.size()));
    ASSERT_OK(driver_->memset_async(buffer.address() + 32, 0xab, 16, stream.handle()));
    ASSERT_OK(driver_->copy_to_host_async(out.data(), buffer.address(), out.size(), stream.handle()));
    ASSERT_OK(stream.synchronize());
    for (size_t i = 0; i < out.size(); ++i) EXPECT_EQ(out[i], i >= 32 && i < 48 ? 0xab : i) << i;
    ASSERT_OK(driver_->copy_to_device_async(buffer.address(), in.data() + 1, 8, stream.handle()));
    ASSERT_OK(driver_->copy_to_host(out.data(), buffer.address(), 8));
    EXPECT_EQ(out[0], 1);

    // Capture records the launch without running it; each replay runs it.
    Launcher launcher(device_, bundle());
    const KernelEntry& e = entry("scale", "bf16_small");
    expect_scale_sizes();
    Graph graph;
    ASSERT_OK(Graph::capture(
        device_, stream.handle(), [&] { return launcher.launch(e, Dim3{4, 1, 1}, scale_args(), stream.handle()); },
        &graph));
    EXPECT_EQ(fake().stats().launches, 0);
    Event start;
    Event stop;
    ASSERT_OK(Event::create(device_, &start));
    ASSERT_OK(Event::create(device_, &stop));
    ASSERT_OK(start.record(stream.handle()));
    ASSERT_OK(graph.launch(stream.handle()));
    ASSERT_OK(graph.launch(stream.handle()));
    ASSERT_OK(stop.record(stream.handle()));
    float ms = 0;
    ASSERT_OK(start.elapsed_ms_until(stop, &ms));
    EXPECT_FLOAT_EQ(ms, 0.25f);  // the fake's clock: one tick per record
    ASSERT_EQ(fake().stats().launches, 2);
    EXPECT_EQ(fake().launch(1).grid[0], 4u);
    EXPECT_EQ(fake().launch(1).args[2], 48u);

    // A failure while capturing still ends the capture: the stream stays usable.
    Graph failed;
    EXPECT_ERROR(Graph::capture(
                     device_, stream.handle(),
                     [&] { return launcher.launch(e, Dim3{4, 1, 1}, ArgMap{}, stream.handle()); }, &failed),
                 TMOE_ERROR_INVALID_ARGUMENT, "missing argument");
    ASSERT_OK(launcher.launch(e, Dim3{1, 1, 1}, scale_args(), stream.handle()));
    EXPECT_EQ(fake().stats().launches, 3);
  }
  EXPECT_EQ(fake().stats().live_allocations, allocations_before);
}

TEST_P(GpuRuntimeTest, DriverErrorsNameTheCallAndTheError) {
  const char not_elf[] = "this is not a kernel image";
  ModuleHandle module = nullptr;
  ScopedCurrent current;
  ASSERT_OK(device_->make_current(&current));
  EXPECT_ERROR(driver_->load_module(not_elf, &module), TMOE_ERROR_DRIVER,
               cuda() ? "cuModuleLoadData: CUDA_ERROR_INVALID_IMAGE (device kernel image is invalid)"
                      : "hipModuleLoadData: hipErrorInvalidImage (device kernel image is invalid)");

  // An entry whose symbol is not in its binary: the load names the variant.
  std::string manifest = synthetic_->manifest;
  const std::string symbol = "scale_bf16_small_" + std::string(cuda() ? "cuda_90" : "hip_gfx942");
  manifest.replace(manifest.find("\"" + symbol + "\""), symbol.size() + 2, "\"missing_symbol\"");
  Bundle broken;
  ASSERT_OK(Bundle::parse(manifest, synthetic_->binaries, &broken));
  ModuleCache cache(device_, broken);
  const Module* loaded = nullptr;
  EXPECT_ERROR(cache.get(entry_of(broken, "scale", "bf16_small", target()), &loaded), TMOE_ERROR_DRIVER,
               std::string(cuda() ? "cuModuleGetFunction: CUDA_ERROR_NOT_FOUND"
                                  : "hipModuleGetFunction: hipErrorNotFound") +
                   " (named symbol not found) [loading scale/bf16_small for " + target() + ", entry missing_symbol");
  EXPECT_EQ(fake().stats().modules_live, 0);  // the half-loaded module was unloaded
  EXPECT_EQ(cache.loaded_count(), 0u);
}

TEST_P(GpuRuntimeTest, LogsEachLaunchWhenAsked) {
  env_.set("TMOE_LOG", "1");
  Launcher launcher(device_, bundle());
  ::testing::internal::CaptureStderr();
  Status status = launcher.launch(entry("scale", "bf16_small"), Dim3{2, 3, 1}, scale_args(), nullptr);
  const std::string log = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(status.is_ok()) << status.message();
  EXPECT_NE(log.find("tmoe: launch scale variant=bf16_small target=" + target() + " grid=(2,3,1) block=(" +
                     (cuda() ? "128" : "256") + ",1,1) shared=1024"),
            std::string::npos)
      << log;
}

INSTANTIATE_TEST_SUITE_P(BothApis, GpuRuntimeTest, ::testing::Values(Api::cuda, Api::hip),
                         [](const ::testing::TestParamInfo<Api>& info) { return std::string(api_name(info.param)); });

// ---- Without a device: bundle parsing and variant selection.

VariantQuery query(const char* kernel, const char* dtype, const char* target) {
  VariantQuery q;
  q.kernel = kernel;
  q.dtype = dtype;
  q.target = target;
  return q;
}

TEST(GpuBundleTest, EmbeddedBundleParsesOrSaysItHasNoKernels) {
  const Bundle* bundle = nullptr;
  ASSERT_OK(embedded_bundle(&bundle));
  if (bundle->built_with_kernels()) {
    EXPECT_EQ(bundle->triton_version(), kPinnedTritonVersion);
    EXPECT_FALSE(bundle->kernels().empty());
    for (const KernelEntry& e : bundle->kernels()) {
      ASSERT_GE(e.params.size(), 2u) << e.describe();
      EXPECT_EQ(e.params[e.params.size() - 2].name, "global_scratch") << e.describe();
      EXPECT_EQ(e.params.back().name, "profile_scratch") << e.describe();
      EXPECT_EQ(bundle->variant(e.kernel, e.variant, e.target), &e) << "the index finds " << e.describe();
    }
    EXPECT_EQ(bundle->variant("gate_up_swiglu", "no_such_variant", bundle->targets().front()), nullptr);
    EXPECT_EQ(bundle->variant("no_such_kernel", bundle->kernels().front().variant, bundle->targets().front()), nullptr);
  } else {
    EXPECT_TRUE(bundle->kernels().empty());
    const KernelEntry* chosen = nullptr;
    EXPECT_ERROR(select_variant(*bundle, query("gate_up_swiglu", "bf16", "cuda:90"), &chosen),
                 TMOE_ERROR_UNSUPPORTED, "this build has no GPU kernels (configured with TMOE_BUILD_KERNELS=OFF)");
  }
}

TEST(GpuBundleTest, ValidationRejectsDamagedManifests) {
  auto synthetic = make_synthetic_bundle();
  const nlohmann::json good = nlohmann::json::parse(synthetic->manifest);
  auto rejects = [&](const std::function<void(nlohmann::json&)>& damage, const std::string& fragment) {
    nlohmann::json manifest = good;
    damage(manifest);
    Bundle bundle;
    EXPECT_ERROR(Bundle::parse(manifest.dump(), synthetic->binaries, &bundle), TMOE_ERROR_INTERNAL, fragment);
  };
  rejects([](auto& m) { m["format"] = 2; }, "format 2; this library reads format 1");
  rejects([](auto& m) { m["triton_version"] = "3.5.0"; }, "built with Triton 3.5.0");
  rejects([](auto& m) { m["kernels"][0]["offset"] = 1 << 30; }, "lies outside bundle.bin");
  rejects([](auto& m) { m["kernels"][0]["offset"] = 8; }, "is not an ELF image");
  rejects([](auto& m) { m["kernels"][0].erase("entry"); },
          "kernels[0] (scale/bf16_small for cuda:80): missing field \"entry\"");
  rejects([](auto& m) { m["kernels"][0]["params"][0]["type"] = "fp16"; }, "param \"x\" has type \"fp16\"");
  rejects([](auto& m) { m["kernels"][0]["params"].push_back({{"name", "late"}, {"type", "i32"}}); },
          "visible param \"late\" follows a hidden one");
  rejects([](auto& m) { m["kernels"][0]["target"] = "cuda:75"; }, "target must be backend:arch");
  rejects([](auto& m) { m["kernels"][0]["warp_size"] = 64; }, "warp_size 64 is impossible on cuda");
  rejects([](auto& m) { m["kernels"].push_back(m["kernels"][0]); }, "scale/bf16_small for cuda:80 appears twice");
  Bundle bundle;
  EXPECT_ERROR(Bundle::parse("{not json", synthetic->binaries, &bundle), TMOE_ERROR_INTERNAL, "not a JSON object");
  ASSERT_OK(Bundle::parse("", {}, &bundle));
  EXPECT_FALSE(bundle.built_with_kernels());
}

TEST(GpuBundleTest, SelectVariantFiltersPrefersAndExplains) {
  auto synthetic = make_synthetic_bundle();
  const Bundle& bundle = synthetic->bundle;
  const KernelEntry* chosen = nullptr;

  ASSERT_OK(select_variant(bundle, query("scale", "bf16", "cuda:90"), &chosen));
  EXPECT_EQ(chosen->variant, "bf16_small");  // no preference: manifest order

  VariantQuery biggest = query("scale", "bf16", "cuda:90");
  biggest.preference = [](const KernelEntry& e) { return static_cast<double>(e.constexpr_or("BLOCK", 0)); };
  ASSERT_OK(select_variant(bundle, biggest, &chosen));
  EXPECT_EQ(chosen->variant, "bf16_div16");

  biggest.accept = [](const KernelEntry& e) { return e.constexpr_or("EVEN", 0) == 1; };
  ASSERT_OK(select_variant(bundle, biggest, &chosen));
  EXPECT_EQ(chosen->variant, "bf16_big_shared");

  VariantQuery impossible = query("scale", "bf16", "cuda:90");
  impossible.accept = [](const KernelEntry& e) { return e.constexpr_or("BLOCK", 0) >= 1024; };
  impossible.requirement = "BLOCK >= 1024";
  EXPECT_ERROR(select_variant(bundle, impossible, &chosen), TMOE_ERROR_UNSUPPORTED,
               "none of the bf16 variants of kernel 'scale' for cuda:90 (bf16_small, bf16_big_shared, bf16_div16) "
               "meets BLOCK >= 1024");
  EXPECT_ERROR(select_variant(bundle, query("scale", "f32", "cuda:90"), &chosen), TMOE_ERROR_UNSUPPORTED,
               "kernel 'scale' for cuda:90 has no f32 variant (compiled: bf16, f16)");
  EXPECT_ERROR(select_variant(bundle, query("scale", "bf16", "hip:gfx90a"), &chosen), TMOE_ERROR_UNSUPPORTED,
               "kernel 'scale' has no variant compiled for hip:gfx90a; "
               "it is compiled for cuda:80, cuda:90, hip:gfx942");
  EXPECT_ERROR(select_variant(bundle, query("route", "bf16", "cuda:90"), &chosen), TMOE_ERROR_UNSUPPORTED,
               "kernel 'route' is not in the kernel bundle");
}

// ---- Which driver the machine has.

TEST(GpuDriverSelectionTest, MissingDriverLibrariesMeanNoDevice) {
  ScopedEnv env;
  env.set("TMOE_CUDA_DRIVER", "/nonexistent/libcuda.so.1");
  env.set("TMOE_HIP_RUNTIME", "/nonexistent/libamdhip64.so");
  int count = -1;
  ASSERT_OK(gpu_device_count(&count));
  EXPECT_EQ(count, 0);
  int32_t public_count = -1;
  EXPECT_EQ(tmoe_device_count(TMOE_BACKEND_GPU, &public_count), TMOE_SUCCESS);
  EXPECT_EQ(public_count, 0);

  std::shared_ptr<Device> device;
  EXPECT_ERROR(Device::open(0, &device), TMOE_ERROR_NO_DEVICE,
               "no usable GPU: cannot load /nonexistent/libcuda.so.1");
  EXPECT_ERROR(Device::open(0, &device), TMOE_ERROR_NO_DEVICE, "cannot load /nonexistent/libamdhip64.so");

  tmoe_context ctx = nullptr;
  EXPECT_EQ(tmoe_context_create(TMOE_BACKEND_GPU, 0, &ctx), TMOE_ERROR_NO_DEVICE);
  EXPECT_EQ(ctx, nullptr);
  EXPECT_STRNE(tmoe_last_error(), "");
}

TEST(GpuDriverSelectionTest, DeviceCountComesFromCudaThenHip) {
  ScopedEnv env;
  env.set("TMOE_CUDA_DRIVER", TMOE_FAKE_CUDA_LIBRARY);
  env.set("TMOE_HIP_RUNTIME", TMOE_FAKE_HIP_LIBRARY);
  env.set("FAKE_GPU_ARCH", "90");
  env.set("FAKE_GPU_COUNT", "2");
  int count = 0;
  ASSERT_OK(gpu_device_count(&count));
  EXPECT_EQ(count, 2);
  std::shared_ptr<Device> device;
  ASSERT_OK(Device::open(1, &device));
  EXPECT_EQ(device->api(), Api::cuda);
  EXPECT_ERROR(Device::open(2, &device), TMOE_ERROR_NO_DEVICE, "sees 2 device(s), got index 2");
  device.reset();  // released while the fake still has two devices

  env.set("TMOE_CUDA_DRIVER", "/nonexistent/libcuda.so.1");
  env.set("FAKE_GPU_ARCH", "gfx90a");
  env.set("FAKE_GPU_COUNT", "1");
  ASSERT_OK(gpu_device_count(&count));
  EXPECT_EQ(count, 1);
  ASSERT_OK(Device::open(0, &device));
  EXPECT_EQ(device->api(), Api::hip);
  EXPECT_EQ(device->target(), "hip:gfx90a");
}

}  // namespace
}  // namespace tmoe::gpu
