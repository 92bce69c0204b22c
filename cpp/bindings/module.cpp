// rankscope._core: the only pybind11 code. Turns arrays into views, releases the GIL, calls the engine.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "bindings/common.h"
#include "bindings/dlpack.h"
#include "bindings/released_gil.h"
#include "core/gather.h"
#include "core/shuffle.h"
#include "core/thread_pool.h"
#include "kernels/compact.h"
#include "kernels/tiny_gram.h"
#include "lapack/lapack.h"
#include "metrics/metrics.h"
#include "metrics/penalties.h"
#include "rankscope/dispatch.h"
#include "rankscope/engine.h"
#include "rankscope/errors.h"

namespace py = pybind11;
using namespace rankscope;
using bindings::ImportedArray;
using bindings::import_array;
using bindings::parse_dtype;
using bindings::parse_method;

namespace {

void require_cpu(const ArrayView& v, const char* what) {
  RS_CHECK(v.device == DeviceType::CPU, InvalidArgument, what,
           " is not in host memory; the CPU engine reads host arrays only (device arrays need the CUDA "
           "backend)");
}

// Calls fn(offset) for the element offset (in elements) of every index of the leading `nd` dims.
template <class F>
void for_each_batch(const std::vector<int64_t>& shape, const std::vector<int64_t>& strides, int nd, F&& fn) {
  int64_t total = 1;
  for (int d = 0; d < nd; ++d) total *= shape[d];
  std::vector<int64_t> idx(nd, 0);
  int64_t off = 0;
  for (int64_t b = 0; b < total; ++b) {
    fn(b, off);
    for (int d = nd - 1; d >= 0; --d) {
      if (++idx[d] < shape[d]) {
        off += strides[d];
        break;
      }
      off -= strides[d] * (shape[d] - 1);
      idx[d] = 0;
    }
  }
}

char* at(const ArrayView& v, int64_t elem_offset) {
  return static_cast<char*>(v.data) + elem_offset * itemsize(v.dtype);
}

void check_out_dtype(const ArrayView& o, const char* what) {
  RS_CHECK(o.dtype == DType::F32 || o.dtype == DType::F64, TypeMismatch, what,
           " must be float32 or float64, got ", dtype_name(o.dtype));
}

// Batch (..., m, n) → (..., k). Returns the per-matrix status, shaped like the batch.
py::array_t<int8_t> svdvals_batch(py::handle x, py::handle out, const std::string& method) {
  const Method meth = parse_method(method);
  ImportedArray xa = import_array(x, "x", false), oa = import_array(out, "out", true);
  const ArrayView &xv = xa.view, &ov = oa.view;
  require_cpu(xv, "x");
  require_cpu(ov, "out");
  check_out_dtype(ov, "out");
  RS_CHECK(xv.ndim() >= 2, InvalidArgument, "x must have at least 2 dimensions (..., m, n), got ", xv.ndim());
  const int nd = xv.ndim() - 2;
  const int64_t m = xv.shape[nd], n = xv.shape[nd + 1], k = std::min(m, n);
  RS_CHECK(ov.ndim() == nd + 1, InvalidArgument, "out must have ", nd + 1, " dimensions");
  for (int d = 0; d < nd; ++d)
    RS_CHECK(ov.shape[d] == xv.shape[d], InvalidArgument, "out batch shape does not match x");
  RS_CHECK(ov.shape[nd] == k, InvalidArgument, "out must have last dimension min(m, n) = ", k);

  std::vector<int64_t> batch(xv.shape.begin(), xv.shape.begin() + nd);
  int64_t count = 1;
  for (int64_t d : batch) count *= d;
  std::vector<MatrixRef> in(count);
  std::vector<VectorOut> outs(count);
  for_each_batch(xv.shape, xv.strides, nd, [&](int64_t b, int64_t off) {
    in[b] = {at(xv, off), xv.dtype, m, n, xv.strides[nd], xv.strides[nd + 1]};
  });
  for_each_batch(ov.shape, ov.strides, nd, [&](int64_t b, int64_t off) {
    outs[b] = {at(ov, off), ov.dtype, ov.strides[nd]};
  });
  py::array_t<int8_t> status(batch);
  int8_t* st = status.mutable_data();
  {
    bindings::ReleasedGil nogil;
    svdvals(in, outs, meth, st);
  }
  return status;
}

// A list of 2-D matrices → a list of 1-D outputs. Returns the per-matrix status.
py::array_t<int8_t> svdvals_list(const py::sequence& xs, const py::sequence& outs_seq, const std::string& method) {
  const Method meth = parse_method(method);
  const size_t count = py::len(xs);
  RS_CHECK(py::len(outs_seq) == count, InvalidArgument, "got ", count, " matrices but ", py::len(outs_seq),
           " outputs");
  std::vector<ImportedArray> keep;
  keep.reserve(2 * count);
  std::vector<MatrixRef> in(count);
  std::vector<VectorOut> outs(count);
  for (size_t i = 0; i < count; ++i) {
    const std::string name = "x[" + std::to_string(i) + "]";
    keep.push_back(import_array(xs[i], name.c_str(), false));
    const ArrayView& v = keep.back().view;
    require_cpu(v, name.c_str());
    RS_CHECK(v.ndim() == 2, InvalidArgument, name, " must be a 2-D matrix, got ", v.ndim(), " dimensions");
    in[i] = {v.data, v.dtype, v.shape[0], v.shape[1], v.strides[0], v.strides[1]};
    const std::string oname = "out[" + std::to_string(i) + "]";
    keep.push_back(import_array(outs_seq[i], oname.c_str(), true));
    const ArrayView& o = keep.back().view;
    require_cpu(o, oname.c_str());
    check_out_dtype(o, oname.c_str());
    RS_CHECK(o.ndim() == 1 && o.shape[0] == std::min(v.shape[0], v.shape[1]), InvalidArgument, oname,
             " must be 1-D of length min(m, n)");
    outs[i] = {o.data, o.dtype, o.strides[0]};
  }
  py::array_t<int8_t> status(static_cast<py::ssize_t>(count));
  int8_t* st = status.mutable_data();
  {
    bindings::ReleasedGil nogil;
    svdvals(in, outs, meth, st);
  }
  return status;
}

// ---- metrics from spectra --------------------------------------------------------------------------

struct SpecRef {
  const void* ptr;
  DType dtype;
  int64_t k, stride;
};

metrics::Params make_params(double tau, double rankme_eps, bool erank_on_s2, double weak_threshold) {
  RS_CHECK(tau > 0.0 && tau <= 1.0, InvalidArgument, "tau must be in (0, 1], got ", tau);
  RS_CHECK(rankme_eps >= 0.0, InvalidArgument, "eps must be non-negative, got ", rankme_eps);
  RS_CHECK(weak_threshold >= 0.0, InvalidArgument, "threshold must be non-negative, got ", weak_threshold);
  metrics::Params p;
  p.tau = tau;
  p.rankme_eps = rankme_eps;
  p.erank_on_s2 = erank_on_s2;
  p.weak_threshold = weak_threshold;
  return p;
}

void run_metrics(const std::vector<SpecRef>& specs, const double* tol, double* out, const metrics::Params& p,
                 bool sort) {
  std::vector<double> s;
  for (size_t r = 0; r < specs.size(); ++r) {
    const SpecRef& sp = specs[r];
    s.resize(sp.k);
    if (sp.dtype == DType::F64) {
      for (int64_t i = 0; i < sp.k; ++i) s[i] = static_cast<const double*>(sp.ptr)[i * sp.stride];
    } else {
      for (int64_t i = 0; i < sp.k; ++i) s[i] = static_cast<const float*>(sp.ptr)[i * sp.stride];
    }
    for (int64_t i = 0; i < sp.k; ++i)
      RS_CHECK(!(s[i] < 0.0), InvalidArgument, "singular values must be non-negative; row ", r, " holds ", s[i]);
    // NaN breaks std::sort's strict weak ordering (undefined behaviour); such rows are all NaN anyway.
    const bool finite = std::all_of(s.begin(), s.end(), [](double v) { return std::isfinite(v); });
    if (sort && finite) std::sort(s.begin(), s.end(), [](double a, double b) { return a > b; });
    metrics::compute(s.data(), sp.k, {tol[2 * r], tol[2 * r + 1]}, p, out + r * metrics::kNumColumns);
  }
}

SpecRef spec_from(const ArrayView& v, int64_t elem_offset, int64_t k, int64_t stride, const char* what) {
  RS_CHECK(v.dtype == DType::F32 || v.dtype == DType::F64, TypeMismatch, what,
           ": singular values must be float32 or float64, got ", dtype_name(v.dtype));
  return {at(v, elem_offset), v.dtype, k, stride};
}

// s: (B, k) spectra, or a list of B 1-D spectra; tol: float64 (B, 2) rows (rtol, atol);
// out: float64 (B, kNumColumns), C-contiguous.
void spectrum_metrics(py::handle s, py::array_t<double, py::array::c_style> tol,
                      py::array_t<double, py::array::c_style> out, double tau, double rankme_eps, bool erank_on_s2, double weak_threshold,
                      bool sort) {
  const metrics::Params p = make_params(tau, rankme_eps, erank_on_s2, weak_threshold);
  std::vector<ImportedArray> keep;
  std::vector<SpecRef> specs;
  if (py::isinstance<py::list>(s) || py::isinstance<py::tuple>(s)) {
    auto seq = py::reinterpret_borrow<py::sequence>(s);
    for (size_t i = 0; i < py::len(seq); ++i) {
      keep.push_back(import_array(seq[i], "s", false));
      const ArrayView& v = keep.back().view;
      require_cpu(v, "s");
      RS_CHECK(v.ndim() == 1, InvalidArgument, "each spectrum in a list must be 1-D");
      specs.push_back(spec_from(v, 0, v.shape[0], v.strides[0], "s"));
    }
  } else {
    keep.push_back(import_array(s, "s", false));
    const ArrayView& v = keep.back().view;
    require_cpu(v, "s");
    RS_CHECK(v.ndim() == 2, InvalidArgument, "s must be 2-D (rows, k)");
    for (int64_t r = 0; r < v.shape[0]; ++r) specs.push_back(spec_from(v, r * v.strides[0], v.shape[1], v.strides[1], "s"));
  }
  const auto B = static_cast<py::ssize_t>(specs.size());
  RS_CHECK(tol.ndim() == 2 && tol.shape(0) == B && tol.shape(1) == 2, InvalidArgument, "tol must be (", B, ", 2)");
  RS_CHECK(out.ndim() == 2 && out.shape(0) == B && out.shape(1) == metrics::kNumColumns, InvalidArgument,
           "out must be (", B, ", ", int(metrics::kNumColumns), ")");
  const double* tp = tol.data();
  double* op = out.mutable_data();
  bindings::ReleasedGil nogil;
  run_metrics(specs, tp, op, p, sort);
}

// Test hook for the GPU's host staging (cuda/staging.h): matrices b0 .. b1 of x into the C-contiguous
// (b1 - b0, m, n) array `out` of x's dtype ((b1 - b0, n, m) when transposed).
void gather(py::handle x, int64_t b0, int64_t b1, bool transposed, py::handle out) {
  ImportedArray xa = import_array(x, "x", false), oa = import_array(out, "out", true);
  const ArrayView &xv = xa.view, &ov = oa.view;
  require_cpu(xv, "x");
  require_cpu(ov, "out");
  RS_CHECK(xv.ndim() >= 2, InvalidArgument, "x must have at least 2 dimensions (..., m, n), got ", xv.ndim());
  const int64_t m = xv.shape[xv.ndim() - 2], n = xv.shape[xv.ndim() - 1];
  const int64_t rows = transposed ? n : m, cols = transposed ? m : n;
  const bool empty = b1 <= b0 || rows == 0 || cols == 0;  // no strides to check: nothing is written
  RS_CHECK(ov.dtype == xv.dtype && ov.ndim() == 3 && ov.shape[0] == b1 - b0 && ov.shape[1] == rows &&
               ov.shape[2] == cols &&
               (empty || (ov.strides[2] == 1 && (rows == 1 || ov.strides[1] == cols) &&
                          (b1 - b0 == 1 || ov.strides[0] == rows * cols))),
           InvalidArgument, "out must be a C-contiguous ", dtype_name(xv.dtype), " array of shape (", b1 - b0, ", ",
           rows, ", ", cols, ")");
  bindings::ReleasedGil nogil;
  gather_matrices(xv, b0, b1, transposed, ov.data);
}

// Test hook for the GPU's one-thread-per-matrix route: cpp/kernels/tiny_gram.h run on the host on one
// matrix. Returns (values float64 (k,), status).
py::tuple tiny_gram_svals(py::handle x) {
  ImportedArray xa = import_array(x, "x", false);
  const ArrayView& v = xa.view;
  require_cpu(v, "x");
  RS_CHECK(v.ndim() == 2, InvalidArgument, "x must be one matrix (2-D), got ", v.ndim(), " dimensions");
  const int64_t m = v.shape[0], n = v.shape[1], k = std::min(m, n), L = std::max(m, n);
  RS_CHECK(k >= 1 && k <= tiny::kMaxK && L <= tiny::kMaxL, InvalidArgument, "the tiny route takes 1 <= min(m, n) <= ",
           tiny::kMaxK, " and max(m, n) <= ", tiny::kMaxL, ", got ", m, " x ", n);
  py::array_t<double> out(k);
  double* o = out.mutable_data();
  const int64_t rs = m >= n ? v.strides[0] : v.strides[1], cs = m >= n ? v.strides[1] : v.strides[0];
  int st = 0;
  RS_DISPATCH_DTYPE(v.dtype, T, {
    const T* p = static_cast<const T*>(v.data);
    auto at = [&](int64_t l, int i) { return to_double(p[l * rs + i * cs]); };
    auto put = [&](int i, double val) { o[i] = val; };
    st = tiny::gram_svals_k(at, L, int(k), v.dtype == DType::F64, put);
  });
  return py::make_tuple(out, st);
}

// ---- penalties (VICReg, Barlow Twins) ------------------------------------------------------------

// The N × d matrices of a (..., N, d) host array, in batch order.
std::vector<MatrixRef> matrices_of(const ArrayView& v, const char* what) {
  require_cpu(v, what);
  RS_CHECK(v.ndim() >= 2, InvalidArgument, what, " must have at least 2 dimensions (..., N, d), got ", v.ndim());
  const int nd = v.ndim() - 2;
  const int64_t N = v.shape[nd], d = v.shape[nd + 1];
  RS_CHECK(N >= 1 && d >= 1, InvalidArgument, what, " must have N >= 1 samples and d >= 1 features, got ", N,
           " x ", d);
  int64_t count = 1;
  for (int k = 0; k < nd; ++k) count *= v.shape[k];
  std::vector<MatrixRef> out(count);
  for_each_batch(v.shape, v.strides, nd, [&](int64_t b, int64_t off) {
    out[b] = {at(v, off), v.dtype, N, d, v.strides[nd], v.strides[nd + 1]};
  });
  return out;
}

// The writable N × d matrices of a float32/float64 (..., N, d) host array shaped like `like`.
std::vector<penalties::MatrixOut> outputs_of(const ArrayView& v, const ArrayView& like, const char* what) {
  require_cpu(v, what);
  RS_CHECK(v.shape == like.shape, InvalidArgument, what, " must have the shape of the input");
  RS_CHECK(v.dtype == like.dtype, TypeMismatch, what, " must have the input's dtype ", dtype_name(like.dtype));
  const int nd = v.ndim() - 2;
  int64_t count = 1;
  for (int k = 0; k < nd; ++k) count *= v.shape[k];
  std::vector<penalties::MatrixOut> out(count);
  for_each_batch(v.shape, v.strides, nd, [&](int64_t b, int64_t off) {
    out[b] = {at(v, off), v.dtype, v.strides[nd], v.strides[nd + 1]};
  });
  return out;
}

// Data of a C-contiguous host array of `dtype` and `shape` (outputs and saved state the Python layer
// allocates); throws naming `what` otherwise.
void* contiguous(const ArrayView& v, DType dtype, const std::vector<int64_t>& shape, const char* what) {
  require_cpu(v, what);
  bool ok = v.dtype == dtype && v.shape == shape;
  int64_t s = 1;
  for (int k = v.ndim() - 1; ok && v.size() > 0 && k >= 0; --k) {  // (an empty array has no layout)
    ok = v.shape[k] <= 1 || v.strides[k] == s;
    s *= v.shape[k];
  }
  RS_CHECK(ok, InvalidArgument, what, " must be a C-contiguous ", dtype_name(dtype), " array of shape ",
           py::str(py::tuple(py::cast(shape))).cast<std::string>());
  return v.data;
}

// Optional outputs: None → nullptr.
struct Optional {
  std::optional<ImportedArray> arr;
  void* data = nullptr;
  Optional(py::handle h, DType dtype, const std::vector<int64_t>& shape, const char* what, bool writable) {
    if (h.is_none()) return;
    arr.emplace(import_array(h, what, writable));
    data = contiguous(arr->view, dtype, shape, what);
  }
};

// The branches zs (a list of 1 or 2 arrays of one shape and dtype) and their matrices.
struct Branches {
  std::vector<ImportedArray> arrays;
  std::vector<std::vector<MatrixRef>> mats;
  int64_t B = 0, N = 0, d = 0;
  DType dtype = DType::F64;
};

Branches import_branches(const py::sequence& zs) {
  Branches br;
  const size_t R = py::len(zs);
  RS_CHECK(R == 1 || R == 2, InvalidArgument, "zs must hold 1 or 2 arrays, got ", R);
  for (size_t r = 0; r < R; ++r) {
    const std::string name = "z" + std::to_string(r + 1);
    br.arrays.push_back(import_array(zs[r], name.c_str(), false));
    br.mats.push_back(matrices_of(br.arrays.back().view, name.c_str()));
  }
  const ArrayView& v = br.arrays[0].view;
  if (R == 2) {
    RS_CHECK(br.arrays[1].view.shape == v.shape, InvalidArgument, "z1 and z2 must have the same shape");
    RS_CHECK(br.arrays[1].view.dtype == v.dtype, TypeMismatch, "z1 and z2 must have the same dtype");
  }
  br.B = static_cast<int64_t>(br.mats[0].size());
  br.N = v.shape[v.ndim() - 2];
  br.d = v.shape[v.ndim() - 1];
  br.dtype = v.dtype;
  return br;
}

py::tuple penalty_plan(const std::string& dtype, int64_t n, int64_t d) {
  const penalties::Plan p = penalties::plan(parse_dtype(dtype), n, d);
  return py::make_tuple(p.side == penalties::Side::Gram ? "gram" : "features", dtype_name(p.work), p.k);
}

py::array_t<int8_t> invariance_batch(py::handle z1, py::handle z2, py::handle out) {
  Branches br = import_branches(py::make_tuple(z1, z2));
  ImportedArray oa = import_array(out, "out", true);
  double* o = static_cast<double*>(contiguous(oa.view, DType::F64, {br.B}, "out"));
  std::vector<penalties::VicregTask> tasks(br.B);
  for (int64_t b = 0; b < br.B; ++b) tasks[b] = {br.mats[0][b], br.mats[1][b], o + b, nullptr, nullptr, nullptr, nullptr};
  py::array_t<int8_t> status(br.B);
  int8_t* st = status.mutable_data();
  bindings::ReleasedGil nogil;
  penalties::invariance(tasks, st);
  return status;
}

// terms (B, R, 2) float64: [mean_j relu(γ − s_j), Σ_{i≠j} C_ij²/d] per branch; inv (B,) float64 or None;
// stats (B, R, 2, d) float64 or None; mats (B, R, k, k) of the plan's work dtype or None.
// Returns the status (B, R).
py::array_t<int8_t> vicreg_forward_batch(const py::sequence& zs, double gamma, double eps, bool with_cov,
                                         py::handle terms, py::handle inv, py::handle stats, py::handle mats) {
  Branches br = import_branches(zs);
  const int64_t B = br.B, R = static_cast<int64_t>(br.mats.size()), d = br.d;
  const penalties::Plan pl = penalties::plan(br.dtype, br.N, d);
  ImportedArray ta = import_array(terms, "terms", true);
  double* tp = static_cast<double*>(contiguous(ta.view, DType::F64, {B, R, 2}, "terms"));
  RS_CHECK(inv.is_none() || R == 2, InvalidArgument, "inv needs two branches");
  Optional io(inv, DType::F64, {B}, "inv", true), so(stats, DType::F64, {B, R, 2, d}, "stats", true);
  RS_CHECK(mats.is_none() || with_cov, InvalidArgument, "mats are saved only with the covariance term");
  Optional mo(mats, pl.work, {B, R, pl.k, pl.k}, "mats", true);
  std::vector<penalties::VicregTask> tasks(B * R);
  const size_t msize = static_cast<size_t>(pl.k) * pl.k * itemsize(pl.work);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r = 0; r < R; ++r) {
      const int64_t i = b * R + r;
      penalties::VicregTask& t = tasks[i];
      t.z = br.mats[r][b];
      t.other = {nullptr, br.dtype, 0, 0, 0, 0};
      t.inv = nullptr;
      if (io.data && r == 0) {
        t.other = br.mats[1][b];
        t.inv = static_cast<double*>(io.data) + b;
      }
      t.var = tp + 2 * i;
      t.cov = with_cov ? tp + 2 * i + 1 : nullptr;
      if (!with_cov) tp[2 * i + 1] = 0.0;
      t.stats = so.data ? static_cast<double*>(so.data) + 2 * d * i : nullptr;
      t.mat = mo.data ? static_cast<char*>(mo.data) + msize * i : nullptr;
    }
  py::array_t<int8_t> status({B, R});
  int8_t* st = status.mutable_data();
  bindings::ReleasedGil nogil;
  penalties::vicreg_forward(tasks, gamma, eps, st);
  return status;
}

