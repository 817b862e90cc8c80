// Float64 DGEMM / SYRK / Cholesky / triangular solves (see linalg64.h).
//
// DGEMM follows the same Goto/BLIS scheme as the SGEMM in gemm.cc: operands
// are packed into register-tile slivers (zero-padded at the edges) and a
// register-tiled micro-kernel, chosen by the CPU's ISA at run time, does the
// arithmetic. Here both packed operands are shared by the threads, which
// split the C tiles of each KC step between them, so a wide and short
// product (100 right-hand sides against a 3072-wide factor) still uses every
// core. The factorisation and the solves are recursive (split in halves), so
// nearly all of their work is DGEMM on large blocks.
#include "linalg64.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "pool.h"
#include "scratch.h"
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace ck::cpu {
namespace {

// C[MR×NR] = alpha·acc + beta·C (beta == 0: C not read); A, B packed slivers.
using Kernel64 = void (*)(i64 kc, const double* A, const double* B, double* C, i64 ldc, double alpha, double beta);
struct Tile64 {
  Kernel64 kernel;
  int mr, nr;
};

constexpr int kScalarMR = 4, kScalarNR = 8;
void kernelScalar(i64 kc, const double* A, const double* B, double* C, i64 ldc, double alpha, double beta) {
  double acc[kScalarMR][kScalarNR] = {};
  for (i64 p = 0; p < kc; ++p, A += kScalarMR, B += kScalarNR)
    for (int r = 0; r < kScalarMR; ++r)
      for (int j = 0; j < kScalarNR; ++j) acc[r][j] += A[r] * B[j];
  for (int r = 0; r < kScalarMR; ++r)
    for (int j = 0; j < kScalarNR; ++j) {
      double* c = C + r * ldc + j;
      *c = beta == 0.0 ? alpha * acc[r][j] : alpha * acc[r][j] + beta * *c;
    }
}

#if defined(__x86_64__)
constexpr int kAvx2MR = 6, kAvx2NR = 8;
__attribute__((target("avx2,fma"))) void kernelAvx2(i64 kc, const double* A, const double* B, double* C, i64 ldc,
                                                    double alpha, double beta) {
  __m256d c0[kAvx2MR], c1[kAvx2MR];
#pragma GCC unroll 8
  for (int r = 0; r < kAvx2MR; ++r) c0[r] = c1[r] = _mm256_setzero_pd();
  for (i64 p = 0; p < kc; ++p, A += kAvx2MR, B += kAvx2NR) {
    __m256d b0 = _mm256_load_pd(B), b1 = _mm256_load_pd(B + 4);
#pragma GCC unroll 8
    for (int r = 0; r < kAvx2MR; ++r) {
      __m256d a = _mm256_broadcast_sd(A + r);
      c0[r] = _mm256_fmadd_pd(a, b0, c0[r]);
      c1[r] = _mm256_fmadd_pd(a, b1, c1[r]);
    }
  }
  __m256d va = _mm256_set1_pd(alpha), vb = _mm256_set1_pd(beta);
#pragma GCC unroll 8
  for (int r = 0; r < kAvx2MR; ++r) {
    double* c = C + r * ldc;
    __m256d x0 = _mm256_mul_pd(va, c0[r]), x1 = _mm256_mul_pd(va, c1[r]);
    if (beta != 0.0) {
      x0 = _mm256_fmadd_pd(vb, _mm256_loadu_pd(c), x0);
      x1 = _mm256_fmadd_pd(vb, _mm256_loadu_pd(c + 4), x1);
    }
    _mm256_storeu_pd(c, x0);
    _mm256_storeu_pd(c + 4, x1);
  }
}

// 12 rows × 2 vectors of 8 doubles: 24 accumulators of the 32 zmm registers.
constexpr int kAvx512MR = 12, kAvx512NR = 16;
__attribute__((target("avx512f"))) void kernelAvx512(i64 kc, const double* A, const double* B, double* C, i64 ldc,
                                                     double alpha, double beta) {
  __m512d c0[kAvx512MR], c1[kAvx512MR];
#pragma GCC unroll 16
  for (int r = 0; r < kAvx512MR; ++r) c0[r] = c1[r] = _mm512_setzero_pd();
  for (i64 p = 0; p < kc; ++p, A += kAvx512MR, B += kAvx512NR) {
    __m512d b0 = _mm512_load_pd(B), b1 = _mm512_load_pd(B + 8);
#pragma GCC unroll 16
    for (int r = 0; r < kAvx512MR; ++r) {
      __m512d a = _mm512_set1_pd(A[r]);
      c0[r] = _mm512_fmadd_pd(a, b0, c0[r]);
      c1[r] = _mm512_fmadd_pd(a, b1, c1[r]);
    }
  }
  __m512d va = _mm512_set1_pd(alpha), vb = _mm512_set1_pd(beta);
#pragma GCC unroll 16
  for (int r = 0; r < kAvx512MR; ++r) {
    double* c = C + r * ldc;
    __m512d x0 = _mm512_mul_pd(va, c0[r]), x1 = _mm512_mul_pd(va, c1[r]);
    if (beta != 0.0) {
      x0 = _mm512_fmadd_pd(vb, _mm512_loadu_pd(c), x0);
      x1 = _mm512_fmadd_pd(vb, _mm512_loadu_pd(c + 8), x1);
    }
    _mm512_storeu_pd(c, x0);
    _mm512_storeu_pd(c + 8, x1);
  }
}
#endif

Tile64 tile() {
#if defined(__x86_64__)
  switch (simd()) {
    case Simd::Avx512: return {kernelAvx512, kAvx512MR, kAvx512NR};
    case Simd::Avx2: return {kernelAvx2, kAvx2MR, kAvx2NR};
    default: break;
  }
#endif
  return {kernelScalar, kScalarMR, kScalarNR};
}

// Cache blocks: a KC-deep B sliver (KC·NR doubles, 32 KiB) stays in L1, an
// MC×KC block of A (192 KiB) in L2. MC is a multiple of every MR above.
constexpr i64 KC = 256, MC = 96, NCHUNK = 384;

// Packed panels, per calling thread (the pool runs one job at a time).
thread_local AlignedScratch<double> scratchA, scratchB;
// Out of memory inside a kernel: there is no way to report it from here.
double* need(double* p) {
  if (!p) std::abort();
  return p;
}

// A rows [0, m) × k-range [p0, p0+kc) into MR-row slivers (kc·MR each).
void packA(const double* a, i64 rsa, i64 csa, i64 m, i64 p0, i64 kc, int mr, double* out) {
  i64 slivers = (m + mr - 1) / mr;
  parallelRange(slivers, 8, [&](i64 s0, i64 s1) {
    for (i64 s = s0; s < s1; ++s) {
      i64 i0 = s * mr;
      int rows = int(std::min<i64>(mr, m - i0));
      double* dst = out + i0 * kc;
      for (i64 p = 0; p < kc; ++p) {
        const double* src = a + i0 * rsa + (p0 + p) * csa;
        int r = 0;
        for (; r < rows; ++r) dst[p * mr + r] = src[r * rsa];
        for (; r < mr; ++r) dst[p * mr + r] = 0.0;
      }
    }
  });
}

// B k-range [p0, p0+kc) × cols [0, n) into NR-column slivers (kc·NR each).
void packB(const double* b, i64 rsb, i64 csb, i64 p0, i64 kc, i64 n, int nr, double* out) {
  i64 slivers = (n + nr - 1) / nr;
  parallelRange(slivers, 8, [&](i64 s0, i64 s1) {
    for (i64 s = s0; s < s1; ++s) {
      i64 j0 = s * nr;
      int cols = int(std::min<i64>(nr, n - j0));
      double* dst = out + j0 * kc;
      if (csb == 1) {
        for (i64 p = 0; p < kc; ++p) {
          const double* src = b + (p0 + p) * rsb + j0;
          int c = 0;
          for (; c < cols; ++c) dst[p * nr + c] = src[c];
          for (; c < nr; ++c) dst[p * nr + c] = 0.0;
        }
      } else {  // columns are the contiguous side (rsb == 1 when B is a transposed row-major matrix)
        for (int c = 0; c < cols; ++c) {
          const double* src = b + p0 * rsb + (j0 + c) * csb;
          for (i64 p = 0; p < kc; ++p) dst[p * nr + c] = src[p * rsb];
        }
        for (int c = cols; c < nr; ++c)
          for (i64 p = 0; p < kc; ++p) dst[p * nr + c] = 0.0;
      }
    }
  });
}

void scaleC(i64 m, i64 n, double beta, double* c, i64 ldc) {
  for (i64 i = 0; i < m; ++i) {
    double* row = c + i * ldc;
    if (beta == 0.0) std::fill(row, row + n, 0.0);
    else for (i64 j = 0; j < n; ++j) row[j] *= beta;
  }
}

}  // namespace

void dgemm(i64 m, i64 n, i64 k, double alpha, const double* a, i64 rsa, i64 csa, const double* b, i64 rsb, i64 csb,
           double beta, double* c, i64 ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0 || alpha == 0.0) { scaleC(m, n, beta, c, ldc); return; }
  const Tile64 t = tile();
  const i64 mPad = (m + t.mr - 1) / t.mr * t.mr, nPad = (n + t.nr - 1) / t.nr * t.nr;
  double* Ap = need(scratchA.get(size_t(mPad * std::min(k, KC))));
  double* Bp = need(scratchB.get(size_t(nPad * std::min(k, KC))));
  const i64 mBlocks = (m + MC - 1) / MC, nChunks = (n + NCHUNK - 1) / NCHUNK;
  for (i64 p0 = 0; p0 < k; p0 += KC) {
    const i64 kc = std::min(KC, k - p0);
    const double betaNow = p0 == 0 ? beta : 1.0;
    packA(a, rsa, csa, m, p0, kc, t.mr, Ap);
    packB(b, rsb, csb, p0, kc, n, t.nr, Bp);
    parallelFor(mBlocks * nChunks, [&](i64 task, int) {
      const i64 i0 = (task % mBlocks) * MC, j0 = (task / mBlocks) * NCHUNK;
      const i64 i1 = std::min(m, i0 + MC), j1 = std::min(n, j0 + NCHUNK);
      alignas(64) double edge[16 * 16];
      for (i64 j = j0; j < j1; j += t.nr) {
        const double* bs = Bp + j * kc;
        const int cols = int(std::min<i64>(t.nr, j1 - j));
        for (i64 i = i0; i < i1; i += t.mr) {
          const double* as = Ap + i * kc;
          const int rows = int(std::min<i64>(t.mr, i1 - i));
          double* ct = c + i * ldc + j;
          if (rows == t.mr && cols == t.nr) {
            t.kernel(kc, as, bs, ct, ldc, alpha, betaNow);
          } else {  // edge tile: compute the full tile aside, write back the part inside C
            t.kernel(kc, as, bs, edge, t.nr, alpha, 0.0);
            for (int r = 0; r < rows; ++r)
              for (int q = 0; q < cols; ++q) {
                double* cv = ct + r * ldc + q;
                *cv = betaNow == 0.0 ? edge[r * t.nr + q] : edge[r * t.nr + q] + betaNow * *cv;
              }
          }
        }
      }
    });
  }
}

