// fp16 / bf16 <-> fp32 conversions (IEEE 754 binary16; bfloat16 = top half of
// binary32). Float-to-half rounds to nearest, ties to even.
#include <cstring>

#include "../ops.h"
#include "pool.h"
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace ck::cpu {
using std::int64_t;
using std::uint16_t;
using std::uint32_t;

namespace {
inline float bitsToFloat(uint32_t b) { float f; std::memcpy(&f, &b, 4); return f; }
inline uint32_t floatToBits(float f) { uint32_t b; std::memcpy(&b, &f, 4); return b; }

inline float halfToFloat(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0) {
    float f = float(mant) * 5.9604644775390625e-8f;  // mant · 2^-24 (exact)
    return bitsToFloat(floatToBits(f) | sign);
  }
  if (exp == 31) return bitsToFloat(sign | 0x7f800000u | (mant << 13));
  return bitsToFloat(sign | ((exp + 112u) << 23) | (mant << 13));
}

inline uint16_t floatToHalf(float f) {
  uint32_t x = floatToBits(f);
  uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  uint32_t a = x & 0x7fffffffu;
  if (a >= 0x7f800000u) {  // inf or NaN (NaN stays a quiet NaN, top payload bits kept)
    if (a == 0x7f800000u) return sign | 0x7c00u;
    return uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  }
  if (a >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to inf
  if (a < 0x38800000u) {                          // below 2^-14: half subnormal or zero
    uint32_t e = a >> 23;
    int shift = 126 - int(e);
    if (shift > 24) return sign;
    uint32_t mant = (a & 0x7fffffu) | 0x800000u;
    uint32_t m = mant >> shift, rem = mant & ((1u << shift) - 1u), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (m & 1u))) ++m;
    return uint16_t(sign | m);
  }
  uint32_t v = a - 0x38000000u;  // rebias exponent 127 -> 15
  uint32_t m = v >> 13, rem = v & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (m & 1u))) ++m;
  return uint16_t(sign | m);
}

inline uint16_t floatToBf16(float f) {
  uint32_t x = floatToBits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x0040u);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return uint16_t(x >> 16);
}
constexpr int64_t kGrain = 1 << 16;
}  // namespace

#if defined(__x86_64__)
// F16C converts exactly (subnormals included) and rounds to nearest even, the
// same results as the scalar code; it is present on every AVX2 CPU we dispatch to.
bool hasF16c() {
  static const bool ok = [] { __builtin_cpu_init(); return __builtin_cpu_supports("f16c") != 0; }();
  return ok && simd() != Simd::Scalar;
}
__attribute__((target("avx,f16c"))) void f16ToF32F16c(const uint16_t* src, float* out, int64_t b, int64_t e) {
  int64_t i = b;
  for (; i + 8 <= e; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < e; ++i) out[i] = halfToFloat(src[i]);
}
__attribute__((target("avx,f16c"))) void f32ToF16F16c(const float* src, uint16_t* out, int64_t b, int64_t e) {
  int64_t i = b;
  for (; i + 8 <= e; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; i < e; ++i) out[i] = floatToHalf(src[i]);
}
#endif

void f16ToF32(const uint16_t* src, float* out, int64_t n) {
  parallelRange(n, kGrain, [&](int64_t b, int64_t e) {
#if defined(__x86_64__)
    if (hasF16c()) return f16ToF32F16c(src, out, b, e);
#endif
    for (int64_t i = b; i < e; ++i) out[i] = halfToFloat(src[i]);
  });
}
void bf16ToF32(const uint16_t* src, float* out, int64_t n) {
  parallelRange(n, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) out[i] = bitsToFloat(uint32_t(src[i]) << 16);
  });
}
void f32ToF16(const float* src, uint16_t* out, int64_t n) {
  parallelRange(n, kGrain, [&](int64_t b, int64_t e) {
#if defined(__x86_64__)
    if (hasF16c()) return f32ToF16F16c(src, out, b, e);
#endif
    for (int64_t i = b; i < e; ++i) out[i] = floatToHalf(src[i]);
  });
}
void f32ToBf16(const float* src, uint16_t* out, int64_t n) {
  parallelRange(n, kGrain, [&](int64_t b, int64_t e) { for (int64_t i = b; i < e; ++i) out[i] = floatToBf16(src[i]); });
}

}  // namespace ck::cpu
