#!/usr/bin/env python3
"""Golden outputs for MEMIT's and AlphaEdit's per-layer update (PyTorch,
float64), in the papers' own column-vector form, written independently of
tools/core/src/edit/memit.ts:

  MEMIT (Meng et al. 2023, eq. 14):  Δ = R Kᵀ (λ C + K Kᵀ)⁻¹
  AlphaEdit (Fang et al. 2025, eq. 14): Δ P = R Kᵀ P (Kp Kpᵀ P + K Kᵀ P + α I)⁻¹
     with P = Û Ûᵀ, Û the eigenvectors of C with eigenvalue < τ · tr(C)/D
     (torch.linalg.eigh), solved as a general (non-symmetric) system.

Keys are columns here (K: D×N, R: H×N); the TypeScript side keeps them as
rows. Inputs are deterministic formulas (no RNG to share across languages),
repeated in test/memit.test.ts. Run: /usr/bin/python3 scripts/golden/memit_golden.py
(Debian's python3-torch); writes scripts/golden/memit_golden.json.
"""
import json
import math
import os
import torch

torch.set_default_dtype(torch.float64)
D, N, H, NP, S = 12, 4, 5, 3, 40
LAM, ALPHA_REL, TAU = 2.5, 0.01, 0.5


def f(i, j, a, b, c):
    # not separable in i and j, so the matrices have full rank
    return math.sin(a * i + b * j + 0.37 * i * j + c) + 0.5 * math.cos(0.21 * i * i + b * j * j * 0.1 + c)


X = torch.tensor([[f(i, j, 1.3, 0.7, 0.1) + (0.3 * f(i, 0, 0.5, 0, 2.0) if j < 3 else 0.0) for j in range(D)] for i in range(S)])
C = X.T @ X / S  # E[k kᵀ] of S statistics keys
K = torch.tensor([[f(i, j, 0.9, 1.7, 0.4) for i in range(N)] for j in range(D)])  # D×N
R = torch.tensor([[f(i, j, 2.1, 0.3, 1.1) for i in range(N)] for j in range(H)])  # H×N
Kp = torch.tensor([[f(i, j, 1.1, 2.3, 0.8) for i in range(NP)] for j in range(D)])  # D×NP

memit = R @ K.T @ torch.linalg.inv(LAM * C + K @ K.T)  # H×D

vals, vecs = torch.linalg.eigh(C)
mean = torch.trace(C) / D
U = vecs[:, vals < TAU * mean]
P = U @ U.T
alpha = ALPHA_REL * mean
# the paper's solve, transposed to a linear system: (P(KpKpᵀ + KKᵀ) + αI)ᵀ... written as Δ M = R Kᵀ P
M = Kp @ Kp.T @ P + K @ K.T @ P + alpha * torch.eye(D)
alpha_delta = torch.linalg.solve(M.T, (R @ K.T @ P).T).T  # H×D

out = {
    'D': D, 'N': N, 'H': H, 'NP': NP, 'S': S, 'lambda': LAM, 'alpha_rel': ALPHA_REL, 'tau': TAU,
    'null_dim': int(U.shape[1]),
    'memit': memit.flatten().tolist(),
    'alphaedit': alpha_delta.flatten().tolist(),
    'torch': torch.__version__,
}
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'memit_golden.json'), 'w') as fh:
    json.dump(out, fh)
print(f"null space {U.shape[1]} of {D}; |memit| {memit.norm():.4f} |alphaedit| {alpha_delta.norm():.4f}")
