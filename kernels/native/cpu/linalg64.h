// Float64 dense linear algebra on the host: the blocked DGEMM, SYRK, Cholesky
// factorisation and triangular solves behind the least-squares updates of
// ROME, MEMIT and AlphaEdit (tools/core/src/util/linalg.ts). Row-major.
//
// Not in the op table (scripts/ops.mjs): the key statistics these solve
// against live in host memory as float64, and only the CPU runs them, so
// there is no backend choice to make. The N-API glue is in addon.cc.
#pragma once
#include "../ops.h"

namespace ck::cpu {

// C[m×n] (row-major, ldc) = alpha · A·B + beta · C (beta == 0: C not read).
// A[i][p] = a[i·rsa + p·csa], B[p][j] = b[p·rsb + j·csb]: any strides, so a
// transposed operand is the same call with its strides swapped.
void dgemm(i64 m, i64 n, i64 k, double alpha, const double* a, i64 rsa, i64 csa, const double* b, i64 rsb,
           i64 csb, double beta, double* c, i64 ldc);

// The lower triangle of C[n×n] = alpha · A·Aᵀ + beta · C, A[i][p] =
// a[i·rsa + p·csa] (n×k). The strict upper triangle of C is not touched.
void dsyrkLower(i64 n, i64 k, double alpha, const double* a, i64 rsa, i64 csa, double beta, double* c, i64 ldc);

// In-place lower Cholesky factor of the symmetric positive definite n×n
// matrix in a (lda): reads the lower triangle, writes L there (A = L·Lᵀ)
// and zeros the strict upper triangle. Returns -1, or the first row whose
// pivot was not positive (then a holds a partial factor).
i64 dpotrf(double* a, i64 n, i64 lda);

// Every row b of B (m rows of n, ldb) replaced by the x with x·Lᵀ = b
// (transposed) or x·L = b: B ← B·L⁻ᵀ or B·L⁻¹, L lower n×n (ldl).
void dtrsmRows(const double* l, i64 n, i64 ldl, double* b, i64 m, i64 ldb, bool transposed);

// Every row b of B (m rows of n, ldb) replaced by the x with (L·Lᵀ)·x = b,
// L the lower factor dpotrf wrote (n×n, ldl): B ← B·L⁻ᵀ·L⁻¹.
void dpotrsRows(const double* l, i64 n, i64 ldl, double* b, i64 m, i64 ldb);

}  // namespace ck::cpu
