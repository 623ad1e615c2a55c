// An independent float64 reference of routing and of the whole MoE layer.
// It shares no computation with the backends (only the 16-bit decoders of
// core/numeric.hpp): plain loops in double, written for clarity, not speed.
#pragma once

#include <tmoe/tmoe.h>

#include <cstdint>
#include <vector>

namespace tmoe::reference {

struct Routed {
  std::vector<int32_t> ids;      // [T*k]
  std::vector<double> weights;   // [T*k]
};

// Routing in float64 with the semantics documented in tmoe.h.
// logits: [T*E] row-major; routing.correction_bias read as host f32 when present.
Routed route(const tmoe_routing& routing, const std::vector<double>& logits, int64_t T, int64_t E);

// The layer in float64 for the token rows listed (host memory in `args`;
// out is not read). Routes from args.router_logits when present, else uses the
// given ids and weights. Returns [rows.size() * H].
std::vector<double> moe_layer(const tmoe_moe_args& args, const std::vector<int64_t>& rows);

// ||actual - ref|| / ||ref|| (NaN in actual gives NaN). If ref is all zeros,
// returns ||actual||.
double relative_l2(const std::vector<double>& ref, const std::vector<double>& actual);

}  // namespace tmoe::reference
