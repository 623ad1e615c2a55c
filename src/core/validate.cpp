// Argument validation for the MoE layer. Every message names the argument and
// says what was expected, so a caller can fix the call without reading our code.
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "core/problem.hpp"
#include "core/status.hpp"

namespace tmoe {

size_t dtype_size(tmoe_dtype dtype) {
  switch (dtype) {
    case TMOE_DTYPE_F32:
    case TMOE_DTYPE_I32:
      return 4;
    case TMOE_DTYPE_F16:
    case TMOE_DTYPE_BF16:
      return 2;
  }
  return 0;
}

namespace {

// Optional tensors are absent when their descriptor is zeroed (tmoe.h).
bool present(const tmoe_tensor& t) { return t.rank != 0 || t.data != nullptr; }

std::string shape_string(const tmoe_tensor& t) {
  std::ostringstream s;
  s << '[';
  for (int i = 0; i < t.rank && i < TMOE_MAX_RANK; ++i) s << (i ? ", " : "") << t.shape[i];
  s << ']';
  return s.str();
}

struct Dim {
  const char* name;  // how the expected size is derived, e.g. "H"
  int64_t value;
};

std::string dims_string(const std::vector<Dim>& dims) {
  std::ostringstream s;
  s << '[';
  for (size_t i = 0; i < dims.size(); ++i) s << (i ? ", " : "") << dims[i].name << '=' << dims[i].value;
  s << ']';
  return s.str();
}

int64_t numel(const tmoe_tensor& t) {
  int64_t n = 1;
  for (int i = 0; i < t.rank; ++i) n *= t.shape[i];
  return n;
}

Status check_rank(const char* name, const tmoe_tensor& t, int rank) {
  if (t.rank != rank) {
    return Status::invalid(std::string(name) + ": expected rank " + std::to_string(rank) + ", got rank " +
                           std::to_string(t.rank));
  }
  for (int i = 0; i < rank; ++i) {
    if (t.shape[i] < 0) return Status::invalid(std::string(name) + ": negative size in shape " + shape_string(t));
  }
  return Status::ok();
}

Status check_dtype(const char* name, const tmoe_tensor& t, std::initializer_list<tmoe_dtype> allowed) {
  const int32_t got = enum_bits(t.dtype);
  for (tmoe_dtype d : allowed) {
    if (got == d) return Status::ok();
  }
  std::string list;
  for (tmoe_dtype d : allowed) list += (list.empty() ? "" : " or ") + std::string(tmoe_dtype_name(d));
  const bool known = got >= TMOE_DTYPE_F32 && got <= TMOE_DTYPE_I32;
  return Status::invalid(std::string(name) + ": expected dtype " + list + ", got " +
                         (known ? tmoe_dtype_name(static_cast<tmoe_dtype>(got)) : "unknown dtype " + std::to_string(got)));
}

// Row-major contiguous; a dimension of size 1 may carry any stride.
Status check_contiguous(const char* name, const tmoe_tensor& t) {
  if (numel(t) == 0) return Status::ok();
  int64_t expected = 1;
  for (int i = t.rank - 1; i >= 0; --i) {
    if (t.shape[i] != 1 && t.strides[i] != expected) {
      return Status::invalid(std::string(name) + ": expected contiguous row-major strides (dimension " +
                             std::to_string(i) + " stride " + std::to_string(expected) + "), got stride " +
                             std::to_string(t.strides[i]));
    }
    expected *= t.shape[i];
  }
  return Status::ok();
}

Status check_data(const char* name, const tmoe_tensor& t) {
  if (t.data == nullptr && numel(t) > 0) {
    return Status::invalid(std::string(name) + ": data is a null pointer for a tensor of shape " + shape_string(t));
  }
  return Status::ok();
}

// Shape, rank, strides and pointer of one tensor against the sizes derived so far.
Status check_tensor(const char* name, const tmoe_tensor& t, const std::vector<Dim>& dims) {
  TMOE_RETURN_IF_ERROR(check_rank(name, t, static_cast<int>(dims.size())));
  for (size_t i = 0; i < dims.size(); ++i) {
    if (t.shape[i] != dims[i].value) {
      return Status::invalid(std::string(name) + ": expected shape " + dims_string(dims) + ", got " +
                             shape_string(t));
    }
  }
  TMOE_RETURN_IF_ERROR(check_contiguous(name, t));
  return check_data(name, t);
}

struct ByteRange {
  const char* name;
  uintptr_t begin;
  uintptr_t end;
};

ByteRange range_of(const char* name, const tmoe_tensor& t) {
  auto begin = reinterpret_cast<uintptr_t>(t.data);
  return {name, begin, begin + static_cast<uintptr_t>(numel(t)) * dtype_size(t.dtype)};
}

Status check_routing_config(const tmoe_routing& r, int64_t E) {
  const int32_t mode = enum_bits(r.mode);
  if (mode != TMOE_ROUTING_SOFTMAX_TOPK && mode != TMOE_ROUTING_TOPK_SOFTMAX && mode != TMOE_ROUTING_SIGMOID_GROUPED_TOPK) {
    return Status::invalid("routing.mode: expected softmax_topk, topk_softmax or sigmoid_grouped_topk, got " +
                           std::to_string(mode));
  }
  if (r.top_k < 1 || r.top_k > E) {
    return Status::invalid("routing.top_k: expected 1 <= k <= E=" + std::to_string(E) + ", got " +
                           std::to_string(r.top_k));
  }
  if (!std::isfinite(r.routed_scaling_factor) || r.routed_scaling_factor <= 0.0f) {
    return Status::invalid("routing.routed_scaling_factor: expected a finite value > 0, got " +
                           std::to_string(r.routed_scaling_factor));
  }
  if (r.mode != TMOE_ROUTING_SIGMOID_GROUPED_TOPK) return Status::ok();
  if (r.n_group < 1 || E % r.n_group != 0) {
    return Status::invalid("routing.n_group: expected a divisor of E=" + std::to_string(E) + ", got " +
                           std::to_string(r.n_group));
  }
  if (r.topk_group < 1 || r.topk_group > r.n_group) {
    return Status::invalid("routing.topk_group: expected 1 <= topk_group <= n_group=" + std::to_string(r.n_group) +
                           ", got " + std::to_string(r.topk_group));
  }
  if (static_cast<int64_t>(r.topk_group) * (E / r.n_group) < r.top_k) {
    return Status::invalid("routing.topk_group: the " + std::to_string(r.topk_group) + " kept groups hold " +
                           std::to_string(r.topk_group * (E / r.n_group)) + " experts, fewer than top_k=" +
                           std::to_string(r.top_k));
  }
  if (present(r.correction_bias)) {
    TMOE_RETURN_IF_ERROR(check_dtype("routing.correction_bias", r.correction_bias, {TMOE_DTYPE_F32}));
    TMOE_RETURN_IF_ERROR(check_tensor("routing.correction_bias", r.correction_bias, {{"E", E}}));
  }
  return Status::ok();
}

}  // namespace

Status validate_moe_args(const tmoe_moe_args& a, MoeProblem* p) {
  *p = MoeProblem{};
  // x fixes T, H and the activation dtype; w13 fixes E and I; the rest must agree.
  TMOE_RETURN_IF_ERROR(check_rank("x", a.x, 2));
  TMOE_RETURN_IF_ERROR(check_dtype("x", a.x, {TMOE_DTYPE_BF16, TMOE_DTYPE_F16, TMOE_DTYPE_F32}));
  p->T = a.x.shape[0];
  p->H = a.x.shape[1];
  p->dtype = a.x.dtype;
  if (p->H < 1) return Status::invalid("x: expected hidden size H >= 1, got shape " + shape_string(a.x));
  TMOE_RETURN_IF_ERROR(check_tensor("x", a.x, {{"T", p->T}, {"H", p->H}}));

  TMOE_RETURN_IF_ERROR(check_rank("w13", a.w13, 3));
  TMOE_RETURN_IF_ERROR(check_dtype("w13", a.w13, {p->dtype}));
  p->E = a.w13.shape[0];
  if (p->E < 1) return Status::invalid("w13: expected at least one expert, got shape " + shape_string(a.w13));
  if (a.w13.shape[1] < 2 || a.w13.shape[1] % 2 != 0) {
    return Status::invalid("w13: expected an even, non-zero dimension 1 (2*I: gate rows then up rows), got shape " +
                           shape_string(a.w13));
  }
  p->I = a.w13.shape[1] / 2;
  TMOE_RETURN_IF_ERROR(check_tensor("w13", a.w13, {{"E", p->E}, {"2*I", 2 * p->I}, {"H", p->H}}));

  TMOE_RETURN_IF_ERROR(check_dtype("w2", a.w2, {p->dtype}));
  TMOE_RETURN_IF_ERROR(check_tensor("w2", a.w2, {{"E", p->E}, {"H", p->H}, {"I", p->I}}));

  std::vector<ByteRange> inputs = {range_of("x", a.x), range_of("w13", a.w13), range_of("w2", a.w2)};
  if (present(a.router_logits)) {
    TMOE_RETURN_IF_ERROR(check_dtype("router_logits", a.router_logits,
                                     {TMOE_DTYPE_F32, TMOE_DTYPE_BF16, TMOE_DTYPE_F16}));
    TMOE_RETURN_IF_ERROR(check_tensor("router_logits", a.router_logits, {{"T", p->T}, {"E", p->E}}));
    TMOE_RETURN_IF_ERROR(check_routing_config(a.routing, p->E));
    p->k = a.routing.top_k;
    p->from_logits = true;
    p->logits = a.router_logits.data;
    p->logits_dtype = a.router_logits.dtype;
    p->routing.mode = a.routing.mode;
    p->routing.top_k = a.routing.top_k;
    p->routing.renormalize = a.routing.renormalize != 0;
    p->routing.n_group = a.routing.mode == TMOE_ROUTING_SIGMOID_GROUPED_TOPK ? a.routing.n_group : 1;
    p->routing.topk_group = a.routing.mode == TMOE_ROUTING_SIGMOID_GROUPED_TOPK ? a.routing.topk_group : 1;
    p->routing.routed_scaling_factor = a.routing.routed_scaling_factor;
    p->routing.correction_bias = static_cast<const float*>(a.routing.correction_bias.data);
    inputs.push_back(range_of("router_logits", a.router_logits));
    if (p->routing.correction_bias) inputs.push_back(range_of("routing.correction_bias", a.routing.correction_bias));
  } else {
    TMOE_RETURN_IF_ERROR(check_rank("topk_ids", a.topk_ids, 2));
    TMOE_RETURN_IF_ERROR(check_dtype("topk_ids", a.topk_ids, {TMOE_DTYPE_I32}));
    p->k = a.topk_ids.shape[1];
    if (p->k < 1 || p->k > p->E) {
      return Status::invalid("topk_ids: expected k (dimension 1) with 1 <= k <= E=" + std::to_string(p->E) +
                             ", got shape " + shape_string(a.topk_ids));
    }
    TMOE_RETURN_IF_ERROR(check_tensor("topk_ids", a.topk_ids, {{"T", p->T}, {"k", p->k}}));
    TMOE_RETURN_IF_ERROR(check_dtype("topk_weights", a.topk_weights, {TMOE_DTYPE_F32}));
    TMOE_RETURN_IF_ERROR(check_tensor("topk_weights", a.topk_weights, {{"T", p->T}, {"k", p->k}}));
    if (a.routing.top_k != 0 && a.routing.top_k != p->k) {
      return Status::invalid("routing.top_k: expected 0 or k=" + std::to_string(p->k) +
                             " (the width of topk_ids) when ids are given, got " + std::to_string(a.routing.top_k));
    }
    p->topk_ids = static_cast<const int32_t*>(a.topk_ids.data);
    p->topk_weights = static_cast<const float*>(a.topk_weights.data);
    inputs.push_back(range_of("topk_ids", a.topk_ids));
    inputs.push_back(range_of("topk_weights", a.topk_weights));
  }

  const bool has_sw13 = present(a.shared_w13), has_sw2 = present(a.shared_w2);
  if (has_sw13 != has_sw2) {
    return Status::invalid(std::string(has_sw13 ? "shared_w2" : "shared_w13") +
                           ": the shared expert needs both shared_w13 and shared_w2, got only one");
  }
  if (has_sw13) {
    TMOE_RETURN_IF_ERROR(check_rank("shared_w13", a.shared_w13, 2));
    TMOE_RETURN_IF_ERROR(check_dtype("shared_w13", a.shared_w13, {p->dtype}));
    if (a.shared_w13.shape[0] < 2 || a.shared_w13.shape[0] % 2 != 0) {
      return Status::invalid("shared_w13: expected an even, non-zero dimension 0 (2*Is), got shape " +
                             shape_string(a.shared_w13));
    }
    p->shared_I = a.shared_w13.shape[0] / 2;
    TMOE_RETURN_IF_ERROR(check_tensor("shared_w13", a.shared_w13, {{"2*Is", 2 * p->shared_I}, {"H", p->H}}));
    TMOE_RETURN_IF_ERROR(check_dtype("shared_w2", a.shared_w2, {p->dtype}));
    TMOE_RETURN_IF_ERROR(check_tensor("shared_w2", a.shared_w2, {{"H", p->H}, {"Is", p->shared_I}}));
    p->shared_w13 = a.shared_w13.data;
    p->shared_w2 = a.shared_w2.data;
    inputs.push_back(range_of("shared_w13", a.shared_w13));
    inputs.push_back(range_of("shared_w2", a.shared_w2));
  }

  TMOE_RETURN_IF_ERROR(check_dtype("out", a.out, {p->dtype}));
  TMOE_RETURN_IF_ERROR(check_tensor("out", a.out, {{"T", p->T}, {"H", p->H}}));
  const ByteRange out = range_of("out", a.out);
  for (const ByteRange& in : inputs) {
    if (out.begin < out.end && in.begin < in.end && out.begin < in.end && in.begin < out.end) {
      return Status::invalid(std::string("out: overlaps input ") + in.name + "; out must be a separate buffer");
    }
  }

  p->x = a.x.data;
  p->w13 = a.w13.data;
  p->w2 = a.w2.data;
  p->out = a.out.data;
  return Status::ok();
}

Status validate_routing_values(const MoeProblem& p) {
  if (p.routed_from_logits()) return Status::ok();
  const int64_t n = p.T * p.k;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t e = p.topk_ids[i];
    if (e < 0 || e >= p.E) {
      return Status::invalid("topk_ids: expected expert ids in [0, E=" + std::to_string(p.E) + "), got " +
                             std::to_string(e) + " at token " + std::to_string(i / p.k) + ", slot " +
                             std::to_string(i % p.k));
    }
    const float w = p.topk_weights[i];
    if (!(w >= 0.0f) || !std::isfinite(w)) {
      return Status::invalid("topk_weights: expected finite weights >= 0, got " + std::to_string(w) +
                             " at token " + std::to_string(i / p.k) + ", slot " + std::to_string(i % p.k));
    }
  }
  return Status::ok();
}

}  // namespace tmoe
