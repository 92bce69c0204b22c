#include "core/thread_pool.h"

#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <climits>
#include <cstdlib>
#include <string>
#include <exception>
#include <system_error>

#include "rankscope/errors.h"

namespace rankscope {

namespace {
// More threads than any machine this runs on has cores: a bigger request is a mistake.
constexpr int kMaxThreads = 4096;
}  // namespace

struct ThreadPool::Job {
  const std::function<void(int64_t)>* fn;
  int64_t n;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mu;
  std::condition_variable finished;
  std::exception_ptr error;
};

int available_cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  unsigned h = std::thread::hardware_concurrency();
  return h > 0 ? static_cast<int>(h) : 1;
}

static int default_threads() {
  if (const char* env = std::getenv("RANKSCOPE_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  return available_cpus();
}

ThreadPool& ThreadPool::instance() {
  // Leaked on purpose: joining threads during interpreter shutdown (static destruction) can deadlock.
  static ThreadPool* pool = new ThreadPool();
  return *pool;
}

ThreadPool::ThreadPool() {
  start(default_threads());
  pthread_atfork(nullptr, nullptr, &ThreadPool::atfork_child);
}

// In a child of fork() only the forking thread exists: the workers' std::thread objects name threads
// that are gone and the pool's mutexes may be held by them. Forget both (leaked on purpose: joining
// or destroying them is undefined) and start new workers on the child's first parallel loop.
void ThreadPool::atfork_child() {
  ThreadPool& p = instance();
  new (&p.mu_) std::mutex();
  new (&p.resize_mu_) std::mutex();
  new (&p.cv_) std::condition_variable();
  new std::vector<std::thread>(std::move(p.workers_));
  new std::deque<std::shared_ptr<Job>>(std::move(p.jobs_));
  p.workers_ = std::vector<std::thread>();
  p.jobs_ = std::deque<std::shared_ptr<Job>>();
  p.stopping_ = false;
  p.restart_threads_ = p.n_threads_;
  p.n_threads_ = 1;
}

void ThreadPool::restart_after_fork() {
  std::lock_guard<std::mutex> lk(resize_mu_);
  int n = 0;
  {
    std::lock_guard<std::mutex> g(mu_);
    n = restart_threads_.exchange(0);
  }
  if (n > 1) start(n);
}

ThreadPool::~ThreadPool() { stop(); }

void ThreadPool::start(int n_threads) {
  std::lock_guard<std::mutex> lk(mu_);
  stopping_ = false;
  const int want = n_threads < 1 ? 1 : n_threads;
  n_threads_ = 1;
  // n_threads_ counts the workers that did start: if the system refuses a thread, the pool stays
  // consistent (and the exception reaches set_num_threads)
  for (int i = 1; i < want; ++i) {
    workers_.emplace_back([this] { worker_loop(); });
    n_threads_ = i + 1;
  }
}

void ThreadPool::stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void ThreadPool::set_num_threads(int n) {
  restart_after_fork();
  std::lock_guard<std::mutex> lk(resize_mu_);
  const int want = n <= 0 ? default_threads() : n;
  RS_CHECK(want <= kMaxThreads, InvalidArgument, "set_num_threads: n is above the limit of ", kMaxThreads,
           " threads (got ", n == INT_MAX ? std::string(">= 2^31 - 1") : std::to_string(n), ")");
  const int before = num_threads();
  if (want == before) return;
  // Running loops lose their helpers but finish on their callers' threads.
  stop();
  try {
    start(want);
  } catch (const std::system_error& e) {
    stop();
    start(before);
    RS_CHECK(false, InvalidArgument, "set_num_threads: the system would not start ", want, " threads (", e.what(),
             "); still ", before);
  }
}

int ThreadPool::num_threads() const {
  std::lock_guard<std::mutex> lk(mu_);
  const int restart = restart_threads_.load();
  return restart > 0 ? restart : n_threads_;
}

void ThreadPool::run(Job& job) {
  for (;;) {
    int64_t i = job.next.fetch_add(1);
    if (i >= job.n) return;
    try {
      (*job.fn)(i);
    } catch (...) {
      std::lock_guard<std::mutex> lk(job.mu);
      if (!job.error) job.error = std::current_exception();
    }
    if (job.done.fetch_add(1) + 1 == job.n) {
      std::lock_guard<std::mutex> lk(job.mu);
      job.finished.notify_all();
    }
  }
}

void ThreadPool::worker_loop() {
  for (;;) {
    std::shared_ptr<Job> job;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [this] { return stopping_ || !jobs_.empty(); });
      if (stopping_) return;
      job = jobs_.front();
      if (job->next.load() >= job->n) {  // exhausted: retire it and look again
        jobs_.pop_front();
        continue;
      }
    }
    run(*job);
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  if (restart_threads_ > 0) restart_after_fork();
  if (n == 1 || num_threads() == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  auto job = std::make_shared<Job>();
  job->fn = &fn;
  job->n = n;
  {
    std::lock_guard<std::mutex> lk(mu_);
    jobs_.push_back(job);
  }
  cv_.notify_all();
  run(*job);
  {
    std::unique_lock<std::mutex> lk(job->mu);
    job->finished.wait(lk, [&] { return job->done.load() == job->n; });
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (auto it = jobs_.begin(); it != jobs_.end(); ++it)
      if (*it == job) {
        jobs_.erase(it);
        break;
      }
  }
  if (job->error) std::rethrow_exception(job->error);
}

}  // namespace rankscope
