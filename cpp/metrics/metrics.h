#pragma once
/// \file metrics.h
/// Rank and soft-rank metrics of one spectrum (METRICS.md §1–2), shared by every backend that
/// produces spectra on the host. One pass computes every metric; callers pick columns.

#include <cstdint>

namespace rankscope::metrics {

struct Params {
  double tau = 0.99;             ///< energy_rank threshold, in (0, 1]
  double rankme_eps = 1e-7;      ///< added to each probability in rankme
  bool erank_on_s2 = false;      ///< effective_rank on l = s² instead of s
  double weak_threshold = 1e-6;  ///< weak_rank_loss counts eigenvalues l = s² below this
};

/// The hard-rank tolerance of one spectrum: tol = max(atol, rtol · s₁). Every rank policy of
/// METRICS.md §1 is a choice of rtol (numpy: max(m, n) · eps, ...); the Python layer makes it.
struct RowTol {
  double rtol, atol;
};

/// Output columns, in order.
enum Column : int {
  kRank,
  kRankLoss,
  kWeakRankLoss,
  kSvMin,
  kSvMax,
  kLog10SvMin,
  kConditionNumber,
  kEffectiveRank,
  kRankMe,
  kStableRank,
  kParticipationRatio,
  kNuclearRatio,
  kEnergyRank,
  kTol,
  kNumColumns
};

/// Column names as the Python API spells them.
extern const char* const kColumnNames[kNumColumns];

/// Every metric of the spectrum s (non-negative, descending, length k) into out[0 .. kNumColumns).
/// Conventions: a zero spectrum gives 0 for every rank-type metric, condition_number inf and
/// log10_sv_min −inf; an empty one gives 0 ranks and NaN for sv_min/sv_max/log10_sv_min/
/// condition_number; a spectrum with NaN or Inf gives NaN everywhere and −1 for the counts.
void compute(const double* s, int64_t k, const RowTol& tol, const Params& p, double* out);

}  // namespace rankscope::metrics
