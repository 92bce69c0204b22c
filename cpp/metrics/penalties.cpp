// VICReg and Barlow Twins penalties: float64 column statistics, one BLAS product per penalty on the
// cheaper side, closed-form gradients (penalties.h has the precision argument).
//
// Layout: every working copy of a branch is row-major N × d (ld = d), i.e. column-major d × N for
// BLAS ("A'" below). Then C = A'A'ᵀ (d × d), G = A'ᵀA' (N × N), and a gradient Zc·M is (M A')ᵀ, so
// BLAS writes row-major gradients straight into a contiguous output.
#include "metrics/penalties.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <mutex>
#include <new>
#include <stdexcept>
#include <type_traits>

#include "core/blas_tasks.h"
#include "core/scratch.h"
#include "core/thread_pool.h"
#include "lapack/blas.h"
#include "lapack/lapack.h"
#include "rankscope/dispatch.h"
#include "rankscope/errors.h"

namespace rankscope::penalties {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Runs `__VA_ARGS__` with T = float or double (the backward passes take float32/float64 only: the
// Python layer converts narrower inputs before autograd sees them).
#define RS_DISPATCH_F32_F64(dtype, T, ...)                                                   \
  switch (dtype) {                                                                           \
    case DType::F64: { using T = double; __VA_ARGS__; break; }                               \
    case DType::F32: { using T = float; __VA_ARGS__; break; }                                \
    default: RS_FAIL(TypeMismatch, "penalty gradients take float32 or float64, got ", dtype_name(dtype)); \
  }

struct Scratch {
  ScratchBuffer a1, a2, d1, d2, mat, vec;
  void shrink() {
    for (ScratchBuffer* b : {&a1, &a2, &d1, &d2, &mat, &vec}) b->shrink();
  }
};
thread_local Scratch tls;

void run_tasks(int64_t n, const std::function<void(int64_t)>& fn) {
  run_blas_tasks(n, [&](int64_t i) {
    fn(i);
    tls.shrink();
  });
}

bool row_major(const MatrixRef& z) { return std::llabs(z.cs) <= std::llabs(z.rs); }

// ---- passes over one N × d matrix (float64 accumulation) ------------------------------------------

// Column means of z; false when z holds NaN or Inf.
template <class T>
bool column_means(const MatrixRef& z, double* mean) {
  const T* p = static_cast<const T*>(z.ptr);
  const int64_t N = z.m, d = z.n;
  if (row_major(z)) {
    std::fill(mean, mean + d, 0.0);
    for (int64_t i = 0; i < N; ++i) {
      const T* row = p + i * z.rs;
      if (z.cs == 1) {
        for (int64_t j = 0; j < d; ++j) mean[j] += to_double(row[j]);
      } else {
        for (int64_t j = 0; j < d; ++j) mean[j] += to_double(row[j * z.cs]);
      }
    }
  } else {
    for (int64_t j = 0; j < d; ++j) {
      const T* col = p + j * z.cs;
      double s = 0.0;
      for (int64_t i = 0; i < N; ++i) s += to_double(col[i * z.rs]);
      mean[j] = s;
    }
  }
  bool finite = true;
  for (int64_t j = 0; j < d; ++j) {
    mean[j] /= static_cast<double>(N);
    finite = finite && std::isfinite(mean[j]);
  }
  return finite;
}

// v = (z_ij − mean_j)·scale_j; kQ: q[j] = Σ_i v²; kOut: out[i*d + j] = W(v). kScale: scale is used
// (else 1). Templated on the flags so that the inner loops vectorise.
template <class T, class W, bool kQ, bool kOut, bool kScale>
void centre(const MatrixRef& z, const double* mean, const double* scale, double* q, W* out) {
  const T* p = static_cast<const T*>(z.ptr);
  const int64_t N = z.m, d = z.n;
  if (row_major(z)) {
    if (kQ) std::fill(q, q + d, 0.0);
    for (int64_t i = 0; i < N; ++i) {
      const T* row = p + i * z.rs;
      W* o = kOut ? out + i * d : nullptr;
      if (z.cs == 1) {
        for (int64_t j = 0; j < d; ++j) {
          double v = to_double(row[j]) - mean[j];
          if (kScale) v *= scale[j];
          if (kQ) q[j] += v * v;
          if (kOut) o[j] = static_cast<W>(v);
        }
      } else {
        for (int64_t j = 0; j < d; ++j) {
          double v = to_double(row[j * z.cs]) - mean[j];
          if (kScale) v *= scale[j];
          if (kQ) q[j] += v * v;
          if (kOut) o[j] = static_cast<W>(v);
        }
      }
    }
  } else {
    for (int64_t j = 0; j < d; ++j) {
      const T* col = p + j * z.cs;
      const double mu = mean[j], sc = kScale ? scale[j] : 1.0;
      double s = 0.0;
      for (int64_t i = 0; i < N; ++i) {
        const double v = (to_double(col[i * z.rs]) - mu) * sc;
        if (kQ) s += v * v;
        if (kOut) out[i * d + j] = static_cast<W>(v);
      }
      if (kQ) q[j] = s;
    }
  }
}

// Σ (x − y)² / (N d) in float64, or NaN when either holds NaN or Inf.
template <class T>
double mean_sq_diff(const MatrixRef& x, const MatrixRef& y) {
  const T* px = static_cast<const T*>(x.ptr);
  const T* py = static_cast<const T*>(y.ptr);
  const int64_t N = x.m, d = x.n;
  double s = 0.0, poison = 0.0;  // v - v is 0 for finite v, NaN otherwise
  for (int64_t i = 0; i < N; ++i) {
    const T* rx = px + i * x.rs;
    const T* ry = py + i * y.rs;
    if (x.cs == 1 && y.cs == 1) {
      for (int64_t j = 0; j < d; ++j) {
        const double a = to_double(rx[j]), b = to_double(ry[j]);
        poison += (a - a) + (b - b);
        s += (a - b) * (a - b);
      }
    } else {
      for (int64_t j = 0; j < d; ++j) {
        const double a = to_double(rx[j * x.cs]), b = to_double(ry[j * y.cs]);
        poison += (a - a) + (b - b);
        s += (a - b) * (a - b);
      }
    }
  }
  return poison == 0.0 ? s / (static_cast<double>(N) * static_cast<double>(d)) : kNaN;
}

// out (row-major N × d, ld d) = scale · (x − y).
template <class T, class W>
void scaled_diff(const MatrixRef& x, const MatrixRef& y, double scale, W* out) {
  const T* px = static_cast<const T*>(x.ptr);
  const T* py = static_cast<const T*>(y.ptr);
  const int64_t N = x.m, d = x.n;
  for (int64_t i = 0; i < N; ++i) {
    const T* rx = px + i * x.rs;
    const T* ry = py + i * y.rs;
    W* o = out + i * d;
    if (x.cs == 1 && y.cs == 1) {
      for (int64_t j = 0; j < d; ++j) o[j] = static_cast<W>(scale * (to_double(rx[j]) - to_double(ry[j])));
    } else {
      for (int64_t j = 0; j < d; ++j)
        o[j] = static_cast<W>(scale * (to_double(rx[j * x.cs]) - to_double(ry[j * y.cs])));
    }
  }
}

// Whether a row-major N × d working matrix of type W can be the output itself.
template <class W>
bool is_direct(const MatrixOut& out, int64_t N, int64_t d) {
  const DType want = sizeof(W) == 8 ? DType::F64 : DType::F32;
  return out.dtype == want && (d == 1 || out.cs == 1) && (N == 1 || out.rs == d);
}

// out = src (row-major N × d), converted to out's dtype.
template <class W>
void store(const W* src, int64_t N, int64_t d, const MatrixOut& out) {
  if (is_direct<W>(out, N, d) && static_cast<const void*>(src) == out.ptr) return;
  RS_DISPATCH_F32_F64(out.dtype, O, {
    O* o = static_cast<O*>(out.ptr);
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < d; ++j) o[i * out.rs + j * out.cs] = static_cast<O>(src[i * d + j]);
  });
}

void fill_nan(const MatrixOut& out, int64_t N, int64_t d) {
  RS_DISPATCH_F32_F64(out.dtype, O, {
    O* o = static_cast<O*>(out.ptr);
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < d; ++j) o[i * out.rs + j * out.cs] = std::numeric_limits<O>::quiet_NaN();
  });
}

