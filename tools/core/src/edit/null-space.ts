/**
 * AlphaEdit-style null-space constraint for LoRA (Fang et al. 2025,
 * "AlphaEdit: Null-Space Constrained Knowledge Editing"): the update ΔW =
 * B·A of an MLP output projection changes the output for a key k by B·(A·k).
 * Keeping A's rows orthogonal to the dominant subspace of the preserved keys
 * (the projection's inputs on facts the model must keep, and general text)
 * keeps ΔW·k ≈ 0 for them, while the edit acts through the rest.
 *
 * The dominant subspace is found by subspace iteration on C = E[k kᵀ] with
 * the native GEMM (a full eigendecomposition of a 512² matrix in JS took
 * minutes); each iteration re-orthonormalises by Cholesky QR, twice.
 */
import { Tensor, fromData, matmul, noGrad, transpose } from '../tensor/index.js';
import type { CausalLM } from '../models/causal-lm.js';
import { Rng } from '../util/random.js';
import { mlpInputFrom, mlpInputHooks, padBatch, padId } from './model-util.js';

export interface KeySubspace {
  /** Orthonormal basis [D, k], row-major. */
  basis: Float32Array;
  dim: number;
  k: number;
  /** Share of E[‖k‖²] inside the subspace. */
  energy: number;
  /** Keys the covariance was estimated from. */
  count: number;
}

/** Inputs of layer l's MLP output projection at every real position of each row, [N, D]. */
export function mlpKeys(model: CausalLM, l: number, rows: readonly number[][]): Tensor {
  const parts: Float32Array[] = [];
  let D = 0;
  let N = 0;
  noGrad(() => {
    for (let s = 0; s < rows.length; s += 32) {
      const chunk = rows.slice(s, s + 32).filter((r) => r.length > 0);
      if (!chunk.length) continue;
      const { ids, mask, T } = padBatch(chunk, padId(model));
      const got: { resid?: Tensor; attn?: Tensor } = {};
      model.forward(ids, [chunk.length, T], { attentionMask: mask, skipLogits: true, hooks: mlpInputHooks(l, got) });
      const k = mlpInputFrom(model, l, got.resid!, got.attn!);
      D = k.shape[1];
      for (let i = 0; i < mask.length; i++) {
        if (!mask[i]) continue;
        parts.push(k.data.slice(i * D, (i + 1) * D));
        N++;
      }
    }
  });
  const out = new Float32Array(N * D);
  parts.forEach((p, i) => out.set(p, i * D));
  return fromData(out, [N, D]);
}

/** Orthonormalise the columns of Z [D, k] in place by Cholesky QR (Z = Q Lᵀ). */
function cholQr(Z: Float32Array, D: number, k: number): void {
  const G = noGrad(() => {
    const z = fromData(Z, [D, k]);
    return matmul(transpose(z, 0, 1), z).data;
  });
  let tr = 0;
  for (let i = 0; i < k; i++) tr += G[i * k + i];
  const L = new Float64Array(k * k);
  const ridge = 1e-12 * (tr / k) + 1e-30;
  for (let i = 0; i < k; i++) {
    for (let j = 0; j <= i; j++) {
      let s = G[i * k + j] + (i === j ? ridge : 0);
      for (let m = 0; m < j; m++) s -= L[i * k + m] * L[j * k + m];
      if (i === j) L[i * k + i] = Math.sqrt(Math.max(s, ridge));
      else L[i * k + j] = s / L[j * k + j];
    }
  }
  // each row z of Z: q Lᵀ = z → L qᵀ = zᵀ (forward substitution)
  const q = new Float64Array(k);
  for (let r = 0; r < D; r++) {
    const o = r * k;
    for (let i = 0; i < k; i++) {
      let s = Z[o + i];
      for (let m = 0; m < i; m++) s -= L[i * k + m] * q[m];
      q[i] = s / L[i * k + i];
    }
    for (let i = 0; i < k; i++) Z[o + i] = q[i];
  }
}

/**
 * The dominant k-dimensional subspace of E[k kᵀ] over the rows of `keys`
 * [N, D] (subspace iteration, `iters` rounds, seeded start).
 */
export function dominantKeySubspace(keys: Tensor, k: number, opts: { iters?: number; seed?: number } = {}): KeySubspace {
  const [N, D] = keys.shape;
  if (!(k >= 1 && k < D)) throw new RangeError(`null space: protected rank ${k} must be in 1..${D - 1}`);
  const C = noGrad(() => matmul(transpose(keys, 0, 1), keys));
  const rng = new Rng(opts.seed ?? 0);
  let Q = new Float32Array(D * k);
  for (let i = 0; i < Q.length; i++) Q[i] = rng.normal();
  cholQr(Q, D, k);
  for (let it = 0; it < (opts.iters ?? 30); it++) {
    Q = noGrad(() => matmul(C, fromData(Q, [D, k])).data.slice());
    cholQr(Q, D, k);
    cholQr(Q, D, k);
  }
  // energy: trace(Qᵀ C Q) / trace(C)
  const CQ = noGrad(() => matmul(C, fromData(Q, [D, k])).data);
  let inside = 0;
  for (let i = 0; i < D * k; i++) inside += Q[i] * CQ[i];
  let tr = 0;
  for (let i = 0; i < D; i++) tr += C.data[i * D + i];
  return { basis: Q, dim: D, k, energy: tr > 0 ? inside / tr : 0, count: N };
}

/** A ← A − (A Q) Qᵀ for A [r, D]: A's rows leave the protected subspace. */
export function projectOut(A: Tensor, sub: KeySubspace): void {
  const [r, D] = A.shape;
  if (D !== sub.dim) throw new RangeError(`null space: lora_A has ${D} inputs, the key subspace ${sub.dim}`);
  noGrad(() => {
    const Q = fromData(sub.basis, [D, sub.k]);
    const aq = matmul(fromData(A.data, [r, D]), Q);
    const back = matmul(aq, transpose(Q, 0, 1)).data;
    for (let i = 0; i < A.data.length; i++) A.data[i] -= back[i];
  });
}
