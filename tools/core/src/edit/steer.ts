/**
 * Steering vectors by contrastive activation addition (CAA; Rimsky et al.
 * 2024), `lora-train --method steer`.
 *
 * Input: `concept` records with two labels, the contrastive prompts (e.g.
 * label "toward" for prompts showing the behaviour, "away" for their
 * counterparts; --steer-toward names the positive label, default the first in
 * sort order). v = mean of the residual stream after layer L (site
 * `layers.L.resid_post`, each prompt's last token) over the positive prompts
 * minus the mean over the others; the edit adds scale · v to that residual
 * stream at every position.
 *
 * Stored bias-only: the module whose output is added into that residual
 * stream last is layer L's MLP output projection, so scale · v is its PEFT
 * lora_B bias (lora_A and lora_B are a zero rank-one pair: PEFT's format has
 * no bias without them).
 */
import { InputError, UsageError } from '../records/errors.js';
import type { CausalLM } from '../models/causal-lm.js';
import type { Tokenizer } from '../models/loader.js';
import { LoraAdapter } from '../models/lora.js';
import { fromData } from '../tensor/index.js';
import { lastTokenActivations, middleLayer, mlpOutModule, mlpOutModules } from './model-util.js';
import type { Rec } from './data.js';
import type { EditCall, EditMethod, MadeEdit } from './method.js';

/** The residual stream after layer `l` at each prompt's last token, [n × H] float64. */
export function residActivations(model: CausalLM, tok: Tokenizer, prompts: readonly string[], l: number, batchSize = 32): Float64Array {
  return lastTokenActivations(model, tok, prompts, `layers.${l}.resid_post`, batchSize);
}

/** mean(X[positive rows]) − mean(X[other rows]). */
export function meanDifference(X: Float64Array, H: number, positive: readonly boolean[]): Float64Array {
  const v = new Float64Array(H);
  const np = positive.filter(Boolean).length, nn = positive.length - np;
  if (np === 0 || nn === 0) throw new RangeError('meanDifference: both sides need at least one prompt');
  positive.forEach((pos, i) => {
    for (let a = 0; a < H; a++) v[a] += (pos ? 1 / np : -1 / nn) * X[i * H + a];
  });
  return v;
}

/**
 * A bias-only adapter adding `bias` to the output of module `mod` (or of each
 * of several modules of one input width `fin`: a sparse MoE layer's experts,
 * whose top-k weights sum to 1, so the block's output moves by `bias` too).
 */
export function biasAdapter(model: CausalLM, mod: string | readonly string[], bias: Float64Array, name: string, fin: number): LoraAdapter {
  const H = bias.length;
  const mods = typeof mod === 'string' ? [mod] : mod;
  return new LoraAdapter(name, 1, 1, new Map(mods.map((m) => [m, { A: fromData(new Float32Array(fin), [1, fin]), B: fromData(new Float32Array(H), [H, 1]), bias: fromData(Float32Array.from(bias), [H]) }])), model.arch.fanInFanOut);
}

export interface SteerOptions {
  toward?: string;
  scale: number;
  concept?: string;
}

function steerEdit(call: EditCall<SteerOptions>): MadeEdit[] {
  const { res, batch, common, options: o } = call;
  const { model, tokenizer: tok } = res;
  const all = batch.records.filter((r) => r.kind === 'concept');
  const names = [...new Set(all.map((r) => String(r.concept)))];
  if (names.length === 0) throw new InputError('--method steer needs `concept` records (contrastive prompts with two labels); none in the input', { field: 'kind' });
  if (o.concept === undefined && names.length > 1) throw new UsageError(`the input holds ${names.length} concepts (${names.join(', ')}); choose one with --steer-concept NAME`);
  const name = o.concept ?? names[0];
  const recs = all.filter((r) => r.concept === name && r.split !== 'test');
  const labels = [...new Set(recs.map((r) => String(r.label)))].sort();
  if (labels.length !== 2) throw new InputError(`concept ${name}: steering needs exactly two labels (the contrastive sides), got ${labels.length} (${labels.join(', ')})`, { field: 'label' });
  const toward = o.toward ?? labels[0];
  if (!labels.includes(toward)) throw new UsageError(`--steer-toward ${toward}: concept ${name} has labels ${labels.join(' and ')}`);
  const layer = common.layer ?? middleLayer(model);
  const H = model.config.hidden;
  const t0 = Date.now();
  const X = residActivations(model, tok, recs.map((r) => String(r.prompt)), layer);
  const v = meanDifference(X, H, recs.map((r) => r.label === toward));
  const bias = v.map((x) => x * o.scale);
  const mod = mlpOutModule(model, layer);
  const writers = mlpOutModules(model, layer);
  const canon = model.arch.canonical(writers[0]);
  const w = model.weight(`${canon}.weight`);
  const fin = model.arch.layout(canon) === 'in_out' ? w.shape[0] : w.shape[1];
  let norm = 0;
  for (const x of v) norm += x * x;
  return [{
    adapter: biasAdapter(model, writers, bias, `steer-${name}`, fin),
    facts: [],
    records: recs as Rec[],
    hyperparameters: { concept: name, toward, labels, site: `layers.${layer}.resid_post`, position: 'last', layer, module: mod, scale: o.scale, examples: recs.length },
    training: { vector_norm: Math.sqrt(norm) },
    summary: `steer ${name} toward ${toward}: layers.${layer}.resid_post, ‖v‖ ${Math.sqrt(norm).toFixed(3)} × ${o.scale}, ${recs.length} prompts, ${((Date.now() - t0) / 1000).toFixed(1)} s`,
  }];
}

export const steerMethod: EditMethod<SteerOptions> = {
  name: 'steer',
  describe:
    'steering vector (contrastive activation addition): from `concept` records with two labels, the mean difference of the residual stream after --layer ' +
    '(default the middle layer; last token) between the --steer-toward side and the other, × --steer-scale, stored as a bias-only adapter on that layer\'s MLP output projection.',
  ops: [],
  options: {
    'steer-toward': { type: 'string', describe: 'the label steered toward (default: the first label in sort order)' },
    'steer-scale': { type: 'number', default: 1, describe: 'multiplies the mean-difference vector' },
    'steer-concept': { type: 'string', describe: 'the concept to use when the input holds several (default: the only one)' },
  },
  parseOptions(flags) {
    const scale = flags['steer-scale'] as number;
    if (!Number.isFinite(scale)) throw new UsageError(`--steer-scale: expected a number, got ${String(flags['steer-scale'])}`);
    return {
      scale,
      ...(typeof flags['steer-toward'] === 'string' ? { toward: flags['steer-toward'] } : {}),
      ...(typeof flags['steer-concept'] === 'string' ? { concept: flags['steer-concept'] } : {}),
    };
  },
  edit: steerEdit,
};
