#pragma once
/// \file blas.h
/// Typed float32/float64 wrappers over the Level-3 BLAS routines the engine and the penalties use (scipy-openblas32:
/// 32-bit integers, symbols prefixed scipy_). Column-major, as BLAS; callers pass checked ints
/// (lapack::checked_int). Lower triangles only for symmetric matrices.

namespace rankscope::lapack {

/// C (n × n, lower triangle) = alpha · op(A) op(A)ᵀ + beta · C — ?syrk. trans 'N': A is n × k;
/// trans 'T': A is k × n.
template <class T>
void syrk(char trans, int n, int k, T alpha, const T* a, int lda, T beta, T* c, int ldc);

/// C (m × n) = alpha · A B + beta · C (side 'L', A m × m) or alpha · B A + beta · C (side 'R',
/// A n × n), A symmetric and read from its lower triangle — ?symm.
template <class T>
void symm(char side, int m, int n, T alpha, const T* a, int lda, const T* b, int ldb, T beta, T* c, int ldc);

/// C (m × n) = alpha · op(A) op(B) + beta · C — ?gemm; op is 'N' or 'T'.
template <class T>
void gemm(char ta, char tb, int m, int n, int k, T alpha, const T* a, int lda, const T* b, int ldb, T beta, T* c,
          int ldc);

}  // namespace rankscope::lapack
