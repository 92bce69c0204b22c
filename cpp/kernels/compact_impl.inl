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


// ---------------------------------------------------------------------------------------------
// Tridiagonal eigenvalues: LAPACK dsterf (Pal-Walker-Kahan root-free QL/QR) in lock-step.
//
// dsterf's cost is its QL sweeps, a chain of dependent divisions per row. Here the 8 lanes sweep
// together: per-lane bookkeeping (next unreduced block, scaling, deflation, 2x2 blocks, the shift)
// runs between sweeps, and one vector sweep runs over the union of the lanes' windows, each lane
// updating only the rows inside its own window (NS independent chains of WS lanes each).
// Differences from dsterf, none of which weakens its backward stability:
//  * Blocks dsterf runs by QR (bottom end smaller) are reversed in place and run by QL (QR on a
//    block is QL on the reversed block; the eigenvalues are returned unordered).
//  * Every block is scaled by a power of 2 (exactly) to max-norm in [1, 2); dsterf scales only
//    near over/underflow, by a rounded factor. Underflow then only causes absolute errors far
//    below eps times the block norm, which is what backward stability needs.
//  * The sweep step is rewritten with one division on the dependency chain instead of two:
//    with r = p + e^2, q = r p, h = p (d - sigma) - e^2 gamma, dsterf's c = p/r, s = e^2/r,
//    gamma' = c (d - sigma) - s gamma, p' = gamma'^2 / c become 1/r = p/q, c = p/r, s = e^2/r,
//    gamma' = h/r, p' = h^2/q (the same quantities, each within a few ulps). Rows where q or p'
//    leave [2^-900, 2^900] (p = 0 included) take dsterf's formulas instead.
//  * The deflation test on the rows a sweep changed is evaluated inside the sweep.

// Sweep vector width: 4 with AVX/AVX-512 (two independent chains of ymm; zmm measured ~1.6x slower
// per row on Sapphire Rapids, its division having twice the latency), 2 with SSE2 (four chains).
#ifndef RS_STE_W
#if defined(__AVX__)
#define RS_STE_W 4
#else
#define RS_STE_W 2
#endif
#endif

constexpr int NV = kLanes / W;
constexpr int WS = RS_STE_W;  // sweep vector width
constexpr int NS = kLanes / WS;
static_assert(kLanes % WS == 0, "lanes must split into sweep vectors");
typedef double vs __attribute__((vector_size(WS * sizeof(double))));
typedef long long vsm __attribute__((vector_size(WS * sizeof(long long))));
typedef double vs_mem __attribute__((vector_size(WS * sizeof(double)), aligned(8), may_alias));

RS_INLINE vs lds(const double* p) { return *reinterpret_cast<const vs_mem*>(p); }
RS_INLINE void sts(double* p, const vs& x) { *reinterpret_cast<vs_mem*>(p) = x; }
RS_INLINE vs splats(double x) {
  vs v;
  for (int l = 0; l < WS; ++l) v[l] = x;
  return v;
}
RS_INLINE vs sels(const vsm& m, const vs& a, const vs& b) { return m ? a : b; }
RS_INLINE vs vsqrts(const vs& x) {
#if RS_STE_W == 8 && defined(__AVX512F__)
  return (vs)_mm512_sqrt_pd((__m512d)x);
#elif RS_STE_W == 4 && defined(__AVX__)
  return (vs)_mm256_sqrt_pd((__m256d)x);
#elif RS_STE_W == 2 && defined(__SSE2__)
  return (vs)_mm_sqrt_pd((__m128d)x);
#else
  vs y = x;
  for (int l = 0; l < WS; ++l) y[l] = __builtin_sqrt(y[l]);
  return y;
#endif
}
// Hides x's value from the optimiser (no code).
RS_INLINE void opt_barrier(vs& x) {
#if defined(__AVX512F__)
  __asm__("" : "+v"(x));
#elif defined(__SSE2__)
  __asm__("" : "+x"(x));
#endif
}
RS_INLINE vs vabss(const vs& x) { return (vs)((vsm)x & ~(vsm)splats(-0.0)); }
RS_INLINE bool any_s(const vsm& m) {
#if RS_STE_W == 8 && defined(__AVX512DQ__)
  return _mm512_movepi64_mask((__m512i)m) != 0;
#elif RS_STE_W == 4 && defined(__AVX__)
  return _mm256_movemask_pd((__m256d)m) != 0;
#elif RS_STE_W == 2 && defined(__SSE2__)
  return _mm_movemask_pd((__m128d)m) != 0;
#else
  long long a = 0;
  for (int l = 0; l < WS; ++l) a |= m[l];
  return a != 0;
#endif
}

