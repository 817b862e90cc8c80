// SGEMM micro-kernels, one set per ISA (selected at run time).
#pragma once
#include "../ops.h"

namespace ck::cpu {

// C[MR×NR] (row-major, ldc) = alpha·Σ_p A[p][0..MR)·B[p][0..NR) + beta·C
// (beta == 0: C is not read). A and B are packed panels: kc steps of MR
// (resp. NR) contiguous floats, 64-byte aligned.
using MicroKernel = void (*)(std::int64_t kc, const float* A, const float* B, float* C, std::int64_t ldc,
                             float alpha, float beta);

struct GemmKernelInfo {
  MicroKernel kernel;
  int mr, nr;           // register tile
  int mc, kc, nc;       // cache blocks (mc % mr == 0, nc % nr == 0)
};

const GemmKernelInfo& gemmKernelScalar();
const GemmKernelInfo& gemmKernelAvx2();
const GemmKernelInfo& gemmKernelAvx512();        // wide tile (large n)
const GemmKernelInfo& gemmKernelAvx512Narrow();  // 32-column tile for narrow C

// AVX-512 only. C rows [i0, i1) × n columns (n small): C[i][j] = alpha ·
// dot(A row i, Bt row j) over k + beta · C[i][j] (beta == 0: C not read).
// Rows of A (lda) and of Bt (ldbt) are contiguous in k.
void gemmDotRows(std::int64_t i0, std::int64_t i1, std::int64_t n, std::int64_t k, const float* a, std::int64_t lda,
                 const float* bt, std::int64_t ldbt, float* c, std::int64_t ldc, float alpha, float beta);
// AVX-512 only. C rows [i0, i1) × n columns (n <= 16) = alpha · Aᵀ·B + beta · C,
// A stored k×m (lda), B k×n (ldb): the weight gradient gᵀ·h of a LoRA factor.
void gemmOuterRows(std::int64_t i0, std::int64_t i1, std::int64_t n, std::int64_t k, const float* a, std::int64_t lda,
                   const float* b, std::int64_t ldb, float* c, std::int64_t ldc, float alpha, float beta);
// AVX-512 only. m <= 8 rows of C, columns [j0, j1) = alpha · A·B + beta · C, A
// contiguous m×k, B k×n (ldb).
void gemmFewRows(std::int64_t m, std::int64_t j0, std::int64_t j1, std::int64_t k, const float* A, const float* b,
                 std::int64_t ldb, float* c, std::int64_t ldc, float alpha, float beta);

}  // namespace ck::cpu
