/**
 * Merge algorithms: QR/SVD against an independent reference (two-sided
 * Jacobi eigen-decomposition of ΔWᵀΔW written here), cat exactness,
 * Eckart–Young optimality of svd, TIES and DARE on hand-made cases.
 */
import t from 'tap';
import { Rng } from '../src/util/random.js';
import { createLora, LoraAdapter } from '../src/models/index.js';
import { fromData } from '../src/tensor/index.js';
import {
  adapterDelta, ablateBlocks, dareCombine, denseSvd, factoredSvd, jacobiSvd, mat, matmul64, mergeCat, mergeDare, mergeSvd, mergeTies,
  qr, scaleAdapter, tiesCombine, transpose64, trimTopK, type Mat,
} from '../src/merge/index.js';

function randMat(rows: number, cols: number, rng: Rng): Mat {
  return mat(rows, cols, Array.from({ length: rows * cols }, () => rng.normal()));
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** Independent reference: eigenvalues of a symmetric matrix by cyclic two-sided Jacobi rotations. */
function symEigenvalues(S: Mat): number[] {
  const n = S.rows;
  const a = Array.from({ length: n }, (_, i) => Array.from({ length: n }, (_, j) => S.data[i * n + j]));
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) if (i !== j) off += a[i][j] * a[i][j];
    if (off < 1e-26) break;
    for (let p = 0; p < n; p++) {
      for (let q = p + 1; q < n; q++) {
        if (a[p][q] === 0) continue;
        const theta = (a[q][q] - a[p][p]) / (2 * a[p][q]);
        const tt = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(tt * tt + 1), s = tt * c;
        for (let k = 0; k < n; k++) {
          const akp = a[k][p], akq = a[k][q];
          a[k][p] = c * akp - s * akq;
          a[k][q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const apk = a[p][k], aqk = a[q][k];
          a[p][k] = c * apk - s * aqk;
          a[q][k] = s * apk + c * aqk;
        }
      }
    }
  }
  return a.map((row, i) => row[i]).sort((x, y) => y - x);
}

function gram(M: Mat): Mat {
  return matmul64(transpose64(M), M);
}

function frob(a: ArrayLike<number>, b?: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - (b ? b[i] : 0);
    s += d * d;
  }
  return Math.sqrt(s);
}

/** Dense product of a merged adapter's module, factor included. */
function delta(ad: LoraAdapter, mod: string): Float64Array {
  return adapterDelta(ad, mod).data;
}

t.test('QR: Q orthonormal, R upper triangular, QR = A (tall, wide, rank-deficient)', async (t) => {
  const rng = new Rng(1);
  for (const [m, n] of [[9, 4], [4, 9], [6, 6]] as const) {
    const A = randMat(m, n, rng);
    const { Q, R } = qr(A);
    const p = Math.min(m, n);
    t.same([Q.rows, Q.cols, R.rows, R.cols], [m, p, p, n]);
    t.ok(maxAbsDiff(matmul64(Q, R).data, A.data) < 1e-12, `${m}×${n}: QR = A`);
    const QtQ = matmul64(transpose64(Q), Q);
    t.ok(maxAbsDiff(QtQ.data, mat(p, p, Array.from({ length: p * p }, (_, i) => (i % (p + 1) === 0 ? 1 : 0))).data) < 1e-12, 'QᵀQ = I');
    for (let i = 0; i < p; i++) for (let j = 0; j < i; j++) t.equal(R.data[i * n + j], 0);
  }
  // rank 2 matrix 6×5
  const L = matmul64(randMat(6, 2, rng), randMat(2, 5, rng));
  const { Q, R } = qr(L);
  t.ok(maxAbsDiff(matmul64(Q, R).data, L.data) < 1e-12, 'rank-deficient reconstructs');
});

