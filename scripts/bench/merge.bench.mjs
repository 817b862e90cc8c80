#!/usr/bin/env node
// Merge benchmark (issue 10): `svd` consolidation of many LoRA adapters on
// one GPT-2-small MLP module (c_proj as Linear: 768 out × 3072 in).
//
//   ours       adapter-merge's svd: stack the factors (ΔW = B_cat·A_cat), QR of
//              both, one-sided Jacobi SVD of the small r×r core, float64; never
//              forms the 768×3072 ΔW
//   reference  what an ML engineer would write: numpy (OpenBLAS) sums the
//              dense ΔW = Σ Bᵢ·Aᵢ and calls np.linalg.svd(ΔW, full_matrices=False),
//              in float64 (same precision as ours) and in float32
//
// Same adapters for both (written to a temp file). Also reported: the largest
// relative difference between our kept singular values and numpy's float64
// ones, so a fast wrong answer cannot hide. Ratio = ours / reference time
// (lower is better for us). Env: BENCH_REPS (default 3).
// Prints a Markdown table on stdout; progress on stderr.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const coreDist = join(here, '..', '..', 'tools', 'core', 'dist');
// Until @catechism/core exports ./merge, import the built files by path.
const { mergeSvd } = await import(pathToFileURL(join(coreDist, 'merge', 'index.js')).href);
const { createLora } = await import(pathToFileURL(join(coreDist, 'models', 'index.js')).href);

const REPS = Number(process.env.BENCH_REPS ?? 3);
const OUT = 768, IN = 3072;
const tmp = mkdtempSync(join(tmpdir(), 'cat-bench-merge-'));
const log = (m) => process.stderr.write(`merge.bench: ${m}\n`);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const ms = (t0) => Number(process.hrtime.bigint() - t0) / 1e6;

const PY = `
import sys, time, json
import numpy as np
n, r, out, inn, k, reps = (int(x) for x in sys.argv[2:8])
raw = np.fromfile(sys.argv[1], dtype=np.float32)
A = raw[: n * r * inn].reshape(n, r, inn)
B = raw[n * r * inn :].reshape(n, out, r)
res = {}
for dt in ("float64", "float32"):
    a, b = A.astype(dt), B.astype(dt)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        dW = np.zeros((out, inn), dtype=dt)
        for i in range(n):
            dW += b[i] @ a[i]
        U, S, Vt = np.linalg.svd(dW, full_matrices=False)
        Bk = U[:, :k] * np.sqrt(S[:k]); Ak = np.sqrt(S[:k])[:, None] * Vt[:k]
        times.append((time.perf_counter() - t0) * 1e3)
    res[dt] = {"ms": sorted(times)[len(times) // 2], "s": S[:k].astype(float).tolist(), "energy": float((S[:k] ** 2).sum() / (S ** 2).sum())}
print(json.dumps(res))
`;

const rows = [];
try {
  for (const [n, r, k] of [[32, 8, 8], [32, 8, 32], [8, 16, 16]]) {
    log(`${n} adapters of rank ${r} → rank ${k}`);
    const adapters = [];
    for (let i = 0; i < n; i++) adapters.push(createLora(`a${i}`, [['m', IN, OUT]], { r, alpha: r, seed: 100 + i, initBStd: 0.02 }));
    const buf = new Float32Array(n * r * IN + n * OUT * r);
    adapters.forEach((a, i) => buf.set(a.modules.get('m').A.data, i * r * IN));
    adapters.forEach((a, i) => buf.set(a.modules.get('m').B.data, n * r * IN + i * OUT * r));
    const file = join(tmp, `ad-${n}-${r}.f32`);
    writeFileSync(file, Buffer.from(buf.buffer));

    const times = [];
    let res;
    for (let rep = 0; rep < REPS; rep++) {
      const t0 = process.hrtime.bigint();
      res = mergeSvd(adapters.map((adapter) => ({ adapter })), k);
      times.push(ms(t0));
    }
    // our singular values: from the merged factors' norms (B = U√σ, so ‖B col j‖² = σⱼ)
    const Bm = res.adapter.modules.get('m').B.data;
    const ours = [];
    for (let j = 0; j < k; j++) {
      let s = 0;
      for (let o = 0; o < OUT; o++) s += Bm[o * k + j] ** 2;
      ours.push(s);
    }
    const py = spawnSync('env', ['-u', 'OPENBLAS_CORETYPE', '-u', 'OPENBLAS_L2_SIZE', 'python3', '-c', PY, file, String(n), String(r), String(OUT), String(IN), String(k), String(REPS)], { encoding: 'utf8', maxBuffer: 1 << 26 });
    if (py.status !== 0) throw new Error(`numpy reference failed: ${py.stderr}`);
    const ref = JSON.parse(py.stdout);
    const relErr = Math.max(...ref.float64.s.map((s, j) => Math.abs(ours[j] - s) / ref.float64.s[0]));
    const energyOurs = res.energy.m;
    const oursMs = median(times);
    rows.push([
      `svd: ${n} × rank ${r} → rank ${k}, ${OUT}×${IN}`,
      oursMs.toFixed(0),
      ref.float64.ms.toFixed(0),
      (oursMs / ref.float64.ms).toFixed(2),
      ref.float32.ms.toFixed(0),
      (oursMs / ref.float32.ms).toFixed(2),
      `${(100 * energyOurs).toFixed(3)}% / ${(100 * ref.float64.energy).toFixed(3)}%`,
      relErr.toExponential(1),
    ]);
  }
} finally {
  rmSync(tmp, { recursive: true, force: true });
}

console.log('| merge | ours ms | numpy f64 ms | ratio | numpy f32 ms | ratio | energy kept (ours / numpy) | max σ rel. diff |');
console.log('|---|---:|---:|---:|---:|---:|---:|---:|');
for (const r of rows) console.log(`| ${r.join(' | ')} |`);
console.log('');
console.log(`ours: factored SVD (QR + Jacobi on the Σrᵢ × Σrᵢ core, float64, single-threaded JS); numpy: dense ΔW sum + np.linalg.svd (OpenBLAS/LAPACK). Median of ${REPS}. Ratio = ours / numpy (lower is better).`);
