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

// Jobs are published through one atomic word: generation (high 32 bits) and
// the next unclaimed task (low 32 bits). Threads claim a task with a CAS that
// also checks the generation, and the caller waits only for tasks that were
// actually claimed — never for a worker that is still waking up (on a busy
// 2-core machine a sleeping worker can take milliseconds to get scheduled;
// the caller then simply runs every task itself).
constexpr std::uint32_t kClosed = 0xFFFFFFFFu;  // task index of a finished job: nothing to claim
inline std::uint32_t genOf(std::uint64_t s) { return std::uint32_t(s >> 32); }

struct Pool {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::thread> workers;
  std::atomic<std::uint64_t> state{kClosed};
  std::atomic<std::int64_t> ntasks{0};
  std::atomic<const TaskFn*> fn{nullptr};
  std::atomic<std::int64_t> done{0};
  std::atomic<int> sleepers{0};
  std::atomic<bool> stop{false};
  std::atomic<bool> busy{false};
  int size = 1;

  // Claim and run tasks of job `gen` until none is left (or a newer job started).
  void runTasks(std::uint32_t gen, int tid) {
    std::uint64_t s = state.load(std::memory_order_acquire);
    for (;;) {
      if (genOf(s) != gen) return;
      std::uint32_t idx = std::uint32_t(s);
      // (a stale read of ntasks is harmless: the CAS below then fails)
      if (idx >= std::uint64_t(ntasks.load(std::memory_order_acquire))) return;
      if (state.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
        (*fn.load(std::memory_order_relaxed))(idx, tid);
        done.fetch_add(1, std::memory_order_release);
        s = state.load(std::memory_order_acquire);
      }
    }
  }

  // `seen` is the generation at creation: reading it inside the new thread
  // could miss a job published before the thread got scheduled.
  void worker(int tid, std::uint32_t seen) {
    for (;;) {
      // Spin briefly (kernels are often called back to back), then sleep.
      std::uint32_t g;
      int spins = 0;
      while ((g = genOf(state.load(std::memory_order_acquire))) == seen && spins < 2000) {
        ++spins;
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
      }
      if (g == seen) {
        std::unique_lock<std::mutex> lk(mu);
        sleepers.fetch_add(1, std::memory_order_seq_cst);
        cv.wait(lk, [&] { return stop.load() || genOf(state.load(std::memory_order_seq_cst)) != seen; });
        sleepers.fetch_sub(1, std::memory_order_relaxed);
        if (stop.load()) return;
        g = genOf(state.load(std::memory_order_acquire));
      }
      seen = g;
      runTasks(g, tid);
    }
  }

  void start(int n) {
    size = n;
    std::uint32_t g = genOf(state.load(std::memory_order_acquire));
    for (int i = 1; i < n; ++i) workers.emplace_back([this, i, g] { worker(i, g); });
  }
  void shutdown() {
    {
      std::lock_guard<std::mutex> lk(mu);
      stop.store(true);
    }
    cv.notify_all();
    for (auto& w : workers) w.join();
    workers.clear();
    stop.store(false);
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
  if (ntasks == 1 || p.size == 1 || ntasks >= std::int64_t(kClosed) || !p.busy.compare_exchange_strong(expected, true)) {
    for (std::int64_t t = 0; t < ntasks; ++t) fn(t, 0);
    return;
  }
  // Close the previous job before touching the fields a late worker may read.
  std::uint32_t gen = genOf(p.state.load(std::memory_order_relaxed));
  p.state.store((std::uint64_t(gen) << 32) | kClosed, std::memory_order_seq_cst);
  ++gen;
  p.fn.store(&fn, std::memory_order_relaxed);
  p.done.store(0, std::memory_order_relaxed);
  p.ntasks.store(ntasks, std::memory_order_release);
  p.state.store(std::uint64_t(gen) << 32, std::memory_order_seq_cst);
  if (p.sleepers.load(std::memory_order_seq_cst) > 0) {
    std::lock_guard<std::mutex> lk(p.mu);
    p.cv.notify_all();
  }
  p.runTasks(gen, 0);
  // Every task is claimed now; wait for the ones other threads are running.
  int spins = 0;
  while (p.done.load(std::memory_order_acquire) != ntasks) {
    if (++spins > 4000) std::this_thread::yield();
#if defined(__x86_64__)
    else __builtin_ia32_pause();
#endif
  }
  p.busy.store(false, std::memory_order_release);
}

}  // namespace ck::cpu
