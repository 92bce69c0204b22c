#include "context.h"

#include <cstdlib>
#include <map>
#include <memory>
#include <utility>

#include "cuda_check.h"

namespace rankscope::cuda {

const char* cublas_status_name(cublasStatus_t s) { return cublasGetStatusName(s); }

const char* cusolver_status_name(cusolverStatus_t s) {
  switch (s) {
    case CUSOLVER_STATUS_SUCCESS: return "CUSOLVER_STATUS_SUCCESS";
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE: return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "CUSOLVER_STATUS_NOT_SUPPORTED";
    default: return "CUSOLVER_STATUS_<other>";
  }
}

void throw_cuda(const char* file, int line, const char* call, const std::string& what) {
  const char* base = file;
  for (const char* p = file; *p; ++p)
    if (*p == '/') base = p + 1;
  throw CudaError(std::string(base) + ":" + std::to_string(line) + ": " + call + " failed: " + what);
}

namespace {
std::string g_no_device;

int probe_devices() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    g_no_device = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
    (void)cudaGetLastError();  // clear the sticky-free error so later calls report their own
    return 0;
  }
  if (n == 0) g_no_device = "no CUDA device is visible";
  return n;
}

std::mutex g_pool_mutex;
std::map<int, cudaMemPool_t> g_pools;

cudaMemPool_t pool_of(int device) {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  auto it = g_pools.find(device);
  if (it != g_pools.end()) return it->second;
  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = device;
  cudaMemPool_t pool;
  RS_CUDA_CHECK(cudaMemPoolCreate(&pool, &props));
  uint64_t keep = 1ull << 30;
  RS_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
  g_pools.emplace(device, pool);
  return pool;
}

std::mutex g_ctx_mutex;
std::map<std::pair<int, cudaStream_t>, std::unique_ptr<StreamContext>> g_contexts;
}  // namespace

int device_count() {
  static const int n = probe_devices();
  return n;
}

std::string no_device_reason() {
  return device_count() > 0 ? std::string() : g_no_device;
}

std::string device_name(int device) {
  cudaDeviceProp p;
  RS_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  return p.name;
}

DeviceGuard::DeviceGuard(int device) {
  RS_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device) RS_CUDA_CHECK(cudaSetDevice(device));
}

DeviceGuard::~DeviceGuard() {
  int now = -1;
  if (cudaGetDevice(&now) == cudaSuccess && now != previous_) (void)cudaSetDevice(previous_);
}

DeviceBuffer::DeviceBuffer(size_t bytes, int device, cudaStream_t stream) : bytes_(bytes), stream_(stream) {
  if (bytes == 0) return;
  const cudaError_t e = cudaMallocFromPoolAsync(&ptr_, bytes, pool_of(device), stream);
  if (e == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    throw std::bad_alloc();
  }
  RS_CUDA_CHECK(e);
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  std::swap(ptr_, o.ptr_);
  std::swap(bytes_, o.bytes_);
  std::swap(stream_, o.stream_);
  return *this;
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) (void)cudaFreeAsync(ptr_, stream_);
}

void* StreamContext::pinned(size_t bytes) {
  for (size_t i = 0; i < slots_.size(); ++i) {
    Slot& s = slots_[i];
    if (s.size >= bytes && cudaEventQuery(s.done) == cudaSuccess) {
      current_ = static_cast<int>(i);
      return s.ptr;
    }
  }
  Slot s;
  s.size = bytes < 4096 ? 4096 : bytes;
  RS_CUDA_CHECK(cudaHostAlloc(&s.ptr, s.size, cudaHostAllocDefault));
  RS_CUDA_CHECK(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming));
  slots_.push_back(s);
  current_ = static_cast<int>(slots_.size() - 1);
  return s.ptr;
}

void StreamContext::staged() {
  if (current_ >= 0) RS_CUDA_CHECK(cudaEventRecord(slots_[current_].done, stream));
}

StreamContext& stream_context(int device, cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(g_ctx_mutex);
  auto& slot = g_contexts[{device, stream}];
  if (!slot) {
    auto c = std::make_unique<StreamContext>();
    c->device = device;
    c->stream = stream;
    RS_CUSOLVER_CHECK(cusolverDnCreate(&c->solver));
    RS_CUSOLVER_CHECK(cusolverDnSetStream(c->solver, stream));
    RS_CUSOLVER_CHECK(cusolverDnCreateParams(&c->params));
    RS_CUSOLVER_CHECK(cusolverDnCreateGesvdjInfo(&c->gesvdj));
    RS_CUBLAS_CHECK(cublasCreate(&c->blas));
    RS_CUBLAS_CHECK(cublasSetStream(c->blas, stream));
    // Exact float64 arithmetic only: no tensor-core emulation or reduced-precision modes.
    RS_CUBLAS_CHECK(cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH));
    RS_CUDA_CHECK(cudaDeviceGetAttribute(&c->sm_count, cudaDevAttrMultiProcessorCount, device));
    slot = std::move(c);
  }
  return *slot;
}

size_t workspace_budget(size_t want) {
  if (const char* env = std::getenv("RANKSCOPE_CUDA_WORKSPACE_MB")) {
    const long long mb = std::atoll(env);
    if (mb > 0) return static_cast<size_t>(mb) << 20;
  }
  if (want <= (size_t(256) << 20)) return want;
  size_t free_b = 0, total_b = 0;
  RS_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  return free_b / 2;
}

}  // namespace rankscope::cuda