t.test('Jacobi SVD: singular values match the eigenvalues of AᵀA (independent), reconstruction exact', async (t) => {
  const rng = new Rng(2);
  for (const [m, n] of [[12, 5], [5, 12], [7, 7]] as const) {
    const A = randMat(m, n, rng);
    const s = jacobiSvd(A);
    const eig = symEigenvalues(m >= n ? gram(A) : gram(transpose64(A)));
    const k = Math.min(m, n);
    for (let i = 0; i < k; i++) t.ok(Math.abs(s.S[i] * s.S[i] - eig[i]) < 1e-9 * Math.max(1, eig[0]), `σ${i}² = λ${i}`);
    const US = mat(m, k, Array.from({ length: m * k }, (_, i) => s.U.data[i] * s.S[i % k]));
    t.ok(maxAbsDiff(matmul64(US, transpose64(s.V)).data, A.data) < 1e-11, `${m}×${n}: U S Vᵀ = A`);
  }
});

t.test('factored SVD of B·A equals the dense SVD without forming B·A; denseSvd randomized path is close', async (t) => {
  const rng = new Rng(3);
  const B = randMat(40, 6, rng), A = randMat(6, 30, rng);
  const f = factoredSvd(B, A);
  const dense = matmul64(B, A);
  const eig = symEigenvalues(gram(transpose64(dense)).rows <= 30 ? gram(dense) : gram(transpose64(dense)));
  for (let i = 0; i < 6; i++) t.ok(Math.abs(f.S[i] ** 2 - eig[i]) < 1e-8 * eig[0], `σ${i}`);
  for (let i = 6; i < f.S.length; i++) t.ok(f.S[i] < 1e-10 * f.S[0], 'beyond rank 6 the values vanish');
  // randomized: a rank-5 matrix bigger than the exact limit is recovered to rounding
  const big = matmul64(randMat(60, 5, rng), randMat(5, 50, rng));
  const r = denseSvd(big, { rank: 5, exactLimit: 10 });
  t.equal(r.exact, false);
  const ex = denseSvd(big, { rank: 5 });
  t.equal(ex.exact, true);
  for (let i = 0; i < 5; i++) t.ok(Math.abs(r.S[i] - ex.S[i]) < 1e-9 * ex.S[0], `randomized σ${i} matches exact`);
});

function adapterOf(name: string, mods: Array<[string, number, number]>, r: number, seed: number, alpha = r): LoraAdapter {
  return createLora(name, mods, { r, alpha, seed, initBStd: 0.5 });
}

t.test('cat is exact: ΔW = Σ wᵢ fᵢ Bᵢ Aᵢ, modules of only some adapters kept, rank = Σ rᵢ, blocks ablate exactly', async (t) => {
  const a = adapterOf('a', [['m1', 8, 6], ['m2', 5, 7]], 2, 1, 4);
  const b = adapterOf('b', [['m1', 8, 6]], 3, 2, 3);
  const c = adapterOf('c', [['m3', 4, 4]], 1, 3, 2);
  const w = [0.5, -2, 1.5];
  const res = mergeCat([{ adapter: a, weight: w[0] }, { adapter: b, weight: w[1] }, { adapter: c, weight: w[2] }]);
  t.equal(res.adapter.r, 6);
  t.equal(res.adapter.factor, 1);
  t.same([...res.adapter.modules.keys()], ['m1', 'm2', 'm3']);
  t.same(res.blocks, [{ offset: 0, rank: 2 }, { offset: 2, rank: 3 }, { offset: 5, rank: 1 }]);
  const want1 = adapterDelta(a, 'm1', w[0]).data.map((v, i) => v + adapterDelta(b, 'm1', w[1]).data[i]);
  t.ok(maxAbsDiff(delta(res.adapter, 'm1'), want1) < 1e-6, 'm1 = wa·ΔWa + wb·ΔWb');
  t.ok(maxAbsDiff(delta(res.adapter, 'm2'), adapterDelta(a, 'm2', w[0]).data) < 1e-6, 'm2 only from a');
  t.ok(maxAbsDiff(delta(res.adapter, 'm3'), adapterDelta(c, 'm3', w[2]).data) < 1e-6, 'm3 only from c');
  const noB = ablateBlocks(res.adapter, [res.blocks![1]]);
  t.ok(maxAbsDiff(delta(noB, 'm1'), adapterDelta(a, 'm1', w[0]).data) < 1e-6, 'dropping b\'s block leaves a');
});

