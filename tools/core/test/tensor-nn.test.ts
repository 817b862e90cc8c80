// nn ops: softmax (masked), logSoftmax, norms, rope, embedding, attention
// (GQA, causal, padding, KV-cache alignment), losses. float32 vs float64
// reference, analytic gradients vs central differences.
import t, { type Test } from 'tap';
import { Rng } from '../src/util/random.js';
import {
  gradCheck, softmax, logSoftmax, layerNorm, rmsNorm, rope, embedding, attention, crossEntropy, klDiv, mse,
  tensor, noGrad,
} from '../src/tensor/index.js';

const rng = new Rng(23);
const randData = (n: number, s = 1): number[] => Array.from({ length: n }, () => rng.normal() * s);
const size = (s: readonly number[]): number => s.reduce((a, b) => a * b, 1);

function check(tt: Test, name: string, res: { forwardError: number; gradErrors: number[] }, fwd = 1e-5, grad = 1e-3): void {
  tt.ok(res.forwardError < fwd, `${name}: forward error ${res.forwardError.toExponential(2)}`);
  res.gradErrors.forEach((e, i) => {
    if (!Number.isNaN(e)) tt.ok(e < grad, `${name}: grad of input ${i} error ${e.toExponential(2)}`);
  });
}

/** Row softmax in float64; `allowed(row, col)` false masks an entry; all-masked rows are 0. */
function refSoftmaxRows(x: Float64Array, rows: number, cols: number, allowed: (r: number, c: number) => boolean = () => true): Float64Array {
  const out = new Float64Array(x.length);
  for (let r = 0; r < rows; r++) {
    let m = -Infinity;
    for (let c = 0; c < cols; c++) if (allowed(r, c)) m = Math.max(m, x[r * cols + c]);
    if (m === -Infinity) continue;
    let s = 0;
    for (let c = 0; c < cols; c++) if (allowed(r, c)) s += Math.exp(x[r * cols + c] - m);
    for (let c = 0; c < cols; c++) out[r * cols + c] = allowed(r, c) ? Math.exp(x[r * cols + c] - m) / s : 0;
  }
  return out;
}

t.test('softmax and logSoftmax', (tt) => {
  for (const shape of [[1, 1], [4, 7], [2, 3, 33]]) {
    const cols = shape[shape.length - 1], rows = size(shape) / cols;
    check(tt, `softmax ${JSON.stringify(shape)}`, gradCheck(([x]) => softmax(x), ([x]) => refSoftmaxRows(x, rows, cols), [{ data: randData(size(shape), 2), shape }]));
    check(tt, `logSoftmax ${JSON.stringify(shape)}`, gradCheck(([x]) => logSoftmax(x), ([x]) => refSoftmaxRows(x, rows, cols).map(Math.log), [{ data: randData(size(shape), 2), shape }]));
  }
  // causal over [B, T, S] with S > T (queries are the last T positions), plus padding per batch
  const B = 2, T = 3, S = 5;
  const keyPad = Uint8Array.from([1, 1, 1, 1, 1, 0, 0, 1, 1, 1]);
  const allowed = (r: number, c: number): boolean => {
    const b = Math.floor(r / T), q = r % T;
    return c <= q + (S - T) && keyPad[b * S + c] === 1;
  };
  check(tt, 'softmax causal+pad', gradCheck(([x]) => softmax(x, { causal: true, keyPad }), ([x]) => refSoftmaxRows(x, B * T, S, allowed), [{ data: randData(B * T * S), shape: [B, T, S] }]));
  // a fully masked row gives zeros, not NaN
  const y = softmax(tensor([1, 2, 3, 4], [2, 2]), { keyPad: Uint8Array.from([0, 0, 1, 0]) });
  tt.same(y.toArray(), [0, 0, 1, 0]);
  tt.end();
});

