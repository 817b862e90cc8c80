// SGEMM register-tiled micro-kernels. The x86 ones are compiled for their ISA
// with target attributes, so one binary runs anywhere and gemm.cc picks the
// best one the CPU supports (see cpu::simd()).
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "gemm.h"
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace ck::cpu {
using std::int64_t;

namespace {
constexpr int kScalarMR = 4, kScalarNR = 16;

// Portable kernel: plain loops the compiler can vectorise for the baseline ISA.
void kernelScalar(int64_t kc, const float* A, const float* B, float* C, int64_t ldc, float alpha, float beta) {
  float acc[kScalarMR][kScalarNR] = {};
  for (int64_t p = 0; p < kc; ++p) {
    for (int r = 0; r < kScalarMR; ++r) {
      float a = A[r];
      for (int j = 0; j < kScalarNR; ++j) acc[r][j] += a * B[j];
    }
    A += kScalarMR;
    B += kScalarNR;
  }
  for (int r = 0; r < kScalarMR; ++r) {
    float* c = C + r * ldc;
    if (beta == 0.f)
      for (int j = 0; j < kScalarNR; ++j) c[j] = alpha * acc[r][j];
    else
      for (int j = 0; j < kScalarNR; ++j) c[j] = alpha * acc[r][j] + beta * c[j];
  }
}

#if defined(__x86_64__)
constexpr int kAvx2MR = 6, kAvx2NR = 16;

__attribute__((target("avx2,fma"))) void kernelAvx2(int64_t kc, const float* A, const float* B, float* C,
                                                    int64_t ldc, float alpha, float beta) {
  __m256 c0[kAvx2MR], c1[kAvx2MR];
#pragma GCC unroll 8
  for (int r = 0; r < kAvx2MR; ++r) c0[r] = c1[r] = _mm256_setzero_ps();
  for (int64_t p = 0; p < kc; ++p) {
    __m256 b0 = _mm256_load_ps(B), b1 = _mm256_load_ps(B + 8);
#pragma GCC unroll 8
    for (int r = 0; r < kAvx2MR; ++r) {
      __m256 a = _mm256_broadcast_ss(A + r);
      c0[r] = _mm256_fmadd_ps(a, b0, c0[r]);
      c1[r] = _mm256_fmadd_ps(a, b1, c1[r]);
    }
    A += kAvx2MR;
    B += kAvx2NR;
  }
  __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
#pragma GCC unroll 8
  for (int r = 0; r < kAvx2MR; ++r) {
    float* c = C + r * ldc;
    __m256 x0 = _mm256_mul_ps(va, c0[r]), x1 = _mm256_mul_ps(va, c1[r]);
    if (beta != 0.f) {
      x0 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(c), x0);
      x1 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(c + 8), x1);
    }
    _mm256_storeu_ps(c, x0);
    _mm256_storeu_ps(c + 8, x1);
  }
}

// MR rows × NV vectors of 16 floats. Accumulators: MR·NV zmm registers.
template <int MR, int NV>
__attribute__((target("avx512f,fma"))) void kernelAvx512(int64_t kc, const float* A, const float* B, float* C,
                                                         int64_t ldc, float alpha, float beta) {
  constexpr int NR = 16 * NV;
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  // Warm the C tile while the product is computed.
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    _mm_prefetch(reinterpret_cast<const char*>(C + r * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(C + r * ldc + NR - 1), _MM_HINT_T0);
  }
  for (int64_t p = 0; p < kc; ++p) {
    __m512 b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = _mm512_load_ps(B + 16 * v);
    _mm_prefetch(reinterpret_cast<const char*>(B + 8 * NR), _MM_HINT_T0);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      __m512 a = _mm512_set1_ps(A[r]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
    }
    A += MR;
    B += NR;
  }
  __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    float* c = C + r * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      __m512 x = _mm512_mul_ps(va, acc[r][v]);
      if (beta != 0.f) x = _mm512_fmadd_ps(vb, _mm512_loadu_ps(c + 16 * v), x);
      _mm512_storeu_ps(c + 16 * v, x);
    }
  }
}

