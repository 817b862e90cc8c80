import t from 'tap';
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
