#pragma once
/// \file kernels.cuh
/// rankscope's own CUDA kernels and their launchers (kernels.cu). Every launcher queues work on
/// `stream` and returns at once.
///
/// Conventions: a group holds matrices of one shape m × n and dtype. k = min(m, n), L = max(m, n);
/// C(l, i), l < L, i < k, is A(l, i) for tall matrices (m ≥ n) and A(i, l) for wide ones, so the
/// Gram matrix CᵀC (k × k) is the smaller of AᵀA and AAᵀ. Status bytes: 0 ok, 1 NaN/Inf in the input,
/// 2 no convergence (those matrices' values are written as NaN).

#include <cuda_runtime.h>

#include <cstdint>

#include "rankscope/array_view.h"

namespace rankscope::cuda {

constexpr int kMaxBatchDims = 6;

/// One matrix of a ragged group, as uploaded to the device.
struct MatDesc {
  const void* in;
  void* out;
  int64_t rs, cs, os;  // element strides of the matrix rows/columns and of the output vector
  int64_t index;       // position in the caller's list (its status byte)
};

/// The matrices of one group, passed to kernels by value: either a regular strided batch (descs ==
/// nullptr; matrix b is at the multi-index of b in `shape`) or a device array of descriptors.
struct MatrixSet {
  DType dtype = DType::F32, otype = DType::F32;
  int64_t m = 0, n = 0, count = 0;
  const char* in = nullptr;
  char* out = nullptr;
  int nd = 0;
  int64_t shape[kMaxBatchDims] = {};
  int64_t istride[kMaxBatchDims] = {};  // elements
  int64_t ostride[kMaxBatchDims] = {};  // elements
  int64_t rs = 0, cs = 0, os = 0;
  const MatDesc* descs = nullptr;

  int64_t k() const { return m < n ? m : n; }
  int64_t L() const { return m < n ? n : m; }
};

/// Largest k handled by the in-shared-memory kernels.
constexpr int kSmallMaxK = 128;

/// float64 maxima of |A| of matrices b0 .. b0+nb of the set into `amax` (nb doubles, zeroed here).
void launch_absmax(const MatrixSet& s, int64_t b0, int64_t nb, double* amax, cudaStream_t stream);

/// Power-of-two scale factors 2^-e with |A|·scale in [0.5, 1) from the maxima (1 for 0, NaN, Inf).
void launch_unit_scale(double* amax_to_scale, int64_t nb, cudaStream_t stream);

/// C of matrices b0 .. b0+nb in float64, each L × k column-major (leading dimension L), times
/// scale[b] (all 1 when scale is null). NaN/Inf entries become 0 and set the matrix's status to 1.
void launch_to_tall_f64(const MatrixSet& s, int64_t b0, int64_t nb, const double* scale, double* c,
                        int8_t* status, cudaStream_t stream);

/// Tiny route (cpp/kernels/tiny_gram.h: k ≤ 4, L ≤ 64): float64 Gram and cyclic Jacobi in registers,
/// one thread per matrix; writes values and non-zero status bytes of matrices b0 .. b0+nb.
void launch_tiny_gram(const MatrixSet& s, int64_t b0, int64_t nb, int8_t* status, cudaStream_t stream);

/// Fused small route: Gram CᵀC in float64, then Householder tridiagonalisation, one block per matrix
/// with the Gram in shared memory. Writes diagonals d and off-diagonals e interleaved (d[i·nb + b]),
/// the scale used (float64 inputs are scaled to unit size; others are not) and NaN/Inf status.
/// Requires k ≤ kSmallMaxK.
void launch_small_gram_tridiag(const MatrixSet& s, int64_t b0, int64_t nb, double* d, double* e,
                               double* scale, int8_t* status, cudaStream_t stream);

/// Tridiagonalisation of nb float64 Gram matrices (k × k, lower triangle used, leading dimension k,
/// stride k²) into interleaved d, e. Requires k ≤ kSmallMaxK.
void launch_gram_tridiag(const double* g, int k, int64_t nb, double* d, double* e, cudaStream_t stream);

/// Eigenvalues of nb tridiagonal matrices (d, e interleaved as above) by dsterf's root-free QL, one
/// thread per matrix; writes sqrt(max(λ, 0)) / scale[b] descending into matrix b0+b's output, NaN
/// where the status is 1 or QL does not converge (status 2).
void launch_tridiag_svals(const MatrixSet& s, int64_t b0, int64_t nb, double* d, double* e,
                          const double* scale, int8_t* status, cudaStream_t stream);

/// Writes values of matrices b0 .. b0+nb to their outputs. `v` holds k values per matrix (stride k):
/// eigenvalues of the Gram, ascending (squares = true: σ = sqrt(max(λ, 0)), reversed), or singular
/// values, descending (squares = false). Divides by scale[b] (if not null); NaN where the status is 1
/// or info[b] ≠ 0 (status 2).
void launch_write_values(const MatrixSet& s, int64_t b0, int64_t nb, const double* v, bool squares,
                         const int* info, const double* scale, int8_t* status, cudaStream_t stream);

}  // namespace rankscope::cuda
