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
import { crossEntropy, fromData, matmul, reshape } from '@catechism/core/tensor';
import type { CausalLM } from '@catechism/core/models';
import { padBatch, padId } from '@catechism/core/edit';
import type { Row } from './features.js';

export interface RefineOptions {
  /** Adam steps (0: H's δ as is). */
  steps: number;
  /** Step size, as a share of ‖δ_H‖ per coordinate (Adam's normalised step · lr · ‖δ_H‖/√H). */
  lr: number;
  /** ‖δ‖ ≤ maxNorm · ‖δ_H‖ after every step. */
  maxNorm: number;
}

/** Tuned on the tuning split (edits 1–12 of the dense world; README). */
export const REFINE_DEFAULTS: RefineOptions = { steps: 10, lr: 0.1, maxNorm: 0.4 };

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
  const at: number[] = [];
  const tg: number[] = [];
  rows.forEach((r, b) => {
    for (const [p, id] of r.targets) {
      at.push(b * T + p);
      tg.push(id);
    }
  });
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
