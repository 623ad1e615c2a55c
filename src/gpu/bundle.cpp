// Parsing and validating the kernel manifest, and the bundle embedded in libtmoe.
#include "gpu/bundle.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>
#include <utility>

// Emitted by the assembly file cmake/gpu.cmake generates (.incbin of the build's
// bundle.bin and manifest.json; both empty in a build without kernels).
extern "C" {
extern const uint8_t tmoe_bundle_bin_begin[];
extern const uint8_t tmoe_bundle_bin_end[];
extern const char tmoe_manifest_json_begin[];
extern const char tmoe_manifest_json_end[];
}

namespace tmoe::gpu {

using nlohmann::json;

namespace {
// How messages name a compiled variant, and the key of Bundle's index.
std::string identity(std::string_view kernel, std::string_view variant, std::string_view target) {
  std::string text;
  text.append(kernel).append("/").append(variant).append(" for ").append(target);
  return text;
}
}  // namespace

std::string KernelEntry::describe() const { return identity(kernel, variant, target); }

int64_t KernelEntry::constexpr_or(std::string_view name, int64_t fallback) const {
  auto found = constexprs.find(std::string(name));
  return found == constexprs.end() ? fallback : found->second;
}

namespace {

constexpr int kManifestFormat = 1;
constexpr int kMaxThreadsPerBlock = 1024;

// Reads typed fields of one JSON object, keeping the first problem met so a
// record's checks read straight through and report once.
class FieldReader {
 public:
  FieldReader(const json& object, std::string where) : object_(object), where_(std::move(where)) {}

  std::string text(const char* key) {
    const json* value = field(key, json::value_t::string, "a string");
    return value ? value->get<std::string>() : std::string();
  }

  template <typename Int>
  Int integer(const char* key, Int min_value) {
    const json* value = find(key);
    if (value == nullptr) return Int{};
    if (!value->is_number_integer()) return fail<Int>(key, "an integer");
    // Read as the widest type of the integer's sign, then range-check.
    if (value->is_number_unsigned()) {
      uint64_t v = value->get<uint64_t>();
      if (v > static_cast<uint64_t>(std::numeric_limits<Int>::max())) return fail<Int>(key, "a smaller integer");
      if (static_cast<Int>(v) < min_value) return fail<Int>(key, "at least " + std::to_string(min_value));
      return static_cast<Int>(v);
    }
    int64_t v = value->get<int64_t>();
    if (v < static_cast<int64_t>(min_value)) return fail<Int>(key, "at least " + std::to_string(min_value));
    if (static_cast<uint64_t>(v) > static_cast<uint64_t>(std::numeric_limits<Int>::max())) {
      return fail<Int>(key, "a smaller integer");
    }
    return static_cast<Int>(v);
  }

  const json* array(const char* key) { return field(key, json::value_t::array, "an array"); }
  const json* object(const char* key) { return field(key, json::value_t::object, "an object"); }

  void problem(std::string message) {
    if (status_.is_ok()) status_ = Status::internal("kernel manifest: " + where_ + ": " + std::move(message));
  }
  const Status& status() const { return status_; }

 private:
  const json* find(const char* key) {
    auto it = object_.find(key);
    if (it == object_.end()) {
      problem(std::string("missing field \"") + key + "\"");
      return nullptr;
    }
    return &*it;
  }

  const json* field(const char* key, json::value_t type, const char* expected) {
    const json* value = find(key);
    if (value == nullptr) return nullptr;
    if (value->type() != type) {
      problem(std::string("field \"") + key + "\" must be " + expected);
      return nullptr;
    }
    return value;
  }

  template <typename Int>
  Int fail(const char* key, const std::string& expected) {
    problem(std::string("field \"") + key + "\" must be " + expected);
    return Int{};
  }

