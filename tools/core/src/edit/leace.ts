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
import { lastTokenActivations, middleLayer, mlpOutModule } from './model-util.js';
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
 */
export function fitLeace(X: Float64Array, n: number, d: number, labels: ArrayLike<number>, k: number, tol = 1e-10, shrink = 0): LeaceEraser {
  if (!(shrink >= 0 && shrink <= 1)) throw new RangeError(`fitLeace: shrink ${shrink} is outside [0, 1]`);
  if (X.length !== n * d) throw new RangeError(`fitLeace: X has ${X.length} values, expected ${n} × ${d}`);
  if (labels.length !== n) throw new RangeError(`fitLeace: ${labels.length} labels for ${n} rows`);
  if (k < 2) throw new RangeError('fitLeace: at least two classes are needed');
  const mean = new Float64Array(d);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) mean[j] += X[i * d + j] / n;
  const zbar = new Float64Array(k);
  for (let i = 0; i < n; i++) zbar[labels[i]] += 1 / n;
  // Σ (d × d) and Σ_xz (d × k), both with the 1/n normalisation
  const S = new Float64Array(d * d);
  const Sxz = new Float64Array(d * k);
  const xc = new Float64Array(d);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < d; j++) xc[j] = X[i * d + j] - mean[j];
    for (let a = 0; a < d; a++) {
      const v = xc[a] / n;
      if (v === 0) continue;
      const row = a * d;
      for (let b = a; b < d; b++) S[row + b] += v * xc[b];
      for (let c = 0; c < k; c++) Sxz[a * k + c] += v * ((labels[i] === c ? 1 : 0) - zbar[c]);
    }
  }
  for (let a = 0; a < d; a++) for (let b = 0; b < a; b++) S[a * d + b] = S[b * d + a];
  if (shrink > 0) {
    // Σ ← (1 − s) Σ + s (tr Σ / d) I: the whitening (and so P's obliqueness) from a shrunk covariance
    let tr = 0;
    for (let a = 0; a < d; a++) tr += S[a * d + a];
    for (let e = 0; e < d * d; e++) S[e] *= 1 - shrink;
    for (let a = 0; a < d; a++) S[a * d + a] += (shrink * tr) / d;
  }
  const { values, vectors } = symmetricEigen(S, d);
  const top = Math.max(...values);
  // W = V diag(λ^{-1/2}) Vᵀ, W⁺ = V diag(λ^{1/2}) Vᵀ on the eigenvalues above the tolerance
  const W = new Float64Array(d * d);
  const Wp = new Float64Array(d * d);
  for (let e = 0; e < d; e++) {
    const l = values[e];
    if (!(l > tol * top)) continue;
    const is = 1 / Math.sqrt(l), s = Math.sqrt(l);
    for (let a = 0; a < d; a++) {
      const va = vectors[a * d + e];
      if (va === 0) continue;
      for (let b = 0; b < d; b++) {
        const vb = vectors[b * d + e];
        W[a * d + b] += va * is * vb;
        Wp[a * d + b] += va * s * vb;
      }
    }
  }
  // M = W Σ_xz (d × k); U = M V_M Σ_M^{-1} from the eigen-decomposition of MᵀM (k × k)
  const M = new Float64Array(d * k);
  for (let a = 0; a < d; a++) for (let b = 0; b < d; b++) {
    const w = W[a * d + b];
    if (w === 0) continue;
    for (let c = 0; c < k; c++) M[a * k + c] += w * Sxz[b * k + c];
  }
  const MtM = new Float64Array(k * k);
  for (let a = 0; a < d; a++) for (let c = 0; c < k; c++) for (let e = 0; e < k; e++) MtM[c * k + e] += M[a * k + c] * M[a * k + e];
  const eig = symmetricEigen(MtM, k);
  const mtop = Math.max(...eig.values);
  const keep: number[] = [];
  for (let e = 0; e < k; e++) if (eig.values[e] > tol * mtop && mtop > 0) keep.push(e);
  keep.sort((x, y) => eig.values[y] - eig.values[x]);
  const r = keep.length;
  const U = new Float64Array(d * r);
  keep.forEach((e, j) => {
    const sv = Math.sqrt(eig.values[e]);
    for (let a = 0; a < d; a++) {
      let s = 0;
      for (let c = 0; c < k; c++) s += M[a * k + c] * eig.vectors[c * k + e];
      U[a * r + j] = s / sv;
    }
  });
  // B = W⁺ U (d × r), A = Uᵀ W (r × d; W is symmetric)
  const B = new Float64Array(d * r);
  const A = new Float64Array(r * d);
  for (let a = 0; a < d; a++) for (let b = 0; b < d; b++) {
    const wp = Wp[a * d + b], w = W[a * d + b];
    for (let j = 0; j < r; j++) {
      B[a * r + j] += wp * U[b * r + j];
      A[j * d + a] += U[b * r + j] * w;
    }
  }
  return { dim: d, rank: r, mean, B, A };
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
 * comment): its output y becomes r(y) exactly, at every position.
 */
export function eraserAdapter(model: CausalLM, e: LeaceEraser, layer: number, name: string): LoraAdapter {
  const mod = mlpOutModule(model, layer);
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
  return new LoraAdapter(name, r, r, new Map([[mod, { A: fromData(A, [r, fin]), B: fromData(B, [d, r]), bias: fromData(lb, [d]) }]]), model.arch.fanInFanOut);
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
