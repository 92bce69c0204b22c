#pragma once
/// \file released_gil.h
/// The GIL guard of _core's calls, safe for daemon threads that are still inside a call when the
/// interpreter exits.
///
/// py::gil_scoped_release takes the GIL back in its destructor. During finalization Python (before
/// 3.14) ends a thread that does so with pthread_exit, whose unwinding out of a destructor aborts
/// the process ("terminate called without an active exception"). And once the interpreter is gone,
/// exit() runs OpenBLAS's teardown, which frees its buffers and joins its threads under any BLAS
/// call still running (a crash or a hang). So: a thread that would be ended sleeps instead, without
/// touching Python again, until the process exits; and exit() first waits for the calls in flight.

#include <Python.h>
#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>
#if defined(__GLIBCXX__)
#include <cxxabi.h>
#endif

namespace rankscope::bindings {

namespace detail {
/// Threads inside a call with the GIL released (trivially destructible: read by an exit handler).
inline std::atomic<int> calls_in_flight{0};

inline void wait_for_calls_in_flight() {
  while (calls_in_flight.load() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

inline void register_exit_wait() {
  static const bool done = [] {
    std::atexit(&wait_for_calls_in_flight);  // runs before shared libraries' destructors (OpenBLAS's)
    // a forked child has none of the parent's other threads, so none of their calls
    pthread_atfork(nullptr, nullptr, [] { calls_in_flight.store(0); });
    return true;
  }();
  (void)done;
}
}  // namespace detail

class ReleasedGil {
 public:
  ReleasedGil() {
    detail::register_exit_wait();
    ++detail::calls_in_flight;
    state_ = PyEval_SaveThread();
  }
  ~ReleasedGil() {
    --detail::calls_in_flight;
#if defined(__GLIBCXX__)
    try {
      PyEval_RestoreThread(state_);
    } catch (abi::__forced_unwind&) {  // never rethrown: this thread must not unwind through Python
      for (;;) pause();
    }
#else
    PyEval_RestoreThread(state_);
#endif
  }
  ReleasedGil(const ReleasedGil&) = delete;
  ReleasedGil& operator=(const ReleasedGil&) = delete;

 private:
  PyThreadState* state_ = nullptr;
};

}  // namespace rankscope::bindings
