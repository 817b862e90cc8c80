/**
 * LEACE concept erasure (Belrose et al. 2023, "LEACE: Perfect linear concept
 * erasure in closed form"), `lora-train --method leace`.
 *
 * Input: `concept` records (records/schema.ts): a prompt and its class label
 * (e.g. the facts of one relation labelled by relation, or one subject group
 * against others). The activations erased are the output of layer L's MLP
 * (site `layers.L.mlp`, L = --layer, default the middle layer) at each
 * prompt's last token, where the next answer is read.
 *
 * Fit (float64): μ = E[x], Σ = Cov(x), Σ_xz = Cov(x, z) with z the one-hot
 * label; W = Σ^{-1/2} (whitening, pseudo-inverse on Σ's null space),
 * U an orthonormal basis of col(W Σ_xz) (rank ≤ classes − 1), and
 *
 *   P = W⁺ U Uᵀ W,      r(x) = x − P (x − μ).
 *
 * r makes the class-conditional means of x equal (no linear classifier beats
 * the constant one) with the least change in the Σ⁻¹ norm.
 *
 * Stored on the module that writes the site (the MLP output projection,
 * y = W_m h + b_m): r(y) = y − P W_m h + P(μ − b_m), i.e. a LoRA of rank r with
 * lora_A = Uᵀ W W_m, lora_B = −W⁺ U, and PEFT's lora_B bias W⁺U Uᵀ W (μ − b_m).
 */
import { InputError, UsageError } from '../records/errors.js';
import type { CausalLM } from '../models/causal-lm.js';
import type { Tokenizer } from '../models/loader.js';
import { LoraAdapter } from '../models/lora.js';
import { fromData } from '../tensor/index.js';
import { symmetricEigen } from './memit.js';
import { transposed } from '../util/linalg.js';
import { cholSolveRowsF64, choleskyF64, gemmF64, syrkLowerF64, triSolveRowsF64 } from '@catechism/kernels';
import { lastTokenActivations, middleLayer, mlpOutModule, mlpOutModules } from './model-util.js';
import type { Rec } from './data.js';
import type { EditCall, EditMethod, MadeEdit } from './method.js';

export interface LeaceEraser {
  dim: number;
  /** Rank of P (≤ classes − 1). */
  rank: number;
  mean: Float64Array;
  /** P = B A: B = W⁺U [dim × rank] row-major, A = UᵀW [rank × dim]. */
  B: Float64Array;
  A: Float64Array;
}

/**
 * The LEACE eraser of `X` (n × d row-major) for class labels 0..k−1. `tol`:
 * eigenvalues of Σ below tol × the largest are its null space (no variance
 * there to erase), directions of W Σ_xz below tol × its largest too.
 * `shrink` s ∈ [0, 1] whitens with (1 − s)Σ + s·tr(Σ)/d·I instead of Σ (0:
 * LEACE; 1: the orthogonal projection off the class-mean differences); the
 * fitted rows' class means are equal either way. It did not lower the
 * held-out probe's reading on the fixture world (tools/lora-train/README.md).
 *
 * Whitening: P = W⁺ P_{col(WΣ_xz)} W is the same for any W with WᵀW = Σ⁻¹
 * (another such W is QΣ^{-1/2} with Q orthogonal, and Q cancels), so when Σ
 * is safely positive definite (`whitening: 'auto'`) W = L⁻¹ from its
 * Cholesky factor Σ = LLᵀ, with triangular solves and no eigen-decomposition;
 * a singular or nearly singular Σ (condition > 1 / (100·tol)), or
 * `whitening: 'eigen'`, takes W = Σ^{-1/2} from the eigen-decomposition with
 * the pseudo-inverse on Σ's null space. The heavy products run in the
 * kernels package's native float64 code.
 */
