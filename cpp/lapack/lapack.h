#pragma once
/// \file lapack.h
/// Typed float64 wrappers over the LAPACK/BLAS routines the CPU engine uses, from the scipy-openblas32
/// library (32-bit integers, symbols prefixed scipy_). Every narrowing to int is checked.

#include <cstdint>

namespace rankscope::lapack {

/// Checked narrowing of a size to LAPACK's 32-bit int; throws InvalidArgument naming `what`.
int checked_int(int64_t v, const char* what);

/// Tridiagonal form (diagonal d[0..n), off-diagonal e[0..n-1)) of the symmetric matrix in the lower
/// triangle of column-major `a`: dsytrd, or dsytrd_2stage (VECT = 'N') when `two_stage`. Destroys
/// `a`. Returns info.
int sytrd(int n, double* a, int lda, double* d, double* e, bool two_stage);

/// Singular values (descending) of the column-major m × n matrix `a` — dgesdd, JOBZ = 'N'.
/// Destroys `a`. Returns info (> 0: did not converge).
int gesdd_values(int m, int n, double* a, int lda, double* s);

/// OpenBLAS's own thread count (used inside one BLAS/LAPACK call).
void set_blas_threads(int n);
int blas_threads();

/// OpenBLAS's build description, e.g. "OpenBLAS 0.3.30 DYNAMIC_ARCH NO_AFFINITY SkylakeX MAX_THREADS=64".
const char* blas_config();

}  // namespace rankscope::lapack
