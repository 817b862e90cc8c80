import t from 'tap';
import { k, rng, randn, close } from './helpers.js';

const GELU_C = Math.sqrt(2 / Math.PI);
const sig = (x: number) => 1 / (1 + Math.exp(-x));
const ref: Record<k.UnaryOp, [(x: number) => number, (x: number) => number]> = {
  neg: [(x) => -x, () => -1],
  exp: [Math.exp, Math.exp],
  log: [Math.log, (x) => 1 / x],
  sqrt: [Math.sqrt, (x) => 0.5 / Math.sqrt(x)],
  rsqrt: [(x) => 1 / Math.sqrt(x), (x) => -0.5 * Math.pow(x, -1.5)],
  tanh: [Math.tanh, (x) => 1 - Math.tanh(x) ** 2],
  sigmoid: [sig, (x) => sig(x) * (1 - sig(x))],
  relu: [(x) => Math.max(0, x), (x) => (x > 0 ? 1 : 0)],
  gelu: [
    (x) => 0.5 * x * (1 + Math.tanh(GELU_C * (x + 0.044715 * x ** 3))),
    (x) => {
      const th = Math.tanh(GELU_C * (x + 0.044715 * x ** 3));
      return 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * GELU_C * (1 + 3 * 0.044715 * x * x);
    },
  ],
  silu: [(x) => x * sig(x), (x) => sig(x) * (1 + x * (1 - sig(x)))],
  square: [(x) => x * x, (x) => 2 * x],
  abs: [Math.abs, (x) => Math.sign(x)],
};

t.test('unary and unaryBackward against float64 formulas', async (t) => {
  const r = rng(1);
  for (const n of [1, 7, 17, 1000, 70001]) {
    for (const op of Object.keys(ref) as k.UnaryOp[]) {
      const positive = op === 'log' || op === 'sqrt' || op === 'rsqrt';
      const x = randn(n, r, 6);
      if (positive) for (let i = 0; i < n; i++) x[i] = Math.abs(x[i]) + 0.05;
      const out = new Float32Array(n);
      k.unary(op, x, out);
      const [f, df] = ref[op];
      close(t, out, Array.from(x, f), `${op} n=${n}`, 1e-6, 2e-6);
      const gy = randn(n, r);
      const gx = new Float32Array(n);
      k.unaryBackward(op, x, gy, gx);
      const want = Array.from(x, (v, i) => df(v) * gy[i]);
      close(t, gx, want, `${op}' n=${n}`, 1e-6, 5e-6);
      const base = randn(n, r);
      const acc = Float32Array.from(base);
      k.unaryBackward(op, x, gy, acc, true);
      close(t, acc, want.map((w, i) => w + base[i]), `${op}' accumulate n=${n}`, 1e-6, 5e-6);
    }
  }
  // Edge values: saturation, NaN propagation through relu, sigmoid at large |x|.
  const x = new Float32Array([-100, -20, 0, 20, 100, NaN]);
  const out = new Float32Array(6);
  k.unary('sigmoid', x, out);
  close(t, out, [sig(-100), sig(-20), 0.5, sig(20), 1, NaN], 'sigmoid extremes', 1e-30, 1e-6);
  k.unary('relu', x, out);
  t.ok(Number.isNaN(out[5]) && out[0] === 0 && out[4] === 100, 'relu keeps NaN');
  k.unary('gelu', x, out);
  t.ok(out[0] === -0 || Math.abs(out[0]) < 1e-30, 'gelu(-100) = 0');
  t.equal(out[4], 100, 'gelu(100) = 100');
  // In place.
  const y = new Float32Array([1, 2, 3]);
  k.unary('square', y, y);
  t.same(Array.from(y), [1, 4, 9], 'in place');
});

