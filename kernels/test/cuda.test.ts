// The CUDA backend against the CPU backend. Every op runs on the same inputs
// under 'cpu' and under the CUDA kernel bodies: on the CPU ('cuda-sim', any
// CUDA build) and, where a GPU is usable, on the GPU (host buffers staged, and
// DeviceArrays). Tolerances are those of the CPU tests against float64.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { k, rng, randn, close } from './helpers.js';

type Out = Record<string, Float32Array | Int32Array | Uint16Array>;
interface Case { name: string; atol?: number; rtol?: number; run: () => Out }

const r = rng(2024);
const f = (n: number, s = 1): Float32Array => randn(n, r, s);
const ids = (n: number, limit: number): Int32Array => Int32Array.from({ length: n }, () => Math.floor(r() * limit));

// inputs are made once, so every backend sees the same values
function gemmCase(name: string, o: { m: number; n: number; k: number; transA?: boolean; transB?: boolean; batch?: number; beta?: number; bias?: boolean; alpha?: number }): Case {
  const batch = o.batch ?? 1;
  const a = f(batch * o.m * o.k), b = f(batch * o.k * o.n), c0 = f(batch * o.m * o.n), bias = f(o.n);
  return {
    name, atol: 1e-4, rtol: 1e-4,
    run: () => {
      const c = c0.slice();
      k.gemm({
        transA: o.transA, transB: o.transB, m: o.m, n: o.n, k: o.k, a, b, c,
        lda: o.transA ? o.m : o.k, ldb: o.transB ? o.k : o.n, ldc: o.n,
        batch, strideA: o.m * o.k, strideB: o.k * o.n, strideC: o.m * o.n,
        alpha: o.alpha ?? 1, beta: o.beta ?? 0, bias: o.bias ? bias : undefined,
      });
      return { c };
    },
  };
}

