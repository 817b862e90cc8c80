#!/usr/bin/env node
// LEACE fit time (issue 20): fitLeace (tools/core/src/edit/leace.ts, float64:
// covariance, whitening by Cholesky (or eigen-decomposition), projection) on n activation
// vectors of width d with k classes, next to numpy doing the same closed form
// (scripts/bench/leace_numpy.py, the same deterministic inputs).
//
//   node scripts/bench/leace.bench.mjs [--n 1000,10000] [--d 128,768] [--k 4] [--no-numpy]
// Build core first. Run it on an idle machine.
import { execFileSync } from 'node:child_process';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '../..');
const { fitLeace } = await import(path.join(root, 'tools/core/dist/edit/index.js'));
const { values: a } = parseArgs({ options: {
  n: { type: 'string', default: '1000,10000' }, d: { type: 'string', default: '128,768' }, k: { type: 'string', default: '4' }, 'no-numpy': { type: 'boolean', default: false },
} });
const K = Number(a.k);
// numpy runs with OpenBLAS's machine overrides removed (they slow it here; ENVIRONMENT-NOTES.md)
const env = { ...process.env };
delete env.OPENBLAS_CORETYPE;
delete env.OPENBLAS_L2_SIZE;
const timed = (f) => {
  const t0 = process.hrtime.bigint();
  f();
  return Number(process.hrtime.bigint() - t0) / 1e9;
};
console.log(`LEACE fit, seconds per fit; load average ${os.loadavg()[0].toFixed(1)} at the start\n`);
console.log('| n | d | k | catechism fitLeace s (Cholesky whitening) | catechism, eigen whitening s | numpy s | ours / numpy |');
console.log('|---|---|---|---|---|---|---|');
for (const d of a.d.split(',').map(Number)) {
  for (const n of a.n.split(',').map(Number)) {
    const X = new Float64Array(n * d);
    const labels = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      labels[i] = i % K;
      for (let j = 0; j < d; j++) X[i * d + j] = Math.sin(0.7 * i + 1.3 * j + 0.011 * i * j) + 0.5 * Math.cos((i % K) + 0.2 * j);
    }
    const ts = timed(() => fitLeace(X, n, d, labels, K));
    const te = timed(() => fitLeace(X, n, d, labels, K, 1e-10, 0, 'eigen'));
    let np = NaN;
    if (!a['no-numpy']) {
      np = Number(execFileSync('python3', [path.join(root, 'scripts/bench/leace_numpy.py'), String(n), String(d), String(K)], { encoding: 'utf8', env }).trim());
    }
    console.log(`| ${n} | ${d} | ${K} | ${ts.toFixed(3)} | ${te.toFixed(3)} | ${Number.isNaN(np) ? '-' : np.toFixed(3)} | ${Number.isNaN(np) ? '-' : (ts / np).toFixed(2)} |`);
  }
}
