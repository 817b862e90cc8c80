// Elementwise, reduction and shape ops: float32 forward vs float64 reference,
// analytic gradients vs central differences on the reference.
import t, { type Test } from 'tap';
import { Rng } from '../src/util/random.js';
import {
  gradCheck, add, sub, mul, div, maximum, minimum, pow, dropout, neg, exp, log, sqrt, rsqrt, tanh, sigmoid, relu, gelu, silu, square, abs, scale,
  sum, mean, max, reshape, unsqueeze, squeeze, permute, transpose, slice, concat, stack, split, indexSelect, indexAdd,
  gather, topk, tensor, broadcastShapes, type Tensor,
} from '../src/tensor/index.js';

const rng = new Rng(7);
const FWD = 1e-5;
const GRAD = 1e-3;

function randData(n: number, kind: 'normal' | 'positive' | 'awayFromZero' = 'normal'): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    if (kind === 'positive') out.push(0.5 + 1.5 * rng.uniform());
    else if (kind === 'awayFromZero') out.push((0.3 + rng.uniform()) * (rng.uniform() < 0.5 ? -1 : 1));
    else out.push(rng.normal());
  }
  return out;
}

const size = (s: readonly number[]): number => s.reduce((a, b) => a * b, 1);

/** float64 numpy-broadcast binary op. */
function bcast(a: Float64Array, as: number[], b: Float64Array, bs: number[], f: (x: number, y: number) => number): Float64Array {
  const os = broadcastShapes(as, bs);
  const n = os.length;
  const pa = Array(n - as.length).fill(1).concat(as);
  const pb = Array(n - bs.length).fill(1).concat(bs);
  const out = new Float64Array(size(os));
  const idx = new Array(n).fill(0);
  for (let i = 0; i < out.length; i++) {
    let ia = 0, ib = 0;
    for (let d = 0; d < n; d++) {
      ia = ia * pa[d] + (pa[d] === 1 ? 0 : idx[d]);
      ib = ib * pb[d] + (pb[d] === 1 ? 0 : idx[d]);
    }
    out[i] = f(a[ia], b[ib]);
    for (let d = n - 1; d >= 0; d--) { if (++idx[d] < os[d]) break; idx[d] = 0; }
  }
  return out;
}

function check(tt: Test, name: string, res: { forwardError: number; gradErrors: number[] }, fwd = FWD, grad = GRAD): void {
  tt.ok(res.forwardError < fwd, `${name}: forward error ${res.forwardError.toExponential(2)}`);
  res.gradErrors.forEach((e, i) => {
    if (!Number.isNaN(e)) tt.ok(e < grad, `${name}: grad of input ${i} error ${e.toExponential(2)}`);
  });
}

t.test('binary ops with broadcasting', (tt) => {
  const cases: Array<[number[], number[]]> = [
    [[3, 4], [3, 4]],
    [[2, 3, 4], [4]],
    [[2, 1, 4], [3, 1]],
    [[5], [2, 3, 5]],
    [[2, 3], []],
    [[1, 3, 1], [2, 1, 4]],
  ];
  const ops: Array<[string, (a: Tensor, b: Tensor) => Tensor, (x: number, y: number) => number]> = [
    ['add', add, (x, y) => x + y],
    ['sub', sub, (x, y) => x - y],
    ['mul', mul, (x, y) => x * y],
    ['div', div, (x, y) => x / y],
  ];
  for (const [as, bs] of cases) {
    for (const [name, f, g] of ops) {
      const res = gradCheck(
        ([a, b]) => f(a, b),
        ([a, b]) => bcast(a, as, b, bs, g),
        [{ data: randData(size(as)), shape: as }, { data: randData(size(bs), name === 'div' ? 'awayFromZero' : 'normal'), shape: bs }],
      );
      check(tt, `${name} ${JSON.stringify(as)}·${JSON.stringify(bs)}`, res);
      tt.same(res.output.shape, broadcastShapes(as, bs));
    }
  }
  tt.end();
});

