import t from 'tap';
import { k, rng, randn, simdLevels } from './helpers.js';

interface Case {
  m: number; n: number; kk: number; transA: boolean; transB: boolean;
  lda?: number; ldb?: number; ldc?: number; aOff?: number; bOff?: number; cOff?: number;
  batch?: number; sA?: number; sB?: number; sC?: number; alpha?: number; beta?: number; bias?: boolean;
}

/** Float64 reference and per-element error bound Σ|a||b|-based. */
function run(c: Case, seed: number): { ok: boolean; msg: string } {
  const r = rng(seed);
  const batch = c.batch ?? 1;
  const lda = c.lda ?? (c.transA ? c.m : c.kk), ldb = c.ldb ?? (c.transB ? c.kk : c.n), ldc = c.ldc ?? c.n;
  const aRows = c.transA ? c.kk : c.m, bRows = c.transB ? c.n : c.kk;
  const aOff = c.aOff ?? 0, bOff = c.bOff ?? 0, cOff = c.cOff ?? 0;
  const sA = c.sA ?? aRows * lda, sB = c.sB ?? bRows * ldb, sC = c.sC ?? c.m * ldc;
  const A = randn(aOff + (batch - 1) * sA + aRows * lda + 3, r);
  const B = randn(bOff + (batch - 1) * sB + bRows * ldb + 3, r);
  const C = randn(cOff + (batch - 1) * sC + c.m * ldc + 3, r);
  const bias = c.bias ? randn(c.n, r) : undefined;
  const alpha = c.alpha ?? 1, beta = c.beta ?? 0;
  if (beta === 0) for (let i = 0; i < C.length; i += 7) C[i] = NaN; // beta = 0 must ignore C
  const C0 = Float64Array.from(C);
  k.gemm({
    transA: c.transA, transB: c.transB, m: c.m, n: c.n, k: c.kk,
    a: A, lda, aOffset: aOff, strideA: sA, b: B, ldb, bOffset: bOff, strideB: sB,
    c: C, ldc, cOffset: cOff, strideC: sC, batch, alpha, beta, bias,
  });
  const inside = new Uint8Array(C.length);
  for (let q = 0; q < batch; q++)
    for (let i = 0; i < c.m; i++)
      for (let j = 0; j < c.n; j++) {
        let s = 0, mag = 0;
        for (let p = 0; p < c.kk; p++) {
          const av = c.transA ? A[aOff + q * sA + p * lda + i] : A[aOff + q * sA + i * lda + p];
          const bv = c.transB ? B[bOff + q * sB + j * ldb + p] : B[bOff + q * sB + p * ldb + j];
          s += av * bv;
          mag += Math.abs(av * bv);
        }
        const ci = cOff + q * sC + i * ldc + j;
        inside[ci] = 1;
        let want = alpha * s + (beta === 0 ? 0 : beta * C0[ci]) + (bias ? bias[j] : 0);
        const tol = 1e-6 + 2e-6 * (Math.abs(alpha) * mag + Math.abs(beta * (beta === 0 ? 0 : C0[ci])) + (bias ? Math.abs(bias[j]) : 0));
        if (!(Math.abs(C[ci] - want) <= tol))
          return { ok: false, msg: `batch ${q} C[${i}][${j}] = ${C[ci]}, want ${want}` };
      }
  for (let i = 0; i < C.length; i++)
    if (!inside[i] && !Object.is(C[i], Math.fround(C0[i]))) return { ok: false, msg: `wrote outside C at ${i}` };
  return { ok: true, msg: '' };
}

const shapes: Array<[number, number, number]> = [
  [1, 1, 1], [1, 37, 19], [29, 1, 23], [1, 1, 300], [7, 5, 3], [17, 33, 65], [12, 32, 16], [24, 64, 8],
  [13, 70, 300], // k spans two cache blocks
  [150, 40, 20], // m spans two row blocks
  [3, 2100, 5], // n spans two column blocks
  [45, 97, 1],
  [2, 3, 4], [3, 1100, 70], [8, 50, 600], [5, 700, 1100], [9, 40, 30], // few-row path (m <= 8) and just above it
];

