#pragma once
/// \file blas_tasks.h
/// One policy for running batches of BLAS/LAPACK work on the thread pool (the svdvals engine and the
/// penalties share it). Compiled into _core only (it calls OpenBLAS, which _cuda does not link).

#include <cstdint>
#include <functional>

namespace rankscope {

/// Runs fn(i) for every i in [0, n) the way all BLAS work here runs: in parallel on the pool with
/// OpenBLAS single-threaded (when there are at least as many tasks as threads), or one task after
/// another with OpenBLAS on the pool's thread count — never both. OpenBLAS's thread count is
/// process-wide, so the threaded sections of every caller (the svdvals engine, the penalties) are
/// serialised by one lock. Exceptions from fn propagate, with OpenBLAS back to one thread.
void run_blas_tasks(int64_t n, const std::function<void(int64_t)>& fn);

}  // namespace rankscope
