// rankscope._cuda: the CUDA engine's Python bindings. Arrays come in through DLPack (torch CUDA
// tensors, CuPy arrays) on the caller's stream; outputs are allocated by the Python layer.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <new>
#include <string>
#include <vector>

#include "bindings/common.h"
#include "bindings/dlpack.h"
#include "core/thread_pool.h"
#include "context.h"
#include "cuda_check.h"
#include "engine.h"
#include "metrics.h"
#include "staging.h"
#include "rankscope/errors.h"

namespace py = pybind11;
using namespace rankscope;
using bindings::ImportedArray;
using bindings::import_array;
using bindings::parse_dtype;
using bindings::parse_method;

namespace {

void require_gpu() {
  RS_CHECK(cuda::device_count() > 0, InvalidArgument,
           "rankscope's CUDA backend is built, but no CUDA device is usable here (", cuda::no_device_reason(), ")");
}

// Every array of a call on one CUDA device; returns that device.
int common_device(const std::vector<const ArrayView*>& views, const std::vector<std::string>& names) {
  int dev = -1;
  for (size_t i = 0; i < views.size(); ++i) {
    const ArrayView& v = *views[i];
    RS_CHECK(v.device == DeviceType::CUDA, InvalidArgument, names[i],
             " is not in CUDA device memory; the CUDA backend reads device arrays only");
    if (dev < 0) dev = v.device_id;
    RS_CHECK(v.device_id == dev, InvalidArgument, names[i], " is on cuda:", v.device_id, " but ", names[0],
             " is on cuda:", dev);
  }
  RS_CHECK(dev < cuda::device_count(), InvalidArgument, "cuda:", dev, " does not exist (", cuda::device_count(),
           " devices)");
  return dev;
}

void check_out_dtype(const ArrayView& o, const char* what) {
  RS_CHECK(o.dtype == DType::F32 || o.dtype == DType::F64, TypeMismatch, what, " must be float32 or float64, got ",
           dtype_name(o.dtype));
}

cudaStream_t as_stream(int64_t s) { return reinterpret_cast<cudaStream_t>(static_cast<intptr_t>(s)); }

py::object status_or_none(std::vector<int8_t>& st, bool sync, std::vector<py::ssize_t> shape) {
  if (!sync) return py::none();
  py::array_t<int8_t> a(shape);
  std::copy(st.begin(), st.end(), a.mutable_data());
  return std::move(a);
}

// Batch (..., m, n) → (..., k) on the device.
py::object svdvals_batch(py::handle x, py::handle out, const std::string& method, int64_t stream, bool sync) {
  require_gpu();
  const Method meth = parse_method(method);
  ImportedArray xa = import_array(x, "x", false, stream), oa = import_array(out, "out", true, stream);
  const ArrayView &xv = xa.view, &ov = oa.view;
  const int device = common_device({&xv, &ov}, {"x", "out"});
  check_out_dtype(ov, "out");
  RS_CHECK(xv.ndim() >= 2, InvalidArgument, "x must have at least 2 dimensions (..., m, n), got ", xv.ndim());
  const int nd = xv.ndim() - 2;
  const int64_t m = xv.shape[nd], n = xv.shape[nd + 1];
  RS_CHECK(ov.ndim() == nd + 1, InvalidArgument, "out must have ", nd + 1, " dimensions");
  for (int d = 0; d < nd; ++d) RS_CHECK(ov.shape[d] == xv.shape[d], InvalidArgument, "out batch shape does not match x");
  RS_CHECK(ov.shape[nd] == std::min(m, n), InvalidArgument, "out must have last dimension min(m, n)");

  cuda::MatrixSet s;
  s.dtype = xv.dtype;
  s.otype = ov.dtype;
  s.m = m;
  s.n = n;
  s.in = static_cast<const char*>(xv.data);
  s.out = static_cast<char*>(ov.data);
  s.rs = xv.strides[nd];
  s.cs = xv.strides[nd + 1];
  s.os = ov.strides[nd];
  s.count = 1;
  std::vector<py::ssize_t> batch;
  // Batch dimensions, with size-1 dimensions dropped and mergeable neighbours merged.
  std::vector<int64_t> sh, is, os;
  for (int d = 0; d < nd; ++d) {
    batch.push_back(xv.shape[d]);
    s.count *= xv.shape[d];
    if (xv.shape[d] == 1) continue;
    if (!sh.empty() && is.back() == xv.strides[d] * xv.shape[d] && os.back() == ov.strides[d] * xv.shape[d]) {
      sh.back() *= xv.shape[d];
      is.back() = xv.strides[d];
      os.back() = ov.strides[d];
      continue;
    }
    sh.push_back(xv.shape[d]);
    is.push_back(xv.strides[d]);
    os.push_back(ov.strides[d]);
  }
  std::vector<int8_t> st(size_t(s.count), 0);
  if (sh.size() > size_t(cuda::kMaxBatchDims)) {
    // Too many strided dimensions for a kernel argument: one descriptor per matrix (the ragged path).
    std::vector<MatrixRef> in(size_t(s.count));
    std::vector<VectorOut> outs(size_t(s.count));
    const int isz = itemsize(xv.dtype), osz = itemsize(ov.dtype);
    for (int64_t b = 0; b < s.count; ++b) {
      int64_t ioff = 0, ooff = 0, rest = b;
      for (int d = nd - 1; d >= 0; --d) {
        const int64_t i = rest % xv.shape[d];
        rest /= xv.shape[d];
        ioff += i * xv.strides[d];
        ooff += i * ov.strides[d];
      }
      in[b] = {s.in + ioff * isz, xv.dtype, m, n, s.rs, s.cs};
      outs[b] = {s.out + ooff * osz, ov.dtype, s.os};
    }
    {
      py::gil_scoped_release nogil;
      cuda::svdvals_list(device, as_stream(stream), in, outs, meth, sync, st.data());
    }
    return status_or_none(st, sync, batch);
  }
  s.nd = int(sh.size());
  for (int d = 0; d < s.nd; ++d) {
    s.shape[d] = sh[d];
    s.istride[d] = is[d];
    s.ostride[d] = os[d];
  }
  {
    py::gil_scoped_release nogil;
    cuda::svdvals_batch(device, as_stream(stream), s, meth, sync, st.data());
  }
  return status_or_none(st, sync, batch);
}

py::object svdvals_list(const py::sequence& xs, const py::sequence& outs_seq, const std::string& method,
                        int64_t stream, bool sync) {
  require_gpu();
  const Method meth = parse_method(method);
  const size_t count = py::len(xs);
  RS_CHECK(py::len(outs_seq) == count, InvalidArgument, "got ", count, " matrices but ", py::len(outs_seq), " outputs");
  std::vector<ImportedArray> keep;
  keep.reserve(2 * count);
  std::vector<MatrixRef> in(count);
  std::vector<VectorOut> outs(count);
  std::vector<const ArrayView*> views;
  std::vector<std::string> names;
  for (size_t i = 0; i < count; ++i) {
    const std::string name = "x[" + std::to_string(i) + "]", oname = "out[" + std::to_string(i) + "]";
    keep.push_back(import_array(xs[i], name.c_str(), false, stream));
    const ArrayView& v = keep.back().view;
    RS_CHECK(v.ndim() == 2, InvalidArgument, name, " must be a 2-D matrix, got ", v.ndim(), " dimensions");
    in[i] = {v.data, v.dtype, v.shape[0], v.shape[1], v.strides[0], v.strides[1]};
    keep.push_back(import_array(outs_seq[i], oname.c_str(), true, stream));
    const ArrayView& o = keep.back().view;
    check_out_dtype(o, oname.c_str());
    RS_CHECK(o.ndim() == 1 && o.shape[0] == std::min(v.shape[0], v.shape[1]), InvalidArgument, oname,
             " must be 1-D of length min(m, n)");
    outs[i] = {o.data, o.dtype, o.strides[0]};
    names.push_back(name);
    names.push_back(oname);
  }
  for (auto& k : keep) views.push_back(&k.view);
  if (count == 0) return sync ? py::object(py::array_t<int8_t>(0)) : py::none();
  const int device = common_device(views, names);
  std::vector<int8_t> st(count, 0);
  {
    py::gil_scoped_release nogil;
    cuda::svdvals_list(device, as_stream(stream), in, outs, meth, sync, st.data());
  }
  return status_or_none(st, sync, {py::ssize_t(count)});
}

// s: device (B, k) spectra or a list of device 1-D spectra (descending); tol: device float64 (B, 2);
// out: device float64 (B, kNumColumns), C-contiguous.
void spectrum_metrics(py::handle s, py::handle tol, py::handle out, double tau, double rankme_eps, bool erank_on_s2,
                      double weak_threshold, int64_t stream) {
  require_gpu();
  RS_CHECK(tau > 0.0 && tau <= 1.0, InvalidArgument, "tau must be in (0, 1], got ", tau);
  RS_CHECK(rankme_eps >= 0.0, InvalidArgument, "eps must be non-negative, got ", rankme_eps);
  RS_CHECK(weak_threshold >= 0.0, InvalidArgument, "threshold must be non-negative, got ", weak_threshold);
  metrics::Params p;
  p.tau = tau;
  p.rankme_eps = rankme_eps;
  p.erank_on_s2 = erank_on_s2;
  p.weak_threshold = weak_threshold;
  std::vector<ImportedArray> keep;
  std::vector<cuda::SpecDesc> specs;
  auto add = [&](const ArrayView& v, int64_t off, int64_t k, int64_t stride) {
    RS_CHECK(v.dtype == DType::F32 || v.dtype == DType::F64, TypeMismatch,
             "singular values must be float32 or float64, got ", dtype_name(v.dtype));
    const int isz = itemsize(v.dtype);
    specs.push_back({static_cast<const char*>(v.data) + off * isz, k, stride, v.dtype == DType::F64});
  };
  if (py::isinstance<py::list>(s) || py::isinstance<py::tuple>(s)) {
    auto seq = py::reinterpret_borrow<py::sequence>(s);
    for (size_t i = 0; i < py::len(seq); ++i) {
      keep.push_back(import_array(seq[i], "s", false, stream));
      const ArrayView& v = keep.back().view;
      RS_CHECK(v.ndim() == 1, InvalidArgument, "each spectrum in a list must be 1-D");
      add(v, 0, v.shape[0], v.strides[0]);
    }
  } else {
    keep.push_back(import_array(s, "s", false, stream));
    const ArrayView& v = keep.back().view;
    RS_CHECK(v.ndim() == 2, InvalidArgument, "s must be 2-D (rows, k)");
    for (int64_t r = 0; r < v.shape[0]; ++r) add(v, r * v.strides[0], v.shape[1], v.strides[1]);
  }
  ImportedArray ta = import_array(tol, "tol", false, stream), oa = import_array(out, "out", true, stream);
  const int64_t B = int64_t(specs.size());
  const ArrayView &tv = ta.view, &ov = oa.view;
  RS_CHECK(tv.dtype == DType::F64 && tv.ndim() == 2 && tv.shape[0] == B && tv.shape[1] == 2 && tv.strides[1] == 1 &&
               tv.strides[0] == 2,
           InvalidArgument, "tol must be a C-contiguous float64 (", B, ", 2) device array");
  RS_CHECK(ov.dtype == DType::F64 && ov.ndim() == 2 && ov.shape[0] == B && ov.shape[1] == metrics::kNumColumns &&
               ov.strides[1] == 1 && ov.strides[0] == metrics::kNumColumns,
           InvalidArgument, "out must be a C-contiguous float64 (", B, ", ", int(metrics::kNumColumns), ") device array");
  std::vector<const ArrayView*> views;
  std::vector<std::string> names;
  for (auto& k : keep) {
    views.push_back(&k.view);
    names.push_back("s");
  }
  views.push_back(&tv);
  names.push_back("tol");
  views.push_back(&ov);
  names.push_back("out");
  const int device = common_device(views, names);
  py::gil_scoped_release nogil;
  cuda::spectrum_metrics(device, as_stream(stream), specs, static_cast<const double*>(tv.data),
                         static_cast<double*>(ov.data), p);
}

int checked_device(int device) {
  require_gpu();
  RS_CHECK(device >= 0 && device < cuda::device_count(), InvalidArgument, "cuda:", device, " does not exist (",
           cuda::device_count(), " devices)");
  return device;
}

// HostStager.load: x is any host array (numpy, torch CPU, DLPack) of the stager's dtype.
void stager_load(cuda::HostStager& st, int slot, py::handle x, int64_t b0, int64_t b1, bool transposed, int64_t at) {
  ImportedArray xa = import_array(x, "x", false);
  RS_CHECK(xa.view.device == DeviceType::CPU, InvalidArgument, "x must be in host memory to be staged");
  py::gil_scoped_release nogil;
  st.load(slot, xa.view, b0, b1, transposed, at);
}

// HostStager.wait: copies of the slot's values (nb, k) and status bytes (nb,).
py::tuple stager_wait(cuda::HostStager& st, int slot) {
  {
    py::gil_scoped_release nogil;
    st.wait(slot);
  }
  const auto nb = py::ssize_t(st.submitted(slot)), k = py::ssize_t(std::min(st.rows(), st.cols()));
  py::array values = st.otype() == DType::F64
                         ? py::array(py::array_t<double>({nb, k}, static_cast<const double*>(st.values(slot))))
                         : py::array(py::array_t<float>({nb, k}, static_cast<const float*>(st.values(slot))));
  return py::make_tuple(values, py::array_t<int8_t>(nb, st.status(slot)));
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "rankscope's CUDA engine (cuSOLVER, cuBLAS and rankscope's kernels). Use the rankscope package.";

  bindings::register_core_translator();
  // Registered last, so tried first (pybind11 runs translators newest first); others fall through.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const cuda::CudaError& e) {
      py::object cls = py::module_::import("rankscope._errors").attr("CudaError");
      PyErr_SetString(cls.ptr(), e.what());
    } catch (const std::bad_alloc&) {
      PyErr_SetString(PyExc_MemoryError, "out of GPU memory for rankscope's workspace "
                                         "(set RANKSCOPE_CUDA_WORKSPACE_MB to use less)");
    }
  });

  m.def("svdvals", &svdvals_batch, py::arg("x"), py::arg("out"), py::arg("method"), py::arg("stream"), py::arg("sync"),
        "Singular values of a (..., m, n) device batch into out (..., min(m, n)), queued on `stream`. With "
        "sync=True waits for the stream and returns the per-matrix status (0 ok, 1 NaN/Inf input, 2 no "
        "convergence); with sync=False returns None at once.");
  m.def("svdvals_list", &svdvals_list, py::arg("xs"), py::arg("outs"), py::arg("method"), py::arg("stream"),
        py::arg("sync"), "Singular values of a list of 2-D device matrices into a list of 1-D outputs.");
  m.def("spectrum_metrics", &spectrum_metrics, py::arg("s"), py::arg("tol"), py::arg("out"), py::arg("tau"),
        py::arg("rankme_eps"), py::arg("erank_on_s2"), py::arg("weak_threshold"), py::arg("stream"),
        "Every metric of each device spectrum (descending) into the device array out (rows, NUM_METRICS).");
  py::class_<cuda::HostStager>(m, "HostStager",
                               "Two pinned staging slots for host batches computed on the GPU (cuda/staging.h); "
                               "driven by rankscope._streaming.")
      .def(py::init([](int device, const std::string& dtype, int64_t rows, int64_t cols, const std::string& otype,
                       int64_t chunk) {
             return std::make_unique<cuda::HostStager>(checked_device(device), parse_dtype(dtype), rows, cols,
                                                       parse_dtype(otype), chunk);
           }),
           py::arg("device"), py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("otype"), py::arg("chunk"))
      .def_property_readonly("chunk", &cuda::HostStager::chunk)
      .def("load", &stager_load, py::arg("slot"), py::arg("x"), py::arg("b0"), py::arg("b1"), py::arg("transposed"),
           py::arg("at") = 0, "Copies matrices b0 .. b1 of host array x into the slot from its matrix `at` on.")
      .def("submit", [](cuda::HostStager& st, int slot, int64_t nb, const std::string& method) {
             const Method meth = parse_method(method);
             py::gil_scoped_release nogil;
             st.submit(slot, nb, meth);
           }, py::arg("slot"), py::arg("nb"), py::arg("method"),
           "Queues upload, singular values and download of the slot's first nb matrices; returns at once.")
      .def("wait", &stager_wait, py::arg("slot"), "Waits for the slot; returns copies of (values, status).");
  m.def("set_num_threads", [](int n) { ThreadPool::instance().set_num_threads(n); }, py::arg("n"),
        "Threads that copy host batches into the staging buffers (rankscope.set_num_threads sets both modules').");
  m.def("get_num_threads", [] { return ThreadPool::instance().num_threads(); });
  m.def("device_count", &cuda::device_count, "Usable CUDA devices (0 without a driver or GPU).");
  m.def("no_device_reason", &cuda::no_device_reason);
  m.def("device_name", [](int d) {
    require_gpu();
    return cuda::device_name(d);
  });
  m.def("route", [](const std::string& dtype, int64_t mm, int64_t n, const std::string& method, int64_t count,
                    int sm_count) {
    return std::string(cuda::route_name(cuda::choose_route(parse_dtype(dtype), mm, n, count, parse_method(method), sm_count)));
  }, py::arg("dtype"), py::arg("m"), py::arg("n"), py::arg("method") = "auto", py::arg("count") = 1,
        py::arg("sm_count") = 132, "The route svdvals takes for `count` matrices of this dtype and shape.");
  m.attr("SMALL_MAX_K") = cuda::kSmallMaxK;
}
