// Blocked SGEMM driver (Goto/BLIS loop order): B panels KC×NC and A blocks
// MC×KC are packed into the micro-kernel's layout, zero-padded at the edges,
// so the register-tiled micro-kernel always runs full tiles.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../ops.h"
#include "gemm.h"
#include "pool.h"
#include "scratch.h"

namespace ck::cpu {
using std::int64_t;

namespace {

using Scratch = AlignedScratch<float>;
thread_local Scratch tlsA, tlsB;

// CATECHISM_GEMM_BLOCKS="mc,kc,nc" overrides the cache blocking (for tuning
// on a new machine; values are rounded to the register tile).
GemmKernelInfo withBlocks(GemmKernelInfo k) {
  const char* env = std::getenv("CATECHISM_GEMM_BLOCKS");
  long mc = 0, kc = 0, nc = 0;
  if (env && std::sscanf(env, "%ld,%ld,%ld", &mc, &kc, &nc) == 3 && mc > 0 && kc > 0 && nc > 0) {
    k.mc = int((mc + k.mr - 1) / k.mr * k.mr);
    k.kc = int(kc);
    k.nc = int((nc + k.nr - 1) / k.nr * k.nr);
  }
  return k;
}

const GemmKernelInfo& kernelInfo(int64_t n) {
  static const GemmKernelInfo k512 = withBlocks(gemmKernelAvx512());
  static const GemmKernelInfo k512n = withBlocks(gemmKernelAvx512Narrow());
  static const GemmKernelInfo k2 = withBlocks(gemmKernelAvx2());
  static const GemmKernelInfo k1 = withBlocks(gemmKernelScalar());
  switch (simd()) {
    case Simd::Avx512: return n >= 96 ? k512 : k512n;  // narrow C: less padding waste
    case Simd::Avx2: return k2;
    default: return k1;
  }
}

// op(A)[i][p] for rows [i0, i0+mc), k-range [p0, p0+kc) into MR-row slivers.
void packA(const GemmParams& g, const float* a, int64_t i0, int64_t mc, int64_t p0, int64_t kc, int mr,
           float* out) {
  for (int64_t is = 0; is < mc; is += mr) {
    int rows = int(std::min<int64_t>(mr, mc - is));
    float* dst = out + is * kc;
    if (!g.transA) {
      // Read `rows` row streams in step so the packed panel is written sequentially.
      const float* src[64];
      for (int r = 0; r < rows; ++r) src[r] = a + (i0 + is + r) * g.lda + p0;
      if (rows == mr) {
        for (int64_t p = 0; p < kc; ++p)
          for (int r = 0; r < mr; ++r) dst[p * mr + r] = src[r][p];
      } else {
        for (int64_t p = 0; p < kc; ++p) {
          int r = 0;
          for (; r < rows; ++r) dst[p * mr + r] = src[r][p];
          for (; r < mr; ++r) dst[p * mr + r] = 0.f;
        }
      }
    } else {
      for (int64_t p = 0; p < kc; ++p) {
        const float* src = a + (p0 + p) * g.lda + i0 + is;
        float* d = dst + p * mr;
        int r = 0;
        for (; r < rows; ++r) d[r] = src[r];
        for (; r < mr; ++r) d[r] = 0.f;
      }
    }
  }
}

// op(B)[p][j] for k-range [p0, p0+kc), cols [j0, j0+nc) into NR-column slivers.
void packB(const GemmParams& g, const float* b, int64_t p0, int64_t kc, int64_t j0, int64_t nc, int nr,
           float* out) {
  for (int64_t js = 0; js < nc; js += nr) {
    int cols = int(std::min<int64_t>(nr, nc - js));
    float* dst = out + js * kc;
    if (!g.transB) {
      for (int64_t p = 0; p < kc; ++p) {
        const float* src = b + (p0 + p) * g.ldb + j0 + js;
        float* d = dst + p * nr;
        if (cols == nr) {
          std::memcpy(d, src, sizeof(float) * nr);
        } else {
          int c = 0;
          for (; c < cols; ++c) d[c] = src[c];
          for (; c < nr; ++c) d[c] = 0.f;
        }
      }
    } else {
      for (int c = 0; c < cols; ++c) {
        const float* src = b + (j0 + js + c) * g.ldb + p0;
        for (int64_t p = 0; p < kc; ++p) dst[p * nr + c] = src[p];
      }
      for (int c = cols; c < nr; ++c)
        for (int64_t p = 0; p < kc; ++p) dst[p * nr + c] = 0.f;
    }
  }
}

// C block rows [i0,i1) × cols [j0,j1) of one batch item.
void gemmBlock(const GemmParams& g, const GemmKernelInfo& K, const float* a, const float* b, float* c,
               int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  const int mr = K.mr, nr = K.nr;
  alignas(64) float tmp[64 * 64];
  const int64_t kcMax = std::min<int64_t>(K.kc, g.k);
  const int64_t ncMax = std::min<int64_t>(K.nc, ((j1 - j0 + nr - 1) / nr) * nr);
  const int64_t mcMax = std::min<int64_t>(K.mc, ((i1 - i0 + mr - 1) / mr) * mr);
  float* Bp = tlsB.get(size_t(kcMax) * size_t(ncMax));
  float* Ap = tlsA.get(size_t(kcMax) * size_t(mcMax));
  if (!Ap || !Bp) std::abort();  // out of memory: nothing sane to return here
  for (int64_t jc = j0; jc < j1; jc += K.nc) {
    int64_t nc = std::min<int64_t>(K.nc, j1 - jc);
    for (int64_t pc = 0; pc < g.k; pc += K.kc) {
      int64_t kc = std::min<int64_t>(K.kc, g.k - pc);
      float beta = pc == 0 ? g.beta : 1.f;
      packB(g, b, pc, kc, jc, nc, nr, Bp);
      for (int64_t ic = i0; ic < i1; ic += K.mc) {
        int64_t mc = std::min<int64_t>(K.mc, i1 - ic);
        packA(g, a, ic, mc, pc, kc, mr, Ap);
        for (int64_t jr = 0; jr < nc; jr += nr) {
          int cols = int(std::min<int64_t>(nr, nc - jr));
          const float* bp = Bp + jr * kc;
          for (int64_t ir = 0; ir < mc; ir += mr) {
            int rows = int(std::min<int64_t>(mr, mc - ir));
            float* cp = c + (ic + ir) * g.ldc + jc + jr;
            const float* ap = Ap + ir * kc;
            if (rows == mr && cols == nr) {
              K.kernel(kc, ap, bp, cp, g.ldc, g.alpha, beta);
            } else {
              K.kernel(kc, ap, bp, tmp, nr, g.alpha, 0.f);
              for (int r = 0; r < rows; ++r) {
                float* cr = cp + r * g.ldc;
                const float* t = tmp + r * nr;
                if (beta == 0.f)
                  for (int j = 0; j < cols; ++j) cr[j] = t[j];
                else
                  for (int j = 0; j < cols; ++j) cr[j] = t[j] + beta * cr[j];
              }
            }
          }
        }
      }
    }
  }
}

// Few rows of C (decode steps, m <= kSmallM): packing B would cost as much as
// the product, so stream B directly. transB: dot products of A rows with B
// rows; otherwise: C rows += a_ip · B[p, j0:j1] (axpy over B rows).
constexpr int64_t kSmallM = 8;

void gemmSmallM(const GemmParams& g, const float* a, const float* b, float* c, int64_t j0, int64_t j1) {
  const int64_t m = g.m, k = g.k;
  float rowsA[kSmallM * 1024];
  std::vector<float> heapA;
  float* A = rowsA;
  if (m * k > int64_t(sizeof rowsA / sizeof(float))) {
    heapA.resize(size_t(m * k));
    A = heapA.data();
  }
  for (int64_t i = 0; i < m; ++i)  // contiguous copy of op(A)'s rows
    for (int64_t p = 0; p < k; ++p) A[i * k + p] = g.transA ? a[p * g.lda + i] : a[i * g.lda + p];
  auto store = [&](int64_t i, int64_t j, float v) {
    float* cij = c + i * g.ldc + j;
    *cij = g.beta == 0.f ? g.alpha * v : g.alpha * v + g.beta * *cij;
  };
  if (g.transB) {
    for (int64_t j = j0; j < j1; ++j) {
      const float* bj = b + j * g.ldb;
      for (int64_t i = 0; i < m; ++i) {
        const float* ai = A + i * k;
        float lane[16] = {};
        int64_t p = 0;
        for (; p + 16 <= k; p += 16)
          for (int l = 0; l < 16; ++l) lane[l] += ai[p + l] * bj[p + l];
        float s = 0.f;
        for (int l = 0; l < 16; ++l) s += lane[l];
        for (; p < k; ++p) s += ai[p] * bj[p];
        store(i, j, s);
      }
    }
    return;
  }
  if (simd() == Simd::Avx512) {
    gemmFewRows(m, j0, j1, k, A, b, g.ldb, c, g.ldc, g.alpha, g.beta);
    return;
  }
  // Whole rows of B per step: long sequential streams (B is read exactly once).
  const int64_t w = j1 - j0;
  std::vector<float> acc(size_t(m * w), 0.f);
  for (int64_t p = 0; p < k; ++p) {
    const float* bp = b + p * g.ldb + j0;
    for (int64_t i = 0; i < m; ++i) {
      float av = A[i * k + p];
      float* ac = acc.data() + i * w;
      for (int64_t j = 0; j < w; ++j) ac[j] += av * bp[j];
    }
  }
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < w; ++j) store(i, j0 + j, acc[size_t(i * w + j)]);
}

// Narrow C (n <= kSkinnyN) with A not transposed, e.g. x·Aᵀ of a rank-8 LoRA:
// the packed path would pad the 8 columns to a 32-wide tile and pack all of
// A (the big operand) for very little arithmetic. Dot products straight from
// A's rows against op(B)ᵀ (n×k, small; transposed into scratch if needed).
constexpr int64_t kSkinnyN = 16;
thread_local Scratch tlsBt;

void gemmSkinnyN(const GemmParams& g, const float* a, const float* b, float* c, int64_t i0, int64_t i1) {
  const float* bt = b;
  int64_t ldbt = g.ldb;
  if (!g.transB) {
    float* t = tlsBt.get(size_t(g.n * g.k));
    if (!t) std::abort();
    for (int64_t p = 0; p < g.k; ++p)
      for (int64_t j = 0; j < g.n; ++j) t[j * g.k + p] = b[p * g.ldb + j];
    bt = t;
    ldbt = g.k;
  }
  gemmDotRows(i0, i1, g.n, g.k, a, g.lda, bt, ldbt, c, g.ldc, g.alpha, g.beta);
}

// Narrow C with A transposed (gᵀ·h, the gradient of a LoRA factor): rank-1
// updates along A's contiguous rows; op(B) (k×n, small) as contiguous rows.
void gemmSkinnyNT(const GemmParams& g, const float* a, const float* b, float* c, int64_t i0, int64_t i1) {
  const float* bk = b;
  int64_t ldbk = g.ldb;
  if (g.transB) {
    float* t = tlsBt.get(size_t(g.n * g.k));
    if (!t) std::abort();
    for (int64_t j = 0; j < g.n; ++j)
      for (int64_t p = 0; p < g.k; ++p) t[p * g.n + j] = b[j * g.ldb + p];
    bk = t;
    ldbk = g.n;
  }
  gemmOuterRows(i0, i1, g.n, g.k, a, g.lda, bk, ldbk, c, g.ldc, g.alpha, g.beta);
}

void scaleAndBias(const GemmParams& g, float* c, int64_t i0, int64_t i1, int64_t j0, int64_t j1, bool scaleC) {
  for (int64_t i = i0; i < i1; ++i) {
    float* cr = c + i * g.ldc;
    if (scaleC) {
      if (g.beta == 0.f)
        for (int64_t j = j0; j < j1; ++j) cr[j] = 0.f;
      else if (g.beta != 1.f)
        for (int64_t j = j0; j < j1; ++j) cr[j] *= g.beta;
    }
    if (g.bias)
      for (int64_t j = j0; j < j1; ++j) cr[j] += g.bias[j];
  }
}

}  // namespace

