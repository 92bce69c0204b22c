#include "lapack/blas.h"

#include <cstddef>

// Fortran BLAS from scipy-openblas32: 32-bit ints; trailing hidden lengths of character args.
extern "C" {
void scipy_ssyrk_(const char*, const char*, const int*, const int*, const float*, const float*, const int*,
                  const float*, float*, const int*, size_t, size_t);
void scipy_dsyrk_(const char*, const char*, const int*, const int*, const double*, const double*, const int*,
                  const double*, double*, const int*, size_t, size_t);
void scipy_ssymm_(const char*, const char*, const int*, const int*, const float*, const float*, const int*,
                  const float*, const int*, const float*, float*, const int*, size_t, size_t);
void scipy_dsymm_(const char*, const char*, const int*, const int*, const double*, const double*, const int*,
                  const double*, const int*, const double*, double*, const int*, size_t, size_t);
void scipy_sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                  const int*, const float*, const int*, const float*, float*, const int*, size_t, size_t);
void scipy_dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
                  const int*, const double*, const int*, const double*, double*, const int*, size_t, size_t);
}

namespace rankscope::lapack {

template <>
void syrk<float>(char trans, int n, int k, float alpha, const float* a, int lda, float beta, float* c, int ldc) {
  scipy_ssyrk_("L", &trans, &n, &k, &alpha, a, &lda, &beta, c, &ldc, 1, 1);
}
template <>
void syrk<double>(char trans, int n, int k, double alpha, const double* a, int lda, double beta, double* c,
                  int ldc) {
  scipy_dsyrk_("L", &trans, &n, &k, &alpha, a, &lda, &beta, c, &ldc, 1, 1);
}

template <>
void symm<float>(char side, int m, int n, float alpha, const float* a, int lda, const float* b, int ldb,
                 float beta, float* c, int ldc) {
  scipy_ssymm_(&side, "L", &m, &n, &alpha, a, &lda, b, &ldb, &beta, c, &ldc, 1, 1);
}
template <>
void symm<double>(char side, int m, int n, double alpha, const double* a, int lda, const double* b, int ldb,
                  double beta, double* c, int ldc) {
  scipy_dsymm_(&side, "L", &m, &n, &alpha, a, &lda, b, &ldb, &beta, c, &ldc, 1, 1);
}

template <>
void gemm<float>(char ta, char tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
                 int ldb, float beta, float* c, int ldc) {
  scipy_sgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc, 1, 1);
}
template <>
void gemm<double>(char ta, char tb, int m, int n, int k, double alpha, const double* a, int lda, const double* b,
                  int ldb, double beta, double* c, int ldc) {
  scipy_dgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc, 1, 1);
}

}  // namespace rankscope::lapack