t.test('layerNorm and rmsNorm', (tt) => {
  for (const shape of [[1, 4], [3, 8], [2, 2, 19]]) {
    const cols = shape[shape.length - 1], rows = size(shape) / cols;
    const eps = 1e-5;
    const refLN = ([x, g, b]: Float64Array[]): Float64Array => {
      const out = new Float64Array(x.length);
      for (let r = 0; r < rows; r++) {
        let mu = 0; for (let c = 0; c < cols; c++) mu += x[r * cols + c]; mu /= cols;
        let v = 0; for (let c = 0; c < cols; c++) v += (x[r * cols + c] - mu) ** 2; v /= cols;
        for (let c = 0; c < cols; c++) out[r * cols + c] = ((x[r * cols + c] - mu) / Math.sqrt(v + eps)) * g[c] + b[c];
      }
      return out;
    };
    check(tt, `layerNorm ${JSON.stringify(shape)}`, gradCheck(([x, g, b]) => layerNorm(x, g, b, eps), refLN,
      [{ data: randData(size(shape)), shape }, { data: randData(cols), shape: [cols] }, { data: randData(cols), shape: [cols] }]), 1e-5, 2e-3);
    const refRMS = ([x, w]: Float64Array[]): Float64Array => {
      const out = new Float64Array(x.length);
      for (let r = 0; r < rows; r++) {
        let s = 0; for (let c = 0; c < cols; c++) s += x[r * cols + c] ** 2;
        const rs = 1 / Math.sqrt(s / cols + 1e-6);
        for (let c = 0; c < cols; c++) out[r * cols + c] = x[r * cols + c] * rs * w[c];
      }
      return out;
    };
    check(tt, `rmsNorm ${JSON.stringify(shape)}`, gradCheck(([x, w]) => rmsNorm(x, w, 1e-6), refRMS,
      [{ data: randData(size(shape)), shape }, { data: randData(cols), shape: [cols] }]), 1e-5, 2e-3);
    // frozen affine parameters (a frozen base model), and a frozen input with trainable affine
    for (const [xg, gg, bg] of [[true, false, false], [false, true, true]]) {
      const r = gradCheck(([x, g, b]) => layerNorm(x, g, b, eps), refLN, [
        { data: randData(size(shape)), shape, requiresGrad: xg },
        { data: randData(cols), shape: [cols], requiresGrad: gg }, { data: randData(cols), shape: [cols], requiresGrad: bg }]);
      check(tt, `layerNorm ${JSON.stringify(shape)} grads ${xg}/${gg}/${bg}`, r, 1e-5, 2e-3);
    }
    for (const [xg, wg] of [[true, false], [false, true]]) {
      const r = gradCheck(([x, w]) => rmsNorm(x, w, 1e-6), refRMS, [
        { data: randData(size(shape)), shape, requiresGrad: xg }, { data: randData(cols), shape: [cols], requiresGrad: wg }]);
      check(tt, `rmsNorm ${JSON.stringify(shape)} grads ${xg}/${wg}`, r, 1e-5, 2e-3);
    }
  }
  tt.end();
});

/** float64 HF-style rotary embedding on [B, H, T, D]. */
function refRope(x: Float64Array, [B, H, T, D]: number[], pos: Int32Array, theta: number): Float64Array {
  const out = new Float64Array(x.length);
  const half = D / 2;
  for (let b = 0; b < B; b++) for (let h = 0; h < H; h++) for (let t = 0; t < T; t++) {
    const base = ((b * H + h) * T + t) * D;
    const p = pos.length === T ? pos[t] : pos[b * T + t];
    for (let i = 0; i < half; i++) {
      const ang = p * Math.pow(theta, (-2 * i) / D);
      const c = Math.cos(ang), s = Math.sin(ang);
      const x1 = x[base + i], x2 = x[base + i + half];
      out[base + i] = x1 * c - x2 * s;
      out[base + i + half] = x2 * c + x1 * s;
    }
  }
  return out;
}

t.test('rope', (tt) => {
  const shape = [2, 3, 4, 6];
  const pos = Int32Array.from([0, 1, 2, 3, 5, 6, 7, 8]);
  check(tt, 'rope per-batch positions', gradCheck(([x]) => rope(x, pos, 10000), ([x]) => refRope(x, shape, pos, 10000), [{ data: randData(size(shape)), shape }]));
  const shared = Int32Array.from([3, 4, 5, 6]);
  check(tt, 'rope shared positions', gradCheck(([x]) => rope(x, shared, 500), ([x]) => refRope(x, shape, shared, 500), [{ data: randData(size(shape)), shape }]));
  tt.throws(() => rope(tensor(randData(24), [1, 1, 4, 6]), Int32Array.from([0, 1])), /positions/);
  tt.end();
});

