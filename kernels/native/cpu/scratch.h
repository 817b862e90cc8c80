// A grow-only, 64-byte aligned buffer for packed GEMM panels: kept per
// calling thread (thread_local) so back-to-back calls do not allocate.
#pragma once
#include <cstddef>
#include <cstdlib>

namespace ck::cpu {

template <class T>
struct AlignedScratch {
  T* p = nullptr;
  std::size_t cap = 0;
  // At least n elements; nullptr when the allocation failed.
  T* get(std::size_t n) {
    if (n > cap) {
      std::free(p);
      std::size_t bytes = ((n * sizeof(T) + 63) / 64) * 64;
      p = static_cast<T*>(std::aligned_alloc(64, bytes));
      cap = p ? n : 0;
    }
    return p;
  }
  ~AlignedScratch() { std::free(p); }
};

}  // namespace ck::cpu
