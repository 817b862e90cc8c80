// Elementwise, broadcast, reduction and permutation kernels.
#include <cmath>
#include <cstring>

#include "../ops.h"
#include "pool.h"
#include "vecmath.h"

namespace ck::cpu {
using std::int64_t;

namespace {
constexpr int64_t kGrain = 1 << 15;  // elements per thread below which a loop stays serial
constexpr float kGeluC = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluA = 0.044715f;

inline float sigmoidf(float x) {
  if (x >= 0.f) return 1.f / (1.f + std::exp(-x));
  float e = std::exp(x);
  return e / (1.f + e);
}
// sigmoid and 1 − sigmoid, each without cancellation.
inline void sigmoidPair(float x, float& s, float& q) {
  float e = std::exp(-std::fabs(x));
  float a = 1.f / (1.f + e), b = e * a;  // a = sigmoid(|x|), b = 1 − a
  if (x >= 0.f) { s = a; q = b; } else { s = b; q = a; }
}
inline float geluU(float x) { return kGeluC * (x + kGeluA * x * x * x); }

template <Unary op>
inline float unaryFn(float x) {
  if constexpr (op == Unary::Neg) return -x;
  if constexpr (op == Unary::Exp) return std::exp(x);
  if constexpr (op == Unary::Log) return std::log(x);
  if constexpr (op == Unary::Sqrt) return std::sqrt(x);
  if constexpr (op == Unary::Rsqrt) return 1.f / std::sqrt(x);
  if constexpr (op == Unary::Tanh) return std::tanh(x);
  if constexpr (op == Unary::Sigmoid) return sigmoidf(x);
  if constexpr (op == Unary::Relu) return x < 0.f ? 0.f : x;  // keeps NaN
  if constexpr (op == Unary::Gelu) return x * sigmoidf(2.f * geluU(x));  // = 0.5x(1 + tanh u), no cancellation
  if constexpr (op == Unary::Silu) return x * sigmoidf(x);
  if constexpr (op == Unary::Square) return x * x;
  if constexpr (op == Unary::Abs) return std::fabs(x);
  return x;
}

// d op(x) / dx
template <Unary op>
inline float unaryGrad(float x) {
  if constexpr (op == Unary::Neg) return -1.f;
  if constexpr (op == Unary::Exp) return std::exp(x);
  if constexpr (op == Unary::Log) return 1.f / x;
  if constexpr (op == Unary::Sqrt) return 0.5f / std::sqrt(x);
  if constexpr (op == Unary::Rsqrt) return -0.5f / (x * std::sqrt(x));
  if constexpr (op == Unary::Tanh) { float t = std::tanh(x); return 1.f - t * t; }
  if constexpr (op == Unary::Sigmoid) { float s, q; sigmoidPair(x, s, q); return s * q; }
  if constexpr (op == Unary::Relu) return x > 0.f ? 1.f : 0.f;
  if constexpr (op == Unary::Gelu) {
    // With s = sigmoid(2u): 0.5(1 + tanh u) = s and 1 − tanh²u = 4s(1 − s).
    float s, q;
    sigmoidPair(2.f * geluU(x), s, q);
    return s + 2.f * x * s * q * kGeluC * (1.f + 3.f * kGeluA * x * x);
  }
  if constexpr (op == Unary::Silu) { float s, q; sigmoidPair(x, s, q); return s * (1.f + x * q); }
  if constexpr (op == Unary::Square) return 2.f * x;
  if constexpr (op == Unary::Abs) return x > 0.f ? 1.f : (x < 0.f ? -1.f : 0.f);
  return 1.f;
}

constexpr bool isSigmoidFamily(Unary op) { return op == Unary::Sigmoid || op == Unary::Silu || op == Unary::Gelu; }

template <Unary op>
void unaryImpl(const float* x, float* out, int64_t n) {
  parallelRange(n, kGrain, [&](int64_t b, int64_t e) {
    if constexpr (op == Unary::Exp)
      if (vec::expShift(x + b, 0.f, out + b, e - b)) return;
    if constexpr (isSigmoidFamily(op))
      if (vec::sigmoidFamily(op, x + b, out + b, e - b)) return;
    for (int64_t i = b; i < e; ++i) out[i] = unaryFn<op>(x[i]);
  });
}

template <Unary op>
void unaryBackImpl(const float* x, const float* gy, float* gx, int64_t n, bool acc) {
  parallelRange(n, kGrain, [&](int64_t b, int64_t e) {
    if constexpr (isSigmoidFamily(op))
      if (vec::sigmoidFamilyBackward(op, x + b, gy + b, gx + b, e - b, acc)) return;
    if (acc)
      for (int64_t i = b; i < e; ++i) gx[i] += unaryGrad<op>(x[i]) * gy[i];
    else
      for (int64_t i = b; i < e; ++i) gx[i] = unaryGrad<op>(x[i]) * gy[i];
  });
}

template <Binary op>
inline float binFn(float a, float b) {
  if constexpr (op == Binary::Add) return a + b;
  if constexpr (op == Binary::Sub) return a - b;
  if constexpr (op == Binary::Mul) return a * b;
  if constexpr (op == Binary::Div) return a / b;
  if constexpr (op == Binary::Max) return (a > b || a != a) ? a : b;  // NaN propagates
  if constexpr (op == Binary::Min) return (a < b || a != a) ? a : b;
  return a;
}

template <Binary op>
void binarySameImpl(const float* a, const float* b, float* out, int64_t n) {
  parallelRange(n, kGrain, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) out[i] = binFn<op>(a[i], b[i]);
  });
}

