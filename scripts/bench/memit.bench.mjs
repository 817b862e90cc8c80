#!/usr/bin/env node
// MEMIT's per-layer update (memitSolve: ΔW = Rᵀ K (λC + KᵀK)⁻¹, float64) at
// the GPT-2-small shape (hidden 768, inner 3072), 100 edits, 5 layers,
// statistics given (as when cached), next to the same algorithm in PyTorch
// (scripts/bench/memit_torch.py, Debian's python3-torch). Only the update
// is timed: the value optimisation runs the model and is measured by
// scripts/eval-memit.mjs (seconds per edit on the fixture model).
//
//   node scripts/bench/memit.bench.mjs [--hidden 768] [--inner 3072] [--edits 100] [--layers 5] [--reps 3] [--no-torch]
// TORCH_PYTHON: the python with torch (default /usr/bin/python3).
// Prints a Markdown table: 1 thread and every core, ours and PyTorch at the
// same thread count. Build core first. Do not run it while others run tests.
import { execFileSync } from 'node:child_process';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '../..');
const { memitSolve } = await import(path.join(root, 'tools/core/dist/edit/index.js'));
const { setThreads } = await import(path.join(root, 'kernels/dist/index.js'));
const { values: a } = parseArgs({ options: {
  hidden: { type: 'string', default: '768' }, inner: { type: 'string', default: '3072' }, edits: { type: 'string', default: '100' },
  layers: { type: 'string', default: '5' }, reps: { type: 'string', default: '3' }, 'no-torch': { type: 'boolean', default: false },
} });
const H = Number(a.hidden), D = Number(a.inner), N = Number(a.edits), layers = Number(a.layers), reps = Number(a.reps);
// the same deterministic inputs as memit_torch.py
const X = new Float64Array(2 * D * D);
for (let i = 0; i < 2 * D; i++) for (let j = 0; j < D; j++) X[i * D + j] = Math.sin(0.37 * i + 1.3 * j + 0.011 * i * j) + 0.5 * Math.cos(0.21 * i * i * 1e-3 + 0.7 * j);
const C = new Float64Array(D * D);
for (let r = 0; r < 2 * D; r++) {
  const row = X.subarray(r * D, (r + 1) * D);
  for (let i = 0; i < D; i++) { const v = row[i] / (2 * D); for (let j = 0; j < D; j++) C[i * D + j] += v * row[j]; }
}
for (let i = 0; i < D; i++) C[i * D + i] += 0.1; // full rank, as a real key covariance
const K = new Float64Array(N * D);
for (let i = 0; i < N; i++) for (let j = 0; j < D; j++) K[i * D + j] = Math.sin(0.9 * i + 1.7 * j + 0.013 * i * j);
const R = new Float64Array(N * H);
for (let i = 0; i < N; i++) for (let j = 0; j < H; j++) R[i * H + j] = Math.sin(2.1 * i + 0.3 * j);
const run = () => { for (let l = 0; l < layers; l++) memitSolve(C, D, K, R, N, H, 10); };
const time = () => {
  run(); // warm: the first call allocates memitSolve's workspace
  let best = Infinity;
  for (let r = 0; r < reps; r++) { const t0 = process.hrtime.bigint(); run(); best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9); }
  return best;
};
// PyTorch runs as a child with OpenBLAS's machine overrides removed (they slow
// it here; ENVIRONMENT-NOTES.md) and the same thread count as ours.
const torchSeconds = (threads) => {
  const env = { ...process.env, OPENBLAS_NUM_THREADS: String(threads), OMP_NUM_THREADS: String(threads) };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  const out = execFileSync(process.env.TORCH_PYTHON ?? '/usr/bin/python3', [path.join(root, 'scripts/bench/memit_torch.py'), '--hidden', String(H), '--inner', String(D), '--edits', String(N), '--layers', String(layers), '--reps', String(reps)], { encoding: 'utf8', env });
  return JSON.parse(out.trim().split('\n').pop()).seconds;
};
const cores = os.cpus().length;
console.log(`MEMIT's update ΔW = Rᵀ K (λC + KᵀK)⁻¹, float64, hidden ${H}, inner ${D}, ${N} edits, ${layers} layers (best of ${reps}); load average ${os.loadavg()[0].toFixed(1)} at the start\n`);
console.log('| threads | catechism s | PyTorch s | ours / PyTorch |');
console.log('|---:|---:|---:|---:|');
for (const threads of [...new Set([1, cores])]) {
  setThreads(threads);
  const ours = time();
  let torch = NaN, note = '';
  if (!a['no-torch']) {
    try { torch = torchSeconds(threads); } catch (e) { note = ` (PyTorch not run: ${e.message.split('\n')[0]})`; }
  }
  console.log(`| ${threads} | ${ours.toFixed(3)} | ${Number.isNaN(torch) ? '—' : torch.toFixed(3)} | ${Number.isNaN(torch) ? '—' : (ours / torch).toFixed(2)}${note} |`);
}
