// The GPU backend: the MoE layer as a fixed sequence of Triton kernels from the
// embedded bundle (docs/kernels.md is the contract), launched on the caller's
// stream with no host synchronisation. Grids depend on shapes only, never on
// routing, so a forward can be captured in a CUDA graph.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "core/align.hpp"
#include "core/backend.hpp"
#include "gpu/bundle.hpp"
#include "gpu/device.hpp"
#include "gpu/launcher.hpp"

namespace tmoe {

namespace {

using gpu::ArgMap;
using gpu::device_address;
using gpu::Dim3;
using gpu::KernelEntry;

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

const char* dtype_key(tmoe_dtype dtype) {
  switch (dtype) {
    case TMOE_DTYPE_BF16: return "bf16";
    case TMOE_DTYPE_F16: return "f16";
    default: return "f32";
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The GEMM row block for `rows` rows per expert: small blocks waste no padding
// at decode, large ones reuse each weight tile across more rows at prefill.
// Tuned tables replace this first cut (issue: performance).
int64_t gemm_block_m(int64_t rows, bool hinted) {
  if (!hinted) return 32;
  if (rows <= 16) return 16;
  if (rows <= 128) return 64;
  return 128;
}

// Byte offsets of every buffer inside one workspace, each 256-byte aligned (which
// keeps the div16 variants' alignment promise).
struct WorkspaceLayout {
  size_t topk_ids = 0, topk_weights = 0, chunk_counts = 0, expert_counts = 0, expert_offsets = 0;
  size_t sorted_slots = 0, block_expert = 0, h = 0, h_shared = 0, y = 0;
  size_t total = 0;

  size_t add(size_t bytes) {
    const size_t at = total;
    total += (bytes + 255) / 256 * 256;
    return at;
  }
};

// Everything one forward launches, chosen before the first launch.
struct Plan {
  int64_t S = 0;          // slots, T*k
  int64_t R = 0;          // rows of y per token: k, plus one for the shared expert
  int64_t block_m = 0;    // the routed GEMMs' row block, and the alignment's
  int64_t capacity = 0;   // padded slots for the worst routing
  int64_t chunks = 0;     // align programs
  int64_t shared_block_m = 0;
  bool direct = false;    // R == 1: down writes out, no combine
  const KernelEntry* route = nullptr;
  const KernelEntry* align_count = nullptr;
  const KernelEntry* align_scatter = nullptr;
  const KernelEntry* gate_up = nullptr;
  const KernelEntry* down = nullptr;
  const KernelEntry* shared_gate_up = nullptr;
  const KernelEntry* shared_down = nullptr;
  const KernelEntry* combine = nullptr;
  WorkspaceLayout ws;
};

class GpuBackend final : public Backend {
 public:
  GpuBackend(std::shared_ptr<gpu::Device> device, const gpu::Bundle& bundle, std::string target)
      : device_(std::move(device)), bundle_(bundle), target_(std::move(target)), launcher_(device_, bundle) {}

  const char* name() const override { return "gpu"; }
  std::string device_name() const override { return device_->name() + " (" + target_ + ")"; }

  Status supports(const MoeProblem& p) const override {
    Plan plan;
    return make_plan(p, &plan);
  }

  size_t workspace_bytes(const MoeProblem& p) const override {
    Plan plan;
    return make_plan(p, &plan).is_ok() ? plan.ws.total : 0;
  }

  Status forward(const MoeProblem& p, const ExecContext& exec) override {
    Plan plan;
    TMOE_RETURN_IF_ERROR(make_plan(p, &plan));
    TMOE_RETURN_IF_ERROR(device_->make_current());
    uint8_t* ws = nullptr;
    if (exec.workspace != nullptr) {
      if (exec.workspace_bytes < plan.ws.total) {
        return Status::invalid("workspace_bytes: expected at least " + std::to_string(plan.ws.total) +
                               " bytes (tmoe_moe_workspace_size), got " + std::to_string(exec.workspace_bytes));
      }
      if (reinterpret_cast<uintptr_t>(exec.workspace) % 256 != 0) {
        return Status::invalid("workspace: expected a 256-byte aligned device address");
      }
      ws = static_cast<uint8_t*>(exec.workspace);
    } else {
      // The internal workspace grows on demand; that allocation is the one
      // host-synchronous step, so warm up (or pass a workspace) before capturing.
      if (workspace_.bytes() < plan.ws.total) {
        workspace_ = gpu::DeviceBuffer();
        TMOE_RETURN_IF_ERROR(gpu::DeviceBuffer::allocate(device_, plan.ws.total, &workspace_));
      }
      ws = reinterpret_cast<uint8_t*>(static_cast<uintptr_t>(workspace_.address()));
    }
    // Load every module first: a missing or broken binary fails before out is touched.
    for (const KernelEntry* e : {plan.route, plan.align_count, plan.align_scatter, plan.gate_up, plan.down,
                                 plan.shared_gate_up, plan.shared_down, plan.combine}) {
      if (e == nullptr) continue;
      const gpu::Module* module = nullptr;
      TMOE_RETURN_IF_ERROR(launcher_.modules().get(*e, &module));
    }
    if (!p.routed_from_logits() && !exec.trust_routing_values) {
      TMOE_RETURN_IF_ERROR(check_given_routing(p, exec.stream));
    }
    return enqueue(p, plan, ws, exec.stream);
  }

 private:
  Status select(const std::string& kernel, const std::string& variant, const KernelEntry** entry) const {
    auto found = bundle_.find(kernel, target_, [&](const KernelEntry& e) { return e.variant == variant; });
    if (found.empty()) {
      return Status::unsupported("the kernel bundle has no " + kernel + " variant " + variant + " for " + target_);
    }
    *entry = found.front();
    return Status::ok();
  }

  static std::string gemm_variant(const char* dtype, const char* mode, int64_t block_m, bool hinted) {
    return std::string(dtype) + "_" + mode + "_m" + std::to_string(block_m) + (hinted ? "_div16" : "_any");
  }

  Status make_plan(const MoeProblem& p, Plan* plan) const {
    if (!bundle_.built_with_kernels()) {
      return Status::unsupported("this build of tritonmoe has no GPU kernels (built with TMOE_BUILD_KERNELS=OFF)");
    }
    if (p.dtype != TMOE_DTYPE_BF16 && p.dtype != TMOE_DTYPE_F16) {
      return Status::unsupported(std::string("x: the GPU backend runs bf16 and f16 activations and weights, got ") +
                                 tmoe_dtype_name(p.dtype) + " (f32 runs on the CPU backend)");
    }
    if (p.E > 1024) return Status::unsupported("w13: the GPU kernels serve E <= 1024 experts, got " + std::to_string(p.E));
    const int64_t i32_max = std::numeric_limits<int32_t>::max();
    const char* act = dtype_key(p.dtype);
    Plan& q = *plan;
    q.S = p.T * p.k;
    q.R = p.k + (p.has_shared_expert() ? 1 : 0);
    q.direct = q.R == 1;
    const bool hinted = p.H % 16 == 0 && p.I % 16 == 0 && aligned16(p.x) && aligned16(p.w13) && aligned16(p.w2) &&
                        aligned16(p.out) && (p.routed_from_logits() || aligned16(p.topk_weights));
    const int64_t rows_per_expert = q.S / std::max<int64_t>(1, std::min(p.E, q.S));
    q.block_m = gemm_block_m(rows_per_expert, hinted);
    q.capacity = max_padded_slots(q.S, p.E, q.block_m);
    if (q.capacity > i32_max || p.T * q.R > i32_max || p.H > i32_max || p.I > i32_max) {
      return Status::unsupported("x: T=" + std::to_string(p.T) + " with k=" + std::to_string(p.k) +
                                 " exceeds the GPU kernels' 32-bit slot indices");
    }
    const int64_t chunk = q.S <= 16384 ? 256 : 2048;
    q.chunks = cdiv(q.S, chunk);
    const int64_t e_bucket = p.E <= 64 ? 64 : p.E <= 256 ? 256 : 1024;
    const std::string bucket = "_e" + std::to_string(e_bucket);

    if (p.routed_from_logits()) TMOE_RETURN_IF_ERROR(select("route", std::string(dtype_key(p.logits_dtype)) + bucket, &q.route));
    const std::string align_variant = "c" + std::to_string(chunk) + bucket;
    TMOE_RETURN_IF_ERROR(select("align_count", align_variant, &q.align_count));
    TMOE_RETURN_IF_ERROR(select("align_scatter", align_variant, &q.align_scatter));
    TMOE_RETURN_IF_ERROR(select("gate_up_swiglu", gemm_variant(act, "routed", q.block_m, hinted), &q.gate_up));
    TMOE_RETURN_IF_ERROR(select("down", gemm_variant(act, q.direct ? "routed_direct" : "routed", q.block_m, hinted), &q.down));
    if (p.has_shared_expert()) {
      const bool shared_hinted = p.H % 16 == 0 && p.shared_I % 16 == 0 && aligned16(p.x) &&
                                 aligned16(p.shared_w13) && aligned16(p.shared_w2);
      q.shared_block_m = gemm_block_m(p.T, shared_hinted);
      TMOE_RETURN_IF_ERROR(select("gate_up_swiglu", gemm_variant(act, "dense", q.shared_block_m, shared_hinted), &q.shared_gate_up));
      TMOE_RETURN_IF_ERROR(select("down", gemm_variant(act, "dense", q.shared_block_m, shared_hinted), &q.shared_down));
    }
    if (!q.direct) {
      const bool combine_hinted = p.H % 16 == 0 && aligned16(p.out);
      TMOE_RETURN_IF_ERROR(select("combine", std::string(act) + (combine_hinted ? "_div16" : "_any"), &q.combine));
    }

    const size_t esize = dtype_size(p.dtype);
    WorkspaceLayout& w = q.ws;
    if (p.routed_from_logits()) {
      w.topk_ids = w.add(q.S * 4);
      w.topk_weights = w.add(q.S * 4);
    }
    w.chunk_counts = w.add(q.chunks * p.E * 4);
    w.expert_counts = w.add(p.E * 4);
    w.expert_offsets = w.add((p.E + 1) * 4);
    w.sorted_slots = w.add(q.capacity * 4);
    w.block_expert = w.add(q.capacity / q.block_m * 4);
    w.h = w.add(static_cast<size_t>(q.capacity) * p.I * esize);
    if (p.has_shared_expert()) w.h_shared = w.add(static_cast<size_t>(p.T) * p.shared_I * esize);
    if (!q.direct) w.y = w.add(static_cast<size_t>(p.T) * q.R * p.H * 4);
    return Status::ok();
  }

  // The caller's ids and weights, read once the work queued before this call on
  // its stream has produced them. Invalid ids would index outside w13 and w2.
  Status check_given_routing(const MoeProblem& p, void* stream) const {
    const size_t slots = static_cast<size_t>(p.T * p.k);
    std::vector<int32_t> ids(slots);
    std::vector<float> weights(slots);
    gpu::Driver& driver = device_->driver();
    TMOE_RETURN_IF_ERROR(driver.copy_to_host_async(ids.data(), device_address(p.topk_ids).value, slots * 4, stream));
    TMOE_RETURN_IF_ERROR(driver.copy_to_host_async(weights.data(), device_address(p.topk_weights).value, slots * 4, stream));
    TMOE_RETURN_IF_ERROR(driver.synchronize_stream(stream));
    MoeProblem host = p;
    host.topk_ids = ids.data();
    host.topk_weights = weights.data();
    return validate_routing_values(host);
  }

  Status launch(const KernelEntry* e, int64_t programs, const ArgMap& args, void* stream) {
    return launcher_.launch(*e, Dim3{static_cast<uint32_t>(programs), 1, 1}, args, stream);
  }

  Status enqueue(const MoeProblem& p, const Plan& q, uint8_t* ws, void* stream) {
    auto at = [&](size_t offset) { return device_address(ws + offset); };
    const auto i32 = [](int64_t v) { return static_cast<int32_t>(v); };
    const gpu::DeviceAddress ids = p.routed_from_logits() ? at(q.ws.topk_ids) : device_address(p.topk_ids);
    const gpu::DeviceAddress weights = p.routed_from_logits() ? at(q.ws.topk_weights) : device_address(p.topk_weights);
    const gpu::DeviceAddress null{0};

    if (q.route) {
      const RoutingConfig& r = p.routing;
      TMOE_RETURN_IF_ERROR(launch(q.route, p.T,
                                  {{"logits", device_address(p.logits)},
                                   {"correction_bias", device_address(r.correction_bias)},
                                   {"topk_ids", ids},
                                   {"topk_weights", weights},
                                   {"E", i32(p.E)},
                                   {"top_k", i32(p.k)},
                                   {"mode", i32(r.mode)},
                                   {"renormalize", i32(r.renormalize)},
                                   {"n_group", i32(r.n_group)},
                                   {"topk_group", i32(r.topk_group)},
                                   {"routed_scaling_factor", r.routed_scaling_factor},
                                   {"has_correction_bias", i32(r.correction_bias != nullptr)}},
                                  stream));
    }
    TMOE_RETURN_IF_ERROR(launch(q.align_count, q.chunks,
                                {{"topk_ids", ids},
                                 {"chunk_counts", at(q.ws.chunk_counts)},
                                 {"sorted_slots", at(q.ws.sorted_slots)},
                                 {"num_slots", i32(q.S)},
                                 {"E", i32(p.E)},
                                 {"capacity", i32(q.capacity)}},
                                stream));
    TMOE_RETURN_IF_ERROR(launch(q.align_scatter, q.chunks,
                                {{"topk_ids", ids},
                                 {"chunk_counts", at(q.ws.chunk_counts)},
                                 {"expert_counts", at(q.ws.expert_counts)},
                                 {"expert_offsets", at(q.ws.expert_offsets)},
                                 {"sorted_slots", at(q.ws.sorted_slots)},
                                 {"block_expert", at(q.ws.block_expert)},
                                 {"num_slots", i32(q.S)},
                                 {"E", i32(p.E)},
                                 {"block_m", i32(q.block_m)},
                                 {"capacity", i32(q.capacity)}},
                                stream));
    const int64_t m_blocks = q.capacity / q.block_m;
    TMOE_RETURN_IF_ERROR(launch(q.gate_up, m_blocks * cdiv(p.I, q.gate_up->constexpr_or("BLOCK_N", 0)),
                                {{"x", device_address(p.x)},
                                 {"w13", device_address(p.w13)},
                                 {"h", at(q.ws.h)},
                                 {"sorted_slots", at(q.ws.sorted_slots)},
                                 {"block_expert", at(q.ws.block_expert)},
                                 {"num_slots", i32(q.S)},
                                 {"top_k", i32(p.k)},
                                 {"H", i32(p.H)},
                                 {"I", i32(p.I)}},
                                stream));
    const gpu::DeviceAddress y = q.direct ? device_address(p.out) : at(q.ws.y);
    TMOE_RETURN_IF_ERROR(launch(q.down, m_blocks * cdiv(p.H, q.down->constexpr_or("BLOCK_N", 0)),
                                {{"h", at(q.ws.h)},
                                 {"w2", device_address(p.w2)},
                                 {"y", y},
                                 {"sorted_slots", at(q.ws.sorted_slots)},
                                 {"block_expert", at(q.ws.block_expert)},
                                 {"topk_weights", weights},
                                 {"num_slots", i32(q.S)},
                                 {"top_k", i32(p.k)},
                                 {"H", i32(p.H)},
                                 {"I", i32(p.I)},
                                 {"y_rows_per_token", i32(q.R)},
                                 {"y_first_row", 0}},
                                stream));
    if (p.has_shared_expert()) {
      const int64_t shared_blocks = cdiv(p.T, q.shared_block_m);
      TMOE_RETURN_IF_ERROR(launch(q.shared_gate_up, shared_blocks * cdiv(p.shared_I, q.shared_gate_up->constexpr_or("BLOCK_N", 0)),
                                  {{"x", device_address(p.x)},
                                   {"w13", device_address(p.shared_w13)},
                                   {"h", at(q.ws.h_shared)},
                                   {"sorted_slots", null},
                                   {"block_expert", null},
                                   {"num_slots", i32(p.T)},
                                   {"top_k", 1},
                                   {"H", i32(p.H)},
                                   {"I", i32(p.shared_I)}},
                                  stream));
      TMOE_RETURN_IF_ERROR(launch(q.shared_down, shared_blocks * cdiv(p.H, q.shared_down->constexpr_or("BLOCK_N", 0)),
                                  {{"h", at(q.ws.h_shared)},
                                   {"w2", device_address(p.shared_w2)},
                                   {"y", y},
                                   {"sorted_slots", null},
                                   {"block_expert", null},
                                   {"topk_weights", null},
                                   {"num_slots", i32(p.T)},
                                   {"top_k", 1},
                                   {"H", i32(p.H)},
                                   {"I", i32(p.shared_I)},
                                   {"y_rows_per_token", i32(q.R)},
                                   {"y_first_row", i32(p.k)}},
                                  stream));
    }
    if (q.combine) {
      TMOE_RETURN_IF_ERROR(launch(q.combine, p.T * cdiv(p.H, q.combine->constexpr_or("BLOCK_H", 0)),
                                  {{"y", y}, {"out", device_address(p.out)}, {"H", i32(p.H)}, {"rows_per_token", i32(q.R)}},
                                  stream));
    }
    return Status::ok();
  }

  std::shared_ptr<gpu::Device> device_;
  const gpu::Bundle& bundle_;
  std::string target_;
  gpu::Launcher launcher_;
  gpu::DeviceBuffer workspace_;
};

}  // namespace

Status make_gpu_backend(int device_index, std::unique_ptr<Backend>* backend) {
  const gpu::Bundle* bundle = nullptr;
  TMOE_RETURN_IF_ERROR(gpu::embedded_bundle(&bundle));
  std::shared_ptr<gpu::Device> device;
  TMOE_RETURN_IF_ERROR(gpu::Device::open(device_index, &device));
  std::string target;
  TMOE_RETURN_IF_ERROR(gpu::resolve_target(*bundle, *device, &target));
  *backend = std::make_unique<GpuBackend>(std::move(device), *bundle, std::move(target));
  return Status::ok();
}

}  // namespace tmoe
