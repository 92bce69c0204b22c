#pragma once
/// \file context.h
/// Per-device and per-stream state of the CUDA backend: the device guard, stream-ordered workspace
/// memory from rankscope's own pool, pinned staging buffers, and cuBLAS/cuSOLVER handles cached per
/// (device, stream). Nothing here synchronises the device.

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <cstddef>
#include <mutex>
#include <string>
#include <vector>

namespace rankscope::cuda {

/// Number of usable CUDA devices; 0 (never an exception) without a driver or a GPU.
int device_count();
/// Why device_count() is 0 ("" when it is not): the CUDA runtime's message.
std::string no_device_reason();
/// "NVIDIA H100 80GB HBM3" and the like.
std::string device_name(int device);

/// Makes `device` current in this thread for the scope and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

/// Device memory ordered on a stream: taken from rankscope's pool on the device with
/// cudaMallocFromPoolAsync, given back with cudaFreeAsync on the same stream. The pool keeps up to
/// 1 GiB between calls, so repeated calls do not go back to the driver.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(size_t bytes, int device, cudaStream_t stream);
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  template <class T>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t size() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  cudaStream_t stream_ = nullptr;
};

/// Handles and staging memory of one (device, stream), created on first use and kept for the life of
/// the process. `mutex` serialises calls on one stream (the handles are bound to it and are not
/// thread-safe); calls on different streams run concurrently.
struct StreamContext {
  int device = 0;
  cudaStream_t stream = nullptr;
  cusolverDnHandle_t solver = nullptr;
  cublasHandle_t blas = nullptr;
  cusolverDnParams_t params = nullptr;
  gesvdjInfo_t gesvdj = nullptr;
  int sm_count = 0;
  std::mutex mutex;

  /// Pinned host memory of at least `bytes` that no queued copy still uses. Valid until the next
  /// pinned() call on this context; call staged() after queueing the copies that use it.
  void* pinned(size_t bytes);
  /// Marks the buffer last returned by pinned() as in use by the work queued so far on the stream.
  void staged();

 private:
  struct Slot {
    void* ptr = nullptr;
    size_t size = 0;
    cudaEvent_t done = nullptr;
  };
  std::vector<Slot> slots_;
  int current_ = -1;
};

/// The context of (device, stream). Thread-safe; the device must be current (DeviceGuard).
StreamContext& stream_context(int device, cudaStream_t stream);

/// Bytes of device memory one call may use for its workspace: RANKSCOPE_CUDA_WORKSPACE_MB when set,
/// else `want` itself when it is at most 256 MiB (no query: cudaMemGetInfo costs tens of µs, as much as
/// a whole small call), else half of what is free now.
size_t workspace_budget(size_t want);

}  // namespace rankscope::cuda
