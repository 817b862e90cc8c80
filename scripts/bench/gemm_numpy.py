"""Times numpy (OpenBLAS) float32 matmul for the kernels benchmark.

Usage: python3 gemm_numpy.py M N K [repeats] [--transB]
Prints one JSON line: {"m":..,"n":..,"k":..,"best_s":..,"gflops":..,"config":..}.
The caller unsets OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE for this process only.
"""
import json
import sys
import time

import numpy as np


def main() -> None:
    args = [v for v in sys.argv[1:] if not v.startswith("--")]
    trans_b = "--transB" in sys.argv
    m, n, k = (int(v) for v in args[0:3])
    reps = int(args[3]) if len(args) > 3 else 5
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    # transB: B is stored n×k (a Linear weight) and used transposed, as in x·Wᵀ.
    b = rng.standard_normal((n, k), dtype=np.float32).T if trans_b else rng.standard_normal((k, n), dtype=np.float32)
    c = np.empty((m, n), dtype=np.float32)
    np.matmul(a, b, out=c)  # warm-up: thread start, page faults
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        np.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - t)
    cfg = ""
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]  # numpy >= 1.25
    except Exception:  # noqa: BLE001 - older numpy: just leave it blank
        pass
    print(json.dumps({"m": m, "n": n, "k": k, "best_s": best, "gflops": 2.0 * m * n * k / best / 1e9, "config": cfg}))


if __name__ == "__main__":
    main()
