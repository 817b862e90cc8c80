#!/usr/bin/env python3
"""The LEACE closed form in numpy float64 on leace.bench.mjs's inputs; prints the fit's seconds.
Usage: python3 scripts/bench/leace_numpy.py N D K"""
import math
import sys
import time
import numpy as np

n, d, k = (int(x) for x in sys.argv[1:4])
i = np.arange(n)[:, None]
j = np.arange(d)[None, :]
X = np.sin(0.7 * i + 1.3 * j + 0.011 * i * j) + 0.5 * np.cos((i % k) + 0.2 * j)
labels = np.arange(n) % k
t0 = time.perf_counter()
Z = np.eye(k)[labels]
mu = X.mean(0)
Xc = X - mu
S = Xc.T @ Xc / n
Sxz = Xc.T @ (Z - Z.mean(0)) / n
lam, V = np.linalg.eigh(S)
keep = lam > 1e-10 * lam.max()
W = (V[:, keep] / np.sqrt(lam[keep])) @ V[:, keep].T
Wp = (V[:, keep] * np.sqrt(lam[keep])) @ V[:, keep].T
U, s, _ = np.linalg.svd(W @ Sxz, full_matrices=False)
U = U[:, s > 1e-10 * s.max()]
B, A = Wp @ U, U.T @ W
print(f"{time.perf_counter() - t0:.3f}")
