// Routing: router logits -> top-k expert ids and weights, with the exact
// semantics of the supported models (see tmoe.h for each mode). Computed in
// f32; ties in every top-k go to the lower index; chosen experts are listed by
// descending selection score.
#pragma once

#include <tmoe/tmoe.h>

#include <cstdint>

#include "core/problem.hpp"

namespace tmoe {

// logits [T,E] of logits_dtype (host memory); ids, weights [T,k].
void route(const RoutingConfig& config, const void* logits, tmoe_dtype logits_dtype, int64_t T, int64_t E,
           int32_t* ids, float* weights);

}  // namespace tmoe
