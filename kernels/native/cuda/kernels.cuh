// Kernel bodies of the CUDA backend, written once as __host__ __device__
// functors: `f(i)` does work item i (an element, a row or a column). The GPU
// runs them from a grid-stride __global__ loop (backend.cu, GpuExec); the
// cuda-sim backend runs the very same functors in a host loop (HostExec), so
// CI without a GPU tests every body against the CPU backend.
//
// Numerics follow native/cpu: sums of a row in double, NaN propagation of
// max/min, masked softmax rows, ignore_index, torch's AdamW arithmetic.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "../ops.h"

#if defined(__CUDACC__)
#define CK_HD __host__ __device__ inline
#else
#define CK_HD inline
#endif

namespace ck::kern {

CK_HD float bitsToFloat(std::uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float f;
  std::memcpy(&f, &b, 4);
  return f;
#endif
}
CK_HD std::uint32_t floatToBits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  std::uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
#endif
}
CK_HD float kInf() { return bitsToFloat(0x7f800000u); }
CK_HD float kNaN() { return bitsToFloat(0x7fc00000u); }
CK_HD bool isNaN(float x) { return x != x; }

// ------------------------------------------------------------ elementwise

constexpr float kGeluC = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluA = 0.044715f;

CK_HD float sigmoidf(float x) {
  if (x >= 0.f) return 1.f / (1.f + expf(-x));
  float e = expf(x);
  return e / (1.f + e);
}
// s = sigmoid(x), q = 1 − s without cancellation
CK_HD void sigmoidPair(float x, float& s, float& q) {
  float e = expf(-fabsf(x));
  float a = 1.f / (1.f + e), b = e * a;
  if (x >= 0.f) { s = a; q = b; } else { s = b; q = a; }
}
CK_HD float geluU(float x) { return kGeluC * (x + kGeluA * x * x * x); }

CK_HD float unaryFn(int op, float x) {
  switch (Unary(op)) {
    case Unary::Neg: return -x;
    case Unary::Exp: return expf(x);
    case Unary::Log: return logf(x);
    case Unary::Sqrt: return sqrtf(x);
    case Unary::Rsqrt: return 1.f / sqrtf(x);
    case Unary::Tanh: return tanhf(x);
    case Unary::Sigmoid: return sigmoidf(x);
    case Unary::Relu: return x < 0.f ? 0.f : x;  // keeps NaN
    case Unary::Gelu: return x * sigmoidf(2.f * geluU(x));
    case Unary::Silu: return x * sigmoidf(x);
    case Unary::Square: return x * x;
    case Unary::Abs: return fabsf(x);
    default: return x;
  }
}

CK_HD float unaryGrad(int op, float x) {
  float s, q;
  switch (Unary(op)) {
    case Unary::Neg: return -1.f;
    case Unary::Exp: return expf(x);
    case Unary::Log: return 1.f / x;
    case Unary::Sqrt: return 0.5f / sqrtf(x);
    case Unary::Rsqrt: return -0.5f / (x * sqrtf(x));
    case Unary::Tanh: { float t = tanhf(x); return 1.f - t * t; }
    case Unary::Sigmoid: sigmoidPair(x, s, q); return s * q;
    case Unary::Relu: return x > 0.f ? 1.f : 0.f;
    case Unary::Gelu:
      sigmoidPair(2.f * geluU(x), s, q);
      return s + 2.f * x * s * q * kGeluC * (1.f + 3.f * kGeluA * x * x);
    case Unary::Silu: sigmoidPair(x, s, q); return s * (1.f + x * q);
    case Unary::Square: return 2.f * x;
    case Unary::Abs: return x > 0.f ? 1.f : (x < 0.f ? -1.f : 0.f);
    default: return 1.f;
  }
}

CK_HD float binFn(int op, float a, float b) {
  switch (Binary(op)) {
    case Binary::Add: return a + b;
    case Binary::Sub: return a - b;
    case Binary::Mul: return a * b;
    case Binary::Div: return a / b;
    case Binary::Max: return (a > b || a != a) ? a : b;  // NaN propagates
    case Binary::Min: return (a < b || a != a) ? a : b;
    default: return a;
  }
}