// dsterf's eps = dlamch('E'); its iteration limit 30 sweeps per row.
constexpr double kEps = 0x1p-53;
constexpr double kEps2 = kEps * kEps;
constexpr int kMaxIt = 30;

RS_INLINE double sabs(double x) { return __builtin_fabs(x); }
RS_INLINE vd vabs(const vd& x) { return (vd)((vm)x & ~(vm)splat(-0.0)); }

// 2^q for -1022 <= q <= 1023 (exact).
RS_INLINE double pow2(int q) {
  const unsigned long long b = (unsigned long long)(q + 1023) << 52;
  double x;
  __builtin_memcpy(&x, &b, sizeof x);
  return x;
}
// floor(log2(x)) for finite x > 0, subnormals included.
RS_INLINE int ilog2(double x) {
  int adj = 0;
  if (x < 0x1p-1022) {
    x *= 0x1p64;
    adj = 64;
  }
  unsigned long long b;
  __builtin_memcpy(&b, &x, sizeof b);
  return int((b >> 52) & 0x7ff) - 1023 - adj;
}

// Eigenvalues of [[a, b], [b, c]] as LAPACK dlae2 computes them (rt1 the larger in magnitude, rt2
// from the determinant so that it keeps its relative accuracy).
RS_INLINE void eig2x2(double a, double b, double c, double& rt1, double& rt2) {
  const double sm = a + c, adf = sabs(a - c), ab = sabs(b + b);
  const bool amax = sabs(a) > sabs(c);
  const double acmx = amax ? a : c, acmn = amax ? c : a;
  double rt;
  if (adf > ab) {
    const double t = ab / adf;
    rt = adf * __builtin_sqrt(1.0 + t * t);
  } else if (adf < ab) {
    const double t = adf / ab;
    rt = ab * __builtin_sqrt(1.0 + t * t);
  } else {
    rt = ab * 1.4142135623730951;
  }
  if (sm != 0.0) {
    rt1 = 0.5 * (sm < 0.0 ? sm - rt : sm + rt);
    rt2 = (acmx / rt1) * acmn - (b / rt1) * b;
  } else {
    rt1 = 0.5 * rt;
    rt2 = -0.5 * rt;
  }
}

// Per-lane state. The lane works on the unreduced block lsv..lendsv (scaled by 1/unscale, e
// squared, oriented for QL); l..lend is its unconverged part.
struct SteLane {
  int l1;         // first row not yet assigned to a block
  int l, lend;    // unconverged part of the current block
  int lsv, lendsv;
  int jtot;       // sweeps so far (dsterf's JTOT)
  int mhint;      // first negligible e(m) at or after l (m = lend if none), or -1 if unknown
  int mhint2;     // the same for l+1, valid once l has advanced past mhint == l
  double unscale;
  bool inblock;
};

