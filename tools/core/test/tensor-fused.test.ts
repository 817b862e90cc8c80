// Fused ops (loraLinear, attentionQKV) against float64 references and
// finite differences, and against the unfused op chains they replace; and
// the gradient-buffer recycling of backward: recycled buffers (stale values)
// must never leak into results, and nothing a caller can still read is reused.
import t, { type Test } from 'tap';
import { Rng } from '../src/util/random.js';
import {
  Tensor, add, attention, attentionQKV, crossEntropy, gelu, gradCheck, linear, loraLinear, mul, permute, reshape, scale, slice, sum,
  tensor, noGrad,
} from '../src/tensor/index.js';

const rng = new Rng(41);
const randData = (n: number, s = 1): number[] => Array.from({ length: n }, () => rng.normal() * s);
const size = (s: readonly number[]): number => s.reduce((a, b) => a * b, 1);

function check(tt: Test, name: string, res: { forwardError: number; gradErrors: number[] }, fwd = 1e-5, grad = 2e-3): void {
  tt.ok(res.forwardError < fwd, `${name}: forward error ${res.forwardError.toExponential(2)}`);
  res.gradErrors.forEach((e, i) => {
    if (!Number.isNaN(e)) tt.ok(e < grad, `${name}: grad of input ${i} error ${e.toExponential(2)}`);
  });
}

function maxRel(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0, m = 1e-6;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(b[i]));
  }
  return a.length === b.length ? d / m : Infinity;
}

/** float64 y = x·op(W) + bias + Σ f·((x·Aᵀ)·Bᵀ + tb) over rows of x. */
function refLora(
  x: Float64Array, M: number, nIn: number, nOut: number, w: Float64Array, outIn: boolean, bias: Float64Array | null,
  terms: Array<{ A: Float64Array; B: Float64Array; r: number; f: number; tb: Float64Array | null }>,
): Float64Array {
  const y = new Float64Array(M * nOut);
  for (let i = 0; i < M; i++) {
    for (let o = 0; o < nOut; o++) {
      let s = bias ? bias[o] : 0;
      for (let k = 0; k < nIn; k++) s += x[i * nIn + k] * (outIn ? w[o * nIn + k] : w[k * nOut + o]);
      for (const tm of terms) {
        let d = tm.tb ? tm.tb[o] : 0;
        for (let j = 0; j < tm.r; j++) {
          let h = 0;
          for (let k = 0; k < nIn; k++) h += x[i * nIn + k] * tm.A[j * nIn + k];
          d += h * tm.B[o * tm.r + j];
        }
        s += tm.f * d;
      }
      y[i * nOut + o] = s;
    }
  }
  return y;
}

t.test('loraLinear: forward and gradients vs float64 and finite differences', (tt) => {
  const nIn = 5, nOut = 4;
  const cases = [
    { lead: [3], layout: 'out_in' as const, bias: true, ranks: [2], factors: [1.5], tbias: [false], wGrad: false },
    { lead: [2, 3], layout: 'in_out' as const, bias: true, ranks: [3], factors: [-0.7], tbias: [false], wGrad: true },
    { lead: [4], layout: 'in_out' as const, bias: false, ranks: [2, 1], factors: [2, -1], tbias: [false, true], wGrad: false },
    { lead: [3], layout: 'out_in' as const, bias: false, ranks: [], factors: [], tbias: [], wGrad: true },
    { lead: [2, 2], layout: 'in_out' as const, bias: true, ranks: [2], factors: [0.8], tbias: [false], wGrad: false, act: 'gelu' as const },
    { lead: [3], layout: 'out_in' as const, bias: false, ranks: [], factors: [], tbias: [], wGrad: true, act: 'gelu' as const },
  ];
  // GPT-2's gelu_new (tanh approximation) in float64
  const refGelu = (v: number): number => 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3)));
  for (const c of cases) {
    const M = size(c.lead);
    const wShape = c.layout === 'out_in' ? [nOut, nIn] : [nIn, nOut];
    const inputs = [
      { data: randData(M * nIn), shape: [...c.lead, nIn] },
      { data: randData(nIn * nOut), shape: wShape, requiresGrad: c.wGrad },
    ];
    if (c.bias) inputs.push({ data: randData(nOut), shape: [nOut], requiresGrad: true });
    const termIdx: Array<{ a: number; b: number; tb: number }> = [];
    c.ranks.forEach((r, i) => {
      const a = inputs.length;
      inputs.push({ data: randData(r * nIn), shape: [r, nIn], requiresGrad: true });
      inputs.push({ data: randData(nOut * r), shape: [nOut, r], requiresGrad: true });
      let tb = -1;
      if (c.tbias[i]) {
        tb = inputs.length;
        inputs.push({ data: randData(nOut), shape: [nOut], requiresGrad: true });
      }
      termIdx.push({ a, b: a + 1, tb });
    });
    const act = 'act' in c ? c.act : undefined;
    const res = gradCheck(
      (ts) => loraLinear(ts[0], ts[1], c.bias ? ts[2] : null, c.layout,
        termIdx.map((ti, i) => ({ A: ts[ti.a], B: ts[ti.b], bias: ti.tb >= 0 ? ts[ti.tb] : null, factor: c.factors[i] })), act),
      (xs) => refLora(xs[0], M, nIn, nOut, xs[1], c.layout === 'out_in', c.bias ? xs[2] : null,
        termIdx.map((ti, i) => ({ A: xs[ti.a], B: xs[ti.b], r: c.ranks[i], f: c.factors[i], tb: ti.tb >= 0 ? xs[ti.tb] : null }))).map(act ? refGelu : (v) => v),
      inputs,
    );
    check(tt, `loraLinear ${JSON.stringify(c)}`, res);
    tt.same(res.output.shape, [...c.lead, nOut]);
  }
  tt.throws(() => loraLinear(tensor(randData(10), [2, 5]), tensor(randData(20), [4, 5]), null, 'out_in',
    [{ A: tensor(randData(10), [2, 5]), B: tensor(randData(12), [4, 3]), factor: 1 }]), /must be \[r, 5\] and \[4, r\]/);
  tt.end();
});