template <Binary op>
void binaryBcastImpl(const float* a, const float* b, float* out, const BroadcastDesc& d) {
  const int nd = d.ndim;
  const int64_t inner = nd > 0 ? d.shape[nd - 1] : 1;
  const int64_t sa = nd > 0 ? d.strideA[nd - 1] : 0, sb = nd > 0 ? d.strideB[nd - 1] : 0;
  int64_t outer = 1;
  for (int i = 0; i + 1 < nd; ++i) outer *= d.shape[i];
  int64_t grain = inner >= kGrain ? 1 : kGrain / (inner > 0 ? inner : 1);
  parallelRange(outer, grain, [&](int64_t ob, int64_t oe) {
    for (int64_t o = ob; o < oe; ++o) {
      int64_t offA = 0, offB = 0, rem = o;
      for (int i = nd - 2; i >= 0; --i) {
        int64_t idx = rem % d.shape[i];
        rem /= d.shape[i];
        offA += idx * d.strideA[i];
        offB += idx * d.strideB[i];
      }
      const float* pa = a + offA;
      const float* pb = b + offB;
      float* po = out + o * inner;
      if (sa == 1 && sb == 1)
        for (int64_t j = 0; j < inner; ++j) po[j] = binFn<op>(pa[j], pb[j]);
      else if (sa == 1 && sb == 0) {
        float bv = *pb;
        for (int64_t j = 0; j < inner; ++j) po[j] = binFn<op>(pa[j], bv);
      } else if (sa == 0 && sb == 1) {
        float av = *pa;
        for (int64_t j = 0; j < inner; ++j) po[j] = binFn<op>(av, pb[j]);
      } else
        for (int64_t j = 0; j < inner; ++j) po[j] = binFn<op>(pa[j * sa], pb[j * sb]);
    }
  });
}

template <Reduce op>
inline float redInit() {
  if constexpr (op == Reduce::Max) return -INFINITY;
  if constexpr (op == Reduce::Min) return INFINITY;
  return 0.f;
}
template <Reduce op>
inline float redStep(float acc, float x) {
  if constexpr (op == Reduce::Max) return (x > acc || x != x) ? x : acc;
  if constexpr (op == Reduce::Min) return (x < acc || x != x) ? x : acc;
  return acc + x;
}
// NaN-sticky combine of two partial results.
template <Reduce op>
inline float redCombine(float a, float b) {
  if constexpr (op == Reduce::Max || op == Reduce::Min) return a != a ? a : redStep<op>(a, b);
  return a + b;
}

template <Reduce op>
float reduceRow(const float* x, int64_t len) {
  constexpr int L = 16;  // independent lanes so the loop vectorises without reassociation
  float lane[L];
  for (int l = 0; l < L; ++l) lane[l] = redInit<op>();
  int64_t i = 0;
  for (; i + L <= len; i += L)
    for (int l = 0; l < L; ++l) lane[l] = redStep<op>(lane[l], x[i + l]);
  float acc = redInit<op>();
  for (int l = 0; l < L; ++l) acc = redCombine<op>(acc, lane[l]);
  for (; i < len; ++i) acc = redStep<op>(acc, x[i]);
  return acc;
}