void gemm(const GemmParams& g) {
  if (g.m <= 0 || g.n <= 0 || g.batch <= 0) return;
  const GemmKernelInfo& K = kernelInfo(g.n);
  const bool noProduct = g.k <= 0 || g.alpha == 0.f;
  const int T = poolThreads();
  const double flops = 2.0 * double(g.m) * double(g.n) * double(std::max<int64_t>(g.k, 1)) * double(g.batch);
  // Tasks: whole batch items when they spread evenly over the threads,
  // otherwise each item is cut into T slices along its larger side.
  const bool smallM = g.m <= kSmallM && !noProduct;
  const bool narrowC = !smallM && !noProduct && g.n <= kSkinnyN && simd() == Simd::Avx512;
  const bool skinny = narrowC && !g.transA && g.k >= 16;
  const bool skinnyT = narrowC && g.transA;
  int64_t parts = 1;
  bool splitN = !skinny && !skinnyT && (smallM || g.n >= g.m);
  if (T > 1 && flops > 4e5 && g.batch % T != 0) {
    int64_t tiles = splitN ? (g.n + K.nr - 1) / K.nr : (g.m + K.mr - 1) / K.mr;
    parts = std::min<int64_t>(T, tiles);
  }
  auto run = [&](int64_t task, int) {
    int64_t item = task / parts, part = task % parts;
    const float* a = g.a + item * g.strideA;
    const float* b = g.b + item * g.strideB;
    float* c = g.c + item * g.strideC;
    int64_t i0 = 0, i1 = g.m, j0 = 0, j1 = g.n;
    if (parts > 1) {
      if (splitN) {
        int64_t tiles = (g.n + K.nr - 1) / K.nr;
        j0 = std::min<int64_t>(g.n, tiles * part / parts * K.nr);
        j1 = std::min<int64_t>(g.n, tiles * (part + 1) / parts * K.nr);
      } else {
        int64_t tiles = (g.m + K.mr - 1) / K.mr;
        i0 = std::min<int64_t>(g.m, tiles * part / parts * K.mr);
        i1 = std::min<int64_t>(g.m, tiles * (part + 1) / parts * K.mr);
      }
    }
    if (i0 >= i1 || j0 >= j1) return;
    if (noProduct) {
      scaleAndBias(g, c, i0, i1, j0, j1, true);
    } else if (smallM) {
      gemmSmallM(g, a, b, c, j0, j1);
      if (g.bias) scaleAndBias(g, c, i0, i1, j0, j1, false);
    } else if (skinny) {
      gemmSkinnyN(g, a, b, c, i0, i1);
      if (g.bias) scaleAndBias(g, c, i0, i1, j0, j1, false);
    } else if (skinnyT) {
      gemmSkinnyNT(g, a, b, c, i0, i1);
      if (g.bias) scaleAndBias(g, c, i0, i1, j0, j1, false);
    } else {
      gemmBlock(g, K, a, b, c, i0, i1, j0, j1);
      if (g.bias) scaleAndBias(g, c, i0, i1, j0, j1, false);
    }
  };
  int64_t tasks = g.batch * parts;
  if (T <= 1 || flops <= 4e5 || tasks == 1) {
    for (int64_t t = 0; t < tasks; ++t) run(t, 0);
  } else {
    parallelFor(tasks, run);
  }
}

}  // namespace ck::cpu
