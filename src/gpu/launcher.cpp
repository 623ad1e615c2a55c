#include "gpu/launcher.hpp"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <set>
#include <vector>

namespace tmoe::gpu {
namespace {

constexpr uint32_t kMaxGridX = 0x7fffffffu;
constexpr uint32_t kMaxGridYZ = 65535u;

bool log_enabled() {
  const char* value = std::getenv("TMOE_LOG");
  return value != nullptr && value[0] != '\0' && std::strcmp(value, "0") != 0;
}

std::string dim3_text(Dim3 d) {
  char text[48];
  std::snprintf(text, sizeof text, "(%u,%u,%u)", d.x, d.y, d.z);
  return text;
}

uint64_t program_count(Dim3 grid) { return uint64_t{grid.x} * grid.y * grid.z; }

// a * b + add, or false when it does not fit.
bool checked_mul_add(uint64_t a, uint64_t b, uint64_t add, uint64_t* out) {
  uint64_t product = 0;
  return !__builtin_mul_overflow(a, b, &product) && !__builtin_add_overflow(product, add, out);
}

uint64_t align_up(uint64_t value, uint64_t alignment) { return (value + alignment - 1) / alignment * alignment; }

const char* kind_text(ParamKind kind) {
  switch (kind) {
    case ParamKind::pointer: return "a device pointer";
    case ParamKind::i32: return "i32";
    case ParamKind::i64: return "i64";
    case ParamKind::fp32: return "fp32";
  }
  return "?";
}

const char* value_kind_text(const ArgValue& value) {
  switch (value.index()) {
    case 0: return "a device pointer";
    case 1: return "i32";
    case 2: return "i64";
    default: return "fp32";
  }
}

bool kind_matches(ParamKind kind, const ArgValue& value) {
  switch (kind) {
    case ParamKind::pointer: return std::holds_alternative<DeviceAddress>(value);
    case ParamKind::i32: return std::holds_alternative<int32_t>(value);
    case ParamKind::i64: return std::holds_alternative<int64_t>(value);
    case ParamKind::fp32: return std::holds_alternative<float>(value);
  }
  return false;
}

std::string param_list(const KernelEntry& entry) {
  std::string text;
  for (const KernelParam& p : entry.params) {
    if (!p.hidden) text += (text.empty() ? "" : ", ") + p.name + " (" + p.type + ")";
  }
  return text;
}

// Checks one argument against its param and writes its bytes into `slot`.
Status store_argument(const KernelEntry& entry, const KernelParam& param, const ArgValue& value, uint64_t* slot) {
  if (!kind_matches(param.kind, value)) {
    return Status::invalid(entry.describe() + ": argument '" + param.name + "' must be " + kind_text(param.kind) +
                           " (" + param.type + "), got " + value_kind_text(value));
  }
  int64_t integer = 0;
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, DeviceAddress>) {
          integer = static_cast<int64_t>(v.value);
          std::memcpy(slot, &v.value, sizeof v.value);
        } else {
          if constexpr (std::is_integral_v<T>) integer = v;
          std::memcpy(slot, &v, sizeof v);
        }
      },
      value);
  // A broken promise here would silently compute garbage: refuse instead.
  if (param.divisibility > 1 && param.kind != ParamKind::fp32 && integer % param.divisibility != 0) {
    return Status::invalid(entry.describe() + ": argument '" + param.name + "' = " + std::to_string(integer) +
                           " must be a multiple of " + std::to_string(param.divisibility) +
                           " (the variant was compiled assuming it); use a variant without the hint");
  }
  return Status::ok();
}

// Names an argument the kernel does not take, and why.
Status unexpected_argument(const KernelEntry& entry, const ArgMap& args) {
  for (const auto& [name, value] : args) {
    auto param = std::find_if(entry.params.begin(), entry.params.end(),
                              [&](const KernelParam& p) { return p.name == name; });
    if (param != entry.params.end() && !param->hidden) continue;
    if (param != entry.params.end()) {
      return Status::invalid(entry.describe() + ": argument '" + name +
                             "' is filled by the launcher from the ScratchSpace; do not pass it");
    }
    if (auto constant = entry.constexprs.find(name); constant != entry.constexprs.end()) {
      return Status::invalid(entry.describe() + ": argument '" + name + "' is compiled into this variant (" + name +
                             "=" + std::to_string(constant->second) + "), not passed at launch");
    }
    return Status::invalid(entry.describe() + ": argument '" + name + "' is not a parameter of " + entry.kernel +
                           "; it takes " + param_list(entry));
  }
  return Status::internal(entry.describe() + ": argument count mismatch with no unexpected name");
}

