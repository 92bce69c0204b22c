#pragma once
/// \file staging.h
/// Host-resident batches on the GPU. Matrices are copied chunk by chunk into one of two pinned
/// staging slots (in their own dtype, by the thread pool), uploaded on a copy stream while the other
/// slot's chunk computes on a compute stream, and their values and status bytes come back into pinned
/// memory. Host and device memory are bounded by the chunk, so batches larger than the GPU's memory
/// work. The Python layer (rankscope/_streaming.py) drives the slots: load → submit → wait.

#include <cuda_runtime.h>

#include <cstdint>

#include "context.h"
#include "rankscope/array_view.h"
#include "rankscope/engine.h"

namespace rankscope::cuda {

/// Page-locked host memory from a process-wide cache (cudaHostAlloc is slow: pinning costs about as
/// much as copying the memory several times). Blocks go back to the cache, which keeps up to 256 MiB.
class PinnedBlock {
 public:
  PinnedBlock() = default;
  explicit PinnedBlock(size_t bytes);
  PinnedBlock(PinnedBlock&& o) noexcept { *this = std::move(o); }
  PinnedBlock& operator=(PinnedBlock&& o) noexcept;
  PinnedBlock(const PinnedBlock&) = delete;
  PinnedBlock& operator=(const PinnedBlock&) = delete;
  ~PinnedBlock();

  template <class T>
  T* as() const { return static_cast<T*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  size_t size_ = 0;
};

/// Two staging slots of up to `chunk` matrices rows × cols of `dtype` each (C-contiguous), their
/// device copies, and min(rows, cols) values of `otype` per matrix. Uses a (copy, compute) stream
/// pair of its own, taken from a per-device pool, so calls from other threads and the caller's own
/// streams are unaffected. Not thread-safe itself: one driver per stager.
class HostStager {
 public:
  HostStager(int device, DType dtype, int64_t rows, int64_t cols, DType otype, int64_t chunk);
  /// Waits for all queued work, then gives the buffers and streams back.
  ~HostStager();
  HostStager(const HostStager&) = delete;
  HostStager& operator=(const HostStager&) = delete;

  /// Copies matrices b0 .. b1-1 of the host view x (..., m, n) into `slot` from its matrix `at` on
  /// (transposed: as n × m). The slot must be idle (never submitted, or waited for). No GIL needed.
  void load(int slot, const ArrayView& x, int64_t b0, int64_t b1, bool transposed, int64_t at);
  /// Queues the upload of the slot's first `nb` matrices, their singular values and the download of
  /// values and status bytes. Returns at once; the slot is busy until wait(slot).
  void submit(int slot, int64_t nb, Method method);
  /// Blocks until the slot's work is done; then values(slot) (nb × k of otype, C-contiguous) and
  /// status(slot) (nb bytes: 0 ok, 1 NaN/Inf input, 2 no convergence) hold its results.
  void wait(int slot);

  const void* values(int slot) const { return slots_[slot].out.as<void>(); }
  const int8_t* status(int slot) const { return slots_[slot].status.as<int8_t>(); }
  int64_t submitted(int slot) const { return slots_[slot].nb; }
  int64_t chunk() const { return chunk_; }
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  DType dtype() const { return dtype_; }
  DType otype() const { return otype_; }

  static constexpr int kSlots = 2;

 private:
  struct Slot {
    PinnedBlock in, out, status;
    DeviceBuffer d_in, d_out, d_status;
    cudaEvent_t uploaded = nullptr, done = nullptr;
    bool busy = false;
    int64_t nb = 0;
  };
  int device_;
  DType dtype_, otype_;
  int64_t rows_, cols_, k_, chunk_;
  cudaStream_t copy_ = nullptr, compute_ = nullptr;
  Slot slots_[kSlots];

  Slot& slot(int s);
  void release() noexcept;
};

}  // namespace rankscope::cuda
