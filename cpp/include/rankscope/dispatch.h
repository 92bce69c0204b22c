#pragma once
/// \file dispatch.h
/// Element types as C++ types, and one switch from a runtime DType into a templated body.

#include <cstdint>
#include <cstring>

#include "rankscope/array_view.h"
#include "rankscope/errors.h"

namespace rankscope {

/// IEEE binary16, stored as bits; converted on read.
struct half_t {
  uint16_t bits;
};
/// bfloat16, stored as bits; converted on read.
struct bfloat16_t {
  uint16_t bits;
};

/// Exact conversion of a stored element to double (float16/bfloat16 values are exact in float32).
inline double to_double(double v) { return v; }
inline double to_double(float v) { return v; }
inline double to_double(bfloat16_t v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline double to_double(half_t v) {
  const uint32_t sign = static_cast<uint32_t>(v.bits & 0x8000u) << 16;
  const uint32_t exp = (v.bits >> 10) & 0x1fu;
  const uint32_t mant = v.bits & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24
    const double mag = static_cast<double>(mant) * (1.0 / 16777216.0);
    return sign ? -mag : mag;
  }
  uint32_t u = exp == 31 ? (sign | 0x7f800000u | (mant << 13)) : (sign | ((exp + 112u) << 23) | (mant << 13));
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace rankscope

/// Runs `__VA_ARGS__` with `T` bound to the C++ type of `dtype`.
#define RS_DISPATCH_DTYPE(dtype, T, ...)                                        \
  switch (dtype) {                                                              \
    case ::rankscope::DType::F64: { using T = double; __VA_ARGS__; break; }      \
    case ::rankscope::DType::F32: { using T = float; __VA_ARGS__; break; }       \
    case ::rankscope::DType::F16: { using T = ::rankscope::half_t; __VA_ARGS__; break; } \
    case ::rankscope::DType::BF16: { using T = ::rankscope::bfloat16_t; __VA_ARGS__; break; } \
  }
