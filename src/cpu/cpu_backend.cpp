// The CPU backend. Per expert, the token rows routed to it are gathered into an
// f32 matrix; the OpenMP threads then share out the expert's weight rows in
// blocks: each thread converts a block (bf16/f16/f32) into its own f32 buffer
// and multiplies it at once with a single-threaded OpenBLAS sgemm, so the
// conversion streams with the compute, the block is still in cache when it is
// used, and the full f32 weights never exist. SwiGLU runs on the gate/up
// block's result; the down projection follows the same way. Weighted slot
// results are combined per token in slot order, in f32, so the output is
// bit-identical from run to run.
//
// Why not OpenBLAS threads inside each sgemm with OpenMP loops around them: the
// two thread pools alternate thousands of times per call, and each spin-waits
// while the other runs. On 2 cores that measured 5 to 29 GFLOP/s against 140
// for this scheme at mixtral's shape (T=256).
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <fstream>
#include <limits>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "core/align.hpp"
#include "core/backend.hpp"
#include "core/numeric.hpp"
#include "core/routing.hpp"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace tmoe {
namespace {

// A thread's converted weight block is at most this size: its M is large enough
// for OpenBLAS to run near its peak (measured: 1 MiB blocks cost a fifth more
// CPU time than 4 MiB at mixtral's shape; larger gained nothing). Each thread
// gets at least kBlocksPerThread blocks so dynamic scheduling evens them out.
constexpr int64_t kWeightBlockBytes = int64_t{4} << 20;
constexpr int64_t kBlocksPerThread = 4;
// Up to this many tokens, one sgemv per token beats an sgemm, which would pack
// the whole weight block for a few columns (measured at decode sizes: T=1 runs
// 3.5x faster, T=16 1.1x).
constexpr int64_t kMaxGemvColumns = 8;
// Rows (slots of one expert, or tokens for the shared expert) per sgemm pass;
// bounds the activation buffers for large T while keeping M large enough that
// converting the weights once per pass costs little next to the products.
constexpr int64_t kMaxRowsPerPass = 1024;
// Below this many elements a parallel region costs more than it saves.
constexpr int64_t kParallelElements = int64_t{1} << 14;

const void* advance(const void* base, tmoe_dtype dtype, int64_t elements) {
  return static_cast<const char*>(base) + elements * static_cast<int64_t>(dtype_size(dtype));
}

#if defined(__x86_64__)
__attribute__((target("avx2,f16c"))) void f16_to_f32_avx2(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  }
  for (; i < n; ++i) dst[i] = _cvtsh_ss(src[i]);
}

__attribute__((target("avx2"))) void bf16_to_f32_avx2(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm256_slli_epi32(wide, 16));
  }
  for (; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
}

// Without F16C the compiler converts _Float16 through a library call per element.
bool has_avx2_f16c() {
  static const bool supported = [] {
    __builtin_cpu_init();  // static initialisers may run before libgcc's own
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  }();
  return supported;
}
#endif

// dst[0..n) = src[offset..offset+n) as f32.
void to_f32(const void* src, tmoe_dtype dtype, int64_t offset, int64_t n, float* dst) {
  const auto* half = static_cast<const uint16_t*>(src) + offset;
  switch (dtype) {
    case TMOE_DTYPE_BF16:
#if defined(__x86_64__)
      if (has_avx2_f16c()) return bf16_to_f32_avx2(half, dst, n);
#endif
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(half[i]);
      return;
    case TMOE_DTYPE_F16:
#if defined(__x86_64__)
      if (has_avx2_f16c()) return f16_to_f32_avx2(half, dst, n);
#endif
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(half[i]);
      return;
    default:
      std::memcpy(dst, static_cast<const float*>(src) + offset, static_cast<size_t>(n) * sizeof(float));
  }
}

// The same, split evenly over the OpenMP threads.
void to_f32_parallel(const void* src, tmoe_dtype dtype, int64_t offset, int64_t n, float* dst) {
  if (n < kParallelElements) return to_f32(src, dtype, offset, n, dst);
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t per_thread = (n + threads - 1) / threads;
    const int64_t begin = std::min(n, id * per_thread), end = std::min(n, begin + per_thread);
    to_f32(src, dtype, offset + begin, end - begin, dst + begin);
  }
}