struct UnaryF {
  int op; const float* x; float* out;
  CK_HD void operator()(i64 i) const { out[i] = unaryFn(op, x[i]); }
};
struct UnaryBackF {
  int op; const float* x; const float* gy; float* gx; bool acc;
  CK_HD void operator()(i64 i) const {
    float g = unaryGrad(op, x[i]) * gy[i];
    gx[i] = acc ? gx[i] + g : g;
  }
};
struct BinarySameF {
  int op; const float* a; const float* b; float* out;
  CK_HD void operator()(i64 i) const { out[i] = binFn(op, a[i], b[i]); }
};
struct BinaryBcastF {
  int op; const float* a; const float* b; float* out; BroadcastDesc d;
  CK_HD void operator()(i64 i) const {
    i64 offA = 0, offB = 0, rem = i;
    for (int k = d.ndim - 1; k >= 0; --k) {
      i64 idx = rem % d.shape[k];
      rem /= d.shape[k];
      offA += idx * d.strideA[k];
      offB += idx * d.strideB[k];
    }
    out[i] = binFn(op, a[offA], b[offB]);
  }
};
struct ScaleF {
  const float* x; float alpha; float* out;
  CK_HD void operator()(i64 i) const { out[i] = alpha * x[i]; }
};
struct AxpyF {
  float alpha; const float* x; float* y;
  CK_HD void operator()(i64 i) const { y[i] += alpha * x[i]; }
};
struct FillF {
  float* x; float v;
  CK_HD void operator()(i64 i) const { x[i] = v; }
};

// one output element: x viewed as [outer, len, inner]
struct ReduceF {
  int op; const float* x; float* out; i64 len, inner;
  CK_HD void operator()(i64 i) const {
    i64 o = i / inner, c = i % inner;
    const float* p = x + o * len * inner + c;
    Reduce r = Reduce(op);
    if (r == Reduce::Sum || r == Reduce::Mean) {
      float acc = 0.f;
      for (i64 j = 0; j < len; ++j) acc += p[j * inner];
      out[i] = r == Reduce::Mean ? (len == 0 ? kNaN() : acc * (1.f / float(len))) : acc;
    } else {
      bool isMax = r == Reduce::Max;
      float acc = isMax ? -kInf() : kInf();
      for (i64 j = 0; j < len; ++j) {
        float v = p[j * inner];
        if (isNaN(acc)) break;
        if ((isMax ? v > acc : v < acc) || isNaN(v)) acc = v;
      }
      out[i] = acc;
    }
  }
};

struct PermuteF {
  const float* x; float* out; int ndim; i64 shape[16]; i64 strides[16];
  CK_HD void operator()(i64 i) const {
    i64 off = 0, rem = i;
    for (int k = ndim - 1; k >= 0; --k) {
      off += (rem % shape[k]) * strides[k];
      rem /= shape[k];
    }
    out[i] = x[off];
  }
};

// ------------------------------------------------------------ row ops (one row per work item)

// max over a row (NaN wins), then log Σ exp(x − max) in double
CK_HD float rowMax(const float* x, i64 n) {
  float m = -kInf();
  for (i64 j = 0; j < n; ++j)
    if (!(x[j] <= m)) m = x[j];
  return m;
}
CK_HD double rowLogSumExp(const float* x, i64 n) {
  float m = rowMax(x, n);
  if (isNaN(m)) return double(kNaN());
  if (m == -kInf() || m == kInf()) return double(m);
  double s = 0;
  for (i64 j = 0; j < n; ++j) s += expf(x[j] - m);
  return double(m) + log(s);
}

