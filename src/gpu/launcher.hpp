// Choosing a compiled variant and launching it with arguments given by name.
//
// Scratch: Triton kernels may take a global scratch buffer (and, when built
// with profiling, a profile scratch buffer) of a fixed size per program. The
// launcher never allocates: the caller passes a ScratchSpace, a piece of its
// device workspace of at least scratch_bytes(entry, grid) bytes, and the
// launcher carves both regions from it at their alignments. Launches ordered
// on one stream may share one ScratchSpace; launches that can overlap need
// their own. Variants whose scratch sizes are 0 need none (the hidden
// pointers are then null).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <variant>

#include "core/status.hpp"
#include "gpu/bundle.hpp"
#include "gpu/device.hpp"
#include "gpu/module_cache.hpp"

namespace tmoe::gpu {

// A kernel argument, typed as the manifest's params are: a device pointer
// ("*bf16", "*i32", ...), i32, i64 or fp32.
struct DeviceAddress {
  DevicePtr value = 0;
};
inline DeviceAddress device_address(const void* p) { return {reinterpret_cast<uintptr_t>(p)}; }
using ArgValue = std::variant<DeviceAddress, int32_t, int64_t, float>;
// Visible params by name; the launcher puts them in the manifest's order.
using ArgMap = std::map<std::string, ArgValue, std::less<>>;

struct ScratchSpace {
  DevicePtr base = 0;
  size_t bytes = 0;
};

// Bytes of scratch one launch of `entry` over `grid` needs, alignment slack
// included; 0 for the variants without scratch.
size_t scratch_bytes(const KernelEntry& entry, Dim3 grid);

// Exactly what one launch runs: the variant and its geometry.
struct LaunchConfig {
  const KernelEntry* entry = nullptr;
  Dim3 grid;
  Dim3 block;             // num_warps * warp_size threads
  uint32_t shared_bytes;  // the variant's dynamic shared memory

  // "gate_up_swiglu variant=bf16_m64 target=cuda:90 grid=(8,16,1) block=(128,1,1) shared=49152"
  std::string describe() const;
};

// Checks the grid against the hardware limits every target shares.
Status make_launch_config(const KernelEntry& entry, Dim3 grid, LaunchConfig* config);

// The compiled target that runs on `device`: its own architecture, else (CUDA)
// the newest compiled minor revision of the same major one, whose cubins run
// unchanged. An architecture with none is Status::unsupported naming the
// device's architecture and the compiled targets.
Status resolve_target(const Bundle& bundle, const Device& device, std::string* target);

struct VariantQuery {
  std::string kernel;  // "gate_up_swiglu"
  std::string dtype;   // "bf16"
  std::string target;  // from resolve_target
  // Optional: which variants may serve the call, and in words what it demands
  // ("BLOCK_E >= 96"), for the error when none does.
  std::function<bool(const KernelEntry&)> accept{};
  std::string requirement{};
  // Optional: higher is better; ties go to the earlier manifest entry.
  std::function<double(const KernelEntry&)> preference{};
};

// The best accepted variant, or Status::unsupported saying which step found nothing.
Status select_variant(const Bundle& bundle, const VariantQuery& query, const KernelEntry** chosen);

class Launcher {
 public:
  Launcher(std::shared_ptr<const Device> device, const Bundle& bundle);

  // Enqueues `entry` over `grid` on `stream` (null: the default stream). Every
  // visible param must be in `args` with its kind, and nothing else may be;
  // values promised divisible by 16 are checked. No host synchronisation.
  // TMOE_LOG=1 prints each launch's LaunchConfig to stderr. `dependent_launch`: a
  // variant compiled with PDL is launched as a programmatic dependent of the kernel
  // before it on the stream (KernelChoice::dependent_launch).
  Status launch(const KernelEntry& entry, Dim3 grid, const ArgMap& args, StreamHandle stream,
                ScratchSpace scratch = {}, bool dependent_launch = false);

  ModuleCache& modules() { return modules_; }
  const Device& device() const { return modules_.device(); }

 private:
  ModuleCache modules_;
};

}  // namespace tmoe::gpu
