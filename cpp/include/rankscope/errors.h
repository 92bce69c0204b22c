#pragma once
/// \file errors.h
/// Exception types of the C++ core. The bindings turn them into Python exceptions:
/// InvalidArgument → ValueError, TypeMismatch → TypeError, LinAlgError → rankscope.LinAlgError,
/// anything else → RuntimeError. Nothing in the core aborts the process.

#include <sstream>
#include <stdexcept>
#include <string>

namespace rankscope {

/// A caller passed something malformed (shape, device, value).
struct InvalidArgument : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
/// A caller passed something of the wrong type (dtype, object kind).
struct TypeMismatch : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
/// A library routine failed (LAPACK argument error, allocation, ...).
struct LinAlgError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace rankscope

/// Throws `Exc` with the streamed message when `cond` is false.
#define RS_CHECK(cond, Exc, ...)                                  \
  do {                                                            \
    if (!(cond)) throw Exc(::rankscope::detail::concat(__VA_ARGS__)); \
  } while (0)

/// Throws `Exc` with the streamed message.
#define RS_FAIL(Exc, ...) throw Exc(::rankscope::detail::concat(__VA_ARGS__))