// (GCC 12's _mm512_reduce_add_ps reads an _mm256_undefined_pd() on purpose.)
#pragma GCC diagnostic ignored "-Wuninitialized"
// Two rows of A against NC rows of Bt (dot products over k): 2·NC zmm
// accumulators, k in steps of 16 with a masked tail.
template <int NC>
__attribute__((target("avx512f,fma"))) inline void dotTile(int rows, int64_t k, const float* a0, const float* a1,
                                                           const float* bt, int64_t ldbt, float* c0, float* c1,
                                                           float alpha, float beta) {
  __m512 s0[NC], s1[NC];
#pragma GCC unroll 8
  for (int j = 0; j < NC; ++j) s0[j] = s1[j] = _mm512_setzero_ps();
  int64_t p = 0;
  for (; p + 16 <= k; p += 16) {
    __m512 x0 = _mm512_loadu_ps(a0 + p);
    __m512 x1 = rows > 1 ? _mm512_loadu_ps(a1 + p) : x0;
#pragma GCC unroll 8
    for (int j = 0; j < NC; ++j) {
      __m512 w = _mm512_loadu_ps(bt + j * ldbt + p);
      s0[j] = _mm512_fmadd_ps(x0, w, s0[j]);
      s1[j] = _mm512_fmadd_ps(x1, w, s1[j]);
    }
  }
  if (p < k) {
    __mmask16 m = __mmask16((1u << (k - p)) - 1);
    __m512 x0 = _mm512_maskz_loadu_ps(m, a0 + p);
    __m512 x1 = rows > 1 ? _mm512_maskz_loadu_ps(m, a1 + p) : x0;
#pragma GCC unroll 8
    for (int j = 0; j < NC; ++j) {
      __m512 w = _mm512_maskz_loadu_ps(m, bt + j * ldbt + p);
      s0[j] = _mm512_fmadd_ps(x0, w, s0[j]);
      s1[j] = _mm512_fmadd_ps(x1, w, s1[j]);
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < NC; ++j) {
    float v = alpha * _mm512_reduce_add_ps(s0[j]);
    c0[j] = beta == 0.f ? v : v + beta * c0[j];
    if (rows > 1) {
      float w = alpha * _mm512_reduce_add_ps(s1[j]);
      c1[j] = beta == 0.f ? w : w + beta * c1[j];
    }
  }
}

__attribute__((target("avx512f,fma"))) void dotRowsAvx512(int64_t i0, int64_t i1, int64_t n, int64_t k,
                                                          const float* a, int64_t lda, const float* bt, int64_t ldbt,
                                                          float* c, int64_t ldc, float alpha, float beta) {
  for (int64_t i = i0; i < i1; i += 2) {
    int rows = i + 1 < i1 ? 2 : 1;
    const float* a0 = a + i * lda;
    const float* a1 = rows > 1 ? a0 + lda : a0;
    float* c0 = c + i * ldc;
    float* c1 = rows > 1 ? c0 + ldc : c0;
    for (int64_t j = 0; j < n; j += 8) {
      const float* b = bt + j * ldbt;
      switch (int(std::min<int64_t>(8, n - j))) {
        case 8: dotTile<8>(rows, k, a0, a1, b, ldbt, c0 + j, c1 + j, alpha, beta); break;
        case 7: dotTile<7>(rows, k, a0, a1, b, ldbt, c0 + j, c1 + j, alpha, beta); break;
        case 6: dotTile<6>(rows, k, a0, a1, b, ldbt, c0 + j, c1 + j, alpha, beta); break;
        case 5: dotTile<5>(rows, k, a0, a1, b, ldbt, c0 + j, c1 + j, alpha, beta); break;
        case 4: dotTile<4>(rows, k, a0, a1, b, ldbt, c0 + j, c1 + j, alpha, beta); break;
        case 3: dotTile<3>(rows, k, a0, a1, b, ldbt, c0 + j, c1 + j, alpha, beta); break;
        case 2: dotTile<2>(rows, k, a0, a1, b, ldbt, c0 + j, c1 + j, alpha, beta); break;
        default: dotTile<1>(rows, k, a0, a1, b, ldbt, c0 + j, c1 + j, alpha, beta); break;
      }
    }
  }
}

// C rows [i0, i1) × n (n <= 16) = alpha · Σ_p A[p][i] · B[p][j] + beta · C, with A
// stored k×m (op(A) = Aᵀ) and B k×n contiguous rows (ldb): rank-1 updates
// vectorised along i, 32 rows × n columns of accumulators held in registers.
template <int NC>
__attribute__((target("avx512f,fma"))) void outerCols(int64_t i, int rows, int64_t k, const float* a, int64_t lda,
                                                      const float* b, int64_t ldb, float* c, int64_t ldc, float alpha,
                                                      float beta) {
  __m512 s0[NC], s1[NC];
#pragma GCC unroll 16
  for (int j = 0; j < NC; ++j) s0[j] = s1[j] = _mm512_setzero_ps();
  __mmask16 m0 = rows >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << rows) - 1);
  __mmask16 m1 = rows >= 32 ? __mmask16(0xFFFF) : rows > 16 ? __mmask16((1u << (rows - 16)) - 1) : __mmask16(0);
  for (int64_t p = 0; p < k; ++p) {
    const float* ap = a + p * lda + i;
    __m512 x0 = _mm512_maskz_loadu_ps(m0, ap);
    __m512 x1 = _mm512_maskz_loadu_ps(m1, ap + 16);
    const float* bp = b + p * ldb;
#pragma GCC unroll 16
    for (int j = 0; j < NC; ++j) {
      __m512 w = _mm512_set1_ps(bp[j]);
      s0[j] = _mm512_fmadd_ps(x0, w, s0[j]);
      s1[j] = _mm512_fmadd_ps(x1, w, s1[j]);
    }
  }
  alignas(64) float t[32][16];