/** The chain loraLinear replaces: linear, then per term linear(x, A) → scale → linear(·, B) → add. */
function unfusedLora(x: Tensor, w: Tensor, b: Tensor | null, layout: 'out_in' | 'in_out', terms: Array<{ A: Tensor; B: Tensor; factor: number }>): Tensor {
  let y = linear(x, w, b, layout);
  for (const tm of terms) y = add(y, linear(scale(linear(x, tm.A), tm.factor), tm.B));
  return y;
}

t.test('loraLinear matches the unfused chain at pooled sizes, step after step', (tt) => {
  // Sizes over the pool's threshold, so later steps run on recycled buffers.
  const M = 96, nIn = 48, nOut = 64, r = 4;
  const x0 = randData(M * nIn), w0 = randData(nIn * nOut, 0.2), b0 = randData(nOut), A0 = randData(r * nIn, 0.3), B0 = randData(nOut * r, 0.3);
  const run = (fused: boolean, act = false): { y: Float32Array; gx: Float32Array; gA: Float32Array; gB: Float32Array } => {
    const x = tensor(x0, [2, M / 2, nIn], { requiresGrad: true });
    const w = tensor(w0, [nIn, nOut]);
    const b = tensor(b0, [nOut]);
    const A = tensor(A0, [r, nIn], { requiresGrad: true });
    const B = tensor(B0, [nOut, r], { requiresGrad: true });
    const terms = [{ A, B, factor: 2 }];
    // x also feeds a second consumer, so its gradient is accumulated into.
    const y = fused ? loraLinear(x, w, b, 'in_out', terms, act ? 'gelu' : undefined)
      : act ? gelu(unfusedLora(x, w, b, 'in_out', terms)) : unfusedLora(x, w, b, 'in_out', terms);
    const loss = add(sum(mul(y, y)), sum(mul(x, x)));
    loss.backward();
    return { y: y.data.slice(), gx: x.grad!.data, gA: A.grad!.data, gB: B.grad!.data };
  };
  const ref = run(false);
  for (let step = 0; step < 3; step++) {
    const got = run(true);
    tt.ok(maxRel(got.y, ref.y) < 1e-5, `step ${step}: output`);
    tt.ok(maxRel(got.gx, ref.gx) < 1e-4, `step ${step}: grad x ${maxRel(got.gx, ref.gx).toExponential(2)}`);
    tt.ok(maxRel(got.gA, ref.gA) < 1e-4, `step ${step}: grad A ${maxRel(got.gA, ref.gA).toExponential(2)}`);
    tt.ok(maxRel(got.gB, ref.gB) < 1e-4, `step ${step}: grad B ${maxRel(got.gB, ref.gB).toExponential(2)}`);
  }
  const refAct = run(false, true);
  for (let step = 0; step < 3; step++) {
    const got = run(true, true);
    tt.ok(maxRel(got.y, refAct.y) < 1e-5, `gelu, step ${step}: output`);
    tt.ok(maxRel(got.gx, refAct.gx) < 1e-4, `gelu, step ${step}: grad x ${maxRel(got.gx, refAct.gx).toExponential(2)}`);
    tt.ok(maxRel(got.gA, refAct.gA) < 1e-4, `gelu, step ${step}: grad A`);
    tt.ok(maxRel(got.gB, refAct.gB) < 1e-4, `gelu, step ${step}: grad B`);
  }
  tt.end();
});