const CASES: Case[] = [];
{
  CASES.push(gemmCase('gemm 1×1×1', { m: 1, n: 1, k: 1 }));
  CASES.push(gemmCase('gemm 70×65×33 (edge tiles)', { m: 70, n: 65, k: 33 }));
  CASES.push(gemmCase('gemm Aᵀ B, beta 1, bias', { m: 17, n: 130, k: 40, transA: true, beta: 1, bias: true }));
  CASES.push(gemmCase('gemm A Bᵀ batched', { m: 9, n: 8, k: 64, transB: true, batch: 3, alpha: 0.5 }));
  CASES.push(gemmCase('gemm k = 0 (C = beta·C + bias)', { m: 5, n: 6, k: 0, beta: 2, bias: true }));
  // heads side by side in one wider C: the gemm of attention
  const a = f(2 * 4 * 8), b = f(2 * 8 * 5);
  CASES.push({
    name: 'gemm side-by-side batch items', atol: 1e-4, rtol: 1e-4,
    run: () => {
      const c = new Float32Array(4 * 10).fill(NaN);
      k.gemm({ m: 4, n: 5, k: 8, a, lda: 8, strideA: 32, b, ldb: 5, strideB: 40, c, ldc: 10, strideC: 5, batch: 2 });
      return { c };
    },
  });
}
{
  const x = f(1000, 3);
  x[3] = NaN;
  const pos = x.map(Math.abs);
  for (const op of ['neg', 'exp', 'log', 'sqrt', 'rsqrt', 'tanh', 'sigmoid', 'relu', 'gelu', 'silu', 'square', 'abs'] as const) {
    const input = op === 'log' || op === 'sqrt' || op === 'rsqrt' ? pos : x;
    const gy = f(1000), gx0 = f(1000);
    CASES.push({
      name: `unary ${op} (+backward)`, atol: 1e-6, rtol: 2e-5,
      run: () => {
        const out = new Float32Array(1000), gx = gx0.slice(), gx2 = new Float32Array(1000);
        k.unary(op, input, out);
        k.unaryBackward(op, input, gy, gx, true);
        k.unaryBackward(op, input, gy, gx2);
        return { out, gx, gx2 };
      },
    });
  }
}
{
  const a = f(2 * 3 * 4), b = f(3 * 1), c = f(4), z = f(24);
  z[5] = NaN;
  for (const op of ['add', 'sub', 'mul', 'div', 'max', 'min'] as const)
    CASES.push({
      name: `binary ${op} (same, broadcast)`, atol: 1e-6, rtol: 1e-6,
      run: () => {
        const o1 = new Float32Array(24), o2 = new Float32Array(24), o3 = new Float32Array(24);
        k.binary(op, a, [2, 3, 4], z, [2, 3, 4], o1);
        k.binary(op, a, [2, 3, 4], b, [3, 1], o2);
        k.binary(op, c, [4], a, [2, 3, 4], o3);
        return { o1, o2, o3 };
      },
    });
  const x = f(300), y0 = f(300);
  CASES.push({
    name: 'scale, axpy, fill', run: () => {
      const o = new Float32Array(300), y = y0.slice(), z2 = new Float32Array(7);
      k.scale(x, -1.5, o);
      k.axpy(0.25, x, y);
      k.fill(z2, 3.5);
      return { o, y, z2 };
    },
  });
  const rx = f(4 * 5 * 6);
  rx[7] = NaN;
  for (const op of ['sum', 'mean', 'max', 'min'] as const)
    CASES.push({
      name: `reduce ${op} over each axis`, atol: 1e-5, rtol: 1e-5,
      run: () => {
        const o0 = new Float32Array(30), o1 = new Float32Array(24), o2 = new Float32Array(20);
        k.reduce(op, rx, [4, 5, 6], 0, o0);
        k.reduce(op, rx, [4, 5, 6], 1, o1);
        k.reduce(op, rx, [4, 5, 6], -1, o2);
        return { o0, o1, o2 };
      },
    });
  const px = f(2 * 3 * 4 * 5);
  CASES.push({
    name: 'permute', run: () => {
      const o = new Float32Array(120), o2 = new Float32Array(120);
      k.permute(px, [2, 3, 4, 5], [0, 2, 1, 3], o);
      k.permute(px, [2, 3, 4, 5], [3, 1, 0, 2], o2);
      return { o, o2 };
    },
  });
}
{
  const rows = 2 * 3 * 4, cols = 6;
  const x = f(rows * cols, 4), dy = f(rows * cols), dx0 = f(rows * cols);
  const keyPad = new Uint8Array([1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 1, 1]);
  CASES.push({
    name: 'softmax (plain, causal, padded), backward, logSoftmax', atol: 1e-6, rtol: 1e-5,
    run: () => {
      const y = new Float32Array(rows * cols), yc = new Float32Array(rows * cols), yp = new Float32Array(rows * cols);
      k.softmax(x, y, rows, cols);
      k.softmax(x, yc, rows, cols, { causal: true, queryLen: 4 });
      k.softmax(x, yp, rows, cols, { causal: true, queryLen: 4, keyPad, rowsPerBatch: 12 });
      const dx = dx0.slice(), dxi = dy.slice();
      k.softmaxBackward(yc, dy, dx, rows, cols, true);
      k.softmaxBackward(y, dxi, dxi, rows, cols); // in place
      const ls = new Float32Array(rows * cols);
      k.logSoftmax(x, ls, rows, cols);
      return { y, yc, yp, dx, dxi, ls };
    },
  });
}
{
  const rows = 7, cols = 50;
  const x = f(rows * cols, 2), g = f(cols), b = f(cols), dy = f(rows * cols), dg0 = f(cols), db0 = f(cols);
  CASES.push({
    name: 'layerNorm, rmsNorm (+backward, with and without affine)', atol: 1e-5, rtol: 1e-4,
    run: () => {
      const o = new Float32Array(rows * cols), mean = new Float32Array(rows), rstd = new Float32Array(rows);
      k.layerNorm(x, g, b, o, rows, cols, 1e-5, mean, rstd);
      const o2 = new Float32Array(rows * cols), mean2 = new Float32Array(rows), rstd2 = new Float32Array(rows);
      k.layerNorm(x, null, null, o2, rows, cols, 1e-5, mean2, rstd2);
      const dx = new Float32Array(rows * cols), dg = dg0.slice(), db = db0.slice();
      k.layerNormBackward(x, g, mean, rstd, dy, dx, dg, db, rows, cols);
      const ro = new Float32Array(rows * cols), rr = new Float32Array(rows);
      k.rmsNorm(x, g, ro, rows, cols, 1e-6, rr);
      const rdx = new Float32Array(rows * cols), rdw = dg0.slice();
      k.rmsNormBackward(x, g, rr, dy, rdx, rdw, rows, cols);
      const rdx2 = new Float32Array(rows * cols);
      k.rmsNormBackward(x, null, rr, dy, rdx2, null, rows, cols);
      return { o, mean, rstd, o2, dx, dg, db, ro, rr, rdx, rdw, rdx2 };
    },
  });
}
{
  const batch = 2, heads = 3, seq = 5, hd = 8;
  const x = f(batch * heads * seq * hd), pos = ids(batch * seq, 100);
  CASES.push({
    name: 'rope (full, partial, inverse)', atol: 1e-5, rtol: 1e-5,
    run: () => {
      const o = new Float32Array(x.length), o2 = new Float32Array(x.length), o3 = new Float32Array(x.length);
      k.rope(x, o, batch, heads, seq, hd, pos, 10000);
      k.rope(x, o2, batch, heads, seq, hd, pos, 500, false, 4);
      k.rope(o, o3, batch, heads, seq, hd, pos, 10000, true);
      return { o, o2, o3 };
    },
  });
  const table = f(11 * 6), tid = new Int32Array([3, 0, 3, 10, 3]), gy = f(5 * 6), gt0 = f(11 * 6);
  CASES.push({
    name: 'embedding (+backward, repeated ids)', atol: 1e-6, rtol: 1e-6,
    run: () => {
      const o = new Float32Array(5 * 6), gt = gt0.slice();
      k.embedding(table, 11, 6, tid, o);
      k.embeddingBackward(gy, tid, gt, 11, 6);
      return { o, gt };
    },
  });
}
{
  const rows = 6, vocab = 37;
  const logits = f(rows * vocab, 4), q = f(rows * vocab, 4), tg = ids(rows, vocab);
  tg[2] = -100;
  CASES.push({
    name: 'crossEntropy (ignore_index), klDiv', atol: 1e-5, rtol: 1e-4,
    run: () => {
      const losses = new Float32Array(rows), grad = new Float32Array(rows * vocab).fill(9);
      k.crossEntropy(logits, tg, rows, vocab, losses, grad);
      const kl = new Float32Array(rows), gq = new Float32Array(rows * vocab);
      k.klDiv(logits, q, rows, vocab, kl, gq);
      return { losses, grad, kl, gq };
    },
  });
  const x = f(4 * 20);
  x[5] = NaN;
  x[7] = x[8] = 2; // a tie
  CASES.push({
    name: 'topk (NaN first, ties by index)', atol: 0, rtol: 0,
    run: () => {
      const v = new Float32Array(4 * 5), idx = new Int32Array(4 * 5);
      k.topk(x, 4, 20, 5, v, idx);
      return { v, idx };
    },
  });
  const p0 = f(500), g = f(500), m0 = f(500, 0.1), v0 = f(500).map(Math.abs);
  CASES.push({
    name: 'adamw (2 steps)', atol: 1e-6, rtol: 1e-5,
    run: () => {
      const p = p0.slice(), m = m0.slice(), v = v0.slice();
      for (const step of [1, 2]) k.adamw(p, g, m, v, { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, step });
      return { p, m, v };
    },
  });
  const src = f(200, 1e5);
  src[0] = NaN; src[1] = 1e-7; src[2] = -Infinity; src[3] = 65519; src[4] = 3e-8;
  const halves = Uint16Array.from({ length: 65536 }, (_, i) => i);
  CASES.push({
    name: 'conversions fp16/bf16 ⇄ fp32 (bit-exact)', atol: 0, rtol: 0,
    run: () => {
      const h = new Uint16Array(200), bf = new Uint16Array(200), hf = new Float32Array(65536), bff = new Float32Array(65536);
      k.f32ToF16(src, h);
      k.f32ToBf16(src, bf);
      k.f16ToF32(halves, hf);
      k.bf16ToF32(halves, bff);
      return { h, bf, hf, bff };
    },
  });
}