// coef (B, R, 3) float64: [a_var, a_cov, a_inv]; stats, mats as saved (mats None: no covariance
// gradient); grads: a list of R outputs shaped and typed like zs. The invariance term (a_inv) pairs
// branch r with the other branch.
void vicreg_backward_batch(const py::sequence& zs, double gamma, double eps, py::handle coef, py::handle stats,
                           py::handle mats, const py::sequence& grads) {
  Branches br = import_branches(zs);
  const int64_t B = br.B, R = static_cast<int64_t>(br.mats.size()), d = br.d;
  const penalties::Plan pl = penalties::plan(br.dtype, br.N, d);
  ImportedArray ca = import_array(coef, "coef", false), sa = import_array(stats, "stats", false);
  const double* cp = static_cast<const double*>(contiguous(ca.view, DType::F64, {B, R, 3}, "coef"));
  const double* sp = static_cast<const double*>(contiguous(sa.view, DType::F64, {B, R, 2, d}, "stats"));
  Optional mo(mats, pl.work, {B, R, pl.k, pl.k}, "mats", false);
  RS_CHECK(static_cast<int64_t>(py::len(grads)) == R, InvalidArgument, "grads must hold ", R, " arrays");
  std::vector<ImportedArray> ga;
  std::vector<std::vector<penalties::MatrixOut>> gm;
  for (int64_t r = 0; r < R; ++r) {
    ga.push_back(import_array(grads[r], "grad", true));
    gm.push_back(outputs_of(ga.back().view, br.arrays[r].view, "grad"));
  }
  const size_t msize = static_cast<size_t>(pl.k) * pl.k * itemsize(pl.work);
  std::vector<penalties::VicregGradTask> tasks(B * R);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r = 0; r < R; ++r) {
      const int64_t i = b * R + r;
      penalties::VicregGradTask& t = tasks[i];
      t.z = br.mats[r][b];
      t.other = R == 2 ? br.mats[1 - r][b] : MatrixRef{nullptr, br.dtype, 0, 0, 0, 0};
      t.stats = sp + 2 * d * i;
      t.mat = mo.data ? static_cast<const char*>(mo.data) + msize * i : nullptr;
      t.a_var = cp[3 * i];
      t.a_cov = mo.data ? cp[3 * i + 1] : 0.0;
      t.a_inv = R == 2 ? cp[3 * i + 2] : 0.0;
      t.grad = gm[r][b];
    }
  bindings::ReleasedGil nogil;
  penalties::vicreg_backward(tasks, gamma, eps);
}

