// rankscope's own kernels: conversion to float64, the fused small-matrix route (Gram + Householder
// tridiagonalisation in shared memory), dsterf's QL per thread, and the output writers.
#include "kernels.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <math_constants.h>

#include <cfloat>

#include "cuda_check.h"
#include "kernels/tiny_gram.h"

namespace rankscope::cuda {
namespace {

struct Mat {
  const char* in;
  char* out;
  int64_t rs, cs, os, index;
};

__device__ __forceinline__ Mat locate(const MatrixSet& s, int64_t b, int isz) {
  Mat r;
  if (s.descs) {
    const MatDesc& d = s.descs[b];
    r.in = static_cast<const char*>(d.in);
    r.out = static_cast<char*>(d.out);
    r.rs = d.rs;
    r.cs = d.cs;
    r.os = d.os;
    r.index = d.index;
    return r;
  }
  int64_t ioff = 0, ooff = 0, rem = b;
  for (int d = s.nd - 1; d >= 0; --d) {
    const int64_t i = rem % s.shape[d];
    rem /= s.shape[d];
    ioff += i * s.istride[d];
    ooff += i * s.ostride[d];
  }
  const int osz = s.otype == DType::F64 ? 8 : 4;
  r.in = s.in + ioff * isz;
  r.out = s.out + ooff * osz;
  r.rs = s.rs;
  r.cs = s.cs;
  r.os = s.os;
  r.index = b;
  return r;
}

template <class T>
__device__ __forceinline__ double load(const char* base, int64_t elem) {
  return static_cast<double>(reinterpret_cast<const T*>(base)[elem]);
}
template <>
__device__ __forceinline__ double load<__half>(const char* base, int64_t elem) {
  return static_cast<double>(__half2float(reinterpret_cast<const __half*>(base)[elem]));
}
template <>
__device__ __forceinline__ double load<__nv_bfloat16>(const char* base, int64_t elem) {
  return static_cast<double>(__bfloat162float(reinterpret_cast<const __nv_bfloat16*>(base)[elem]));
}

__device__ __forceinline__ void store_out(const Mat& mt, DType otype, int64_t i, double v) {
  if (otype == DType::F64)
    reinterpret_cast<double*>(mt.out)[i * mt.os] = v;
  else
    reinterpret_cast<float*>(mt.out)[i * mt.os] = static_cast<float>(v);
}

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ double warp_max(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Dispatches a templated kernel launch on the input dtype.
#define RS_CUDA_DISPATCH(dtype, T, ...)            \
  switch (dtype) {                                \
    case DType::F16: {                            \
      using T = __half;                           \
      __VA_ARGS__;                                \
    } break;                                      \
    case DType::BF16: {                           \
      using T = __nv_bfloat16;                    \
      __VA_ARGS__;                                \
    } break;                                      \
    case DType::F32: {                            \
      using T = float;                            \
      __VA_ARGS__;                                \
    } break;                                      \
    case DType::F64: {                            \
      using T = double;                           \
      __VA_ARGS__;                                \
    } break;                                      \
  }

// ---- maxima and scales ----------------------------------------------------------------------------

template <class T>
__global__ void absmax_kernel(MatrixSet s, int64_t b0, double* amax) {
  const int64_t bl = blockIdx.x;
  const Mat mt = locate(s, b0 + bl, sizeof(T));
  const int64_t total = s.m * s.n;
  const bool colmajor = llabs(mt.rs) < llabs(mt.cs);
  double mx = 0.0;
  for (int64_t e = int64_t(blockIdx.y) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.y) * blockDim.x) {
    const int64_t i = colmajor ? e % s.m : e / s.n, j = colmajor ? e / s.m : e % s.n;
    const double v = fabs(load<T>(mt.in, i * mt.rs + j * mt.cs));
    mx = (v > mx || v != v) ? v : mx;  // NaN wins
  }
  mx = warp_max(mx);
  if ((threadIdx.x & 31) == 0) {
    // Non-negative doubles (NaN's bits included) order like their bit patterns.
    atomicMax(reinterpret_cast<unsigned long long*>(amax + bl), static_cast<unsigned long long>(__double_as_longlong(mx)));
  }
}

__global__ void unit_scale_kernel(double* a, int64_t nb) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b < nb) a[b] = tiny::unit_scale(a[b]);
}

// ---- float64 tall copies ---------------------------------------------------------------------------