// Weight rows per converted block: about kWeightBlockBytes of f32, but small
// enough that every thread gets several blocks (dynamic scheduling then evens
// out the threads), a multiple of 16 where possible (the sgemm kernels' unroll),
// never more than `rows`.
int64_t block_rows(int64_t row_length, int64_t rows) {
  const int64_t by_size = kWeightBlockBytes / (row_length * static_cast<int64_t>(sizeof(float)));
  const int64_t by_balance = rows / (kBlocksPerThread * omp_get_max_threads());
  int64_t r = std::max<int64_t>(16, std::min(by_size, by_balance));
  r -= r % 16;
  return std::min(r, rows);
}

// C[m,n] = A[m,k] * op(B), all row-major f32; op(B) is B[k,n] or, with
// CblasTrans, B[n,k] transposed.
void sgemm(CBLAS_TRANSPOSE b_trans, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
           int64_t ldb, float* c, int64_t ldc) {
  if (n <= kMaxGemvColumns) {
    for (int64_t j = 0; j < n; ++j) {
      const float* column = b_trans == CblasTrans ? b + j * ldb : b + j;
      const int64_t step = b_trans == CblasTrans ? 1 : ldb;
      cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<blasint>(m), static_cast<blasint>(k), 1.0f, a,
                  static_cast<blasint>(lda), column, static_cast<blasint>(step), 0.0f, c + j,
                  static_cast<blasint>(ldc));
    }
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, b_trans, static_cast<blasint>(m), static_cast<blasint>(n),
              static_cast<blasint>(k), 1.0f, a, static_cast<blasint>(lda), b, static_cast<blasint>(ldb), 0.0f, c,
              static_cast<blasint>(ldc));
}

// OpenBLAS's thread count is process-wide. The layer runs its own single-threaded
// sgemm on every OpenMP thread (OpenBLAS threads on top would oversubscribe the
// cores, and their spin-waiting between calls starves the OpenMP threads), so
// the count is 1 while any forward runs; the last forward to finish restores
// the caller's setting.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas() {
    std::lock_guard<std::mutex> lock(state().mutex);
    if (state().active++ == 0) {
      state().saved_threads = openblas_get_num_threads();
      openblas_set_num_threads(1);
    }
  }
  ~SingleThreadedBlas() {
    std::lock_guard<std::mutex> lock(state().mutex);
    if (--state().active == 0) openblas_set_num_threads(state().saved_threads);
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  struct State {
    std::mutex mutex;
    int active = 0;
    int saved_threads = 1;
  };
  static State& state() {
    static State s;
    return s;
  }
};

std::string cpu_model_name() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) break;
    const size_t start = line.find_first_not_of(" \t", colon + 1);
    if (start != std::string::npos) return line.substr(start);
  }
  return "unknown CPU";
}

class CpuBackend final : public Backend {
 public:
  CpuBackend() : device_name_(cpu_model_name() + " (" + std::to_string(omp_get_max_threads()) + " threads)") {}

  const char* name() const override { return "cpu"; }
  std::string device_name() const override { return device_name_; }

  Status supports(const MoeProblem& p) const override {
    // Every dtype of tmoe.h runs here; BLAS takes sizes and leading dimensions as blasint.
    constexpr int64_t kBlasMax = std::numeric_limits<blasint>::max();
    if (p.H > kBlasMax || 2 * p.I > kBlasMax || 2 * p.shared_I > kBlasMax) {
      return Status::unsupported("cpu: H=" + std::to_string(p.H) + ", 2*I=" + std::to_string(2 * p.I) +
                                 " or 2*Is=" + std::to_string(2 * p.shared_I) + " exceeds the BLAS integer range");
    }
    return Status::ok();
  }

  size_t workspace_bytes(const MoeProblem&) const override { return 0; }

  Status describe_plan(const MoeProblem& p, PlanInfo* info) const override {
    TMOE_RETURN_IF_ERROR(supports(p));
    info->launches = 0;
    info->description = "cpu: per active expert, f32 OpenBLAS GEMMs (GEMVs for <= 8 tokens) on OpenMP threads";
    return Status::ok();
  }

  Status forward(const MoeProblem& p, const ExecContext&) override {
    TMOE_RETURN_IF_ERROR(supports(p));
    try {
      const SingleThreadedBlas single_threaded_blas;
      return run(p);
    } catch (const std::bad_alloc&) {
      return Status::out_of_memory("cpu: host allocation failed for T=" + std::to_string(p.T) +
                                   ", H=" + std::to_string(p.H) + ", I=" + std::to_string(p.I));
    } catch (const std::exception& e) {
      return Status::internal(std::string("cpu: ") + e.what());
    }
  }

