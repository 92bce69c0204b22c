#pragma once
/// \file metrics_impl.h
/// The body of metrics::compute, written once for the host (metrics.cpp) and the device (cuda/metrics.cu).
/// Plain loops and <cmath> only, so that nvcc can compile it as __host__ __device__.

#include <cmath>
#include <cstdint>

#include "metrics/metrics.h"

#if defined(__CUDACC__)
#define RS_HD __host__ __device__
#else
#define RS_HD
#endif

namespace rankscope::metrics {

/// `s[i]` is the i-th value as a double: a pointer on the host, a strided float32/float64 reader on
/// the device.
template <class Spectrum>
RS_HD void compute_impl(const Spectrum& s, int64_t k, RowTol rt, const Params& p, double* out) {
  const double nan = std::nan(""), inf = HUGE_VAL;
  for (int c = 0; c < kNumColumns; ++c) out[c] = 0.0;
  for (int64_t i = 0; i < k; ++i) {
    if (!std::isfinite(s[i])) {
      for (int c = 0; c < kNumColumns; ++c) out[c] = nan;
      out[kRank] = out[kRankLoss] = out[kWeakRankLoss] = out[kEnergyRank] = -1.0;
      return;
    }
  }
  if (k == 0) {
    out[kSvMin] = out[kSvMax] = out[kLog10SvMin] = out[kConditionNumber] = nan;
    return;
  }
  const double s1 = s[0], sk = s[k - 1];
  const double tol = rt.atol > rt.rtol * s1 ? rt.atol : rt.rtol * s1;
  int64_t rank = 0, weak = 0;
  for (int64_t i = 0; i < k; ++i) {
    rank += s[i] > tol;
    weak += s[i] * s[i] < p.weak_threshold;
  }
  out[kRank] = static_cast<double>(rank);
  out[kRankLoss] = static_cast<double>(k - rank);
  out[kWeakRankLoss] = static_cast<double>(weak);
  out[kTol] = tol;
  out[kSvMin] = sk;
  out[kSvMax] = s1;
  out[kLog10SvMin] = std::log10(sk);
  out[kConditionNumber] = sk > 0.0 ? s1 / sk : inf;
  if (s1 == 0.0) return;  // zero matrix: every rank-type metric stays 0

  // Ratios to s₁ keep sums of squares and fourth powers in range for any float64 spectrum.
  double sum_r = 0.0, sum_r2 = 0.0, sum_r4 = 0.0;
  for (int64_t i = 0; i < k; ++i) {
    const double r = s[i] / s1, r2 = r * r;
    sum_r += r;
    sum_r2 += r2;
    sum_r4 += r2 * r2;
  }
  double h = 0.0, h2 = 0.0, hm = 0.0;
  for (int64_t i = 0; i < k; ++i) {
    const double r = s[i] / s1;
    const double p1 = r / sum_r, p2 = r * r / sum_r2, pm = p1 + p.rankme_eps;
    if (p1 > 0.0) h -= p1 * std::log(p1);
    if (p2 > 0.0) h2 -= p2 * std::log(p2);
    if (pm > 0.0) hm -= pm * std::log(pm);  // eps = 0 is allowed: 0 ln 0 = 0 as for the others
  }
  out[kEffectiveRank] = std::exp(p.erank_on_s2 ? h2 : h);
  out[kRankMe] = std::exp(hm);
  out[kStableRank] = sum_r2;
  out[kParticipationRatio] = sum_r2 * sum_r2 / sum_r4;
  out[kNuclearRatio] = sum_r;
  // Smallest r with Σ_{i<r} l_i ≥ tau · Σ l; the same summation order makes r = k reachable for tau = 1.
  const double target = p.tau * sum_r2;
  double cum = 0.0;
  int64_t r = k;
  for (int64_t i = 0; i < k; ++i) {
    const double ri = s[i] / s1;
    cum += ri * ri;
    if (cum >= target) {
      r = i + 1;
      break;
    }
  }
  out[kEnergyRank] = static_cast<double>(r);
}

}  // namespace rankscope::metrics
