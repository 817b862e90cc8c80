// Backend-neutral operation table of catechism's compute package.
//
// Every op works on raw pointers to memory of its backend plus sizes; callers
// (the N-API binding) have already validated shapes and lengths. The op list
// and signatures live in scripts/ops.mjs; gen/backend.h (generated) turns them
// into `struct Backend`, which each backend fills (cpu, cuda, cudasim) and
// addon.cc picks per call.
#pragma once
#include <cstddef>
#include <cstdint>

namespace ck {

using i64 = std::int64_t;

enum class Unary : int { Neg, Exp, Log, Sqrt, Rsqrt, Tanh, Sigmoid, Relu, Gelu, Silu, Square, Abs, Count };
enum class Binary : int { Add, Sub, Mul, Div, Max, Min, Count };
enum class Reduce : int { Sum, Mean, Max, Min, Count };

struct GemmParams {
  bool transA = false, transB = false;
  i64 m = 0, n = 0, k = 0;
  const float* a = nullptr; i64 lda = 0; i64 strideA = 0;
  const float* b = nullptr; i64 ldb = 0; i64 strideB = 0;
  float* c = nullptr; i64 ldc = 0; i64 strideC = 0;
  i64 batch = 1;
  float alpha = 1.f, beta = 0.f;
  const float* bias = nullptr;  // length n, added to every row of C
};

// Broadcast description for binary ops: out has `ndim` dims with sizes
// `shape`; a and b are read with element strides (0 on broadcast dims).
struct BroadcastDesc {
  int ndim = 0;
  i64 shape[16];
  i64 strideA[16];
  i64 strideB[16];
};

struct SoftmaxMask {
  bool causal = false;
  i64 queryLen = 0;
  const std::uint8_t* keyPad = nullptr;  // [numBatches × cols]
  i64 rowsPerBatch = 0;
};

struct AdamWParams {
  double lr, beta1, beta2, eps, weightDecay, step;  // double: 1 - beta is formed before rounding, as torch does
};

enum class Simd : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };
}  // namespace ck

#include "gen/backend.h"  // struct Backend, CK_BACKEND_DECLARE, CK_BACKEND_TABLE (from scripts/ops.mjs)

namespace ck {

// The GPU side, present when the addon was built with CUDA (CK_WITH_CUDA).
// Memory functions work on device pointers; errors are sticky until read.
struct DeviceRuntime {
  // true when a GPU can run kernels; else writes what is missing into `why`
  bool (*usable)(char* why, std::size_t n);
  void (*describe)(char* out, std::size_t n);  // GPU name, memory, GEMM path
  void* (*alloc)(std::size_t bytes);           // nullptr on failure (error recorded)
  void (*release)(void* p);
  void (*upload)(void* dst, const void* src, std::size_t bytes);
  void (*download)(void* dst, const void* src, std::size_t bytes);
  void* (*scratch)(int slot, std::size_t bytes);  // per-argument staging buffer, grown on demand
  void (*synchronize)();
  bool (*takeError)(char* msg, std::size_t n);  // true (and the message) if a CUDA call failed since the last take
};

#if defined(CK_WITH_CUDA)
namespace cuda {
CK_BACKEND_DECLARE
const Backend& table();     // kernels launched on the GPU
const DeviceRuntime& runtime();
}  // namespace cuda
namespace cudasim {
CK_BACKEND_DECLARE
const Backend& table();     // the same kernel bodies run on the CPU over host memory (tests)
}  // namespace cudasim
#endif

namespace cpu {
// runtime / threads
Simd simd();          // ISA level the kernels use now
Simd bestSimd();      // best level this CPU supports
void limitSimd(int level);  // cap the level (tests exercise every path); -1 = no cap
void setThreads(int n);
int threads();

CK_BACKEND_DECLARE
const Backend& table();
}  // namespace cpu

}  // namespace ck
