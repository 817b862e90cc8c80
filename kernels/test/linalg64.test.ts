// Float64 linear algebra (gemmF64, syrkLowerF64, choleskyF64,
// cholSolveRowsF64) against plain float64 loops written here, at every ISA
// level: shapes that end mid-tile and cross the cache blocks (KC 256, MC 96,
// 384-column chunks) and the recursion's leaf size (64).
import t from 'tap';
import { k, rng, simdLevels } from './helpers.js';

function randF64(n: number, r: () => number): Float64Array {
  const a = new Float64Array(n);
  for (let i = 0; i < n; i++) a[i] = r() * 2 - 1;
  return a;
}

/** op(A)[i][p] of a row-major matrix stored with leading dimension ld. */
const at = (a: Float64Array, trans: boolean, ld: number, i: number, p: number) => (trans ? a[p * ld + i] : a[i * ld + p]);

/** A symmetric positive definite n×n matrix X·Xᵀ/n + shift·I (condition number grows as shift falls). */
function spd(n: number, r: () => number, shift = 0.5): Float64Array {
  const X = randF64(n * n, r);
  const A = new Float64Array(n * n);
  for (let i = 0; i < n; i++)
    for (let j = 0; j <= i; j++) {
      let s = 0;
      for (let p = 0; p < n; p++) s += X[i * n + p] * X[j * n + p];
      A[i * n + j] = A[j * n + i] = s / n + (i === j ? shift : 0);
    }
  return A;
}

/** Unblocked textbook Cholesky (Cholesky–Banachiewicz), the independent reference. */
function choleskyRef(A: Float64Array, n: number): Float64Array {
  const L = new Float64Array(n * n);
  for (let i = 0; i < n; i++)
    for (let j = 0; j <= i; j++) {
      let s = A[i * n + j];
      for (let p = 0; p < j; p++) s -= L[i * n + p] * L[j * n + p];
      L[i * n + j] = i === j ? Math.sqrt(s) : s / L[j * n + j];
    }
  return L;
}

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

const gemmShapes: Array<[number, number, number]> = [
  [1, 1, 1], [1, 17, 9], [13, 1, 5], [12, 16, 3], [11, 15, 257], [97, 33, 20], [30, 400, 40], [200, 70, 520], [5, 3, 0],
];

