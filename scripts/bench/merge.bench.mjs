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
const { mergeSvd, mergeTies } = await import(pathToFileURL(join(coreDist, 'merge', 'index.js')).href);
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

const PY_TIES = `
import sys, time, json
import numpy as np
n, r, out, inn, k, reps = (int(x) for x in sys.argv[2:8]); density = float(sys.argv[8])
raw = np.fromfile(sys.argv[1], dtype=np.float32)
A = raw[: n * r * inn].reshape(n, r, inn).astype(np.float64)
B = raw[n * r * inn :].reshape(n, out, r).astype(np.float64)
times = []
for _ in range(reps):
    t0 = time.perf_counter()
    keep = int(np.ceil(density * out * inn))
    T = np.empty((n, out, inn))
    for i in range(n):
        d = B[i] @ A[i]
        thr = np.partition(np.abs(d).ravel(), d.size - keep)[d.size - keep]
        T[i] = np.where(np.abs(d) >= thr, d, 0.0)
    sign = np.sign(T.sum(axis=0))
    agree = (np.sign(T) == sign) & (T != 0)
    cnt = agree.sum(axis=0)
    merged = np.where(cnt > 0, (T * agree).sum(axis=0) / np.maximum(cnt, 1), 0.0)
    U, S, Vt = np.linalg.svd(merged, full_matrices=False)
    times.append((time.perf_counter() - t0) * 1e3)
print(json.dumps({"ms": sorted(times)[len(times) // 2], "s": S[:k].tolist(), "energy": float((S[:k] ** 2).sum() / (S ** 2).sum())}))
`;

function writeAdapters(adapters, n, r) {
  const buf = new Float32Array(n * r * IN + n * OUT * r);
  adapters.forEach((a, i) => buf.set(a.modules.get('m').A.data, i * r * IN));
  adapters.forEach((a, i) => buf.set(a.modules.get('m').B.data, n * r * IN + i * OUT * r));
  const file = join(tmp, `ad-${n}-${r}.f32`);
  writeFileSync(file, Buffer.from(buf.buffer));
  return file;
}

/** σⱼ² of the merged adapter from its B columns (B = U·√σ, so ‖B col j‖² = σⱼ). */
function sigmas(res, k) {
  const Bm = res.adapter.modules.get('m').B.data;
  const out = [];
  for (let j = 0; j < k; j++) {
    let s = 0;
    for (let o = 0; o < OUT; o++) s += Bm[o * k + j] ** 2;
    out.push(s);
  }
  return out;
}

const rows = [];
try {
  for (const [n, r, k] of [[32, 8, 8], [32, 8, 32], [8, 16, 16]]) {
    log(`${n} adapters of rank ${r} → rank ${k}`);
    const adapters = [];
    for (let i = 0; i < n; i++) adapters.push(createLora(`a${i}`, [['m', IN, OUT]], { r, alpha: r, seed: 100 + i, initBStd: 0.02 }));
    const file = writeAdapters(adapters, n, r);

    const times = [];
    let res;
    for (let rep = 0; rep < REPS; rep++) {
      const t0 = process.hrtime.bigint();
      res = mergeSvd(adapters.map((adapter) => ({ adapter })), k);
      times.push(ms(t0));
    }
    const ours = sigmas(res, k);
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
  {
    // TIES (density 0.2) then SVD to rank 16: dense ΔW per adapter; ours streams one adapter at a time and
    // uses a randomized SVD (the module is larger than the exact limit), numpy a full dense SVD
    const [n, r, k, density] = [8, 8, 16, 0.2];
    log(`ties: ${n} adapters of rank ${r} → rank ${k}`);
    const adapters = [];
    for (let i = 0; i < n; i++) adapters.push(createLora(`t${i}`, [['m', IN, OUT]], { r, alpha: r, seed: 500 + i, initBStd: 0.02 }));
    const file = writeAdapters(adapters, n, r);
    const times = [];
    let res;
    for (let rep = 0; rep < REPS; rep++) {
      const t0 = process.hrtime.bigint();
      res = mergeTies(adapters.map((adapter) => ({ adapter })), { rank: k, density });
      times.push(ms(t0));
    }
    const ours = sigmas(res, k);
    const py = spawnSync('env', ['-u', 'OPENBLAS_CORETYPE', '-u', 'OPENBLAS_L2_SIZE', 'python3', '-c', PY_TIES, file, String(n), String(r), String(OUT), String(IN), String(k), String(REPS), String(density)], { encoding: 'utf8', maxBuffer: 1 << 26 });
    if (py.status !== 0) throw new Error(`numpy TIES reference failed: ${py.stderr}`);
    const ref = JSON.parse(py.stdout);
    const relErr = Math.max(...ref.s.map((s, j) => Math.abs(ours[j] - s) / ref.s[0]));
    const oursMs = median(times);
    rows.push([`ties (density ${density}): ${n} × rank ${r} → rank ${k}, ${OUT}×${IN}`, oursMs.toFixed(0), ref.ms.toFixed(0), (oursMs / ref.ms).toFixed(2), '–', '–', `${(100 * res.energy.m).toFixed(3)}% / ${(100 * ref.energy).toFixed(3)}%`, relErr.toExponential(1)]);
  }
} finally {
  rmSync(tmp, { recursive: true, force: true });
}

console.log('| merge | ours ms | numpy f64 ms | ratio | numpy f32 ms | ratio | energy kept (ours / numpy) | max σ rel. diff |');
console.log('|---|---:|---:|---:|---:|---:|---:|---:|');
for (const r of rows) console.log(`| ${r.join(' | ')} |`);
console.log('');
console.log('ties row: ours streams one dense ΔW at a time and uses a randomized SVD (power steps until the captured energy converges) for the 768×3072 result; numpy stacks all ΔW and runs a full SVD (float64 both).');
console.log(`ours: factored SVD (QR + Jacobi on the Σrᵢ × Σrᵢ core, float64, single-threaded JS); numpy: dense ΔW sum + np.linalg.svd (OpenBLAS/LAPACK). Median of ${REPS}. Ratio = ours / numpy (lower is better).`);