/** The split/merge attentionQKV replaces: [B,T,3HD] → q,k,v [B,H,T,D] → attention → [B,T,HD]. */
function unfusedQKV(qkv: Tensor, heads: number, opts: { causal?: boolean; keyPad?: Uint8Array; scale?: number }): Tensor {
  const [B, T, W] = qkv.shape;
  const D = W / (3 * heads);
  const qkvh = permute(reshape(qkv, [B, T, 3, heads, D]), [2, 0, 3, 1, 4]);
  const part = (j: number): Tensor => reshape(slice(qkvh, 0, j, j + 1), [B, heads, T, D]);
  const o = attention(part(0), part(1), part(2), opts);
  return reshape(permute(o, [0, 2, 1, 3]), [B, T, heads * D]);
}

/** float64 attention on the packed layout. */
function refQKV(x: Float64Array, B: number, T: number, H: number, D: number, causal: boolean, keyPad: Uint8Array | undefined, sc: number): Float64Array {
  const W = 3 * H * D;
  const out = new Float64Array(B * T * H * D);
  for (let b = 0; b < B; b++) for (let h = 0; h < H; h++) for (let t = 0; t < T; t++) {
    const s = new Float64Array(T);
    const ok: boolean[] = [];
    let m = -Infinity;
    for (let j = 0; j < T; j++) {
      ok.push((!causal || j <= t) && (!keyPad || keyPad[b * T + j] === 1));
      let d = 0;
      for (let e = 0; e < D; e++) d += x[(b * T + t) * W + h * D + e] * x[(b * T + j) * W + H * D + h * D + e];
      s[j] = d * sc;
      if (ok[j]) m = Math.max(m, s[j]);
    }
    if (m === -Infinity) continue;
    let z = 0;
    for (let j = 0; j < T; j++) if (ok[j]) z += Math.exp(s[j] - m);
    for (let e = 0; e < D; e++) {
      let acc = 0;
      for (let j = 0; j < T; j++) if (ok[j]) acc += (Math.exp(s[j] - m) / z) * x[(b * T + j) * W + 2 * H * D + h * D + e];
      out[(b * T + t) * H * D + h * D + e] = acc;
    }
  }
  return out;
}

t.test('attentionQKV: forward and gradients vs float64 and finite differences', (tt) => {
  const cases = [
    { B: 1, T: 1, H: 1, D: 2, causal: false, pad: false, scale: undefined },
    { B: 2, T: 4, H: 2, D: 3, causal: true, pad: false, scale: undefined },
    { B: 2, T: 3, H: 3, D: 2, causal: true, pad: true, scale: undefined },
    { B: 1, T: 5, H: 2, D: 4, causal: false, pad: true, scale: 0.3 },
  ];
  for (const c of cases) {
    const keyPad = c.pad ? Uint8Array.from({ length: c.B * c.T }, (_, i) => (i % c.T === 0 ? 0 : 1)) : undefined;
    const sc = c.scale ?? 1 / Math.sqrt(c.D);
    const shape = [c.B, c.T, 3 * c.H * c.D];
    const res = gradCheck(([x]) => attentionQKV(x, c.H, { causal: c.causal, keyPad, scale: c.scale }),
      ([x]) => refQKV(x, c.B, c.T, c.H, c.D, c.causal, keyPad, sc), [{ data: randData(size(shape)), shape }]);
    check(tt, `attentionQKV ${JSON.stringify(c)}`, res);
    tt.same(res.output.shape, [c.B, c.T, c.H * c.D]);
  }
  tt.throws(() => attentionQKV(tensor(randData(20), [1, 2, 10]), 2), /not 3 × 2 heads/);
  tt.throws(() => attentionQKV(tensor(randData(12), [1, 2, 6]), 1, { keyPad: new Uint8Array(3) }), /keyPad has 3 entries/);
  tt.end();
});

