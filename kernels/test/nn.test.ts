import t from 'tap';
import { k, rng, randn, close } from './helpers.js';

const softmaxRef = (x: ArrayLike<number>, allowed: (j: number) => boolean): number[] => {
  const n = x.length;
  let m = -Infinity;
  for (let j = 0; j < n; j++) if (allowed(j)) m = Math.max(m, x[j]);
  if (m === -Infinity) return new Array(n).fill(0);
  let s = 0;
  for (let j = 0; j < n; j++) if (allowed(j)) s += Math.exp(x[j] - m);
  return Array.from({ length: n }, (_, j) => (allowed(j) ? Math.exp(x[j] - m) / s : 0));
};

t.test('softmax: plain, causal, key padding, both', async (t) => {
  const r = rng(11);
  for (const [rows, cols] of [[1, 1], [1, 17], [9, 1], [6, 33], [40, 1000]]) {
    const x = randn(rows * cols, r, 5);
    const out = new Float32Array(rows * cols);
    k.softmax(x, out, rows, cols);
    const want: number[] = [];
    for (let i = 0; i < rows; i++) want.push(...softmaxRef(x.subarray(i * cols, (i + 1) * cols), () => true));
    close(t, out, want, `softmax ${rows}×${cols}`, 1e-7, 1e-5);
  }
  // [batch=2, heads=3, queryLen=4, cols=6] (cols > queryLen: a KV cache of 2 earlier tokens)
  const batch = 2, heads = 3, q = 4, cols = 6, rows = batch * heads * q;
  const x = randn(rows * cols, r, 3);
  const keyPad = new Uint8Array([1, 1, 0, 1, 1, 0, /* batch 1: */ 0, 0, 0, 0, 1, 1]);
  for (const mode of ['causal', 'pad', 'both'] as const) {
    const causal = mode !== 'pad', pad = mode !== 'causal';
    const out = new Float32Array(rows * cols).fill(7);
    k.softmax(x, out, rows, cols, {
      causal, queryLen: causal ? q : undefined,
      keyPad: pad ? keyPad : undefined, rowsPerBatch: pad ? heads * q : undefined,
    });
    const want: number[] = [];
    for (let i = 0; i < rows; i++) {
      const rr = i % q, b = Math.floor(i / (heads * q));
      want.push(...softmaxRef(x.subarray(i * cols, (i + 1) * cols),
        (j) => (!causal || j <= rr + (cols - q)) && (!pad || keyPad[b * cols + j] === 1)));
    }
    close(t, out, want, `softmax mask ${mode}`, 1e-7, 1e-5);
  }
  // Fully masked rows are zeros: causal with queryLen > cols masks early rows completely.
  const o2 = new Float32Array(4 * 2).fill(9);
  k.softmax(new Float32Array(8).fill(1), o2, 4, 2, { causal: true, queryLen: 4 });
  t.same(Array.from(o2), [0, 0, 0, 0, 1, 0, 0.5, 0.5], 'fully masked rows → 0; j <= r + cols − queryLen');
  // -inf logits behave like masks.
  const o3 = new Float32Array(3);
  k.softmax(new Float32Array([-Infinity, 0, -Infinity]), o3, 1, 3);
  t.same(Array.from(o3), [0, 1, 0], '-inf logits');
  t.throws(() => k.softmax(new Float32Array(6), new Float32Array(6), 2, 3, { causal: true }), /queryLen/);
  t.throws(() => k.softmax(new Float32Array(6), new Float32Array(6), 2, 3, { causal: true, queryLen: 4 }), /multiple/);
  t.throws(() => k.softmax(new Float32Array(6), new Float32Array(6), 2, 3, { keyPad: new Uint8Array(3) }), /rowsPerBatch/);
  t.throws(() => k.softmax(new Float32Array(6), new Float32Array(6), 2, 3, { keyPad: new Uint8Array(5), rowsPerBatch: 1 }), /keyPad has length 5/);
});