for (const simd of simdLevels()) {
  for (const threads of [1, 2, 3]) {
    t.test(`gemm ${simd} threads=${threads}: shapes × transposes`, async (t) => {
      k.setSimd(simd);
      k.setThreads(threads);
      let seed = 1;
      for (const [m, n, kk] of shapes)
        for (const transA of [false, true])
          for (const transB of [false, true]) {
            const r = run({ m, n, kk, transA, transB }, seed++);
            t.ok(r.ok, `${m}×${n}×${kk} tA=${transA} tB=${transB} ${r.msg}`);
          }
    });
  }
  t.test(`gemm ${simd}: padded ld, offsets, batch, strides, alpha/beta, bias`, async (t) => {
    k.setSimd(simd);
    k.setThreads(2);
    const cases: Case[] = [
      { m: 9, n: 11, kk: 13, transA: false, transB: true, lda: 20, ldb: 17, ldc: 15, aOff: 3, bOff: 5, cOff: 7 },
      { m: 9, n: 11, kk: 13, transA: true, transB: false, lda: 12, ldb: 14, ldc: 11, alpha: -0.5, beta: 2 },
      { m: 8, n: 16, kk: 10, transA: false, transB: false, batch: 5, bias: true, beta: 1 },
      { m: 5, n: 7, kk: 9, transA: true, transB: true, batch: 3, sA: 0, aOff: 2, bias: true },
      { m: 31, n: 45, kk: 27, transA: false, transB: true, batch: 4, sA: 31 * 27 + 5, sB: 45 * 27 + 1, sC: 31 * 45 + 2 },
      { m: 66, n: 130, kk: 40, transA: false, transB: false, batch: 3, alpha: 0.25, beta: -1, bias: true },
      { m: 4, n: 6, kk: 0, transA: false, transB: false, beta: 0.5, bias: true }, // k = 0: C = beta·C + bias
      { m: 4, n: 6, kk: 5, transA: false, transB: false, alpha: 0, beta: 3 },
    ];
    let seed = 100;
    for (const c of cases) {
      const r = run(c, seed++);
      t.ok(r.ok, `${JSON.stringify(c)} ${r.msg}`);
    }
  });
}

t.test('gemm: larger product against an independent blocked float64 sum', async (t) => {
  k.setSimd('auto');
  k.setThreads(2);
  const r = run({ m: 97, n: 301, kk: 513, transA: false, transB: true }, 7);
  t.ok(r.ok, r.msg);
  const r2 = run({ m: 260, n: 70, kk: 129, transA: true, transB: false, batch: 3, bias: true, beta: 0.5 }, 8);
  t.ok(r2.ok, r2.msg);
});

t.test('gemm: narrow C (n ≤ 16, the dot-product path on AVX-512)', async (t) => {
  const before = k.info().threads;
  let seed = 300;
  for (const simd of simdLevels()) {
    k.setSimd(simd);
    for (const threads of [1, 2]) {
      k.setThreads(threads);
      for (const [m, n, kk] of [[9, 8, 16], [33, 7, 17], [257, 8, 130], [64, 16, 512], [40, 1, 33], [31, 9, 100], [20, 13, 15], [384, 8, 256], [70, 3, 1]])
        for (const transA of [false, true])
          for (const transB of [false, true]) {
            const r = run({ m, n, kk, transA, transB }, seed++);
            t.ok(r.ok, `${simd} ${threads}t ${m}×${n}×${kk} tA=${transA} tB=${transB} ${r.msg}`);
          }
      // few rows of C (m ≤ 8) against wide B: LoRA's ∂A = ∂hᵀ·x
      for (const [m, n, kk] of [[8, 128, 256], [8, 512, 256], [3, 45, 7], [1, 33, 64], [7, 16, 9]])
        for (const transA of [false, true]) {
          const r = run({ m, n, kk, transA, transB: false, beta: 0.5 }, seed++);
          t.ok(r.ok, `${simd} ${threads}t few rows ${m}×${n}×${kk} tA=${transA} ${r.msg}`);
        }
      const padded = run({ m: 50, n: 8, kk: 70, transA: false, transB: true, lda: 75, ldb: 72, ldc: 11, alpha: -0.5, beta: 0.75, bias: true }, seed++);
      t.ok(padded.ok, `${simd} ${threads}t padded ld, alpha, beta, bias ${padded.msg}`);
      const paddedT = run({ m: 50, n: 8, kk: 70, transA: true, transB: false, lda: 53, ldb: 9, ldc: 12, alpha: 1.5, beta: -1, bias: true }, seed++);
      t.ok(paddedT.ok, `${simd} ${threads}t transA padded ld, alpha, beta, bias ${paddedT.msg}`);
      const batched = run({ m: 30, n: 8, kk: 48, transA: false, transB: false, batch: 3, beta: 1 }, seed++);
      t.ok(batched.ok, `${simd} ${threads}t batched ${batched.msg}`);
    }
  }
  k.setSimd(k.bestSimd());
  k.setThreads(before);
});