struct SoftmaxF {
  const float* x; float* y; i64 cols; bool causal; i64 queryLen; const std::uint8_t* pad; i64 rowsPerBatch;
  CK_HD void operator()(i64 i) const {
    const float* xr = x + i * cols;
    float* yr = y + i * cols;
    i64 limit = cols;
    if (causal) {
      i64 r = i % queryLen;
      limit = r + (cols - queryLen) + 1;
      limit = limit < 0 ? 0 : (limit > cols ? cols : limit);
    }
    const std::uint8_t* pr = pad ? pad + (i / rowsPerBatch) * cols : nullptr;
    float m = -kInf();
    for (i64 j = 0; j < limit; ++j)
      if ((!pr || pr[j]) && !(xr[j] <= m)) m = xr[j];
    if (m == -kInf()) {
      for (i64 j = 0; j < cols; ++j) yr[j] = 0.f;
      return;
    }
    double s = 0;
    for (i64 j = 0; j < limit; ++j) {
      float e = (pr && !pr[j]) ? 0.f : expf(xr[j] - m);
      yr[j] = e;
      s += e;
    }
    float inv = float(1.0 / s);
    for (i64 j = 0; j < limit; ++j) yr[j] *= inv;
    for (i64 j = limit; j < cols; ++j) yr[j] = 0.f;
  }
};

struct SoftmaxBackF {
  const float* y; const float* dy; float* dx; i64 cols; bool acc;
  CK_HD void operator()(i64 i) const {
    const float* yr = y + i * cols;
    const float* gr = dy + i * cols;
    float* dr = dx + i * cols;
    double d = 0;
    for (i64 j = 0; j < cols; ++j) d += double(yr[j]) * gr[j];
    float df = float(d);
    for (i64 j = 0; j < cols; ++j) {
      float v = yr[j] * (gr[j] - df);  // read before write: dx may be dy
      dr[j] = acc ? dr[j] + v : v;
    }
  }
};

struct LogSoftmaxF {
  const float* x; float* y; i64 cols;
  CK_HD void operator()(i64 i) const {
    float lse = float(rowLogSumExp(x + i * cols, cols));
    for (i64 j = 0; j < cols; ++j) y[i * cols + j] = x[i * cols + j] - lse;
  }
};

struct LayerNormF {
  const float* x; const float* gamma; const float* beta; float* out; i64 cols; float eps; float* mean; float* rstd;
  CK_HD void operator()(i64 i) const {
    const float* xr = x + i * cols;
    double mu = 0;
    for (i64 j = 0; j < cols; ++j) mu += xr[j];
    mu /= double(cols);
    double v = 0;
    for (i64 j = 0; j < cols; ++j) { double d = xr[j] - mu; v += d * d; }
    float r = float(1.0 / sqrt(v / double(cols) + double(eps)));
    float m = float(mu);
    mean[i] = m;
    rstd[i] = r;
    float* o = out + i * cols;
    for (i64 j = 0; j < cols; ++j) o[j] = (xr[j] - m) * r * (gamma ? gamma[j] : 1.f) + (beta ? beta[j] : 0.f);
  }
};

// dx of LayerNorm (mean != nullptr) or RMSNorm (mean == nullptr), one row
struct NormBackRowF {
  const float* x; const float* w; const float* mean; const float* rstd; const float* dy; float* dx; i64 cols;
  CK_HD void operator()(i64 i) const {
    const float* xr = x + i * cols;
    const float* g = dy + i * cols;
    float m = mean ? mean[i] : 0.f, r = rstd[i];
    double s1 = 0, s2 = 0;
    for (i64 j = 0; j < cols; ++j) {
      float h = (xr[j] - m) * r;
      float dh = g[j] * (w ? w[j] : 1.f);
      s1 += dh;
      s2 += double(dh) * h;
    }
    float a1 = mean ? float(s1 / double(cols)) : 0.f, a2 = float(s2 / double(cols));
    float* d = dx + i * cols;
    for (i64 j = 0; j < cols; ++j) {
      float h = (xr[j] - m) * r;
      d[j] = r * (g[j] * (w ? w[j] : 1.f) - a1 - h * a2);
    }
  }
};