t.test('embedding', (tt) => {
  const V = 6, D = 5;
  const ids = Int32Array.from([3, 0, 3, 5, 1, 3]);
  const res = gradCheck(([w]) => embedding(w, ids, [2, 3]), ([w]) => Float64Array.from({ length: ids.length * D }, (_, i) => w[ids[Math.floor(i / D)] * D + (i % D)]),
    [{ data: randData(V * D), shape: [V, D] }]);
  check(tt, 'embedding', res);
  tt.same(res.output.shape, [2, 3, D]);
  tt.throws(() => embedding(tensor(randData(V * D), [V, D]), Int32Array.from([6])), /out of range/);
  tt.end();
});

/** float64 reference attention with GQA, causal (aligned to the last T keys) and key padding. */
function refAttention(q: Float64Array, k: Float64Array, v: Float64Array, [B, H, T, D]: number[], Hkv: number, S: number,
  causal: boolean, keyPad: Uint8Array | undefined, scale: number): Float64Array {
  const out = new Float64Array(B * H * T * D);
  const grp = H / Hkv;
  for (let b = 0; b < B; b++) for (let h = 0; h < H; h++) {
    const kh = Math.floor(h / grp);
    for (let t = 0; t < T; t++) {
      const scores = new Float64Array(S);
      const ok: boolean[] = [];
      for (let s = 0; s < S; s++) {
        ok.push((!causal || s <= t + (S - T)) && (!keyPad || keyPad[b * S + s] === 1));
        let d = 0;
        for (let e = 0; e < D; e++) d += q[((b * H + h) * T + t) * D + e] * k[((b * Hkv + kh) * S + s) * D + e];
        scores[s] = d * scale;
      }
      const p = refSoftmaxRows(scores, 1, S, (_, c) => ok[c]);
      for (let e = 0; e < D; e++) {
        let acc = 0;
        for (let s = 0; s < S; s++) acc += p[s] * v[((b * Hkv + kh) * S + s) * D + e];
        out[((b * H + h) * T + t) * D + e] = acc;
      }
    }
  }
  return out;
}

t.test('attention', (tt) => {
  const cases: Array<{ B: number; H: number; Hkv: number; T: number; S: number; D: number; causal: boolean; pad: boolean }> = [
    { B: 1, H: 1, Hkv: 1, T: 1, S: 1, D: 2, causal: false, pad: false },
    { B: 2, H: 2, Hkv: 2, T: 4, S: 4, D: 3, causal: true, pad: false },
    { B: 2, H: 4, Hkv: 2, T: 3, S: 3, D: 4, causal: true, pad: true },     // GQA
    { B: 1, H: 6, Hkv: 2, T: 2, S: 5, D: 4, causal: true, pad: false },    // KV cache: T < S
    { B: 2, H: 3, Hkv: 1, T: 3, S: 4, D: 2, causal: false, pad: true },    // MQA + padding
  ];
  for (const c of cases) {
    const keyPad = c.pad ? Uint8Array.from({ length: c.B * c.S }, (_, i) => (i % c.S === 0 ? 0 : 1)) : undefined;
    const qs = [c.B, c.H, c.T, c.D], ks = [c.B, c.Hkv, c.S, c.D];
    const scale = 1 / Math.sqrt(c.D);
    const res = gradCheck(([q, k, v]) => attention(q, k, v, { causal: c.causal, keyPad }),
      ([q, k, v]) => refAttention(q, k, v, qs, c.Hkv, c.S, c.causal, keyPad, scale),
      [{ data: randData(size(qs)), shape: qs }, { data: randData(size(ks)), shape: ks }, { data: randData(size(ks)), shape: ks }]);
    check(tt, `attention ${JSON.stringify(c)}`, res, 1e-5, 2e-3);
  }
  // custom scale
  const qs = [1, 2, 2, 4], ks = [1, 1, 3, 4];
  check(tt, 'attention scale=0.3', gradCheck(([q, k, v]) => attention(q, k, v, { scale: 0.3 }),
    ([q, k, v]) => refAttention(q, k, v, qs, 1, 3, false, undefined, 0.3),
    [{ data: randData(16), shape: qs }, { data: randData(12), shape: ks }, { data: randData(12), shape: ks }]));
  tt.throws(() => attention(tensor(randData(24), [1, 3, 2, 4]), tensor(randData(24), [1, 2, 3, 4]), tensor(randData(24), [1, 2, 3, 4])), /multiple/);
  tt.end();
});