#pragma GCC unroll 16
  for (int j = 0; j < NC; ++j) {
    alignas(64) float col[32];
    _mm512_store_ps(col, s0[j]);
    _mm512_store_ps(col + 16, s1[j]);
    for (int r = 0; r < rows; ++r) t[r][j] = col[r];
  }
  for (int r = 0; r < rows; ++r) {
    float* cr = c + (i + r) * ldc;
    for (int j = 0; j < NC; ++j) cr[j] = beta == 0.f ? alpha * t[r][j] : alpha * t[r][j] + beta * cr[j];
  }
}

__attribute__((target("avx512f,fma"))) void outerRowsAvx512(int64_t i0, int64_t i1, int64_t n, int64_t k,
                                                            const float* a, int64_t lda, const float* b, int64_t ldb,
                                                            float* c, int64_t ldc, float alpha, float beta) {
  for (int64_t i = i0; i < i1; i += 32) {
    int rows = int(std::min<int64_t>(32, i1 - i));
    switch (int(n)) {
#define CK_OUTER_CASE(N) case N: outerCols<N>(i, rows, k, a, lda, b, ldb, c, ldc, alpha, beta); break;
      CK_OUTER_CASE(1) CK_OUTER_CASE(2) CK_OUTER_CASE(3) CK_OUTER_CASE(4) CK_OUTER_CASE(5) CK_OUTER_CASE(6)
      CK_OUTER_CASE(7) CK_OUTER_CASE(8) CK_OUTER_CASE(9) CK_OUTER_CASE(10) CK_OUTER_CASE(11) CK_OUTER_CASE(12)
      CK_OUTER_CASE(13) CK_OUTER_CASE(14) CK_OUTER_CASE(15) CK_OUTER_CASE(16)
#undef CK_OUTER_CASE
      default: std::abort();  // callers keep n <= 16
    }
  }
}

// Few rows (m <= 8) of C, columns [j0, j1): C[i][j] = alpha · Σ_p A[i][p] · B[p][j]
// + beta · C, A contiguous m×k, B rows contiguous (ldb). 32 columns at a time,
// m × 2 accumulators in registers.
template <int MR>
__attribute__((target("avx512f,fma"))) void fewRowsBlock(int64_t j, int cols, int64_t k, const float* A,
                                                         const float* b, int64_t ldb, float* c, int64_t ldc,
                                                         float alpha, float beta) {
  __m512 s0[MR], s1[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) s0[r] = s1[r] = _mm512_setzero_ps();
  __mmask16 m0 = cols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cols) - 1);
  __mmask16 m1 = cols >= 32 ? __mmask16(0xFFFF) : cols > 16 ? __mmask16((1u << (cols - 16)) - 1) : __mmask16(0);
  for (int64_t p = 0; p < k; ++p) {
    const float* bp = b + p * ldb + j;
    __m512 x0 = _mm512_maskz_loadu_ps(m0, bp);
    __m512 x1 = _mm512_maskz_loadu_ps(m1, bp + 16);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      __m512 w = _mm512_set1_ps(A[r * k + p]);
      s0[r] = _mm512_fmadd_ps(w, x0, s0[r]);
      s1[r] = _mm512_fmadd_ps(w, x1, s1[r]);
    }
  }
  __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    float* cr = c + r * ldc + j;
    __m512 y0 = _mm512_mul_ps(va, s0[r]), y1 = _mm512_mul_ps(va, s1[r]);
    if (beta != 0.f) {
      y0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, cr), y0);
      y1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, cr + 16), y1);
    }
    _mm512_mask_storeu_ps(cr, m0, y0);
    _mm512_mask_storeu_ps(cr + 16, m1, y1);
  }
}