template <Reduce op>
void reduceImpl(const float* x, float* out, int64_t outer, int64_t len, int64_t inner) {
  const float scale = op == Reduce::Mean ? 1.f / float(len) : 1.f;
  constexpr Reduce base = op == Reduce::Mean ? Reduce::Sum : op;
  if (inner == 1) {
    parallelRange(outer, len >= kGrain ? 1 : kGrain / (len > 0 ? len : 1), [&](int64_t b, int64_t e) {
      for (int64_t o = b; o < e; ++o) {
        float r = reduceRow<base>(x + o * len, len);
        out[o] = op == Reduce::Mean ? (len == 0 ? NAN : r * scale) : r;
      }
    });
    return;
  }
  // Columns: sweep rows, combining into out[o, :]; parallel over outer or over column chunks.
  auto cols = [&](int64_t o, int64_t c0, int64_t c1) {
    float* po = out + o * inner;
    const float* px = x + o * len * inner;
    for (int64_t c = c0; c < c1; ++c) po[c] = redInit<base>();
    for (int64_t r = 0; r < len; ++r) {
      const float* row = px + r * inner;
      for (int64_t c = c0; c < c1; ++c) po[c] = redStep<base>(po[c], row[c]);
    }
    if (op == Reduce::Mean)
      for (int64_t c = c0; c < c1; ++c) po[c] = len == 0 ? NAN : po[c] * scale;
  };
  int64_t per = len * inner;
  if (outer >= poolThreads())
    parallelRange(outer, per >= kGrain ? 1 : kGrain / (per > 0 ? per : 1), [&](int64_t b, int64_t e) {
      for (int64_t o = b; o < e; ++o) cols(o, 0, inner);
    });
  else
    for (int64_t o = 0; o < outer; ++o)
      parallelRange(inner, len >= kGrain ? 16 : (kGrain / (len > 0 ? len : 1)) + 16,
                    [&](int64_t b, int64_t e) { cols(o, b, e); });
}
}  // namespace

void unary(Unary op, const float* x, float* out, int64_t n) {
  switch (op) {
#define CASE(O) case Unary::O: return unaryImpl<Unary::O>(x, out, n);
    CASE(Neg) CASE(Exp) CASE(Log) CASE(Sqrt) CASE(Rsqrt) CASE(Tanh) CASE(Sigmoid) CASE(Relu) CASE(Gelu) CASE(Silu)
    CASE(Square) CASE(Abs)
#undef CASE
    default: return;
  }
}

void unaryBackward(Unary op, const float* x, const float* gy, float* gx, int64_t n, bool acc) {
  switch (op) {
#define CASE(O) case Unary::O: return unaryBackImpl<Unary::O>(x, gy, gx, n, acc);
    CASE(Neg) CASE(Exp) CASE(Log) CASE(Sqrt) CASE(Rsqrt) CASE(Tanh) CASE(Sigmoid) CASE(Relu) CASE(Gelu) CASE(Silu)
    CASE(Square) CASE(Abs)
#undef CASE
    default: return;
  }
}

void binarySame(Binary op, const float* a, const float* b, float* out, int64_t n) {
  switch (op) {
#define CASE(O) case Binary::O: return binarySameImpl<Binary::O>(a, b, out, n);
    CASE(Add) CASE(Sub) CASE(Mul) CASE(Div) CASE(Max) CASE(Min)
#undef CASE
    default: return;
  }
}

void binary(Binary op, const float* a, const float* b, float* out, const BroadcastDesc& d) {
  switch (op) {
#define CASE(O) case Binary::O: return binaryBcastImpl<Binary::O>(a, b, out, d);
    CASE(Add) CASE(Sub) CASE(Mul) CASE(Div) CASE(Max) CASE(Min)
#undef CASE
    default: return;
  }
}

void scale(const float* x, float alpha, float* out, int64_t n) {
  parallelRange(n, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) out[i] = alpha * x[i];
  });
}

void axpy(float alpha, const float* x, float* y, int64_t n) {
  parallelRange(n, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) y[i] += alpha * x[i];
  });
}

void fill(float* x, float value, int64_t n) {
  parallelRange(n, kGrain * 4, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) x[i] = value;
  });
}

void reduce(Reduce op, const float* x, float* out, int64_t outer, int64_t len, int64_t inner) {
  switch (op) {
    case Reduce::Sum: return reduceImpl<Reduce::Sum>(x, out, outer, len, inner);
    case Reduce::Mean: return reduceImpl<Reduce::Mean>(x, out, outer, len, inner);
    case Reduce::Max: return reduceImpl<Reduce::Max>(x, out, outer, len, inner);
    case Reduce::Min: return reduceImpl<Reduce::Min>(x, out, outer, len, inner);
    default: return;
  }
}

void permute(const float* x, float* out, int ndim, const int64_t* shape, const int64_t* strides) {
  if (ndim == 0) { out[0] = x[0]; return; }
  const int64_t inner = shape[ndim - 1], si = strides[ndim - 1];
  int64_t outer = 1;
  for (int i = 0; i + 1 < ndim; ++i) outer *= shape[i];
  parallelRange(outer, inner >= kGrain ? 1 : kGrain / (inner > 0 ? inner : 1), [&](int64_t ob, int64_t oe) {
    for (int64_t o = ob; o < oe; ++o) {
      int64_t off = 0, rem = o;
      for (int i = ndim - 2; i >= 0; --i) {
        off += (rem % shape[i]) * strides[i];
        rem /= shape[i];
      }
      const float* px = x + off;
      float* po = out + o * inner;
      if (si == 1)
        std::memcpy(po, px, sizeof(float) * size_t(inner));
      else
        for (int64_t j = 0; j < inner; ++j) po[j] = px[j * si];
    }
  });
}

}  // namespace ck::cpu