bool all_finite(const double* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(v[i])) return false;
  return true;
}

// Σ_{i>j} a_ij b_ij over the strict lower triangles of two column-major n × n matrices.
template <class W>
double lower_dot(const W* a, const W* b, int64_t n) {
  double s = 0.0;
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = j + 1; i < n; ++i) s += static_cast<double>(a[i + j * n]) * static_cast<double>(b[i + j * n]);
  return s;
}

// ⟨A, B⟩_F of two symmetric column-major n × n matrices from their lower triangles.
template <class W>
double sym_dot(const W* a, const W* b, int64_t n) {
  double s = 2.0 * lower_dot(a, b, n);
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(a[i + i * n]) * static_cast<double>(b[i + i * n]);
  return s;
}

// ---- VICReg ---------------------------------------------------------------------------------------

template <class T, class W>
int8_t vicreg_forward_one(const VicregTask& t, const Plan& pl, double gamma, double eps) {
  const MatrixRef& z = t.z;
  const int64_t N = z.m, d = z.n;
  const int n = lapack::checked_int(N, "N"), nd = lapack::checked_int(d, "d");
  if (t.inv) *t.inv = mean_sq_diff<T>(z, t.other);
  double* mean = t.stats ? t.stats : tls.vec.get<double>(2 * d);
  double* var = mean + d;  // holds Σ(z − mean)² until the end
  if (!column_means<T>(z, mean)) {
    std::fill(mean, mean + 2 * d, kNaN);
    *t.var = kNaN;
    if (t.cov) *t.cov = kNaN;
    return kNonFinite;
  }
  const double n1 = static_cast<double>(N - 1);
  if (!t.cov) {
    centre<T, W, true, false, false>(z, mean, nullptr, var, nullptr);
  } else if (pl.side == Side::Features) {
    W* a = tls.a1.get<W>(static_cast<size_t>(N) * d);
    centre<T, W, true, true, false>(z, mean, nullptr, var, a);
    W* s = t.mat ? static_cast<W*>(t.mat) : tls.mat.get<W>(static_cast<size_t>(d) * d);
    lapack::syrk<W>('N', nd, n, W(1), a, nd, W(0), s, nd);  // S = ZcᵀZc
    *t.cov = 2.0 * lower_dot(s, s, d) / (n1 * n1 * static_cast<double>(d));
  } else {
    double* a = tls.a1.get<double>(static_cast<size_t>(N) * d);
    centre<T, double, true, true, false>(z, mean, nullptr, var, a);
    double* g = t.mat ? static_cast<double*>(t.mat) : tls.mat.get<double>(static_cast<size_t>(N) * N);
    lapack::syrk<double>('T', n, nd, 1.0, a, nd, 0.0, g, n);  // G = ZcZcᵀ, ‖G‖_F = ‖ZcᵀZc‖_F
    const double fro = sym_dot(g, g, N);
    double diag = 0.0;
    for (int64_t j = 0; j < d; ++j) diag += var[j] * var[j];
    *t.cov = std::max(fro - diag, 0.0) / (n1 * n1 * static_cast<double>(d));
  }
  double v = 0.0;
  for (int64_t j = 0; j < d; ++j) {
    var[j] /= n1;
    v += std::max(gamma - std::sqrt(var[j] + eps), 0.0);
  }
  *t.var = v / static_cast<double>(d);
  return kOk;
}

