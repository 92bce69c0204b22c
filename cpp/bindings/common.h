#pragma once
/// \file common.h
/// Pieces both extension modules (_core, _cuda) use: argument parsing and the translation of the
/// core's exception types into Python exceptions.

#include <pybind11/pybind11.h>

#include <string>

#include "rankscope/array_view.h"
#include "rankscope/engine.h"
#include "rankscope/errors.h"

namespace rankscope::bindings {

inline Method parse_method(const std::string& m) {
  if (m == "auto") return Method::Auto;
  if (m == "exact") return Method::Exact;
  if (m == "gram") return Method::Gram;
  RS_FAIL(InvalidArgument, "method must be 'auto', 'exact' or 'gram', got '", m, "'");
}

inline DType parse_dtype(const std::string& d) {
  if (d == "float64") return DType::F64;
  if (d == "float32") return DType::F32;
  if (d == "float16") return DType::F16;
  if (d == "bfloat16") return DType::BF16;
  RS_FAIL(InvalidArgument, "unknown dtype ", d);
}

/// InvalidArgument → ValueError, TypeMismatch → TypeError, LinAlgError → rankscope.LinAlgError.
inline void register_core_translator() {
  pybind11::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const TypeMismatch& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const InvalidArgument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const LinAlgError& e) {
      pybind11::object cls = pybind11::module_::import("rankscope._errors").attr("LinAlgError");
      PyErr_SetString(cls.ptr(), e.what());
    }
  });
}

}  // namespace rankscope::bindings