__attribute__((target("avx512f,fma"))) void fewRowsAvx512(int64_t m, int64_t j0, int64_t j1, int64_t k, const float* A,
                                                          const float* b, int64_t ldb, float* c, int64_t ldc,
                                                          float alpha, float beta) {
  for (int64_t j = j0; j < j1; j += 32) {
    int cols = int(std::min<int64_t>(32, j1 - j));
    switch (int(m)) {
#define CK_FEW_CASE(M) case M: fewRowsBlock<M>(j, cols, k, A, b, ldb, c, ldc, alpha, beta); break;
      CK_FEW_CASE(1) CK_FEW_CASE(2) CK_FEW_CASE(3) CK_FEW_CASE(4) CK_FEW_CASE(5) CK_FEW_CASE(6) CK_FEW_CASE(7)
      CK_FEW_CASE(8)
#undef CK_FEW_CASE
      default: std::abort();  // callers keep m <= 8
    }
  }
}
#endif
}  // namespace

#if defined(__x86_64__)
void gemmOuterRows(int64_t i0, int64_t i1, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                   int64_t ldb, float* c, int64_t ldc, float alpha, float beta) {
  outerRowsAvx512(i0, i1, n, k, a, lda, b, ldb, c, ldc, alpha, beta);
}
void gemmFewRows(int64_t m, int64_t j0, int64_t j1, int64_t k, const float* A, const float* b, int64_t ldb, float* c,
                 int64_t ldc, float alpha, float beta) {
  fewRowsAvx512(m, j0, j1, k, A, b, ldb, c, ldc, alpha, beta);
}
#else
void gemmOuterRows(int64_t, int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t,
                   float, float) {
  std::abort();
}
void gemmFewRows(int64_t, int64_t, int64_t, int64_t, const float*, const float*, int64_t, float*, int64_t, float,
                 float) {
  std::abort();
}
#endif

#if defined(__x86_64__)
void gemmDotRows(int64_t i0, int64_t i1, int64_t n, int64_t k, const float* a, int64_t lda, const float* bt,
                 int64_t ldbt, float* c, int64_t ldc, float alpha, float beta) {
  dotRowsAvx512(i0, i1, n, k, a, lda, bt, ldbt, c, ldc, alpha, beta);
}
#else
void gemmDotRows(int64_t, int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t,
                 float, float) {
  std::abort();  // only dispatched when the CPU has AVX-512
}
#endif

const GemmKernelInfo& gemmKernelScalar() {
  static const GemmKernelInfo k{kernelScalar, kScalarMR, kScalarNR, 128, 256, 1024};
  return k;
}
#if defined(__x86_64__)
const GemmKernelInfo& gemmKernelAvx2() {
  static const GemmKernelInfo k{kernelAvx2, kAvx2MR, kAvx2NR, 144, 256, 2048};
  return k;
}
const GemmKernelInfo& gemmKernelAvx512() {
  // CATECHISM_GEMM_TILE selects another register tile (for tuning).
  static const GemmKernelInfo k = [] {
    const char* t = std::getenv("CATECHISM_GEMM_TILE");
    std::string v = t ? t : "";
    if (v == "14x32") return GemmKernelInfo{kernelAvx512<14, 2>, 14, 32, 140, 256, 2048};
    if (v == "6x64") return GemmKernelInfo{kernelAvx512<6, 4>, 6, 64, 144, 256, 2048};
    if (v == "8x48") return GemmKernelInfo{kernelAvx512<8, 3>, 8, 48, 144, 256, 2016};
    if (v == "12x32k") return GemmKernelInfo{kernelAvx512<12, 2>, 12, 32, 144, 128, 2048};
    return GemmKernelInfo{kernelAvx512<6, 4>, 6, 64, 144, 256, 2048};
  }();
  return k;
}
const GemmKernelInfo& gemmKernelAvx512Narrow() {
  static const GemmKernelInfo k{kernelAvx512<12, 2>, 12, 32, 144, 256, 2048};
  return k;
}
#else
const GemmKernelInfo& gemmKernelAvx2() { return gemmKernelScalar(); }
const GemmKernelInfo& gemmKernelAvx512() { return gemmKernelScalar(); }
const GemmKernelInfo& gemmKernelAvx512Narrow() { return gemmKernelScalar(); }
#endif

}  // namespace ck::cpu