t.test('binary ops on random broadcast shapes', (tt) => {
  const shapes = new Rng(99);
  for (let trial = 0; trial < 12; trial++) {
    const nd = 1 + shapes.int(4);
    const out = Array.from({ length: nd }, () => 1 + shapes.int(4));
    // each operand drops some leading dims and sets some dims to 1
    const derive = (): number[] => out.slice(shapes.int(nd)).map((d) => (shapes.uniform() < 0.3 ? 1 : d));
    const as = derive(), bs = derive();
    const ops: Array<[string, (a: Tensor, b: Tensor) => Tensor, (x: number, y: number) => number]> = [
      ['add', add, (x, y) => x + y], ['mul', mul, (x, y) => x * y], ['div', div, (x, y) => x / y],
    ];
    for (const [name, f, g] of ops) {
      const res = gradCheck(([a, b]) => f(a, b), ([a, b]) => bcast(a, as, b, bs, g),
        [{ data: randData(size(as)), shape: as }, { data: randData(size(bs), name === 'div' ? 'awayFromZero' : 'normal'), shape: bs }]);
      check(tt, `${name} ${JSON.stringify(as)}·${JSON.stringify(bs)}`, res);
    }
  }
  tt.end();
});

t.test('maximum, minimum, pow, dropout', (tt) => {
  for (const [as, bs] of [[[3, 4], [3, 4]], [[2, 3, 4], [4]], [[2, 1, 4], [3, 1]]] as Array<[number[], number[]]>) {
    check(tt, `maximum ${JSON.stringify(as)}·${JSON.stringify(bs)}`, gradCheck(([a, b]) => maximum(a, b), ([a, b]) => bcast(a, as, b, bs, Math.max),
      [{ data: randData(size(as)), shape: as }, { data: randData(size(bs)), shape: bs }]));
    check(tt, `minimum ${JSON.stringify(as)}·${JSON.stringify(bs)}`, gradCheck(([a, b]) => minimum(a, b), ([a, b]) => bcast(a, as, b, bs, Math.min),
      [{ data: randData(size(as)), shape: as }, { data: randData(size(bs)), shape: bs }]));
  }
  for (const p of [2, 0.5, -1.5, 3]) {
    check(tt, `pow ${p}`, gradCheck(([x]) => pow(x, p), ([x]) => x.map((v) => Math.pow(v, p)), [{ data: randData(10, 'positive'), shape: [2, 5] }]));
  }
  // dropout: kept elements scaled by 1/(1-p), about p dropped, gradient through the same mask
  const x = tensor(new Float32Array(4000).fill(1), [4000], { requiresGrad: true });
  const y = dropout(x, 0.25, new Rng(9));
  const kept = y.toArray().filter((v) => v !== 0);
  tt.ok(kept.every((v) => Math.abs(v - 4 / 3) < 1e-6));
  tt.ok(Math.abs(kept.length / 4000 - 0.75) < 0.03, `kept fraction ${kept.length / 4000}`);
  sum(y).backward();
  tt.same(x.grad!.toArray(), y.toArray());
  tt.equal(dropout(x, 0.5, new Rng(1), false), x, 'identity when not training');
  tt.throws(() => dropout(x, 1, new Rng(1)), /p must be/);
  tt.end();
});

t.test('binary ops with a number operand and with the same tensor twice', (tt) => {
  const x = tensor([1, 2, 3], [3], { requiresGrad: true });
  tt.same(add(x, 1).toArray(), [2, 3, 4]);
  tt.same(sub(10, x).toArray(), [9, 8, 7]);
  const y = mul(x, x); // d/dx x² = 2x, both inputs are x
  y.backward(tensor([1, 1, 1], [3]));
  tt.same(x.grad!.toArray(), [2, 4, 6]);
  x.zeroGrad();
  add(x, x).backward(tensor([1, 1, 1], [3]));
  tt.same(x.grad!.toArray(), [2, 2, 2]);
  tt.throws(() => add(tensor([1, 2], [2]), tensor([1, 2, 3], [3])), /cannot be broadcast/);
  tt.end();
});

