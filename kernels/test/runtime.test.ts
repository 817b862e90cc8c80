import t from 'tap';
import { spawnSync } from 'node:child_process';
import { k, rng, randn, close } from './helpers.js';

t.test('info, setThreads, setSimd', async (t) => {
  const i = k.info();
  t.equal(i.backend, 'cpu');
  t.ok(['avx512', 'avx2', 'scalar'].includes(i.simd));
  t.ok(i.threads >= 1);
  k.setThreads(3);
  t.equal(k.info().threads, 3);
  // Results do not depend on the thread count.
  const r = rng(31);
  const x = randn(300000, r), out1 = new Float32Array(x.length), out3 = new Float32Array(x.length);
  k.unary('gelu', x, out3);
  k.setThreads(1);
  k.unary('gelu', x, out1);
  close(t, out3, out1, 'gelu same on 1 and 3 threads', 0, 0);
  k.setThreads(2);
  t.throws(() => k.setThreads(0), RangeError);
  t.throws(() => k.setThreads(1.5), RangeError);
  t.equal(k.setSimd('scalar'), 'scalar');
  t.equal(k.setSimd('auto'), k.bestSimd());
  t.throws(() => k.setSimd('sse' as k.SimdLevel), TypeError);
});

t.test('CATECHISM_SIMD caps the level for the whole process when the package loads', async (t) => {
  const dist = new URL('../dist/index.js', import.meta.url).href;
  const level = (env: string | undefined) => spawnSync(process.execPath, ['--input-type=module', '-e', `import(${JSON.stringify(dist)}).then((k) => console.log(k.info().simd))`], {
    encoding: 'utf8', env: { ...process.env, CATECHISM_SIMD: env },
  }).stdout.trim();
  t.equal(level('scalar'), 'scalar');
  t.equal(level(undefined), k.bestSimd(), 'unset: the best this CPU has');
});

t.test('bad arguments throw JS errors naming the op and argument', async (t) => {
  const f = new Float32Array(4);
  t.throws(() => k.unary('cube' as k.UnaryOp, f, f), /kernels\.unary: unknown unary op "cube"/);
  t.throws(() => k.unary('exp', f, new Float32Array(3)), /kernels\.unary: x has length 4, expected 3/);
  t.throws(() => k.unary('exp', new Float64Array(4) as unknown as Float32Array, f), /x must be a Float32Array/);
  t.throws(() => k.unaryBackward('exp', f, new Float32Array(2), f), /gradOut has length 2/);
  t.throws(() => k.softmax(f, f, -2, -2), /rows must be a non-negative integer/);
  t.throws(() => k.softmax(f, f, 2, 3), /x has length 4, expected 6/);
  t.throws(() => k.logSoftmax(f, f, 2, Infinity), RangeError);
  t.throws(() => k.topk(f, 1, 4, 1, new Float32Array(1), new Float32Array(1) as unknown as Int32Array), /indices must be an Int32Array/);
  t.throws(() => k.reduce('prod' as k.ReduceOp, f, [4], 0, new Float32Array(1)), TypeError);
  t.throws(() => k.fill(null as unknown as Float32Array, 1), TypeError);
  t.throws(() => k.gemm(undefined as unknown as k.GemmArgs), TypeError);
});

t.test('vector math (exp, sigmoid family, softmax, losses) on every SIMD level', async (t) => {
  const { simdLevels } = await import('./helpers.js');
  const sig = (v: number) => 1 / (1 + Math.exp(-v));
  const C = Math.sqrt(2 / Math.PI);
  // 0.5v(1 + tanh u) = v·sigmoid(2u), written without cancellation for u ≪ 0
  const gelu = (v: number) => {
    const u2 = 2 * C * (v + 0.044715 * v ** 3);
    return u2 >= 0 ? v / (1 + Math.exp(-u2)) : (v * Math.exp(u2)) / (1 + Math.exp(u2));
  };
  const edge = [0, -0, 1e-30, -1e-30, 88.5, 88.8, 89, 100, -87, -87.5, -100, -104, -110, Infinity, -Infinity, NaN];
  for (const simd of simdLevels()) {
    k.setSimd(simd);
    const r = rng(41);
    for (const n of [1, 7, 8, 15, 16, 17, 33, 1000]) {
      const x = randn(n, r, 20);
      const out = new Float32Array(n);
      k.unary('exp', x, out);
      close(t, out, Array.from(x, Math.exp), `${simd} exp n=${n}`, 1e-37, 3e-7);
      k.unary('sigmoid', x, out);
      close(t, out, Array.from(x, sig), `${simd} sigmoid n=${n}`, 1e-37, 3e-7);
      k.unary('gelu', x, out);
      close(t, out, Array.from(x, gelu), `${simd} gelu n=${n}`, 1e-30, 2e-5);
    }
    const x = Float32Array.from(edge);
    const out = new Float32Array(x.length);
    k.unary('exp', x, out);
    close(t, out, Array.from(x, (v) => Math.fround(Math.exp(v))), `${simd} exp edge values`, 1.2e-38, 3e-7);
    k.unary('sigmoid', x, out);
    close(t, out, Array.from(x, (v) => Math.fround(sig(v))), `${simd} sigmoid edge values`, 1.2e-38, 3e-7);
    k.unary('silu', x, out);
    t.ok(out[13] === Infinity && Number.isNaN(out[15]), `${simd} silu(inf) = inf, silu(NaN) = NaN`);
    // Softmax / logSoftmax / crossEntropy rows of awkward lengths.
    for (const cols of [1, 5, 16, 31, 1001]) {
      const rows = 3;
      const z = randn(rows * cols, r, 30);
      const y = new Float32Array(rows * cols), ls = new Float32Array(rows * cols);
      k.softmax(z, y, rows, cols);
      k.logSoftmax(z, ls, rows, cols);
      const wantY: number[] = [], wantLs: number[] = [];
      for (let i = 0; i < rows; i++) {
        const row = Array.from(z.subarray(i * cols, (i + 1) * cols));
        const m = Math.max(...row);
        const lse = m + Math.log(row.reduce((s, v) => s + Math.exp(v - m), 0));
        wantY.push(...row.map((v) => Math.exp(v - lse)));
        wantLs.push(...row.map((v) => v - lse));
      }
      close(t, y, wantY, `${simd} softmax cols=${cols}`, 1e-8, 1e-5);
      close(t, ls, wantLs, `${simd} logSoftmax cols=${cols}`, 1e-5, 1e-6);
      const targets = new Int32Array(rows).map((_, i) => (i * 7) % cols);
      const losses = new Float32Array(rows), grad = new Float32Array(rows * cols);
      k.crossEntropy(z, targets, rows, cols, losses, grad);
      close(t, losses, Array.from(targets, (tg, i) => -wantLs[i * cols + tg]), `${simd} crossEntropy cols=${cols}`, 1e-5, 1e-5);
      close(t, grad, wantY.map((v, j) => v - (targets[Math.floor(j / cols)] === j % cols ? 1 : 0)), `${simd} crossEntropy grad cols=${cols}`, 1e-6, 1e-5);
    }
    const nanRow = new Float32Array([1, NaN, 2]), o3 = new Float32Array(3);
    k.softmax(nanRow, o3, 1, 3);
    t.ok(o3.every(Number.isNaN), `${simd} NaN in a softmax row gives NaN`);
  }
  k.setSimd('auto');
});
