#pragma once
/// \file array_view.h
/// Non-owning views of user arrays and of single matrices inside them. No pybind11, no CUDA here.

#include <cstdint>
#include <vector>

namespace rankscope {

/// Element types the engine reads and writes. Integer and bool inputs are converted by the Python layer.
enum class DType : uint8_t { F16, BF16, F32, F64 };

/// Where an array lives (DLPack device types we know of).
enum class DeviceType : uint8_t { CPU, CUDA, Other };

/// Size of one element in bytes.
inline int itemsize(DType t) {
  return t == DType::F64 ? 8 : t == DType::F32 ? 4 : 2;
}

/// Name as numpy/torch spell it, for messages.
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    case DType::F32: return "float32";
    case DType::F64: return "float64";
  }
  return "?";
}

/// A strided n-d array: `data` points at element (0, ..., 0); strides are in elements, may be zero or
/// negative. The owner (a DLPack capsule or a Python buffer) outlives the view.
struct ArrayView {
  void* data = nullptr;
  DType dtype = DType::F64;
  DeviceType device = DeviceType::CPU;
  int device_id = 0;
  bool readonly = false;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;

  int ndim() const { return static_cast<int>(shape.size()); }
  /// Product of all dimensions.
  int64_t size() const {
    int64_t s = 1;
    for (int64_t d : shape) s *= d;
    return s;
  }
};

/// One m × n matrix inside some array: element (i, j) at `ptr + (i*rs + j*cs) * itemsize(dtype)`.
struct MatrixRef {
  const void* ptr;
  DType dtype;
  int64_t m, n;
  int64_t rs, cs;
};

/// A strided vector of `len` elements to be written.
struct VectorOut {
  void* ptr;
  DType dtype;
  int64_t stride;
};

}  // namespace rankscope