template <class T>
__global__ void to_tall_kernel(MatrixSet s, int64_t b0, const double* scale, double* c, int8_t* status) {
  __shared__ double tile[32][33];
  const int64_t bl = blockIdx.x;
  const Mat mt = locate(s, b0 + bl, sizeof(T));
  const bool tall = s.m >= s.n;
  const int64_t k = tall ? s.n : s.m, L = tall ? s.m : s.n;
  const int64_t sl = tall ? mt.rs : mt.cs, si = tall ? mt.cs : mt.rs;
  const bool i_fast = llabs(si) <= llabs(sl);
  const double sc = scale ? scale[bl] : 1.0;
  double* cb = c + bl * L * k;
  const int64_t tl = (L + 31) / 32, tk = (k + 31) / 32;
  bool bad = false;
  for (int64_t t = blockIdx.y; t < tl * tk; t += gridDim.y) {
    const int64_t l0 = (t % tl) * 32, i0 = (t / tl) * 32;
    for (int r = threadIdx.y; r < 32; r += blockDim.y) {
      const int ll = i_fast ? r : threadIdx.x, ii = i_fast ? threadIdx.x : r;
      const int64_t l = l0 + ll, i = i0 + ii;
      double v = 0.0;
      if (l < L && i < k) {
        v = load<T>(mt.in, l * sl + i * si);
        if (!isfinite(v)) {
          bad = true;
          v = 0.0;
        }
        v *= sc;
      }
      tile[ll][ii] = v;
    }
    __syncthreads();
    for (int r = threadIdx.y; r < 32; r += blockDim.y) {
      const int64_t i = i0 + r, l = l0 + threadIdx.x;
      if (l < L && i < k) cb[l + i * L] = tile[threadIdx.x][r];
    }
    __syncthreads();
  }
  if (bad) status[mt.index] = 1;
}

// ---- the fused small route -------------------------------------------------------------------------

