// The ceiling the CPU backend is measured against: OpenBLAS sgemm alone, timed
// on the same machine in the same run as the layer.
#pragma once

#include <cstdint>

namespace tmoe {

// Achieved GFLOP/s (2*m*n*kdim flops per call) of cblas_sgemm computing
// C[m,n] = A[m,kdim] * B[n,kdim]^T, B row-major [n,kdim] as the layer's weights
// are stored. Inputs are random (never zeros); one untimed warm-up call, then
// the median of `reps` timed calls. Returns 0 when a size or reps is below 1,
// or a size does not fit the BLAS integer.
double openblas_sgemm_gflops(int64_t m, int64_t n, int64_t kdim, int reps);

}  // namespace tmoe
