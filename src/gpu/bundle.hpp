// The kernel bundle: the ahead-of-time compiled Triton binaries (bundle.bin)
// and their manifest (manifest.json), both embedded in libtmoe at build time.
// The host knows kernels only through these records.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.hpp"

namespace tmoe::gpu {

// The Triton release whose calling convention the launcher implements (the
// hidden global_scratch and profile_scratch parameters after the visible ones).
inline constexpr std::string_view kPinnedTritonVersion = "3.6.0";

enum class ParamKind { pointer, i32, i64, fp32 };

struct KernelParam {
  std::string name;
  std::string type;  // as in the manifest: "*bf16", "i32", "i64", "fp32"
  ParamKind kind = ParamKind::pointer;
  bool hidden = false;   // appended by Triton; filled by the launcher, never by callers
  int divisibility = 1;  // 16: the variant was compiled assuming the value (address) is a multiple of 16
};

struct KernelEntry {
  std::string kernel;   // pipeline stage, e.g. "gate_up_swiglu"
  std::string variant;  // unique within kernel + target
  std::string target;   // "cuda:90", "hip:gfx942"
  std::string backend;  // "cuda" or "hip"
  std::string arch;     // "90", "gfx942"
  int warp_size = 32;
  std::string entry;   // symbol in the binary
  std::string format;  // "cubin" or "hsaco"
  uint64_t offset = 0;  // into bundle.bin
  uint64_t size = 0;
  int num_warps = 0;
  int num_stages = 0;
  uint32_t shared = 0;  // dynamic shared memory bytes
  std::string dtype;
  std::map<std::string, int64_t> constexprs;  // booleans as 0 / 1
  std::vector<KernelParam> params;            // in the entry point's order, hidden ones last
  uint64_t global_scratch_size = 0;           // bytes per program
  uint64_t global_scratch_align = 1;
  uint64_t profile_scratch_size = 0;
  uint64_t profile_scratch_align = 1;

  // "gate_up_swiglu/bf16_m64 for cuda:90": how messages name a compiled variant.
  std::string describe() const;
  // The constexpr's value, or `fallback` when the variant has no such constexpr.
  int64_t constexpr_or(std::string_view name, int64_t fallback) const;
};

class Bundle {
 public:
  // Parses and validates a manifest over its binaries, which must outlive the
  // bundle. An empty manifest is a build without kernels (TMOE_BUILD_KERNELS=OFF):
  // valid, and reported as such by has_kernels() and by variant selection.
  static Status parse(std::string_view manifest_json, std::span<const uint8_t> binaries, Bundle* bundle);

  bool built_with_kernels() const { return built_with_kernels_; }
  const std::string& triton_version() const { return triton_version_; }
  const std::vector<std::string>& targets() const { return targets_; }
  const std::vector<KernelEntry>& kernels() const { return kernels_; }
  // "cuda:80, cuda:90, hip:gfx942", or a sentence saying there are none.
  std::string targets_text() const;

  // The entry's binary inside bundle.bin.
  std::span<const uint8_t> image(const KernelEntry& entry) const;
  // Whether `entry` is one of this bundle's records.
  bool owns(const KernelEntry& entry) const;

  // The entry named kernel/variant for target (the runtime's every-forward lookup), or nullptr.
  const KernelEntry* variant(std::string_view kernel, std::string_view variant, std::string_view target) const;

  // The entries of `kernel` for `target` that `accept` (when given) admits, in manifest order.
  std::vector<const KernelEntry*> find(std::string_view kernel, std::string_view target,
                                       const std::function<bool(const KernelEntry&)>& accept = {}) const;

 private:
  bool built_with_kernels_ = false;
  std::string triton_version_;
  std::vector<std::string> targets_;
  std::vector<KernelEntry> kernels_;
  std::map<std::string, size_t> positions_;  // describe() -> index into kernels_
  std::span<const uint8_t> binaries_;
};

// The bundle embedded in this library, parsed and validated once per process.
// A damaged bundle is Status::internal naming the problem, on every call.
Status embedded_bundle(const Bundle** bundle);

}  // namespace tmoe::gpu
