// Persistent thread pool shared by all CPU kernels.
#pragma once
#include <cstdint>
#include <functional>

namespace ck::cpu {

using TaskFn = std::function<void(std::int64_t task, int tid)>;

int poolThreads();            // threads a parallel region uses (caller included)
void poolResize(int n);       // n >= 1
// Runs fn(task, tid) for task in [0, ntasks), tid in [0, poolThreads()).
// Nested or concurrent calls run serially on the calling thread (tid 0).
void parallelFor(std::int64_t ntasks, const TaskFn& fn);

// Splits [0, n) into at most poolThreads() contiguous chunks of at least
// `grain` items and runs fn(begin, end) on them; serial when n < 2*grain.
template <class F>
void parallelRange(std::int64_t n, std::int64_t grain, F&& fn) {
  int t = poolThreads();
  if (t <= 1 || n < 2 * grain) { if (n > 0) fn(std::int64_t(0), n); return; }
  std::int64_t chunks = n / grain;
  if (chunks > t) chunks = t;
  parallelFor(chunks, [&](std::int64_t c, int) {
    std::int64_t b = n * c / chunks, e = n * (c + 1) / chunks;
    if (b < e) fn(b, e);
  });
}

}  // namespace ck::cpu
