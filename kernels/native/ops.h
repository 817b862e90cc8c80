// Backend-neutral operation table of catechism's compute package.
//
// Every op works on raw pointers to device memory plus sizes; callers (the
// N-API binding) have already validated shapes and lengths. A CUDA backend can
// provide the same table (ck::cuda::...) later without changing callers:
// addon.cc picks the table through `Backend`.
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

namespace cpu {
// runtime / threads
Simd simd();          // ISA level the kernels use now
Simd bestSimd();      // best level this CPU supports
void limitSimd(int level);  // cap the level (tests exercise every path); -1 = no cap
void setThreads(int n);
int threads();

void gemm(const GemmParams& p);

void unary(Unary op, const float* x, float* out, i64 n);
void unaryBackward(Unary op, const float* x, const float* gy, float* gx, i64 n, bool accumulate);
void binarySame(Binary op, const float* a, const float* b, float* out, i64 n);
void binary(Binary op, const float* a, const float* b, float* out, const BroadcastDesc& d);
void scale(const float* x, float alpha, float* out, i64 n);
void axpy(float alpha, const float* x, float* y, i64 n);
void fill(float* x, float value, i64 n);
// x viewed as [outer, len, inner]; out is [outer, inner]
void reduce(Reduce op, const float* x, float* out, i64 outer, i64 len, i64 inner);
// out[i0..] = x at strides `inStrides` (in out's dim order)
void permute(const float* x, float* out, int ndim, const i64* outShape, const i64* inStrides);

void softmax(const float* x, float* y, i64 rows, i64 cols, const SoftmaxMask* mask);
void softmaxBackward(const float* y, const float* dy, float* dx, i64 rows, i64 cols, bool accumulate);
void logSoftmax(const float* x, float* y, i64 rows, i64 cols);
void layerNorm(const float* x, const float* gamma, const float* beta, float* out, i64 rows, i64 cols,
               float eps, float* mean, float* rstd);
void layerNormBackward(const float* x, const float* gamma, const float* mean, const float* rstd,
                       const float* dy, float* dx, float* dgamma, float* dbeta, i64 rows, i64 cols);
void rmsNorm(const float* x, const float* w, float* out, i64 rows, i64 cols, float eps, float* rstd);
void rmsNormBackward(const float* x, const float* w, const float* rstd, const float* dy, float* dx,
                     float* dw, i64 rows, i64 cols);
void rope(const float* x, float* out, i64 batch, i64 heads, i64 seq, i64 headDim, i64 rotaryDim,
          const std::int32_t* positions, double theta, bool inverse);
void embedding(const float* table, i64 dim, const std::int32_t* ids, i64 count, float* out);
void embeddingBackward(const float* gy, const std::int32_t* ids, i64 count, float* gtable, i64 dim);
void crossEntropy(const float* logits, const std::int32_t* targets, i64 rows, i64 vocab, float* losses,
                  float* grad, std::int32_t ignoreIndex);
void klDiv(const float* p, const float* q, i64 rows, i64 vocab, float* out, float* gradQ);
void topk(const float* x, i64 rows, i64 cols, i64 k, float* values, std::int32_t* indices);
void adamw(float* param, const float* grad, float* m, float* v, i64 n, const AdamWParams& o);

void f16ToF32(const std::uint16_t* src, float* out, i64 n);
void bf16ToF32(const std::uint16_t* src, float* out, i64 n);
void f32ToF16(const float* src, std::uint16_t* out, i64 n);
void f32ToBf16(const float* src, std::uint16_t* out, i64 n);
}  // namespace cpu

}  // namespace ck
