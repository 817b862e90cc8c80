// Autograd engine semantics (accumulation, shared inputs, noGrad, frozen
// tensors, retainGrad, detach, deep graphs), AdamW against a float64
// reference, gradient clipping, and end-to-end training of an MLP and a tiny
// transformer block.
import t from 'tap';
import { Rng } from '../src/util/random.js';
import {
  Tensor, tensor, zeros, ones, full, randn, fromData, scalar, noGrad, isGradEnabled, enableGrad,
  add, mul, sum, scale, tanh, linear, reshape, transpose, split, embedding, layerNorm, attention,
  crossEntropy, mse, AdamW, clipGradNorm, rmsNorm, silu, rope,
} from '../src/tensor/index.js';

t.test('constructors', (tt) => {
  tt.same(zeros([2, 3]).shape, [2, 3]);
  tt.same(ones(3).toArray(), [1, 1, 1]);
  tt.same(full([2], 4.5).toArray(), [4.5, 4.5]);
  tt.equal(scalar(3).ndim, 0);
  tt.equal(scalar(3).item(), 3);
  const buf = new Float32Array([1, 2, 3, 4]);
  const w = fromData(buf, [2, 2]);
  tt.equal(w.data, buf, 'fromData does not copy');
  tt.not(tensor(buf, [2, 2]).data, buf, 'tensor copies');
  tt.throws(() => tensor([1, 2, 3], [2, 2]), /do not fit/);
  tt.throws(() => new Tensor(new Float32Array(3), [2, 2]), /needs 4/);
  const a = randn([1000], new Rng(1), 2);
  const b = randn([1000], new Rng(1), 2);
  tt.same(a.toArray(), b.toArray(), 'randn is reproducible for a seed');
  const m = a.toArray().reduce((s, v) => s + v, 0) / 1000;
  const sd = Math.sqrt(a.toArray().reduce((s, v) => s + (v - m) ** 2, 0) / 1000);
  tt.ok(Math.abs(m) < 0.2 && Math.abs(sd - 2) < 0.2, `randn mean ${m.toFixed(3)} std ${sd.toFixed(3)}`);
  tt.throws(() => scalar(1).backward(), /does not require grad/);
  tt.throws(() => tensor([1, 2], [2]).item(), /expected 1/);
  tt.end();
});

t.test('gradients accumulate, shared inputs add up, retainGrad keeps activations', (tt) => {
  const a = tensor([1, 2, 3], [3], { requiresGrad: true });
  const b = tensor([4, 5, 6], [3], { requiresGrad: true });
  // z = Σ (a·b + a): dz/da = b + 1, dz/db = a (diamond on a)
  const h = mul(a, b).retainGrad();
  const z = sum(add(h, a));
  z.backward();
  tt.same(a.grad!.toArray(), [5, 6, 7]);
  tt.same(b.grad!.toArray(), [1, 2, 3]);
  tt.same(h.grad!.toArray(), [1, 1, 1], 'retained activation gradient');
  // a second backward on a fresh graph accumulates into .grad
  sum(mul(a, b)).backward();
  tt.same(a.grad!.toArray(), [9, 11, 13]);
  a.zeroGrad();
  tt.equal(a.grad, null);
  // a graph is released after backward unless retainGraph is asked for
  const l = sum(mul(a, a));
  l.backward(undefined, { retainGraph: true });
  l.backward();
  tt.same(a.grad!.toArray(), [4, 8, 12], 'two passes through a retained graph add up');
  tt.throws(() => l.backward(), /already used by an earlier backward/);
  a.zeroGrad();
  tt.throws(() => sum(a).backward(tensor([1, 2], [2])), /does not match/);
  tt.throws(() => mul(a, b).backward(), /one-element/);
  tt.end();
});