void dsyrkLower(i64 n, i64 k, double alpha, const double* a, i64 rsa, i64 csa, double beta, double* c, i64 ldc) {
  // Block rows of T: the part left of the diagonal block is one DGEMM, the
  // diagonal block is formed aside and only its lower triangle written.
  constexpr i64 T = 192;
  double* diag = nullptr;
  for (i64 i0 = 0; i0 < n; i0 += T) {
    const i64 rows = std::min(T, n - i0);
    const double* ai = a + i0 * rsa;
    if (i0 > 0) dgemm(rows, i0, k, alpha, ai, rsa, csa, a, csa, rsa, beta, c + i0 * ldc, ldc);
    if (!diag) diag = need(static_cast<double*>(std::malloc(sizeof(double) * T * T)));
    dgemm(rows, rows, k, alpha, ai, rsa, csa, ai, csa, rsa, 0.0, diag, rows);
    for (i64 r = 0; r < rows; ++r) {
      double* cr = c + (i0 + r) * ldc + i0;
      const double* dr = diag + r * rows;
      for (i64 q = 0; q <= r; ++q) cr[q] = beta == 0.0 ? dr[q] : dr[q] + beta * cr[q];
    }
  }
  std::free(diag);
}

namespace {

// Four partial sums: without -ffast-math the compiler keeps one serial chain.
inline double dot(const double* x, const double* y, i64 n) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  i64 i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += x[i] * y[i];
    s1 += x[i + 1] * y[i + 1];
    s2 += x[i + 2] * y[i + 2];
    s3 += x[i + 3] * y[i + 3];
  }
  for (; i < n; ++i) s0 += x[i] * y[i];
  return (s0 + s1) + (s2 + s3);
}

