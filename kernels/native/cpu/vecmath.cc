// exp: Cody–Waite range reduction x = n·ln2 + r, |r| <= ln2/2, and a degree-6
// polynomial for e^r (the classic Cephes expf coefficients), then scaling by
// 2^n. The sigmoid family is built on it: sigmoid(x) = 1/(1+e^-x),
// silu = x·sigmoid(x), gelu_tanh(x) = 0.5x(1+tanh u) = x·sigmoid(2u).
#include "vecmath.h"

#include <cmath>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace ck::cpu::vec {
using std::int64_t;

namespace {
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f, kP3 = 4.1665795894e-2f,
                kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;
constexpr float kGeluC = 0.7978845608028654f, kGeluA = 0.044715f;

#if defined(__x86_64__)
// ---------------------------------------------------------------- AVX-512
#define T512 __attribute__((target("avx512f,avx512dq,fma")))

T512 inline __m512 exp512(__m512 x) {
  // Clamp (NaN passes through: min/max return their second operand on NaN).
  x = _mm512_max_ps(_mm512_set1_ps(-104.f), _mm512_min_ps(_mm512_set1_ps(89.f), x));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kP0);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP1));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP5));
  __m512 r2 = _mm512_mul_ps(r, r);
  p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);  // p·2^n with correct overflow/underflow
}

// s = 1/(1+e^-x); *oneMinus = 1 − s computed as e^-x·s (no cancellation near s = 1).
// Works from e = exp(−|x|) ≤ 1, so nothing overflows for very negative x
// (exp(−x) = inf would make 1 − s = inf·0 = NaN there).
T512 inline __m512 sigmoid512(__m512 x, __m512* oneMinus = nullptr) {
  __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(x)));
  __m512 a = _mm512_div_ps(_mm512_set1_ps(1.f), _mm512_add_ps(_mm512_set1_ps(1.f), e));  // sigmoid(|x|)
  __m512 b = _mm512_mul_ps(e, a);                                                          // 1 − sigmoid(|x|)
  __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
  if (oneMinus) *oneMinus = _mm512_mask_blend_ps(neg, b, a);
  return _mm512_mask_blend_ps(neg, a, b);
}

// For op in {Sigmoid, Silu, Gelu}: value f(x) and derivative f'(x).
template <Unary op>
T512 inline void family512(__m512 x, __m512* f, __m512* df) {
  const __m512 one = _mm512_set1_ps(1.f);
  if constexpr (op == Unary::Sigmoid) {
    __m512 q;
    __m512 s = sigmoid512(x, &q);
    if (f) *f = s;
    if (df) *df = _mm512_mul_ps(s, q);
  } else if constexpr (op == Unary::Silu) {
    __m512 q;
    __m512 s = sigmoid512(x, &q);
    if (f) *f = _mm512_mul_ps(x, s);
    if (df) *df = _mm512_mul_ps(s, _mm512_fmadd_ps(x, q, one));
  } else {
    __m512 x2 = _mm512_mul_ps(x, x);
    __m512 u = _mm512_mul_ps(_mm512_set1_ps(kGeluC), _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(kGeluA), x2), x, x));
    __m512 q;
    __m512 s = sigmoid512(_mm512_add_ps(u, u), &q);
    if (f) *f = _mm512_mul_ps(x, s);
    if (df) {
      // 0.5(1+t) = s, 1 − t² = 4s(1−s): f' = s + 2x·s(1−s)·c(1 + 3a x²)
      __m512 du = _mm512_mul_ps(_mm512_set1_ps(kGeluC), _mm512_fmadd_ps(_mm512_set1_ps(3.f * kGeluA), x2, one));
      __m512 ss = _mm512_mul_ps(s, q);
      *df = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_add_ps(x, x), ss), du, s);
    }
  }
}

T512 bool expShift512(const float* x, float shift, float* out, int64_t n) {
  __m512 sh = _mm512_set1_ps(shift);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), sh)));
  if (i < n) {
    __mmask16 m = __mmask16((1u << (n - i)) - 1u);
    _mm512_mask_storeu_ps(out + i, m, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), sh)));
  }
  return true;
}

template <Unary op>
T512 void fwd512(const float* x, float* out, int64_t n) {
  int64_t i = 0;
  __m512 f;
  for (; i + 16 <= n; i += 16) {
    family512<op>(_mm512_loadu_ps(x + i), &f, nullptr);
    _mm512_storeu_ps(out + i, f);
  }
  if (i < n) {
    __mmask16 m = __mmask16((1u << (n - i)) - 1u);
    family512<op>(_mm512_maskz_loadu_ps(m, x + i), &f, nullptr);
    _mm512_mask_storeu_ps(out + i, m, f);
  }
}