t.test('noGrad records nothing; frozen tensors get no gradient', (tt) => {
  const x = tensor([1, 2, 3, 4, 5, 6], [2, 3], { requiresGrad: true });
  const w = tensor([1, 0, -1, 2, 1, 0], [2, 3]); // frozen weight (nn.Linear layout [out, in])
  tt.equal(isGradEnabled(), true);
  const y0 = noGrad(() => {
    tt.equal(isGradEnabled(), false);
    const inner = enableGrad(() => linear(x, w));
    tt.equal(inner.requiresGrad, true, 'enableGrad re-enables inside noGrad');
    return linear(x, w);
  });
  tt.equal(isGradEnabled(), true);
  tt.equal(y0.requiresGrad, false);
  tt.equal(y0.isLeaf, true, 'no graph node recorded');
  tt.throws(() => y0.backward(), /does not require grad/);
  tt.throws(() => noGrad(() => Promise.resolve(1)), /synchronous/);

  // frozen weight: only the input gets a gradient
  const y = linear(x, w);
  sum(y).backward();
  tt.equal(w.grad, null, 'frozen weight has no gradient');
  tt.same(x.grad!.toArray(), [3, 1, -1, 3, 1, -1]);

  // all inputs frozen: nothing recorded even with grad mode on
  const f = linear(w, w);
  tt.equal(f.requiresGrad, false);
  tt.equal(f.isLeaf, true);

  // detach cuts the graph
  const d = mul(x, 2).detach();
  tt.equal(d.requiresGrad, false);
  tt.end();
});

t.test('deep graphs do not overflow the stack', (tt) => {
  const x = tensor([0.5], [1], { requiresGrad: true });
  let y: Tensor = x;
  for (let i = 0; i < 20000; i++) y = scale(y, 1);
  sum(y).backward();
  tt.same(x.grad!.toArray(), [1]);
  tt.end();
});

t.test('AdamW matches a float64 reference', (tt) => {
  const rng = new Rng(5);
  const p0 = Array.from({ length: 10 }, () => rng.normal());
  const p = tensor(p0, [10], { requiresGrad: true });
  const frozenUntouched = tensor([1, 2], [2], { requiresGrad: true });
  const opt = new AdamW([p, frozenUntouched], { lr: 0.05, weightDecay: 0.1, beta1: 0.8, beta2: 0.95, eps: 1e-6 });
  // reference state
  const ref = Float64Array.from(p.data);
  const m = new Float64Array(10), v = new Float64Array(10);
  for (let step = 1; step <= 5; step++) {
    const gs = Array.from({ length: 10 }, () => rng.normal());
    p.grad = tensor(gs, [10]);
    opt.step();
    for (let i = 0; i < 10; i++) {
      const g = Math.fround(gs[i]);
      ref[i] -= 0.05 * 0.1 * ref[i];
      m[i] = 0.8 * m[i] + 0.2 * g;
      v[i] = 0.95 * v[i] + 0.05 * g * g;
      const mh = m[i] / (1 - 0.8 ** step), vh = v[i] / (1 - 0.95 ** step);
      ref[i] -= (0.05 * mh) / (Math.sqrt(vh) + 1e-6);
    }
    opt.zeroGrad();
    tt.equal(p.grad, null);
  }
  let err = 0;
  for (let i = 0; i < 10; i++) err = Math.max(err, Math.abs(p.data[i] - ref[i]));
  tt.ok(err < 1e-5, `AdamW max error ${err.toExponential(2)}`);
  tt.same(frozenUntouched.toArray(), [1, 2], 'a parameter without grad is not stepped (nor decayed)');
  tt.throws(() => new AdamW([p, p], { lr: 0.1 }), /twice/);
  tt.end();
});

t.test('clipGradNorm', (tt) => {
  const a = tensor([0, 0], [2], { requiresGrad: true });
  const b = tensor([0], [1], { requiresGrad: true });
  a.grad = tensor([3, 0], [2]);
  b.grad = tensor([4], [1]);
  const n = clipGradNorm([a, b], 1);
  tt.ok(Math.abs(n - 5) < 1e-6);
  tt.ok(Math.abs(a.grad.data[0] - 0.6) < 1e-5 && Math.abs(b.grad.data[0] - 0.8) < 1e-5);
  const n2 = clipGradNorm([a, b], 10);
  tt.ok(Math.abs(n2 - 1) < 1e-4);
  tt.ok(Math.abs(a.grad.data[0] - 0.6) < 1e-5, 'below the limit nothing changes');
  tt.end();
});