// terms (B, 2) float64: [Σ(1 − c_ii)², Σ_{i≠j} c_ij²]; stats (B, 4, d), cdiag (B, d) float64 or None;
// mats (B, n_mats, k, k) of the plan's work dtype or None (n_mats 1 on the d × d side, 2 on the Gram
// side). Returns the status (B,).
py::array_t<int8_t> barlow_forward_batch(py::handle z1, py::handle z2, double eps, py::handle terms,
                                         py::handle stats, py::handle cdiag, py::handle mats) {
  Branches br = import_branches(py::make_tuple(z1, z2));
  const int64_t B = br.B, d = br.d;
  const penalties::Plan pl = penalties::plan(br.dtype, br.N, d);
  const int64_t nm = pl.side == penalties::Side::Gram ? 2 : 1;
  ImportedArray ta = import_array(terms, "terms", true);
  double* tp = static_cast<double*>(contiguous(ta.view, DType::F64, {B, 2}, "terms"));
  Optional so(stats, DType::F64, {B, 4, d}, "stats", true), co(cdiag, DType::F64, {B, d}, "cdiag", true);
  Optional mo(mats, pl.work, {B, nm, pl.k, pl.k}, "mats", true);
  const size_t msize = static_cast<size_t>(nm) * pl.k * pl.k * itemsize(pl.work);
  std::vector<penalties::BarlowTask> tasks(B);
  for (int64_t b = 0; b < B; ++b)
    tasks[b] = {br.mats[0][b],
                br.mats[1][b],
                tp + 2 * b,
                tp + 2 * b + 1,
                so.data ? static_cast<double*>(so.data) + 4 * d * b : nullptr,
                co.data ? static_cast<double*>(co.data) + d * b : nullptr,
                mo.data ? static_cast<char*>(mo.data) + msize * b : nullptr};
  py::array_t<int8_t> status(B);
  int8_t* st = status.mutable_data();
  bindings::ReleasedGil nogil;
  penalties::barlow_forward(tasks, eps, st);
  return status;
}

