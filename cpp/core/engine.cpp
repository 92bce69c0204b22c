// The CPU engine: routes each matrix, groups same-shape matrices, runs tasks on the thread pool.
#include "rankscope/engine.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <new>
#include <numeric>

#include "core/blas_tasks.h"
#include "core/scratch.h"
#include "core/thread_pool.h"
#include "kernels/compact.h"
#include "lapack/blas.h"
#include "lapack/lapack.h"
#include "rankscope/dispatch.h"
#include "rankscope/errors.h"

namespace rankscope {
namespace {

enum class Route : uint8_t { CompactGram, Gram, Gram2Stage, Exact };

// Crossovers measured on the development machine (Sapphire Rapids, 2 cores; float32 batches of 100,
// compact kernels vs per-matrix dsyrk + dsyevd): k = 256: L = 256 0.028 vs ~0.05 s (500 matrices:
// 0.28 vs 0.61 s), L = 512 0.098 vs 0.136, L = 1024 0.155 vs 0.172; k = 192, L = 768 0.067 vs 0.092;
// k = 128, L = 1024 0.042 vs 0.053; but k = 64, L = 2048 0.032 vs 0.028; k = 32, L = 4096 0.023 vs
// 0.020; k = 16, L = 8192 0.019 vs 0.017; and k = 3, L = 1e5 0.012 vs 0.021 (dsyrk is poor at tiny k).
// The compact Gram loses to blocked dsyrk once L ≫ k; tridiagonalisation and eigenvalues always
// favour the batch-interleaved kernels.
constexpr int64_t kCompactMaxK = 256;
bool compact_fits(int64_t k, int64_t L) { return k <= kCompactMaxK && (L <= 4 * k || L <= 1024 || k <= 8); }
// dsyevd_2stage beats dsyevd from this size on (single-threaded, n = 1024: 64 vs 73 ms;
// n = 2048: 0.49 vs 1.0 s; n = 512: 13 vs 9.3 ms).
constexpr int64_t kTwoStageMinK = 1024;
// Largest panel of a matrix copied to float64 at once on the LAPACK Gram route (32 MB; a panel is
// at least k rows, so that dsyrk stays Level-3 efficient).
constexpr int64_t kGramPanelDoubles = int64_t(1) << 22;
// Bytes of interleaved columns loaded per pass of the compact Gram: a panel that stays in L2
// (measured: larger panels stream from memory and slow the Gram ~2x). Also bounds the workspace.
constexpr int64_t kCompactPanelBytes = 512 * 1024;

Route route_for(DType dtype, int64_t m, int64_t n, Method method) {
  const bool gram = method == Method::Gram || (method == Method::Auto && dtype != DType::F64);
  if (!gram) return Route::Exact;
  const int64_t k = std::min(m, n);
  if (compact_fits(k, std::max(m, n))) return Route::CompactGram;
  return k >= kTwoStageMinK ? Route::Gram2Stage : Route::Gram;
}

struct Workspace {
  ScratchBuffer a, g, d, e;
  void shrink() {
    for (ScratchBuffer* b : {&a, &g, &d, &e}) b->shrink();
  }
};
thread_local Workspace tls;

// The matrix X whose Gram X Xᵀ is the smaller one: k × L, X(i, c) at ptr + i*rs + c*cs.
MatrixRef small_side_view(const MatrixRef& a) {
  if (a.m >= a.n) return {a.ptr, a.dtype, a.n, a.m, a.cs, a.rs};
  return a;
}

// dst(i, c) = scale * src(i, c) for i < rows, c < cols, dst(i, c) at dst[i*drs + c*dcs], reading
// along src's shorter stride. Returns false if src holds NaN or Inf.
template <class T>
bool pack(const T* src, int64_t rows, int64_t cols, int64_t srs, int64_t scs, double* dst, int64_t drs,
          int64_t dcs, double scale) {
  if (std::llabs(scs) > std::llabs(srs)) return pack(src, cols, rows, scs, srs, dst, dcs, drs, scale);
  double poison = 0.0;  // v - v is 0 for finite v, NaN otherwise
  for (int64_t i = 0; i < rows; ++i) {
    const T* s = src + i * srs;
    double* d = dst + i * drs;
    for (int64_t c = 0; c < cols; ++c) {
      const double v = to_double(s[c * scs]);
      poison += v - v;
      d[c * dcs] = v * scale;
    }
  }
  return poison == 0.0;
}

bool pack_any(const MatrixRef& x, int64_t c0, int64_t cols, double* dst, int64_t drs, int64_t dcs,
              double scale) {
  bool ok = true;
  RS_DISPATCH_DTYPE(x.dtype, T, {
    const T* base = static_cast<const T*>(x.ptr) + c0 * x.cs;
    ok = pack(base, x.m, cols, x.rs, x.cs, dst, drs, dcs, scale);
  });
  return ok;
}

// Power-of-two scale bringing max|x| near 1, so that float64 Gram entries neither overflow nor
// underflow. Only float64 data can be out of range; narrower types return 1.
double gram_scale(const MatrixRef& x) {
  if (x.dtype != DType::F64) return 1.0;
  const double* p = static_cast<const double*>(x.ptr);
  double mx = 0.0;
  for (int64_t i = 0; i < x.m; ++i)
    for (int64_t c = 0; c < x.n; ++c) mx = std::max(mx, std::fabs(p[i * x.rs + c * x.cs]));
  if (!(mx > 0.0) || !std::isfinite(mx)) return 1.0;
  int e;
  std::frexp(mx, &e);
  // 2^-e overflows for subnormal data (e < -1023); 2^1000 already lifts it far from underflow.
  return std::ldexp(1.0, -std::max(e, -1000));
}

void write_values(const VectorOut& out, const double* s, int64_t k) {
  if (out.dtype == DType::F64) {
    double* o = static_cast<double*>(out.ptr);
    for (int64_t i = 0; i < k; ++i) o[i * out.stride] = s[i];
  } else {
    float* o = static_cast<float*>(out.ptr);
    for (int64_t i = 0; i < k; ++i) o[i * out.stride] = static_cast<float>(s[i]);
  }
}

void write_nan(const VectorOut& out, int64_t k) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (out.dtype == DType::F64) {
    double* o = static_cast<double*>(out.ptr);
    for (int64_t i = 0; i < k; ++i) o[i * out.stride] = nan;
  } else {
    float* o = static_cast<float*>(out.ptr);
    for (int64_t i = 0; i < k; ++i) o[i * out.stride] = std::numeric_limits<float>::quiet_NaN();
  }
}

// Ascending eigenvalues of a Gram matrix (scaled by scale²) → descending singular values in place.
void eig_to_sv(double* w, int64_t k, double scale) {
  std::reverse(w, w + k);
  for (int64_t i = 0; i < k; ++i) w[i] = std::sqrt(std::max(w[i], 0.0)) / scale;
}

// Lane l of kLanes interleaved eigenvalue sets d (a Gram's, scaled by scale²) → descending singular
// values in `out`, through k doubles of scratch w. Returns kOk.
int8_t write_lane(const double* d, int l, int64_t k, double scale, double* w, const VectorOut& out) {
  for (int64_t i = 0; i < k; ++i) w[i] = d[i * compact::kLanes + l];
  std::sort(w, w + k);
  eig_to_sv(w, k, scale);
  write_values(out, w, k);
  return kOk;
}

// ---- routes ---------------------------------------------------------------------------------------

int8_t run_exact(const MatrixRef& a, const VectorOut& out) {
  const int64_t k = std::min(a.m, a.n);
  const int m = lapack::checked_int(a.m, "m"), n = lapack::checked_int(a.n, "n");
  double* buf = tls.a.get(static_cast<size_t>(a.m) * a.n);
  // Column-major copy: element (i, j) at buf[i + j*m].
  if (!pack_any(a, 0, a.n, buf, 1, a.m, 1.0)) {
    write_nan(out, k);
    return kNonFinite;
  }
  double* s = tls.d.get(k);
  if (lapack::gesdd_values(m, n, buf, m > 1 ? m : 1, s) != 0) {
    write_nan(out, k);
    return kNoConvergence;
  }
  write_values(out, s, k);
  return kOk;
}

// Phase 1 of the LAPACK Gram route: the tridiagonal form (d[0..k), e[0..k-1)) of the float64 Gram
// of the smaller side (scaled by scale², returned in `scale`). Returns kOk, or kNonFinite (values
// NaN, written here).
int8_t gram_reduce(const MatrixRef& a, const VectorOut& out, bool two_stage, double* d, double* e,
                   double& scale) {
  const MatrixRef x = small_side_view(a);
  const int k = lapack::checked_int(x.m, "min(m, n)");
  lapack::checked_int(x.n, "max(m, n)");
  scale = gram_scale(x);
  // G = Σ over panels of Bᵀ B, B (rows × k, column-major) = a panel of Xᵀ: the float64 copy is one
  // panel, not the whole matrix.
  const int64_t rows = std::min<int64_t>(x.n, std::max<int64_t>(k, kGramPanelDoubles / k));
  double* b = tls.a.get(static_cast<size_t>(rows) * k);
  double* g = tls.g.get(static_cast<size_t>(k) * k);
  for (int64_t c0 = 0; c0 < x.n; c0 += rows) {
    const int r = static_cast<int>(std::min(rows, x.n - c0));
    if (!pack_any(x, c0, r, b, r, 1, scale)) {
      write_nan(out, k);
      return kNonFinite;
    }
    lapack::syrk<double>('T', k, r, 1.0, b, r, c0 > 0 ? 1.0 : 0.0, g, k);  // G (+)= BᵀB, lower triangle
  }
  lapack::sytrd(k, g, k, d, e, two_stage);
  return kOk;
}

// Phase 2 of the LAPACK Gram route: the eigenvalues of up to kLanes tridiagonal forms of order k
// (tri[l]: d then e of matrix idx[l]), in the compact kernels' lock-step dsterf (LAPACK's dsterf
// alone on one 512 × 512 form costs 40 % of its dsytrd; eight lanes cost about what one does).
// Lanes are independent, so a matrix's values do not depend on its group.
void gram_eigvals(const MatrixRef* mats, const VectorOut* outs, int8_t* status, double* const* tri,
                  const double* scale, int count) {
  constexpr int W = compact::kLanes;
  const int64_t k = std::min(mats[0].m, mats[0].n);
  double* d = tls.d.get(static_cast<size_t>(k * W));
  double* e = tls.e.get(static_cast<size_t>(k * W));
  std::fill(d, d + k * W, 0.0);  // idle lanes stay zero (they finish without a sweep)
  std::fill(e, e + k * W, 0.0);
  for (int l = 0; l < count; ++l)
    for (int64_t i = 0; i < k; ++i) {
      d[i * W + l] = tri[l][i];
      if (i + 1 < k) e[i * W + l] = tri[l][k + i];
    }
  const unsigned failed = compact::tridiag_eigvals(d, e, static_cast<int>(k));
  for (int l = 0; l < count; ++l)
    if (!(failed >> l & 1u)) status[l] = write_lane(d, l, k, scale[l], tri[l], outs[l]);  // tri[l] is spent
  // No convergence in the lock-step QL/QR: LAPACK's SVD instead (after the other lanes were read:
  // run_exact reuses this thread's scratch).
  for (int l = 0; l < count; ++l)
    if (failed >> l & 1u) status[l] = run_exact(mats[l], outs[l]);
}

// Up to compact::kLanes matrices of one shape, one per SIMD lane.
void run_compact(const MatrixRef* mats, const VectorOut* outs, int8_t* status, int count) {
  constexpr int W = compact::kLanes;
  MatrixRef x[W];
  double scale[W];
  bool finite[W];
  for (int l = 0; l < count; ++l) {
    x[l] = small_side_view(mats[l]);
    scale[l] = gram_scale(x[l]);
    finite[l] = true;
  }
  const int64_t k = x[0].m, L = x[0].n;
  const int64_t chunk = std::min(L, std::max<int64_t>(8, kCompactPanelBytes / (k * W * 8)));
  double* xc = tls.a.get(static_cast<size_t>(k * chunk * W));
  double* g = tls.g.get(static_cast<size_t>(k * k * W));
  double* d = tls.d.get(static_cast<size_t>(k * W));
  double* e = tls.e.get(static_cast<size_t>(k * W));
  std::fill(g, g + k * k * W, 0.0);
  if (count < W) std::fill(xc, xc + k * chunk * W, 0.0);  // idle lanes stay zero
  for (int64_t c0 = 0; c0 < L; c0 += chunk) {
    const int64_t r = std::min(chunk, L - c0);
    for (int l = 0; l < count; ++l)
      finite[l] = pack_any(x[l], c0, r, xc + l, W, k * W, scale[l]) && finite[l];
    compact::gram_accumulate(xc, static_cast<int>(k), static_cast<int>(r), g);
  }
  // Entries below 2^-500 are ~1e-134 of a unit-scaled Gram's norm: zero them, so that no Householder
  // norm in the kernel squares them into the subnormal range (the kernel does not rescale as dlarfg does).
  for (int64_t i = 0; i < k * k * W; ++i) g[i] = std::fabs(g[i]) < 0x1p-500 ? 0.0 : g[i];
  compact::tridiagonalize(g, static_cast<int>(k), d, e);
  const unsigned failed = compact::tridiag_eigvals(d, e, static_cast<int>(k));
  double* w = e;  // e is spent: per-lane scratch
  for (int l = 0; l < count; ++l) {
    if (!finite[l]) {
      write_nan(outs[l], k);
      status[l] = kNonFinite;
    } else if (!(failed >> l & 1u)) {
      status[l] = write_lane(d, l, k, scale[l], w, outs[l]);
    }
  }
  // No convergence in the lock-step QL/QR: LAPACK's SVD instead, once every other lane is read
  // (run_exact reuses this thread's scratch, d and e included).
  for (int l = 0; l < count; ++l)
    if (finite[l] && (failed >> l & 1u)) status[l] = run_exact(mats[l], outs[l]);
}

// One unit of parallel work: a compact group (count ≤ kLanes, indices idx[0..count)) or one matrix.
struct Task {
  Route route;
  int count;
  int64_t idx[compact::kLanes];
  double cost;
};

double flops(const MatrixRef& a, Route r) {
  const double k = static_cast<double>(std::min(a.m, a.n)), L = static_cast<double>(std::max(a.m, a.n));
  if (r == Route::Exact) return 4.0 * k * k * L;
  return k * k * L + 4.0 / 3.0 * k * k * k;
}

}  // namespace