t.test('unary ops', (tt) => {
  const SQ2PI = Math.sqrt(2 / Math.PI);
  const sig = (x: number): number => 1 / (1 + Math.exp(-x));
  const ops: Array<[string, (x: Tensor) => Tensor, (x: number) => number, 'normal' | 'positive' | 'awayFromZero']> = [
    ['neg', neg, (x) => -x, 'normal'],
    ['exp', exp, Math.exp, 'normal'],
    ['log', log, Math.log, 'positive'],
    ['sqrt', sqrt, Math.sqrt, 'positive'],
    ['rsqrt', rsqrt, (x) => 1 / Math.sqrt(x), 'positive'],
    ['tanh', tanh, Math.tanh, 'normal'],
    ['sigmoid', sigmoid, sig, 'normal'],
    ['relu', relu, (x) => Math.max(0, x), 'awayFromZero'],
    ['gelu', gelu, (x) => 0.5 * x * (1 + Math.tanh(SQ2PI * (x + 0.044715 * x * x * x))), 'normal'],
    ['silu', silu, (x) => x * sig(x), 'normal'],
    ['square', square, (x) => x * x, 'normal'],
    ['abs', abs, Math.abs, 'awayFromZero'],
    ['scale', (x) => scale(x, -2.5), (x) => -2.5 * x, 'normal'],
  ];
  for (const shape of [[7], [3, 5], [2, 3, 17]]) {
    for (const [name, f, g, kind] of ops) {
      const res = gradCheck(([x]) => f(x), ([x]) => x.map(g), [{ data: randData(size(shape), kind), shape }]);
      check(tt, `${name} ${JSON.stringify(shape)}`, res);
    }
  }
  tt.end();
});

/** float64 reduction over one axis (or all). */
function refReduce(x: Float64Array, shape: number[], axis: number | undefined, f: 'sum' | 'mean' | 'max'): Float64Array {
  const [outer, n, inner] = axis === undefined ? [1, x.length, 1]
    : [size(shape.slice(0, axis)), shape[axis], size(shape.slice(axis + 1))];
  const out = new Float64Array(outer * inner);
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < inner; i++) {
      let acc = f === 'max' ? -Infinity : 0;
      for (let j = 0; j < n; j++) {
        const v = x[(o * n + j) * inner + i];
        acc = f === 'max' ? Math.max(acc, v) : acc + v;
      }
      out[o * inner + i] = f === 'mean' ? acc / n : acc;
    }
  }
  return out;
}

t.test('reductions', (tt) => {
  const shape = [3, 4, 5];
  for (const axis of [undefined, 0, 1, 2, -1]) {
    const ax = axis === undefined ? undefined : (axis + 3) % 3;
    for (const keep of [false, true]) {
      const rs = gradCheck(([x]) => sum(x, axis, keep), ([x]) => refReduce(x, shape, ax, 'sum'), [{ data: randData(60), shape }]);
      check(tt, `sum axis=${axis} keep=${keep}`, rs);
      const expectShape = ax === undefined ? (keep ? [1, 1, 1] : []) : shape.map((d, i) => (i === ax ? 1 : d)).filter((_, i) => keep || i !== ax);
      tt.same(rs.output.shape, expectShape);
      check(tt, `mean axis=${axis}`, gradCheck(([x]) => mean(x, axis, keep), ([x]) => refReduce(x, shape, ax, 'mean'), [{ data: randData(60), shape }]));
      if (ax !== undefined) {
        check(tt, `max axis=${axis}`, gradCheck(([x]) => max(x, axis!, keep), ([x]) => refReduce(x, shape, ax, 'max'), [{ data: randData(60), shape }]));
      }
    }
  }
  tt.end();
});