// Advances lane j until it needs a QL sweep over l..m (returns 1 and sets m), has finished (0),
// or has used up its sweeps (-1).
RS_INLINE int ste_advance(double* __restrict d, double* __restrict e, int k, int j, SteLane& s,
                          int nmaxit, int& mret) {
#define RS_D(i) d[std::ptrdiff_t(i) * L + j]
#define RS_E(i) e[std::ptrdiff_t(i) * L + j]
  for (;;) {
    if (!s.inblock) {
      // Next unreduced block l..m (negligible e were zeroed by the splitting pass).
      const int l = s.l1;
      if (l >= k) return 0;
      int m = l;
      while (m < k - 1 && RS_E(m) != 0.0) ++m;
      s.l1 = m + 1;
      if (m == l) continue;  // 1x1: d(l) is an eigenvalue
      double anorm = 0.0;
      for (int i = l; i <= m; ++i) anorm = sabs(RS_D(i)) > anorm ? sabs(RS_D(i)) : anorm;
      for (int i = l; i < m; ++i) anorm = sabs(RS_E(i)) > anorm ? sabs(RS_E(i)) : anorm;
      // Scale to max-norm in [1, 2) by a power of 2 (exact), then square e. With the norm ~1,
      // underflow in the sweep only causes absolute errors far below eps.
      int q = -ilog2(anorm);
      q = q > 1000 ? 1000 : q;  // subnormal anorm: 2^1000 brings it above 2^-75 already
      const double sc = pow2(q);
      s.unscale = pow2(-q);
      for (int i = l; i <= m; ++i) RS_D(i) *= sc;
      for (int i = l; i < m; ++i) {
        const double x = RS_E(i) * sc;
        RS_E(i) = x * x;
      }
      // dsterf runs QR when |d(m)| < |d(l)|: reverse the block and run QL instead.
      if (sabs(RS_D(m)) < sabs(RS_D(l))) {
        for (int a = l, b = m; a < b; ++a, --b) {
          const double t = RS_D(a);
          RS_D(a) = RS_D(b);
          RS_D(b) = t;
        }
        for (int a = l, b = m - 1; a < b; ++a, --b) {
          const double t = RS_E(a);
          RS_E(a) = RS_E(b);
          RS_E(b) = t;
        }
      }
      s.l = s.lsv = l;
      s.lend = s.lendsv = m;
      s.mhint = s.mhint2 = -1;
      s.inblock = true;
    }
    // Look for a small (squared) subdiagonal element, unless the last sweep already did.
    const int l = s.l, lend = s.lend;
    int m;
    if (s.mhint >= 0) {
      m = s.mhint;
      s.mhint = m == l ? s.mhint2 : -1;
      s.mhint2 = -1;
    } else {
      m = l;
      while (m < lend && !(sabs(RS_E(m)) <= kEps2 * sabs(RS_D(m) * RS_D(m + 1)))) ++m;
    }
    if (m < lend) RS_E(m) = 0.0;
    if (m == l) {
      s.l = l + 1;  // d(l) converged
    } else if (m == l + 1) {
      double rt1, rt2;
      eig2x2(RS_D(l), __builtin_sqrt(RS_E(l)), RS_D(l + 1), rt1, rt2);
      RS_D(l) = rt1;
      RS_D(l + 1) = rt2;
      RS_E(l) = 0.0;
      s.l = l + 2;
    } else {
      if (s.jtot == nmaxit) return -1;
      ++s.jtot;
      mret = m;
      return 1;
    }
    if (s.l > lend) {  // block done: undo the scaling
      for (int i = s.lsv; i <= s.lendsv; ++i) RS_D(i) *= s.unscale;
      s.inblock = false;
    }
  }
#undef RS_D
#undef RS_E
}

// State of a lock-step QL sweep, NS chains of WS lanes: per lane lv = l, mv = m-1, sig = shift,
// hit = first row in l+1..m-1 found negligible (else m); entering row i: gamma, p, c (dsterf's),
// s (row i+1's), dn = old d(i+1), bp = old e(i+1), dn2 = new d(i+2).
struct SweepState {
  vs lv[NS], mv[NS], sig[NS], hit[NS];
  vs gamma[NS], p[NS], c[NS], s[NS], dn[NS], bp[NS], dn2[NS];
};
// Values of one row i: alpha = d(i), bb = e(i) (squared), r = p + bb, am = alpha - sigma, and
// the new gamma, p, c, s.
struct SweepRow {
  vs alpha[NS], bb[NS], r[NS], am[NS], g[NS], pn[NS], cn[NS], sn[NS];
};

// Row i with one division: q = r p, 1/r = p/q, gamma' = h/r, p' = h^2/q. Returns false (and the
// row must be redone by sweep_row_exact) if q or p' is out of the range where this is accurate
// in a lane that updates row i+1 (p = 0 included).
RS_INLINE bool sweep_row_fast(const double* __restrict d, const double* __restrict e,
                              std::ptrdiff_t i, const vs& iv, const SweepState& S, SweepRow& R) {
  vsm bad{};
#pragma GCC unroll 8
  for (int v = 0; v < NS; ++v) {
    const std::ptrdiff_t o = i * L + v * WS;
    R.alpha[v] = lds(d + o);
    R.bb[v] = lds(e + o);
    R.r[v] = S.p[v] + R.bb[v];
    R.am[v] = R.alpha[v] - S.sig[v];
    const vs q = R.r[v] * S.p[v];
    const vs qi = splats(1.0) / q;
    const vs h = S.p[v] * R.am[v] - R.bb[v] * S.gamma[v];
    const vs rinv = S.p[v] * qi;
    R.g[v] = h * rinv;
    R.sn[v] = R.bb[v] * rinv;
    R.cn[v] = S.p[v] * rinv;
    R.pn[v] = (h * h) * qi;
    // q + 1/q + p' <= 2^900 <=> q in ~[2^-900, 2^900] and p' <= ~2^900 (NaN fails): then
    // 1/q amplifies underflow errors to at most 2^-174 (the block norm is ~1).
    const vsm ok = (q + qi) + R.pn[v] <= splats(0x1p900);
    const vsm act = (iv >= S.lv[v]) & (iv <= S.mv[v]);
    bad |= act & ~ok;
  }
  return !any_s(bad);
}