// Householder tridiagonalisation (LAPACK dsytd2, lower) of the symmetric k × k matrix G (row stride
// K + 1, both triangles stored) in shared memory, by the whole block. Writes d[i·ld + bl], e[i·ld + bl].
// `scratch` holds 2K + 4 doubles.
template <int K, int NT>
__device__ void tridiag_block(double* G, int k, double* scratch, double* d, double* e, int64_t ld, int64_t bl) {
  constexpr int LD = K + 1, GT = NT == 256 ? 16 : 8, TPR = NT / K;
  static_assert(TPR >= 1 && TPR <= 32 && (TPR & (TPR - 1)) == 0, "threads per row must be a power of 2");
  double* v = scratch;
  double* w = scratch + K;
  double* red = scratch + 2 * K;  // [0], [1]: tau (alternating), [2]: -tau/2 · wᵀv
  const int t = threadIdx.x, lane = t & 31, warp = t >> 5, ti = t / GT, tj = t % GT;
  for (int j = 0; j + 2 < k; ++j) {
    if (warp == 0) {
      double ss = 0.0;
      for (int r = j + 2 + lane; r < k; r += 32) {
        const double x = G[r * LD + j];
        ss += x * x;
      }
      ss = warp_sum(ss);
      const double alpha = G[(j + 1) * LD + j];
      double tau = 0.0, beta = alpha, scal = 0.0;
      if (ss != 0.0) {
        beta = -copysign(sqrt(alpha * alpha + ss), alpha);
        tau = (beta - alpha) / beta;
        scal = 1.0 / (alpha - beta);
      }
      for (int r = j + 2 + lane; r < k; r += 32) v[r] = G[r * LD + j] * scal;
      if (lane == 0) {
        v[j + 1] = 1.0;
        red[j & 1] = tau;
        d[int64_t(j) * ld + bl] = G[j * LD + j];
        e[int64_t(j) * ld + bl] = beta;
      }
    }
    __syncthreads();
    const double tau = red[j & 1];
    if (tau == 0.0) continue;  // the column is already reduced (a sync per step keeps red[] safe)
    {  // w = tau · A22 v, TPR threads per row
      const int r = j + 1 + t / TPR, part = t % TPR;
      double acc = 0.0;
      if (r < k)
        for (int c = j + 1 + part; c < k; c += TPR) acc += G[r * LD + c] * v[c];
#pragma unroll
      for (int o = TPR / 2; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
      if (part == 0 && r < k) w[r] = tau * acc;
    }
    __syncthreads();
    if (warp == 0) {
      double s2 = 0.0;
      for (int r = j + 1 + lane; r < k; r += 32) s2 += w[r] * v[r];
      s2 = warp_sum(s2);
      if (lane == 0) red[2] = -0.5 * tau * s2;
    }
    __syncthreads();
    const double a2 = red[2];
    // A22 -= v w'ᵀ + w' vᵀ with w' = w + a2 v
    for (int r = j + 1 + ti; r < k; r += GT) {
      const double vr = v[r], wr = w[r] + a2 * vr;
      for (int c = j + 1 + tj; c < k; c += GT) G[r * LD + c] -= vr * (w[c] + a2 * v[c]) + wr * v[c];
    }
    __syncthreads();
  }
  if (t == 0) {
    if (k >= 2) {
      d[int64_t(k - 2) * ld + bl] = G[(k - 2) * LD + (k - 2)];
      d[int64_t(k - 1) * ld + bl] = G[(k - 1) * LD + (k - 1)];
      e[int64_t(k - 2) * ld + bl] = G[(k - 1) * LD + (k - 2)];
    } else {
      d[bl] = G[0];
    }
  }
}

template <int K>
constexpr int small_tile_rows() { return K <= 64 ? 32 : 16; }

template <int K>
constexpr size_t small_smem_bytes() {
  constexpr int LD = K + 1, TL = small_tile_rows<K>();
  constexpr int g = K * LD > TL * LD ? K * LD : TL * LD;
  return size_t(g + 2 * K + 4) * sizeof(double);
}

// Blocks per SM the register budget is capped for: at K = 64 the compiler's choice (96 registers)
// allowed 2 blocks of 256 threads per SM while shared memory allows 6 (H100 profile, 2026-11-23).
template <int K>
constexpr int small_min_blocks() { return K == 64 ? 4 : 1; }

template <class T, int K, int NT>
__global__ void __launch_bounds__(NT, small_min_blocks<K>()) small_gram_tridiag_kernel(MatrixSet s, int64_t b0, int64_t nb, double* d,
                                                                double* e, double* scale_out, int8_t* status) {
  extern __shared__ double smem[];
  constexpr int LD = K + 1, TL = small_tile_rows<K>(), GT = NT == 256 ? 16 : 8, R = K / GT;
  static_assert(R * GT == K, "K must be a multiple of the thread grid side");
  __shared__ double red[32];
  __shared__ double s_scale;
  const int64_t bl = blockIdx.x;
  const Mat mt = locate(s, b0 + bl, sizeof(T));
  const bool tall = s.m >= s.n;
  const int k = int(tall ? s.n : s.m);
  const int64_t L = tall ? s.m : s.n;
  const int64_t sl = tall ? mt.rs : mt.cs, si = tall ? mt.cs : mt.rs;
  const bool i_fast = llabs(si) <= llabs(sl);
  const int t = threadIdx.x, ti = t / GT, tj = t % GT;

  // float64 inputs: scale to unit size first (their Gram could overflow or underflow otherwise).
  double sc = 1.0;
  if (s.dtype == DType::F64) {
    double mx = 0.0;
    for (int64_t q = t; q < L * k; q += NT) {
      const int64_t l = i_fast ? q / k : q % L, i = i_fast ? q % k : q / L;
      const double a = fabs(load<T>(mt.in, l * sl + i * si));
      mx = (a > mx || a != a) ? a : mx;
    }
    mx = warp_max(mx);
    if ((t & 31) == 0) red[t >> 5] = mx;
    __syncthreads();
    if (t == 0) {
      double m2 = 0.0;
      for (int w = 0; w < NT / 32; ++w) m2 = (red[w] > m2 || red[w] != red[w]) ? red[w] : m2;
      s_scale = tiny::unit_scale(m2);
    }
    __syncthreads();
    sc = s_scale;
  }

  double acc[R][R];
#pragma unroll
  for (int a = 0; a < R; ++a)
#pragma unroll
    for (int c = 0; c < R; ++c) acc[a][c] = 0.0;
  bool bad = false;
  double* tile = smem;
  for (int64_t l0 = 0; l0 < L; l0 += TL) {
    for (int q = t; q < TL * K; q += NT) {
      const int ll = i_fast ? q / K : q % TL, i = i_fast ? q % K : q / TL;
      const int64_t l = l0 + ll;
      double x = 0.0;
      if (l < L && i < k) {
        x = load<T>(mt.in, l * sl + i * si);
        if (!isfinite(x)) {
          bad = true;
          x = 0.0;
        }
        x *= sc;
      }
      tile[ll * LD + i] = x;
    }
    __syncthreads();
#pragma unroll 4
    for (int ll = 0; ll < TL; ++ll) {
      double xa[R], xb[R];
#pragma unroll
      for (int a = 0; a < R; ++a) {
        xa[a] = tile[ll * LD + ti + GT * a];
        xb[a] = tile[ll * LD + tj + GT * a];
      }
#pragma unroll
      for (int a = 0; a < R; ++a)
#pragma unroll
        for (int c = 0; c < R; ++c) acc[a][c] = fma(xa[a], xb[c], acc[a][c]);
    }
    __syncthreads();
  }
  if (__syncthreads_or(bad)) {
    if (t == 0) status[mt.index] = 1;
    for (int i = t; i < k; i += NT) {
      d[int64_t(i) * nb + bl] = 0.0;
      e[int64_t(i) * nb + bl] = 0.0;
    }
    if (t == 0) scale_out[bl] = 1.0;
    return;
  }
  double* G = smem;
#pragma unroll
  for (int a = 0; a < R; ++a)
#pragma unroll
    for (int c = 0; c < R; ++c) G[(ti + GT * a) * LD + tj + GT * c] = acc[a][c];
  if (t == 0) scale_out[bl] = sc;
  __syncthreads();
  tridiag_block<K, NT>(G, k, smem + K * LD, d, e, nb, bl);
}

template <int K, int NT>
__global__ void __launch_bounds__(NT) gram_tridiag_kernel(const double* g, int k, int64_t nb, double* d, double* e) {
  extern __shared__ double smem[];
  constexpr int LD = K + 1;
  const int64_t bl = blockIdx.x;
  const double* gb = g + bl * int64_t(k) * k;
  double* G = smem;
  for (int q = threadIdx.x; q < k * k; q += NT) {
    const int i = q % k, j = q / k;  // column-major: G(i, j) at i + j k; the lower triangle is read
    if (i >= j) {
      const double x = gb[q];
      G[i * LD + j] = x;
      G[j * LD + i] = x;
    }
  }
  __syncthreads();
  tridiag_block<K, NT>(G, k, smem + K * LD, d, e, nb, bl);
}

// ---- tiny matrices: one thread each -----------------------------------------------------------------

template <class T>
__global__ void tiny_gram_kernel(MatrixSet s, int64_t b0, int64_t nb, int k, int64_t L, int8_t* status) {
  const int64_t bl = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (bl >= nb) return;
  const Mat mt = locate(s, b0 + bl, sizeof(T));
  const bool tall = s.m >= s.n;
  const int64_t rs = tall ? mt.rs : mt.cs, cs = tall ? mt.cs : mt.rs;
  const char* in = mt.in;
  const DType otype = s.otype;
  auto at = [=](int64_t l, int i) { return load<T>(in, l * rs + i * cs); };
  auto put = [=](int i, double v) { store_out(mt, otype, i, v); };
  const int st = tiny::gram_svals_k(at, L, k, s.dtype == DType::F64, put);
  if (st != 0) status[mt.index] = int8_t(st);
}

// ---- dsterf per thread -----------------------------------------------------------------------------

// Eigenvalues of [[a, b], [b, c]] (LAPACK dlae2).
__device__ void dlae2(double a, double b, double c, double& rt1, double& rt2) {
  const double sm = a + c, df = a - c, adf = fabs(df), tb = b + b, ab = fabs(tb);
  double acmx = a, acmn = c;
  if (fabs(a) <= fabs(c)) {
    acmx = c;
    acmn = a;
  }
  double rt;
  if (adf > ab)
    rt = adf * sqrt(1.0 + (ab / adf) * (ab / adf));
  else if (adf < ab)
    rt = ab * sqrt(1.0 + (adf / ab) * (adf / ab));
  else
    rt = ab * 1.4142135623730951;
  if (sm < 0.0) {
    rt1 = 0.5 * (sm - rt);
    rt2 = (acmx / rt1) * acmn - (b / rt1) * b;
  } else if (sm > 0.0) {
    rt1 = 0.5 * (sm + rt);
    rt2 = (acmx / rt1) * acmn - (b / rt1) * b;
  } else {
    rt1 = 0.5 * rt;
    rt2 = -0.5 * rt;
  }
}

// LAPACK dsterf (root-free QL/QR) on d[i·ld], e[i·ld]. Each unreduced block is scaled to max-norm
// ~1 by a power of two, and a block that dsterf would run QR on is reversed and run QL. Returns false
// when 30·n sweeps do not converge.
__device__ bool dsterf(int n, double* D, double* E, int64_t ld) {
  constexpr double eps = DBL_EPSILON / 2, eps2 = eps * eps;
#define RS_D(i) D[int64_t(i) * ld]
#define RS_E(i) E[int64_t(i) * ld]
  const int nmaxit = 30 * n;
  int jtot = 0;
  int l1 = 0;
  while (l1 < n) {
    if (l1 > 0) RS_E(l1 - 1) = 0.0;
    int m = l1;
    for (; m < n - 1; ++m) {
      if (fabs(RS_E(m)) <= sqrt(fabs(RS_D(m))) * sqrt(fabs(RS_D(m + 1))) * eps) {
        RS_E(m) = 0.0;
        break;
      }
    }
    int l = l1;
    const int lsv = l, lendsv = m;
    int lend = m;
    l1 = m + 1;
    if (lend == l) continue;
    double anorm = 0.0;
    for (int i = l; i <= lend; ++i) anorm = fmax(anorm, fabs(RS_D(i)));
    for (int i = l; i < lend; ++i) anorm = fmax(anorm, fabs(RS_E(i)));
    if (anorm == 0.0) continue;
    if (!isfinite(anorm)) return false;
    int q = -ilogb(anorm);
    q = q > 1000 ? 1000 : q;
    const double sc = scalbn(1.0, q), unscale = scalbn(1.0, -q);
    for (int i = l; i <= lend; ++i) RS_D(i) *= sc;
    for (int i = l; i < lend; ++i) {
      const double x = RS_E(i) * sc;
      RS_E(i) = x * x;
    }
    if (fabs(RS_D(lend)) < fabs(RS_D(l))) {  // dsterf would run QR: reverse the block, run QL
      for (int a = l, b = lend; a < b; ++a, --b) {
        const double x = RS_D(a);
        RS_D(a) = RS_D(b);
        RS_D(b) = x;
      }
      for (int a = l, b = lend - 1; a < b; ++a, --b) {
        const double x = RS_E(a);
        RS_E(a) = RS_E(b);
        RS_E(b) = x;
      }
    }
    while (l <= lend) {
      int mm = l;
      while (mm < lend && !(fabs(RS_E(mm)) <= eps2 * fabs(RS_D(mm) * RS_D(mm + 1)))) ++mm;
      if (mm < lend) RS_E(mm) = 0.0;
      double p = RS_D(l);
      if (mm == l) {
        ++l;  // d(l) converged
        continue;
      }
      if (mm == l + 1) {
        double rt1, rt2;
        dlae2(RS_D(l), sqrt(RS_E(l)), RS_D(l + 1), rt1, rt2);
        RS_D(l) = rt1;
        RS_D(l + 1) = rt2;
        RS_E(l) = 0.0;
        l += 2;
        continue;
      }
      if (jtot == nmaxit) break;
      ++jtot;
      const double rte = sqrt(RS_E(l));
      double sigma = (RS_D(l + 1) - p) / (2.0 * rte);
      const double r0 = hypot(sigma, 1.0);
      sigma = p - rte / (sigma + copysign(r0, sigma));
      double c = 1.0, s = 0.0, gamma = RS_D(mm) - sigma;
      p = gamma * gamma;
      for (int i = mm - 1; i >= l; --i) {
        const double bb = RS_E(i), r = p + bb;
        if (i != mm - 1) RS_E(i + 1) = s * r;
        const double oldc = c, oldgam = gamma, alpha = RS_D(i), am = alpha - sigma;
        // One division instead of dsterf's three (a float64 division is a long dependent sequence
        // here): with q = r p and h = p·am − bb·gamma, c = p²/q, s = bb p/q, gamma' = h p/q and
        // p' = h²/q. Used while q, 1/q and p' are in a range where this is as accurate (the block
        // norm is ~1); otherwise dsterf's own formulas (p = 0 included).
        const double q = r * p, qi = 1.0 / q, h = p * am - bb * oldgam, pn = (h * h) * qi;
        if ((q + qi) + pn <= 0x1p900) {
          const double rinv = p * qi;
          c = p * rinv;
          s = bb * rinv;
          gamma = h * rinv;
          p = pn;
        } else {
          c = p / r;
          s = bb / r;
          gamma = c * am - s * oldgam;
          p = c != 0.0 ? (gamma * gamma) / c : oldc * bb;
        }
        RS_D(i + 1) = oldgam + (alpha - gamma);
      }
      RS_E(l) = s * p;
      RS_D(l) = sigma + gamma;
    }
    for (int i = lsv; i <= lendsv; ++i) RS_D(i) *= unscale;
    if (jtot == nmaxit) {
      for (int i = 0; i + 1 < n; ++i)
        if (RS_E(i) != 0.0) return false;
    }
  }
  return true;
#undef RS_D
#undef RS_E
}

// One thread per matrix; each thread's d and e are staged in shared memory (column threadIdx.x,
// stride blockDim.x), where dsterf's serial loop finds them at shared-memory latency.
__global__ void tridiag_svals_kernel(MatrixSet s, int64_t b0, int64_t nb, int k, double* d, double* e,
                                     const double* scale, int8_t* status) {
  extern __shared__ double sh[];
  const int64_t bl = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (bl >= nb) return;
  const int bd = blockDim.x;
  double* D = sh + threadIdx.x;
  double* E = sh + int64_t(k) * bd + threadIdx.x;
  for (int i = 0; i < k; ++i) {
    D[i * bd] = d[int64_t(i) * nb + bl];
    E[i * bd] = e[int64_t(i) * nb + bl];
  }
  const Mat mt = locate(s, b0 + bl, 0);
  const int8_t st = status[mt.index];
  const bool ok = st == 0 && dsterf(k, D, E, bd);
  // descending insertion sort
  for (int i = 1; i < k; ++i) {
    const double x = D[i * bd];
    int j = i - 1;
    while (j >= 0 && D[j * bd] < x) {
      D[(j + 1) * bd] = D[j * bd];
      --j;
    }
    D[(j + 1) * bd] = x;
  }
  const double inv = 1.0 / (scale ? scale[bl] : 1.0);
  for (int i = 0; i < k; ++i) store_out(mt, s.otype, i, ok ? sqrt(fmax(D[i * bd], 0.0)) * inv : CUDART_NAN);
  if (st == 0 && !ok) status[mt.index] = 2;
}

__global__ void write_values_kernel(MatrixSet s, int64_t b0, int64_t nb, int k, const double* v, bool squares,
                                    const int* info, const double* scale, int8_t* status) {
  const int64_t q = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= nb * k) return;
  const int64_t bl = q / k;
  const int i = int(q % k);
  const Mat mt = locate(s, b0 + bl, 0);
  const int8_t st = status[mt.index];
  const bool failed = info && info[bl] != 0;
  double x;
  if (squares)
    x = sqrt(fmax(v[bl * k + (k - 1 - i)], 0.0));
  else
    x = v[bl * k + i];
  if (scale) x /= scale[bl];
  store_out(mt, s.otype, i, (st != 0 || failed) ? CUDART_NAN : x);
  if (failed && st == 0 && i == 0) status[mt.index] = 2;
}

