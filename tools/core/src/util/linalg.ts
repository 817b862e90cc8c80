/**
 * The one float64 dense linear-algebra module: matrices, Householder QR,
 * one-sided Jacobi SVD, truncated SVD of a matrix given by low-rank factors
 * (ΔW = B·A) without forming ΔW (adapter merging), and Cholesky solves of
 * symmetric positive definite systems (ROME's key covariance).
 *
 * Float64 so that merging's recompression error comes from the truncation,
 * and an edit's solve from the statistics, not from rounding.
 */
import { choleskyF64, cholSolveRowsF64 } from '@catechism/kernels';
import { Rng } from './random.js';

/** Row-major float64 matrix. */
export interface Mat {
  rows: number;
  cols: number;
  data: Float64Array;
}

export function mat(rows: number, cols: number, data?: ArrayLike<number>): Mat {
  const d = new Float64Array(rows * cols);
  if (data) {
    if (data.length !== rows * cols) throw new RangeError(`mat: ${data.length} values do not fill ${rows}×${cols}`);
    d.set(data);
  }
  return { rows, cols, data: d };
}

/** The transpose of a row-major m×n array, as a new n×m array. */
export function transposed(a: Float64Array, m: number, n: number): Float64Array {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) out[j * m + i] = a[i * n + j];
  return out;
}

export function transpose64(a: Mat): Mat {
  return { rows: a.cols, cols: a.rows, data: transposed(a.data, a.rows, a.cols) };
}

/** a·b (i-k-j loop order: contiguous inner loop). */
export function matmul64(a: Mat, b: Mat): Mat {
  if (a.cols !== b.rows) throw new RangeError(`matmul64: ${a.rows}×${a.cols} · ${b.rows}×${b.cols}`);
  const c = mat(a.rows, b.cols);
  const n = b.cols;
  for (let i = 0; i < a.rows; i++) {
    const ci = i * n;
    for (let k = 0; k < a.cols; k++) {
      const v = a.data[i * a.cols + k];
      if (v === 0) continue;
      const bk = k * n;
      for (let j = 0; j < n; j++) c.data[ci + j] += v * b.data[bk + j];
    }
  }
  return c;
}

/** aᵀ·b without forming aᵀ. */
export function matmulTN64(a: Mat, b: Mat): Mat {
  if (a.rows !== b.rows) throw new RangeError(`matmulTN64: (${a.rows}×${a.cols})ᵀ · ${b.rows}×${b.cols}`);
  const c = mat(a.cols, b.cols);
  const n = b.cols;
  for (let k = 0; k < a.rows; k++) {
    const bk = k * n;
    for (let i = 0; i < a.cols; i++) {
      const v = a.data[k * a.cols + i];
      if (v === 0) continue;
      const ci = i * n;
      for (let j = 0; j < n; j++) c.data[ci + j] += v * b.data[bk + j];
    }
  }
  return c;
}

export function frobenius2(a: Mat): number {
  let s = 0;
  for (const v of a.data) s += v * v;
  return s;
}

/**
 * Thin QR by Householder reflections: a (m×n) = Q (m×p) · R (p×n),
 * p = min(m, n), Q with orthonormal columns, R upper triangular (trapezoidal).
 */
export function qr(a: Mat): { Q: Mat; R: Mat } {
  const m = a.rows, n = a.cols, p = Math.min(m, n);
  // work column-major: column j of `w` is w[j*m .. j*m+m)
  const w = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) w[j * m + i] = a.data[i * n + j];
  const vs: Float64Array[] = [];
  for (let k = 0; k < p; k++) {
    const col = k * m;
    let norm = 0;
    for (let i = k; i < m; i++) norm += w[col + i] * w[col + i];
    norm = Math.sqrt(norm);
    const v = new Float64Array(m - k);
    if (norm === 0) {
      vs.push(v); // zero reflector: H = I
      continue;
    }
    const alpha = w[col + k] >= 0 ? -norm : norm; // sign avoids cancellation
    for (let i = k; i < m; i++) v[i - k] = w[col + i];
    v[0] -= alpha;
    let vn = 0;
    for (let i = 0; i < v.length; i++) vn += v[i] * v[i];
    vn = Math.sqrt(vn);
    if (vn === 0) {
      vs.push(new Float64Array(m - k));
      continue;
    }
    for (let i = 0; i < v.length; i++) v[i] /= vn;
    vs.push(v);
    // apply H = I − 2vvᵀ to columns k..n−1
    for (let j = k; j < n; j++) {
      const cj = j * m;
      let d = 0;
      for (let i = k; i < m; i++) d += v[i - k] * w[cj + i];
      d *= 2;
      if (d !== 0) for (let i = k; i < m; i++) w[cj + i] -= d * v[i - k];
    }
  }
  const R = mat(p, n);
  for (let i = 0; i < p; i++) for (let j = i; j < n; j++) R.data[i * n + j] = w[j * m + i];
  // Q = H_0 … H_{p−1} applied to the first p columns of I (column-major again)
  const q = new Float64Array(m * p);
  for (let j = 0; j < p; j++) q[j * m + j] = 1;
  for (let k = p - 1; k >= 0; k--) {
    const v = vs[k];
    for (let j = 0; j < p; j++) {
      const cj = j * m;
      let d = 0;
      for (let i = k; i < m; i++) d += v[i - k] * q[cj + i];
      d *= 2;
      if (d !== 0) for (let i = k; i < m; i++) q[cj + i] -= d * v[i - k];
    }
  }
  const Q = mat(m, p);
  for (let i = 0; i < m; i++) for (let j = 0; j < p; j++) Q.data[i * p + j] = q[j * m + i];
  return { Q, R };
}