Status carve_scratch(const KernelEntry& entry, Dim3 grid, ScratchSpace scratch, DevicePtr* global,
                     DevicePtr* profile) {
  *global = 0;
  *profile = 0;
  const size_t needed = scratch_bytes(entry, grid);
  if (needed == 0) return Status::ok();
  if (scratch.base == 0 || scratch.bytes < needed) {
    return Status::invalid(entry.describe() + ": needs " + std::to_string(needed) + " bytes of scratch for grid " +
                           dim3_text(grid) + " (" + std::to_string(entry.global_scratch_size) + " global + " +
                           std::to_string(entry.profile_scratch_size) + " profile bytes per program); the " +
                           "ScratchSpace gives " + std::to_string(scratch.bytes));
  }
  const uint64_t programs = program_count(grid);
  uint64_t cursor = scratch.base;
  if (entry.global_scratch_size > 0) {
    *global = cursor = align_up(cursor, entry.global_scratch_align);
    cursor += programs * entry.global_scratch_size;
  }
  if (entry.profile_scratch_size > 0) {
    *profile = align_up(cursor, entry.profile_scratch_align);
  }
  return Status::ok();
}

}  // namespace

size_t scratch_bytes(const KernelEntry& entry, Dim3 grid) {
  const uint64_t programs = program_count(grid);
  uint64_t total = 0;
  for (auto [size, align] : {std::pair{entry.global_scratch_size, entry.global_scratch_align},
                             std::pair{entry.profile_scratch_size, entry.profile_scratch_align}}) {
    if (size == 0) continue;
    // align - 1 of slack: the ScratchSpace's base may sit anywhere.
    uint64_t region = 0;
    if (!checked_mul_add(programs, size, align - 1, &region) || __builtin_add_overflow(total, region, &total)) {
      return std::numeric_limits<size_t>::max();
    }
  }
  return static_cast<size_t>(std::min<uint64_t>(total, std::numeric_limits<size_t>::max()));
}

std::string LaunchConfig::describe() const {
  return entry->kernel + " variant=" + entry->variant + " target=" + entry->target + " grid=" + dim3_text(grid) +
         " block=" + dim3_text(block) + " shared=" + std::to_string(shared_bytes);
}

Status make_launch_config(const KernelEntry& entry, Dim3 grid, LaunchConfig* config) {
  if (grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.x > kMaxGridX || grid.y > kMaxGridYZ || grid.z > kMaxGridYZ) {
    return Status::invalid(entry.describe() + ": grid " + dim3_text(grid) +
                           " is out of range (each dimension >= 1; x < 2^31, y and z <= 65535)");
  }
  config->entry = &entry;
  config->grid = grid;
  config->block = Dim3{static_cast<uint32_t>(entry.num_warps * entry.warp_size), 1, 1};
  config->shared_bytes = entry.shared;
  return Status::ok();
}

Status resolve_target(const Bundle& bundle, const Device& device, std::string* target) {
  const auto& targets = bundle.targets();
  auto compiled = [&](const std::string& t) { return std::find(targets.begin(), targets.end(), t) != targets.end(); };
  const std::string own = device.target();
  if (compiled(own)) {
    *target = own;
    return Status::ok();
  }
  int arch = 0;
  const std::string& digits = device.arch();
  if (device.api() == Api::cuda &&
      std::from_chars(digits.data(), digits.data() + digits.size(), arch).ec == std::errc()) {
    // A cubin runs on later minor revisions of its major architecture (sm_80 on
    // sm_86, sm_89). Triton builds 9.0 and later as "a" targets (sm_90a), which
    // run on their exact architecture only.
    for (int older = arch - 1; older >= arch / 10 * 10; --older) {
      const std::string candidate = "cuda:" + std::to_string(older);
      if (older < 90 && compiled(candidate)) {
        *target = candidate;
        return Status::ok();
      }
    }
  }
  return Status::unsupported("no compiled GPU kernels for " + device.name() + ": its architecture is " + own +
                             "; this build has kernels for " + bundle.targets_text());
}