int blocks_for(int64_t n, int per) { return int((n + per - 1) / per); }

}  // namespace

void launch_tiny_gram(const MatrixSet& s, int64_t b0, int64_t nb, int8_t* status, cudaStream_t stream) {
  if (nb == 0) return;
  constexpr int kThreads = 128;
  RS_CUDA_DISPATCH(s.dtype, T,
                   tiny_gram_kernel<T><<<blocks_for(nb, kThreads), kThreads, 0, stream>>>(s, b0, nb, int(s.k()), s.L(),
                                                                                         status));
  RS_CUDA_LAUNCH_CHECK();
}

void launch_absmax(const MatrixSet& s, int64_t b0, int64_t nb, double* amax, cudaStream_t stream) {
  RS_CUDA_CHECK(cudaMemsetAsync(amax, 0, nb * sizeof(double), stream));
  const int64_t total = s.m * s.n;
  const dim3 grid(unsigned(nb), unsigned(std::min<int64_t>(std::max<int64_t>(total / 4096, 1), 1024)));
  RS_CUDA_DISPATCH(s.dtype, T, absmax_kernel<T><<<grid, 256, 0, stream>>>(s, b0, amax));
  RS_CUDA_LAUNCH_CHECK();
}

void launch_unit_scale(double* a, int64_t nb, cudaStream_t stream) {
  unit_scale_kernel<<<blocks_for(nb, 256), 256, 0, stream>>>(a, nb);
  RS_CUDA_LAUNCH_CHECK();
}