export interface Svd {
  /** m×k, orthonormal columns (columns for zero singular values are zero). */
  U: Mat;
  /** k singular values, descending. */
  S: Float64Array;
  /** n×k, orthonormal columns. */
  V: Mat;
}

/**
 * SVD by one-sided (Hestenes) Jacobi: rotate column pairs of a until they
 * are orthogonal; then σⱼ = ‖colⱼ‖, uⱼ = colⱼ/σⱼ, V = the accumulated
 * rotations. Accurate to working precision; O(m·n²) per sweep, meant for the
 * small cores of the factored SVD. Returns k = min(m, n) triples.
 */
export function jacobiSvd(a: Mat, opts: { maxSweeps?: number; tol?: number } = {}): Svd {
  if (a.rows < a.cols) {
    const t = jacobiSvd(transpose64(a), opts);
    return { U: t.V, S: t.S, V: t.U };
  }
  const m = a.rows, n = a.cols;
  const tol = opts.tol ?? 1e-15;
  const maxSweeps = opts.maxSweeps ?? 60;
  // g[j] = column j of a (contiguous), vt[j] = column j of V
  const g: Float64Array[] = [];
  const vt: Float64Array[] = [];
  for (let j = 0; j < n; j++) {
    const c = new Float64Array(m);
    for (let i = 0; i < m; i++) c[i] = a.data[i * n + j];
    g.push(c);
    const e = new Float64Array(n);
    e[j] = 1;
    vt.push(e);
  }
  const norms = g.map((c) => c.reduce((s, x) => s + x * x, 0));
  for (let sweep = 0; sweep < maxSweeps; sweep++) {
    let rotated = false;
    for (let p = 0; p < n - 1; p++) {
      for (let q = p + 1; q < n; q++) {
        const gp = g[p], gq = g[q];
        let gamma = 0;
        for (let i = 0; i < m; i++) gamma += gp[i] * gq[i];
        const alpha = norms[p], beta = norms[q];
        if (gamma === 0 || Math.abs(gamma) <= tol * Math.sqrt(alpha * beta)) continue;
        rotated = true;
        const zeta = (beta - alpha) / (2 * gamma);
        const t = (zeta >= 0 ? 1 : -1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t);
        const s = c * t;
        let np = 0, nq = 0;
        for (let i = 0; i < m; i++) {
          const x = gp[i], y = gq[i];
          const xn = c * x - s * y, yn = s * x + c * y;
          gp[i] = xn;
          gq[i] = yn;
          np += xn * xn;
          nq += yn * yn;
        }
        norms[p] = np;
        norms[q] = nq;
        const vp = vt[p], vq = vt[q];
        for (let i = 0; i < n; i++) {
          const x = vp[i], y = vq[i];
          vp[i] = c * x - s * y;
          vq[i] = s * x + c * y;
        }
      }
    }
    if (!rotated) break;
  }
  const order = [...Array(n).keys()].sort((x, y) => norms[y] - norms[x]);
  const U = mat(m, n), V = mat(n, n), S = new Float64Array(n);
  order.forEach((j, k) => {
    const sigma = Math.sqrt(norms[j]);
    S[k] = sigma;
    if (sigma > 0) for (let i = 0; i < m; i++) U.data[i * n + k] = g[j][i] / sigma;
    for (let i = 0; i < n; i++) V.data[i * n + k] = vt[j][i];
  });
  return { U, S, V };
}

/**
 * SVD of ΔW = B·A (B m×r, A r×n) without forming ΔW: B = Q_b R_b,
 * Aᵀ = Q_a R_a, so ΔW = Q_b (R_b R_aᵀ) Q_aᵀ and only the small core
 * R_b R_aᵀ is decomposed. Cost O((m + n)·r² + r³).
 */
