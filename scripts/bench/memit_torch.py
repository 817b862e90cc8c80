#!/usr/bin/env python3
"""MEMIT's per-layer update in PyTorch (float64, the same algorithm as
tools/core/src/edit/memit.ts memitSolve): ΔW = R Kᵀ (λC + K Kᵀ)⁻¹ for N edits
at one layer, statistics C given (cached), repeated over `layers` layers.
Inputs are the same deterministic formulas as scripts/bench/memit.bench.mjs.
Prints one JSON line: {"seconds": per run, "hidden", "inner", "edits", "layers"}.

  /usr/bin/python3 scripts/bench/memit_torch.py [--hidden 768] [--inner 3072] [--edits 100] [--layers 5] [--reps 3]
"""
import argparse
import json
import math
import time
import torch

p = argparse.ArgumentParser()
p.add_argument('--hidden', type=int, default=768)
p.add_argument('--inner', type=int, default=3072)
p.add_argument('--edits', type=int, default=100)
p.add_argument('--layers', type=int, default=5)
p.add_argument('--reps', type=int, default=3)
a = p.parse_args()
torch.set_default_dtype(torch.float64)
H, D, N = a.hidden, a.inner, a.edits
i = torch.arange(D * 2, dtype=torch.float64).reshape(2 * D, 1)
j = torch.arange(D, dtype=torch.float64).reshape(1, D)
X = torch.sin(0.37 * i + 1.3 * j + 0.011 * i * j) + 0.5 * torch.cos(0.21 * i * i * 1e-3 + 0.7 * j)
C = X.T @ X / (2 * D) + 0.1 * torch.eye(D)  # full rank, as a real key covariance
K = torch.sin(0.9 * torch.arange(N, dtype=torch.float64).reshape(N, 1) + 1.7 * j + 0.013 * torch.arange(N).reshape(N, 1) * j)  # N×D rows
R = torch.sin(2.1 * torch.arange(N, dtype=torch.float64).reshape(N, 1) + 0.3 * torch.arange(H).reshape(1, H))  # N×H rows
lam = 10.0


def run():
    out = []
    for _ in range(a.layers):
        M = lam * C + K.T @ K
        L = torch.linalg.cholesky(M)
        A = torch.cholesky_solve(K.T, L).T  # N×D
        out.append((R.T, A))
    return out


run()
ts = []
for _ in range(a.reps):
    t0 = time.perf_counter()
    run()
    ts.append(time.perf_counter() - t0)
print(json.dumps({'impl': 'torch', 'torch': torch.__version__, 'threads': torch.get_num_threads(), 'seconds': min(ts), 'hidden': H, 'inner': D, 'edits': N, 'layers': a.layers}))
