// A validated MoE layer call: sizes, dtypes and pointers, backend-neutral.
#pragma once

#include <tmoe/tmoe.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "core/status.hpp"

namespace tmoe {

size_t dtype_size(tmoe_dtype dtype);

// The integer a C caller stored in an enum field. Loading a value outside the
// enumerators as the C++ enum type is undefined, so checks read the bits.
template <typename Enum>
int32_t enum_bits(const Enum& value) {
  static_assert(sizeof(Enum) == sizeof(int32_t), "C enums are int-sized on every supported ABI");
  int32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

struct RoutingConfig {
  tmoe_routing_mode mode = TMOE_ROUTING_SOFTMAX_TOPK;
  int64_t top_k = 1;
  bool renormalize = false;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  float routed_scaling_factor = 1.0f;
  const float* correction_bias = nullptr;  // [E] or null
};

struct MoeProblem {
  int64_t T = 0;         // tokens
  int64_t H = 0;         // hidden size
  int64_t I = 0;         // expert intermediate size
  int64_t E = 0;         // experts
  int64_t k = 0;         // experts per token
  int64_t shared_I = 0;  // shared-expert intermediate size, 0 when absent
  tmoe_dtype dtype = TMOE_DTYPE_BF16;         // x, weights and out
  tmoe_dtype logits_dtype = TMOE_DTYPE_F32;   // when routed from logits

  bool routed_from_logits() const { return from_logits; }
  bool has_shared_expert() const { return shared_I > 0; }

  bool from_logits = false;  // router_logits given (else topk_ids/topk_weights)
  RoutingConfig routing;

  const void* x = nullptr;
  const void* logits = nullptr;        // [T,E] or null
  const int32_t* topk_ids = nullptr;   // [T,k] when logits is null
  const float* topk_weights = nullptr; // [T,k] when logits is null
  const void* w13 = nullptr;           // [E,2I,H]
  const void* w2 = nullptr;            // [E,H,I]
  const void* shared_w13 = nullptr;    // [2*shared_I,H] or null
  const void* shared_w2 = nullptr;     // [H,shared_I] or null
  void* out = nullptr;                 // [T,H]
};

// Checks shapes, dtypes, strides, pointers and overlap; fills `problem`.
// Reads no tensor data, so it is safe for device pointers.
Status validate_moe_args(const tmoe_moe_args& args, MoeProblem* problem);

// Checks routing values a caller gave (ids in [0,E), weights finite and >= 0).
// Reads the data: host memory only.
Status validate_routing_values(const MoeProblem& problem);

}  // namespace tmoe
