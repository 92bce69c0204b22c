#pragma once
/// \file engine.h
/// The CUDA engine: routes each group of same-shape matrices, chunks it to the workspace budget and
/// queues the work on the caller's stream. Synchronises that stream (never the device) only to read
/// the per-matrix status back when asked to.

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "kernels.cuh"
#include "rankscope/engine.h"

namespace rankscope::cuda {

enum class Route { TinyGram, SmallGram, Gram, GramSyev, ExactJacobi, ExactGesvd };

/// Name of a route, as tests and benchmarks print it ("exact-..." routes compute in float64 directly).
const char* route_name(Route r);

/// The route of `count` matrices m × n of `dtype` under `method` on a GPU with `sm_count` SMs.
Route choose_route(DType dtype, int64_t m, int64_t n, int64_t count, Method method, int sm_count);

/// One group (a regular batch, or matrices of one shape from a list). `d_status` has a byte per
/// matrix of the call, indexed as the set says.
struct Call {
  int device;
  cudaStream_t stream;
  Method method;
  int8_t* d_status;
};

/// Singular values of every matrix of a regular batch (`set.descs` null) into its outputs. `status`
/// (count bytes) is filled when `sync` is true; otherwise the call returns without waiting.
void svdvals_batch(int device, cudaStream_t stream, const MatrixSet& set, Method method, bool sync, int8_t* status);

/// Queues the singular values of a regular batch on `stream` (whose context the caller may not hold
/// locked) and writes each matrix's status byte to device memory `d_status` (count bytes, zeroed
/// here). Returns at once.
void queue_batch(int device, cudaStream_t stream, const MatrixSet& set, Method method, int8_t* d_status);

/// The same for a list of matrices of any shapes (all on `device`); outputs are 1-D of length min(m, n).
void svdvals_list(int device, cudaStream_t stream, const std::vector<MatrixRef>& in,
                  const std::vector<VectorOut>& out, Method method, bool sync, int8_t* status);

}  // namespace rankscope::cuda