const char* route_name(DType dtype, int64_t m, int64_t n, Method method) {
  switch (route_for(dtype, m, n, method)) {
    case Route::CompactGram: return "compact-gram";
    case Route::Gram: return "gram";
    case Route::Gram2Stage: return "gram-2stage";
    case Route::Exact: return "exact";
  }
  return "?";
}

int64_t compact_max_k() { return kCompactMaxK; }

void set_num_threads(int n) { ThreadPool::instance().set_num_threads(n); }
int num_threads() { return ThreadPool::instance().num_threads(); }

void svdvals(const std::vector<MatrixRef>& in, const std::vector<VectorOut>& out, Method method,
             int8_t* status) {
  RS_CHECK(in.size() == out.size(), InvalidArgument, "svdvals: ", in.size(), " inputs but ", out.size(),
           " outputs");
  const int64_t n_in = static_cast<int64_t>(in.size());

  // Group same-shape compact-route matrices; everything else is a task of its own.
  std::vector<int64_t> order(n_in);
  std::iota(order.begin(), order.end(), 0);
  std::vector<Route> route(n_in);
  for (int64_t i = 0; i < n_in; ++i) route[i] = route_for(in[i].dtype, in[i].m, in[i].n, method);
  auto key = [&](int64_t i) {
    const MatrixRef& a = in[i];
    return std::make_tuple(route[i], std::min(a.m, a.n), std::max(a.m, a.n));
  };
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return key(a) < key(b); });

  std::vector<Task> tasks;
  for (size_t p = 0; p < order.size();) {
    const int64_t i = order[p];
    const MatrixRef& a = in[i];
    if (std::min(a.m, a.n) == 0) {  // empty matrix: no values
      status[i] = kOk;
      ++p;
      continue;
    }
    Task t{route[i], 1, {i}, flops(a, route[i])};
    ++p;
    if (t.route == Route::CompactGram) {
      while (t.count < compact::kLanes && p < order.size() && key(order[p]) == key(i)) t.idx[t.count++] = order[p++];
      t.cost *= t.count;
    }
    tasks.push_back(t);
  }
  // Largest first, so the tail of the schedule is short.
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) { return a.cost > b.cost; });

  // LAPACK Gram-route matrices keep their tridiagonal form (d, e) between the two phases.
  std::vector<size_t> tri_at(n_in, 0);
  std::vector<double> scale(n_in, 1.0);
  size_t tri_size = 0;
  for (int64_t i = 0; i < n_in; ++i)
    if (route[i] == Route::Gram || route[i] == Route::Gram2Stage) {
      tri_at[i] = tri_size;
      tri_size += 2 * static_cast<size_t>(std::min(in[i].m, in[i].n));
    }
  std::vector<double> tri(tri_size);

  auto run_task = [&](int64_t ti) {
    const Task& t = tasks[ti];
    if (t.route == Route::CompactGram) {
      MatrixRef mats[compact::kLanes];
      VectorOut outs[compact::kLanes];
      int8_t st[compact::kLanes];
      for (int l = 0; l < t.count; ++l) {
        mats[l] = in[t.idx[l]];
        outs[l] = out[t.idx[l]];
      }
      run_compact(mats, outs, st, t.count);
      for (int l = 0; l < t.count; ++l) status[t.idx[l]] = st[l];
      return;
    }
    const int64_t i = t.idx[0];
    if (t.route == Route::Exact) {
      status[i] = run_exact(in[i], out[i]);
    } else {
      double* d = tri.data() + tri_at[i];
      status[i] = gram_reduce(in[i], out[i], t.route == Route::Gram2Stage, d, d + std::min(in[i].m, in[i].n),
                              scale[i]);
    }
    tls.shrink();
  };
  run_blas_tasks(static_cast<int64_t>(tasks.size()), run_task);

  // Phase 2: the reduced Gram-route matrices' eigenvalues, kLanes of one order at a time.
  std::vector<Task> groups;
  for (size_t p = 0; p < order.size(); ++p) {  // `order` puts equal orders next to each other
    const int64_t i = order[p];
    if (!(route[i] == Route::Gram || route[i] == Route::Gram2Stage) || status[i] != kOk) continue;
    const int64_t k = std::min(in[i].m, in[i].n);
    if (groups.empty() || groups.back().count == compact::kLanes ||
        std::min(in[groups.back().idx[0]].m, in[groups.back().idx[0]].n) != k)
      groups.push_back(Task{route[i], 0, {}, 0.0});
    groups.back().idx[groups.back().count++] = i;
  }
  run_blas_tasks(static_cast<int64_t>(groups.size()), [&](int64_t gi) {
    const Task& g = groups[gi];
    MatrixRef mats[compact::kLanes];
    VectorOut outs[compact::kLanes];
    int8_t st[compact::kLanes];
    double* tris[compact::kLanes];
    double scales[compact::kLanes];
    for (int l = 0; l < g.count; ++l) {
      mats[l] = in[g.idx[l]];
      outs[l] = out[g.idx[l]];
      tris[l] = tri.data() + tri_at[g.idx[l]];
      scales[l] = scale[g.idx[l]];
    }
    gram_eigvals(mats, outs, st, tris, scales, g.count);
    for (int l = 0; l < g.count; ++l) status[g.idx[l]] = st[l];
    tls.shrink();
  });
}

}  // namespace rankscope