t.test('gemm: batch items side by side in C (heads written into [T, heads·D])', async (t) => {
  // Attention's pattern: A, B and C all address head h at column h·D of wider rows.
  const before = k.info().threads;
  for (const threads of [1, 2]) {
    k.setThreads(threads);
    const T = 33, D = 8, H = 4;
    const r1 = run({ m: T, n: D, kk: T, transA: false, transB: false, batch: H, lda: T, sA: T * T, ldb: 3 * H * D, sB: D, ldc: H * D, sC: D }, 21);
    t.ok(r1.ok, `P·V into [T, H·D], ${threads} thread(s): ${r1.msg}`);
    const r2 = run({ m: T, n: D, kk: T, transA: true, transB: false, batch: H, lda: T, sA: T * T, ldb: H * D, sB: D, ldc: 3 * H * D, sC: D, beta: 1, alpha: 0.5 }, 22);
    t.ok(r2.ok, `Pᵀ·dO accumulated into [T, 3·H·D], ${threads} thread(s): ${r2.msg}`);
    const r3 = run({ m: 70, n: 16, kk: 40, transA: false, transB: true, batch: 3, lda: 40, sA: 70 * 40, ldb: 40, sB: 16 * 40, ldc: 50, sC: 16, cOff: 5 }, 23);
    t.ok(r3.ok, `transB, offset C, ${threads} thread(s): ${r3.msg}`);
  }
  k.setThreads(before);
});

t.test('gemm: argument errors', async (t) => {
  const a = new Float32Array(6), b = new Float32Array(6), c = new Float32Array(4);
  const base = { m: 2, n: 2, k: 3, a, lda: 3, b, ldb: 2, c, ldc: 2 };
  k.gemm(base);
  t.throws(() => k.gemm({ ...base, m: -1 }), RangeError);
  t.throws(() => k.gemm({ ...base, k: 2.5 }), RangeError);
  t.throws(() => k.gemm({ ...base, n: NaN }), RangeError);
  t.throws(() => k.gemm({ ...base, a: new Float32Array(5) }), /A is too short/);
  t.throws(() => k.gemm({ ...base, c: new Float32Array(3) }), /C is too short/);
  t.throws(() => k.gemm({ ...base, lda: 2 }), /lda = 2 is smaller/);
  t.throws(() => k.gemm({ ...base, aOffset: 1 }), RangeError);
  t.throws(() => k.gemm({ ...base, a: [1, 2, 3, 4, 5, 6] as unknown as Float32Array }), TypeError);
  t.throws(() => k.gemm({ ...base, bias: new Float32Array(3) }), /bias has length 3/);
  t.throws(() => k.gemm({ ...base, batch: 2, strideA: 6, strideB: 6 }), RangeError);
  t.throws(() => k.gemm({ ...base, batch: 2, strideA: 0, strideB: 0, strideC: 1, c: new Float32Array(100) }), /overlap/);
  // side by side within rows is allowed only while the column blocks stay apart
  t.throws(() => k.gemm({ ...base, batch: 2, strideA: 0, strideB: 0, ldc: 3, strideC: 2, c: new Float32Array(100) }), /overlap/);
  k.gemm({ ...base, batch: 2, strideA: 0, strideB: 0, ldc: 4, strideC: 2, c: new Float32Array(8) });
  t.throws(() => k.gemm({ ...base, alpha: Infinity }), RangeError);
  const shared = new Float32Array(20);
  t.throws(() => k.gemm({ ...base, a: shared.subarray(0, 6), c: shared.subarray(4, 8) }), /share memory/);
});
