#pragma once
/// \file gather.h
/// Copies matrices out of a strided host batch into a contiguous buffer: the staging step of
/// host-resident batches computed on a GPU (cuda/staging.h), in the input's own dtype.

#include <cstdint>

#include "rankscope/array_view.h"

namespace rankscope {

/// Whether a (..., m, n) view is stored closer to column-major (|column stride| > |row stride|): its
/// matrices are then best copied as Aᵀ (n × m, row-major), which has the same singular values.
bool prefers_transposed(const ArrayView& x);

/// Copies matrices b0 .. b1-1 of the host view x (..., m, n), numbered in row-major order of the batch
/// dimensions, to `dst` as a C-contiguous (b1 - b0, m, n) array of x's dtype, or (b1 - b0, n, m) of
/// their transposes when `transposed`. Rows are spread over the thread pool for large copies. Call
/// without the GIL; throws InvalidArgument for a bad range or a non-host view.
void gather_matrices(const ArrayView& x, int64_t b0, int64_t b1, bool transposed, void* dst);

}  // namespace rankscope
