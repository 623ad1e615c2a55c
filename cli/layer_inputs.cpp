#include "layer_inputs.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <set>
#include <stdexcept>
#include <tmoe/tmoe.hpp>

#include "core/numeric.hpp"
#include "core/problem.hpp"
#include "reference/random.hpp"
#include "reference/reference.hpp"

namespace tmoe::cli {

namespace {

using reference::mix;
using reference::random_tensor;

// The standard normal's quantile at p in (0, 1), by bisection on std::erfc (to double
// precision; called E times per batch).
double normal_quantile(double p) {
  double lo = -40.0, hi = 40.0;
  for (int i = 0; i < 200 && hi - lo > 1e-15; ++i) {
    const double mid = 0.5 * (lo + hi);
    if (0.5 * std::erfc(-mid / std::sqrt(2.0)) < p) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return 0.5 * (lo + hi);
}

// Router logits: each row a random permutation of one grid, the standard normal's
// quantiles at (e + 0.5) / E, plus a jitter far smaller than the grid's narrowest
// spacing, so f32 routing (the library) and f64 routing (the reference) cannot
// disagree on a near-tie. Normal quantiles, not an even grid, so that the scores beside
// deepseek-v3's correction bias spread as the peers harness's N(0, 1) logits do: over
// an even grid of width 4 the top scores differed by less than the bias, which then
// chose the experts (124 of 256 active at T = 1024 against about 195; performance-log.md #45).
std::vector<float> random_logits(int64_t T, int64_t E, uint64_t seed) {
  std::vector<float> logits(static_cast<size_t>(T * E));
  std::vector<double> grid(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) grid[e] = normal_quantile((static_cast<double>(e) + 0.5) / static_cast<double>(E));
  double spacing = 1.0;
  for (int64_t e = 1; e < E; ++e) spacing = std::min(spacing, grid[e] - grid[e - 1]);
  for (int64_t t = 0; t < T; ++t) {
    std::mt19937_64 rng(mix(seed + static_cast<uint64_t>(t)));
    std::vector<int64_t> perm(E);
    for (int64_t e = 0; e < E; ++e) perm[e] = e;
    std::shuffle(perm.begin(), perm.end(), rng);
    std::uniform_real_distribution<double> jitter(-0.05 * spacing, 0.05 * spacing);
    for (int64_t e = 0; e < E; ++e) logits[t * E + e] = static_cast<float>(grid[perm[e]] + jitter(rng));
  }
  return logits;
}

// deepseek-v3's routing adds a per-expert correction bias to the scores. Drawn as the
// peers harness draws it (0.1 * N(0, 1), bench/peers.py), so both route with the same
// skew: tokens concentrate on fewer experts than with the logits alone.
std::vector<uint8_t> random_correction_bias(int64_t E, uint64_t seed) {
  std::mt19937_64 rng(mix(seed));
  std::normal_distribution<float> normal(0.0f, 0.1f);
  std::vector<uint8_t> bytes(static_cast<size_t>(E) * sizeof(float));
  for (int64_t e = 0; e < E; ++e) {
    const float b = normal(rng);
    std::memcpy(bytes.data() + e * sizeof(float), &b, sizeof(float));
  }
  return bytes;
}

}  // namespace

tmoe_dtype parse_dtype(const std::string& s) {
  if (s == "bf16") return TMOE_DTYPE_BF16;
  if (s == "f16" || s == "fp16") return TMOE_DTYPE_F16;
  if (s == "f32" || s == "fp32") return TMOE_DTYPE_F32;
  throw std::runtime_error("--dtype: expected bf16, f16 or f32, got '" + s + "'");
}

// Rounding to the storage format (inputs, intermediates, output) dominates; dot products accumulate in f32.
double error_bound(tmoe_dtype dtype) {
  switch (dtype) {
    case TMOE_DTYPE_BF16: return 1e-2;
    case TMOE_DTYPE_F16: return 2e-3;
    default: return 1e-5;
  }
}

std::vector<int64_t> sample_rows(int64_t T, int count) {
  std::set<int64_t> rows;
  if (T == 0) return {};
  rows.insert(0);
  rows.insert(T - 1);
  for (int i = 1; static_cast<int64_t>(rows.size()) < std::min<int64_t>(T, count); ++i) {
    rows.insert(static_cast<int64_t>(mix(static_cast<uint64_t>(i)) % static_cast<uint64_t>(T)));
  }
  return {rows.begin(), rows.end()};
}

LayerInputs::LayerInputs(BenchDevice& device, const ModelShape& m, tmoe_dtype dtype, uint64_t seed)
    : device_(device), model_(m), dtype_(dtype), seed_(seed) {
  const int64_t H = m.H, I = m.I, E = m.E, Is = m.shared_I;
  host_w13_ = random_tensor(E * 2 * I * H, dtype, 1.0 / std::sqrt(double(H)), seed + 1);
  host_w2_ = random_tensor(E * H * I, dtype, 1.0 / std::sqrt(double(I)), seed + 2);
  if (Is) {
    host_sw13_ = random_tensor(2 * Is * H, dtype, 1.0 / std::sqrt(double(H)), seed + 3);
    host_sw2_ = random_tensor(H * Is, dtype, 1.0 / std::sqrt(double(Is)), seed + 4);
    sw13_ = place(host_sw13_, &d_sw13_);
    sw2_ = place(host_sw2_, &d_sw2_);
  }
  if (m.routing.mode == TMOE_ROUTING_SIGMOID_GROUPED_TOPK) {
    host_bias_ = random_correction_bias(E, seed + 5);
    bias_ = place(host_bias_, &d_bias_);
  }
  w13_ = place(host_w13_, &d_w13_);
  w2_ = place(host_w2_, &d_w2_);
}

// On the CPU the host copies are the tensors; on a GPU they are uploaded.
void* LayerInputs::place(std::vector<uint8_t>& host, DeviceBuffer* buffer) const {
  if (device_.is_host()) return host.data();
  *buffer = DeviceBuffer(device_, host.size());
  device_.upload(buffer->get(), host.data(), host.size());
  return buffer->get();
}

LayerInputs::Batch LayerInputs::batch(int64_t T, int draw) const {
  const ModelShape& m = model_;
  Batch b;
  b.layer_ = this;
  const uint64_t batch_seed = seed_ + static_cast<uint64_t>(T) + (static_cast<uint64_t>(draw) << 32);
  b.host_x_ = random_tensor(T * m.H, dtype_, 1.0, batch_seed + 100);
  b.host_logits_ = random_logits(T, m.E, batch_seed + 200);
  const auto* logit_bytes = reinterpret_cast<const uint8_t*>(b.host_logits_.data());
  b.host_logits_bytes_.assign(logit_bytes, logit_bytes + b.host_logits_.size() * sizeof(float));
  b.host_out_.assign(static_cast<size_t>(T * m.H) * dtype_size(dtype_), 0xff);  // NaN pattern: unwritten shows

  tmoe_moe_args& a = b.args_;
  a.x = tmoe::tensor(place(b.host_x_, &b.x_), dtype_, {T, m.H});
  a.router_logits = tmoe::tensor(place(b.host_logits_bytes_, &b.logits_), TMOE_DTYPE_F32, {T, m.E});
  a.routing = m.routing;
  if (bias_) a.routing.correction_bias = tmoe::tensor(bias_, TMOE_DTYPE_F32, {m.E});
  a.w13 = tmoe::tensor(w13_, dtype_, {m.E, 2 * m.I, m.H});
  a.w2 = tmoe::tensor(w2_, dtype_, {m.E, m.H, m.I});
  if (m.shared_I) {
    a.shared_w13 = tmoe::tensor(sw13_, dtype_, {2 * m.shared_I, m.H});
    a.shared_w2 = tmoe::tensor(sw2_, dtype_, {m.H, m.shared_I});
  }
  a.out = tmoe::tensor(place(b.host_out_, &b.out_), dtype_, {T, m.H});
  a.stream = device_.stream();
  return b;
}

tmoe_moe_args LayerInputs::Batch::host_args() const {
  tmoe_moe_args h = args_;
  h.x.data = const_cast<uint8_t*>(host_x_.data());
  h.router_logits.data = const_cast<float*>(host_logits_.data());
  h.w13.data = const_cast<uint8_t*>(layer_->host_w13_.data());
  h.w2.data = const_cast<uint8_t*>(layer_->host_w2_.data());
  if (layer_->bias_) h.routing.correction_bias.data = const_cast<uint8_t*>(layer_->host_bias_.data());
  if (layer_->model_.shared_I) {
    h.shared_w13.data = const_cast<uint8_t*>(layer_->host_sw13_.data());
    h.shared_w2.data = const_cast<uint8_t*>(layer_->host_sw2_.data());
  }
  return h;
}

double LayerInputs::Batch::relative_error(const std::vector<int64_t>& rows) {
  if (rows.empty()) return 0.0;
  const std::vector<uint8_t>& out = fetch_out();
  const std::vector<double> ref = reference::moe_layer(host_args(), rows);
  const int64_t H = layer_->model_.H;
  std::vector<double> got;
  got.reserve(rows.size() * H);
  for (int64_t r : rows) {
    for (int64_t h = 0; h < H; ++h) got.push_back(load_as_f32(out.data(), layer_->dtype_, r * H + h));
  }
  return reference::relative_l2(ref, got);
}

const std::vector<uint8_t>& LayerInputs::Batch::fetch_out() {
  if (!layer_->device_.is_host()) layer_->device_.download(host_out_.data(), out_.get(), host_out_.size());
  return host_out_;
}

}  // namespace tmoe::cli