// dgamma/dbeta (LayerNorm) or dweight (RMSNorm, mean == nullptr), accumulated: one column
struct NormBackColF {
  const float* x; const float* mean; const float* rstd; const float* dy; float* dw; float* db; i64 rows, cols;
  CK_HD void operator()(i64 j) const {
    double sw = 0, sb = 0;
    for (i64 i = 0; i < rows; ++i) {
      float h = (x[i * cols + j] - (mean ? mean[i] : 0.f)) * rstd[i];
      float g = dy[i * cols + j];
      sw += double(g) * h;
      sb += g;
    }
    if (dw) dw[j] += float(sw);
    if (db) db[j] += float(sb);
  }
};

struct RmsNormF {
  const float* x; const float* w; float* out; i64 cols; float eps; float* rstd;
  CK_HD void operator()(i64 i) const {
    const float* xr = x + i * cols;
    double s = 0;
    for (i64 j = 0; j < cols; ++j) s += double(xr[j]) * xr[j];
    float r = float(1.0 / sqrt(s / double(cols) + double(eps)));
    rstd[i] = r;
    for (i64 j = 0; j < cols; ++j) out[i * cols + j] = xr[j] * r * (w ? w[j] : 1.f);
  }
};

// one element of [batch, heads, seq, headDim]; HF rotate_half pairing (i, i + rot/2)
struct RopeF {
  const float* x; float* out; i64 heads, seq, headDim, rot; const std::int32_t* pos; double theta; bool inverse;
  CK_HD void operator()(i64 e) const {
    i64 row = e / headDim, j = e % headDim;
    const float* xr = x + row * headDim;
    if (j >= rot) { out[e] = xr[j]; return; }
    i64 half = rot / 2, s = row % seq, b = row / (heads * seq);
    i64 ii = j < half ? j : j - half;
    double ang = double(pos[b * seq + s]) * pow(theta, -2.0 * double(ii) / double(rot));
    float c = float(cos(ang)), sn = float(inverse ? -sin(ang) : sin(ang));
    float x1 = xr[ii], x2 = xr[ii + half];
    out[e] = j < half ? x1 * c - x2 * sn : x2 * c + x1 * sn;
  }
};

struct EmbeddingF {
  const float* table; i64 dim; const std::int32_t* ids; float* out;
  CK_HD void operator()(i64 e) const { out[e] = table[i64(ids[e / dim]) * dim + e % dim]; }
};
// one column of the table: tokens in order, so repeated ids add up deterministically
struct EmbeddingBackF {
  const float* gy; const std::int32_t* ids; i64 count; float* gt; i64 dim;
  CK_HD void operator()(i64 j) const {
    for (i64 t = 0; t < count; ++t) gt[i64(ids[t]) * dim + j] += gy[t * dim + j];
  }
};

struct CrossEntropyF {
  const float* logits; const std::int32_t* targets; i64 vocab; float* losses; float* grad; std::int32_t ignore;
  CK_HD void operator()(i64 i) const {
    const float* xr = logits + i * vocab;
    std::int32_t t = targets[i];
    if (t == ignore) {
      losses[i] = 0.f;
      if (grad) for (i64 j = 0; j < vocab; ++j) grad[i * vocab + j] = 0.f;
      return;
    }
    double lse = rowLogSumExp(xr, vocab);
    losses[i] = float(lse - double(xr[t]));
    if (grad) {
      float m = rowMax(xr, vocab);
      float inv = float(1.0 / exp(lse - double(m)));
      float* g = grad + i * vocab;
      for (i64 j = 0; j < vocab; ++j) g[j] = expf(xr[j] - m) * inv;
      g[t] -= 1.f;
    }
  }
};

struct KlDivF {
  const float* p; const float* q; i64 vocab; float* out; float* gradQ;
  CK_HD void operator()(i64 i) const {
    const float* pr = p + i * vocab;
    const float* qr = q + i * vocab;
    double lp = rowLogSumExp(pr, vocab), lq = rowLogSumExp(qr, vocab);
    float mp = rowMax(pr, vocab), mq = rowMax(qr, vocab);
    float sp = float(1.0 / exp(lp - double(mp))), sq = float(1.0 / exp(lq - double(mq)));
    double kl = 0;
    for (i64 j = 0; j < vocab; ++j) {
      float P = expf(pr[j] - mp) * sp;
      if (P > 0.f) kl += double(P) * ((double(pr[j]) - lp) - (double(qr[j]) - lq));
    }
    out[i] = float(kl);
    if (gradQ)
      for (i64 j = 0; j < vocab; ++j) gradQ[i * vocab + j] = expf(qr[j] - mq) * sq - expf(pr[j] - mp) * sp;
  }
};