t.test('attentionQKV matches split + attention + merge at pooled sizes, step after step', (tt) => {
  const B = 2, T = 24, H = 4, D = 8;
  const x0 = randData(B * T * 3 * H * D);
  const keyPad = Uint8Array.from({ length: B * T }, (_, i) => (i === T ? 0 : 1));
  const run = (fused: boolean): { y: Float32Array; gx: Float32Array } => {
    const x = tensor(x0, [B, T, 3 * H * D], { requiresGrad: true });
    const opts = { causal: true, keyPad };
    const y = fused ? attentionQKV(x, H, opts) : unfusedQKV(x, H, opts);
    sum(mul(y, y)).backward();
    return { y: y.data.slice(), gx: x.grad!.data };
  };
  const ref = run(false);
  for (let step = 0; step < 3; step++) {
    const got = run(true);
    tt.ok(maxRel(got.y, ref.y) < 1e-5, `step ${step}: output`);
    tt.ok(maxRel(got.gx, ref.gx) < 1e-4, `step ${step}: grad ${maxRel(got.gx, ref.gx).toExponential(2)}`);
  }
  // noGrad: same values, nothing recorded
  const y = noGrad(() => attentionQKV(tensor(x0, [B, T, 3 * H * D], { requiresGrad: true }), H, { causal: true, keyPad }));
  tt.equal(y.requiresGrad, false);
  tt.ok(maxRel(y.data, ref.y) < 1e-5, 'noGrad output');
  tt.end();
});

t.test('recycled gradient buffers never show through', (tt) => {
  // retainGraph: a second backward re-reads what the closures saved; it must
  // not have been recycled by the first (the gradients exactly double).
  const M = 64, nIn = 32, nOut = 48, V = 40;
  const x = tensor(randData(M * nIn), [M, nIn], { requiresGrad: true });
  const w = tensor(randData(nIn * 3 * nOut, 0.2), [nIn, 3 * nOut]);
  // rank 16: x·Aᵀ (64 × 16) is big enough to be recycled
  const A = tensor(randData(16 * nIn, 0.3), [16, nIn], { requiresGrad: true });
  const B = tensor(randData(3 * nOut * 16, 0.3), [3 * nOut, 16], { requiresGrad: true });
  const head = tensor(randData(nOut * V, 0.2), [nOut, V]);
  const targets = Int32Array.from({ length: 2 * (M / 2 - 1) }, (_, i) => (i * 7) % V);
  const qkv = loraLinear(reshape(x, [2, M / 2, nIn]), w, null, 'in_out', [{ A, B, factor: 0.5 }]);
  const o = attentionQKV(qkv, 4, { causal: true });
  const logits = linear(o, head, null, 'in_out');
  const loss = crossEntropy(reshape(slice(logits, 1, 0, M / 2 - 1), [2 * (M / 2 - 1), V]), targets);
  loss.backward(undefined, { retainGraph: true });
  const g1 = [x.grad!.data.slice(), A.grad!.data.slice(), B.grad!.data.slice()];
  // Churn the pool with unrelated work of the same sizes between the two backwards.
  for (let i = 0; i < 3; i++) {
    const z = tensor(randData(M * 3 * nOut), [M, 3 * nOut], { requiresGrad: true });
    sum(mul(scale(z, 3), z)).backward();
  }
  loss.backward();
  const g2 = [x.grad!.data, A.grad!.data, B.grad!.data];
  ['x', 'A', 'B'].forEach((n, i) => {
    const twice = g1[i].map((v) => 2 * v);
    tt.ok(maxRel(g2[i], twice) < 1e-5, `grad ${n} doubled after a second backward (${maxRel(g2[i], twice).toExponential(2)})`);
  });
  // The same for plain attention's saved probabilities (B·H·T·S = 1152 floats).
  const qs = [1, 2, 24, 8];
  const q = tensor(randData(size(qs)), qs, { requiresGrad: true });
  const k = tensor(randData(size(qs)), qs, { requiresGrad: true });
  const v = tensor(randData(size(qs)), qs, { requiresGrad: true });
  const att = sum(mul(attention(q, k, v, { causal: true }), tensor(randData(size(qs)), qs)));
  att.backward(undefined, { retainGraph: true });
  const a1 = [q.grad!.data.slice(), k.grad!.data.slice(), v.grad!.data.slice()];
  for (let i = 0; i < 3; i++) {
    const z = tensor(randData(1152), [1152], { requiresGrad: true });
    sum(mul(scale(z, 3), z)).backward();
  }
  att.backward();
  ['q', 'k', 'v'].forEach((n, i) => {
    const twice = a1[i].map((x) => 2 * x);
    const got = [q, k, v][i].grad!.data;
    tt.ok(maxRel(got, twice) < 1e-5, `attention grad ${n} doubled after a second backward (${maxRel(got, twice).toExponential(2)})`);
  });
  // A user-held gradient is never recycled: later backwards leave it alone.
  const held = x.grad!.data.slice();
  for (let i = 0; i < 3; i++) {
    const z = tensor(randData(M * nIn), [M, nIn], { requiresGrad: true });
    sum(mul(z, z)).backward();
  }
  tt.same(Array.from(x.grad!.data), Array.from(held), 'leaf gradient unchanged by later backwards');
  tt.end();
});