t.test('svd: full rank is exact; lower rank is Eckart–Young optimal and reports the energy kept', async (t) => {
  const a = adapterOf('a', [['m', 20, 16]], 3, 11);
  const b = adapterOf('b', [['m', 20, 16]], 4, 12, 8);
  const inputs = [{ adapter: a }, { adapter: b, weight: 0.7 }];
  // the exact float64 sum of the inputs' products (reference for everything below)
  const dense = adapterDelta(a, 'm').data.map((v, i) => v + adapterDelta(b, 'm', 0.7).data[i]);
  const full = mergeSvd(inputs, 7);
  t.ok(maxAbsDiff(delta(full.adapter, 'm'), dense) < 1e-6, 'rank 7 = Σ rᵢ reproduces the sum');
  t.ok(Math.abs(full.energy!.m - 1) < 1e-12);
  // independent σ² from the Gram matrix of the dense sum (16×16)
  const D = mat(16, 20, dense);
  const eig = symEigenvalues(gram(D)); // D is out×in = 16×20 → DᵀD 20×20; nonzero ones are σ²
  const total = eig.reduce((s, x) => s + Math.max(0, x), 0);
  for (const k of [1, 3, 5]) {
    const r = mergeSvd(inputs, k);
    const err = frob(delta(r.adapter, 'm'), dense);
    const dropped = Math.sqrt(eig.slice(k).reduce((s, x) => s + Math.max(0, x), 0));
    t.ok(Math.abs(err - dropped) < 1e-5 * Math.max(1, dropped), `rank ${k}: ‖ΔW − ΔW_k‖ = sqrt(Σ dropped σ²) (${err} vs ${dropped})`);
    t.ok(Math.abs(r.residual!.m - dropped) < 1e-6 * Math.max(1, dropped), 'residual reported');
    const kept = eig.slice(0, k).reduce((s, x) => s + x, 0) / total;
    t.ok(Math.abs(r.energy!.m - kept) < 1e-9, `rank ${k}: energy ${r.energy!.m} = ${kept}`);
    t.equal(r.adapter.r, k);
  }
  // rank above what exists pads with zeros and stays exact
  const over = mergeSvd(inputs, 9);
  t.equal(over.adapter.r, 9);
  t.ok(maxAbsDiff(delta(over.adapter, 'm'), dense) < 1e-6);
});

t.test('negate cancels: an adapter cat-merged with its negation has zero delta', async (t) => {
  const a = adapterOf('a', [['m', 6, 5]], 2, 21, 5);
  const n = scaleAdapter(a, -1);
  const res = mergeCat([{ adapter: a }, { adapter: n }]);
  t.ok(maxAbsDiff(delta(res.adapter, 'm'), new Float64Array(30)) < 1e-7);
  const s = scaleAdapter(a, 2.5);
  t.ok(maxAbsDiff(delta(s, 'm'), adapterDelta(a, 'm').data.map((v) => 2.5 * v)) < 1e-6, 'scale multiplies the delta');
});

