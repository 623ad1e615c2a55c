// The GPU backend: the MoE layer as a fixed sequence of Triton kernels from the
// embedded bundle (docs/kernels.md is the contract), launched on the caller's
// stream with no host synchronisation. Grids depend on shapes only, never on
// routing, so a forward can be captured in a CUDA graph.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "gpu/gpu_backend.hpp"

#include "core/align.hpp"
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
// Kernel i32 parameters; the plan has checked every value fits.
int32_t i32(int64_t v) { return static_cast<int32_t>(v); }

const char* dtype_key(tmoe_dtype dtype) {
  switch (dtype) {
    case TMOE_DTYPE_BF16: return "bf16";
    case TMOE_DTYPE_F16: return "f16";
    default: return "f32";
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

constexpr int kFallbackBlockM = 32;  // the unhinted ("any") GEMM variants' row block
constexpr int64_t kDecodeMaxTokens = 16;  // the decode path's candidates stop here

// The heuristic's routed GEMM row block for `rows` rows per expert (untuned
// shapes): small blocks waste no padding at decode, large ones reuse each weight
// tile across more rows at prefill. From the tunes' timings of the heuristic's pairs
// (performance-log.md #68-#71): at 16 rows m32 t0/t0 ran 2.2-27% ahead of
// m16 t3/t0 on all four presets (H100 and H200); at 64 rows m128 t11/t10 ran 12-25%
// ahead of m64 t2/t1 on all four (H200; the H100 tuned three of them to m128);
// below 64 rows m64 stays: at 32 rows both tables hold m64 for three presets, and
// m128 for deepseek-v3 (m64 1.2% behind on the H100, 12% on the H200; #75, #77).
int routed_block_m(int64_t rows) {
  if (rows < 16) return 16;
  if (rows < 32) return 32;
  if (rows < 64) return 64;
  return 128;
}

// The shared expert's row block for its T rows: the dense GEMMs are not tuned and
// compile BLOCK_M 16, 64 and 128 only (tools/aot/variants.py, DENSE_BLOCK_M).
int dense_block_m(int64_t T) {
  if (T <= 16) return 16;
  if (T <= 128) return 64;
  return 128;
}

std::string tile(int index) { return std::string("_t") + std::to_string(index); }

// "bf16_shared" / "bf16_routed": decode_down_combine's variants before their tile.
std::string decode_down_prefix(const MoeProblem& p) {
  return std::string(dtype_key(p.dtype)) + (p.has_shared_expert() ? "_shared" : "_routed");
}

// Byte offsets of every buffer inside one workspace, each 256-byte aligned (which
// keeps the div16 variants' alignment promise).
struct WorkspaceLayout {
  size_t topk_ids = 0, topk_weights = 0, chunk_counts = 0, expert_counts = 0, expert_offsets = 0;
  size_t sorted_slots = 0, slot_positions = 0, block_expert = 0, h = 0, h_shared = 0, y = 0;
  // Triton's per-program global scratch (the TMA variants' device-side tensor
  // descriptors): one region the plan's launches share, as they run in order.
  size_t scratch = 0, scratch_bytes = 0;
  size_t total = 0;

  size_t add(size_t bytes) {
    const size_t at = total;
    total += (bytes + 255) / 256 * 256;
    return at;
  }
};

// One launch: its variant and its program count (grids depend on shapes only).
struct Step {
  const KernelEntry* entry = nullptr;
  int64_t programs = 0;
  int64_t row_blocks = 0;  // as `cover` was given: a GEMM's num_m_blocks

  explicit operator bool() const { return entry != nullptr; }
  // Programs over `n` columns in blocks of the variant's `block` constexpr, for each of `rows` row blocks.
  void cover(int64_t rows, int64_t n, const char* block) {
    row_blocks = rows;
    programs = rows * cdiv(n, entry->constexpr_or(block, 0));
  }
  // A persistent variant (PERSISTENT programs per multiprocessor) walks the tiles
  // `cover` counted with at most that many programs.
  void cap_persistent(int multiprocessors) {
    const int64_t per_multiprocessor = entry->constexpr_or("PERSISTENT", 0);
    if (per_multiprocessor > 0) programs = std::min(programs, per_multiprocessor * multiprocessors);
  }
};

// Everything one forward launches, chosen before the first launch.
struct Plan {
  gpu::KernelChoice choice;
  int64_t S = 0;          // slots, T*k
  int64_t R = 0;          // rows of y per token: k, plus one for the shared expert
  int64_t capacity = 0;   // sorted path: padded slots for the worst routing
  int64_t chunks = 0;     // sorted path: align programs
  Step route, decode_gate_up, decode_shared_gate_up, decode_down;
  // align: align_scatter after align_count, or align_count_scatter alone (no align_count).
  Step align_count, align, gate_up, down, shared_gate_up, shared_down, combine;
  // down's tile writes y by padded position, unweighted (PADDED_Y): combine gathers
  // and weighs the rows, the shared expert's from row `capacity` on.
  bool padded_y = false;
  WorkspaceLayout ws;

  // Sorted path with one row of y per token in token order: down writes out, no combine.
  bool direct() const { return R == 1 && !padded_y; }

  std::vector<Step> launches() const {
    std::vector<Step> all;
    for (const Step& s : {route, align_count, align, gate_up, down, shared_gate_up, shared_down, combine,
                          decode_gate_up, decode_shared_gate_up, decode_down}) {
      if (s) all.push_back(s);
    }
    return all;
  }
};

// What a problem allows before any choice: the div16 promise of the hinted variants.
struct Hints {
  bool routed = false;  // x, w13, w2, out (and given weights) aligned, H and I multiples of 16
  bool shared = false;  // the same for the shared expert
  bool decode() const { return routed && shared; }
};

class GpuBackend final : public gpu::TunableBackend {
 public:
  GpuBackend(std::shared_ptr<gpu::Device> device, const gpu::Bundle& bundle, std::string target,
             std::shared_ptr<const gpu::TuningTable> table)
      : device_(std::move(device)), bundle_(bundle), target_(std::move(target)), table_(std::move(table)),
        expert_buckets_(expert_buckets(bundle_, target_)), launcher_(device_, bundle) {}

  const char* name() const override { return "gpu"; }
  std::string device_name() const override { return device_->name() + " (" + target_ + ")"; }

  Status supports(const MoeProblem& p) const override {
    Plan plan;
    return make_plan(p, nullptr, &plan);
  }

  size_t workspace_bytes(const MoeProblem& p) const override {
    Plan plan;
    return make_plan(p, nullptr, &plan).is_ok() ? plan.ws.total : 0;
  }

  Status describe_plan(const MoeProblem& p, PlanInfo* info) const override {
    Plan plan;
    TMOE_RETURN_IF_ERROR(make_plan(p, nullptr, &plan));
    info->launches = p.T == 0 ? 0 : static_cast<int>(plan.launches().size());
    info->description = plan.choice.describe() + (choice_is_tuned(p) ? " (tuned)" : " (heuristic)") + ":";
    for (const Step& s : plan.launches()) info->description += " " + s.entry->kernel + "/" + s.entry->variant;
    return Status::ok();
  }

  Status forward(const MoeProblem& p, const ExecContext& exec) override { return run(p, exec, nullptr); }

  std::vector<gpu::KernelChoice> candidates(const MoeProblem& p) const override {
    const Hints hints = hints_of(p);
    std::vector<gpu::KernelChoice> all;
    const std::string act = dtype_key(p.dtype);
    // Every pair of a gate_up tile and a down tile.
    auto add_pairs = [&](gpu::GemmPath path, int block_m, size_t gate_up_tiles, size_t down_tiles) {
      for (size_t g = 0; g < gate_up_tiles; ++g) {
        for (size_t d = 0; d < down_tiles; ++d) all.push_back({path, block_m, static_cast<int>(g), static_cast<int>(d)});
      }
    };
    // The decode path's down reads each token's experts for that token alone (and
    // gate_up shares an expert's reads among 16 slots at most): beyond a few tokens
    // it re-reads each expert many times (mixtral at T = 8192: seconds per layer).
    if (hints.decode() && p.T <= kDecodeMaxTokens && p.T * p.k <= 2 * p.E) {
      add_pairs(gpu::GemmPath::decode, 0, tiles("decode_gate_up_swiglu", act + "_routed", "").size(),
                tiles("decode_down_combine", decode_down_prefix(p), "").size());
    }
    if (!hints.routed) return {heuristic(p, hints)};
    for (int block_m : {16, 32, 64, 128}) {
      const std::string m = std::string("_m") + std::to_string(block_m);
      add_pairs(gpu::GemmPath::sorted, block_m, tiles("gate_up_swiglu", act + "_routed" + m, "_div16").size(),
                tiles("down", act + "_routed" + m, "_div16").size());
    }
    return all;
  }

  gpu::KernelChoice heuristic_choice(const MoeProblem& p) const override { return heuristic(p, hints_of(p)); }
  const std::string& device_model() const override { return device_->name(); }
  const std::string& target() const override { return target_; }
  // Every layer kernel carries PDL alike (tools/aot/variants.py), so route tells.
  bool offers_dependent_launch() const override {
    const std::vector<const KernelEntry*> routes = bundle_.find("route", target_);
    return std::any_of(routes.begin(), routes.end(), [](const KernelEntry* e) { return e->constexpr_or("PDL", 0) != 0; });
  }

  Status forward_with(const MoeProblem& p, const ExecContext& exec, const gpu::KernelChoice& choice) override {
    return run(p, exec, &choice);
  }

 private:
  Status run(const MoeProblem& p, const ExecContext& exec, const gpu::KernelChoice* forced) {
    Plan plan;
    TMOE_RETURN_IF_ERROR(make_plan(p, forced, &plan));
    gpu::ScopedCurrent current;
    TMOE_RETURN_IF_ERROR(device_->make_current(&current));
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
    for (const Step& s : plan.launches()) {
      const gpu::Module* module = nullptr;
      TMOE_RETURN_IF_ERROR(launcher_.modules().get(*s.entry, &module));
    }
    if (!p.routed_from_logits() && !exec.trust_routing_values) {
      TMOE_RETURN_IF_ERROR(check_given_routing(p, exec.stream));
    }
    return plan.choice.path == gpu::GemmPath::decode ? enqueue_decode(p, plan, ws, exec.stream)
                                                     : enqueue_sorted(p, plan, ws, exec.stream);
  }

  // The BLOCK_E values (tools/aot/variants.py EXPERT_BUCKETS) of the target's route variants, increasing.
  static std::vector<int64_t> expert_buckets(const gpu::Bundle& bundle, const std::string& target) {
    std::set<int64_t> buckets;
    for (const KernelEntry* e : bundle.find("route", target)) buckets.insert(e->constexpr_or("BLOCK_E", 0));
    return {buckets.begin(), buckets.end()};
  }

  Status select(const std::string& kernel, const std::string& variant, const KernelEntry** entry) const {
    *entry = bundle_.variant(kernel, variant, target_);
    if (*entry == nullptr) {
      return Status::unsupported("the kernel bundle has no " + kernel + " variant " + variant + " for " + target_);
    }
    return Status::ok();
  }

  // The variants named prefix + "_t<i>" + suffix for i = 0, 1, ... (the tile index is the position).
  std::vector<const KernelEntry*> tiles(const std::string& kernel, const std::string& prefix,
                                        const std::string& suffix) const {
    std::vector<const KernelEntry*> entries;
    for (int i = 0;; ++i) {
      const KernelEntry* e = nullptr;
      if (!select(kernel, prefix + tile(i) + suffix, &e).is_ok()) return entries;
      entries.push_back(e);
    }
  }

  static Hints hints_of(const MoeProblem& p) {
    Hints h;
    h.routed = p.H % 16 == 0 && p.I % 16 == 0 && aligned16(p.x) && aligned16(p.w13) && aligned16(p.w2) &&
               aligned16(p.out) && (p.routed_from_logits() || aligned16(p.topk_weights));
    h.shared = !p.has_shared_expert() || (p.H % 16 == 0 && p.shared_I % 16 == 0 && aligned16(p.x) &&
                                          aligned16(p.shared_w13) && aligned16(p.shared_w2));
    return h;
  }

  bool choice_is_tuned(const MoeProblem& p) const { return tuned_choice(p, hints_of(p)) != nullptr; }

  const gpu::KernelChoice* tuned_choice(const MoeProblem& p, const Hints& hints) const {
    if (table_ == nullptr || !hints.routed) return nullptr;
    const gpu::KernelChoice* c = table_->find({p.E, p.H, p.I, p.k}, p.T);
    // A decode choice needs the shared expert's hints too; without them the heuristic serves.
    return c != nullptr && (c->path == gpu::GemmPath::sorted || hints.decode()) ? c : nullptr;
  }

  gpu::KernelChoice choose(const MoeProblem& p, const Hints& hints) const {
    if (const gpu::KernelChoice* tuned = tuned_choice(p, hints)) return *tuned;
    return heuristic(p, hints);
  }

  // Untuned shapes: the decode path for one token (its experts are distinct, so
  // per-slot GEMVs read each weight once), else the sorted path. Its tiles on CUDA
  // are the most frequent winners of each BLOCK_M in the H100 sweeps
  // (configs/nvidia-h100-80gb-hbm3.json, 2026-11-27: m16 gate_up t3 16 of 17
  // buckets, down t0 8 and t3 9, where t3 won by under 1% on large I and lost 5%
  // on qwen3's I = 768 (performance-log.md #29), so t0; m128 gate_up t11, TMA four
  // stages deep, and down t7, persistent: against t7/t7, the sweep's pair before,
  // 0.4-10.5% faster in 6 of 7 layer cells that the rule sends to m128 and 3.3%
  // slower at mixtral-8x7b T = 8192, #59). m32 takes t0/t0 (vLLM's deepseek-v3
  // gate_up config and its down: the tuned m32 pair until #67's tiles, and within
  // 0.2% of qwen3-30b-a3b T = 256's newer t2/t0, #69). m64 takes t4/t1: t4 is t2 (7 of
  // 11 m64 buckets in 2026-11-26's sweep) one stage deeper on cuda:90, and against
  // t2/t1 ran 0.968-1.001 in the 13 buckets of four presets that timed both (#75);
  // elsewhere t4 is t2 itself. The m128
  // pair runs its descriptors as TMA only on cuda:90: cuda:80 keeps the sweep before
  // the TMA tiles (t3/t0, 7 of 13). cuda:90's m128 down: under 128 rows per expert
  // t10, the four-stage TMA down with half-height tail blocks (the H200 sweep, #71: at
  // 64 rows 0.5-12% ahead of t7 on all four presets, at 128 rows within 1%); from 128
  // rows t19, t10 whose blocks take their expert's last few rows (FOLD_TAIL: beside
  // t14 in the H200 sweeps at 128 rows, mixtral-8x7b T = 512 -8.4%, gpt-oss-120b
  // T = 4096 -4.9%, qwen3-30b-a3b T = 2048 +1.4%, #86); from 256
  // rows with I <= 4096 t11, warp-specialized, which overlaps a tile's epilogue with
  // the next tile's loads (in the layer against t7, qwen3-30b-a3b T = 4096/8192
  // -3.8/-5.7%, gpt-oss-120b and deepseek-v3 T = 8192 -1.8/-1.4%, #62); on
  // mixtral-8x7b's I = 14336 (a 224-step K loop) t7 (t11 +2.0/-2.0% at T = 4096/8192,
  // t10 behind t7 at 256-2048 rows, #59). cuda:90's m128 gate_up is t14, t11 with no
  // group across two experts: in the 13 H200 sweeps from 64 rows (four presets, T =
  // 2048-8192) 0.956-0.996 of t11 beside the same down (#79); the down tiles so grouped
  // beside t14 ranged 0.954-1.026, so down keeps its rule. AMD, never measured, keeps t0.
  gpu::KernelChoice heuristic(const MoeProblem& p, const Hints& hints) const {
    if (!hints.routed) return {gpu::GemmPath::sorted, kFallbackBlockM, 0, 0};
    if (hints.decode() && p.T == 1) {
      const std::string act = dtype_key(p.dtype);
      return {gpu::GemmPath::decode, 0, widest_decode_tile("decode_gate_up_swiglu", act + "_routed", p.k, p.I),
              widest_decode_tile("decode_down_combine", decode_down_prefix(p), 1, p.H)};
    }
    const int64_t S = p.T * p.k;
    const int64_t rows = S / std::max<int64_t>(1, std::min(p.E, S));
    const int block_m = routed_block_m(rows);
    if (device_->api() != gpu::Api::cuda) return {gpu::GemmPath::sorted, block_m, 0, 0};
    const bool tma = target_ == "cuda:90";
    const int gate_up_tile = block_m == 16 ? 3 : block_m == 32 ? 0 : block_m == 64 ? 4 : tma ? 14 : 3;
    const int hopper_down = rows < 128 ? 10 : rows < 256 ? 19 : p.I <= 4096 ? 11 : 7;
    const int down_tile = block_m == 64 ? 1 : block_m == 128 && tma ? hopper_down : 0;
    return {gpu::GemmPath::sorted, block_m, gate_up_tile, down_tile};
  }

  // The widest decode tile (BLOCK_N) that still gives every SM a program (rows *
  // N / BLOCK_N programs), else the narrowest; the lowest index among equals. A
  // GEMV is bound by how many SMs stream weights, and one program with four to eight
  // stages streams enough: asking two per SM took BLOCK_N 16 where 32 filled once,
  // 9-10% slower at qwen3-30b-a3b T = 1 and 2% at deepseek-v3 (H200, #71).
  int widest_decode_tile(const std::string& kernel, const std::string& prefix, int64_t rows, int64_t N) const {
    int chosen = 0;
    int64_t chosen_n = 0;
    bool chosen_fills = false;
    const std::vector<const KernelEntry*> entries = tiles(kernel, prefix, "");
    for (int i = 0; i < static_cast<int>(entries.size()); ++i) {
      const int64_t n = entries[i]->constexpr_or("BLOCK_N", 1);
      const bool fills = rows * cdiv(N, n) >= device_->multiprocessor_count();
      const bool better = chosen_n == 0 || (fills && (!chosen_fills || n > chosen_n)) ||
                          (!fills && !chosen_fills && n < chosen_n);
      if (better) {
        chosen = i;
        chosen_n = n;
        chosen_fills = fills;
      }
    }
    return chosen;
  }

  Status make_plan(const MoeProblem& p, const gpu::KernelChoice* forced, Plan* plan) const {
    if (!bundle_.built_with_kernels()) {
      return Status::unsupported("this build of tritonmoe has no GPU kernels (built with TMOE_BUILD_KERNELS=OFF)");
    }
    if (p.dtype != TMOE_DTYPE_BF16 && p.dtype != TMOE_DTYPE_F16) {
      return Status::unsupported(std::string("x: the GPU backend runs bf16 and f16 activations and weights, got ") +
                                 tmoe_dtype_name(p.dtype) + " (f32 runs on the CPU backend)");
    }
    // BLOCK_E of the route and align variants: the smallest that holds E, since their
    // reductions and histograms span all BLOCK_E lanes.
    const auto e_bucket_at = std::lower_bound(expert_buckets_.begin(), expert_buckets_.end(), p.E);
    if (e_bucket_at == expert_buckets_.end()) {
      return Status::unsupported("w13: the GPU kernels serve E <= " +
                                 std::to_string(expert_buckets_.empty() ? 0 : expert_buckets_.back()) +
                                 " experts, got " + std::to_string(p.E));
    }
    const int64_t e_bucket = *e_bucket_at;
    const Hints hints = hints_of(p);
    Plan& q = *plan;
    q.choice = forced ? *forced : choose(p, hints);
    q.S = p.T * p.k;
    q.R = p.k + (p.has_shared_expert() ? 1 : 0);
    if (p.routed_from_logits()) {
      // The "_k<TOP_K>" variant of the smallest power of two >= k where the bundle has
      // one (one bitonic top-k, performance-log.md #49), else the one for any k.
      const std::string route = std::string(dtype_key(p.logits_dtype)) + "_e" + std::to_string(e_bucket);
      int64_t top_k_bound = 1;
      while (top_k_bound < p.k) top_k_bound *= 2;
      q.route.entry = bundle_.variant("route", route + "_k" + std::to_string(top_k_bound), target_);
      if (q.route.entry == nullptr) TMOE_RETURN_IF_ERROR(select("route", route, &q.route.entry));
      q.route.programs = p.T;
    }
    if (q.choice.path == gpu::GemmPath::decode) {
      if (!hints.decode()) {
        return Status::unsupported("the decode path needs 16-byte aligned tensors and H, I (and the shared expert's I) "
                                   "multiples of 16");
      }
      TMOE_RETURN_IF_ERROR(plan_decode(p, &q));
    } else {
      if (q.choice.block_m != kFallbackBlockM && !hints.routed) {
        return Status::unsupported("sorted m" + std::to_string(q.choice.block_m) +
                                   " needs 16-byte aligned tensors and H, I multiples of 16");
      }
      TMOE_RETURN_IF_ERROR(plan_sorted(p, hints, e_bucket, &q));
    }
    for (const Step& s : q.launches()) {
      const size_t needed = gpu::scratch_bytes(*s.entry, Dim3{static_cast<uint32_t>(s.programs), 1, 1});
      q.ws.scratch_bytes = std::max(q.ws.scratch_bytes, needed);
    }
    if (q.ws.scratch_bytes > 0) q.ws.scratch = q.ws.add(q.ws.scratch_bytes);
    return Status::ok();
  }

  Status check_index_range(const MoeProblem& p, const Plan& q) const {
    const int64_t i32_max = std::numeric_limits<int32_t>::max();
    if (q.capacity > i32_max || p.T * q.R > i32_max || q.S > i32_max || p.H > i32_max || p.I > i32_max) {
      return Status::unsupported("x: T=" + std::to_string(p.T) + " with k=" + std::to_string(p.k) +
                                 " exceeds the GPU kernels' 32-bit slot indices");
    }
    return Status::ok();
  }

  // Buffers of the routing the kernels read (route's output when routing from logits).
  static void layout_routing(const MoeProblem& p, Plan* q) {
    if (p.routed_from_logits()) {
      q->ws.topk_ids = q->ws.add(q->S * 4);
      q->ws.topk_weights = q->ws.add(q->S * 4);
    }
  }

  Status plan_decode(const MoeProblem& p, Plan* plan) const {
    Plan& q = *plan;
    TMOE_RETURN_IF_ERROR(check_index_range(p, q));
    const std::string act = dtype_key(p.dtype);
    const std::string gate_up_tile = tile(q.choice.gate_up_tile);
    TMOE_RETURN_IF_ERROR(select("decode_gate_up_swiglu", act + "_routed" + gate_up_tile, &q.decode_gate_up.entry));
    q.decode_gate_up.cover(q.S, p.I, "BLOCK_N");
    if (p.has_shared_expert()) {
      TMOE_RETURN_IF_ERROR(
          select("decode_gate_up_swiglu", act + "_dense" + gate_up_tile, &q.decode_shared_gate_up.entry));
      q.decode_shared_gate_up.cover(p.T, p.shared_I, "BLOCK_N");
    }
    TMOE_RETURN_IF_ERROR(select("decode_down_combine",
                                decode_down_prefix(p) + tile(q.choice.down_tile),
                                &q.decode_down.entry));
    q.decode_down.cover(p.T, p.H, "BLOCK_N");
    const size_t esize = dtype_size(p.dtype);
    layout_routing(p, &q);
    q.ws.h = q.ws.add(static_cast<size_t>(q.S) * p.I * esize);
    if (p.has_shared_expert()) q.ws.h_shared = q.ws.add(static_cast<size_t>(p.T) * p.shared_I * esize);
    return Status::ok();
  }

  // One GEMM of the shared expert over N columns (not tuned: tile t0). BLOCK_M from T
  // (dense_block_m), except that m128 steps down to m64 where its grid would
  // leave over half the SMs idle: deepseek-v3's shared gate_up at T = 512 ran 64
  // programs of m128 on 132 SMs, 93 us for 59 MB of weights (ncu), while at T = 1024
  // m128's 128 programs beat m64's 512 (performance-log.md #27). Each dense GEMM
  // chooses alone: h_shared does not depend on BLOCK_M.
  Status plan_dense(const char* kernel, const MoeProblem& p, const Hints& hints, int64_t N, Step* step) const {
    const char* act = dtype_key(p.dtype);
    int block_m = hints.shared ? dense_block_m(p.T) : kFallbackBlockM;
    TMOE_RETURN_IF_ERROR(select(kernel, gemm_variant(act, "dense", block_m, hints.shared, 0), &step->entry));
    step->cover(cdiv(p.T, block_m), N, "BLOCK_N");
    if (block_m == 128 && 2 * step->programs < device_->multiprocessor_count()) {
      block_m = 64;
      TMOE_RETURN_IF_ERROR(select(kernel, gemm_variant(act, "dense", block_m, true, 0), &step->entry));
      step->cover(cdiv(p.T, block_m), N, "BLOCK_N");
    }
    return Status::ok();
  }

  Status plan_sorted(const MoeProblem& p, const Hints& hints, int64_t e_bucket, Plan* plan) const {
    Plan& q = *plan;
    const char* act = dtype_key(p.dtype);
    const int64_t block_m = q.choice.block_m;
    q.capacity = max_padded_slots(q.S, p.E, block_m);
    TMOE_RETURN_IF_ERROR(check_index_range(p, q));
    const int64_t chunk = q.S <= 16384 ? 256 : 2048;
    q.chunks = cdiv(q.S, chunk);
    const std::string align_variant = std::string("c") + std::to_string(chunk) + "_e" + std::to_string(e_bucket);
    // Up to two chunks, one launch where every program counts them all: on an H100
    // 0.6-1.2 us under the pair alone, ~0.5 us in the layer; not faster from four chunks,
    // slower from eight (performance-log.md #48).
    if (q.chunks <= 2) {
      TMOE_RETURN_IF_ERROR(select("align_count_scatter", align_variant, &q.align.entry));
    } else {
      TMOE_RETURN_IF_ERROR(select("align_count", align_variant, &q.align_count.entry));
      TMOE_RETURN_IF_ERROR(select("align_scatter", align_variant, &q.align.entry));
    }
    // A program per chunk, and more where one would loop over align_count's sentinel fill
    // (CHUNK positions a step; align_count_scatter puts it by blocks) or block_expert
    // (BLOCK_B entries a step): at S = 128, m16, one program filled 2048 positions, 10.3
    // us for both launches against 5.6 with eight (#28).
    const int64_t sentinel_programs = q.align_count ? cdiv(q.capacity, chunk) : 0;
    q.align.programs = std::max({q.chunks, sentinel_programs,
                                 cdiv(q.capacity / block_m, q.align.entry->constexpr_or("BLOCK_B", 1))});
    if (q.align_count) q.align_count.programs = q.align.programs;
    const std::string gate_up = gemm_variant(act, "routed", block_m, hints.routed, q.choice.gate_up_tile);
    const std::string down = gemm_variant(act, "routed", block_m, hints.routed, q.choice.down_tile);
    TMOE_RETURN_IF_ERROR(select("gate_up_swiglu", gate_up, &q.gate_up.entry));
    TMOE_RETURN_IF_ERROR(select("down", down, &q.down.entry));
    const int64_t m_blocks = q.capacity / block_m;
    q.padded_y = q.down.entry->constexpr_or("PADDED_Y", 0) != 0;
    q.gate_up.cover(m_blocks, p.I, "BLOCK_N");
    q.down.cover(m_blocks, p.H, "BLOCK_N");
    q.gate_up.cap_persistent(device_->multiprocessor_count());
    q.down.cap_persistent(device_->multiprocessor_count());
    if (p.has_shared_expert()) {
      TMOE_RETURN_IF_ERROR(plan_dense("gate_up_swiglu", p, hints, p.shared_I, &q.shared_gate_up));
      TMOE_RETURN_IF_ERROR(plan_dense("down", p, hints, p.H, &q.shared_down));
    }
    if (!q.direct()) {
      const bool combine_hinted = p.H % 16 == 0 && aligned16(p.out);
      const std::string combine =
          std::string(act) + (q.padded_y ? "_padded" : "") + (combine_hinted ? "_div16" : "_any");
      TMOE_RETURN_IF_ERROR(select("combine", combine, &q.combine.entry));
      q.combine.cover(p.T, p.H, "BLOCK_H");
    }

    const size_t esize = dtype_size(p.dtype);
    WorkspaceLayout& w = q.ws;
    layout_routing(p, &q);
    if (q.align_count) w.chunk_counts = w.add(q.chunks * p.E * 4);
    w.expert_counts = w.add(p.E * 4);
    w.expert_offsets = w.add((p.E + 1) * 4);
    w.sorted_slots = w.add(q.capacity * 4);
    w.slot_positions = w.add(q.S * 4);
    w.block_expert = w.add(q.capacity / block_m * 4);
    w.h = w.add(static_cast<size_t>(q.capacity) * p.I * esize);
    if (p.has_shared_expert()) w.h_shared = w.add(static_cast<size_t>(p.T) * p.shared_I * esize);
    const int64_t y_rows = q.padded_y ? q.capacity + (p.has_shared_expert() ? p.T : 0) : p.T * q.R;
    if (!q.direct()) w.y = w.add(static_cast<size_t>(y_rows) * p.H * esize);
    return Status::ok();
  }

  // "bf16_routed_m64_t1_div16"; unhinted, the fallback "bf16_routed_m32_any".
  static std::string gemm_variant(const char* dtype, const char* mode, int64_t block_m, bool hinted, int tile_index) {
    const std::string base = std::string(dtype) + "_" + mode + "_m" + std::to_string(block_m);
    return hinted ? base + tile(tile_index) + "_div16" : base + "_any";
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

  Status launch(const Step& step, const ArgMap& args, const Plan& q, uint8_t* ws, void* stream) {
    const gpu::ScratchSpace scratch{device_address(ws + q.ws.scratch).value, q.ws.scratch_bytes};
    return launcher_.launch(*step.entry, Dim3{static_cast<uint32_t>(step.programs), 1, 1}, args, stream, scratch,
                            q.choice.dependent_launch);
  }

  // The routing the GEMMs read: route's output in the workspace, or the caller's.
  static gpu::DeviceAddress routing_ids(const MoeProblem& p, const Plan& q, uint8_t* ws) {
    return p.routed_from_logits() ? device_address(ws + q.ws.topk_ids) : device_address(p.topk_ids);
  }
  static gpu::DeviceAddress routing_weights(const MoeProblem& p, const Plan& q, uint8_t* ws) {
    return p.routed_from_logits() ? device_address(ws + q.ws.topk_weights) : device_address(p.topk_weights);
  }

  Status enqueue_route(const MoeProblem& p, const Plan& q, uint8_t* ws, void* stream) {
    if (!q.route) return Status::ok();
    const RoutingConfig& r = p.routing;
    return launch(q.route,
                  {{"logits", device_address(p.logits)},
                   {"correction_bias", device_address(r.correction_bias)},
                   {"topk_ids", routing_ids(p, q, ws)},
                   {"topk_weights", routing_weights(p, q, ws)},
                   {"E", i32(p.E)},
                   {"top_k", i32(p.k)},
                   {"mode", i32(r.mode)},
                   {"renormalize", i32(r.renormalize)},
                   {"n_group", i32(r.n_group)},
                   {"topk_group", i32(r.topk_group)},
                   {"routed_scaling_factor", r.routed_scaling_factor},
                   {"has_correction_bias", i32(r.correction_bias != nullptr)}},
                  q, ws, stream);
  }

  Status enqueue_decode(const MoeProblem& p, const Plan& q, uint8_t* ws, void* stream) {
    auto at = [&](size_t offset) { return device_address(ws + offset); };
    const gpu::DeviceAddress null{0};
    const gpu::DeviceAddress ids = routing_ids(p, q, ws);
    TMOE_RETURN_IF_ERROR(enqueue_route(p, q, ws, stream));
    TMOE_RETURN_IF_ERROR(launch(q.decode_gate_up,
                                {{"x", device_address(p.x)},
                                 {"w13", device_address(p.w13)},
                                 {"h", at(q.ws.h)},
                                 {"topk_ids", ids},
                                 {"top_k", i32(p.k)},
                                 {"H", i32(p.H)},
                                 {"I", i32(p.I)}},
                                q, ws, stream));
    if (q.decode_shared_gate_up) {
      TMOE_RETURN_IF_ERROR(launch(q.decode_shared_gate_up,
                                  {{"x", device_address(p.x)},
                                   {"w13", device_address(p.shared_w13)},
                                   {"h", at(q.ws.h_shared)},
                                   {"topk_ids", null},
                                   {"top_k", 1},
                                   {"H", i32(p.H)},
                                   {"I", i32(p.shared_I)}},
                                  q, ws, stream));
    }
    const bool shared = p.has_shared_expert();
    return launch(q.decode_down,
                  {{"h", at(q.ws.h)},
                   {"w2", device_address(p.w2)},
                   {"out", device_address(p.out)},
                   {"topk_ids", ids},
                   {"topk_weights", routing_weights(p, q, ws)},
                   {"h_shared", shared ? at(q.ws.h_shared) : null},
                   {"shared_w2", shared ? device_address(p.shared_w2) : null},
                   {"top_k", i32(p.k)},
                   {"H", i32(p.H)},
                   {"I", i32(p.I)},
                   {"shared_I", i32(shared ? p.shared_I : 0)}},
                  q, ws, stream);
  }

  Status enqueue_sorted(const MoeProblem& p, const Plan& q, uint8_t* ws, void* stream) {
    auto at = [&](size_t offset) { return device_address(ws + offset); };
    const gpu::DeviceAddress ids = routing_ids(p, q, ws);
    const gpu::DeviceAddress weights = routing_weights(p, q, ws);
    const gpu::DeviceAddress null{0};
    TMOE_RETURN_IF_ERROR(enqueue_route(p, q, ws, stream));
    ArgMap alignment{{"topk_ids", ids},
                     {"expert_counts", at(q.ws.expert_counts)},
                     {"expert_offsets", at(q.ws.expert_offsets)},
                     {"sorted_slots", at(q.ws.sorted_slots)},
                     {"slot_positions", at(q.ws.slot_positions)},
                     {"block_expert", at(q.ws.block_expert)},
                     {"num_slots", i32(q.S)},
                     {"E", i32(p.E)},
                     {"block_m", i32(q.choice.block_m)},
                     {"capacity", i32(q.capacity)}};
    if (q.align_count) {  // else q.align is align_count_scatter, which counts itself
      TMOE_RETURN_IF_ERROR(launch(q.align_count,
                                  {{"topk_ids", ids},
                                   {"chunk_counts", at(q.ws.chunk_counts)},
                                   {"sorted_slots", at(q.ws.sorted_slots)},
                                   {"num_slots", i32(q.S)},
                                   {"E", i32(p.E)},
                                   {"capacity", i32(q.capacity)}},
                                  q, ws, stream));
      alignment.emplace("chunk_counts", at(q.ws.chunk_counts));
    }
    TMOE_RETURN_IF_ERROR(launch(q.align, alignment, q, ws, stream));
    TMOE_RETURN_IF_ERROR(launch(q.gate_up,
                                {{"x", device_address(p.x)},
                                 {"w13", device_address(p.w13)},
                                 {"h", at(q.ws.h)},
                                 {"sorted_slots", at(q.ws.sorted_slots)},
                                 {"block_expert", at(q.ws.block_expert)},
                                 {"expert_offsets", at(q.ws.expert_offsets)},
                                 {"num_slots", i32(q.S)},
                                 {"top_k", i32(p.k)},
                                 {"H", i32(p.H)},
                                 {"I", i32(p.I)},
                                 {"E", i32(p.E)},
                                 {"num_m_blocks", i32(q.gate_up.row_blocks)}},
                                q, ws, stream));
    const gpu::DeviceAddress y = q.direct() ? device_address(p.out) : at(q.ws.y);
    TMOE_RETURN_IF_ERROR(launch(q.down,
                                {{"h", at(q.ws.h)},
                                 {"w2", device_address(p.w2)},
                                 {"y", y},
                                 {"sorted_slots", at(q.ws.sorted_slots)},
                                 {"block_expert", at(q.ws.block_expert)},
                                 {"topk_weights", weights},
                                 {"expert_offsets", at(q.ws.expert_offsets)},
                                 {"num_slots", i32(q.S)},
                                 {"top_k", i32(p.k)},
                                 {"H", i32(p.H)},
                                 {"I", i32(p.I)},
                                 {"E", i32(p.E)},
                                 {"num_m_blocks", i32(q.down.row_blocks)},
                                 {"y_rows_per_token", i32(q.R)},
                                 {"y_first_row", 0}},
                                q, ws, stream));
    if (p.has_shared_expert()) {
      TMOE_RETURN_IF_ERROR(launch(q.shared_gate_up,
                                  {{"x", device_address(p.x)},
                                   {"w13", device_address(p.shared_w13)},
                                   {"h", at(q.ws.h_shared)},
                                   {"sorted_slots", null},
                                   {"block_expert", null},
                                   {"expert_offsets", null},
                                   {"num_slots", i32(p.T)},
                                   {"top_k", 1},
                                   {"H", i32(p.H)},
                                   {"I", i32(p.shared_I)},
                                   {"E", 1},
                                   {"num_m_blocks", i32(q.shared_gate_up.row_blocks)}},
                                  q, ws, stream));
      TMOE_RETURN_IF_ERROR(launch(q.shared_down,
                                  {{"h", at(q.ws.h_shared)},
                                   {"w2", device_address(p.shared_w2)},
                                   {"y", y},
                                   {"sorted_slots", null},
                                   {"block_expert", null},
                                   {"topk_weights", null},
                                   {"expert_offsets", null},
                                   {"num_slots", i32(p.T)},
                                   {"top_k", 1},
                                   {"H", i32(p.H)},
                                   {"I", i32(p.shared_I)},
                                   {"E", 1},
                                   {"num_m_blocks", i32(q.shared_down.row_blocks)},
                                   {"y_rows_per_token", i32(q.padded_y ? 1 : q.R)},
                                   {"y_first_row", i32(q.padded_y ? q.capacity : p.k)}},
                                  q, ws, stream));
    }
    if (q.combine) {
      TMOE_RETURN_IF_ERROR(launch(q.combine,
                                  {{"y", y},
                                   {"out", device_address(p.out)},
                                   {"slot_positions", at(q.ws.slot_positions)},
                                   {"topk_weights", weights},
                                   {"H", i32(p.H)},
                                   {"rows_per_token", i32(q.R)},
                                   {"top_k", i32(p.k)},
                                   {"shared_first_row", i32(q.capacity)}},
                                  q, ws, stream));
    }
    return Status::ok();
  }

  std::shared_ptr<gpu::Device> device_;
  const gpu::Bundle& bundle_;
  std::string target_;
  std::shared_ptr<const gpu::TuningTable> table_;  // null: the heuristic serves every shape
  std::vector<int64_t> expert_buckets_;            // the route variants' BLOCK_E, increasing
  gpu::Launcher launcher_;
  gpu::DeviceBuffer workspace_;
};

}  // namespace

Status gpu::make_tunable_backend(int device_index, std::unique_ptr<TunableBackend>* backend) {
  const Bundle* bundle = nullptr;
  TMOE_RETURN_IF_ERROR(embedded_bundle(&bundle));
  std::shared_ptr<Device> device;
  TMOE_RETURN_IF_ERROR(Device::open(device_index, &device));
  std::string target;
  TMOE_RETURN_IF_ERROR(resolve_target(*bundle, *device, &target));
  std::shared_ptr<const TuningTable> table;
  TMOE_RETURN_IF_ERROR(tuning_table_for(device->name(), target, &table));
  *backend = std::make_unique<GpuBackend>(std::move(device), *bundle, std::move(target), std::move(table));
  return Status::ok();
}

Status make_gpu_backend(int device_index, std::unique_ptr<Backend>* backend) {
  std::unique_ptr<gpu::TunableBackend> tunable;
  TMOE_RETURN_IF_ERROR(gpu::make_tunable_backend(device_index, &tunable));
  *backend = std::move(tunable);
  return Status::ok();
}

}  // namespace tmoe