  const json& object_;
  std::string where_;
  Status status_;
};

bool parse_param_kind(const std::string& type, ParamKind* kind) {
  if (type.size() > 1 && type[0] == '*') {
    *kind = ParamKind::pointer;
  } else if (type == "i32") {
    *kind = ParamKind::i32;
  } else if (type == "i64") {
    *kind = ParamKind::i64;
  } else if (type == "fp32") {
    *kind = ParamKind::fp32;
  } else {
    return false;
  }
  return true;
}

bool power_of_two(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

Status read_params(const json& list, const std::string& where, KernelEntry* entry) {
  auto problem = [&](const std::string& message) {
    return Status::internal("kernel manifest: " + where + ": " + message);
  };
  std::set<std::string> names;
  bool hidden_seen = false;
  for (size_t i = 0; i < list.size(); ++i) {
    const json& item = list[i];
    if (!item.is_object()) return problem("params[" + std::to_string(i) + "] must be an object");
    FieldReader reader(item, where + ", params[" + std::to_string(i) + "]");
    KernelParam param;
    param.name = reader.text("name");
    param.type = reader.text("type");
    TMOE_RETURN_IF_ERROR(reader.status());
    if (auto hidden = item.find("hidden"); hidden != item.end()) {
      if (!hidden->is_boolean()) return problem("param \"" + param.name + "\": \"hidden\" must be a boolean");
      param.hidden = hidden->get<bool>();
    }
    if (auto divisibility = item.find("divisibility"); divisibility != item.end()) {
      param.divisibility = reader.integer<int>("divisibility", 1);
      TMOE_RETURN_IF_ERROR(reader.status());
    }
    if (param.name.empty() || !names.insert(param.name).second) {
      return problem("param names must be unique and non-empty; \"" + param.name + "\" is not");
    }
    if (!parse_param_kind(param.type, &param.kind)) {
      return problem("param \"" + param.name + "\" has type \"" + param.type +
                     "\"; the launcher passes pointers (\"*dtype\"), i32, i64 and fp32");
    }
    if (param.hidden) {
      if (param.name != "global_scratch" && param.name != "profile_scratch") {
        return problem("hidden param \"" + param.name + "\" is unknown to the launcher (Triton " +
                       std::string(kPinnedTritonVersion) + " appends global_scratch and profile_scratch)");
      }
      if (param.kind != ParamKind::pointer) return problem("hidden param \"" + param.name + "\" must be a pointer");
      hidden_seen = true;
    } else if (hidden_seen) {
      return problem("visible param \"" + param.name + "\" follows a hidden one; Triton appends hidden params last");
    }
    entry->params.push_back(std::move(param));
  }
  return Status::ok();
}

Status read_entry(const json& item, size_t index, std::span<const uint8_t> binaries,
                  const std::set<std::string>& targets, KernelEntry* entry) {
  std::string where = "kernels[" + std::to_string(index) + "]";
  if (!item.is_object()) return Status::internal("kernel manifest: " + where + " must be an object");
  if (auto k = item.find("kernel"), v = item.find("variant"), t = item.find("target");
      k != item.end() && v != item.end() && t != item.end() && k->is_string() && v->is_string() && t->is_string()) {
    where += " (" + k->get<std::string>() + "/" + v->get<std::string>() + " for " + t->get<std::string>() + ")";
  }
  FieldReader r(item, where);
  KernelEntry& e = *entry;
  e.kernel = r.text("kernel");
  e.variant = r.text("variant");
  e.target = r.text("target");
  e.backend = r.text("backend");
  e.arch = r.text("arch");
  e.warp_size = r.integer<int>("warp_size", 1);
  e.entry = r.text("entry");
  e.format = r.text("format");
  e.offset = r.integer<uint64_t>("offset", 0);
  e.size = r.integer<uint64_t>("size", 1);
  e.num_warps = r.integer<int>("num_warps", 1);
  e.num_stages = r.integer<int>("num_stages", 0);
  e.shared = r.integer<uint32_t>("shared", 0);
  e.dtype = r.text("dtype");
  e.global_scratch_size = r.integer<uint64_t>("global_scratch_size", 0);
  e.global_scratch_align = r.integer<uint64_t>("global_scratch_align", 1);
  e.profile_scratch_size = r.integer<uint64_t>("profile_scratch_size", 0);
  e.profile_scratch_align = r.integer<uint64_t>("profile_scratch_align", 1);
  if (const json* constexprs = r.object("constexprs")) {
    for (const auto& [name, value] : constexprs->items()) {
      if (value.is_boolean()) {
        e.constexprs[name] = value.get<bool>() ? 1 : 0;
      } else if (value.is_number_integer()) {
        e.constexprs[name] = value.get<int64_t>();
      } else {
        r.problem("constexpr \"" + name + "\" must be an integer or a boolean");
      }
    }
  }
  const json* params = r.array("params");
  TMOE_RETURN_IF_ERROR(r.status());
  TMOE_RETURN_IF_ERROR(read_params(*params, where, &e));

  if (e.kernel.empty() || e.variant.empty() || e.entry.empty()) {
    r.problem("kernel, variant and entry must be non-empty");
  }
  if (e.backend != "cuda" && e.backend != "hip") {
    r.problem("backend must be \"cuda\" or \"hip\", got \"" + e.backend + "\"");
  }
  if (e.target != e.backend + ":" + e.arch) {
    r.problem("target must be backend:arch (\"" + e.backend + ":" + e.arch + "\")");
  }
  if (targets.count(e.target) == 0) r.problem("target \"" + e.target + "\" is not in the manifest's \"targets\"");
  const std::string expected_format = e.backend == "cuda" ? "cubin" : "hsaco";
  if (e.format != expected_format) r.problem("format must be \"" + expected_format + "\" for " + e.backend);
  if (e.backend == "cuda" ? e.warp_size != 32 : (e.warp_size != 32 && e.warp_size != 64)) {
    r.problem("warp_size " + std::to_string(e.warp_size) + " is impossible on " + e.backend);
  }
  if (static_cast<int64_t>(e.num_warps) * e.warp_size > kMaxThreadsPerBlock) {
    r.problem(std::to_string(e.num_warps) + " warps of " + std::to_string(e.warp_size) + " exceed " +
              std::to_string(kMaxThreadsPerBlock) + " threads per block");
  }
  if (e.offset > binaries.size() || e.size > binaries.size() - e.offset) {
    r.problem("binary [" + std::to_string(e.offset) + ", +" + std::to_string(e.size) + ") lies outside bundle.bin (" +
              std::to_string(binaries.size()) + " bytes)");
  } else if (e.size < 4 || std::memcmp(binaries.data() + e.offset, "\x7f" "ELF", 4) != 0) {
    // cubin and hsaco are both ELF: anything else means the offsets are off.
    r.problem("the binary at offset " + std::to_string(e.offset) + " is not an ELF image");
  }
  if (!power_of_two(e.global_scratch_align) || !power_of_two(e.profile_scratch_align)) {
    r.problem("scratch alignments must be powers of two");
  }
  return r.status();
}

}  // namespace

Status Bundle::parse(std::string_view manifest_json, std::span<const uint8_t> binaries, Bundle* bundle) {
  *bundle = Bundle();
  bundle->binaries_ = binaries;
  if (manifest_json.empty()) return Status::ok();

  json manifest = json::parse(manifest_json.begin(), manifest_json.end(), nullptr, /*allow_exceptions=*/false);
  if (manifest.is_discarded() || !manifest.is_object()) {
    return Status::internal("kernel manifest: not a JSON object");
  }
  FieldReader top(manifest, "top level");
  const int format = top.integer<int>("format", 0);
  bundle->triton_version_ = top.text("triton_version");
  const json* targets = top.array("targets");
  const json* kernels = top.array("kernels");
  TMOE_RETURN_IF_ERROR(top.status());
  if (format != kManifestFormat) {
    return Status::internal("kernel manifest: format " + std::to_string(format) + "; this library reads format " +
                            std::to_string(kManifestFormat));
  }
  if (bundle->triton_version_ != kPinnedTritonVersion) {
    return Status::internal("kernel manifest: built with Triton " + bundle->triton_version_ +
                            "; this launcher implements the calling convention of Triton " +
                            std::string(kPinnedTritonVersion));
  }
  std::set<std::string> target_set;
  for (const json& t : *targets) {
    if (!t.is_string()) return Status::internal("kernel manifest: \"targets\" must hold strings");
    bundle->targets_.push_back(t.get<std::string>());
    target_set.insert(bundle->targets_.back());
  }
  bundle->kernels_.reserve(kernels->size());
  for (size_t i = 0; i < kernels->size(); ++i) {
    KernelEntry entry;
    TMOE_RETURN_IF_ERROR(read_entry((*kernels)[i], i, binaries, target_set, &entry));
    if (!bundle->positions_.emplace(entry.describe(), bundle->kernels_.size()).second) {
      return Status::internal("kernel manifest: " + entry.describe() + " appears twice");
    }
    bundle->kernels_.push_back(std::move(entry));
  }
  bundle->built_with_kernels_ = true;
  return Status::ok();
}

std::string Bundle::targets_text() const {
  if (!built_with_kernels_) return "none (this build has no GPU kernels: configured with TMOE_BUILD_KERNELS=OFF)";
  if (targets_.empty()) return "none";
  std::string text;
  for (const std::string& t : targets_) text += (text.empty() ? "" : ", ") + t;
  return text;
}

std::span<const uint8_t> Bundle::image(const KernelEntry& entry) const {
  return binaries_.subspan(entry.offset, entry.size);
}

bool Bundle::owns(const KernelEntry& entry) const {
  return !kernels_.empty() && &entry >= kernels_.data() && &entry < kernels_.data() + kernels_.size();
}

const KernelEntry* Bundle::variant(std::string_view kernel, std::string_view variant, std::string_view target) const {
  auto it = positions_.find(identity(kernel, variant, target));
  return it == positions_.end() ? nullptr : &kernels_[it->second];
}

std::vector<const KernelEntry*> Bundle::find(std::string_view kernel, std::string_view target,
                                             const std::function<bool(const KernelEntry&)>& accept) const {
  std::vector<const KernelEntry*> found;
  for (const KernelEntry& e : kernels_) {
    if (e.kernel == kernel && e.target == target && (!accept || accept(e))) found.push_back(&e);
  }
  return found;
}

Status embedded_bundle(const Bundle** bundle) {
  struct Parsed {
    Status status;
    Bundle bundle;
  };
  static const Parsed parsed = [] {
    Parsed p;
    std::string_view manifest(tmoe_manifest_json_begin,
                              static_cast<size_t>(tmoe_manifest_json_end - tmoe_manifest_json_begin));
    std::span<const uint8_t> binaries(tmoe_bundle_bin_begin,
                                      static_cast<size_t>(tmoe_bundle_bin_end - tmoe_bundle_bin_begin));
    p.status = Bundle::parse(manifest, binaries, &p.bundle);
    return p;
  }();
  TMOE_RETURN_IF_ERROR(parsed.status);
  *bundle = &parsed.bundle;
  return Status::ok();
}

}  // namespace tmoe::gpu