template <class T, class W>
void vicreg_backward_one(const VicregGradTask& t, const Plan& pl, double gamma, double eps) {
  const MatrixRef& z = t.z;
  const int64_t N = z.m, d = z.n;
  const int n = lapack::checked_int(N, "N"), nd = lapack::checked_int(d, "d");
  const double* mean = t.stats;
  const double* var = t.stats + d;
  if (!all_finite(t.stats, 2 * d)) return fill_nan(t.grad, N, d);
  const double n1 = static_cast<double>(N - 1), dd = static_cast<double>(d);
  double* w = tls.vec.get<double>(d);  // d var / dZ = Zc · diag(w)
  for (int64_t j = 0; j < d; ++j) {
    const double s = std::sqrt(var[j] + eps);
    w[j] = t.a_var != 0.0 && s < gamma ? -t.a_var / (dd * n1 * s) : 0.0;  // (s may be 0 when eps is)
  }
  const double ai = t.other.ptr ? 2.0 * t.a_inv / (static_cast<double>(N) * dd) : 0.0;
  const double alpha = 4.0 * t.a_cov / (dd * n1 * n1);  // on the unscaled S = ZcᵀZc or G = ZcZcᵀ
  const bool product = t.mat && t.a_cov != 0.0;
  if (!product || pl.side == Side::Gram) {
    // o = Zc·diag(w − alpha·q) + ai·(Z − other), then (Gram) o += alpha·G·Zc, all in float64.
    double* a = tls.a1.get<double>(static_cast<size_t>(N) * d);
    double* o = is_direct<double>(t.grad, N, d) ? static_cast<double*>(t.grad.ptr)
                                                : tls.d1.get<double>(static_cast<size_t>(N) * d);
    if (ai != 0.0) {
      scaled_diff<T, double>(z, t.other, ai, o);
    } else {
      std::fill(o, o + N * d, 0.0);
    }
    centre<T, double, false, true, false>(z, mean, nullptr, nullptr, a);
    if (product)
      for (int64_t j = 0; j < d; ++j) w[j] -= alpha * var[j] * n1;
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < d; ++j) o[i * d + j] += a[i * d + j] * w[j];
    if (product)
      lapack::symm<double>('R', nd, n, alpha, static_cast<const double*>(t.mat), n, a, nd, 1.0, o, nd);
    return store(o, N, d, t.grad);
  }
  // Features: o = Zc · M with M = alpha·S_off + diag(w) (the diagonal of S never enters), in W.
  W* a = tls.a1.get<W>(static_cast<size_t>(N) * d);
  centre<T, W, false, true, false>(z, mean, nullptr, nullptr, a);
  const W* s = static_cast<const W*>(t.mat);
  W* m = tls.mat.get<W>(static_cast<size_t>(d) * d);
  for (int64_t j = 0; j < d; ++j) {
    m[j + j * d] = static_cast<W>(w[j]);
    for (int64_t i = j + 1; i < d; ++i) m[i + j * d] = static_cast<W>(alpha * static_cast<double>(s[i + j * d]));
  }
  W* o = is_direct<W>(t.grad, N, d) ? static_cast<W*>(t.grad.ptr) : tls.d1.get<W>(static_cast<size_t>(N) * d);
  W beta = 0;
  if (ai != 0.0) {
    scaled_diff<T, W>(z, t.other, ai, o);
    beta = 1;
  }
  lapack::symm<W>('L', nd, n, W(1), m, nd, a, nd, beta, o, nd);  // oᵀ = M · Zcᵀ
  store(o, N, d, t.grad);
}