// true when (va, a) ranks above (vc, c): larger first, NaN largest, ties by lower index
CK_HD bool ranksAbove(float va, i64 a, float vc, i64 c) {
  bool na = isNaN(va), nc = isNaN(vc);
  if (na || nc) return na && nc ? a < c : na;
  return va > vc || (va == vc && a < c);
}
// k passes of selection per row: O(k·cols), no scratch memory
struct TopkF {
  const float* x; i64 cols, k; float* values; std::int32_t* indices;
  CK_HD void operator()(i64 i) const {
    const float* xr = x + i * cols;
    i64 prev = -1;
    for (i64 s = 0; s < k; ++s) {
      i64 best = -1;
      for (i64 j = 0; j < cols; ++j) {
        if (prev >= 0 && !ranksAbove(xr[prev], prev, xr[j], j)) continue;  // already taken
        if (best < 0 || ranksAbove(xr[j], j, xr[best], best)) best = j;
      }
      indices[i * k + s] = std::int32_t(best);
      values[i * k + s] = xr[best];
      prev = best;
    }
  }
};

struct AdamWF {
  float* param; const float* grad; float* m; float* v; float decay, stepSize, bc2Sqrt, b1, b2, eps, c1, c2;
  CK_HD void operator()(i64 i) const {
    float g = grad[i];
    float p = param[i] * decay;
    float mi = b1 * m[i] + c1 * g;
    float vi = b2 * v[i] + c2 * g * g;
    m[i] = mi;
    v[i] = vi;
    param[i] = p - stepSize * mi / (sqrtf(vi) / bc2Sqrt + eps);
  }
};

// ------------------------------------------------------------ conversions (bit-exact with native/cpu/convert.cc)