void launch_to_tall_f64(const MatrixSet& s, int64_t b0, int64_t nb, const double* scale, double* c,
                        int8_t* status, cudaStream_t stream) {
  const int64_t tiles = ((s.L() + 31) / 32) * ((s.k() + 31) / 32);
  const dim3 grid(unsigned(nb), unsigned(std::min<int64_t>(tiles, 65535)));
  RS_CUDA_DISPATCH(s.dtype, T, to_tall_kernel<T><<<grid, dim3(32, 8), 0, stream>>>(s, b0, scale, c, status));
  RS_CUDA_LAUNCH_CHECK();
}

namespace {
template <class T, int K, int NT>
void launch_small(const MatrixSet& s, int64_t b0, int64_t nb, double* d, double* e, double* scale, int8_t* status,
                  cudaStream_t stream) {
  constexpr size_t smem = small_smem_bytes<K>();
  auto kern = small_gram_tridiag_kernel<T, K, NT>;
  if (smem > 48 * 1024) RS_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kern<<<unsigned(nb), NT, smem, stream>>>(s, b0, nb, d, e, scale, status);
  RS_CUDA_LAUNCH_CHECK();
}

template <int K, int NT>
void launch_gram_tri(const double* g, int k, int64_t nb, double* d, double* e, cudaStream_t stream) {
  constexpr size_t smem = size_t(K * (K + 1) + 2 * K + 4) * sizeof(double);
  auto kern = gram_tridiag_kernel<K, NT>;
  if (smem > 48 * 1024) RS_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kern<<<unsigned(nb), NT, smem, stream>>>(g, k, nb, d, e);
  RS_CUDA_LAUNCH_CHECK();
}
}  // namespace