// ---- Barlow Twins ----------------------------------------------------------------------------------

// a1 = ẑ₁, a2 = ẑ₂ (row-major N × d, type W); cd[j] = Σ_i ẑ₁_ij ẑ₂_ij when cd is not null.
template <class T, class W>
void normalise_pair(const MatrixRef& z1, const MatrixRef& z2, const double* mean1, const double* r1,
                    const double* mean2, const double* r2, W* a1, W* a2, double* cd) {
  const T* p1 = static_cast<const T*>(z1.ptr);
  const T* p2 = static_cast<const T*>(z2.ptr);
  const int64_t N = z1.m, d = z1.n;
  if (cd) std::fill(cd, cd + d, 0.0);
  for (int64_t i = 0; i < N; ++i) {
    const T* x = p1 + i * z1.rs;
    const T* y = p2 + i * z2.rs;
    W* o1 = a1 + i * d;
    W* o2 = a2 + i * d;
    for (int64_t j = 0; j < d; ++j) {
      const double u = (to_double(x[j * z1.cs]) - mean1[j]) * r1[j];
      const double v = (to_double(y[j * z2.cs]) - mean2[j]) * r2[j];
      o1[j] = static_cast<W>(u);
      o2[j] = static_cast<W>(v);
      if (cd) cd[j] += u * v;
    }
  }
}

