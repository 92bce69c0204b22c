#pragma once
/// \file penalties.h
/// VICReg and Barlow Twins penalties (METRICS.md §4) of batches of N × d matrices (rows = samples),
/// with their closed-form gradients. Callers (the bindings) validate and allocate; these functions
/// read the inputs and fill the outputs, one task per matrix (or pair), on the engine's thread pool.
///
/// Precision. Column means, variances, the invariance term, c_ii and every sum of squares over a
/// d × d or N × N matrix are accumulated in float64. The one product of each penalty (the d × d
/// covariance ZcᵀZc or the N × N Gram ZcZcᵀ, whichever is cheaper; Barlow Twins' ẑ₁ᵀẑ₂ or ẑ₁ẑ₁ᵀ, ẑ₂ẑ₂ᵀ)
/// is formed in the plan's work precision from the centred data: on the d × d side the input's own
/// precision (float32 for float32 and narrower inputs), on the N × N side always float64, because
/// there the off-diagonal sum is a difference ‖G‖_F² − Σ_j q_j² (see plan()).

#include <cstdint>
#include <vector>

#include "rankscope/array_view.h"

namespace rankscope::penalties {

/// Which product a penalty forms for one N × d matrix.
enum class Side : uint8_t {
  Features,  ///< the d × d matrix (ZcᵀZc; Barlow Twins: ẑ₁ᵀẑ₂), in the input's precision
  Gram,      ///< the N × N Gram matrix ZcZcᵀ (Barlow Twins: one per branch), in float64
};

/// The side, the work dtype of the saved matrices and their order k (d or N).
struct Plan {
  Side side;
  DType work;
  int64_t k;
};

/// Side choice by cost: the products cost ~3·N·d² flops on the d × d side and ~3·N²·d on the N × N
/// side (forward and backward alike), and float32 BLAS runs at twice the float64 rate. float64
/// inputs take the Gram side when d > N; float32 (and narrower) inputs when d > 2N.
Plan plan(DType dtype, int64_t n, int64_t d);

/// A writable N × d matrix: element (i, j) at `ptr + (i*rs + j*cs) * itemsize(dtype)`; float32/float64.
struct MatrixOut {
  void* ptr;
  DType dtype;
  int64_t rs, cs;
};

/// Per-matrix outcome of a forward pass.
enum Status : int8_t {
  kOk = 0,
  kNonFinite = 1,  ///< the input holds NaN or Inf; its results are NaN
};

// ---- VICReg ---------------------------------------------------------------------------------------

/// One branch Z (N × d) of one batch element. Optional pointers may be null.
struct VicregTask {
  MatrixRef z;
  MatrixRef other;       ///< the other branch, for the invariance term (ptr null: none)
  double* inv;           ///< out: mean((z − other)²) over all N·d entries (with `other`)
  double* var;           ///< out: mean_j relu(γ − s_j), s_j = sqrt(var_j + eps), var ddof 1 (no ½)
  double* cov;           ///< out: Σ_{i≠j} C_ij² / d, C = ZcᵀZc / (N − 1) (null: not computed)
  double* stats;         ///< out, for the backward: float64 [mean (d), var (d)]
  void* mat;             ///< out, for the backward: the product (k × k, plan's work dtype, lower triangle)
};

/// Fills every task's outputs; status[i] is task i's Status. Blocks; call without the GIL.
void vicreg_forward(const std::vector<VicregTask>& tasks, double gamma, double eps, int8_t* status);

/// The gradient of a_var · var + a_cov · cov + a_inv · inv with respect to one branch Z, from what
/// vicreg_forward saved (METRICS.md §4): a_cov · 4/(d(N−1)) · Zc · C_off
/// − a_var/(d(N−1)) · Zc · diag(1[s_j < γ]/s_j) + a_inv · 2(Z − other)/(N d).
struct VicregGradTask {
  MatrixRef z;
  MatrixRef other;       ///< ptr null: no invariance term
  const double* stats;   ///< [mean, var] as saved
  const void* mat;       ///< the saved product (null when a_cov is 0 or cov was not computed)
  double a_var, a_cov, a_inv;
  MatrixOut grad;
};

/// Fills every task's gradient. Blocks; call without the GIL.
void vicreg_backward(const std::vector<VicregGradTask>& tasks, double gamma, double eps);

/// Σ_{ij} (z − other)_ij² / (N d) for each task (z, other), in float64; status as vicreg_forward.
void invariance(const std::vector<VicregTask>& tasks, int8_t* status);

// ---- Barlow Twins ----------------------------------------------------------------------------------

/// One batch element: two branches, each batch-normalised without affine (biased variance, eps),
/// c = ẑ₁ᵀẑ₂ / N. Optional pointers may be null.
struct BarlowTask {
  MatrixRef z1, z2;
  double* on;     ///< out: Σ_i (1 − c_ii)²
  double* off;    ///< out: Σ_{i≠j} c_ij²
  double* stats;  ///< out, for the backward: float64 [mean₁, var₁, mean₂, var₂] (4 × d)
  double* cdiag;  ///< out, for the backward: c_ii (d), float64
  void* mat;      ///< out, for the backward: Features: ẑ₁ᵀẑ₂ (d × d); Gram: ẑ₁ẑ₁ᵀ then ẑ₂ẑ₂ᵀ (2 × N × N)
};

/// Fills every task's outputs; status[i] is task i's Status. Blocks; call without the GIL.
void barlow_forward(const std::vector<BarlowTask>& tasks, double eps, int8_t* status);

/// The gradients of a_on · on + a_off · off with respect to z1 and z2 (through the batch norm).
struct BarlowGradTask {
  MatrixRef z1, z2;
  const double* stats;
  const double* cdiag;
  const void* mat;
  double a_on, a_off;
  MatrixOut g1, g2;
};

/// Fills every task's gradients. Blocks; call without the GIL.
void barlow_backward(const std::vector<BarlowGradTask>& tasks, double eps);

}  // namespace rankscope::penalties