export function fitLeace(
  X: Float64Array, n: number, d: number, labels: ArrayLike<number>, k: number, tol = 1e-10, shrink = 0, whitening: 'auto' | 'eigen' = 'auto',
): LeaceEraser {
  if (!(shrink >= 0 && shrink <= 1)) throw new RangeError(`fitLeace: shrink ${shrink} is outside [0, 1]`);
  if (X.length !== n * d) throw new RangeError(`fitLeace: X has ${X.length} values, expected ${n} × ${d}`);
  if (labels.length !== n) throw new RangeError(`fitLeace: ${labels.length} labels for ${n} rows`);
  if (k < 2) throw new RangeError('fitLeace: at least two classes are needed');
  const mean = new Float64Array(d);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) mean[j] += X[i * d + j] / n;
  const zbar = new Float64Array(k);
  for (let i = 0; i < n; i++) zbar[labels[i]] += 1 / n;
  // centred rows and centred one-hot labels; Σ = XcᵀXc / n (d × d), Σ_xz = XcᵀZ / n (d × k)
  const Xc = new Float64Array(n * d);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) Xc[i * d + j] = X[i * d + j] - mean[j];
  const Z = new Float64Array(n * k);
  for (let i = 0; i < n; i++) for (let c = 0; c < k; c++) Z[i * k + c] = (labels[i] === c ? 1 : 0) - zbar[c];
  const S = new Float64Array(d * d);
  syrkLowerF64({ n: d, k: n, a: Xc, transA: true, c: S, alpha: 1 / n });
  for (let a = 0; a < d; a++) for (let b = 0; b < a; b++) S[b * d + a] = S[a * d + b];
  const Sxz = new Float64Array(d * k);
  gemmF64({ transA: true, m: d, n: k, k: n, a: Xc, b: Z, c: Sxz, alpha: 1 / n });
  if (shrink > 0) {
    // Σ ← (1 − s) Σ + s (tr Σ / d) I: the whitening (and so P's obliqueness) from a shrunk covariance
    let tr = 0;
    for (let a = 0; a < d; a++) tr += S[a * d + a];
    for (let e = 0; e < d * d; e++) S[e] *= 1 - shrink;
    for (let a = 0; a < d; a++) S[a * d + a] += (shrink * tr) / d;
  }
  const L = whitening === 'auto' ? wellConditionedFactor(S, d, tol) : null;
  const { B, A, r } = L ? eraserByCholesky(L, Sxz, d, k, tol) : eraserByEigen(S, Sxz, d, k, tol);
  return { dim: d, rank: r, mean, B, A };
}

/**
 * Σ's Cholesky factor when Σ is positive definite and λ_min > 100·tol·λ_max
 * (so the eigen path would drop no direction: both give the same P), else
 * null. λ_max by power iteration, λ_min by inverse iteration through the factor.
 */
function wellConditionedFactor(S: Float64Array, d: number, tol: number): Float64Array | null {
  const L = S.slice();
  if (choleskyF64(L, d) >= 0) return null;
  const iterate = (step: (v: Float64Array) => Float64Array): number => {
    let v = Float64Array.from({ length: d }, (_, i) => 1 + Math.sin(1.7 * i)); // fixed start: deterministic
    let est = 0;
    for (let it = 0; it < 30; it++) {
      const w = step(v);
      let vw = 0, vv = 0, ww = 0;
      for (let i = 0; i < d; i++) { vw += v[i] * w[i]; vv += v[i] * v[i]; ww += w[i] * w[i]; }
      est = vw / vv;
      const norm = Math.sqrt(ww);
      if (!(norm > 0)) return 0;
      v = w.map((x) => x / norm);
    }
    return est;
  };
  const lmax = iterate((v) => {
    const w = new Float64Array(d);
    gemmF64({ m: d, n: 1, k: d, a: S, b: v, c: w });
    return w;
  });
  const invMin = iterate((v) => {
    const w = v.slice();
    cholSolveRowsF64(L, d, w, 1);
    return w;
  });
  return invMin > 0 && 1 / invMin > 100 * tol * lmax ? L : null;
}

/**
 * Rows of Uᵀ [r × d]: an orthonormal basis of the column space of M = Mtᵀ
 * (d × k), from the eigen-decomposition of MᵀM (k × k), directions below
 * tol × the largest dropped, largest first.
 */