template <class T, class W>
int8_t barlow_forward_one(const BarlowTask& t, const Plan& pl, double eps) {
  const MatrixRef &z1 = t.z1, &z2 = t.z2;
  const int64_t N = z1.m, d = z1.n;
  const int n = lapack::checked_int(N, "N"), nd = lapack::checked_int(d, "d");
  double* vec = tls.vec.get<double>(7 * d);
  double* st = t.stats ? t.stats : vec;
  double *mean1 = st, *var1 = st + d, *mean2 = st + 2 * d, *var2 = st + 3 * d;
  double* cd = t.cdiag ? t.cdiag : vec + 4 * d;
  double *r1 = vec + 5 * d, *r2 = vec + 6 * d;
  const bool f1 = column_means<T>(z1, mean1), f2 = column_means<T>(z2, mean2);
  if (!f1 || !f2) {
    std::fill(st, st + 4 * d, kNaN);
    std::fill(cd, cd + d, kNaN);
    *t.on = *t.off = kNaN;
    return kNonFinite;
  }
  centre<T, W, true, false, false>(z1, mean1, nullptr, var1, nullptr);
  centre<T, W, true, false, false>(z2, mean2, nullptr, var2, nullptr);
  for (int64_t j = 0; j < d; ++j) {
    var1[j] /= static_cast<double>(N);  // BatchNorm: biased variance
    var2[j] /= static_cast<double>(N);
    r1[j] = 1.0 / std::sqrt(var1[j] + eps);
    r2[j] = 1.0 / std::sqrt(var2[j] + eps);
  }
  W* a1 = tls.a1.get<W>(static_cast<size_t>(N) * d);
  W* a2 = tls.a2.get<W>(static_cast<size_t>(N) * d);
  normalise_pair<T, W>(z1, z2, mean1, r1, mean2, r2, a1, a2, cd);
  const double nn = static_cast<double>(N);
  double on = 0.0, sq = 0.0;
  for (int64_t j = 0; j < d; ++j) {
    cd[j] /= nn;
    on += (1.0 - cd[j]) * (1.0 - cd[j]);
    sq += cd[j] * cd[j];
  }
  *t.on = on;
  if (pl.side == Side::Features) {
    W* c = t.mat ? static_cast<W*>(t.mat) : tls.mat.get<W>(static_cast<size_t>(d) * d);
    lapack::gemm<W>('N', 'T', nd, nd, n, W(1), a1, nd, a2, nd, W(0), c, nd);  // N·c = ẑ₁ᵀẑ₂
    double off = 0.0;
    for (int64_t j = 0; j < d; ++j)
      for (int64_t i = 0; i < d; ++i)
        if (i != j) off += static_cast<double>(c[i + j * d]) * static_cast<double>(c[i + j * d]);
    *t.off = off / (nn * nn);
  } else if constexpr (std::is_same_v<W, double>) {  // the plan's Gram side works in float64
    double* g1 = t.mat ? static_cast<double*>(t.mat) : tls.mat.get<double>(2 * static_cast<size_t>(N) * N);
    double* g2 = g1 + N * N;
    lapack::syrk<double>('T', n, nd, 1.0, a1, nd, 0.0, g1, n);
    lapack::syrk<double>('T', n, nd, 1.0, a2, nd, 0.0, g2, n);
    const double dot = sym_dot(g1, g2, N);  // ⟨G₁, G₂⟩ = N² ‖c‖_F²
    *t.off = std::max(dot / (nn * nn) - sq, 0.0);
  } else {
    throw std::logic_error("barlow_forward: the Gram side works in float64");
  }
  return kOk;
}

// g = (D − mean_i D − ẑ · mean_i(D ẑ)) · r per column: the batch-norm backward, D row-major N × d.
// ẑ is recomputed in float64 from z, not read from the working copy: for small N (or variances near
// eps) the three terms cancel by a factor ~var/eps, and ẑ rounded to float32 would lose the result.
template <class T, class W>
void batchnorm_backward(W* dz, const MatrixRef& z, const double* mean, const double* r, const MatrixOut& out) {
  const T* p = static_cast<const T*>(z.ptr);
  const int64_t N = z.m, d = z.n;
  double* s = tls.vec.get<double>(2 * d);  // the first 2d of vec: barlow_backward_one keeps r1, r2 after them
  double *s1 = s, *s2 = s + d;
  std::fill(s, s + 2 * d, 0.0);
  for (int64_t i = 0; i < N; ++i) {
    const T* row = p + i * z.rs;
    for (int64_t j = 0; j < d; ++j) {
      const double v = dz[i * d + j], h = (to_double(row[j * z.cs]) - mean[j]) * r[j];
      s1[j] += v;
      s2[j] += v * h;
    }
  }
  const double nn = static_cast<double>(N);
  for (int64_t j = 0; j < d; ++j) {
    s1[j] /= nn;
    s2[j] /= nn;
  }
  for (int64_t i = 0; i < N; ++i) {
    const T* row = p + i * z.rs;
    for (int64_t j = 0; j < d; ++j) {
      const double h = (to_double(row[j * z.cs]) - mean[j]) * r[j];
      dz[i * d + j] = static_cast<W>((dz[i * d + j] - s1[j] - h * s2[j]) * r[j]);
    }
  }
  store(dz, N, d, out);
}