Status select_variant(const Bundle& bundle, const VariantQuery& query, const KernelEntry** chosen) {
  const std::string kernel = "kernel '" + query.kernel + "'";
  if (!bundle.built_with_kernels()) {
    return Status::unsupported(kernel + ": this build has no GPU kernels (configured with TMOE_BUILD_KERNELS=OFF); "
                               "rebuild with the kernel bundle to use the GPU backend");
  }
  std::set<std::string> kernel_targets;
  for (const KernelEntry& e : bundle.kernels()) {
    if (e.kernel == query.kernel) kernel_targets.insert(e.target);
  }
  if (kernel_targets.empty()) return Status::unsupported(kernel + " is not in the kernel bundle");
  if (kernel_targets.count(query.target) == 0) {
    std::string list;
    for (const std::string& t : kernel_targets) list += (list.empty() ? "" : ", ") + t;
    return Status::unsupported(kernel + " has no variant compiled for " + query.target + "; it is compiled for " +
                               list);
  }
  std::vector<const KernelEntry*> candidates = bundle.find(query.kernel, query.target);
  std::set<std::string> dtypes;
  for (const KernelEntry* e : candidates) dtypes.insert(e->dtype);
  std::erase_if(candidates, [&](const KernelEntry* e) { return e->dtype != query.dtype; });
  if (candidates.empty()) {
    std::string list;
    for (const std::string& d : dtypes) list += (list.empty() ? "" : ", ") + d;
    return Status::unsupported(kernel + " for " + query.target + " has no " + query.dtype + " variant (compiled: " +
                               list + ")");
  }
  std::string considered;
  for (const KernelEntry* e : candidates) considered += (considered.empty() ? "" : ", ") + e->variant;
  if (query.accept) std::erase_if(candidates, [&](const KernelEntry* e) { return !query.accept(*e); });
  if (candidates.empty()) {
    return Status::unsupported("none of the " + query.dtype + " variants of " + kernel + " for " + query.target +
                               " (" + considered + ") meets " +
                               (query.requirement.empty() ? std::string("the requirement") : query.requirement));
  }
  const KernelEntry* best = candidates.front();
  if (query.preference) {
    double best_score = query.preference(*best);
    for (const KernelEntry* e : candidates) {
      const double score = query.preference(*e);
      if (score > best_score) {
        best = e;
        best_score = score;
      }
    }
  }
  *chosen = best;
  return Status::ok();
}

Launcher::Launcher(std::shared_ptr<const Device> device, const Bundle& bundle) : modules_(std::move(device), bundle) {}

Status Launcher::launch(const KernelEntry& entry, Dim3 grid, const ArgMap& args, StreamHandle stream,
                        ScratchSpace scratch, bool dependent_launch) {
  LaunchConfig config;
  TMOE_RETURN_IF_ERROR(make_launch_config(entry, grid, &config));
  DevicePtr global_scratch = 0;
  DevicePtr profile_scratch = 0;
  TMOE_RETURN_IF_ERROR(carve_scratch(entry, grid, scratch, &global_scratch, &profile_scratch));

  // One 8-byte slot per param, in the manifest's order; the driver reads each
  // param's own size from the start of its slot.
  const size_t count = entry.params.size();
  std::vector<uint64_t> slots(count, 0);
  std::vector<void*> params(count);
  size_t used = 0;
  for (size_t i = 0; i < count; ++i) {
    const KernelParam& param = entry.params[i];
    params[i] = &slots[i];
    if (param.hidden) {
      slots[i] = param.name == "global_scratch" ? global_scratch : profile_scratch;
      continue;
    }
    auto found = args.find(param.name);
    if (found == args.end()) {
      return Status::invalid(entry.describe() + ": missing argument '" + param.name + "' (" + param.type + ")");
    }
    ++used;
    TMOE_RETURN_IF_ERROR(store_argument(entry, param, found->second, &slots[i]));
  }
  if (used != args.size()) return unexpected_argument(entry, args);

  const Module* module = nullptr;
  TMOE_RETURN_IF_ERROR(modules_.get(entry, &module));
  if (log_enabled()) std::fprintf(stderr, "tmoe: launch %s\n", config.describe().c_str());
  ScopedCurrent current;
  TMOE_RETURN_IF_ERROR(device().make_current(&current));
  // Only a variant compiled with PDL waits for the kernel before it itself
  // (kernels/dependent_launch.py); launched without the attribute its wait is a no-op.
  const bool programmatic_dependent = dependent_launch && entry.constexpr_or("PDL", 0) != 0;
  Status launched = device().driver().launch(module->function(), config.grid, config.block, config.shared_bytes,
                                             stream, params.data(), programmatic_dependent);
  if (!launched.is_ok()) return Status(launched.code(), launched.message() + " [" + config.describe() + "]");
  return Status::ok();
}

}  // namespace tmoe::gpu
