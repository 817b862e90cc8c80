// CPU feature detection and the runtime knobs (threads, forced ISA level).
#include <atomic>

#include "../ops.h"
#include "pool.h"

namespace ck::cpu {

Simd detectSimd() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return Simd::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Simd::Avx2;
#endif
  return Simd::Scalar;
}

namespace {
std::atomic<int> forced{-1};
}

Simd simd() {
  static const Simd best = detectSimd();
  int f = forced.load(std::memory_order_relaxed);
  return f >= 0 && f < int(best) ? Simd(f) : best;
}

Simd bestSimd() { return detectSimd(); }

// Caps the ISA level kernels use (tests run every code path); -1 = best.
void limitSimd(int level) { forced.store(level, std::memory_order_relaxed); }

void setThreads(int n) { poolResize(n); }
int threads() { return poolThreads(); }

}  // namespace ck::cpu

namespace ck::cpu {
const Backend& table() {
  static const Backend t = CK_BACKEND_TABLE("cpu");
  return t;
}
}  // namespace ck::cpu
