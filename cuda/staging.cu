#include "staging.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include "core/gather.h"
#include "cuda_check.h"
#include "engine.h"
#include "rankscope/errors.h"

namespace rankscope::cuda {

namespace {

// ---- pinned host memory cache ------------------------------------------------------------------------
constexpr size_t kPinnedCacheBytes = size_t(256) << 20;
std::mutex g_pinned_mutex;
std::multimap<size_t, void*> g_pinned_free;  // size → block
size_t g_pinned_cached = 0;

void* take_pinned(size_t& bytes) {
  {
    std::lock_guard<std::mutex> lock(g_pinned_mutex);
    // The smallest cached block that fits, unless it is far larger than asked for.
    auto it = g_pinned_free.lower_bound(bytes);
    if (it != g_pinned_free.end() && it->first <= 4 * bytes + (size_t(1) << 20)) {
      bytes = it->first;
      void* p = it->second;
      g_pinned_cached -= it->first;
      g_pinned_free.erase(it);
      return p;
    }
  }
  bytes = std::max(bytes, size_t(1) << 16);
  void* p = nullptr;
  const cudaError_t e = cudaHostAlloc(&p, bytes, cudaHostAllocPortable);
  if (e == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    throw std::bad_alloc();
  }
  RS_CUDA_CHECK(e);
  return p;
}

void give_pinned(void* p, size_t bytes) noexcept {
  std::vector<void*> drop;
  {
    std::lock_guard<std::mutex> lock(g_pinned_mutex);
    g_pinned_free.emplace(bytes, p);
    g_pinned_cached += bytes;
    while (g_pinned_cached > kPinnedCacheBytes && !g_pinned_free.empty()) {
      auto largest = std::prev(g_pinned_free.end());
      g_pinned_cached -= largest->first;
      drop.push_back(largest->second);
      g_pinned_free.erase(largest);
    }
  }
  for (void* d : drop) (void)cudaFreeHost(d);
}

// ---- (copy, compute) stream pairs, per device, reused so that their handles are made once ----------
struct StreamPair {
  cudaStream_t copy, compute;
};
std::mutex g_streams_mutex;
std::map<int, std::vector<StreamPair>> g_free_streams;

StreamPair take_streams(int device) {
  {
    std::lock_guard<std::mutex> lock(g_streams_mutex);
    auto& v = g_free_streams[device];
    if (!v.empty()) {
      StreamPair p = v.back();
      v.pop_back();
      return p;
    }
  }
  StreamPair p{};
  RS_CUDA_CHECK(cudaStreamCreateWithFlags(&p.copy, cudaStreamNonBlocking));
  const cudaError_t e = cudaStreamCreateWithFlags(&p.compute, cudaStreamNonBlocking);
  if (e != cudaSuccess) (void)cudaStreamDestroy(p.copy);
  RS_CUDA_CHECK(e);
  return p;
}

void give_streams(int device, StreamPair p) noexcept {
  std::lock_guard<std::mutex> lock(g_streams_mutex);
  g_free_streams[device].push_back(p);
}

}  // namespace

PinnedBlock::PinnedBlock(size_t bytes) : size_(bytes) { ptr_ = take_pinned(size_); }

PinnedBlock& PinnedBlock::operator=(PinnedBlock&& o) noexcept {
  std::swap(ptr_, o.ptr_);
  std::swap(size_, o.size_);
  return *this;
}

PinnedBlock::~PinnedBlock() {
  if (ptr_) give_pinned(ptr_, size_);
}

// ---- the stager ----------------------------------------------------------------------------------------

HostStager::HostStager(int device, DType dtype, int64_t rows, int64_t cols, DType otype, int64_t chunk)
    : device_(device), dtype_(dtype), otype_(otype), rows_(rows), cols_(cols), k_(std::min(rows, cols)), chunk_(chunk) {
  RS_CHECK(rows > 0 && cols > 0 && chunk > 0, InvalidArgument, "HostStager needs rows, cols and chunk > 0, got ", rows,
           ", ", cols, ", ", chunk);
  RS_CHECK(otype == DType::F32 || otype == DType::F64, TypeMismatch, "values must be float32 or float64, got ",
           dtype_name(otype));
  DeviceGuard guard(device);
  const StreamPair streams = take_streams(device);
  copy_ = streams.copy;
  compute_ = streams.compute;
  try {
    const size_t in_bytes = size_t(chunk) * rows * cols * itemsize(dtype), out_bytes = size_t(chunk) * k_ * itemsize(otype);
    for (Slot& s : slots_) {
      s.in = PinnedBlock(in_bytes);
      s.out = PinnedBlock(out_bytes);
      s.status = PinnedBlock(size_t(chunk));
      s.d_in = DeviceBuffer(in_bytes, device, compute_);
      s.d_out = DeviceBuffer(out_bytes, device, compute_);
      s.d_status = DeviceBuffer(size_t(chunk), device, compute_);
      RS_CUDA_CHECK(cudaEventCreateWithFlags(&s.uploaded, cudaEventDisableTiming));
      RS_CUDA_CHECK(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming));
    }
    // The device buffers are ordered on the compute stream; uploads on the copy stream come after.
    RS_CUDA_CHECK(cudaEventRecord(slots_[0].done, compute_));
    RS_CUDA_CHECK(cudaStreamWaitEvent(copy_, slots_[0].done, 0));
  } catch (...) {
    release();
    throw;
  }
}

