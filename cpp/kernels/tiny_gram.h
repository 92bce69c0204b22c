#pragma once
/// \file tiny_gram.h
/// Singular values of one tiny matrix (k = min(m, n) ≤ 4, max(m, n) ≤ 64) from its float64 Gram
/// matrix by cyclic Jacobi, held in registers. The GPU runs it with one thread per matrix (route
/// gpu-tiny-gram: batches of 3×3 convolution kernels and the like, where a thread block per matrix
/// would be mostly idle). It is compiled for the host as well, so that the CPU tests check this very
/// code (rankscope._core._tiny_gram_svals).

#include <cfloat>
#include <cmath>
#include <cstdint>

#if !defined(RS_HD) && defined(__CUDACC__)
#define RS_HD __host__ __device__
#elif !defined(RS_HD)
#define RS_HD
#endif

namespace rankscope::tiny {

constexpr int kMaxK = 4;   ///< largest min(m, n) of the route
constexpr int kMaxL = 64;  ///< largest max(m, n): one thread reads the whole matrix

/// 2^-(e+1) with |x|·scale in [0.5, 1) for x = amax; 1 for 0, NaN and Inf; at most 2^1000 (subnormal
/// maxima). The scaling of float64 inputs in every GPU kernel (cuda/kernels.cu).
RS_HD inline double unit_scale(double amax) {
  if (!(amax > 0.0) || !(amax <= DBL_MAX)) return 1.0;
  int q = -(std::ilogb(amax) + 1);
  q = q > 1000 ? 1000 : q;
  return std::scalbn(1.0, q);
}

/// `at(l, i)` is C(l, i) as a double (l < L, i < k), C the tall view of the matrix (A, or Aᵀ when A is
/// wide). Writes the k singular values, descending, through put(i, value) and returns 0; or writes NaN
/// and returns 1 when C holds NaN/Inf, 2 when Jacobi does not converge in 30 sweeps (never seen: it
/// converges quadratically). `unit_scaled` (float64 inputs) scales C to max |C| in [0.5, 1) first, so
/// that its Gram matrix can neither overflow nor underflow; narrower inputs cannot do either.
/// Rotations follow the symmetric Schur decomposition (Golub & Van Loan, Alg. 8.5.1) with the
/// threshold |g_pq| ≤ eps·sqrt(|g_pp·g_qq|) of Demmel & Veselić.
template <int K, class At, class Put>
RS_HD int gram_svals(const At& at, int64_t L, int k, bool unit_scaled, const Put& put) {
  const double nan = NAN;
  bool finite = true;
  double scale = 1.0;
  if (unit_scaled) {
    double amax = 0.0;
    for (int64_t l = 0; l < L; ++l)
      for (int i = 0; i < k; ++i) {
        const double v = std::fabs(at(l, i));
        if (!(v <= DBL_MAX)) finite = false;
        else amax = v > amax ? v : amax;
      }
    scale = unit_scale(amax);
  }
  double g[K][K];
#pragma unroll
  for (int i = 0; i < K; ++i)
#pragma unroll
    for (int j = 0; j < K; ++j) g[i][j] = 0.0;
  for (int64_t l = 0; l < L; ++l) {
    double c[K];
#pragma unroll
    for (int i = 0; i < K; ++i) {
      double v = i < k ? at(l, i) * scale : 0.0;
      if (!(std::fabs(v) <= DBL_MAX)) {
        finite = false;
        v = 0.0;
      }
      c[i] = v;
    }
#pragma unroll
    for (int i = 0; i < K; ++i)
#pragma unroll
      for (int j = 0; j <= i; ++j) g[i][j] += c[i] * c[j];
  }
  if (!finite) {
    for (int i = 0; i < k; ++i) put(i, nan);
    return 1;
  }
#pragma unroll
  for (int i = 0; i < K; ++i)
#pragma unroll
    for (int j = 0; j < i; ++j) g[j][i] = g[i][j];

  bool converged = false;
  for (int sweep = 0; sweep < 30 && !converged; ++sweep) {
    converged = true;
#pragma unroll
    for (int p = 0; p < K - 1; ++p)
#pragma unroll
      for (int q = p + 1; q < K; ++q) {
        const double apq = g[p][q];
        if (q >= k || !(std::fabs(apq) > DBL_EPSILON * std::sqrt(std::fabs(g[p][p] * g[q][q])))) continue;
        converged = false;
        const double tau = (g[q][q] - g[p][p]) / (2.0 * apq);
        const double t = (tau >= 0.0 ? 1.0 : -1.0) / (std::fabs(tau) + std::hypot(1.0, tau));
        const double cs = 1.0 / std::sqrt(1.0 + t * t), sn = t * cs;
        g[p][p] -= t * apq;
        g[q][q] += t * apq;
        g[p][q] = g[q][p] = 0.0;
#pragma unroll
        for (int r = 0; r < K; ++r) {
          if (r == p || r == q) continue;
          const double grp = g[r][p], grq = g[r][q];
          g[r][p] = g[p][r] = cs * grp - sn * grq;
          g[r][q] = g[q][r] = sn * grp + cs * grq;
        }
      }
  }
  if (!converged) {
    for (int i = 0; i < k; ++i) put(i, nan);
    return 2;
  }
  double w[K];
#pragma unroll
  for (int i = 0; i < K; ++i) w[i] = g[i][i];
  // descending bubble sort of the first k, unrolled so that w stays in registers
#pragma unroll
  for (int i = 0; i < K - 1; ++i)
#pragma unroll
    for (int j = 0; j < K - 1 - i; ++j)
      if (j + 1 < k && w[j] < w[j + 1]) {
        const double x = w[j];
        w[j] = w[j + 1];
        w[j + 1] = x;
      }
#pragma unroll
  for (int i = 0; i < K; ++i)
    if (i < k) put(i, std::sqrt(w[i] > 0.0 ? w[i] : 0.0) / scale);
  return 0;
}

/// gram_svals with K = k (1 ≤ k ≤ kMaxK), so that small k keep small registers.
template <class At, class Put>
RS_HD int gram_svals_k(const At& at, int64_t L, int k, bool unit_scaled, const Put& put) {
  switch (k) {
    case 1: return gram_svals<1>(at, L, k, unit_scaled, put);
    case 2: return gram_svals<2>(at, L, k, unit_scaled, put);
    case 3: return gram_svals<3>(at, L, k, unit_scaled, put);
    default: return gram_svals<kMaxK>(at, L, k, unit_scaled, put);
  }
}

}  // namespace rankscope::tiny