// Row i with dsterf's formulas (three divisions).
RS_INLINE void sweep_row_exact(const double* __restrict d, const double* __restrict e,
                               std::ptrdiff_t i, const SweepState& S, SweepRow& R) {
#pragma GCC unroll 8
  for (int v = 0; v < NS; ++v) {
    const std::ptrdiff_t o = i * L + v * WS;
    R.alpha[v] = lds(d + o);
    R.bb[v] = lds(e + o);
    R.r[v] = S.p[v] + R.bb[v];
    R.am[v] = R.alpha[v] - S.sig[v];
    R.cn[v] = S.p[v] / R.r[v];
    R.sn[v] = R.bb[v] / R.r[v];
    R.g[v] = R.cn[v] * R.am[v] - R.sn[v] * S.gamma[v];
    R.pn[v] = sels(R.cn[v] != vs{}, R.g[v] * R.g[v] / R.cn[v], S.c[v] * R.bb[v]);
  }
}

// Stores rows i+1 (i+1 <= hi only unless First), runs dsterf's deflation test on row i+1, and
// moves the state to row i-1.
template <bool First>
RS_INLINE void sweep_commit(double* __restrict d, double* __restrict e, std::ptrdiff_t i,
                            const vs& iv, SweepState& S, const SweepRow& R) {
  const vs iv1 = iv + splats(1.0);
#pragma GCC unroll 8
  for (int v = 0; v < NS; ++v) {
    const std::ptrdiff_t o = i * L + v * WS;
    const vsm inl = iv >= S.lv[v];
    const vsm act = inl & (iv <= S.mv[v]);          // row i+1 is in the lane's window
    const vs dnew = S.gamma[v] + (R.alpha[v] - R.g[v]);  // new d(i+1) where act
    sts(d + o + L, sels(act, dnew, S.dn[v]));
    if (!First) {  // at row hi every lane starts: e(hi+1) is never updated
      const vsm cont = inl & (iv < S.mv[v]);        // act, and row i+1 is not the lane's first
      const vs enew = S.s[v] * R.r[v];               // new e(i+1) >= 0 where cont
      sts(e + o + L, sels(cont, enew, S.bp[v]));
      // dsterf's deflation test on row i+1, now final: |e(i+1)| <= eps^2 |d(i+1) d(i+2)|.
      const vsm small = enew <= splats(kEps2) * vabss(dnew * S.dn2[v]);
      S.hit[v] = sels(cont & small, iv1, S.hit[v]);
    }
    // At row l the lane ends: d(l) = sigma + gamma, e(l) = s p, stored by the next row (or after
    // the loop) as if they were the old values.
    const vsm fin = iv == S.lv[v];
    S.dn[v] = sels(fin, S.sig[v] + R.g[v], R.alpha[v]);
    S.bp[v] = sels(fin, R.sn[v] * R.pn[v], R.bb[v]);
    S.dn2[v] = dnew;
    // Row i-1: lanes still inside their window carry on, the others start fresh from d(i).
    const vsm next = (iv > S.lv[v]) & (iv <= S.mv[v]);
    // am^2 is formed apart so that the select stays a blend: folded into a masked multiply it
    // would put a multiply on the p -> p' dependency chain.
    vs am2 = R.am[v] * R.am[v];
    opt_barrier(am2);
    S.gamma[v] = sels(next, R.g[v], R.am[v]);
    S.p[v] = sels(next, R.pn[v], am2);
    S.c[v] = sels(next, R.cn[v], splats(1.0));
    S.s[v] = R.sn[v];
  }
}