for (const simd of simdLevels()) {
  t.test(`gemmF64 (${simd}): every transpose, alpha/beta, ld > n; nothing written outside C`, (t) => {
    k.setSimd(simd);
    let seed = 1;
    for (const [m, n, kk] of gemmShapes)
      for (const transA of [false, true])
        for (const transB of [false, true])
          for (const [alpha, beta] of [[1, 0], [-0.5, 2]]) {
            const r = rng(seed++);
            const lda = (transA ? m : kk) + 2, ldb = (transB ? kk : n) + 1, ldc = n + 3;
            const A = randF64((transA ? kk : m) * lda, r), B = randF64((transB ? n : kk) * ldb, r);
            const C = randF64(m * ldc, r);
            if (beta === 0) for (let i = 0; i < C.length; i += 5) C[i] = NaN; // beta = 0 must not read C
            const C0 = C.slice();
            k.gemmF64({ transA, transB, m, n, k: kk, a: A, lda, b: B, ldb, c: C, ldc, alpha, beta });
            let bad = '';
            for (let i = 0; i < m && !bad; i++)
              for (let j = 0; j < ldc && !bad; j++) {
                const got = C[i * ldc + j];
                if (j >= n) { if (!Object.is(got, C0[i * ldc + j])) bad = `wrote C[${i}][${j}] outside n`; continue; }
                let s = 0, mag = 0;
                for (let p = 0; p < kk; p++) {
                  const v = at(A, transA, lda, i, p) * at(B, transB, ldb, p, j);
                  s += v;
                  mag += Math.abs(v);
                }
                const want = alpha * s + (beta === 0 ? 0 : beta * C0[i * ldc + j]);
                if (!(Math.abs(got - want) <= 1e-14 + 1e-13 * (mag + Math.abs(beta * (C0[i * ldc + j] || 0)))))
                  bad = `C[${i}][${j}] = ${got}, want ${want}`;
              }
            if (bad) { t.fail(`${m}×${n}×${kk} transA ${transA} transB ${transB} α ${alpha} β ${beta}: ${bad}`); break; }
          }
    t.pass('all shapes checked');
    k.setSimd('auto');
    t.end();
  });

  t.test(`syrkLowerF64 (${simd}): the lower triangle of αAAᵀ + βC; the upper triangle untouched`, (t) => {
    k.setSimd(simd);
    for (const [n, kk, transA] of [[1, 3, false], [50, 7, true], [200, 30, false], [401, 12, true]] as Array<[number, number, boolean]>) {
      const r = rng(n);
      const A = randF64(n * kk, r), C = randF64(n * n, r), C0 = C.slice();
      k.syrkLowerF64({ n, k: kk, a: A, transA, c: C, alpha: 2, beta: -1 });
      let worst = 0, upperSame = true;
      for (let i = 0; i < n; i++)
        for (let j = 0; j < n; j++) {
          if (j > i) { upperSame &&= Object.is(C[i * n + j], C0[i * n + j]); continue; }
          let s = 0;
          for (let p = 0; p < kk; p++) s += at(A, transA, transA ? n : kk, i, p) * at(A, transA, transA ? n : kk, j, p);
          worst = Math.max(worst, Math.abs(C[i * n + j] - (2 * s - C0[i * n + j])));
        }
      t.ok(worst < 1e-12, `n ${n} k ${kk} transA ${transA}: max error ${worst}`);
      t.ok(upperSame, `n ${n}: strict upper triangle unchanged`);
    }
    k.setSimd('auto');
    t.end();
  });

  t.test(`choleskyF64 (${simd}): L·Lᵀ = A, zeros above, equal to the textbook factor`, (t) => {
    k.setSimd(simd);
    for (const n of [1, 2, 7, 64, 65, 129, 300]) {
      const A = spd(n, rng(100 + n));
      const L = A.slice();
      for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) L[i * n + j] = 12345; // the upper triangle is never read
      t.equal(k.choleskyF64(L, n), -1, `n ${n}: factored`);
      let recon = 0, upper = 0;
      for (let i = 0; i < n; i++)
        for (let j = 0; j < n; j++) {
          if (j > i) upper = Math.max(upper, Math.abs(L[i * n + j]));
          let s = 0;
          for (let p = 0; p <= Math.min(i, j); p++) s += L[i * n + p] * L[j * n + p];
          recon = Math.max(recon, Math.abs(s - A[i * n + j]));
        }
      t.ok(recon < 1e-13 * n, `n ${n}: max |L·Lᵀ − A| = ${recon}`);
      t.equal(upper, 0, `n ${n}: strict upper triangle zeroed`);
      const ref = choleskyRef(A, n);
      let diff = 0;
      for (let i = 0; i < n * n; i++) diff = Math.max(diff, Math.abs(L[i] - ref[i]));
      t.ok(diff < 1e-12, `n ${n}: max |L − L_ref| = ${diff}`);
    }
    k.setSimd('auto');
    t.end();
  });

  t.test(`cholSolveRowsF64 (${simd}): each row x of the result solves (L·Lᵀ)x = b`, (t) => {
    k.setSimd(simd);
    for (const [n, m] of [[1, 1], [5, 3], [70, 1], [150, 7], [257, 40]]) {
      const r = rng(7 * n + m);
      const A = spd(n, r);
      const L = A.slice();
      t.equal(k.choleskyF64(L, n), -1);
      const B = randF64(m * n, r), X = B.slice();
      k.cholSolveRowsF64(L, n, X, m);
      let res = 0;
      for (let q = 0; q < m; q++)
        for (let i = 0; i < n; i++) {
          let s = 0;
          for (let p = 0; p < n; p++) s += A[i * n + p] * X[q * n + p];
          res = Math.max(res, Math.abs(s - B[q * n + i]));
        }
      t.ok(res < 1e-11, `n ${n}, ${m} rows: max residual ${res} (|B| ≤ 1, cond(A) ≲ 10)`);
    }
    k.setSimd('auto');
    t.end();
  });
}