export function factoredSvd(B: Mat, A: Mat): Svd {
  if (B.cols !== A.rows) throw new RangeError(`factoredSvd: B ${B.rows}×${B.cols}, A ${A.rows}×${A.cols}`);
  const qb = qr(B);
  const qa = qr(transpose64(A));
  const core = matmul64(qb.R, transpose64(qa.R));
  const s = jacobiSvd(core);
  return { U: matmul64(qb.Q, s.U), S: s.S, V: matmul64(qa.Q, s.V) };
}

/**
 * SVD of a dense matrix: exact (QR then Jacobi on the square factor) when
 * min(m, n) ≤ exactLimit; otherwise the top `rank` triples by randomized
 * subspace iteration (Halko et al. 2011) with oversampling and power steps
 * repeated until the captured energy grows by less than 1e-4 (relative), at
 * most `powerIters` (24); it keeps at most the energy an exact SVD would
 * (never overstates it).
 */
export function denseSvd(M: Mat, opts: { rank?: number; exactLimit?: number; seed?: number; powerIters?: number } = {}): Svd & { exact: boolean } {
  const small = Math.min(M.rows, M.cols);
  const rank = Math.min(opts.rank ?? small, small);
  const exactLimit = opts.exactLimit ?? 384;
  if (small <= exactLimit || rank + 10 >= small) {
    if (M.rows >= M.cols) {
      const { Q, R } = qr(M);
      const s = jacobiSvd(R);
      return { U: matmul64(Q, s.U), S: s.S, V: s.V, exact: true };
    }
    const t = denseSvd(transpose64(M), { ...opts, exactLimit: Infinity });
    return { U: t.V, S: t.S, V: t.U, exact: true };
  }
  const rng = new Rng(opts.seed ?? 0x5eed);
  const l = Math.min(small, rank + Math.max(10, rank));
  let Q = qr(matmul64(M, mat(M.cols, l, Float64Array.from({ length: M.cols * l }, () => rng.normal())))).Q;
  let s = jacobiSvd(matmulTN64(Q, M));
  // power steps until the energy captured by the top `rank` stops growing (flat spectra need more)
  const keptOf = (x: Svd) => x.S.slice(0, rank).reduce((acc, v) => acc + v * v, 0);
  let kept = keptOf(s);
  const maxIters = opts.powerIters ?? 24;
  for (let it = 0; it < maxIters; it++) {
    const Z = qr(matmulTN64(M, Q)).Q; // n×l
    Q = qr(matmul64(M, Z)).Q;
    s = jacobiSvd(matmulTN64(Q, M));
    const next = keptOf(s);
    const gain = next - kept;
    kept = next;
    if (gain <= 1e-4 * kept) break;
  }
  return { U: matmul64(Q, s.U), S: s.S, V: s.V, exact: false };
}

// ---------------------------------------------------------------- Cholesky

/**
 * Lower Cholesky factor of M + λI (row-major n×n; only M's lower triangle is
 * read); throws a RangeError naming `what` when not positive definite. Runs
 * in the kernels package's native float64 code (recursive, blocked, threaded).
 */
export function cholesky(M: Float64Array, n: number, ridge: number, what = 'ROME: key covariance'): Float64Array {
  return choleskyInPlace(M.slice(0, n * n), n, ridge, what);
}

/** `cholesky` that overwrites A (its first n×n values) with L and returns it: no copy of a large matrix. */
export function choleskyInPlace(A: Float64Array, n: number, ridge: number, what = 'ROME: key covariance'): Float64Array {
  const L = A.length === n * n ? A : A.subarray(0, n * n);
  if (ridge !== 0) for (let i = 0; i < n; i++) L[i * n + i] += ridge;
  const bad = choleskyF64(L, n);
  if (bad >= 0) throw new RangeError(`${what} is not positive definite at ${bad} (increase the ridge or the statistics corpus)`);
  return L;
}

/** Solve L Lᵀ x = b (L from `cholesky`). */
export function cholSolve(L: Float64Array, n: number, b: Float64Array): Float64Array {
  const x = Float64Array.from(b.subarray(0, n));
  cholSolveRowsF64(L, n, x, 1);
  return x;
}

/** Every row of B [m, n] solved against L Lᵀ at once: rows xᵢ with L Lᵀ xᵢ = bᵢ (a new array). */
export function cholSolveRows(L: Float64Array, n: number, B: Float64Array, m: number): Float64Array {
  const X = B.slice(0, m * n);
  cholSolveRowsF64(L, n, X, m);
  return X;
}

/** Solve (M + λI) x = b for symmetric positive semi-definite M (Cholesky, float64). */
export function solveSpd(M: Float64Array, n: number, b: Float64Array, ridge: number): Float64Array {
  return cholSolve(cholesky(M, n, ridge), n, b);
}