// Below this size the recursion stops and plain loops finish the block.
constexpr i64 kLeaf = 64;

i64 potrfLeaf(double* a, i64 n, i64 lda) {
  for (i64 j = 0; j < n; ++j) {
    double* rj = a + j * lda;
    const double s = rj[j] - dot(rj, rj, j);
    if (!(s > 0.0)) return j;  // also NaN
    const double d = std::sqrt(s);
    rj[j] = d;
    for (i64 i = j + 1; i < n; ++i) {
      double* ri = a + i * lda;
      ri[j] = (ri[j] - dot(ri, rj, j)) / d;
    }
  }
  return -1;
}

// X[m×k] ← X·L⁻ᵀ (solves X·Lᵀ = B in place), L lower k×k.
void trsmRightLowerT(const double* l, i64 k, i64 ldl, double* x, i64 m, i64 ldx) {
  if (k <= kLeaf) {
    parallelRange(m, 16, [&](i64 r0, i64 r1) {
      for (i64 r = r0; r < r1; ++r) {
        double* xr = x + r * ldx;
        for (i64 j = 0; j < k; ++j) xr[j] = (xr[j] - dot(xr, l + j * ldl, j)) / l[j * ldl + j];
      }
    });
    return;
  }
  const i64 k1 = k / 2;
  trsmRightLowerT(l, k1, ldl, x, m, ldx);
  // X₂ −= X₁·L₂₁ᵀ
  dgemm(m, k - k1, k1, -1.0, x, ldx, 1, l + k1 * ldl, 1, ldl, 1.0, x + k1, ldx);
  trsmRightLowerT(l + k1 * ldl + k1, k - k1, ldl, x + k1, m, ldx);
}