t.test('triSolveRowsF64: x·Lᵀ = b and x·L = b row by row; L\'s upper triangle is never read', (t) => {
  for (const simd of simdLevels()) {
    k.setSimd(simd);
    for (const [n, m] of [[1, 2], [9, 3], [70, 5], [200, 12]]) {
      const r = rng(31 * n + m);
      const L = randF64(n * n, r);
      for (let i = 0; i < n; i++) {
        L[i * n + i] = 2 + Math.abs(L[i * n + i]); // well conditioned
        for (let j = i + 1; j < n; j++) L[i * n + j] = NaN; // must not be read
      }
      for (const transposed of [false, true]) {
        const B = randF64(m * n, r), X = B.slice();
        k.triSolveRowsF64(L, n, X, m, transposed);
        let res = 0;
        for (let q = 0; q < m; q++)
          for (let c = 0; c < n; c++) {
            // (x·Lᵀ)_c = Σ_p x_p L[c][p] (p ≤ c); (x·L)_c = Σ_p x_p L[p][c] (p ≥ c)
            let s = 0;
            if (transposed) for (let p = 0; p <= c; p++) s += X[q * n + p] * L[c * n + p];
            else for (let p = c; p < n; p++) s += X[q * n + p] * L[p * n + c];
            res = Math.max(res, Math.abs(s - B[q * n + c]));
          }
        t.ok(res < 1e-12, `${simd} n ${n}, ${m} rows, ${transposed ? 'x·Lᵀ' : 'x·L'}: max residual ${res}`);
      }
    }
  }
  k.setSimd('auto');
  t.throws(() => k.triSolveRowsF64(new Float64Array(4), 2, new Float64Array(3), 2, true), /triSolveRowsF64: b has length 3, expected 4/);
  t.end();
});

t.test('choleskyF64 names the first row whose pivot is not positive', (t) => {
  for (const [n, bad] of [[3, 0], [40, 17], [200, 130]]) {
    const A = spd(n, rng(n));
    // make row `bad` dependent on row `bad − 1` (or negative at 0): its pivot is 0 up to rounding, then pushed below
    if (bad === 0) A[0] = -1;
    else {
      for (let j = 0; j < n; j++) A[bad * n + j] = A[j * n + bad] = A[(bad - 1) * n + j];
      A[bad * n + bad] = A[(bad - 1) * n + (bad - 1)] - 1e-3;
      A[bad * n + bad - 1] = A[(bad - 1) * n + bad] = A[(bad - 1) * n + (bad - 1)];
    }
    t.equal(k.choleskyF64(A, n), bad, `n ${n}: row ${bad}`);
  }
  const N = spd(100, rng(3));
  N[50 * 100 + 20] = NaN;
  t.equal(k.choleskyF64(N, 100), 50, 'a NaN in row 50 fails there');
  t.end();
});

t.test('float64 linear algebra refuses bad arguments by name', (t) => {
  const a = new Float64Array(4);
  t.throws(() => k.choleskyF64(new Float32Array(4) as unknown as Float64Array, 2), /choleskyF64: a must be a Float64Array/);
  t.throws(() => k.choleskyF64(a, 3), /choleskyF64: a has length 4, expected 9/);
  t.throws(() => k.cholSolveRowsF64(a, 2, new Float64Array(5), 2), /cholSolveRowsF64: b has length 5, expected 4/);
  t.throws(() => k.cholSolveRowsF64(a, 2, a, 2), /b must not share memory with l/);
  t.throws(() => k.gemmF64({ m: 2, n: 2, k: 2, a, b: a, c: new Float64Array(3) }), /gemmF64: C is too short/);
  t.throws(() => k.gemmF64({ m: 2, n: 2, k: 2, a, b: new Float64Array(4), c: a.subarray(1) }), /c must not share memory/);
  t.throws(() => k.syrkLowerF64({ n: 3, k: 2, a, c: new Float64Array(9) }), /syrkLowerF64: A is too short/);
  t.end();
});
