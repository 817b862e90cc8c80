// matmul (2-d, batched, broadcast batch dims) and linear (both weight layouts,
// with/without bias, frozen weight): float32 vs float64 reference + gradients.
import t, { type Test } from 'tap';
import { Rng } from '../src/util/random.js';
import { gradCheck, matmul, linear, broadcastShapes, tensor } from '../src/tensor/index.js';

const rng = new Rng(11);
const randData = (n: number): number[] => Array.from({ length: n }, () => rng.normal());
const size = (s: readonly number[]): number => s.reduce((a, b) => a * b, 1);

function check(tt: Test, name: string, res: { forwardError: number; gradErrors: number[] }): void {
  tt.ok(res.forwardError < 1e-5, `${name}: forward error ${res.forwardError.toExponential(2)}`);
  res.gradErrors.forEach((e, i) => {
    if (!Number.isNaN(e)) tt.ok(e < 1e-3, `${name}: grad of input ${i} error ${e.toExponential(2)}`);
  });
}

/** float64 batched matmul with numpy batch broadcasting. */
function refMatmul(a: Float64Array, as: number[], b: Float64Array, bs: number[]): Float64Array {
  const m = as[as.length - 2], k = as[as.length - 1], n = bs[bs.length - 1];
  const ba = as.slice(0, -2), bb = bs.slice(0, -2);
  const batch = broadcastShapes(ba, bb);
  const nd = batch.length;
  const pa = Array(nd - ba.length).fill(1).concat(ba), pb = Array(nd - bb.length).fill(1).concat(bb);
  const out = new Float64Array(size(batch) * m * n);
  const idx = new Array(nd).fill(0);
  for (let bi = 0; bi < size(batch); bi++) {
    let ia = 0, ib = 0;
    for (let d = 0; d < nd; d++) {
      ia = ia * pa[d] + (pa[d] === 1 ? 0 : idx[d]);
      ib = ib * pb[d] + (pb[d] === 1 ? 0 : idx[d]);
    }
    for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) s += a[ia * m * k + i * k + p] * b[ib * k * n + p * n + j];
      out[bi * m * n + i * n + j] = s;
    }
    for (let d = nd - 1; d >= 0; d--) { if (++idx[d] < batch[d]) break; idx[d] = 0; }
  }
  return out;
}

t.test('matmul', (tt) => {
  const cases: Array<[number[], number[]]> = [
    [[1, 1], [1, 1]],
    [[3, 5], [5, 4]],
    [[1, 7], [7, 9]],        // 1×N
    [[9, 1], [1, 3]],        // N×1 inner 1
    [[2, 3, 5], [5, 4]],     // batch folds into rows
    [[2, 3, 5], [2, 5, 4]],  // equal batch
    [[2, 1, 3, 4], [3, 4, 2]], // broadcast batch dims on both sides
    [[3, 4], [2, 4, 5]],     // 2-d a against batched b
    [[2, 2, 3, 4], [1, 4, 6]],
    [[2, 3, 5], [1, 5, 4]],  // b's batch is all ones: folds into one GEMM
    [[1, 1, 3, 4], [2, 2, 4, 5]], // a shared by every item: stride-0 batched GEMM
  ];
  for (const [as, bs] of cases) {
    const res = gradCheck(([a, b]) => matmul(a, b), ([a, b]) => refMatmul(a, as, b, bs),
      [{ data: randData(size(as)), shape: as }, { data: randData(size(bs)), shape: bs }]);
    check(tt, `matmul ${JSON.stringify(as)}@${JSON.stringify(bs)}`, res);
  }
  // empty inner dimension: a zero matrix of the right shape
  const z = matmul(tensor([], [2, 3, 0]), tensor([], [0, 4]));
  tt.same(z.shape, [2, 3, 4]);
  tt.ok(z.toArray().every((v) => v === 0));
  tt.throws(() => gradCheck(([a, b]) => matmul(a, b), () => [], [{ data: randData(6), shape: [2, 3] }, { data: randData(8), shape: [4, 2] }]), /inner dimensions/);
  tt.end();
});

t.test('matmul on random batched shapes', (tt) => {
  const shapes = new Rng(5);
  for (let trial = 0; trial < 10; trial++) {
    const m = 1 + shapes.int(5), k = 1 + shapes.int(5), n = 1 + shapes.int(5);
    const nb = shapes.int(3);
    const batch = Array.from({ length: nb }, () => 1 + shapes.int(3));
    const derive = (): number[] => batch.slice(shapes.int(nb + 1)).map((d) => (shapes.uniform() < 0.3 ? 1 : d));
    const as = derive().concat([m, k]), bs = derive().concat([k, n]);
    check(tt, `matmul ${JSON.stringify(as)}@${JSON.stringify(bs)}`, gradCheck(([a, b]) => matmul(a, b), ([a, b]) => refMatmul(a, as, b, bs),
      [{ data: randData(size(as)), shape: as }, { data: randData(size(bs)), shape: bs }]));
  }
  tt.end();
});

t.test('linear', (tt) => {
  for (const layout of ['out_in', 'in_out'] as const) {
    for (const xs of [[5, 3], [2, 4, 3], [1, 3]]) {
      for (const withBias of [true, false]) {
        const nIn = 3, nOut = 6;
        const ws = layout === 'out_in' ? [nOut, nIn] : [nIn, nOut];
        const ref = ([x, w, b]: Float64Array[]): Float64Array => {
          const M = x.length / nIn;
          const out = new Float64Array(M * nOut);
          for (let r = 0; r < M; r++) for (let o = 0; o < nOut; o++) {
            let s = withBias ? b[o] : 0;
            for (let i = 0; i < nIn; i++) s += x[r * nIn + i] * (layout === 'out_in' ? w[o * nIn + i] : w[i * nOut + o]);
            out[r * nOut + o] = s;
          }
          return out;
        };
        const inputs = [{ data: randData(size(xs)), shape: xs }, { data: randData(nIn * nOut), shape: ws }];
        if (withBias) inputs.push({ data: randData(nOut), shape: [nOut] });
        const res = gradCheck((ts) => linear(ts[0], ts[1], ts[2] ?? null, layout), ref, inputs);
        check(tt, `linear ${layout} x${JSON.stringify(xs)} bias=${withBias}`, res);
        tt.same(res.output.shape, xs.slice(0, -1).concat([nOut]));
      }
    }
  }
  // A frozen weight gets no gradient while the input still does.
  const res = gradCheck(([x, w]) => linear(x, w), ([x, w]) => refMatmul(x, [4, 3], Float64Array.from({ length: 6 }, (_, i) => w[(i % 2) * 3 + Math.floor(i / 2)]), [3, 2]),
    [{ data: randData(12), shape: [4, 3] }, { data: randData(6), shape: [2, 3], requiresGrad: false }]);
  check(tt, 'linear frozen weight', res);
  tt.ok(Number.isNaN(res.gradErrors[1]));
  tt.end();
});