 private:
  Status run(const MoeProblem& p) {
    TMOE_RETURN_IF_ERROR(validate_routing_values(p));
    const int64_t slots = p.T * p.k;
    const int32_t* ids = p.topk_ids;
    const float* weights = p.topk_weights;
    if (p.routed_from_logits()) {
      routed_ids_.resize(static_cast<size_t>(slots));
      routed_weights_.resize(static_cast<size_t>(slots));
      route(p.routing, p.logits, p.logits_dtype, p.T, p.E, routed_ids_.data(), routed_weights_.data());
      ids = routed_ids_.data();
      weights = routed_weights_.data();
    }
    const Alignment alignment = align_slots(ids, slots, p.E, 1);

    x_f32_.resize(static_cast<size_t>(p.T * p.H));
    to_f32_parallel(p.x, p.dtype, 0, p.T * p.H, x_f32_.data());

    slot_out_.resize(static_cast<size_t>(slots * p.H));
    for (int64_t e = 0; e < p.E; ++e) {
      const int32_t* expert_slots = alignment.sorted_slots.data() + alignment.offsets[e];
      const void* w13 = advance(p.w13, p.dtype, e * 2 * p.I * p.H);
      const void* w2 = advance(p.w2, p.dtype, e * p.H * p.I);
      for (int64_t first = 0; first < alignment.counts[e]; first += kMaxRowsPerPass) {
        const int64_t n = std::min<int64_t>(kMaxRowsPerPass, alignment.counts[e] - first);
        const int32_t* pass_slots = expert_slots + first;
        rows_.resize(static_cast<size_t>(n * p.H));
        gather(pass_slots, n, p.k, p.H);
        swiglu_mlp(rows_.data(), n, w13, w2, p.I, p.H, p.dtype);
        scatter_scaled(pass_slots, weights, n, p.H);
      }
    }

    if (p.has_shared_expert()) {
      shared_out_.resize(static_cast<size_t>(p.T * p.H));
      for (int64_t first = 0; first < p.T; first += kMaxRowsPerPass) {
        const int64_t n = std::min(kMaxRowsPerPass, p.T - first);
        swiglu_mlp(x_f32_.data() + first * p.H, n, p.shared_w13, p.shared_w2, p.shared_I, p.H, p.dtype);
        transpose_into_shared(first, n, p.H);
      }
    }

    combine(p);
    return Status::ok();
  }

  // rows_[r] = x[token of slot r] for the n slots of one pass.
  void gather(const int32_t* pass_slots, int64_t n, int64_t k, int64_t H) {
#pragma omp parallel for schedule(static) if (n * H >= kParallelElements)
    for (int64_t r = 0; r < n; ++r) {
      const int64_t token = pass_slots[r] / k;
      std::memcpy(rows_.data() + r * H, x_f32_.data() + token * H, static_cast<size_t>(H) * sizeof(float));
    }
  }

  // slot_out_[slot of r] = weight[slot] * column r of mlp_out_T_.
  void scatter_scaled(const int32_t* pass_slots, const float* weights, int64_t n, int64_t H) {
#pragma omp parallel for schedule(static) if (n * H >= kParallelElements)
    for (int64_t r = 0; r < n; ++r) {
      const int64_t slot = pass_slots[r];
      const float w = weights[slot];
      const float* src = mlp_out_T_.data() + r;
      float* dst = slot_out_.data() + slot * H;
      for (int64_t h = 0; h < H; ++h) dst[h] = w * src[h * n];
    }
  }