t.test('TIES on a hand-made case: trim, elect, disjoint mean', async (t) => {
  const x = Float64Array.from([4, -1, 0.5, -3]);
  trimTopK(x, 0.5);
  t.same([...x], [4, 0, 0, -3], 'top 50% by magnitude kept');
  // three task vectors, density 1 (no trim): per entry
  const d1 = Float64Array.from([1, 2, -3, 1]);
  const d2 = Float64Array.from([3, -1, -1, -1]);
  const d3 = Float64Array.from([-1, -4, 5, 0]);
  // entry0: mass 3 > 0 → mean of {1,3} = 2; entry1: mass −3 → mean {−1,−4} = −2.5
  // entry2: mass 1 → {5} = 5; entry3: mass 0 → 0
  t.same([...tiesCombine([d1, d2, d3], 1)], [2, -2.5, 5, 0]);
  // density 0.5 trims first: d1 → [0,2,−3,0], d2 → [3,−1,0,0] (tie at |1|: −1 kept, 1 at idx3 also ≥ thr) 
  const e1 = Float64Array.from([0.1, 2, -3, 0.2]);
  const e2 = Float64Array.from([3, -1.5, 0.1, -0.2]);
  // e1 trimmed → [0, 2, −3, 0]; e2 → [3, −1.5, 0, 0]; entry1 mass 0.5 → {2} = 2
  t.same([...tiesCombine([e1, e2], 0.5)], [3, 2, -3, 0]);
  // through mergeTies: two adapters whose ΔW are known, full rank → the combined matrix exactly
  const mk = (name: string, B: number[], A: number[]) =>
    new LoraAdapter(name, 1, 1, new Map([['m', { A: fromData(Float32Array.from(A), [1, 2]), B: fromData(Float32Array.from(B), [2, 1]) }]]));
  const p = mk('p', [1, -1], [2, 1]); // ΔW = [[2,1],[-2,-1]]
  const q = mk('q', [1, 1], [-1, 3]); // ΔW = [[-1,3],[-1,3]]
  const r = mergeTies([{ adapter: p }, { adapter: q }], { rank: 2, density: 1 });
  // entries: (2,−1)→mass 1 → 2; (1,3)→2; (−2,−1)→−1.5; (−1,3)→mass 2 → 3
  t.ok(maxAbsDiff(delta(r.adapter, 'm'), [2, 2, -1.5, 3]) < 1e-6, 'ties merged ΔW');
  t.ok(Math.abs(r.energy!.m - 1) < 1e-12);
});

t.test('trimTopK keeps exactly the largest entries (checked against a full sort) on random data with ties and duplicates', async (t) => {
  const rng = new Rng(41);
  for (const [n, density] of [[1000, 0.2], [997, 0.5], [50, 0.02], [300, 0.999]] as const) {
    const d = Float64Array.from({ length: n }, () => Math.round(rng.normal() * 50) / 10); // many repeated magnitudes
    const sorted = Array.from(d, Math.abs).sort((x, y) => y - x);
    const thr = sorted[Math.ceil(density * n) - 1];
    const x = Float64Array.from(d);
    trimTopK(x, density);
    let bad = 0;
    for (let i = 0; i < n; i++) if (x[i] !== (Math.abs(d[i]) >= thr ? d[i] : 0)) bad++;
    t.equal(bad, 0, `n=${n} density=${density}: kept set = entries with |x| ≥ the k-th largest magnitude`);
  }
});

