// The float64 reference of the MoE layer: plain dot products in double for the
// token rows asked for, sharing nothing with the backends but the decoders.
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "core/numeric.hpp"
#include "reference/reference.hpp"

namespace tmoe::reference {
namespace {

// Optional tensors are absent when their descriptor is zeroed (tmoe.h).
bool present(const tmoe_tensor& t) { return t.rank != 0 || t.data != nullptr; }

// Decoding f16 through the numeric.hpp decoder element by element is a library
// call each on CPUs without F16C; a table of all 65536 values keeps a
// mixtral-size row well under a second.
const std::vector<float>& f16_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t h = 0; h < 65536; ++h) t[h] = f16_to_f32(static_cast<uint16_t>(h));
    return t;
  }();
  return table;
}

// sum_i w[offset + i] * v[i] in double, w stored as dtype.
double dot(const void* w, tmoe_dtype dtype, int64_t offset, const double* v, int64_t n) {
  double acc = 0.0;
  switch (dtype) {
    case TMOE_DTYPE_BF16: {
      const uint16_t* p = static_cast<const uint16_t*>(w) + offset;
#pragma omp simd reduction(+ : acc)
      for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(bf16_to_f32(p[i])) * v[i];
      break;
    }
    case TMOE_DTYPE_F16: {
      const uint16_t* p = static_cast<const uint16_t*>(w) + offset;
      const float* table = f16_table().data();
#pragma omp simd reduction(+ : acc)
      for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(table[p[i]]) * v[i];
      break;
    }
    default: {
      const float* p = static_cast<const float*>(w) + offset;
#pragma omp simd reduction(+ : acc)
      for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(p[i]) * v[i];
    }
  }
  return acc;
}

// out += weight * w2 @ (silu(g) * u), [g; u] = w13 @ x, for one token row x.
// w13 [2I,H] starts at element w13_offset, w2 [H,I] at w2_offset.
void add_swiglu(const void* w13, int64_t w13_offset, const void* w2, int64_t w2_offset, tmoe_dtype dtype,
                int64_t I, int64_t H, const double* x, double weight, double* out, bool parallel) {
  std::vector<double> act(static_cast<size_t>(I));
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t i = 0; i < I; ++i) {
    const double g = dot(w13, dtype, w13_offset + i * H, x, H);
    const double u = dot(w13, dtype, w13_offset + (I + i) * H, x, H);
    act[i] = g / (1.0 + std::exp(-g)) * u;
  }
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t h = 0; h < H; ++h) out[h] += weight * dot(w2, dtype, w2_offset + h * I, act.data(), I);
}

}  // namespace

std::vector<double> moe_layer(const tmoe_moe_args& args, const std::vector<int64_t>& rows) {
  const int64_t H = args.x.shape[1];
  const int64_t E = args.w13.shape[0];
  const int64_t I = args.w13.shape[1] / 2;
  const bool routed = present(args.router_logits);
  const int64_t k = routed ? args.routing.top_k : args.topk_ids.shape[1];
  const int64_t shared_I = present(args.shared_w13) ? args.shared_w13.shape[0] / 2 : 0;
  const tmoe_dtype dtype = args.x.dtype;
  const auto n = static_cast<int64_t>(rows.size());

  // Routing of the listed rows only: row r of the result is token rows[r].
  std::vector<int32_t> ids(static_cast<size_t>(n * k));
  std::vector<double> weights(static_cast<size_t>(n * k));
  if (routed) {
    std::vector<double> logits(static_cast<size_t>(n * E));
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t e = 0; e < E; ++e) {
        logits[r * E + e] = load_as_f32(args.router_logits.data, args.router_logits.dtype, rows[r] * E + e);
      }
    }
    Routed chosen = route(args.routing, logits, n, E);
    ids = std::move(chosen.ids);
    weights = std::move(chosen.weights);
  } else {
    const auto* given_ids = static_cast<const int32_t*>(args.topk_ids.data);
    const auto* given_weights = static_cast<const float*>(args.topk_weights.data);
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t j = 0; j < k; ++j) {
        ids[r * k + j] = given_ids[rows[r] * k + j];
        weights[r * k + j] = given_weights[rows[r] * k + j];
      }
    }
  }

  // Many rows: one thread per row. Few rows (a mixtral-size check of one token):
  // the threads share each row's dot products instead.
  const bool parallel_rows = n >= omp_get_max_threads();
  std::vector<double> out(static_cast<size_t>(n * H), 0.0);
#pragma omp parallel for schedule(dynamic) if (parallel_rows)
  for (int64_t r = 0; r < n; ++r) {
    std::vector<double> x(static_cast<size_t>(H));
    for (int64_t h = 0; h < H; ++h) x[h] = load_as_f32(args.x.data, dtype, rows[r] * H + h);
    double* out_row = out.data() + r * H;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = ids[r * k + j];
      add_swiglu(args.w13.data, e * 2 * I * H, args.w2.data, e * H * I, dtype, I, H, x.data(), weights[r * k + j],
                 out_row, !parallel_rows);
    }
    if (shared_I > 0) {
      add_swiglu(args.shared_w13.data, 0, args.shared_w2.data, 0, dtype, shared_I, H, x.data(), 1.0, out_row,
                 !parallel_rows);
    }
  }
  return out;
}

}  // namespace tmoe::reference