t.test('softmaxBackward and logSoftmax', async (t) => {
  const r = rng(12);
  for (const [rows, cols] of [[1, 1], [3, 7], [20, 301]]) {
    const x = randn(rows * cols, r, 3);
    const y = new Float32Array(rows * cols);
    k.softmax(x, y, rows, cols);
    const dy = randn(rows * cols, r);
    const dx = new Float32Array(rows * cols);
    k.softmaxBackward(y, dy, dx, rows, cols);
    const want: number[] = [];
    for (let i = 0; i < rows; i++) {
      let dot = 0;
      for (let j = 0; j < cols; j++) dot += y[i * cols + j] * dy[i * cols + j];
      for (let j = 0; j < cols; j++) want.push(y[i * cols + j] * (dy[i * cols + j] - dot));
    }
    close(t, dx, want, `softmaxBackward ${rows}×${cols}`, 1e-7, 1e-5);
    const acc = new Float32Array(rows * cols).fill(1);
    k.softmaxBackward(y, dy, acc, rows, cols, true);
    close(t, acc, want.map((w) => w + 1), 'softmaxBackward accumulate', 1e-6, 1e-5);
    const inPlace = dy.slice();
    k.softmaxBackward(y, inPlace, inPlace, rows, cols);
    close(t, inPlace, want, 'softmaxBackward in place (dx = dy)', 1e-7, 1e-5);
    const ls = new Float32Array(rows * cols);
    k.logSoftmax(x, ls, rows, cols);
    const wantLs: number[] = [];
    for (let i = 0; i < rows; i++) {
      const row = Array.from(x.subarray(i * cols, (i + 1) * cols));
      const m = Math.max(...row);
      const lse = m + Math.log(row.reduce((s, v) => s + Math.exp(v - m), 0));
      wantLs.push(...row.map((v) => v - lse));
    }
    close(t, ls, wantLs, `logSoftmax ${rows}×${cols}`, 1e-5, 1e-5);
  }
});

/** Central finite differences of f at x (float64). */
function numGrad(f: (x: Float64Array) => number, x: Float64Array, h = 1e-6): Float64Array {
  const g = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    x[i] = v + h; const fp = f(x);
    x[i] = v - h; const fm = f(x);
    x[i] = v;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

function lnRef(x: Float64Array, g: Float64Array | null, b: Float64Array | null, rows: number, cols: number, eps: number, rms: boolean): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) {
    const row = x.subarray(i * cols, (i + 1) * cols);
    const mu = rms ? 0 : row.reduce((s, v) => s + v, 0) / cols;
    const v = row.reduce((s, q) => s + (q - mu) ** 2, 0) / cols;
    const rs = 1 / Math.sqrt(v + eps);
    for (let j = 0; j < cols; j++) out[i * cols + j] = (row[j] - mu) * rs * (g ? g[j] : 1) + (b ? b[j] : 0);
  }
  return out;
}