function bcastRef(op: k.BinaryOp, a: Float32Array, as: number[], b: Float32Array, bs: number[]): { out: number[]; shape: number[] } {
  const nd = Math.max(as.length, bs.length);
  const pa = [...Array(nd - as.length).fill(1), ...as], pb = [...Array(nd - bs.length).fill(1), ...bs];
  const shape = pa.map((d, i) => (d === 1 ? pb[i] : d));
  const total = shape.reduce((x, y) => x * y, 1);
  const out: number[] = [];
  const f = { add: (x: number, y: number) => x + y, sub: (x: number, y: number) => x - y, mul: (x: number, y: number) => x * y,
    div: (x: number, y: number) => x / y, max: (x: number, y: number) => (Number.isNaN(x) || Number.isNaN(y) ? NaN : Math.max(x, y)),
    min: (x: number, y: number) => (Number.isNaN(x) || Number.isNaN(y) ? NaN : Math.min(x, y)) }[op];
  for (let lin = 0; lin < total; lin++) {
    let rem = lin, ia = 0, ib = 0, sa = 1, sb = 1;
    for (let d = nd - 1; d >= 0; d--) {
      const idx = rem % shape[d];
      rem = Math.floor(rem / shape[d]);
      ia += (pa[d] === 1 ? 0 : idx) * sa;
      ib += (pb[d] === 1 ? 0 : idx) * sb;
      sa *= pa[d];
      sb *= pb[d];
    }
    out.push(Math.fround(f(a[ia], b[ib])));
  }
  return { out, shape };
}

t.test('binary with numpy broadcasting', async (t) => {
  const r = rng(2);
  const pairs: Array<[number[], number[]]> = [
    [[5], [5]], [[3, 4], [3, 4]], [[3, 4], [4]], [[3, 4], [3, 1]], [[1], [7, 5]], [[2, 1, 5], [3, 1]],
    [[4, 1, 3, 1], [1, 5, 1, 6]], [[2, 3, 4], []], [[], [2, 3]], [[1, 1], [1]], [[3, 1, 17], [3, 9, 17]],
    [[65, 130], [130]], [[300, 200], [300, 1]], [[0, 3], [3]],
  ];
  for (const op of ['add', 'sub', 'mul', 'div', 'max', 'min'] as k.BinaryOp[])
    for (const [as, bs] of pairs) {
      const a = randn(as.reduce((x, y) => x * y, 1), r);
      const b = randn(bs.reduce((x, y) => x * y, 1), r);
      if (op === 'div') for (let i = 0; i < b.length; i++) b[i] = b[i] + Math.sign(b[i] || 1) * 0.5;
      const want = bcastRef(op, a, as, b, bs);
      const out = new Float32Array(want.out.length);
      k.binary(op, a, as, b, bs, out);
      close(t, out, want.out, `${op} [${as}] ∘ [${bs}]`, 0, 0);
    }
  const out = new Float32Array(2);
  k.binary('max', new Float32Array([NaN, 1]), [2], new Float32Array([0, NaN]), [2], out);
  t.ok(Number.isNaN(out[0]) && Number.isNaN(out[1]), 'max propagates NaN');
  t.throws(() => k.binary('add', new Float32Array(6), [2, 3], new Float32Array(2), [2], new Float32Array(6)), /do not broadcast/);
  t.throws(() => k.binary('add', new Float32Array(6), [2, 3], new Float32Array(3), [3], new Float32Array(5)), /out has length 5/);
  t.throws(() => k.binary('pow' as k.BinaryOp, new Float32Array(1), [1], new Float32Array(1), [1], new Float32Array(1)), TypeError);
  t.throws(() => k.binary('add', new Float32Array(5), [2, 3], new Float32Array(3), [3], new Float32Array(6)), /a has length 5/);
});

t.test('scale, axpy, fill', async (t) => {
  const r = rng(3);
  for (const n of [1, 15, 100003]) {
    const x = randn(n, r), y = randn(n, r), out = new Float32Array(n);
    k.scale(x, -2.5, out);
    close(t, out, Array.from(x, (v) => Math.fround(-2.5 * v)), `scale n=${n}`, 0, 0);
    const y0 = Float32Array.from(y);
    k.axpy(0.75, x, y);
    close(t, y, Array.from(y0, (v, i) => v + 0.75 * x[i]), `axpy n=${n}`, 1e-7, 1e-6);
    k.fill(out, 3.25);
    t.ok(out.every((v) => v === 3.25), `fill n=${n}`);
  }
  t.throws(() => k.axpy(1, new Float32Array(3), new Float32Array(4)), /x has length 3, expected 4/);
  t.throws(() => k.scale(new Float32Array(3), 1, new Float32Array(2)), RangeError);
});