function runAll(backend: k.Backend): Out[] {
  const prev = k.setBackend(backend);
  try {
    return CASES.map((c) => c.run());
  } finally {
    k.setBackend(prev);
  }
}

function compare(t: { same(a: unknown, b: unknown, m: string): unknown; ok(v: unknown, m: string): unknown }, want: Out[], got: Out[], label: string): void {
  CASES.forEach((c, i) => {
    for (const key of Object.keys(want[i])) {
      const w = want[i][key], g = got[i][key];
      if (c.atol === 0 && c.rtol === 0) t.same(Array.from(g), Array.from(w), `${label}: ${c.name}: ${key}`);
      else close(t, g, w, `${label}: ${c.name}: ${key}`, c.atol ?? 1e-5, c.rtol ?? 1e-5);
    }
  });
}

t.test('the op list, backend table and wire API are generated from scripts/ops.mjs and up to date', async (t) => {
  const script = fileURLToPath(new URL('../scripts/gen-ops.mjs', import.meta.url));
  const res = spawnSync(process.execPath, [script, '--check'], { encoding: 'utf8' });
  t.equal(res.status, 0, res.stderr);
});

t.test('the type checks accept host arrays and reject wrong element types per op', async (t) => {
  t.throws(() => k.unary('neg', new Float64Array(2) as unknown as Float32Array, new Float32Array(2)), /kernels\.unary: x must be a Float32Array/);
  t.throws(() => k.embedding(new Float32Array(4), 2, 2, new Float32Array(1) as unknown as Int32Array, new Float32Array(2)), /ids must be an Int32Array/);
  t.throws(() => k.softmax(new Float32Array(2), new Float32Array(2), 1, 2, { keyPad: [1, 1] as unknown as Uint8Array, rowsPerBatch: 1 }), /keyPad must be a Uint8Array/);
});

