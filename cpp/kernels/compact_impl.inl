// Algorithm body of the compact kernels, compiled once per instruction set.
//
// The including TU defines, before including this file:
//   RS_COMPACT_ISA   namespace name of this variant (avx512, avx2, generic)
//   RS_GRAM_BI/BJ    register block of G in gram_accumulate (rows x columns of native vectors)
//   RS_TRD_CB        columns processed per pass in the tridiagonalisation
// Each variant works on the 8 lanes as 8/W slices of its native vector width W (8, 4, 2 doubles);
// block sizes differ per ISA because AVX-512 has 32 vector registers and AVX2/SSE2 only 16.
//
// Everything except the two entry points lives in an anonymous namespace and is force-inlined, and
// no std templates are used: with different -m flags per TU, a shared weak (COMDAT) symbol could be
// resolved by the linker to the AVX-512 copy and run on a machine without it.

#include <cstddef>

#include "compact.h"

// GCC 12 flags _mm512_undefined_pd() inside _mm512_sqrt_pd as maybe-uninitialized. Not
// pushed/popped: the warning is emitted after parsing, when a pop would already apply.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace rankscope::compact::RS_COMPACT_ISA {
namespace {

#define RS_INLINE inline __attribute__((always_inline))

// Native vector width W: the 8 lanes are processed as 8/W independent slices of W lanes each.
// (A 64-byte GCC vector on AVX2/SSE2 is lowered through the stack, so it is not used there.)
#if defined(__AVX512F__)
constexpr int W = 8;
#elif defined(__AVX__)
constexpr int W = 4;
#else
constexpr int W = 2;
#endif
static_assert(kLanes % W == 0, "lanes must split into native vectors");

typedef double vd __attribute__((vector_size(W * sizeof(double))));
typedef long long vm __attribute__((vector_size(W * sizeof(long long))));
// Memory view: no alignment assumption, may alias double arrays.
typedef double vd_mem __attribute__((vector_size(W * sizeof(double)), aligned(8), may_alias));

// Stride between consecutive matrix elements (in doubles); a slice starts at lane offset 0..L-W.
constexpr std::ptrdiff_t L = kLanes;

RS_INLINE vd ld(const double* p) { return *reinterpret_cast<const vd_mem*>(p); }
RS_INLINE void st(double* p, const vd& x) { *reinterpret_cast<vd_mem*>(p) = x; }
// Not vd{} + x: that turns -0.0 into +0.0.
RS_INLINE vd splat(double x) {
  vd v;
  for (int l = 0; l < W; ++l) v[l] = x;
  return v;
}
RS_INLINE vd select(const vm& m, const vd& a, const vd& b) { return m ? a : b; }

RS_INLINE vd vsqrt(const vd& x) {
#if defined(__AVX512F__)
  return (vd)_mm512_sqrt_pd((__m512d)x);
#elif defined(__AVX__)
  return (vd)_mm256_sqrt_pd((__m256d)x);
#elif defined(__SSE2__)
  return (vd)_mm_sqrt_pd((__m128d)x);
#else
  vd y = x;
  for (int l = 0; l < W; ++l) y[l] = __builtin_sqrt(y[l]);
  return y;
#endif
}

// |h| carrying the opposite sign of s, i.e. -copysign(h, s) for h >= 0.
RS_INLINE vd neg_copysign(const vd& h, const vd& s) {
  const vm sign = (vm)splat(-0.0);
  return (vd)(((vm)h & ~sign) | (~(vm)s & sign));
}

// ---------------------------------------------------------------------------------------------
// Gram

// G(i0:i0+BI, j0:j0+BJ) += X(i0:, 0:nc) X(j0:, 0:nc)^T, lower triangle only; X(i, c) at
// X[i*rs + c*cs]. Rows past k are clamped to k-1 (computed redundantly, never stored) so one
// kernel also serves the ragged edge.
template <int BI, int BJ>
RS_INLINE void gram_block(const double* __restrict X, std::ptrdiff_t rs, std::ptrdiff_t cs, int k,
                          int nc, double* __restrict G, int i0, int j0) {
  const double* xi[BI];
  const double* xj[BJ];
#pragma GCC unroll 16
  for (int a = 0; a < BI; ++a) xi[a] = X + (i0 + a < k ? i0 + a : k - 1) * rs;
#pragma GCC unroll 16
  for (int b = 0; b < BJ; ++b) xj[b] = X + (j0 + b < k ? j0 + b : k - 1) * rs;

  vd acc[BI][BJ];
#pragma GCC unroll 16
  for (int a = 0; a < BI; ++a)
#pragma GCC unroll 16
    for (int b = 0; b < BJ; ++b) acc[a][b] = vd{};

  for (int c = 0; c < nc; ++c) {
    const std::ptrdiff_t off = c * cs;
    vd y[BJ];
#pragma GCC unroll 16
    for (int b = 0; b < BJ; ++b) y[b] = ld(xj[b] + off);
#pragma GCC unroll 16
    for (int a = 0; a < BI; ++a) {
      const vd x = ld(xi[a] + off);
#pragma GCC unroll 16
      for (int b = 0; b < BJ; ++b) acc[a][b] += x * y[b];
    }
  }

#pragma GCC unroll 16
  for (int a = 0; a < BI; ++a)
#pragma GCC unroll 16
    for (int b = 0; b < BJ; ++b) {
      const int i = i0 + a, j = j0 + b;
      if (i < k && j <= i) {
        double* g = G + (std::ptrdiff_t(j) * k + i) * L;
        st(g, ld(g) + acc[a][b]);
      }
    }
}

template <int BI, int BJ>
RS_INLINE void gram_blocks(const double* X, std::ptrdiff_t rs, std::ptrdiff_t cs, int k, int nc,
                           double* G) {
  for (int j0 = 0; j0 < k; j0 += BJ)
    for (int i0 = j0 / BI * BI; i0 < k; i0 += BI) gram_block<BI, BJ>(X, rs, cs, k, nc, G, i0, j0);
}

void gram_impl(const double* X, int k, int r, double* G) {
  // Tried: chunking the columns to keep X in L1, and repacking chunks into contiguous row streams;
  // both were slower than letting G stay in registers for all r columns.
  gram_blocks<RS_GRAM_BI, RS_GRAM_BJ>(X, L, std::ptrdiff_t(k) * L, k, r, G);
}

// ---------------------------------------------------------------------------------------------
// Tridiagonalisation
//
// Step i reduces column i with v_i (stored in column i of A, rows i+1.., v_{i+1} = 1) and
// w_i = tau p - (tau^2/2)(p.v) v, p = A22 v, then A22 -= v w^T + w v^T. The rank-2 update of step i
// is fused with the symmetric matrix-vector product of step i+1: column i+1 is updated first, its
// Householder vector u computed, then one pass over the remaining columns both updates A and
// accumulates p = A u, so the trailing matrix is streamed once per step instead of twice.
// Scratch: w lives in d[r] (rows r > i are not final yet), p in e[r-1] (likewise).

// dlarfg on x = col[0 .. n) (stride L): returns tau and the new subdiagonal; overwrites col with
// v (v[0] = 1). Lanes with ||x[1:]|| == 0 get tau = 0, v = e_0 and never divide by zero.
RS_INLINE void householder(double* __restrict col, int n, vd& tau, vd& sub) {
  const vd alpha = ld(col);
  vd ss{};
  for (int q = 1; q < n; ++q) {
    const vd x = ld(col + q * L);
    ss += x * x;
  }
  const vm zero = ss == vd{};
  const vd beta = neg_copysign(vsqrt(alpha * alpha + ss), alpha);
  tau = select(zero, vd{}, (beta - alpha) / select(zero, splat(1.0), beta));
  const vd scal = select(zero, vd{}, splat(1.0) / select(zero, splat(1.0), alpha - beta));
  sub = select(zero, alpha, beta);
  st(col, splat(1.0));
  for (int q = 1; q < n; ++q) st(col + q * L, ld(col + q * L) * scal);
}

// One pass over columns c0 .. c0+CB-1 (rows c0..k-1) of A: if Update, A -= v w^T + w v^T; then
// p += A u (symmetric, lower triangle). v_r = V[r*L], w_r = W[r*L], u_r = U[r*L], p_r = P[r*L].
template <int CB, bool Update>
RS_INLINE void fused_cols(double* __restrict A, int k, int c0, const double* __restrict V,
                          const double* __restrict W, const double* __restrict U,
                          double* __restrict P) {
  const std::ptrdiff_t ld_a = std::ptrdiff_t(k) * L;
  double* col[CB];
  vd vc[CB], wc[CB], uc[CB], pc[CB];
#pragma GCC unroll 16
  for (int j = 0; j < CB; ++j) {
    col[j] = A + (c0 + j) * ld_a;
    if (Update) {
      vc[j] = ld(V + (c0 + j) * L);
      wc[j] = ld(W + (c0 + j) * L);
    }
    uc[j] = ld(U + (c0 + j) * L);
    pc[j] = vd{};
  }

  // Triangular head: rows c0 .. c0+CB-1.
#pragma GCC unroll 16
  for (int j = 0; j < CB; ++j)
#pragma GCC unroll 16
    for (int q = j; q < CB; ++q) {
      double* pa = col[j] + (c0 + q) * L;
      vd a = ld(pa);
      if (Update) {
        a -= vc[q] * wc[j] + wc[q] * vc[j];
        st(pa, a);
      }
      pc[q] += a * uc[j];
      if (q != j) pc[j] += a * uc[q];
    }

  // Rectangular part: rows c0+CB .. k-1.
#pragma GCC ivdep
  for (std::ptrdiff_t r = c0 + CB; r < k; ++r) {
    const vd ur = ld(U + r * L);
    vd vr{}, wr{};
    if (Update) {
      vr = ld(V + r * L);
      wr = ld(W + r * L);
    }
    vd pr = ld(P + r * L);
#pragma GCC unroll 16
    for (int j = 0; j < CB; ++j) {
      double* pa = col[j] + r * L;
      vd a = ld(pa);
      if (Update) {
        a -= vr * wc[j] + wr * vc[j];
        st(pa, a);
      }
      pr += a * uc[j];
      pc[j] += a * ur;
    }
    st(P + r * L, pr);
  }

#pragma GCC unroll 16
  for (int j = 0; j < CB; ++j) st(P + (c0 + j) * L, ld(P + (c0 + j) * L) + pc[j]);
}

// p over columns/rows c0..k-1: p = A u (after the optional update), CB columns per pass.
template <bool Update>
RS_INLINE void fused_pass(double* A, int k, int c0, const double* V, const double* W,
                          const double* U, double* P) {
  constexpr int CB = RS_TRD_CB;
  for (std::ptrdiff_t r = c0; r < k; ++r) st(P + r * L, vd{});
  int c = c0;
  for (; c + CB <= k; c += CB) fused_cols<CB, Update>(A, k, c, V, W, U, P);
  for (; c < k; ++c) fused_cols<1, Update>(A, k, c, V, W, U, P);
}

// p = tau p, w = p - (tau/2)(p.u) u over rows c0..k-1 (W may alias P).
RS_INLINE void make_w(int k, int c0, const vd& tau, const double* __restrict U, const double* P,
                      double* W) {
  vd s{};
  for (std::ptrdiff_t r = c0; r < k; ++r) s += ld(P + r * L) * ld(U + r * L);
  const vd half_tau2_s = splat(0.5) * tau * tau * s;
  for (std::ptrdiff_t r = c0; r < k; ++r)
    st(W + r * L, tau * ld(P + r * L) - half_tau2_s * ld(U + r * L));
}

void tridiag_impl(double* A, int k, double* d, double* e) {
  const std::ptrdiff_t ld_a = std::ptrdiff_t(k) * L;
  if (k == 1) {
    st(d, ld(A));
    return;
  }
  // Row r of p / w is stored at e[r-1] / d[r]; both indices are free until step r-1 / r ends.
  double* const P = e - L;  // only P + r*L with r >= 1 is ever formed
  double* const W = d;

  // Step 0: Householder of column 0, then p = A22 v without an update.
  vd tau, sub;
  st(d, ld(A));
  householder(A + L, k - 1, tau, sub);
  fused_pass<false>(A, k, 1, nullptr, nullptr, A, P);
  make_w(k, 1, tau, A, P, W);
  st(e, sub);

  for (int i = 0; i + 2 < k; ++i) {
    const double* V = A + i * ld_a;  // v_i, rows i+1..k-1
    double* colu = A + (i + 1) * ld_a;
    // Update column i+1 with step i's reflector, then reduce it.
    const vd v1 = ld(V + (i + 1) * L), w1 = ld(W + (i + 1) * L);
    for (std::ptrdiff_t r = i + 1; r < k; ++r)
      st(colu + r * L, ld(colu + r * L) - (ld(V + r * L) * w1 + ld(W + r * L) * v1));
    st(d + (i + 1) * L, ld(colu + (i + 1) * L));
    householder(colu + (i + 2) * L, k - i - 2, tau, sub);
    // Rank-2 update of columns i+2.. fused with p = A u, then w for step i+1 (measured 1.4x faster
    // than separate update and symv passes at k = 64: the trailing matrix lives in L2).
    fused_pass<true>(A, k, i + 2, V, W, colu, P);
    make_w(k, i + 2, tau, colu, P, W);
    st(e + (i + 1) * L, sub);
  }
  // Last diagonal element: A(k-1,k-1) -= 2 v w with step k-2's reflector.
  const vd vl = ld(A + (k - 2) * ld_a + (k - 1) * L), wl = ld(W + (k - 1) * L);
  st(d + (k - 1) * L, ld(A + (k - 1) * ld_a + (k - 1) * L) - splat(2.0) * vl * wl);
}

}  // namespace

void gram_accumulate(const double* X, int k, int r, double* G) {
  for (int lo = 0; lo < kLanes; lo += W) gram_impl(X + lo, k, r, G + lo);
}
void tridiagonalize(double* G, int k, double* d, double* e) {
  for (int lo = 0; lo < kLanes; lo += W) tridiag_impl(G + lo, k, d + lo, e + lo);
}

}  // namespace rankscope::compact::RS_COMPACT_ISA

#undef RS_INLINE
