#include "pool.h"

#include <sched.h>

#include <atomic>
#include <cstdlib>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace ck::cpu {
namespace {

struct Pool {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::thread> workers;
  std::atomic<std::uint64_t> generation{0};
  std::atomic<std::int64_t> next{0};
  std::atomic<int> active{0};
  std::int64_t ntasks = 0;
  const TaskFn* fn = nullptr;
  bool stop = false;
  std::atomic<bool> busy{false};
  int size = 1;

  void runTasks(int tid) {
    for (;;) {
      std::int64_t t = next.fetch_add(1, std::memory_order_relaxed);
      if (t >= ntasks) break;
      (*fn)(t, tid);
    }
  }

  // `seen` is the generation at creation: reading it inside the new thread
  // could miss a job published before the thread got scheduled.
  void worker(int tid, std::uint64_t seen) {
    for (;;) {
      // Spin briefly (kernels are often called back to back), then sleep.
      std::uint64_t g;
      int spins = 0;
      while ((g = generation.load(std::memory_order_acquire)) == seen && spins < 2000) {
        ++spins;
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
      }
      if (g == seen) {
        std::unique_lock<std::mutex> lk(mu);
        cv.wait(lk, [&] { return stop || generation.load(std::memory_order_acquire) != seen; });
        if (stop) return;
        g = generation.load(std::memory_order_acquire);
      }
      seen = g;
      runTasks(tid);
      active.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  void start(int n) {
    size = n;
    std::uint64_t g = generation.load(std::memory_order_acquire);
    for (int i = 1; i < n; ++i) workers.emplace_back([this, i, g] { worker(i, g); });
  }
  void shutdown() {
    {
      std::lock_guard<std::mutex> lk(mu);
      stop = true;
    }
    cv.notify_all();
    for (auto& w : workers) w.join();
    workers.clear();
    stop = false;
    size = 1;
  }
  ~Pool() { shutdown(); }
};

// CATECHISM_THREADS if set, else the CPUs this process may run on (the
// affinity mask, which containers and taskset narrow), else hardware_concurrency.
int defaultThreads() {
  if (const char* env = std::getenv("CATECHISM_THREADS")) {
    int n = std::atoi(env);
    if (n >= 1 && n <= 1024) return n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n >= 1) return n;
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : int(hc);
}

Pool& pool() {
  static Pool* p = [] {
    auto* q = new Pool();  // leaked on purpose: joining threads at exit can deadlock in Node
    q->start(defaultThreads());
    return q;
  }();
  return *p;
}

}  // namespace

int poolThreads() { return pool().size; }

void poolResize(int n) {
  Pool& p = pool();
  if (n < 1) n = 1;
  bool expected = false;
  while (!p.busy.compare_exchange_weak(expected, true)) { expected = false; std::this_thread::yield(); }
  if (n != p.size) {
    p.shutdown();
    p.start(n);
  }
  p.busy.store(false);
}

void parallelFor(std::int64_t ntasks, const TaskFn& fn) {
  if (ntasks <= 0) return;
  Pool& p = pool();
  bool expected = false;
  if (ntasks == 1 || p.size == 1 || !p.busy.compare_exchange_strong(expected, true)) {
    for (std::int64_t t = 0; t < ntasks; ++t) fn(t, 0);
    return;
  }
  p.fn = &fn;
  p.ntasks = ntasks;
  p.next.store(0, std::memory_order_relaxed);
  p.active.store(p.size - 1, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lk(p.mu);
    p.generation.fetch_add(1, std::memory_order_acq_rel);
  }
  p.cv.notify_all();
  p.runTasks(0);
  int spins = 0;
  while (p.active.load(std::memory_order_acquire) != 0) {
    if (++spins > 4000) std::this_thread::yield();
#if defined(__x86_64__)
    else __builtin_ia32_pause();
#endif
  }
  p.fn = nullptr;
  p.busy.store(false, std::memory_order_release);
}

}  // namespace ck::cpu