/** float64 permute. */
function refPermute(x: Float64Array, shape: number[], perm: number[]): Float64Array {
  const os = perm.map((p) => shape[p]);
  const strides = shape.map((_, i) => size(shape.slice(i + 1)));
  const out = new Float64Array(x.length);
  const idx = new Array(os.length).fill(0);
  for (let i = 0; i < out.length; i++) {
    let src = 0;
    for (let d = 0; d < os.length; d++) src += idx[d] * strides[perm[d]];
    out[i] = x[src];
    for (let d = os.length - 1; d >= 0; d--) { if (++idx[d] < os[d]) break; idx[d] = 0; }
  }
  return out;
}

t.test('shape ops', (tt) => {
  const shape = [2, 3, 4];
  const d = randData(24);
  // reshape shares data and passes gradients through unchanged (checked via a follow-up op)
  check(tt, 'reshape', gradCheck(([x]) => mul(reshape(x, [4, -1]), reshape(x, [4, 6])), ([x]) => x.map((v) => v * v), [{ data: d, shape }]));
  tt.same(reshape(tensor(d, shape), [-1, 4]).shape, [6, 4]);
  tt.throws(() => reshape(tensor(d, shape), [5, -1]), /cannot reshape/);
  tt.same(unsqueeze(tensor(d, shape), -1).shape, [2, 3, 4, 1]);
  tt.same(squeeze(unsqueeze(tensor(d, shape), 1), 1).shape, shape);
  for (const perm of [[0, 2, 1], [2, 0, 1], [1, 2, 0]]) {
    const r = gradCheck(([x]) => permute(x, perm), ([x]) => refPermute(x, shape, perm), [{ data: d, shape }]);
    check(tt, `permute ${perm}`, r);
    tt.same(r.output.shape, perm.map((p) => shape[p]));
  }
  check(tt, 'transpose', gradCheck(([x]) => transpose(x, 0, -1), ([x]) => refPermute(x, shape, [2, 1, 0]), [{ data: d, shape }]));

  // slice along each axis
  for (const [axis, s, e] of [[0, 1, 2], [1, 0, 2], [2, 1, 4], [-1, -3, -1]] as const) {
    const ax = (axis + 3) % 3;
    const ss = s < 0 ? s + shape[ax] : s, ee = e < 0 ? e + shape[ax] : e;
    const ref = ([x]: Float64Array[]): Float64Array => {
      const out: number[] = [];
      for (let i = 0; i < 2; i++) for (let j = 0; j < 3; j++) for (let k = 0; k < 4; k++) {
        const c = [i, j, k][ax];
        if (c >= ss && c < ee) out.push(x[(i * 3 + j) * 4 + k]);
      }
      return Float64Array.from(out);
    };
    check(tt, `slice axis ${axis} ${s}:${e}`, gradCheck(([x]) => slice(x, axis, s, e), ref, [{ data: d, shape }]));
  }
  tt.throws(() => slice(tensor(d, shape), 1, 2, 5), /invalid for axis/);

  // concat / stack / split along the middle axis
  const a = randData(2 * 2 * 4), b = randData(2 * 3 * 4);
  const refCat = ([x, y]: Float64Array[]): Float64Array => {
    const out: number[] = [];
    for (let i = 0; i < 2; i++) {
      for (let j = 0; j < 2 * 4; j++) out.push(x[i * 8 + j]);
      for (let j = 0; j < 3 * 4; j++) out.push(y[i * 12 + j]);
    }
    return Float64Array.from(out);
  };
  const rc = gradCheck(([x, y]) => concat([x, y], 1), refCat, [{ data: a, shape: [2, 2, 4] }, { data: b, shape: [2, 3, 4] }]);
  check(tt, 'concat', rc);
  tt.same(rc.output.shape, [2, 5, 4]);
  const rs = gradCheck(([x, y]) => stack([x, y], 1), ([x, y]) => {
    const out: number[] = [];
    for (let i = 0; i < 2; i++) { for (let j = 0; j < 4; j++) out.push(x[i * 4 + j]); for (let j = 0; j < 4; j++) out.push(y[i * 4 + j]); }
    return Float64Array.from(out);
  }, [{ data: randData(8), shape: [2, 4] }, { data: randData(8), shape: [2, 4] }]);
  check(tt, 'stack', rs);
  tt.same(rs.output.shape, [2, 2, 4]);
  const parts = split(tensor(d, shape), [1, 2], 1);
  tt.same(parts.map((p) => p.shape), [[2, 1, 4], [2, 2, 4]]);
  tt.same(concat(parts, 1).toArray(), tensor(d, shape).toArray());
  tt.end();
});

