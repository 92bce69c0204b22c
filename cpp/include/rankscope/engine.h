#pragma once
/// \file engine.h
/// The CPU engine: values-only singular values of many matrices of any shapes, spread over a thread
/// pool. Callers (the bindings) validate and allocate; the engine only reads inputs and fills outputs.

#include <cstdint>
#include <vector>

#include "rankscope/array_view.h"

namespace rankscope {

/// How singular values are computed (METRICS.md §0).
enum class Method : uint8_t {
  Auto,   ///< Gram for float32 and narrower inputs, Exact for float64.
  Exact,  ///< LAPACK dgesdd, values only, in float64.
  Gram,   ///< float64 Gram of the smaller side, then symmetric tridiagonal eigenvalues.
};

/// Per-matrix outcome written by svdvals().
enum Status : int8_t {
  kOk = 0,
  kNonFinite = 1,      ///< the input holds NaN or Inf; its values are NaN
  kNoConvergence = 2,  ///< LAPACK did not converge (after falling back to Exact); values are NaN
};

/// Writes the min(m, n) singular values of `in[i]`, descending, to `out[i]` (float32 or float64), and
/// its Status to `status[i]`. Matrices of the same shape and route share work; memory use is bounded
/// by per-thread workspaces for the largest matrix (never a float64 copy of the whole batch). A
/// failure in one matrix affects only its own output. Blocks until done; call without the GIL.
void svdvals(const std::vector<MatrixRef>& in, const std::vector<VectorOut>& out, Method method,
             int8_t* status);

/// The route svdvals() takes for one matrix: "compact-gram", "gram", "gram-2stage" or "exact".
const char* route_name(DType dtype, int64_t m, int64_t n, Method method);

/// Largest smaller side handled by the batch-interleaved kernels.
int64_t compact_max_k();

/// Threads used by svdvals() (the calling thread included); n <= 0 restores the default (the CPUs
/// this process may run on, or RANKSCOPE_NUM_THREADS).
void set_num_threads(int n);
int num_threads();

}  // namespace rankscope