  // mlp_out_T_ [H,n] = w2 @ (silu(g) * u) with [g; u] = w13 @ x for each of the
  // n rows of x (f32, row-major [n,H]); w13 [2I,H] and w2 [H,I] in `dtype`.
  // Each thread takes blocks of weight rows, converts a block into its own
  // buffer and multiplies it right away with a single-threaded sgemm: the
  // conversion streams with the compute, no thread waits between the two, and
  // the blocks are independent until the barrier between the two projections.
  // The weights are the sgemm's A (M = weight rows) and the tokens its B (N = n):
  // OpenBLAS runs faster on a tall A than on few token rows.
  void swiglu_mlp(const float* x, int64_t n, const void* w13, const void* w2, int64_t I, int64_t H,
                  tmoe_dtype dtype) {
    // A gate/up block holds gate rows i0.. and the matching up rows I+i0.., so
    // one sgemm yields both halves that the activation pairs up.
    const int64_t gate_rows = block_rows(2 * H, I);
    const int64_t down_rows = block_rows(I, H);
    const int64_t gate_blocks = (I + gate_rows - 1) / gate_rows;
    const int64_t down_blocks = (H + down_rows - 1) / down_rows;
    act_.resize(static_cast<size_t>(I * n));
    mlp_out_T_.resize(static_cast<size_t>(H * n));
    // Allocated here: an exception must not leave a parallel region.
    thread_scratch_.resize(static_cast<size_t>(omp_get_max_threads()));
    for (ThreadScratch& scratch : thread_scratch_) {
      scratch.weights.resize(static_cast<size_t>(std::max(2 * gate_rows * H, down_rows * I)));
      scratch.gate_up.resize(static_cast<size_t>(2 * gate_rows * n));
    }
#pragma omp parallel
    {
      ThreadScratch& scratch = thread_scratch_[static_cast<size_t>(omp_get_thread_num())];
      float* block = scratch.weights.data();
#pragma omp for schedule(dynamic)
      for (int64_t b = 0; b < gate_blocks; ++b) {
        const int64_t i0 = b * gate_rows, rows = std::min(gate_rows, I - i0);
        to_f32(w13, dtype, i0 * H, rows * H, block);
        to_f32(w13, dtype, (I + i0) * H, rows * H, block + rows * H);
        // gate_up [2*rows, n] = block [2*rows, H] * x^T
        sgemm(CblasTrans, 2 * rows, n, H, block, H, x, H, scratch.gate_up.data(), n);
        const float* gate = scratch.gate_up.data();
        const float* up = gate + rows * n;
        float* act = act_.data() + i0 * n;
        for (int64_t i = 0; i < rows * n; ++i) act[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
      }
      // (the implicit barrier of the loop above: the down projection reads all of act_)
#pragma omp for schedule(dynamic)
      for (int64_t b = 0; b < down_blocks; ++b) {
        const int64_t h0 = b * down_rows, rows = std::min(down_rows, H - h0);
        to_f32(w2, dtype, h0 * I, rows * I, block);
        // mlp_out_T_ rows h0.. [rows, n] = block [rows, I] * act_ [I, n]
        sgemm(CblasNoTrans, rows, n, I, block, I, act_.data(), n, mlp_out_T_.data() + h0 * n, n);
      }
    }
  }

  // shared_out_[first + r] = column r of mlp_out_T_.
  void transpose_into_shared(int64_t first, int64_t n, int64_t H) {
#pragma omp parallel for schedule(static) if (n * H >= kParallelElements)
    for (int64_t r = 0; r < n; ++r) {
      float* dst = shared_out_.data() + (first + r) * H;
      for (int64_t h = 0; h < H; ++h) dst[h] = mlp_out_T_[static_cast<size_t>(h * n + r)];
    }
  }

  // out[t] = sum over j = 0..k-1 of slot_out_[t*k + j] (+ shared_out_[t]), in
  // that order, in f32; the only write to the caller's out.
  void combine(const MoeProblem& p) {
    const int64_t T = p.T, H = p.H, k = p.k;
    const bool shared = p.has_shared_expert();
#pragma omp parallel for schedule(static) if (T * H * k >= kParallelElements)
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t h = 0; h < H; ++h) {
        float acc = slot_out_[static_cast<size_t>(t * k * H + h)];
        for (int64_t j = 1; j < k; ++j) acc += slot_out_[static_cast<size_t>((t * k + j) * H + h)];
        if (shared) acc += shared_out_[static_cast<size_t>(t * H + h)];
        store_from_f32(p.out, p.dtype, t * H + h, acc);
      }
    }
  }

  std::string device_name_;
  // Scratch reused across calls (a context serves one thread at a time).
  std::vector<int32_t> routed_ids_;
  std::vector<float> routed_weights_;
  std::vector<float> x_f32_;         // [T,H]
  std::vector<float> slot_out_;      // [T*k,H], weighted expert outputs per slot
  std::vector<float> shared_out_;    // [T,H]
  std::vector<float> rows_;          // [n,H], gathered rows of one pass
  struct ThreadScratch {
    std::vector<float> weights;  // one converted block of weight rows
    std::vector<float> gate_up;  // [2*block rows, n]: gate rows, then up rows
  };
  std::vector<ThreadScratch> thread_scratch_;  // one per OpenMP thread
  std::vector<float> act_;           // [I,n], silu(g)*u
  std::vector<float> mlp_out_T_;     // [H,n], the MLP output of each row as a column
};

}  // namespace

Status make_cpu_backend(std::unique_ptr<Backend>* backend) {
  *backend = std::make_unique<CpuBackend>();
  return Status::ok();
}

}  // namespace tmoe
