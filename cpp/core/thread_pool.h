#pragma once
/// \file thread_pool.h
/// A small persistent pool for parallel loops over independent tasks (matrices, groups of matrices).

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace rankscope {

class ThreadPool {
 public:
  /// The process-wide pool, sized on first use from the CPUs this process may run on
  /// (or the RANKSCOPE_NUM_THREADS environment variable).
  static ThreadPool& instance();

  /// Threads taking part in a parallel_for, the caller included. n <= 0 restores the default.
  void set_num_threads(int n);
  int num_threads() const;

  /// Calls fn(i) for every i in [0, n) from up to num_threads() threads, the caller among them, and
  /// returns when all calls have returned. Safe to call from several threads at once (their tasks
  /// share the workers); the caller always works through its own tasks, so it never waits on others.
  /// The first exception thrown by fn is rethrown here after the loop drains.
  void parallel_for(int64_t n, const std::function<void(int64_t)>& fn);

  ~ThreadPool();

 private:
  struct Job;
  ThreadPool();
  void start(int n_threads);
  void stop();
  void worker_loop();
  void restart_after_fork();
  static void run(Job& job);
  static void atfork_child();

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> jobs_;
  std::vector<std::thread> workers_;
  std::mutex resize_mu_;
  bool stopping_ = false;
  int n_threads_ = 1;
  std::atomic<int> restart_threads_{0};  // > 0 in a forked child until its workers are started again
};

/// CPUs this process may run on (sched_getaffinity), at least 1.
int available_cpus();

}  // namespace rankscope