void launch_small_gram_tridiag(const MatrixSet& s, int64_t b0, int64_t nb, double* d, double* e, double* scale,
                               int8_t* status, cudaStream_t stream) {
  const int64_t k = s.k();
  if (k <= 32) {
    RS_CUDA_DISPATCH(s.dtype, T, launch_small<T, 32, 64>(s, b0, nb, d, e, scale, status, stream));
  } else if (k <= 64) {
    RS_CUDA_DISPATCH(s.dtype, T, launch_small<T, 64, 256>(s, b0, nb, d, e, scale, status, stream));
  } else {
    RS_CUDA_DISPATCH(s.dtype, T, launch_small<T, 128, 256>(s, b0, nb, d, e, scale, status, stream));
  }
}

void launch_gram_tridiag(const double* g, int k, int64_t nb, double* d, double* e, cudaStream_t stream) {
  if (k <= 32)
    launch_gram_tri<32, 64>(g, k, nb, d, e, stream);
  else if (k <= 64)
    launch_gram_tri<64, 256>(g, k, nb, d, e, stream);
  else
    launch_gram_tri<128, 256>(g, k, nb, d, e, stream);
}

void launch_tridiag_svals(const MatrixSet& s, int64_t b0, int64_t nb, double* d, double* e, const double* scale,
                          int8_t* status, cudaStream_t stream) {
  constexpr int kThreads = 32;
  const size_t smem = size_t(2) * s.k() * kThreads * sizeof(double);  // ≤ 64 KiB (k ≤ kSmallMaxK)
  if (smem > 48 * 1024)
    RS_CUDA_CHECK(cudaFuncSetAttribute(tridiag_svals_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  tridiag_svals_kernel<<<blocks_for(nb, kThreads), kThreads, smem, stream>>>(s, b0, nb, int(s.k()), d, e, scale,
                                                                             status);
  RS_CUDA_LAUNCH_CHECK();
}

void launch_write_values(const MatrixSet& s, int64_t b0, int64_t nb, const double* v, bool squares, const int* info,
                         const double* scale, int8_t* status, cudaStream_t stream) {
  const int64_t total = nb * s.k();
  write_values_kernel<<<blocks_for(total, 256), 256, 0, stream>>>(s, b0, nb, int(s.k()), v, squares, info, scale,
                                                                   status);
  RS_CUDA_LAUNCH_CHECK();
}

}  // namespace rankscope::cuda
