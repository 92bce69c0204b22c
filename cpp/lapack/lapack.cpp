#include "lapack/lapack.h"

#include <climits>
#include <vector>

#include "rankscope/errors.h"

// Fortran LAPACK/BLAS from scipy-openblas32: 32-bit ints; trailing hidden lengths of character args.
extern "C" {
void scipy_dsytrd_(const char* uplo, const int* n, double* a, const int* lda, double* d, double* e, double* tau,
                   double* work, const int* lwork, int* info, size_t);
void scipy_dsytrd_2stage_(const char* vect, const char* uplo, const int* n, double* a, const int* lda, double* d,
                          double* e, double* tau, double* hous2, const int* lhous2, double* work,
                          const int* lwork, int* info, size_t, size_t);
void scipy_dgesdd_(const char* jobz, const int* m, const int* n, double* a, const int* lda, double* s,
                   double* u, const int* ldu, double* vt, const int* ldvt, double* work, const int* lwork,
                   int* iwork, int* info, size_t);
void scipy_openblas_set_num_threads(int);
int scipy_openblas_get_num_threads(void);
char* scipy_openblas_get_config(void);
}

namespace rankscope::lapack {

int checked_int(int64_t v, const char* what) {
  RS_CHECK(v >= 0 && v <= INT_MAX, InvalidArgument, what, " = ", v,
           " does not fit LAPACK's 32-bit integers (at most ", INT_MAX, ")");
  return static_cast<int>(v);
}

namespace {
// Per-thread scratch for LAPACK work arrays, grown on demand.
struct Scratch {
  std::vector<double> work;
  std::vector<int> iwork;
  double* w(size_t n) {
    if (work.size() < n) work.resize(n);
    return work.data();
  }
  int* iw(size_t n) {
    if (iwork.size() < n) iwork.resize(n);
    return iwork.data();
  }
};
thread_local Scratch scratch;

void check_args(int info, const char* routine) {
  RS_CHECK(info >= 0, LinAlgError, routine, ": argument ", -info, " had an illegal value");
}
}  // namespace

int sytrd(int n, double* a, int lda, double* d, double* e, bool two_stage) {
  int info = 0, lwork = -1, lhous = -1;
  double wq = 0, hq = 0;
  // tau and the 2-stage Householder data (not needed for eigenvalues) share the work array's front
  if (two_stage) {
    scipy_dsytrd_2stage_("N", "L", &n, a, &lda, d, e, &wq, &hq, &lhous, &wq, &lwork, &info, 1, 1);
    check_args(info, "dsytrd_2stage (workspace query)");
    lhous = static_cast<int>(hq) + 1;
    lwork = static_cast<int>(wq) + 1;
    double* w = scratch.w(static_cast<size_t>(n) + lhous + lwork);
    scipy_dsytrd_2stage_("N", "L", &n, a, &lda, d, e, w, w + n, &lhous, w + n + lhous, &lwork, &info, 1, 1);
    check_args(info, "dsytrd_2stage");
    return info;
  }
  scipy_dsytrd_("L", &n, a, &lda, d, e, &wq, &wq, &lwork, &info, 1);
  check_args(info, "dsytrd (workspace query)");
  lwork = static_cast<int>(wq) + 1;
  double* w = scratch.w(static_cast<size_t>(n) + lwork);
  scipy_dsytrd_("L", &n, a, &lda, d, e, w, w + n, &lwork, &info, 1);
  check_args(info, "dsytrd");
  return info;
}

int gesdd_values(int m, int n, double* a, int lda, double* s) {
  int info = 0, lwork = -1, one = 1;
  double wq = 0, dummy = 0;
  const int k = m < n ? m : n;
  int* iwork = scratch.iw(8 * static_cast<size_t>(k > 0 ? k : 1));
  scipy_dgesdd_("N", &m, &n, a, &lda, s, &dummy, &one, &dummy, &one, &wq, &lwork, iwork, &info, 1);
  check_args(info, "dgesdd (workspace query)");
  lwork = static_cast<int>(wq) + 1;
  scipy_dgesdd_("N", &m, &n, a, &lda, s, &dummy, &one, &dummy, &one, scratch.w(lwork), &lwork, iwork, &info,
                1);
  check_args(info, "dgesdd");
  return info;
}

void set_blas_threads(int n) { scipy_openblas_set_num_threads(n); }
int blas_threads() { return scipy_openblas_get_num_threads(); }
const char* blas_config() { return scipy_openblas_get_config(); }

}  // namespace rankscope::lapack