// X[m×k] ← X·L⁻¹ (solves X·L = B in place), L lower k×k.
void trsmRightLower(const double* l, i64 k, i64 ldl, double* x, i64 m, i64 ldx) {
  if (k <= kLeaf) {
    parallelRange(m, 16, [&](i64 r0, i64 r1) {
      for (i64 r = r0; r < r1; ++r) {
        double* xr = x + r * ldx;
        for (i64 j = k - 1; j >= 0; --j) {  // b_q = Σ_{j ≥ q} x_j L_jq: peel x_j off the rows above
          const double* lj = l + j * ldl;
          const double xj = xr[j] / lj[j];
          xr[j] = xj;
          for (i64 q = 0; q < j; ++q) xr[q] -= xj * lj[q];
        }
      }
    });
    return;
  }
  const i64 k1 = k / 2;
  // X₂·L₂₂ = B₂; then X₁·L₁₁ = B₁ − X₂·L₂₁
  trsmRightLower(l + k1 * ldl + k1, k - k1, ldl, x + k1, m, ldx);
  dgemm(m, k1, k - k1, -1.0, x + k1, ldx, 1, l + k1 * ldl, ldl, 1, 1.0, x, ldx);
  trsmRightLower(l, k1, ldl, x, m, ldx);
}

i64 potrfRec(double* a, i64 n, i64 lda) {
  if (n <= kLeaf) return potrfLeaf(a, n, lda);
  const i64 n1 = n / 2, n2 = n - n1;
  i64 bad = potrfRec(a, n1, lda);
  if (bad >= 0) return bad;
  double* a21 = a + n1 * lda;
  trsmRightLowerT(a, n1, lda, a21, n2, lda);                  // L₂₁ = A₂₁·L₁₁⁻ᵀ
  dsyrkLower(n2, n1, -1.0, a21, lda, 1, 1.0, a21 + n1, lda);  // A₂₂ −= L₂₁·L₂₁ᵀ
  bad = potrfRec(a21 + n1, n2, lda);
  return bad >= 0 ? n1 + bad : -1;
}

}  // namespace

i64 dpotrf(double* a, i64 n, i64 lda) {
  const i64 bad = potrfRec(a, n, lda);
  if (bad < 0)
    for (i64 i = 0; i < n; ++i) std::fill(a + i * lda + i + 1, a + i * lda + n, 0.0);
  return bad;
}

void dtrsmRows(const double* l, i64 n, i64 ldl, double* b, i64 m, i64 ldb, bool transposed) {
  if (transposed) trsmRightLowerT(l, n, ldl, b, m, ldb);
  else trsmRightLower(l, n, ldl, b, m, ldb);
}

void dpotrsRows(const double* l, i64 n, i64 ldl, double* b, i64 m, i64 ldb) {
  trsmRightLowerT(l, n, ldl, b, m, ldb);  // Y = B·L⁻ᵀ
  trsmRightLower(l, n, ldl, b, m, ldb);   // X = Y·L⁻¹
}

}  // namespace ck::cpu