t.test('layerNorm / rmsNorm forward and backward vs float64 finite differences', async (t) => {
  const r = rng(13);
  for (const [rows, cols] of [[1, 1], [1, 8], [5, 7], [3, 33], [64, 130]]) {
    for (const rms of [false, true]) {
      for (const affine of [true, false]) {
        const eps = 1e-5;
        const x = randn(rows * cols, r, 2);
        const g = affine ? randn(cols, r) : null;
        const b = affine && !rms ? randn(cols, r) : null;
        const out = new Float32Array(rows * cols), mean = new Float32Array(rows), rstd = new Float32Array(rows);
        const x64 = Float64Array.from(x), g64 = g && Float64Array.from(g), b64 = b && Float64Array.from(b);
        if (rms) k.rmsNorm(x, g, out, rows, cols, eps, rstd);
        else k.layerNorm(x, g, b, out, rows, cols, eps, mean, rstd);
        const name = `${rms ? 'rmsNorm' : 'layerNorm'} ${rows}×${cols} affine=${affine}`;
        close(t, out, lnRef(x64, g64, b64, rows, cols, eps, rms), name, 1e-5, 1e-4);
        if (rows * cols > 2000) continue; // finite differences below stay cheap
        const dy = randn(rows * cols, r);
        const loss = (xx: Float64Array, gg: Float64Array | null, bb: Float64Array | null) =>
          lnRef(xx, gg, bb, rows, cols, eps, rms).reduce((s, v, i) => s + v * dy[i], 0);
        const dx = new Float32Array(rows * cols);
        const dg = affine ? new Float32Array(cols).fill(0.5) : null; // accumulated into
        const db = affine && !rms ? new Float32Array(cols).fill(-0.25) : null;
        if (rms) k.rmsNormBackward(x, g, rstd, dy, dx, dg, rows, cols);
        else k.layerNormBackward(x, g, mean, rstd, dy, dx, dg, db, rows, cols);
        const wantDx = numGrad((xx) => loss(xx, g64, b64), x64);
        close(t, dx, wantDx, `${name} dx`, 2e-4, 2e-3);
        if (dg && g64) close(t, dg, Array.from(numGrad((gg) => loss(x64, gg, b64), g64), (v) => v + 0.5), `${name} dgamma (accumulated)`, 2e-4, 2e-3);
        if (db && b64) close(t, db, Array.from(numGrad((bb) => loss(x64, g64, bb), b64), (v) => v - 0.25), `${name} dbeta (accumulated)`, 2e-4, 2e-3);
      }
    }
  }
  t.throws(() => k.layerNorm(new Float32Array(6), new Float32Array(2), null, new Float32Array(6), 2, 3, 1e-5, new Float32Array(2), new Float32Array(2)), /gamma has length 2, expected 3/);
  t.throws(() => k.rmsNorm(new Float32Array(6), null, new Float32Array(6), 2, 3, -1, new Float32Array(2)), /eps/);
  t.throws(() => k.rmsNorm(new Float32Array(6), null, new Float32Array(6), 2, 3, 1e-6, new Float32Array(3)), /rstd has length 3/);
});

t.test('rope: HF rotate_half convention against the direct formula; inverse undoes it', async (t) => {
  const r = rng(14);
  for (const [batch, heads, seq, headDim, rot] of [[1, 1, 1, 2, 2], [2, 3, 5, 8, 8], [1, 2, 7, 64, 64], [2, 2, 3, 10, 6]]) {
    const n = batch * heads * seq * headDim;
    const x = randn(n, r);
    const positions = new Int32Array(batch * seq);
    for (let i = 0; i < positions.length; i++) positions[i] = Math.floor(r() * 4096);
    const theta = 10000;
    const out = new Float32Array(n);
    k.rope(x, out, batch, heads, seq, headDim, positions, theta, false, rot === headDim ? undefined : rot);
    const want = new Float64Array(n);
    const half = rot / 2;
    for (let b = 0; b < batch; b++)
      for (let h = 0; h < heads; h++)
        for (let s = 0; s < seq; s++) {
          const base = ((b * heads + h) * seq + s) * headDim;
          const pos = positions[b * seq + s];
          // q_embed = q·cos + rotate_half(q)·sin, cos/sin duplicated across both halves
          for (let d = 0; d < rot; d++) {
            const i = d % half;
            const ang = pos / Math.pow(theta, (2 * i) / rot);
            const rotated = d < half ? -x[base + d + half] : x[base + d - half];
            want[base + d] = x[base + d] * Math.cos(ang) + rotated * Math.sin(ang);
          }
          for (let d = rot; d < headDim; d++) want[base + d] = x[base + d];
        }
    close(t, out, want, `rope b${batch} h${heads} s${seq} d${headDim} rot${rot}`, 2e-6, 1e-5);
    const back = new Float32Array(n);
    k.rope(out, back, batch, heads, seq, headDim, positions, theta, true, rot === headDim ? undefined : rot);
    close(t, back, x, 'inverse rotation restores x', 1e-5, 1e-5);
  }
  t.throws(() => k.rope(new Float32Array(6), new Float32Array(6), 1, 1, 2, 3, new Int32Array(2), 10000), /even/);
  t.throws(() => k.rope(new Float32Array(8), new Float32Array(8), 1, 1, 2, 4, new Int32Array(1), 10000), /positions has length 1/);
});

