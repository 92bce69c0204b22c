#include "core/blas_tasks.h"

#include <mutex>

#include "core/thread_pool.h"
#include "lapack/lapack.h"

namespace rankscope {

void run_blas_tasks(int64_t n, const std::function<void(int64_t)>& fn) {
  static std::once_flag once;  // OpenBLAS single-threaded inside pool workers, set once
  std::call_once(once, [] { lapack::set_blas_threads(1); });
  ThreadPool& pool = ThreadPool::instance();
  const int nt = pool.num_threads();
  if (n >= nt || nt == 1) {
    pool.parallel_for(n, fn);
    return;
  }
  static std::mutex mu;
  std::lock_guard<std::mutex> lk(mu);
  lapack::set_blas_threads(nt);
  try {
    for (int64_t i = 0; i < n; ++i) fn(i);
  } catch (...) {
    lapack::set_blas_threads(1);
    throw;
  }
  lapack::set_blas_threads(1);
}

}  // namespace rankscope