t.test('gather-style ops', (tt) => {
  const shape = [3, 5, 2];
  const d = randData(30);
  const ids = Int32Array.from([4, 0, 4, 2]);
  for (const axis of [0, 1]) {
    const n = shape[axis];
    const id = Int32Array.from(ids.filter((v) => v < n));
    const ref = ([x]: Float64Array[]): Float64Array => {
      const os = shape.slice(); os[axis] = id.length;
      const out = new Float64Array(size(os));
      let p = 0;
      for (let i = 0; i < os[0]; i++) for (let j = 0; j < os[1]; j++) for (let k = 0; k < 2; k++) {
        const src = axis === 0 ? [id[i], j, k] : [i, id[j], k];
        out[p++] = x[(src[0] * 5 + src[1]) * 2 + src[2]];
      }
      return out;
    };
    check(tt, `indexSelect axis ${axis}`, gradCheck(([x]) => indexSelect(x, axis, id), ref, [{ data: d, shape }]));
  }
  tt.throws(() => indexSelect(tensor(d, shape), 0, Int32Array.from([3])), /out of range/);

  // indexAdd along axis 0 with a repeated id
  const addIds = Int32Array.from([1, 0, 1]);
  const refAdd = ([x, s]: Float64Array[]): Float64Array => {
    const out = Float64Array.from(x);
    for (let j = 0; j < 3; j++) for (let c = 0; c < 4; c++) out[addIds[j] * 4 + c] += s[j * 4 + c];
    return out;
  };
  check(tt, 'indexAdd', gradCheck(([x, s]) => indexAdd(x, 0, addIds, s), refAdd, [{ data: randData(12), shape: [3, 4] }, { data: randData(12), shape: [3, 4] }]));
  const refAdd1 = ([x, s]: Float64Array[]): Float64Array => {
    const out = Float64Array.from(x);
    for (let r = 0; r < 2; r++) for (let j = 0; j < 3; j++) out[r * 3 + addIds[j]] += s[r * 3 + j];
    return out;
  };
  check(tt, 'indexAdd axis 1', gradCheck(([x, s]) => indexAdd(x, 1, addIds, s), refAdd1, [{ data: randData(6), shape: [2, 3] }, { data: randData(6), shape: [2, 3] }]));

  // gather along the last axis and topk
  const gi = Int32Array.from([2, 0, 1, 1, 3, 3]);
  check(tt, 'gather', gradCheck(([x]) => gather(x, gi, 2), ([x]) => Float64Array.from(gi, (c, i) => x[Math.floor(i / 2) * 4 + c]), [{ data: randData(12), shape: [3, 4] }]));
  const x = tensor([0.1, 0.9, 0.5, 0.9, -1, 2, 3, 0], [2, 4], { requiresGrad: true });
  const { values, indices } = topk(x, 2);
  tt.same(Array.from(indices), [1, 3, 2, 1]);
  tt.same(values.toArray().map((v) => Math.round(v * 10) / 10), [0.9, 0.9, 3, 2]);
  sum(values).backward();
  tt.same(x.grad!.toArray(), [0, 1, 0, 1, 0, 1, 1, 0]);
  tt.end();
});