// coef (B, 2) float64: [a_on, a_off]; stats, cdiag, mats as saved; g1, g2 shaped and typed like z1, z2.
void barlow_backward_batch(py::handle z1, py::handle z2, double eps, py::handle coef, py::handle stats,
                           py::handle cdiag, py::handle mats, py::handle g1, py::handle g2) {
  Branches br = import_branches(py::make_tuple(z1, z2));
  const int64_t B = br.B, d = br.d;
  const penalties::Plan pl = penalties::plan(br.dtype, br.N, d);
  const int64_t nm = pl.side == penalties::Side::Gram ? 2 : 1;
  ImportedArray ca = import_array(coef, "coef", false), sa = import_array(stats, "stats", false),
                da = import_array(cdiag, "cdiag", false), ma = import_array(mats, "mats", false);
  const double* cp = static_cast<const double*>(contiguous(ca.view, DType::F64, {B, 2}, "coef"));
  const double* sp = static_cast<const double*>(contiguous(sa.view, DType::F64, {B, 4, d}, "stats"));
  const double* dp = static_cast<const double*>(contiguous(da.view, DType::F64, {B, d}, "cdiag"));
  const char* mp = static_cast<const char*>(contiguous(ma.view, pl.work, {B, nm, pl.k, pl.k}, "mats"));
  ImportedArray ga1 = import_array(g1, "g1", true), ga2 = import_array(g2, "g2", true);
  std::vector<penalties::MatrixOut> o1 = outputs_of(ga1.view, br.arrays[0].view, "g1"),
                                    o2 = outputs_of(ga2.view, br.arrays[1].view, "g2");
  const size_t msize = static_cast<size_t>(nm) * pl.k * pl.k * itemsize(pl.work);
  std::vector<penalties::BarlowGradTask> tasks(B);
  for (int64_t b = 0; b < B; ++b)
    tasks[b] = {br.mats[0][b], br.mats[1][b], sp + 4 * d * b, dp + d * b, mp + msize * b,
                cp[2 * b],     cp[2 * b + 1], o1[b],          o2[b]};
  bindings::ReleasedGil nogil;
  penalties::barlow_backward(tasks, eps);
}

}  // namespace

