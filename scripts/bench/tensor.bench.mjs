#!/usr/bin/env node
// Tensor/autograd layer: per-op overhead over the raw kernel call, and a
// GPT-2-style transformer block (forward + backward) against PyTorch on the
// same shapes. Prints a Markdown table; ratio = reference time / our time
// (above 1 means catechism is faster). Needs built dist packages
// (`npx turbo run build`); PyTorch comes from /usr/bin/python3 (Debian
// python3-torch) and its rows are skipped when it is missing.
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import * as K from '@catechism/kernels';
import {
  Rng, tensor, randn, ones, zeros, add, sum, linear, layerNorm, gelu, attention, reshape, transpose, split, noGrad,
} from '@catechism/core';

const threads = Math.min(os.cpus().length, 2);
K.setThreads(threads);

function timeIt(fn, { minMs = 300, warm = 3 } = {}) {
  for (let i = 0; i < warm; i++) fn();
  let n = 0;
  const t0 = process.hrtime.bigint();
  let el = 0;
  do {
    fn();
    n++;
    el = Number(process.hrtime.bigint() - t0) / 1e6;
  } while (el < minMs);
  return el / n; // ms per call
}

function timeMany(fn, reps) {
  // tiny ops: time a loop of `reps` calls, report µs per call
  return (timeIt(() => { for (let i = 0; i < reps; i++) fn(); }, { minMs: 300 }) * 1000) / reps;
}

const rows = [];

// ---- per-op overhead on 16 floats
{
  const a = tensor(new Float32Array(16).fill(1), [16]);
  const b = tensor(new Float32Array(16).fill(2), [16]);
  const ag = tensor(new Float32Array(16).fill(1), [16], { requiresGrad: true });
  const out = new Float32Array(16);
  const raw = timeMany(() => K.binary('add', a.data, [16], b.data, [16], out), 20000);
  const noRec = timeMany(() => add(a, b), 20000);
  const rec = timeMany(() => add(ag, b), 20000);
  const fb = timeMany(() => { ag.grad = null; sum(add(ag, b)).backward(); }, 5000);
  rows.push(['add, 16 floats, raw kernels.binary', `${raw.toFixed(2)} µs`, '', '']);
  rows.push(['add, 16 floats, Tensor op (no grad)', `${noRec.toFixed(2)} µs`, `kernel ${raw.toFixed(2)} µs`, `${(raw / noRec).toFixed(2)}`]);
  rows.push(['add, 16 floats, Tensor op (recording)', `${rec.toFixed(2)} µs`, `kernel ${raw.toFixed(2)} µs`, `${(raw / rec).toFixed(2)}`]);
  rows.push(['sum(add) + backward, 16 floats', `${fb.toFixed(2)} µs`, '', '']);
}

// ---- transformer block, forward + backward
const B = 4, T = 128, D = 256, H = 8, Dh = D / H;
const rng = new Rng(1);
const p = (shape, std) => randn(shape, rng, std, { requiresGrad: true });
const params = {
  ln1g: ones([D], { requiresGrad: true }), ln1b: zeros([D], { requiresGrad: true }),
  wqkv: p([3 * D, D], 0.02), bqkv: zeros([3 * D], { requiresGrad: true }),
  wo: p([D, D], 0.02), bo: zeros([D], { requiresGrad: true }),
  ln2g: ones([D], { requiresGrad: true }), ln2b: zeros([D], { requiresGrad: true }),
  wup: p([4 * D, D], 0.02), bup: zeros([4 * D], { requiresGrad: true }),
  wdown: p([D, 4 * D], 0.02), bdown: zeros([D], { requiresGrad: true }),
};
const x = randn([B, T, D], rng, 1, { requiresGrad: true });
function block(h) {
  const qkv = linear(layerNorm(h, params.ln1g, params.ln1b), params.wqkv, params.bqkv);
  const [q, k, v] = split(qkv, [D, D, D], 2).map((t) => transpose(reshape(t, [B, T, H, Dh]), 1, 2));
  const att = reshape(transpose(attention(q, k, v, { causal: true }), 1, 2), [B, T, D]);
  h = add(h, linear(att, params.wo, params.bo));
  const m = linear(gelu(linear(layerNorm(h, params.ln2g, params.ln2b), params.wup, params.bup)), params.wdown, params.bdown);
  return add(h, m);
}
const fwd = timeIt(() => noGrad(() => block(x)), { minMs: 1500 });
const fwdBwd = timeIt(() => {
  for (const t of Object.values(params)) t.grad = null;
  x.grad = null;
  sum(block(x)).backward();
}, { minMs: 2500 });

const py = `
import time, torch
torch.manual_seed(0)
torch.set_num_threads(${threads})
B, T, D, H = ${B}, ${T}, ${D}, ${H}
Dh = D // H
ln1 = torch.nn.LayerNorm(D); ln2 = torch.nn.LayerNorm(D)
qkv = torch.nn.Linear(D, 3 * D); o = torch.nn.Linear(D, D); up = torch.nn.Linear(D, 4 * D); down = torch.nn.Linear(4 * D, D)
mask = torch.full((T, T), float('-inf')).triu(1)
x = torch.randn(B, T, D, requires_grad=True)
def block(h):
    q, k, v = qkv(ln1(h)).split(D, dim=2)
    q, k, v = [t.view(B, T, H, Dh).transpose(1, 2) for t in (q, k, v)]
    s = (q @ k.transpose(-1, -2)) / Dh ** 0.5 + mask
    a = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)
    h = h + o(a)
    return h + down(torch.nn.functional.gelu(up(ln2(h)), approximate='tanh'))
def timeit(fn, min_s):
    for _ in range(3): fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_s:
        fn(); n += 1
    return (time.perf_counter() - t0) / n * 1000
def fb():
    for prm in list(qkv.parameters()) + list(o.parameters()) + list(up.parameters()) + list(down.parameters()) + list(ln1.parameters()) + list(ln2.parameters()):
        prm.grad = None
    x.grad = None
    block(x).sum().backward()
with torch.no_grad():
    f = timeit(lambda: block(x), 1.5)
print(f, timeit(fb, 2.5))
`;
let ref = null;
const r = spawnSync('/usr/bin/python3', ['-c', py], { encoding: 'utf8' });
if (r.status === 0) {
  const [f, fb] = r.stdout.trim().split(/\s+/).map(Number);
  ref = { f, fb };
} else {
  console.error(`tensor.bench: PyTorch reference unavailable (${(r.stderr || r.error?.message || '').trim().split('\n').pop()})`);
}
const cfg = `B=${B} T=${T} D=${D} H=${H}`;
rows.push([`GPT-2 block forward (${cfg})`, `${fwd.toFixed(2)} ms`, ref ? `torch ${ref.f.toFixed(2)} ms` : 'n/a', ref ? (ref.f / fwd).toFixed(2) : 'n/a']);
rows.push([`GPT-2 block forward+backward (${cfg})`, `${fwdBwd.toFixed(2)} ms`, ref ? `torch ${ref.fb.toFixed(2)} ms` : 'n/a', ref ? (ref.fb / fwdBwd).toFixed(2) : 'n/a']);

console.log(`### Tensor / autograd (${threads} threads, SIMD ${K.info().simd})\n`);
console.log('| case | catechism | reference | ratio (ref time / ours) |');
console.log('|---|---|---|---|');
for (const row of rows) console.log(`| ${row.join(' | ')} |`);