t.test('embedding gather and scatter-add', async (t) => {
  const r = rng(15);
  const vocab = 11, dim = 5;
  const table = randn(vocab * dim, r);
  const ids = new Int32Array([3, 0, 10, 3, 3, 7]);
  const out = new Float32Array(ids.length * dim);
  k.embedding(table, vocab, dim, ids, out);
  const want: number[] = [];
  for (const id of ids) want.push(...table.subarray(id * dim, (id + 1) * dim));
  close(t, out, want, 'gather', 0, 0);
  const gy = randn(ids.length * dim, r);
  const gt = new Float32Array(vocab * dim).fill(1);
  k.embeddingBackward(gy, ids, gt, vocab, dim);
  const wantG = new Float64Array(vocab * dim).fill(1);
  ids.forEach((id, tt) => { for (let j = 0; j < dim; j++) wantG[id * dim + j] += gy[tt * dim + j]; });
  close(t, gt, wantG, 'scatter-add with repeated ids', 1e-6, 1e-6);
  // Larger, to go through the parallel path.
  const big = new Int32Array(3000).map(() => Math.floor(r() * 50));
  const gy2 = randn(big.length * 64, r);
  const gt2 = new Float32Array(50 * 64);
  k.embeddingBackward(gy2, big, gt2, 50, 64);
  const want2 = new Float64Array(50 * 64);
  big.forEach((id, tt) => { for (let j = 0; j < 64; j++) want2[id * 64 + j] += gy2[tt * 64 + j]; });
  close(t, gt2, want2, 'scatter-add 3000 ids', 1e-4, 1e-4);
  t.throws(() => k.embedding(table, vocab, dim, new Int32Array([11]), new Float32Array(dim)), /ids\[0\] = 11 is out of range/);
  t.throws(() => k.embedding(table, vocab, dim, new Int32Array([-1]), new Float32Array(dim)), /out of range/);
  t.throws(() => k.embeddingBackward(gy, new Int32Array([1, 2]), gt, vocab, dim), /gradOut has length/);
});

t.test('crossEntropy and klDiv against float64', async (t) => {
  const r = rng(16);
  for (const [rows, vocab] of [[1, 1], [4, 9], [7, 1001]]) {
    const logits = randn(rows * vocab, r, 4);
    const targets = new Int32Array(rows).map(() => Math.floor(r() * vocab));
    if (rows > 1) targets[1] = -100;
    const losses = new Float32Array(rows), grad = new Float32Array(rows * vocab).fill(5);
    k.crossEntropy(logits, targets, rows, vocab, losses, grad);
    const wantL: number[] = [], wantG: number[] = [];
    for (let i = 0; i < rows; i++) {
      const row = Array.from(logits.subarray(i * vocab, (i + 1) * vocab));
      if (targets[i] === -100) { wantL.push(0); wantG.push(...row.map(() => 0)); continue; }
      const m = Math.max(...row);
      const lse = m + Math.log(row.reduce((s, v) => s + Math.exp(v - m), 0));
      wantL.push(lse - row[targets[i]]);
      wantG.push(...row.map((v, j) => Math.exp(v - lse) - (j === targets[i] ? 1 : 0)));
    }
    close(t, losses, wantL, `crossEntropy loss ${rows}×${vocab}`, 1e-5, 1e-5);
    close(t, grad, wantG, `crossEntropy grad ${rows}×${vocab}`, 1e-6, 1e-5);
    const l2 = new Float32Array(rows);
    k.crossEntropy(logits, targets.map((v) => (v === -100 ? 0 : v)), rows, vocab, l2, null, 0);
    t.ok(targets.every((v, i) => (v === 0 || v === -100 ? l2[i] === 0 : l2[i] === losses[i])), 'custom ignoreIndex');

    const p = randn(rows * vocab, r, 3), q = randn(rows * vocab, r, 3);
    const kl = new Float32Array(rows), gq = new Float32Array(rows * vocab);
    k.klDiv(p, q, rows, vocab, kl, gq);
    const wantKl: number[] = [], wantGq: number[] = [];
    for (let i = 0; i < rows; i++) {
      const P = softmaxRef(p.subarray(i * vocab, (i + 1) * vocab), () => true);
      const Q = softmaxRef(q.subarray(i * vocab, (i + 1) * vocab), () => true);
      wantKl.push(P.reduce((s, pv, j) => s + pv * Math.log(pv / Q[j]), 0));
      wantGq.push(...Q.map((qv, j) => qv - P[j]));
    }
    close(t, kl, wantKl, `klDiv ${rows}×${vocab}`, 1e-6, 1e-4);
    close(t, gq, wantGq, `klDiv grad ${rows}×${vocab}`, 1e-7, 1e-5);
  }
  const same = new Float32Array([1, 2, 3]), o = new Float32Array(1);
  k.klDiv(same, same, 1, 3, o);
  t.ok(Math.abs(o[0]) < 1e-7, 'KL(P‖P) = 0');
  t.throws(() => k.crossEntropy(new Float32Array(6), new Int32Array([0, 3]), 2, 3, new Float32Array(2)), /targets\[1\] = 3 is out of range/);
  t.throws(() => k.crossEntropy(new Float32Array(6), new Int32Array([0]), 2, 3, new Float32Array(2)), /targets has length 1/);
  t.throws(() => k.klDiv(new Float32Array(6), new Float32Array(5), 2, 3, new Float32Array(2)), /qLogits has length 5/);
});

