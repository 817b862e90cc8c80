#!/usr/bin/env python3
"""Golden outputs for LEACE concept erasure (Belrose et al. 2023, Theorem 3.1),
numpy float64, written independently of tools/core/src/edit/leace.ts:

  W = (Σ_XX^{1/2})⁺,  P* = W⁺ P_{W Σ_XZ} W,  r(x) = x − P*(x − μ)

with P_{M} the orthogonal projection onto col(M) (from numpy's SVD of M).
Inputs are deterministic formulas (no RNG to share across languages),
repeated in tools/core/test/edit-leace.test.ts; one column is the sum of two
others, so Σ_XX is singular and the pseudo-inverse is exercised.
Run: python3 scripts/golden/leace_golden.py  (writes leace_golden.json beside it).
"""
import json
import math
import os
import numpy as np

N, D, K = 60, 8, 3
TOL = 1e-10


def x(i, j):
    c = i % K
    return math.sin(0.7 * i + 1.3 * j + 0.11 * i * j) + (0.8 * math.cos(c + 2.0 * j) if j < 5 else 0.0)


X = np.array([[x(i, j) for j in range(D)] for i in range(N)], dtype=np.float64)
X[:, D - 1] = X[:, 0] + X[:, 1]
labels = np.array([i % K for i in range(N)])
Z = np.eye(K)[labels]

mu = X.mean(0)
Xc = X - mu
S = Xc.T @ Xc / N
Sxz = Xc.T @ (Z - Z.mean(0)) / N
lam, V = np.linalg.eigh(S)
keep = lam > TOL * lam.max()
W = (V[:, keep] / np.sqrt(lam[keep])) @ V[:, keep].T
Wp = (V[:, keep] * np.sqrt(lam[keep])) @ V[:, keep].T
M = W @ Sxz
U, s, _ = np.linalg.svd(M, full_matrices=False)
U = U[:, s > TOL * s.max()]
P = Wp @ U @ U.T @ W
erased = X - (X - mu) @ P.T

# the guarantee: every class mean of the erased data equals the overall mean
gap = max(np.linalg.norm(erased[labels == c].mean(0) - erased.mean(0)) for c in range(K))
assert gap < 1e-10, gap

out = {
    "n": N, "d": D, "k": K, "rank": int(U.shape[1]),
    "P": P.ravel().tolist(),
    "erased_first_rows": erased[:5].ravel().tolist(),
    "class_mean_gap_after": gap,
}
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "leace_golden.json"), "w") as f:
    json.dump(out, f)
print(f"rank {out['rank']}, class-mean gap after {gap:.2e}")
