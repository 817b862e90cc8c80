/**
 * A few gradient steps on H's δ (optional, `--refine N`): the value H gives
 * is a starting point; N Adam steps on the fact's own target NLL (its
 * phrasings, through the frozen model with the rank-one edit applied at
 * every position, as in training) move it the rest of the way, and a norm
 * bound, ‖δ‖ ≤ maxNorm · ‖δ_H‖, keeps the edit's reach into other prompts
 * (which grows with ‖δ‖²: the key side A·k is never exactly 0 elsewhere)
 * where H's scale put it, or below. ROME optimises δ from zero for 200
 * steps with a norm clamp relative to the MLP output; this starts from H's
 * δ and takes ~10 steps. Deterministic (no randomness).
 */
import { Tensor, crossEntropy, fromData, matmul, noGrad, reshape } from '@catechism/core/tensor';
import type { CausalLM } from '@catechism/core/models';
import { mlpInputFrom, mlpInputHooks, padBatch, padId } from '@catechism/core/edit';
import type { Row } from './features.js';

export interface RefineOptions {
  /** Adam steps (0: H's δ as is). */
  steps: number;
  /** Step size, as a share of ‖δ_H‖ per coordinate (Adam's normalised step · lr · ‖δ_H‖/√H). */
  lr: number;
  /** ‖δ‖ ≤ maxNorm · ‖δ_H‖ after every step. */
  maxNorm: number;
  /** The same bound for each δ of a batch (n > 1 facts in one adapter: their reaches add). */
  batchMaxNorm: number;
}

/** Tuned on the tuning split (requests 1–20 of the dense world; README). */
export const REFINE_DEFAULTS: RefineOptions = { steps: 10, lr: 0.1, maxNorm: 0.4, batchMaxNorm: 0.2 };

/** Flat positions (row b, token p → b·T + p) of every target token of padded rows, and the token ids. */
function targetPositions(rows: readonly Row[], T: number): { at: number[]; tg: number[] } {
  const at: number[] = [];
  const tg: number[] = [];
  rows.forEach((r, b) => {
    for (const [p, id] of r.targets) {
      at.push(b * T + p);
      tg.push(id);
    }
  });
  return { at, tg };
}

/**
 * Refine one fact's δ (length H, changed in place) given its rows and s = A·k per row position.
 * Returns the final target NLL (mean over the rows' target tokens).
 */
export function refineDelta(model: CausalLM, layer: number, rows: readonly Row[], s: readonly Float32Array[], delta: Float32Array, o: RefineOptions): number {
  const H = delta.length;
  let n0 = 0;
  for (const v of delta) n0 += v * v;
  n0 = Math.sqrt(n0);
  if (o.steps <= 0 || n0 === 0) return NaN;
  const { ids, mask, T } = padBatch(rows.map((r) => r.ids), padId(model));
  const R = rows.length;
  const S = new Float32Array(R * T);
  rows.forEach((_, b) => S.set(s[b].subarray(0, Math.min(s[b].length, T)), b * T));
  const { at, tg } = targetPositions(rows, T);
  const m = new Float32Array(H);
  const v = new Float32Array(H);
  const step = (o.lr * n0) / Math.sqrt(H);
  let last = NaN;
  for (let k = 0; k < o.steps; k++) {
    const d = fromData(Float32Array.from(delta), [1, H], { requiresGrad: true });
    const added = reshape(matmul(fromData(S, [R * T, 1]), d), [R, T, H]);
    const { logits } = model.forward(ids, [R, T], { attentionMask: mask, logitsAt: Int32Array.from(at), hooks: { [`layers.${layer}.mlp`]: { add: { value: added } } } });
    const ce = crossEntropy(logits, Int32Array.from(tg));
    last = ce.item();
    ce.backward();
    const g = d.grad!.data;
    const c1 = 1 - 0.9 ** (k + 1);
    const c2 = 1 - 0.999 ** (k + 1);
    for (let i = 0; i < H; i++) {
      m[i] = 0.9 * m[i] + 0.1 * g[i];
      v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
      delta[i] -= (step * (m[i] / c1)) / (Math.sqrt(v[i] / c2) + 1e-8);
    }
    let n = 0;
    for (const x of delta) n += x * x;
    n = Math.sqrt(n);
    const cap = o.maxNorm * n0;
    if (n > cap) for (let i = 0; i < H; i++) delta[i] *= cap / n;
  }
  return last;
}

/**
 * A batch's values refined together under the batch's own adapter (MALMEN's
 * point: train on the solve that will be applied): every fact's rows run
 * with all n edits active, S = K Aᵀ at every position (K the rows' keys, A
 * the batch's n×D key side), N Adam steps on Δ [n, H] (changed in place) on
 * the mean target NLL of all the facts, each δ_i held within batchMaxNorm × its
 * H norm. Returns the final NLL.
 */
export function refineBatch(model: CausalLM, layer: number, rowsPer: readonly (readonly Row[])[], A: Float32Array, D: number, delta: Float32Array, o: RefineOptions): number {
  const n = rowsPer.length;
  const H = delta.length / n;
  if (o.steps <= 0) return NaN;
  const rows = rowsPer.flat();
  const R = rows.length;
  const { ids, mask, T } = padBatch(rows.map((r) => r.ids), padId(model));
  const S = new Float32Array(R * T * n);
  noGrad(() => {
    const got: { resid?: Tensor; attn?: Tensor } = {};
    model.forward(ids, [R, T], { attentionMask: mask, skipLogits: true, hooks: mlpInputHooks(layer, got) });
    const k = mlpInputFrom(model, layer, got.resid!, got.attn!).data;
    for (let p = 0; p < R * T; p++) {
      if (!mask[p]) continue;
      for (let j = 0; j < n; j++) {
        let acc = 0;
        for (let d = 0; d < D; d++) acc += A[j * D + d] * k[p * D + d];
        S[p * n + j] = acc;
      }
    }
  });
  const { at, tg } = targetPositions(rows, T);
  const n0 = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let j = 0; j < H; j++) s += delta[i * H + j] ** 2;
    n0[i] = Math.sqrt(s);
  }
  const m = new Float32Array(n * H);
  const v = new Float32Array(n * H);
  let last = NaN;
  for (let k = 0; k < o.steps; k++) {
    const d = fromData(Float32Array.from(delta), [n, H], { requiresGrad: true });
    const added = reshape(matmul(fromData(S, [R * T, n]), d), [R, T, H]);
    const { logits } = model.forward(ids, [R, T], { attentionMask: mask, logitsAt: Int32Array.from(at), hooks: { [`layers.${layer}.mlp`]: { add: { value: added } } } });
    const ce = crossEntropy(logits, Int32Array.from(tg));
    last = ce.item();
    ce.backward();
    const g = d.grad!.data;
    const c1 = 1 - 0.9 ** (k + 1);
    const c2 = 1 - 0.999 ** (k + 1);
    for (let i = 0; i < n; i++) {
      const step = (o.lr * n0[i]) / Math.sqrt(H);
      let nn = 0;
      for (let j = i * H; j < (i + 1) * H; j++) {
        m[j] = 0.9 * m[j] + 0.1 * g[j];
        v[j] = 0.999 * v[j] + 0.001 * g[j] * g[j];
        delta[j] -= (step * (m[j] / c1)) / (Math.sqrt(v[j] / c2) + 1e-8);
        nn += delta[j] * delta[j];
      }
      nn = Math.sqrt(nn);
      const cap = o.batchMaxNorm * n0[i];
      if (nn > cap) for (let j = i * H; j < (i + 1) * H; j++) delta[j] *= cap / nn;
    }
  }
  return last;
}