CK_HD float halfToFloat(std::uint16_t h) {
  std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  std::uint32_t e = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (e == 0) return bitsToFloat(floatToBits(float(mant) * 5.9604644775390625e-8f) | sign);
  if (e == 31) return bitsToFloat(sign | 0x7f800000u | (mant << 13));
  return bitsToFloat(sign | ((e + 112u) << 23) | (mant << 13));
}
CK_HD std::uint16_t floatToHalf(float f) {
  std::uint32_t x = floatToBits(f);
  std::uint16_t sign = std::uint16_t((x >> 16) & 0x8000u);
  std::uint32_t a = x & 0x7fffffffu;
  if (a >= 0x7f800000u) {
    if (a == 0x7f800000u) return std::uint16_t(sign | 0x7c00u);
    return std::uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  }
  if (a >= 0x477ff000u) return std::uint16_t(sign | 0x7c00u);
  if (a < 0x38800000u) {
    std::uint32_t e = a >> 23;
    int shift = 126 - int(e);
    if (shift > 24) return sign;
    std::uint32_t mant = (a & 0x7fffffu) | 0x800000u;
    std::uint32_t mm = mant >> shift, rem = mant & ((1u << shift) - 1u), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (mm & 1u))) ++mm;
    return std::uint16_t(sign | mm);
  }
  std::uint32_t v = a - 0x38000000u;
  std::uint32_t mm = v >> 13, rem = v & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (mm & 1u))) ++mm;
  return std::uint16_t(sign | mm);
}
CK_HD std::uint16_t floatToBf16(float f) {
  std::uint32_t x = floatToBits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((x >> 16) | 0x0040u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return std::uint16_t(x >> 16);
}

struct F16ToF32F {
  const std::uint16_t* s; float* o;
  CK_HD void operator()(i64 i) const { o[i] = halfToFloat(s[i]); }
};
struct Bf16ToF32F {
  const std::uint16_t* s; float* o;
  CK_HD void operator()(i64 i) const { o[i] = bitsToFloat(std::uint32_t(s[i]) << 16); }
};
struct F32ToF16F {
  const float* s; std::uint16_t* o;
  CK_HD void operator()(i64 i) const { o[i] = floatToHalf(s[i]); }
};
struct F32ToBf16F {
  const float* s; std::uint16_t* o;
  CK_HD void operator()(i64 i) const { o[i] = floatToBf16(s[i]); }
};

// ------------------------------------------------------------ GEMM: 64×64 block tile, 16-deep K slices
//
// A block of 256 threads computes a 64×64 tile of C; thread t owns the 4×4
// elements (ty + 16r, tx + 16c). Each K slice is loaded into two shared tiles
// (load), then every thread accumulates from them (accum); the GPU separates
// the phases with __syncthreads, the host emulation runs each phase for all
// 256 threads before the next, which is the same schedule.

constexpr int kBM = 64, kBN = 64, kBK = 16, kThreads = 256;

struct GemmTile {
  GemmParams g;
  bool product;  // false when k == 0 or alpha == 0 (C = beta·C + bias, A and B unread)

  // element (row, kk) of op(A) / (kk, col) of op(B) for batch item z, 0 outside
  CK_HD float a(i64 z, i64 row, i64 kk) const {
    if (row >= g.m || kk >= g.k) return 0.f;
    const float* p = g.a + z * g.strideA;
    return g.transA ? p[kk * g.lda + row] : p[row * g.lda + kk];
  }
  CK_HD float b(i64 z, i64 kk, i64 col) const {
    if (col >= g.n || kk >= g.k) return 0.f;
    const float* p = g.b + z * g.strideB;
    return g.transB ? p[col * g.ldb + kk] : p[kk * g.ldb + col];
  }
  // thread t's share of the K slice at k0 into As[kBK][kBM] and Bs[kBK][kBN]
  CK_HD void load(int t, i64 z, i64 bm, i64 bn, i64 k0, float* As, float* Bs) const {
    for (int e = t; e < kBK * kBM; e += kThreads) {
      int kk = e / kBM, r = e % kBM;
      As[e] = a(z, bm + r, k0 + kk);
    }
    for (int e = t; e < kBK * kBN; e += kThreads) {
      int kk = e / kBN, c = e % kBN;
      Bs[e] = b(z, k0 + kk, bn + c);
    }
  }
  CK_HD void accum(int t, const float* As, const float* Bs, float* acc) const {
    int ty = t / 16, tx = t % 16;
    for (int kk = 0; kk < kBK; ++kk) {
      float av[4], bv[4];
      for (int r = 0; r < 4; ++r) av[r] = As[kk * kBM + ty + 16 * r];
      for (int c = 0; c < 4; ++c) bv[c] = Bs[kk * kBN + tx + 16 * c];
      for (int r = 0; r < 4; ++r)
        for (int c = 0; c < 4; ++c) acc[r * 4 + c] += av[r] * bv[c];
    }
  }
  CK_HD void store(int t, i64 z, i64 bm, i64 bn, const float* acc) const {
    int ty = t / 16, tx = t % 16;
    float* C = g.c + z * g.strideC;
    for (int r = 0; r < 4; ++r) {
      i64 row = bm + ty + 16 * r;
      if (row >= g.m) continue;
      for (int c = 0; c < 4; ++c) {
        i64 col = bn + tx + 16 * c;
        if (col >= g.n) continue;
        float* cij = C + row * g.ldc + col;
        float v = product ? g.alpha * acc[r * 4 + c] : 0.f;
        v = g.beta == 0.f ? v : v + g.beta * *cij;  // beta = 0 ignores NaN in C
        *cij = g.bias ? v + g.bias[col] : v;
      }
    }
  }
};

// bias added to every row of every batch item of C (after a cuBLAS GEMM)
struct BiasRowsF {
  float* c; const float* bias; i64 m, n, ldc, strideC;
  CK_HD void operator()(i64 e) const {
    i64 z = e / (m * n), r = (e / n) % m, j = e % n;
    c[z * strideC + r * ldc + j] += bias[j];
  }
};

}  // namespace ck::kern