// One QL sweep (dsterf's inner loop, with the shift applied) per lane over rows l..m, for all
// lanes at once over rows lo..hi+1. Per lane (arrays of kLanes doubles): lb = l, mb = m-1, sg =
// shift; lanes not sweeping have l = k+1, m-1 = -1 and are left unchanged. Rows outside a lane's
// window are rewritten with their old values. On return hitb[lane] is the first row i in l+1..m-1
// whose new e(i) is negligible (dsterf's test), else m.
RS_INLINE void ql_sweep(double* __restrict d, double* __restrict e, int lo, int hi,
                        const double* lb, const double* mb, const double* sg, double* hitb) {
  SweepState S;
  SweepRow R;
#pragma GCC unroll 8
  for (int v = 0; v < NS; ++v) {
    S.lv[v] = lds(lb + v * WS);
    S.mv[v] = lds(mb + v * WS);
    S.sig[v] = lds(sg + v * WS);
    S.hit[v] = S.mv[v] + splats(1.0);
    // Every lane is fresh at row hi: gamma = d(hi+1) - sigma (d(m) - sigma where m-1 = hi).
    S.dn[v] = lds(d + std::ptrdiff_t(hi + 1) * L + v * WS);
    S.gamma[v] = S.dn[v] - S.sig[v];
    S.p[v] = S.gamma[v] * S.gamma[v];
    S.c[v] = splats(1.0);
    S.bp[v] = S.s[v] = S.dn2[v] = vs{};
  }
  vs iv = splats(double(hi));
  if (!sweep_row_fast(d, e, hi, iv, S, R)) sweep_row_exact(d, e, hi, S, R);
  sweep_commit<true>(d, e, hi, iv, S, R);
  std::ptrdiff_t i = hi - 1;
  for (; i >= lo; --i) {
    iv -= splats(1.0);
    if (__builtin_expect(!sweep_row_fast(d, e, i, iv, S, R), 0)) break;
    sweep_commit<false>(d, e, i, iv, S, R);
  }
  // Rare: finish the sweep with dsterf's formulas from the row the fast step rejected.
  for (; i >= lo; --i) {
    sweep_row_exact(d, e, i, S, R);
    sweep_commit<false>(d, e, i, iv, S, R);
    iv -= splats(1.0);
  }
#pragma GCC unroll 8
  for (int v = 0; v < NS; ++v) {
    const std::ptrdiff_t o = std::ptrdiff_t(lo) * L + v * WS;
    sts(e + o, S.bp[v]);
    sts(d + o, S.dn[v]);
    sts(hitb + v * WS, S.hit[v]);
  }
}

