#include "core/gather.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/thread_pool.h"
#include "rankscope/errors.h"

namespace rankscope {

bool prefers_transposed(const ArrayView& x) {
  const int nd = x.ndim();
  if (nd < 2) return false;
  const int64_t rs = std::llabs(x.strides[nd - 2]), cs = std::llabs(x.strides[nd - 1]);
  // Only when it matters: a single row or column is contiguous either way.
  return x.shape[nd - 2] > 1 && x.shape[nd - 1] > 1 && cs > rs;
}

namespace {

template <class U>  // U: an unsigned integer of the element's size (the copy never looks at values)
void copy_row(const char* src, int64_t stride, int64_t len, char* dst) {
  const U* s = reinterpret_cast<const U*>(src);
  U* d = reinterpret_cast<U*>(dst);
  for (int64_t j = 0; j < len; ++j) d[j] = s[j * stride];
}

}  // namespace

void gather_matrices(const ArrayView& x, int64_t b0, int64_t b1, bool transposed, void* dst) {
  RS_CHECK(x.device == DeviceType::CPU, InvalidArgument, "gather_matrices reads host arrays only");
  const int nd = x.ndim() - 2;
  RS_CHECK(nd >= 0, InvalidArgument, "x must have at least 2 dimensions (..., m, n), got ", x.ndim());
  int64_t count = 1;
  for (int d = 0; d < nd; ++d) count *= x.shape[d];
  RS_CHECK(0 <= b0 && b0 <= b1 && b1 <= count, InvalidArgument, "matrix range [", b0, ", ", b1,
           ") is outside the batch of ", count);
  // The copied matrix: rows × cols with element strides (rs, cs) in x.
  const int64_t m = x.shape[nd], n = x.shape[nd + 1];
  const int64_t rows = transposed ? n : m, cols = transposed ? m : n;
  const int64_t rs = transposed ? x.strides[nd + 1] : x.strides[nd];
  const int64_t cs = transposed ? x.strides[nd] : x.strides[nd + 1];
  const int isz = itemsize(x.dtype);
  const int64_t nb = b1 - b0, row_bytes = cols * isz;
  if (nb == 0 || rows == 0 || cols == 0) return;

  const char* base = static_cast<const char*>(x.data);
  char* out = static_cast<char*>(dst);
  auto matrix_offset = [&](int64_t b) {  // element offset of matrix b in x
    int64_t off = 0;
    for (int d = nd - 1; d >= 0; --d) {
      off += (b % x.shape[d]) * x.strides[d];
      b /= x.shape[d];
    }
    return off;
  };
  // Tasks of whole rows, about 1 MiB each, so that small copies stay on the calling thread.
  const int64_t total_rows = nb * rows;
  const int64_t rows_per_task = std::max<int64_t>(1, (int64_t(1) << 20) / std::max<int64_t>(row_bytes, 1));
  const int64_t n_tasks = (total_rows + rows_per_task - 1) / rows_per_task;
  auto task = [&](int64_t t) {
    const int64_t r0 = t * rows_per_task, r1 = std::min(total_rows, r0 + rows_per_task);
    int64_t b = r0 / rows, i = r0 % rows, moff = matrix_offset(b0 + b);
    for (int64_t r = r0; r < r1; ++r) {
      const char* src = base + (moff + i * rs) * isz;
      char* d = out + r * row_bytes;
      if (cs == 1) {
        std::memcpy(d, src, size_t(row_bytes));
      } else if (isz == 8) {
        copy_row<uint64_t>(src, cs, cols, d);
      } else if (isz == 4) {
        copy_row<uint32_t>(src, cs, cols, d);
      } else {
        copy_row<uint16_t>(src, cs, cols, d);
      }
      if (++i == rows && r + 1 < r1) {
        i = 0;
        moff = matrix_offset(b0 + ++b);
      }
    }
  };
  if (n_tasks == 1) {
    task(0);
  } else {
    ThreadPool::instance().parallel_for(n_tasks, task);
  }
}

}  // namespace rankscope