template <class T, class W>
void barlow_backward_one(const BarlowGradTask& t, const Plan& pl, double eps) {
  const MatrixRef &z1 = t.z1, &z2 = t.z2;
  const int64_t N = z1.m, d = z1.n;
  const int n = lapack::checked_int(N, "N"), nd = lapack::checked_int(d, "d");
  if (!all_finite(t.stats, 4 * d) || !all_finite(t.cdiag, d)) {
    fill_nan(t.g1, N, d);
    return fill_nan(t.g2, N, d);
  }
  const double *mean1 = t.stats, *var1 = t.stats + d, *mean2 = t.stats + 2 * d, *var2 = t.stats + 3 * d;
  const double* cd = t.cdiag;
  // r1, r2 live in the vec buffer's tail, which batchnorm_backward (2d) leaves alone.
  double* vec = tls.vec.get<double>(5 * d);
  double *r1 = vec + 2 * d, *r2 = vec + 3 * d, *m = vec + 4 * d;
  for (int64_t j = 0; j < d; ++j) {
    r1[j] = 1.0 / std::sqrt(var1[j] + eps);
    r2[j] = 1.0 / std::sqrt(var2[j] + eps);
  }
  W* a1 = tls.a1.get<W>(static_cast<size_t>(N) * d);
  W* a2 = tls.a2.get<W>(static_cast<size_t>(N) * d);
  normalise_pair<T, W>(z1, z2, mean1, r1, mean2, r2, a1, a2, nullptr);
  W* d1 = is_direct<W>(t.g1, N, d) ? static_cast<W*>(t.g1.ptr) : tls.d1.get<W>(static_cast<size_t>(N) * d);
  W* d2 = is_direct<W>(t.g2, N, d) ? static_cast<W*>(t.g2.ptr) : tls.d2.get<W>(static_cast<size_t>(N) * d);
  const double nn = static_cast<double>(N);
  if (pl.side == Side::Features) {
    // dL/dẑ₁ = ẑ₂ Mᵀ, dL/dẑ₂ = ẑ₁ M with M = (dL/dc)/N: off-diagonal 2·a_off·c_ij/N, diagonal
    // −2·a_on·(1 − c_ii)/N, c_ij = (ẑ₁ᵀẑ₂)_ij / N.
    const W* c = static_cast<const W*>(t.mat);
    W* mm = tls.mat.get<W>(static_cast<size_t>(d) * d);
    const double off = 2.0 * t.a_off / (nn * nn);
    for (int64_t j = 0; j < d; ++j)
      for (int64_t i = 0; i < d; ++i)
        mm[i + j * d] = i == j ? static_cast<W>(-2.0 * t.a_on * (1.0 - cd[j]) / nn)
                               : static_cast<W>(off * static_cast<double>(c[i + j * d]));
    lapack::gemm<W>('N', 'N', nd, n, nd, W(1), mm, nd, a2, nd, W(0), d1, nd);
    lapack::gemm<W>('T', 'N', nd, n, nd, W(1), mm, nd, a1, nd, W(0), d2, nd);
  } else if constexpr (std::is_same_v<W, double>) {
    // dL/dẑ₁ = 2·a_off/N² · G₂ẑ₁ + ẑ₂·diag(m), dL/dẑ₂ = 2·a_off/N² · G₁ẑ₂ + ẑ₁·diag(m),
    // m_j = (−2·a_on·(1 − c_jj) − 2·a_off·c_jj) / N.
    const double* g1 = static_cast<const double*>(t.mat);
    const double* g2 = g1 + N * N;
    for (int64_t j = 0; j < d; ++j) m[j] = (-2.0 * t.a_on * (1.0 - cd[j]) - 2.0 * t.a_off * cd[j]) / nn;
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < d; ++j) {
        d1[i * d + j] = a2[i * d + j] * m[j];
        d2[i * d + j] = a1[i * d + j] * m[j];
      }
    const double alpha = 2.0 * t.a_off / (nn * nn);
    lapack::symm<double>('R', nd, n, alpha, g2, n, a1, nd, 1.0, d1, nd);
    lapack::symm<double>('R', nd, n, alpha, g1, n, a2, nd, 1.0, d2, nd);
  } else {
    throw std::logic_error("barlow_backward: the Gram side works in float64");
  }
  batchnorm_backward<T, W>(d1, z1, mean1, r1, t.g1);
  batchnorm_backward<T, W>(d2, z2, mean2, r2, t.g2);
}

}  // namespace