t.test('losses', (tt) => {
  const N = 5, V = 7;
  const targets = Int32Array.from([2, -100, 6, 0, -100]);
  const refCE = ([x]: Float64Array[]): Float64Array => {
    const lp = refSoftmaxRows(x, N, V).map(Math.log);
    let s = 0, n = 0;
    for (let r = 0; r < N; r++) if (targets[r] !== -100) { s -= lp[r * V + targets[r]]; n++; }
    return Float64Array.of(s / n);
  };
  const ce = gradCheck(([x]) => crossEntropy(x, targets), refCE, [{ data: randData(N * V, 2), shape: [N, V] }]);
  check(tt, 'crossEntropy with ignored rows', ce);
  tt.same(ce.output.shape, []);
  const refCEnone = ([x]: Float64Array[]): Float64Array => {
    const lp = refSoftmaxRows(x, N, V).map(Math.log);
    return Float64Array.from({ length: N }, (_, r) => (targets[r] === -100 ? 0 : -lp[r * V + targets[r]]));
  };
  check(tt, 'crossEntropy none', gradCheck(([x]) => crossEntropy(x, targets, -100, 'none'), refCEnone, [{ data: randData(N * V, 2), shape: [N, V] }]));
  const refCEsum = ([x]: Float64Array[]): Float64Array => Float64Array.of(refCEnone([x]).reduce((a, b) => a + b, 0));
  check(tt, 'crossEntropy sum, 3-d logits', gradCheck(([x]) => crossEntropy(x, targets, -100, 'sum'), refCEsum, [{ data: randData(N * V, 2), shape: [1, N, V] }]));
  // all rows ignored: zero loss, zero gradient (not NaN)
  const all = tensor(randData(2 * V), [2, V], { requiresGrad: true });
  const z = crossEntropy(all, Int32Array.from([-100, -100]));
  tt.equal(z.item(), 0);
  z.backward();
  tt.ok(all.grad === null || all.grad.toArray().every((v) => v === 0));
  tt.throws(() => crossEntropy(all, Int32Array.from([7, 0])), /out of range/);

  const refKL = ([p, q]: Float64Array[]): Float64Array => {
    const P = refSoftmaxRows(p, N, V), Q = refSoftmaxRows(q, N, V);
    let s = 0;
    for (let i = 0; i < P.length; i++) s += P[i] * (Math.log(P[i]) - Math.log(Q[i]));
    return Float64Array.of(s / N);
  };
  const kl = gradCheck(([p, q]) => klDiv(p, q), refKL, [{ data: randData(N * V), shape: [N, V], requiresGrad: false }, { data: randData(N * V), shape: [N, V] }]);
  check(tt, 'klDiv', kl);
  // KL of a distribution with itself is 0
  const same = tensor(randData(N * V), [N, V]);
  tt.ok(Math.abs(klDiv(same, same).item()) < 1e-6);

  const refMSE = ([a, b]: Float64Array[]): Float64Array => {
    let s = 0;
    for (let i = 0; i < a.length; i++) s += (a[i] - b[i]) ** 2;
    return Float64Array.of(s / a.length);
  };
  check(tt, 'mse', gradCheck(([a, b]) => mse(a, b), refMSE, [{ data: randData(12), shape: [3, 4] }, { data: randData(12), shape: [3, 4] }]));
  // under noGrad the losses record nothing
  const l = noGrad(() => crossEntropy(tensor(randData(N * V), [N, V], { requiresGrad: true }), targets));
  tt.equal(l.requiresGrad, false);
  tt.end();
});