unsigned tridiag_eig_impl(double* __restrict d, double* __restrict e, int k) {
  // Lanes holding NaN/Inf fail at once (they would only run into the iteration limit).
  unsigned bad = 0;
  {
    vd acc[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[v] = vd{};
    for (std::ptrdiff_t i = 0; i < k; ++i)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[v] += ld(d + i * L + v * W) * vd{};
    for (std::ptrdiff_t i = 0; i + 1 < k; ++i)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[v] += ld(e + i * L + v * W) * vd{};
    for (int j = 0; j < kLanes; ++j)
      if (!(acc[j / W][j % W] == 0.0)) bad |= 1u << j;
  }
  if (k == 1) return bad;

  // Split into unreduced blocks: e(i) = 0 where |e(i)| <= sqrt|d(i)| sqrt|d(i+1)| eps. (dsterf
  // tests this block by block on the not yet processed, i.e. original, data: the same result.)
  for (std::ptrdiff_t i = 0; i + 1 < k; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      const std::ptrdiff_t o = i * L + v * W;
      const vd x = ld(e + o);
      const vd t = vsqrt(vabs(ld(d + o))) * vsqrt(vabs(ld(d + o + L))) * splat(kEps);
      st(e + o, select(vabs(x) <= t, vd{}, x));
    }

  SteLane lane[kLanes];
  for (int j = 0; j < kLanes; ++j) {
    lane[j].l1 = 0;
    lane[j].jtot = 0;
    lane[j].inblock = false;
  }
  const int nmaxit = kMaxIt * k;
  unsigned live = ~bad & ((1u << kLanes) - 1);
  unsigned ready = 0;  // lanes whose next sweep was already set up after the last one
  alignas(64) double lb[kLanes], mb[kLanes], dl[kLanes], dl1[kLanes], el[kLanes], sg[kLanes],
      hit[kLanes];
  for (;;) {
    int lo = k, hi = -1;
    for (int j = 0; j < kLanes; ++j) {
      if (ready >> j & 1) {
        lo = int(lb[j]) < lo ? int(lb[j]) : lo;
        hi = int(mb[j]) > hi ? int(mb[j]) : hi;
        continue;
      }
      lb[j] = k + 1;
      mb[j] = -1;
      dl[j] = 0.0;
      dl1[j] = el[j] = 1.0;
      if (!(live >> j & 1)) continue;
      int m = 0;
      const int rc = ste_advance(d, e, k, j, lane[j], nmaxit, m);
      if (rc <= 0) {
        live &= ~(1u << j);
        if (rc < 0) bad |= 1u << j;
        continue;
      }
      const int l = lane[j].l;
      lb[j] = l;
      mb[j] = m - 1;
      dl[j] = d[std::ptrdiff_t(l) * L + j];
      dl1[j] = d[std::ptrdiff_t(l + 1) * L + j];
      el[j] = e[std::ptrdiff_t(l) * L + j];
      lo = l < lo ? l : lo;
      hi = m - 1 > hi ? m - 1 : hi;
    }
    if (hi < 0) break;
#pragma GCC unroll 8
    for (int v = 0; v < NS; ++v) {
      // dsterf's shift, the eigenvalue of the leading 2x2 [p, e; e, d1] nearer to p, written as
      // p - e^2 / (delta + sign(delta) sqrt(delta^2 + e^2)), delta = (d1 - p)/2 (one square root
      // and one division; no overflow as the block norm is ~1, and e^2 > 0 here).
      const vs p = lds(dl + v * WS), e2 = lds(el + v * WS);
      const vs delta = (lds(dl1 + v * WS) - p) * splats(0.5);
      const vs rt = vsqrts(delta * delta + e2);
      sts(sg + v * WS, p - e2 / (delta + (vs)(((vsm)rt & ~(vsm)splats(-0.0)) |
                                              ((vsm)delta & (vsm)splats(-0.0)))));
    }
    ql_sweep(d, e, lo, hi, lb, mb, sg, hit);
    // dsterf's next look for a small e, from row l: row l is tested here, rows l+1..m-1 were
    // tested by the sweep (first hit in hit[]). The common outcomes -- row l converged or not,
    // then another sweep over l..h or l+1..h -- set up the next sweep directly; the others are
    // left to ste_advance (through the hints).
    // Branch-free: the outcomes depend on the sweep's last rows, so mispredictions would cost.
    ready = 0;
    for (int j = 0; j < kLanes; ++j) {
      if (mb[j] < 0) continue;
      SteLane& s = lane[j];
      const int l = int(lb[j]), h = int(hit[j]);
      const std::ptrdiff_t o = std::ptrdiff_t(l) * L + j;
      const double eo = e[o];
      const bool small = sabs(eo) <= kEps2 * sabs(d[o] * d[o + L]);
      const int nl = l + small;
      const bool fast = (h >= nl + 2) & (s.jtot < nmaxit);
      // dsterf zeroes the negligible e it stops at (e(l), then e(h) if h < lend).
      e[o] = small ? 0.0 : eo;
      const std::ptrdiff_t oh = h < s.lend ? std::ptrdiff_t(h) * L + j : o;
      e[oh] = h < s.lend ? 0.0 : e[oh];
      s.mhint = small ? l : h;
      s.mhint2 = h;
      s.l = fast ? nl : l;
      s.jtot += fast;
      ready |= unsigned(fast) << j;
      const std::ptrdiff_t on = std::ptrdiff_t(nl) * L + j;
      lb[j] = nl;
      mb[j] = h - 1;
      dl[j] = d[on];
      dl1[j] = d[on + L];
      el[j] = e[on];
    }
  }
  return bad;
}

}  // namespace

void gram_accumulate(const double* X, int k, int r, double* G) {
  for (int lo = 0; lo < kLanes; lo += W) gram_impl(X + lo, k, r, G + lo);
}
void tridiagonalize(double* G, int k, double* d, double* e) {
  for (int lo = 0; lo < kLanes; lo += W) tridiag_impl(G + lo, k, d + lo, e + lo);
}
unsigned tridiag_eigvals(double* d, double* e, int k) { return tridiag_eig_impl(d, e, k); }

}  // namespace rankscope::compact::RS_COMPACT_ISA

#undef RS_INLINE
#undef RS_STE_W
