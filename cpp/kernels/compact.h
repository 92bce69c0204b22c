#pragma once
/// \file compact.h
/// Batch-interleaved ("compact") kernels for the singular values of many small matrices.
///
/// Eight independent matrices are processed at once, interleaved element by element so that the
/// eight values of one matrix position form one contiguous group of `kLanes` doubles (one AVX-512
/// register). Each lane is an independent problem; no computation mixes lanes.
///
/// Pipeline per group of 8 (k x L real matrices, k <= L):
///   1. zero G, then `gram_accumulate` over the columns of X (may be called repeatedly on
///      column panels of X to accumulate G = X X^T);
///   2. `tridiagonalize` G -> (d, e);
///   3. `tridiag_eigvals` on (d, e) gives the eigenvalues of G = squared singular values of X.
///
/// Memory: every pointer should be 64-byte aligned for speed (correct for any 8-byte alignment).
/// No padding beyond the sizes stated below is read or written. The functions allocate nothing and
/// are thread-safe (distinct buffers per thread). Instruction set is chosen once at first use
/// (AVX-512, AVX2+FMA or generic SSE2); the environment variable RANKSCOPE_ISA=generic|avx2|avx512
/// forces a lower one (a request above what the CPU supports falls back to the best supported).

namespace rankscope::compact {

/// Number of matrices processed together (interleaved lanes).
constexpr int kLanes = 8;

/// Gram accumulation G += X X^T for 8 interleaved matrices.
///
/// X holds 8 interleaved k x r blocks: element (i, c) of lane l is at X[(c*k + i)*kLanes + l],
/// 0 <= i < k, 0 <= c < r (size k*r*kLanes doubles).
/// G holds 8 interleaved k x k matrices, element (i, j) of lane l at G[(j*k + i)*kLanes + l]
/// (size k*k*kLanes doubles). Only the lower triangle including the diagonal (i >= j) is read and
/// updated; the upper triangle is not touched. Requires k >= 1, r >= 0.
void gram_accumulate(const double* X, int k, int r, double* G);

/// Householder tridiagonalisation of 8 interleaved symmetric matrices (as LAPACK dsytd2, uplo='L').
///
/// Reads the lower triangle (incl. diagonal) of G (layout as in gram_accumulate) and overwrites it
/// with workspace data (contents unspecified on return; the upper triangle is not touched).
/// Writes the diagonal d[i*kLanes + l] (0 <= i < k, size k*kLanes) and the off-diagonal
/// e[i*kLanes + l] (0 <= i < k-1, size (k-1)*kLanes; e is not accessed when k == 1) of the
/// tridiagonal matrices similar to G. Uses d and e as scratch while working; they must not
/// overlap G.
/// Lanes are independent: a NaN/Inf or zero matrix in one lane never affects another lane, and a
/// zero column (x-norm 0) gives tau = 0 without dividing by zero. No scaling is applied: the caller
/// should keep max|G| within ~1e-150..1e150 (e.g. scale X so that max|x| ~ 1). Requires k >= 1.
void tridiagonalize(double* G, int k, double* d, double* e);

/// Eigenvalues of the 8 interleaved symmetric tridiagonal matrices (d, e) as left by
/// tridiagonalize(), in any order, overwriting d[i*kLanes + l] (0 <= i < k); e is destroyed (not
/// accessed when k == 1). The numerics are LAPACK dsterf's (Pal-Walker-Kahan root-free QL/QR with
/// its splitting, QL/QR choice and block scaling), run on the 8 lanes in lock-step.
/// Lanes are independent: a lane holding NaN/Inf, or one that fails to converge within 30*k QL/QR
/// sweeps, sets bit l of the returned mask (its d is then unspecified) and never affects the other
/// lanes, and the call always terminates. A zero lane (e.g. padding) finishes without any sweep.
/// Requires k >= 1.
unsigned tridiag_eigvals(double* d, double* e, int k);

/// Name of the instruction set chosen at run time: "avx512", "avx2" or "generic".
const char* isa_name();

}  // namespace rankscope::compact