function columnBasis(Mt: Float64Array, k: number, d: number, tol: number): { Ut: Float64Array; r: number } {
  const MtM = new Float64Array(k * k);
  gemmF64({ transB: true, m: k, n: k, k: d, a: Mt, b: Mt, c: MtM });
  const eig = symmetricEigen(MtM, k);
  const mtop = Math.max(...eig.values);
  const keep: number[] = [];
  for (let e = 0; e < k; e++) if (eig.values[e] > tol * mtop && mtop > 0) keep.push(e);
  keep.sort((x, y) => eig.values[y] - eig.values[x]);
  const r = keep.length;
  const Ut = new Float64Array(r * d);
  keep.forEach((e, j) => {
    const sv = Math.sqrt(eig.values[e]);
    for (let c = 0; c < k; c++) {
      const w = eig.vectors[c * k + e] / sv;
      if (w === 0) continue;
      for (let a = 0; a < d; a++) Ut[j * d + a] += w * Mt[c * d + a];
    }
  });
  return { Ut, r };
}

/** P = L U Uᵀ L⁻¹ with W = L⁻¹ (Σ = LLᵀ): B = L U [d × r], A = Uᵀ L⁻¹ [r × d]. */
function eraserByCholesky(L: Float64Array, Sxz: Float64Array, d: number, k: number, tol: number): { B: Float64Array; A: Float64Array; r: number } {
  // M = L⁻¹ Σ_xz, as rows: Mᵀ = Σ_xzᵀ L⁻ᵀ
  const Mt = transposed(Sxz, d, k);
  triSolveRowsF64(L, d, Mt, k, true);
  const { Ut, r } = columnBasis(Mt, k, d, tol);
  const B = new Float64Array(d * r);
  gemmF64({ transB: true, m: d, n: r, k: d, a: L, b: Ut, c: B });
  const A = Ut.slice();
  triSolveRowsF64(L, d, A, r, false);
  return { B, A, r };
}

/** P = W⁺ U Uᵀ W with W = Σ^{-1/2} on the eigenvalues above tol × the largest (pseudo-inverse on the rest). */
function eraserByEigen(S: Float64Array, Sxz: Float64Array, d: number, k: number, tol: number): { B: Float64Array; A: Float64Array; r: number } {
  const { values, vectors } = symmetricEigen(S, d);
  const top = Math.max(...values);
  // W = V diag(λ^{-1/2}) Vᵀ, W⁺ = V diag(λ^{1/2}) Vᵀ: V with its columns scaled, times Vᵀ
  const Vis = new Float64Array(d * d), Vs = new Float64Array(d * d);
  for (let a = 0; a < d; a++) {
    for (let e = 0; e < d; e++) {
      const l = values[e];
      if (!(l > tol * top)) continue;
      Vis[a * d + e] = vectors[a * d + e] / Math.sqrt(l);
      Vs[a * d + e] = vectors[a * d + e] * Math.sqrt(l);
    }
  }
  const W = new Float64Array(d * d), Wp = new Float64Array(d * d);
  gemmF64({ transB: true, m: d, n: d, k: d, a: Vis, b: vectors, c: W });
  gemmF64({ transB: true, m: d, n: d, k: d, a: Vs, b: vectors, c: Wp });
  // M = W Σ_xz [d × k], as rows Mᵀ = Σ_xzᵀ W (W symmetric)
  const Mt = new Float64Array(k * d);
  gemmF64({ transA: true, m: k, n: d, k: d, a: Sxz, b: W, c: Mt });
  const { Ut, r } = columnBasis(Mt, k, d, tol);
  // B = W⁺ U [d × r], A = Uᵀ W [r × d]
  const B = new Float64Array(d * r), A = new Float64Array(r * d);
  gemmF64({ transB: true, m: d, n: r, k: d, a: Wp, b: Ut, c: B });
  gemmF64({ m: r, n: d, k: d, a: Ut, b: W, c: A });
  return { B, A, r };
}


