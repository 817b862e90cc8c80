/**
 * What H sees of a fact, and ROME's closed-form key side, from one batched
 * forward pass of the base model over the fact's phrasings:
 *
 *   k*  = mean over the phrasings of the edited projection's input at the subject's last token;
 *   A   = (C⁻¹k*)ᵀ / (k*ᵀC⁻¹k*)   (so A k* = 1; C from the cached key covariance);
 *   z   = [k* ÷ rms, o ÷ rms, e_t ÷ rms] (features in hypernet.ts).
 *
 * For training, the same forward also gives every position's key of the
 * fact's training rows, so the rank-one update's effect at each position,
 * s = A·k, is a constant: the edited MLP output is o + s·δ, exactly the
 * LoRA ΔW = δ A applied there (the edited projection's input does not depend
 * on its own weights).
 */
import { Tensor, noGrad } from '@catechism/core/tensor';
import type { CausalLM, Hooks, Tokenizer } from '@catechism/core/models';
import { cholSolve, encodeTrainingPair, mlpInputFrom, mlpInputHooks, padBatch, padId, subjectSpan, trainPhrasings, type EditFact, type Rec, type TemplateBank } from '@catechism/core/edit';
import type { HyperShape, ZPart } from './hypernet.js';

export class FactError extends Error {
  constructor(message: string, readonly factId: string, readonly field: string) {
    super(message);
    this.name = 'FactError';
  }
}

/** The phrasings of a fact that define k*: its prompt, its train probes, then its relation's training phrasings. */
export function factPhrasings(fact: EditFact, probes: readonly Rec[], templates: TemplateBank | null | undefined, max = 12): string[] {
  const out: string[] = [];
  const add = (p: string) => {
    if (!out.includes(p)) out.push(p);
  };
  add(fact.prompt.replace('{}', fact.subject));
  for (const p of probes) {
    if (p.fact_id === fact.id && p.split === 'train' && (p.role === 'edit' || p.role === 'paraphrase') && typeof p.prompt === 'string') add(p.prompt);
  }
  for (const t of trainPhrasings(templates, fact.relation)) add(t.replace('{}', fact.subject));
  return out.slice(0, max);
}

/** One encoded row: prompt (+ target but its last token), where the subject ends, which positions score what. */
export interface Row {
  ids: number[];
  /** Index of the subject's last token (-1: no subject in this row). */
  subj: number;
  /** Target tokens: [position, token id] (edit rows). */
  targets: Array<[number, number]>;
}

export function editRow(tok: Tokenizer, fact: EditFact, prompt: string): Row {
  const { promptIds, targetIds } = encodeTrainingPair(tok, prompt, fact.target_new!);
  const [, s1] = subjectSpan(tok, promptIds, fact.subject);
  if (s1 < 0) throw new FactError(`fact ${fact.id}: subject ${JSON.stringify(fact.subject)} not found in the tokens of ${JSON.stringify(prompt)}`, fact.id, 'subject');
  return {
    ids: promptIds.concat(targetIds.slice(0, -1)),
    subj: s1 - 1,
    targets: targetIds.map((t, j) => [promptIds.length - 1 + j, t] as [number, number]),
  };
}

export interface FactFeatures {
  z: Float32Array;
  /** ‖o‖, the MLP output's norm at the subject (δ's scale: ROME clamps ‖δ‖ to a multiple of it). */
  oRms: number;
  kStar: Float64Array;
  /** C⁻¹k* (for batch solves). */
  cInvK: Float64Array;
  /** A = C⁻¹k* / (k*ᵀC⁻¹k*). */
  A: Float32Array;
}

/** v ÷ rms(v) written into `into` at `at` (H's inputs are each scaled to unit RMS). */
export function rmsNormed(v: ArrayLike<number>, into: Float32Array, at: number): void {
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i] * v[i];
  const r = Math.sqrt(s / v.length) || 1;
  for (let i = 0; i < v.length; i++) into[at + i] = v[i] / r;
}

export interface Featurized {
  feats: FactFeatures;
  /** Per row, s = A·k at every position (row-major over the row's tokens). */
  s: Float32Array[];
}

/**
 * Features of one fact from one forward of `rows` (the first `nKey` rows are
 * the phrasings that define k*; the rest, e.g. keep prompts, only get s).
 */
export function featurize(
  model: CausalLM, layer: number, shape: HyperShape, chol: Float64Array, fact: EditFact, targetId: number, rows: readonly Row[], nKey: number, withS: boolean,
): Featurized {
  const D = shape.keyDim;
  const H = shape.hidden;
  const kStar = new Float64Array(D);
  const o = new Float64Array(H);
  const rel = new Float64Array(H);
  const wantRel = shape.z.includes('rel');
  const top = `layers.${model.config.layers - 1}.resid_post`;
  const sOut: Float32Array[] = [];
  let cInvK: Float64Array = new Float64Array(D);
  const A = new Float32Array(D);
  noGrad(() => {
    const { ids, mask, T } = padBatch(rows.map((r) => r.ids), padId(model));
    const got: { resid?: Tensor; attn?: Tensor } = {};
    let mlpOut: Tensor | null = null;
    let last: Tensor | null = null;
    const extra: Hooks = { [`layers.${layer}.mlp`]: { capture: (x) => (mlpOut = x) } };
    if (wantRel) extra[top] = { capture: (x) => (last = x) };
    const hooks = mlpInputHooks(layer, got, extra);
    model.forward(ids, [rows.length, T], { attentionMask: mask, skipLogits: true, hooks });
    const k = mlpInputFrom(model, layer, got.resid!, got.attn!).data;
    const out = (mlpOut as unknown as Tensor).data;
    for (let b = 0; b < nKey; b++) {
      const p = b * T + rows[b].subj;
      for (let i = 0; i < D; i++) kStar[i] += k[p * D + i] / nKey;
      for (let i = 0; i < H; i++) o[i] += out[p * H + i] / nKey;
      if (wantRel && rows[b].targets.length) {
        const q = b * T + rows[b].targets[0][0];
        const lr = (last as unknown as Tensor).data;
        for (let i = 0; i < H; i++) rel[i] += lr[q * H + i] / nKey;
      }
    }
    cInvK = cholSolve(chol, D, kStar);
    let denom = 0;
    for (let i = 0; i < D; i++) denom += cInvK[i] * kStar[i];
    for (let i = 0; i < D; i++) A[i] = cInvK[i] / denom;
    if (withS) {
      rows.forEach((r, b) => {
        const s = new Float32Array(r.ids.length);
        for (let t = 0; t < r.ids.length; t++) {
          let acc = 0;
          const base = (b * T + t) * D;
          for (let i = 0; i < D; i++) acc += A[i] * k[base + i];
          s[t] = acc;
        }
        sOut.push(s);
      });
    }
  });
  let oS = 0;
  for (const v of o) oS += v * v;
  const oRms = Math.sqrt(oS);
  const emb = model.weight(`${model.arch.tokenEmbedding}.weight`).data.subarray(targetId * H, (targetId + 1) * H);
  const z = new Float32Array(shape.z.reduce((n, p) => n + (p === 'key' ? D : H), 0));
  let at = 0;
  const part: Record<ZPart, ArrayLike<number>> = { key: kStar, out: o, target: emb, rel };
  for (const p of shape.z) {
    rmsNormed(part[p], z, at);
    at += part[p].length;
  }
  return { feats: { z, oRms, kStar, cInvK, A }, s: sOut };
}