HostStager::~HostStager() { release(); }

void HostStager::release() noexcept {
  if (!compute_) return;
  int previous = -1;
  (void)cudaGetDevice(&previous);
  (void)cudaSetDevice(device_);
  // Nothing may be freed or handed on while an upload, a kernel or a download still uses it.
  (void)cudaStreamSynchronize(copy_);
  (void)cudaStreamSynchronize(compute_);
  for (Slot& s : slots_) {
    if (s.uploaded) (void)cudaEventDestroy(s.uploaded);
    if (s.done) (void)cudaEventDestroy(s.done);
    s = Slot();  // stream-ordered frees on the (idle) compute stream; pinned blocks back to the cache
  }
  give_streams(device_, StreamPair{copy_, compute_});
  copy_ = compute_ = nullptr;
  if (previous >= 0) (void)cudaSetDevice(previous);
}

HostStager::Slot& HostStager::slot(int s) {
  RS_CHECK(s >= 0 && s < kSlots, InvalidArgument, "slot must be 0 or 1, got ", s);
  return slots_[s];
}

void HostStager::load(int s, const ArrayView& x, int64_t b0, int64_t b1, bool transposed, int64_t at) {
  Slot& sl = slot(s);
  RS_CHECK(!sl.busy, InvalidArgument, "slot ", s, " is still in use: wait for it before loading it again");
  RS_CHECK(x.dtype == dtype_, TypeMismatch, "x is ", dtype_name(x.dtype), " but this stager holds ",
           dtype_name(dtype_));
  RS_CHECK(x.ndim() >= 2, InvalidArgument, "x must have at least 2 dimensions (..., m, n)");
  const int64_t m = x.shape[x.ndim() - 2], n = x.shape[x.ndim() - 1];
  RS_CHECK((transposed ? n : m) == rows_ && (transposed ? m : n) == cols_, InvalidArgument, "x's matrices are ", m,
           " × ", n, (transposed ? " (transposed)" : ""), " but this stager holds ", rows_, " × ", cols_);
  RS_CHECK(at >= 0 && b1 >= b0 && at + (b1 - b0) <= chunk_, InvalidArgument, "matrices ", at, " .. ",
           at + (b1 - b0), " do not fit a slot of ", chunk_);
  gather_matrices(x, b0, b1, transposed, sl.in.as<char>() + size_t(at) * rows_ * cols_ * itemsize(dtype_));
}

void HostStager::submit(int s, int64_t nb, Method method) {
  Slot& sl = slot(s);
  RS_CHECK(!sl.busy, InvalidArgument, "slot ", s, " is still in use: wait for it before submitting it again");
  RS_CHECK(nb > 0 && nb <= chunk_, InvalidArgument, "nb must be in 1 .. ", chunk_, ", got ", nb);
  DeviceGuard guard(device_);
  sl.busy = true;  // from here on the destructor must wait, whatever fails
  sl.nb = nb;
  RS_CUDA_CHECK(cudaMemcpyAsync(sl.d_in.as<void>(), sl.in.as<void>(), size_t(nb) * rows_ * cols_ * itemsize(dtype_),
                                cudaMemcpyHostToDevice, copy_));
  RS_CUDA_CHECK(cudaEventRecord(sl.uploaded, copy_));
  RS_CUDA_CHECK(cudaStreamWaitEvent(compute_, sl.uploaded, 0));
  MatrixSet set;
  set.dtype = dtype_;
  set.otype = otype_;
  set.m = rows_;
  set.n = cols_;
  set.count = nb;
  set.in = sl.d_in.as<const char>();
  set.out = sl.d_out.as<char>();
  set.nd = 1;
  set.shape[0] = nb;
  set.istride[0] = rows_ * cols_;
  set.ostride[0] = k_;
  set.rs = cols_;
  set.cs = 1;
  set.os = 1;
  queue_batch(device_, compute_, set, method, sl.d_status.as<int8_t>());
  RS_CUDA_CHECK(cudaMemcpyAsync(sl.out.as<void>(), sl.d_out.as<void>(), size_t(nb) * k_ * itemsize(otype_),
                                cudaMemcpyDeviceToHost, compute_));
  RS_CUDA_CHECK(cudaMemcpyAsync(sl.status.as<void>(), sl.d_status.as<void>(), size_t(nb), cudaMemcpyDeviceToHost,
                                compute_));
  RS_CUDA_CHECK(cudaEventRecord(sl.done, compute_));
}

void HostStager::wait(int s) {
  Slot& sl = slot(s);
  RS_CHECK(sl.busy, InvalidArgument, "slot ", s, " has nothing submitted");
  RS_CUDA_CHECK(cudaEventSynchronize(sl.done));
  sl.busy = false;
}

}  // namespace rankscope::cuda