/** r(x) = x − P (x − μ) for the rows of X (n × d). */
export function applyEraser(e: LeaceEraser, X: Float64Array, n: number): Float64Array {
  const { dim: d, rank: r } = e;
  const out = Float64Array.from(X);
  const t = new Float64Array(r);
  for (let i = 0; i < n; i++) {
    t.fill(0);
    for (let j = 0; j < r; j++) for (let a = 0; a < d; a++) t[j] += e.A[j * d + a] * (X[i * d + a] - e.mean[a]);
    for (let a = 0; a < d; a++) for (let j = 0; j < r; j++) out[i * d + a] -= e.B[a * r + j] * t[j];
  }
  return out;
}

/** Largest distance of a class mean from the overall mean (0 after a perfect erasure). */
export function classMeanGap(X: Float64Array, n: number, d: number, labels: ArrayLike<number>, k: number): number {
  const mean = new Float64Array(d);
  const cm = new Float64Array(k * d);
  const cnt = new Float64Array(k);
  for (let i = 0; i < n; i++) {
    cnt[labels[i]]++;
    for (let a = 0; a < d; a++) {
      mean[a] += X[i * d + a] / n;
      cm[labels[i] * d + a] += X[i * d + a];
    }
  }
  let worst = 0;
  for (let c = 0; c < k; c++) {
    if (cnt[c] === 0) continue;
    let s = 0;
    for (let a = 0; a < d; a++) s += (cm[c * d + a] / cnt[c] - mean[a]) ** 2;
    worst = Math.max(worst, Math.sqrt(s));
  }
  return worst;
}

/** MLP outputs of layer `l` at each prompt's last token, [n × H] float64. */
export function siteActivations(model: CausalLM, tok: Tokenizer, prompts: readonly string[], l: number, batchSize = 32): Float64Array {
  return lastTokenActivations(model, tok, prompts, `layers.${l}.mlp`, batchSize);
}

/**
 * The eraser as a LoRA on the module writing the site (see the module
 * comment): its output y becomes r(y) exactly, at every position. On a
 * sparse MoE layer every expert's output projection gets its own factors
 * (each expert's output y_e becomes r(y_e)); the router's top-k weights sum
 * to 1 and r is affine, so the block's output Σ g_e y_e becomes r of it too.
 */
export function eraserAdapter(model: CausalLM, e: LeaceEraser, layer: number, name: string): LoraAdapter {
  const mods = mlpOutModules(model, layer);
  return new LoraAdapter(name, e.rank, e.rank, new Map(mods.map((mod) => [mod, eraserFactors(model, e, mod)])), model.arch.fanInFanOut);
}

/** lora_A = A·W_m, lora_B = −B and the lora_B bias P(μ − b_m) for one module y = W_m h + b_m writing the site. */
function eraserFactors(model: CausalLM, e: LeaceEraser, mod: string) {
  const canon = model.arch.canonical(mod);
  const Wt = model.weight(`${canon}.weight`);
  const bias = model.weights.has(`${canon}.bias`) ? model.weight(`${canon}.bias`).data : null;
  const inOut = model.arch.layout(canon) === 'in_out';
  const d = e.dim, r = e.rank;
  const fin = inOut ? Wt.shape[0] : Wt.shape[1];
  if ((inOut ? Wt.shape[1] : Wt.shape[0]) !== d) throw new RangeError(`LEACE: ${mod} writes ${inOut ? Wt.shape[1] : Wt.shape[0]} values, the eraser is ${d} wide`);
  // lora_A = A · W_m (r × in), with W_m as [out, in]
  const A = new Float32Array(r * fin);
  for (let j = 0; j < r; j++) {
    for (let i = 0; i < fin; i++) {
      let s = 0;
      for (let a = 0; a < d; a++) s += e.A[j * d + a] * (inOut ? Wt.data[i * d + a] : Wt.data[a * fin + i]);
      A[j * fin + i] = s;
    }
  }
  const B = new Float32Array(d * r);
  for (let i = 0; i < d * r; i++) B[i] = -e.B[i];
  // bias: P (μ − b_m)
  const t = new Float64Array(r);
  for (let j = 0; j < r; j++) for (let a = 0; a < d; a++) t[j] += e.A[j * d + a] * (e.mean[a] - (bias ? bias[a] : 0));
  const lb = new Float32Array(d);
  for (let a = 0; a < d; a++) {
    let s = 0;
    for (let j = 0; j < r; j++) s += e.B[a * r + j] * t[j];
    lb[a] = s;
  }
  return { A: fromData(A, [r, fin]), B: fromData(B, [d, r]), bias: fromData(lb, [d]) };
}