t.test('DARE: p = 0 is the plain sum; expectation preserved; deterministic under the seed', async (t) => {
  const d1 = Float64Array.from({ length: 2000 }, (_, i) => (i % 7) - 3);
  const d2 = Float64Array.from({ length: 2000 }, (_, i) => (i % 5) * 0.5);
  t.same([...dareCombine([d1, d2], 0, new Rng(1))], [...d1.map((v, i) => v + d2[i])]);
  const a = dareCombine([d1], 0.5, new Rng(7));
  const b = dareCombine([d1], 0.5, new Rng(7));
  const c = dareCombine([d1], 0.5, new Rng(8));
  t.same([...a], [...b], 'same seed, same masks');
  t.not(frob(a, c), 0, 'other seed, other masks');
  // survivors are exactly doubled, the rest zero; about half survive
  let kept = 0;
  for (let i = 0; i < d1.length; i++) {
    if (a[i] !== 0) {
      kept++;
      t.equal(a[i], 2 * d1[i]);
    }
  }
  const nonzero = d1.filter((v) => v !== 0).length;
  t.ok(Math.abs(kept / nonzero - 0.5) < 0.06, `about half kept (${kept}/${nonzero})`);
  const sumA = a.reduce((s, v) => s + v, 0), sumD = d1.reduce((s, v) => s + Math.abs(v), 0);
  t.ok(Math.abs(sumA - d1.reduce((s, v) => s + v, 0)) < 0.1 * sumD, 'sum preserved in expectation');
  // through mergeDare
  const ad = adapterOf('a', [['m', 10, 8], ['n', 6, 6]], 2, 31);
  const x = mergeDare([{ adapter: ad }], { rank: 6, drop: 0.3, seed: 5 });
  const y = mergeDare([{ adapter: ad }], { rank: 6, drop: 0.3, seed: 5 });
  t.same([...x.adapter.modules.get('m')!.B.data], [...y.adapter.modules.get('m')!.B.data]);
  const z = mergeDare([{ adapter: ad }], { rank: 8, drop: 0, seed: 5 });
  t.ok(maxAbsDiff(delta(z.adapter, 'm'), adapterDelta(ad, 'm').data) < 1e-6, 'drop 0, full rank: the adapter itself');
});

t.test('bad inputs are clear errors', async (t) => {
  const a = adapterOf('a', [['m', 6, 5]], 2, 1);
  const b = adapterOf('b', [['m', 7, 5]], 2, 2);
  t.throws(() => mergeCat([{ adapter: a }, { adapter: b }]), /module m: b maps 7 → 5 but an earlier adapter maps 6 → 5/);
  t.throws(() => mergeSvd([{ adapter: a }], 0), /--rank must be a positive integer/);
  t.throws(() => mergeTies([{ adapter: a }], { rank: 2, density: 0 }), /--density must be in \(0, 1\]/);
  t.throws(() => mergeDare([{ adapter: a }], { rank: 2, drop: 1, seed: 0 }), /--drop must be in \[0, 1\)/);
  t.throws(() => mergeCat([]), /no adapters/);
});

t.test('cat above every module\'s full rank is re-factored at that rank: the same ΔW, the rank bounded', async (t) => {
  // m1 is 10×6 (full rank 6), m2 7×9 (7): the cap is 7; five rank-3 inputs stack to 15
  const inputs = [0, 1, 2, 3, 4].map((k) => ({ adapter: adapterOf(`a${k}`, k === 2 ? [['m1', 6, 10]] : [['m1', 6, 10], ['m2', 9, 7]], 3, 40 + k, 6), weight: k === 3 ? -0.5 : 1 }));
  const res = mergeCat(inputs);
  t.equal(res.adapter.r, 7, 'rank = max over modules of min(in, out)');
  t.same(res.compacted, { from: 15, to: 7 });
  t.equal(res.blocks, undefined, 'no rank blocks once re-factored');
  for (const m of ['m1', 'm2']) {
    const want = new Float64Array(m === 'm1' ? 60 : 63);
    for (const i of inputs) if (i.adapter.modules.has(m)) adapterDelta(i.adapter, m, i.weight).data.forEach((v, j) => { want[j] += v; });
    const scale = Math.max(...want.map(Math.abs));
    t.ok(maxAbsDiff(delta(res.adapter, m), want) < 1e-5 * scale, `${m}: ΔW = Σ wᵢ ΔWᵢ to float32 rounding`);
    t.ok(Math.abs(res.energy![m] - 1) < 1e-9, `${m}: nothing dropped`);
  }
  // at or below the cap nothing changes: the stack and its blocks stay
  const two = mergeCat(inputs.slice(0, 2));
  t.equal(two.adapter.r, 6);
  t.equal(two.compacted, undefined);
  t.equal(two.blocks!.length, 2);
});
