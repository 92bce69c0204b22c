#include "engine.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <map>
#include <tuple>

#include "context.h"
#include "cuda_check.h"
#include "kernels/tiny_gram.h"
#include "rankscope/errors.h"

namespace rankscope::cuda {

const char* route_name(Route r) {
  switch (r) {
    case Route::TinyGram: return "gpu-tiny-gram";
    case Route::SmallGram: return "gpu-small-gram";
    case Route::Gram: return "gpu-gram";
    case Route::GramSyev: return "gpu-gram-syevbatched";
    case Route::ExactJacobi: return "exact-gesvdj";
    case Route::ExactGesvd: return "exact-gesvd";
  }
  return "?";
}

Route choose_route(DType dtype, int64_t m, int64_t n, int64_t count, Method method, int sm_count) {
  const int64_t k = std::min(m, n), L = std::max(m, n);
  const bool gram = method == Method::Gram || (method == Method::Auto && dtype != DType::F64);
  if (!gram) return (m <= 32 && n <= 32) ? Route::ExactJacobi : Route::ExactGesvd;
  // A thread per matrix: a block per 3×3 matrix left most of its threads idle (4608×3×3 took 45 µs of
  // GPU time on the H100, 2026-11-23, for a few hundred flops per matrix). The limits are those of
  // tiny_gram.h, not yet measured against the block kernel.
  if (k <= tiny::kMaxK && L <= tiny::kMaxL) return Route::TinyGram;
  if (k > kSmallMaxK) return Route::GramSyev;
  // One block per matrix reads all L rows: fused while L is short or there are blocks enough to fill
  // the GPU; otherwise cuBLAS forms the Gram matrices first.
  if (L <= 4096 || count >= 2 * int64_t(sm_count)) return Route::SmallGram;
  return Route::Gram;
}

namespace {

int checked_int(int64_t v, const char* what) {
  RS_CHECK(v >= 0 && v <= INT_MAX, InvalidArgument, what, " = ", v, " exceeds the 32-bit limit of cuBLAS/cuSOLVER");
  return static_cast<int>(v);
}

int64_t chunk_size(int64_t count, size_t per_matrix, int64_t cap) {
  const size_t budget = workspace_budget(per_matrix * size_t(count));
  int64_t nb = per_matrix ? int64_t(budget / per_matrix) : count;
  nb = std::max<int64_t>(1, std::min<int64_t>({nb, count, cap}));
  return nb;
}

// float64 scale factors of a chunk (float64 inputs only), or null.
double* scales_for(const MatrixSet& s, int64_t b0, int64_t nb, DeviceBuffer& buf, const Call& c) {
  if (s.dtype != DType::F64) return nullptr;
  buf = DeviceBuffer(nb * sizeof(double), c.device, c.stream);
  launch_absmax(s, b0, nb, buf.as<double>(), c.stream);
  launch_unit_scale(buf.as<double>(), nb, c.stream);
  return buf.as<double>();
}

void run_small(StreamContext&, const MatrixSet& s, const Call& c) {
  const int64_t k = s.k();
  const int64_t nb_max = chunk_size(s.count, (2 * k + 1) * sizeof(double), INT_MAX);
  for (int64_t b0 = 0; b0 < s.count; b0 += nb_max) {
    const int64_t nb = std::min(nb_max, s.count - b0);
    DeviceBuffer d(nb * k * sizeof(double), c.device, c.stream), e(nb * k * sizeof(double), c.device, c.stream),
        sc(nb * sizeof(double), c.device, c.stream);
    launch_small_gram_tridiag(s, b0, nb, d.as<double>(), e.as<double>(), sc.as<double>(), c.d_status, c.stream);
    launch_tridiag_svals(s, b0, nb, d.as<double>(), e.as<double>(), sc.as<double>(), c.d_status, c.stream);
  }
}

// Gram matrices CᵀC (k × k, column-major, lower triangle valid) of the tall float64 copies C.
void gram_f64(StreamContext& ctx, const double* cbuf, int64_t L, int64_t k, int64_t nb, double* g) {
  const double one = 1.0, zero = 0.0;
  const int ki = checked_int(k, "min(m, n)"), li = checked_int(L, "max(m, n)");
  if (nb == 1) {
    RS_CUBLAS_CHECK(cublasDsyrk(ctx.blas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_T, ki, li, &one, cbuf, li, &zero, g, ki));
  } else {
    RS_CUBLAS_CHECK(cublasDgemmStridedBatched(ctx.blas, CUBLAS_OP_T, CUBLAS_OP_N, ki, ki, li, &one, cbuf, li, L * k,
                                              cbuf, li, L * k, &zero, g, ki, k * k, checked_int(nb, "batch")));
  }
}

void run_gram(StreamContext& ctx, const MatrixSet& s, const Call& c, bool syev) {
  const int64_t k = s.k(), L = s.L();
  size_t per = sizeof(double) * (L * k + k * k + 2 * k + 1) + sizeof(int);
  size_t ws_one = 0, host_ws = 0;
  if (syev) {
    RS_CUSOLVER_CHECK(cusolverDnXsyevBatched_bufferSize(ctx.solver, ctx.params, CUSOLVER_EIG_MODE_NOVECTOR,
                                                        CUBLAS_FILL_MODE_LOWER, k, CUDA_R_64F, nullptr, k,
                                                        CUDA_R_64F, nullptr, CUDA_R_64F, &ws_one, &host_ws, 1));
    per += ws_one;
  }
  // XsyevBatched: n · lda · batch must fit in 32 bits.
  const int64_t cap = syev ? std::max<int64_t>(1, INT_MAX / (k * k)) : INT_MAX;
  const int64_t nb_max = chunk_size(s.count, per, cap);
  for (int64_t b0 = 0; b0 < s.count; b0 += nb_max) {
    const int64_t nb = std::min(nb_max, s.count - b0);
    DeviceBuffer scb;
    const double* scale = scales_for(s, b0, nb, scb, c);
    DeviceBuffer cb(nb * L * k * sizeof(double), c.device, c.stream);
    launch_to_tall_f64(s, b0, nb, scale, cb.as<double>(), c.d_status, c.stream);
    DeviceBuffer g(nb * k * k * sizeof(double), c.device, c.stream);
    gram_f64(ctx, cb.as<double>(), L, k, nb, g.as<double>());
    cb = DeviceBuffer();  // stream-ordered free: the memory is reused by what follows
    if (!syev) {
      DeviceBuffer d(nb * k * sizeof(double), c.device, c.stream), e(nb * k * sizeof(double), c.device, c.stream);
      launch_gram_tridiag(g.as<double>(), int(k), nb, d.as<double>(), e.as<double>(), c.stream);
      launch_tridiag_svals(s, b0, nb, d.as<double>(), e.as<double>(), scale, c.d_status, c.stream);
      continue;
    }
    size_t ws = 0, hws = 0;
    DeviceBuffer w(nb * k * sizeof(double), c.device, c.stream), info(nb * sizeof(int), c.device, c.stream);
    RS_CUSOLVER_CHECK(cusolverDnXsyevBatched_bufferSize(ctx.solver, ctx.params, CUSOLVER_EIG_MODE_NOVECTOR,
                                                        CUBLAS_FILL_MODE_LOWER, k, CUDA_R_64F, g.as<double>(), k,
                                                        CUDA_R_64F, w.as<double>(), CUDA_R_64F, &ws, &hws, nb));
    RS_CHECK(hws == 0, LinAlgError, "cusolverDnXsyevBatched asked for host workspace (", hws,
             " bytes), which this build does not provide");
    DeviceBuffer work(ws, c.device, c.stream);
    RS_CUSOLVER_CHECK(cusolverDnXsyevBatched(ctx.solver, ctx.params, CUSOLVER_EIG_MODE_NOVECTOR, CUBLAS_FILL_MODE_LOWER,
                                             k, CUDA_R_64F, g.as<double>(), k, CUDA_R_64F, w.as<double>(), CUDA_R_64F,
                                             work.as<void>(), ws, nullptr, 0, info.as<int>(), nb));
    launch_write_values(s, b0, nb, w.as<double>(), true, info.as<int>(), scale, c.d_status, c.stream);
  }
}

void run_exact(StreamContext& ctx, const MatrixSet& s, const Call& c, bool jacobi) {
  const int64_t k = s.k(), L = s.L();
  const int ki = checked_int(k, "min(m, n)"), li = checked_int(L, "max(m, n)");
  size_t per = sizeof(double) * (L * k + 2 * k + 1) + sizeof(int);
  if (jacobi) per += sizeof(double) * (L * L + k * k);
  const int64_t nb_max = chunk_size(s.count, per, jacobi ? INT_MAX : 4096);
  size_t ws = 0, hws = 0;
  int lwork = 0;
  if (!jacobi) {
    RS_CUSOLVER_CHECK(cusolverDnXgesvd_bufferSize(ctx.solver, ctx.params, 'N', 'N', L, k, CUDA_R_64F, nullptr, L,
                                                  CUDA_R_64F, nullptr, CUDA_R_64F, nullptr, 1, CUDA_R_64F, nullptr, 1,
                                                  CUDA_R_64F, &ws, &hws));
  }
  std::vector<char> host_work(hws);
  for (int64_t b0 = 0; b0 < s.count; b0 += nb_max) {
    const int64_t nb = std::min(nb_max, s.count - b0);
    DeviceBuffer scb;
    const double* scale = scales_for(s, b0, nb, scb, c);
    DeviceBuffer cb(nb * L * k * sizeof(double), c.device, c.stream), sv(nb * k * sizeof(double), c.device, c.stream),
        info(nb * sizeof(int), c.device, c.stream);
    launch_to_tall_f64(s, b0, nb, scale, cb.as<double>(), c.d_status, c.stream);
    if (jacobi) {
      DeviceBuffer u(nb * L * L * sizeof(double), c.device, c.stream), v(nb * k * k * sizeof(double), c.device, c.stream);
      const int nbi = checked_int(nb, "batch");
      RS_CUSOLVER_CHECK(cusolverDnDgesvdjBatched_bufferSize(ctx.solver, CUSOLVER_EIG_MODE_NOVECTOR, li, ki,
                                                            cb.as<double>(), li, sv.as<double>(), u.as<double>(), li,
                                                            v.as<double>(), ki, &lwork, ctx.gesvdj, nbi));
      DeviceBuffer work(size_t(lwork) * sizeof(double), c.device, c.stream);
      RS_CUSOLVER_CHECK(cusolverDnDgesvdjBatched(ctx.solver, CUSOLVER_EIG_MODE_NOVECTOR, li, ki, cb.as<double>(), li,
                                                 sv.as<double>(), u.as<double>(), li, v.as<double>(), ki,
                                                 work.as<double>(), lwork, info.as<int>(), ctx.gesvdj, nbi));
    } else {
      DeviceBuffer work(ws, c.device, c.stream);
      for (int64_t b = 0; b < nb; ++b) {
        RS_CUSOLVER_CHECK(cusolverDnXgesvd(ctx.solver, ctx.params, 'N', 'N', L, k, CUDA_R_64F, cb.as<double>() + b * L * k,
                                           L, CUDA_R_64F, sv.as<double>() + b * k, CUDA_R_64F, nullptr, 1, CUDA_R_64F,
                                           nullptr, 1, CUDA_R_64F, work.as<void>(), ws,
                                           hws ? host_work.data() : nullptr, hws, info.as<int>() + b));
      }
      if (hws) RS_CUDA_CHECK(cudaStreamSynchronize(c.stream));  // host workspace must outlive the solver
    }
    launch_write_values(s, b0, nb, sv.as<double>(), false, info.as<int>(), scale, c.d_status, c.stream);
  }
}

void run_set(StreamContext& ctx, const MatrixSet& s, const Call& c) {
  if (s.count == 0 || s.k() == 0) return;
  switch (choose_route(s.dtype, s.m, s.n, s.count, c.method, ctx.sm_count)) {
    case Route::TinyGram: launch_tiny_gram(s, 0, s.count, c.d_status, c.stream); break;
    case Route::SmallGram: run_small(ctx, s, c); break;
    case Route::Gram: run_gram(ctx, s, c, false); break;
    case Route::GramSyev: run_gram(ctx, s, c, true); break;
    case Route::ExactJacobi: run_exact(ctx, s, c, true); break;
    case Route::ExactGesvd: run_exact(ctx, s, c, false); break;
  }
}

// Reads the status bytes back (one stream synchronisation) when asked to.
void finish(StreamContext& ctx, const DeviceBuffer& d_status, int64_t count, bool sync, int8_t* status) {
  if (!sync || count == 0) return;
  void* host = ctx.pinned(size_t(count));
  RS_CUDA_CHECK(cudaMemcpyAsync(host, d_status.as<void>(), size_t(count), cudaMemcpyDeviceToHost, ctx.stream));
  ctx.staged();
  RS_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  std::memcpy(status, host, size_t(count));
}

}  // namespace

void queue_batch(int device, cudaStream_t stream, const MatrixSet& set, Method method, int8_t* d_status) {
  DeviceGuard guard(device);
  StreamContext& ctx = stream_context(device, stream);
  std::lock_guard<std::mutex> lock(ctx.mutex);
  if (set.count > 0) RS_CUDA_CHECK(cudaMemsetAsync(d_status, 0, size_t(set.count), stream));
  run_set(ctx, set, Call{device, stream, method, d_status});
}

void svdvals_batch(int device, cudaStream_t stream, const MatrixSet& set, Method method, bool sync, int8_t* status) {
  DeviceGuard guard(device);
  DeviceBuffer d_status(size_t(std::max<int64_t>(set.count, 1)), device, stream);
  queue_batch(device, stream, set, method, d_status.as<int8_t>());
  StreamContext& ctx = stream_context(device, stream);
  std::lock_guard<std::mutex> lock(ctx.mutex);
  finish(ctx, d_status, set.count, sync, status);
}

void svdvals_list(int device, cudaStream_t stream, const std::vector<MatrixRef>& in, const std::vector<VectorOut>& out,
                  Method method, bool sync, int8_t* status) {
  DeviceGuard guard(device);
  StreamContext& ctx = stream_context(device, stream);
  std::lock_guard<std::mutex> lock(ctx.mutex);
  const int64_t count = int64_t(in.size());
  DeviceBuffer d_status(size_t(std::max<int64_t>(count, 1)), device, stream);
  RS_CUDA_CHECK(cudaMemsetAsync(d_status.as<void>(), 0, size_t(std::max<int64_t>(count, 1)), stream));
  // Group by (input dtype, output dtype, m, n): one launch sequence per group.
  std::map<std::tuple<int, int, int64_t, int64_t>, std::vector<MatDesc>> groups;
  for (int64_t i = 0; i < count; ++i) {
    const MatrixRef& a = in[i];
    groups[{int(a.dtype), int(out[i].dtype), a.m, a.n}].push_back(
        MatDesc{a.ptr, out[i].ptr, a.rs, a.cs, out[i].stride, i});
  }
  size_t total = 0;
  for (auto& [key, v] : groups) total += v.size() * sizeof(MatDesc);
  DeviceBuffer d_descs(total, device, stream);
  if (total) {
    char* host = static_cast<char*>(ctx.pinned(total));
    size_t off = 0;
    for (auto& [key, v] : groups) {
      std::memcpy(host + off, v.data(), v.size() * sizeof(MatDesc));
      off += v.size() * sizeof(MatDesc);
    }
    RS_CUDA_CHECK(cudaMemcpyAsync(d_descs.as<void>(), host, total, cudaMemcpyHostToDevice, stream));
    ctx.staged();
  }
  size_t off = 0;
  const Call call{device, stream, method, d_status.as<int8_t>()};
  for (auto& [key, v] : groups) {
    MatrixSet s;
    s.dtype = DType(std::get<0>(key));
    s.otype = DType(std::get<1>(key));
    s.m = std::get<2>(key);
    s.n = std::get<3>(key);
    s.count = int64_t(v.size());
    s.descs = reinterpret_cast<const MatDesc*>(d_descs.as<char>() + off);
    off += v.size() * sizeof(MatDesc);
    run_set(ctx, s, call);
  }
  finish(ctx, d_status, count, sync, status);
}

}  // namespace rankscope::cuda