template <Unary op>
T512 void bwd512(const float* x, const float* gy, float* gx, int64_t n, bool acc) {
  int64_t i = 0;
  __m512 d;
  for (; i + 16 <= n; i += 16) {
    family512<op>(_mm512_loadu_ps(x + i), nullptr, &d);
    __m512 g = _mm512_mul_ps(d, _mm512_loadu_ps(gy + i));
    if (acc) g = _mm512_add_ps(g, _mm512_loadu_ps(gx + i));
    _mm512_storeu_ps(gx + i, g);
  }
  if (i < n) {
    __mmask16 m = __mmask16((1u << (n - i)) - 1u);
    family512<op>(_mm512_maskz_loadu_ps(m, x + i), nullptr, &d);
    __m512 g = _mm512_mul_ps(d, _mm512_maskz_loadu_ps(m, gy + i));
    if (acc) g = _mm512_add_ps(g, _mm512_maskz_loadu_ps(m, gx + i));
    _mm512_mask_storeu_ps(gx + i, m, g);
  }
}

// ---------------------------------------------------------------- AVX2
#define T256 __attribute__((target("avx2,fma")))

T256 inline __m256 exp256(__m256 x) {
  const __m256 hi = _mm256_set1_ps(88.72283935546875f), lo = _mm256_set1_ps(-103.972084045410f);
  __m256 over = _mm256_cmp_ps(x, hi, _CMP_GT_OQ), under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  __m256 xc = _mm256_max_ps(lo, _mm256_min_ps(hi, x));  // NaN passes through
  __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kP0);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP1));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP5));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  // 2^n = 2^n1 · 2^n2 with both halves normal for n in [-150, 128], so results
  // near FLT_MAX and in the subnormal range come out right. NaN lanes convert
  // to INT_MIN, but p is NaN there and NaN·anything stays NaN.
  __m256i ni = _mm256_cvtps_epi32(n);
  __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  __m256 res = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
  res = _mm256_blendv_ps(res, _mm256_set1_ps(INFINITY), over);
  return _mm256_blendv_ps(res, _mm256_setzero_ps(), under);
}

// s = 1/(1+e^-x); *oneMinus = 1 − s computed as e^-x·s (no cancellation near s = 1).
// As sigmoid512: from e = exp(−|x|), so very negative x cannot give inf·0.
T256 inline __m256 sigmoid256(__m256 x, __m256* oneMinus = nullptr) {
  __m256 ax = _mm256_andnot_ps(_mm256_set1_ps(-0.f), x);
  __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), ax));
  __m256 a = _mm256_div_ps(_mm256_set1_ps(1.f), _mm256_add_ps(_mm256_set1_ps(1.f), e));
  __m256 b = _mm256_mul_ps(e, a);
  __m256 neg = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
  if (oneMinus) *oneMinus = _mm256_blendv_ps(b, a, neg);
  return _mm256_blendv_ps(a, b, neg);
}

template <Unary op>
T256 inline void family256(__m256 x, __m256* f, __m256* df) {
  const __m256 one = _mm256_set1_ps(1.f);
  if constexpr (op == Unary::Sigmoid) {
    __m256 q;
    __m256 s = sigmoid256(x, &q);
    if (f) *f = s;
    if (df) *df = _mm256_mul_ps(s, q);
  } else if constexpr (op == Unary::Silu) {
    __m256 q;
    __m256 s = sigmoid256(x, &q);
    if (f) *f = _mm256_mul_ps(x, s);
    if (df) *df = _mm256_mul_ps(s, _mm256_fmadd_ps(x, q, one));
  } else {
    __m256 x2 = _mm256_mul_ps(x, x);
    __m256 u = _mm256_mul_ps(_mm256_set1_ps(kGeluC), _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(kGeluA), x2), x, x));
    __m256 q;
    __m256 s = sigmoid256(_mm256_add_ps(u, u), &q);
    if (f) *f = _mm256_mul_ps(x, s);
    if (df) {
      __m256 du = _mm256_mul_ps(_mm256_set1_ps(kGeluC), _mm256_fmadd_ps(_mm256_set1_ps(3.f * kGeluA), x2, one));
      __m256 ss = _mm256_mul_ps(s, q);
      *df = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_add_ps(x, x), ss), du, s);
    }
  }
}

// Tail handling for AVX2: run the vector body on a padded copy.
T256 bool expShift256(const float* x, float shift, float* out, int64_t n) {
  __m256 sh = _mm256_set1_ps(shift);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), sh)));
  if (i < n) {
    alignas(32) float buf[8] = {};
    for (int64_t j = i; j < n; ++j) buf[j - i] = x[j];
    _mm256_store_ps(buf, exp256(_mm256_sub_ps(_mm256_load_ps(buf), sh)));
    for (int64_t j = i; j < n; ++j) out[j] = buf[j - i];
  }
  return true;
}