t.test('reduce along every axis', async (t) => {
  const r = rng(4);
  const shapes = [[7], [1, 9], [9, 1], [3, 4, 5], [2, 33, 17], [4000, 3], [3, 5000], [1, 1, 1], [2, 70000]];
  for (const shape of shapes)
    for (let axis = 0; axis < shape.length; axis++)
      for (const op of ['sum', 'mean', 'max', 'min'] as k.ReduceOp[]) {
        const total = shape.reduce((x, y) => x * y, 1);
        const x = randn(total, r);
        const outer = shape.slice(0, axis).reduce((a, b) => a * b, 1);
        const len = shape[axis];
        const inner = shape.slice(axis + 1).reduce((a, b) => a * b, 1);
        const want: number[] = [];
        for (let o = 0; o < outer; o++)
          for (let i = 0; i < inner; i++) {
            let s = 0, mx = -Infinity, mn = Infinity;
            for (let q = 0; q < len; q++) {
              const v = x[(o * len + q) * inner + i];
              s += v; mx = Math.max(mx, v); mn = Math.min(mn, v);
            }
            want.push(op === 'sum' ? s : op === 'mean' ? s / len : op === 'max' ? mx : mn);
          }
        const out = new Float32Array(outer * inner);
        k.reduce(op, x, shape, axis, out);
        close(t, out, want, `${op} [${shape}] axis ${axis}`, 1e-5 * Math.sqrt(len), 1e-5);
      }
  const out = new Float32Array(2);
  k.reduce('sum', new Float32Array([1, 2, 3, 4, 5, 6]), [2, 3], -1, out);
  t.same(Array.from(out), [6, 15], 'negative axis');
  k.reduce('max', new Float32Array([1, NaN, 3, 4, 5, 6]), [2, 3], 1, out);
  t.ok(Number.isNaN(out[0]) && out[1] === 6, 'max propagates NaN');
  t.throws(() => k.reduce('sum', new Float32Array(6), [2, 3], 2, out), /axis 2 is out of range/);
  t.throws(() => k.reduce('sum', new Float32Array(6), [2, 3], 0, out), /out has length 2, expected 3/);
  t.throws(() => k.reduce('max', new Float32Array(0), [2, 0], 1, out), /empty axis/);
});

t.test('permute', async (t) => {
  const r = rng(5);
  const cases: Array<[number[], number[]]> = [
    [[3, 4], [1, 0]], [[2, 3, 4], [0, 2, 1]], [[2, 3, 4], [2, 0, 1]], [[5, 1, 7, 3], [3, 1, 0, 2]], [[6], [0]],
    [[2, 3, 4, 5, 6], [4, 2, 0, 3, 1]], [[64, 129], [1, 0]],
  ];
  for (const [shape, perm] of cases) {
    const total = shape.reduce((a, b) => a * b, 1);
    const x = randn(total, r);
    const out = new Float32Array(total);
    k.permute(x, shape, perm, out);
    const oshape = perm.map((p) => shape[p]);
    const strides = shape.map((_, i) => shape.slice(i + 1).reduce((a, b) => a * b, 1));
    const want: number[] = [];
    for (let lin = 0; lin < total; lin++) {
      let rem = lin, src = 0;
      for (let d = oshape.length - 1; d >= 0; d--) {
        src += (rem % oshape[d]) * strides[perm[d]];
        rem = Math.floor(rem / oshape[d]);
      }
      want.push(x[src]);
    }
    close(t, out, want, `permute [${shape}] by [${perm}]`, 0, 0);
  }
  t.throws(() => k.permute(new Float32Array(6), [2, 3], [0, 0], new Float32Array(6)), /not a permutation/);
  t.throws(() => k.permute(new Float32Array(6), [2, 3], [1], new Float32Array(6)), RangeError);
  const buf = new Float32Array(6);
  t.throws(() => k.permute(buf, [2, 3], [1, 0], buf), /share memory/);
});