t.test('topk', async (t) => {
  const r = rng(17);
  for (const [rows, cols, kk] of [[1, 1, 1], [3, 10, 4], [5, 1000, 17], [2, 7, 7], [2, 5, 0]]) {
    const x = randn(rows * cols, r);
    // Inject ties: lower index must come first.
    if (cols >= 10) { x[2] = 5; x[8] = 5; }
    const values = new Float32Array(rows * kk), indices = new Int32Array(rows * kk);
    k.topk(x, rows, cols, kk, values, indices);
    const wantV: number[] = [], wantI: number[] = [];
    for (let i = 0; i < rows; i++) {
      const idx = Array.from({ length: cols }, (_, j) => j).sort((a, b) => x[i * cols + b] - x[i * cols + a] || a - b).slice(0, kk);
      wantI.push(...idx);
      wantV.push(...idx.map((j) => x[i * cols + j]));
    }
    t.same(Array.from(indices), wantI, `topk indices ${rows}×${cols} k=${kk}`);
    close(t, values, wantV, `topk values ${rows}×${cols} k=${kk}`, 0, 0);
  }
  const v = new Float32Array(2), ix = new Int32Array(2);
  k.topk(new Float32Array([1, NaN, 3]), 1, 3, 2, v, ix);
  t.same(Array.from(ix), [1, 2], 'NaN ranks first');
  t.throws(() => k.topk(new Float32Array(3), 1, 3, 4, new Float32Array(4), new Int32Array(4)), /k \(4\) is larger/);
});

t.test('adamw matches the torch.optim.AdamW update', async (t) => {
  const r = rng(18);
  const n = 50001;
  const p = randn(n, r), g0 = randn(n, r);
  const m = new Float32Array(n), v = new Float32Array(n);
  const o = { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1, step: 1 };
  const P = Float64Array.from(p), M = new Float64Array(n), V = new Float64Array(n);
  for (let step = 1; step <= 3; step++) {
    const g = g0.map((x) => x * step);
    k.adamw(p, g, m, v, { ...o, step });
    const bc1 = 1 - o.beta1 ** step, bc2 = 1 - o.beta2 ** step;
    for (let i = 0; i < n; i++) {
      P[i] *= 1 - o.lr * o.weightDecay;
      M[i] = o.beta1 * M[i] + (1 - o.beta1) * g[i];
      V[i] = o.beta2 * V[i] + (1 - o.beta2) * g[i] * g[i];
      P[i] -= (o.lr / bc1) * M[i] / (Math.sqrt(V[i]) / Math.sqrt(bc2) + o.eps);
    }
  }
  close(t, p, P, 'param after 3 steps', 1e-6, 1e-5);
  close(t, m, M, 'first moment', 1e-7, 1e-5);
  close(t, v, V, 'second moment', 1e-9, 1e-5);
  t.throws(() => k.adamw(p, g0, m, v, { ...o, step: 0 }), /step/);
  t.throws(() => k.adamw(p, g0.subarray(1), m, v, o), /grad has length/);
  t.throws(() => k.adamw(p, g0, m, v, { ...o, beta1: 1 }), /beta1/);
});
