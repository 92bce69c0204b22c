#pragma once
/// \file cuda_check.h
/// CUDA, cuBLAS and cuSOLVER status checks. A failing call throws rankscope::cuda::CudaError
/// ("file:line: <call> failed: <error name>"), which the bindings raise as rankscope.CudaError.

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <stdexcept>
#include <string>

namespace rankscope::cuda {

/// A CUDA runtime, cuBLAS or cuSOLVER call failed (not a user error).
struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const char* cublas_status_name(cublasStatus_t s);
const char* cusolver_status_name(cusolverStatus_t s);

[[noreturn]] void throw_cuda(const char* file, int line, const char* call, const std::string& what);

}  // namespace rankscope::cuda

#define RS_CUDA_CHECK(expr)                                                                          \
  do {                                                                                               \
    cudaError_t rs_err_ = (expr);                                                                    \
    if (rs_err_ != cudaSuccess)                                                                      \
      ::rankscope::cuda::throw_cuda(__FILE__, __LINE__, #expr,                                       \
                                    std::string(cudaGetErrorName(rs_err_)) + " (" +                  \
                                        cudaGetErrorString(rs_err_) + ")");                          \
  } while (0)

#define RS_CUBLAS_CHECK(expr)                                                                        \
  do {                                                                                               \
    cublasStatus_t rs_st_ = (expr);                                                                  \
    if (rs_st_ != CUBLAS_STATUS_SUCCESS)                                                             \
      ::rankscope::cuda::throw_cuda(__FILE__, __LINE__, #expr,                                       \
                                    ::rankscope::cuda::cublas_status_name(rs_st_));                 \
  } while (0)

#define RS_CUSOLVER_CHECK(expr)                                                                      \
  do {                                                                                               \
    cusolverStatus_t rs_st_ = (expr);                                                                \
    if (rs_st_ != CUSOLVER_STATUS_SUCCESS)                                                           \
      ::rankscope::cuda::throw_cuda(__FILE__, __LINE__, #expr,                                       \
                                    ::rankscope::cuda::cusolver_status_name(rs_st_));               \
  } while (0)

/// After a kernel launch: launch-configuration errors surface here, not at the next sync.
#define RS_CUDA_LAUNCH_CHECK() RS_CUDA_CHECK(cudaGetLastError())
