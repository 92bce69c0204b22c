#include "metrics/metrics.h"

#include "metrics/metrics_impl.h"

namespace rankscope::metrics {

const char* const kColumnNames[kNumColumns] = {
    "matrix_rank",  "rank_loss",     "weak_rank_loss", "sv_min",      "sv_max",
    "log10_sv_min", "condition_number", "effective_rank", "rankme",   "stable_rank",
    "participation_ratio", "nuclear_ratio", "energy_rank", "tol"};

void compute(const double* s, int64_t k, const RowTol& tol, const Params& p, double* out) {
  compute_impl(s, k, tol, p, out);
}

}  // namespace rankscope::metrics
