#pragma once
/// \file metrics.h
/// The metrics of cpp/metrics on device spectra: one thread per spectrum, same formulas (shared
/// through metrics_impl.h), results left on the device.

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "metrics/metrics.h"
#include "rankscope/array_view.h"

namespace rankscope::cuda {

/// One spectrum on the device: k values, descending, float32 or float64, `stride` elements apart.
struct SpecDesc {
  const void* ptr;
  int64_t k, stride;
  int f64;
};

/// Every metric of each spectrum into out (B × kNumColumns float64, row-major, device); tol is B × 2
/// float64 (rtol, atol) on the device. Queued on `stream`; does not wait.
void spectrum_metrics(int device, cudaStream_t stream, const std::vector<SpecDesc>& specs, const double* tol,
                      double* out, const metrics::Params& p);

}  // namespace rankscope::cuda