// An element-shuffled copy of a C-contiguous array (the randomised ESD), same dtype and shape.
static py::array shuffled(const py::array& a, uint64_t seed) {
  if (!(a.flags() & py::array::c_style)) throw InvalidArgument("shuffled: the array must be C-contiguous");
  const int size = static_cast<int>(a.itemsize());
  if (size != 1 && size != 2 && size != 4 && size != 8)
    throw InvalidArgument(detail::concat("shuffled: elements of ", size, " bytes"));
  py::array out(a.dtype(), std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim()));
  const void* src = a.data();
  void* dst = out.mutable_data();
  const int64_t n = static_cast<int64_t>(a.size());
  {
    bindings::ReleasedGil nogil;
    shuffled_copy(src, dst, n, size, seed);
  }
  return out;
}

PYBIND11_MODULE(_core, m) {
  m.doc() = "rankscope's compiled CPU engine (LAPACK from scipy-openblas32). Use the rankscope package.";

  bindings::register_core_translator();

  m.def("svdvals", &svdvals_batch, py::arg("x"), py::arg("out"), py::arg("method"),
        "Singular values of a (..., m, n) batch into out (..., min(m, n)); returns per-matrix status "
        "(0 ok, 1 NaN/Inf input, 2 no convergence).");
  m.def("svdvals_list", &svdvals_list, py::arg("xs"), py::arg("outs"), py::arg("method"),
        "Singular values of a list of 2-D matrices into a list of 1-D outputs; returns per-matrix status.");
  m.def("spectrum_metrics", &spectrum_metrics, py::arg("s"), py::arg("tol"), py::arg("out"), py::arg("tau"), py::arg("rankme_eps"), py::arg("erank_on_s2"),
        py::arg("weak_threshold"), py::arg("sort"),
        "Every metric of each spectrum into out (rows, len(metric_names())).");
  m.def("shuffled", &shuffled, py::arg("a"), py::arg("seed"),
        "A uniformly random permutation of a C-contiguous array's elements (Fisher-Yates, xoshiro256**), "
        "as a new array of the same dtype and shape; deterministic for a seed.");
  m.def("metric_names", [] {
    return std::vector<std::string>(metrics::kColumnNames, metrics::kColumnNames + metrics::kNumColumns);
  });
  m.def("route", [](const std::string& dtype, int64_t mm, int64_t n, const std::string& method) {
    return std::string(route_name(parse_dtype(dtype), mm, n, parse_method(method)));
  }, py::arg("dtype"), py::arg("m"), py::arg("n"), py::arg("method") = "auto",
        "The route svdvals takes for one matrix of this dtype and shape.");
  m.def("describe", [](py::handle x) {
    ImportedArray a = import_array(x, "x", false);
    const char* dev = a.view.device == DeviceType::CPU ? "cpu" : a.view.device == DeviceType::CUDA ? "cuda" : "other";
    return py::make_tuple(py::tuple(py::cast(a.view.shape)), dtype_name(a.view.dtype), dev);
  }, py::arg("x"), "(shape, dtype name, device kind) of an array as the core imports it.");
  m.def("prefers_transposed", [](py::handle x) {
    ImportedArray a = import_array(x, "x", false);
    return prefers_transposed(a.view);
  }, py::arg("x"), "Whether x's matrices are stored closer to column-major (staged as their transposes).");
  m.def("_gather_matrices", &gather, py::arg("x"), py::arg("b0"), py::arg("b1"), py::arg("transposed"),
        py::arg("out"), "Copies matrices b0 .. b1 of x into a contiguous array (the GPU staging copy; for tests).");
  m.def("_tiny_gram_svals", &tiny_gram_svals, py::arg("x"),
        "The GPU's tiny-matrix route (cpp/kernels/tiny_gram.h) run on the host on one matrix: (values, status).");
  m.def("penalty_plan", &penalty_plan, py::arg("dtype"), py::arg("n"), py::arg("d"),
        "(side, work dtype, k) of the VICReg/Barlow Twins product for one N x d matrix: 'features' (k = d) or "
        "'gram' (k = N).");
  m.def("invariance", &invariance_batch, py::arg("z1"), py::arg("z2"), py::arg("out"),
        "mean((z1 - z2)**2) of each (N, d) pair into out (B,) float64; returns the status (B,).");
  m.def("vicreg_forward", &vicreg_forward_batch, py::arg("zs"), py::arg("gamma"), py::arg("eps"),
        py::arg("with_cov"), py::arg("terms"), py::arg("inv") = py::none(), py::arg("stats") = py::none(),
        py::arg("mats") = py::none(),
        "Per-branch VICReg variance and covariance terms (and the invariance term) of each (N, d) matrix; "
        "returns the status (B, R).");
  m.def("vicreg_backward", &vicreg_backward_batch, py::arg("zs"), py::arg("gamma"), py::arg("eps"),
        py::arg("coef"), py::arg("stats"), py::arg("mats"), py::arg("grads"),
        "Closed-form gradients of the VICReg terms into grads, from what vicreg_forward saved.");
  m.def("barlow_forward", &barlow_forward_batch, py::arg("z1"), py::arg("z2"), py::arg("eps"), py::arg("terms"),
        py::arg("stats") = py::none(), py::arg("cdiag") = py::none(), py::arg("mats") = py::none(),
        "Barlow Twins terms [sum (1 - c_ii)^2, sum_{i!=j} c_ij^2] of each pair; returns the status (B,).");
  m.def("barlow_backward", &barlow_backward_batch, py::arg("z1"), py::arg("z2"), py::arg("eps"), py::arg("coef"),
        py::arg("stats"), py::arg("cdiag"), py::arg("mats"), py::arg("g1"), py::arg("g2"),
        "Closed-form gradients of the Barlow Twins terms into g1, g2, from what barlow_forward saved.");
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("get_num_threads", &num_threads);
  m.def("available_cpus", &available_cpus);
  m.def("compact_max_k", &compact_max_k);
  m.def("isa", [] { return std::string(compact::isa_name()); });
  m.def("blas_config", [] { return std::string(lapack::blas_config()); });
  m.attr("NUM_METRICS") = static_cast<int>(metrics::kNumColumns);
}
