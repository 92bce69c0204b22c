#pragma once
/// \file dlpack.h
/// Array import for the bindings: any object with __dlpack__ (versioned first, then legacy), else the
/// buffer protocol, else TypeError. Declares the DLPack ABI itself rather than depending on a header.

#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>

#include "rankscope/array_view.h"

namespace rankscope::bindings {

namespace py = pybind11;

/// A borrowed array: `view` stays valid while this object lives. Destroy it with the GIL held
/// (producers' deleters may touch Python objects).
class ImportedArray {
 public:
  ArrayView view;

  ImportedArray() = default;
  ImportedArray(ImportedArray&&) noexcept;
  ImportedArray& operator=(ImportedArray&&) noexcept;
  ImportedArray(const ImportedArray&) = delete;
  ImportedArray& operator=(const ImportedArray&) = delete;
  ~ImportedArray();

 private:
  friend ImportedArray import_array(py::handle, const char*, bool, int64_t);
  struct Owner;
  std::unique_ptr<Owner> owner_;
};

/// Imports `obj` without copying. `what` names the argument in error messages; `writable` refuses
/// read-only arrays. Rejects dtypes other than float16/bfloat16/float32/float64 with TypeError.
/// `stream` (kNoStream for host arrays) is the CUDA stream the consumer will use, passed to
/// `__dlpack__(stream=...)` for arrays whose `__dlpack_device__` is a CUDA device, so that the
/// producer orders its pending work before it (DLPack: 1 is the legacy default stream).
constexpr int64_t kNoStream = -1;
ImportedArray import_array(py::handle obj, const char* what, bool writable, int64_t stream = kNoStream);

}  // namespace rankscope::bindings