template <Unary op>
T256 void fwd256(const float* x, float* out, int64_t n) {
  int64_t i = 0;
  __m256 f;
  for (; i + 8 <= n; i += 8) {
    family256<op>(_mm256_loadu_ps(x + i), &f, nullptr);
    _mm256_storeu_ps(out + i, f);
  }
  if (i < n) {
    alignas(32) float buf[8] = {};
    for (int64_t j = i; j < n; ++j) buf[j - i] = x[j];
    family256<op>(_mm256_load_ps(buf), &f, nullptr);
    _mm256_store_ps(buf, f);
    for (int64_t j = i; j < n; ++j) out[j] = buf[j - i];
  }
}

template <Unary op>
T256 void bwd256(const float* x, const float* gy, float* gx, int64_t n, bool acc) {
  int64_t i = 0;
  __m256 d;
  for (; i + 8 <= n; i += 8) {
    family256<op>(_mm256_loadu_ps(x + i), nullptr, &d);
    __m256 g = _mm256_mul_ps(d, _mm256_loadu_ps(gy + i));
    if (acc) g = _mm256_add_ps(g, _mm256_loadu_ps(gx + i));
    _mm256_storeu_ps(gx + i, g);
  }
  if (i < n) {
    alignas(32) float buf[8] = {};
    for (int64_t j = i; j < n; ++j) buf[j - i] = x[j];
    family256<op>(_mm256_load_ps(buf), nullptr, &d);
    _mm256_store_ps(buf, d);
    for (int64_t j = i; j < n; ++j) gx[j] = acc ? gx[j] + buf[j - i] * gy[j] : buf[j - i] * gy[j];
  }
}
#endif
}  // namespace

bool expShift(const float* x, float shift, float* out, i64 n) {
#if defined(__x86_64__)
  switch (simd()) {
    case Simd::Avx512: return expShift512(x, shift, out, n);
    case Simd::Avx2: return expShift256(x, shift, out, n);
    default: break;
  }
#endif
  (void)x; (void)shift; (void)out; (void)n;
  return false;
}

bool sigmoidFamily(Unary op, const float* x, float* out, i64 n) {
#if defined(__x86_64__)
  Simd s = simd();
  if (s == Simd::Scalar) return false;
  switch (op) {
    case Unary::Sigmoid: s == Simd::Avx512 ? fwd512<Unary::Sigmoid>(x, out, n) : fwd256<Unary::Sigmoid>(x, out, n); return true;
    case Unary::Silu: s == Simd::Avx512 ? fwd512<Unary::Silu>(x, out, n) : fwd256<Unary::Silu>(x, out, n); return true;
    case Unary::Gelu: s == Simd::Avx512 ? fwd512<Unary::Gelu>(x, out, n) : fwd256<Unary::Gelu>(x, out, n); return true;
    default: return false;
  }
#else
  (void)op; (void)x; (void)out; (void)n;
  return false;
#endif
}

bool sigmoidFamilyBackward(Unary op, const float* x, const float* gy, float* gx, i64 n, bool acc) {
#if defined(__x86_64__)
  Simd s = simd();
  if (s == Simd::Scalar) return false;
  switch (op) {
    case Unary::Sigmoid: s == Simd::Avx512 ? bwd512<Unary::Sigmoid>(x, gy, gx, n, acc) : bwd256<Unary::Sigmoid>(x, gy, gx, n, acc); return true;
    case Unary::Silu: s == Simd::Avx512 ? bwd512<Unary::Silu>(x, gy, gx, n, acc) : bwd256<Unary::Silu>(x, gy, gx, n, acc); return true;
    case Unary::Gelu: s == Simd::Avx512 ? bwd512<Unary::Gelu>(x, gy, gx, n, acc) : bwd256<Unary::Gelu>(x, gy, gx, n, acc); return true;
    default: return false;
  }
#else
  (void)op; (void)x; (void)gy; (void)gx; (void)n; (void)acc;
  return false;
#endif
}

double sum(const float* x, i64 n) {
  double lane[8] = {};
  i64 i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) lane[l] += double(x[i + l]);
  double s = 0;
  for (int l = 0; l < 8; ++l) s += lane[l];
  for (; i < n; ++i) s += double(x[i]);
  return s;
}

double dot(const float* a, const float* b, i64 n) {
  double lane[8] = {};
  i64 i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) lane[l] += double(a[i + l]) * double(b[i + l]);
  double s = 0;
  for (int l = 0; l < 8; ++l) s += lane[l];
  for (; i < n; ++i) s += double(a[i]) * double(b[i]);
  return s;
}

float max(const float* x, i64 n) {
  float lane[16];
  for (int l = 0; l < 16; ++l) lane[l] = -INFINITY;
  bool nan = false;
  i64 i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; ++l) {
      float v = x[i + l];
      nan |= v != v;
      lane[l] = v > lane[l] ? v : lane[l];
    }
  float m = -INFINITY;
  for (int l = 0; l < 16; ++l) m = lane[l] > m ? lane[l] : m;
  for (; i < n; ++i) {
    nan |= x[i] != x[i];
    m = x[i] > m ? x[i] : m;
  }
  return nan ? NAN : m;
}

}  // namespace ck::cpu::vec
