#include "metrics.h"

#include <cstring>

#include "context.h"
#include "cuda_check.h"
#include "metrics/metrics_impl.h"

namespace rankscope::cuda {
namespace {

struct DeviceSpectrum {
  SpecDesc d;
  __device__ double operator[](int64_t i) const {
    return d.f64 ? static_cast<const double*>(d.ptr)[i * d.stride]
                 : static_cast<double>(static_cast<const float*>(d.ptr)[i * d.stride]);
  }
};

__global__ void metrics_kernel(const SpecDesc* specs, int64_t count, const double* tol, double* out,
                               metrics::Params p) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= count) return;
  const DeviceSpectrum s{specs[b]};
  metrics::compute_impl(s, s.d.k, metrics::RowTol{tol[2 * b], tol[2 * b + 1]}, p, out + b * metrics::kNumColumns);
}

}  // namespace

void spectrum_metrics(int device, cudaStream_t stream, const std::vector<SpecDesc>& specs, const double* tol,
                      double* out, const metrics::Params& p) {
  if (specs.empty()) return;
  DeviceGuard guard(device);
  StreamContext& ctx = stream_context(device, stream);
  std::lock_guard<std::mutex> lock(ctx.mutex);
  const size_t bytes = specs.size() * sizeof(SpecDesc);
  void* host = ctx.pinned(bytes);
  std::memcpy(host, specs.data(), bytes);
  DeviceBuffer d_specs(bytes, device, stream);
  RS_CUDA_CHECK(cudaMemcpyAsync(d_specs.as<void>(), host, bytes, cudaMemcpyHostToDevice, stream));
  ctx.staged();
  const int64_t count = int64_t(specs.size());
  metrics_kernel<<<unsigned((count + 127) / 128), 128, 0, stream>>>(d_specs.as<SpecDesc>(), count, tol, out, p);
  RS_CUDA_LAUNCH_CHECK();
}

}  // namespace rankscope::cuda
