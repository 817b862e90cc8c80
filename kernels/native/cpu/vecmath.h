// Vectorised transcendental kernels (exp and the sigmoid family) for the
// AVX-512 and AVX2 paths. Each returns false when the current ISA level has no
// vector version, and the caller then runs its scalar loop.
#pragma once
#include "../ops.h"

namespace ck::cpu::vec {

// out[i] = exp(x[i] - shift). Relative error within a few ulp of expf.
bool expShift(const float* x, float shift, float* out, i64 n);
// Forward of sigmoid / silu / gelu (tanh form, via gelu(x) = x·sigmoid(2u)).
bool sigmoidFamily(Unary op, const float* x, float* out, i64 n);
// gx (+)= f'(x)·gy for sigmoid / silu / gelu.
bool sigmoidFamilyBackward(Unary op, const float* x, const float* gy, float* gx, i64 n, bool acc);

// Σ x[i] in double with independent lanes (vectorisable, no serial chain).
double sum(const float* x, i64 n);
// Σ a[i]·b[i] in double, lanes as in sum().
double dot(const float* a, const float* b, i64 n);
// max x[i] (NaN-propagating); -inf for n == 0.
float max(const float* x, i64 n);

}  // namespace ck::cpu::vec