export interface LeaceOptions {
  /** Which concept to erase when the input holds several (default: the only one). */
  concept?: string;
}

function leaceEdit(call: EditCall<LeaceOptions>): MadeEdit[] {
  const { res, batch, common, options } = call;
  const { model, tokenizer: tok } = res;
  const t0 = Date.now();
  const all = batch.records.filter((r) => r.kind === 'concept');
  const names = [...new Set(all.map((r) => String(r.concept)))];
  if (names.length === 0) throw new InputError('--method leace needs `concept` records (prompt, label, concept); none in the input', { field: 'kind' });
  const name = options.concept ?? names[0];
  if (options.concept === undefined && names.length > 1) throw new UsageError(`the input holds ${names.length} concepts (${names.join(', ')}); choose one with --concept NAME`);
  // test-split examples are validate's held-out probe set, never fitted on
  const recs = all.filter((r) => r.concept === name && r.split !== 'test');
  if (recs.length === 0) throw new UsageError(`--concept ${name}: no train examples of it in the input`);
  const classes = [...new Set(recs.map((r) => String(r.label)))].sort();
  if (classes.length < 2) throw new InputError(`concept ${name}: every example has label ${JSON.stringify(classes[0])}; erasure needs at least two classes`, { field: 'label' });
  const layer = common.layer ?? middleLayer(model);
  const labels = Int32Array.from(recs, (r) => classes.indexOf(String(r.label)));
  const X = siteActivations(model, tok, recs.map((r) => String(r.prompt)), layer);
  const H = model.config.hidden;
  const tf = Date.now();
  const e = fitLeace(X, recs.length, H, labels, classes.length);
  const fitSeconds = (Date.now() - tf) / 1000;
  const before = classMeanGap(X, recs.length, H, labels, classes.length);
  const after = classMeanGap(applyEraser(e, X, recs.length), recs.length, H, labels, classes.length);
  const adapter = eraserAdapter(model, e, layer, `leace-${name}`);
  return [{
    adapter,
    facts: [],
    records: recs as Rec[],
    // the key order and values are hashed into the bundle id (editBundleId)
    hyperparameters: { concept: name, site: `layers.${layer}.mlp`, position: 'last', layer, module: mlpOutModule(model, layer), classes, rank: e.rank, examples: recs.length },
    training: { fit_seconds: fitSeconds, class_mean_gap_before: before, class_mean_gap_after: after },
    summary: `leace ${name}: ${classes.length} classes, ${recs.length} examples at layers.${layer}.mlp, rank ${e.rank}, class-mean gap ${before.toFixed(3)} → ${after.toExponential(1)}, ${((Date.now() - t0) / 1000).toFixed(1)} s`,
  }];
}

export const leaceMethod: EditMethod<LeaceOptions> = {
  name: 'leace',
  describe:
    'LEACE concept erasure (Belrose et al. 2023): from `concept` records (prompt, label), the closed-form least-squares eraser of the label at the ' +
    'MLP output of --layer (default the middle layer; each prompt\'s last token), stored as a rank (classes − 1) LoRA plus a lora_B bias on that MLP\'s output projection.',
  ops: [],
  options: {
    concept: { type: 'string', describe: 'the concept to erase when the input holds several (default: the only one)' },
  },
  parseOptions(flags) {
    return typeof flags.concept === 'string' ? { concept: flags.concept } : {};
  },
  edit: leaceEdit,
};