t.test('an MLP learns a regression with AdamW', (tt) => {
  const rng = new Rng(42);
  const N = 64, I = 4, Hd = 16;
  const x = randn([N, I], rng);
  // target: a fixed nonlinear function of x
  const yt = tensor(Array.from({ length: N }, (_, r) => Math.sin(x.data[r * I]) + x.data[r * I + 1] * x.data[r * I + 2]), [N, 1]);
  const w1 = randn([Hd, I], rng, 0.5, { requiresGrad: true });
  const b1 = zeros([Hd], { requiresGrad: true });
  const w2 = randn([1, Hd], rng, 0.3, { requiresGrad: true });
  const b2 = zeros([1], { requiresGrad: true });
  const params = [w1, b1, w2, b2];
  const opt = new AdamW(params, { lr: 0.02, weightDecay: 0 });
  const lossAt = (): Tensor => mse(linear(tanh(linear(x, w1, b1)), w2, b2), yt);
  const first = noGrad(lossAt).item();
  for (let i = 0; i < 300; i++) {
    opt.zeroGrad();
    lossAt().backward();
    clipGradNorm(params, 5);
    opt.step();
  }
  const last = noGrad(lossAt).item();
  tt.ok(last < first * 0.1, `MLP loss ${first.toFixed(4)} → ${last.toFixed(4)}`);
  tt.end();
});

t.test('a tiny transformer block learns to copy the previous token', (tt) => {
  const rng = new Rng(3);
  const V = 8, D = 16, H = 2, Dh = D / H, T = 6, B = 4;
  const p = (shape: number[], std: number): Tensor => randn(shape, rng, std, { requiresGrad: true });
  const wte = p([V, D], 0.3), wpe = p([T, D], 0.3);
  const ln1g = ones([D], { requiresGrad: true }), ln1b = zeros([D], { requiresGrad: true });
  const wqkv = p([3 * D, D], 0.2), wo = p([D, D], 0.2);
  const rmsW = ones([D], { requiresGrad: true });
  const wUp = p([2 * D, D], 0.2), wDown = p([D, 2 * D], 0.2);
  const params = [wte, wpe, ln1g, ln1b, wqkv, wo, rmsW, wUp, wDown];
  const positions = Int32Array.from({ length: T }, (_, i) => i);
  const seqs = (): { ids: Int32Array; targets: Int32Array } => {
    const ids = Int32Array.from({ length: B * T }, () => rng.int(V));
    // target at position t is the token at t−1 (ignored at t = 0)
    const targets = Int32Array.from(ids, (_, i) => (i % T === 0 ? -100 : ids[i - 1]));
    return { ids, targets };
  };
  const forward = (ids: Int32Array, targets: Int32Array): Tensor => {
    const posIds = Int32Array.from({ length: B * T }, (_, i) => i % T);
    let h = add(embedding(wte, ids, [B, T]), embedding(wpe, posIds, [B, T]));
    const qkv = linear(layerNorm(h, ln1g, ln1b), wqkv); // [B, T, 3D]
    const [q, k, v] = split(qkv, [D, D, D], 2).map((x) => transpose(reshape(x, [B, T, H, Dh]), 1, 2)); // [B, H, T, Dh]
    const att = attention(rope(q, positions), rope(k, positions), v, { causal: true });
    h = add(h, linear(reshape(transpose(att, 1, 2), [B, T, D]), wo));
    h = add(h, linear(silu(linear(rmsNorm(h, rmsW), wUp)), wDown));
    const logits = linear(h, wte); // tied head
    return crossEntropy(reshape(logits, [B * T, V]), targets);
  };
  const opt = new AdamW(params, { lr: 0.02, weightDecay: 0.01 });
  const evalBatch = seqs();
  const first = noGrad(() => forward(evalBatch.ids, evalBatch.targets)).item();
  for (let i = 0; i < 150; i++) {
    const { ids, targets } = seqs();
    opt.zeroGrad();
    forward(ids, targets).backward();
    clipGradNorm(params, 1);
    opt.step();
  }
  const last = noGrad(() => forward(evalBatch.ids, evalBatch.targets)).item();
  tt.ok(first > 1.5, `initial loss ${first.toFixed(3)} is near ln(${V}) = ${Math.log(V).toFixed(3)}`);
  tt.ok(last < 0.5, `transformer loss ${first.toFixed(3)} → ${last.toFixed(3)}`);
  tt.ok(params.every((q) => q.grad !== null), 'every parameter received a gradient');
  tt.end();
});