const built = k.info().cudaBuilt;

t.test('without a CUDA build: cpu only, and the CUDA choices say what is missing', { skip: built ? 'this build has CUDA' : false }, async (t) => {
  t.equal(k.info().backend, 'cpu');
  t.throws(() => k.setBackend('cuda-sim'), /no CUDA backend/);
  t.throws(() => k.setBackend('cuda'), /no CUDA backend/);
  t.match(k.cudaUnavailable(), /built without nvcc, or with CATECHISM_CUDA=0/);
  t.throws(() => new k.DeviceArray('f32', 4), /no CUDA backend/);
});

t.test('CUDA kernel bodies on the CPU (cuda-sim) match the CPU backend', { skip: built ? false : 'built without CUDA (no nvcc)' }, async (t) => {
  const want = runAll('cpu');
  const got = runAll('cuda-sim');
  t.equal(k.info().backend, 'cpu', 'setBackend restores the previous backend');
  compare(t, want, got, 'cuda-sim');
});

const gpu = built && k.cudaUnavailable() === null;

t.test('no usable GPU: --device cuda fails with what is missing', { skip: built && !gpu ? false : 'a GPU is usable or CUDA is not built' }, async (t) => {
  const why = k.cudaUnavailable();
  t.match(why, /no usable GPU|not built for this GPU/);
  t.throws(() => k.setBackend('cuda'), { message: `kernels.setBackend: ${why}` });
  t.equal(k.info().backend, 'cpu', 'a failed switch leaves the backend alone');
  t.throws(() => new k.DeviceArray('f32', 4), /no usable GPU|not built for this GPU/);
  t.match(k.info().cuda, /^unavailable: /);
});

t.test('on the GPU: every op (host buffers staged) matches the CPU backend', { skip: gpu ? false : 'no usable GPU' }, async (t) => {
  t.comment(k.info().cuda);
  const want = runAll('cpu');
  const got = runAll('cuda');
  compare(t, want, got, 'cuda');
});

t.test('on the GPU: DeviceArrays (ops on device memory, explicit copies)', { skip: gpu ? false : 'no usable GPU' }, async (t) => {
  const m = 33, n = 65, kk = 70;
  const a = f(m * kk), b = f(kk * n);
  const want = new Float32Array(m * n);
  k.gemm({ m, n, k: kk, a, lda: kk, b, ldb: n, c: want, ldc: n });
  const da = k.DeviceArray.from(a), db = k.DeviceArray.from(b), dc = new k.DeviceArray('f32', m * n);
  k.gemm({ m, n, k: kk, a: da as k.F32, lda: kk, b: db as k.F32, ldb: n, c: dc as k.F32, ldc: n });
  const y = new k.DeviceArray('f32', m * n);
  k.softmax(dc as k.F32, y, m, n);
  const wantY = new Float32Array(m * n);
  k.softmax(want, wantY, m, n);
  close(t, (dc as k.DeviceArray<'f32'>).toHost(), want, 'gemm on device memory', 1e-4, 1e-4);
  close(t, y.toHost(), wantY, 'softmax on device memory', 1e-6, 1e-5);
  t.throws(() => k.softmax(dc as k.F32, new Float32Array(m * n), m, n), /mixes host buffers/);
  const bad = k.DeviceArray.from(new Int32Array([0, 99]));
  t.throws(() => k.embedding(a, m, kk, bad as k.I32, new Float32Array(2 * kk)), /ids\[1\] = 99 is out of range/);
  // same lengths, so the only thing wrong is the freed input (the length checks come first)
  const out = new k.DeviceArray('f32', m * kk);
  da.free();
  t.throws(() => k.unary('neg', da as k.F32, out as k.F32), /freed/);
});