Plan plan(DType dtype, int64_t n, int64_t d) {
  const bool f64 = dtype == DType::F64;
  if (f64 ? d > n : d > 2 * n) return {Side::Gram, DType::F64, n};
  return {Side::Features, f64 ? DType::F64 : DType::F32, d};
}

void vicreg_forward(const std::vector<VicregTask>& tasks, double gamma, double eps, int8_t* status) {
  run_tasks(static_cast<int64_t>(tasks.size()), [&](int64_t i) {
    const VicregTask& t = tasks[i];
    const Plan pl = plan(t.z.dtype, t.z.m, t.z.n);
    const bool f64 = t.cov && pl.work == DType::F64;
    RS_DISPATCH_DTYPE(t.z.dtype, T, {
      status[i] = f64 ? vicreg_forward_one<T, double>(t, pl, gamma, eps) : vicreg_forward_one<T, float>(t, pl, gamma, eps);
    });
  });
}

void vicreg_backward(const std::vector<VicregGradTask>& tasks, double gamma, double eps) {
  run_tasks(static_cast<int64_t>(tasks.size()), [&](int64_t i) {
    const VicregGradTask& t = tasks[i];
    const Plan pl = plan(t.z.dtype, t.z.m, t.z.n);
    RS_DISPATCH_F32_F64(t.z.dtype, T, {
      if (pl.work == DType::F64) {
        vicreg_backward_one<T, double>(t, pl, gamma, eps);
      } else {
        vicreg_backward_one<T, float>(t, pl, gamma, eps);
      }
    });
  });
}

void invariance(const std::vector<VicregTask>& tasks, int8_t* status) {
  run_tasks(static_cast<int64_t>(tasks.size()), [&](int64_t i) {
    const VicregTask& t = tasks[i];
    RS_DISPATCH_DTYPE(t.z.dtype, T, { *t.inv = mean_sq_diff<T>(t.z, t.other); });
    status[i] = std::isnan(*t.inv) ? kNonFinite : kOk;
  });
}

void barlow_forward(const std::vector<BarlowTask>& tasks, double eps, int8_t* status) {
  run_tasks(static_cast<int64_t>(tasks.size()), [&](int64_t i) {
    const BarlowTask& t = tasks[i];
    const Plan pl = plan(t.z1.dtype, t.z1.m, t.z1.n);
    RS_DISPATCH_DTYPE(t.z1.dtype, T, {
      status[i] = pl.work == DType::F64 ? barlow_forward_one<T, double>(t, pl, eps) : barlow_forward_one<T, float>(t, pl, eps);
    });
  });
}

void barlow_backward(const std::vector<BarlowGradTask>& tasks, double eps) {
  run_tasks(static_cast<int64_t>(tasks.size()), [&](int64_t i) {
    const BarlowGradTask& t = tasks[i];
    const Plan pl = plan(t.z1.dtype, t.z1.m, t.z1.n);
    RS_DISPATCH_F32_F64(t.z1.dtype, T, {
      if (pl.work == DType::F64) {
        barlow_backward_one<T, double>(t, pl, eps);
      } else {
        barlow_backward_one<T, float>(t, pl, eps);
      }
    });
  });
}

}  // namespace rankscope::penalties
