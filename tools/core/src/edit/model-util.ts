/**
 * Model-side helpers for editing: which module is a layer's MLP output
 * projection, the activations entering it (recomputed from the residual
 * stream, since hooks see block outputs only), base-model hashes, and a
 * top-1 scorer.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Tensor, fromData, linear, noGrad, reshape, add } from '../tensor/index.js';
import type { CausalLM } from '../models/causal-lm.js';
import type { Hooks } from '../models/hooks.js';
import { baseOps, mlpModules, mlpOutput } from '../models/arch/index.js';

/** The MLP output projection of layer `l` (ROME's and distillation's default target). */
export function mlpOutModule(model: CausalLM, l: number): string {
  const c = model.config;
  if (!(Number.isInteger(l) && l >= 0 && l < c.layers)) throw new RangeError(`layer ${l} is outside the model's ${c.layers} layers`);
  return mlpOutput(model.arch, l);
}

/**
 * The modules whose outputs make layer `l`'s MLP output: the dense output
 * projection, or each expert's of a sparse MoE layer (mlpOutModule's glob,
 * spelled out). The router's top-k weights sum to 1, so an affine change made
 * alike to every expert's output is that change of the block's output.
 */
export function mlpOutModules(model: CausalLM, l: number): string[] {
  mlpOutModule(model, l); // the range check
  return mlpModules(model.arch, model.config, l).map((m) => m.out);
}

/** Default target layer: the middle of the stack (where factual recall sits in small models). */
export function middleLayer(model: CausalLM): number {
  return Math.floor((model.config.layers - 1) / 2);
}

/** Layer of a module name (`….h.3.mlp.…` or `….layers.3.…` → 3), or -1. */
export function moduleLayer(name: string): number {
  const m = /(?:^|\.)(?:h|layers)\.(\d+)\./.exec(name);
  return m ? Number(m[1]) : -1;
}

/** True when the module's output is the whole MLP block output (hook site `layers.{l}.mlp`). */
export function isMlpOut(model: CausalLM, name: string): boolean {
  const l = moduleLayer(name);
  if (l < 0 || l >= model.config.layers) return false;
  return model.arch.layer(l).mlp?.out === model.arch.canonical(name);
}

/** Expand `*` and `{L}` patterns to the model's linear module names. */
export function resolveTargets(model: CausalLM, targets: readonly string[], layer: number): string[] {
  const mods = model.linearModules().map(([n]) => n);
  const out: string[] = [];
  for (const raw of targets) {
    const t = raw.replaceAll('{L}', String(layer));
    let hits: string[];
    if (t.includes('*')) {
      const re = new RegExp('^(?:transformer\\.)?' + t.split('*').map((s) => s.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('[^.]+') + '$');
      hits = mods.filter((n) => re.test(n) || re.test(n.replace(/^transformer\./, '')));
    } else {
      hits = model.matchModules([t]).map(([n]) => n);
    }
    if (hits.length === 0) throw new RangeError(`target '${raw}' matches no linear module of this ${model.config.modelType} model`);
    for (const h of hits) if (!out.includes(h)) out.push(h);
  }
  return out;
}

/** Hook site of the residual stream entering layer l. */
function residInSite(l: number): string {
  return l === 0 ? 'embed' : `layers.${l - 1}.resid_post`;
}

/**
 * Hooks that capture what layer `l`'s MLP needs to recompute its input:
 * the residual entering the layer and the attention output. Call
 * `mlpInputFrom` with the captured tensors after the forward.
 */
export function mlpInputHooks(l: number, into: { resid?: Tensor; attn?: Tensor }, base: Hooks = {}): Hooks {
  const hooks: Hooks = { ...base };
  const wrap = (site: string, key: 'resid' | 'attn') => {
    const prev = hooks[site];
    hooks[site] = {
      ...prev,
      capture: (x, s) => {
        prev?.capture?.(x, s);
        into[key] = x;
      },
    };
  };
  wrap(residInSite(l), 'resid');
  wrap(`layers.${l}.attn`, 'attn');
  return hooks;
}

/**
 * Layer l's residual stream after its attention, [B, T, hidden] (the `h` of
 * forward's `fromMlp`), computed once without gradients by whatever adapters
 * are active: later forwards that change nothing before that MLP start there.
 */
export function residBeforeMlp(model: CausalLM, l: number, ids: Int32Array, dims: readonly [number, number], mask?: Uint8Array): Tensor {
  const { resid, attn } = capturedMlpInput(model, l, ids, dims, mask);
  return noGrad(() => add(resid, attn));
}

/** One forward without gradients up to layer l's MLP: the residual entering the layer and its attention output. */
function capturedMlpInput(model: CausalLM, l: number, ids: Int32Array, dims: readonly [number, number], mask?: Uint8Array): { resid: Tensor; attn: Tensor } {
  const got: { resid?: Tensor; attn?: Tensor } = {};
  noGrad(() => model.forward(ids, dims, { ...(mask ? { attentionMask: mask } : {}), skipLogits: true, hooks: mlpInputHooks(l, got) }));
  return { resid: got.resid!, attn: got.attn! };
}

/**
 * forward's `fromMlp` for an edit of layer l's MLP output projection alone
 * (ROME's rank-one update): the residual after its attention and the MLP's
 * keys by the base weights, computed once without gradients, so every later
 * forward starts at the output projection. Call it with no adapter active
 * that changes anything before that projection.
 */
export function mlpStart(model: CausalLM, l: number, ids: Int32Array, dims: readonly [number, number], mask?: Uint8Array): { layer: number; h: Tensor; keys: Tensor } {
  if (!model.arch.layer(l).mlp) throw new RangeError('MLP keys of a sparse MoE layer are per expert; ROME/Phase A support dense MLPs only');
  const { resid, attn } = capturedMlpInput(model, l, ids, dims, mask);
  return noGrad(() => ({
    layer: l,
    h: add(resid, attn),
    keys: reshape(mlpInputFrom(model, l, resid, attn), [dims[0], dims[1], model.config.intermediate]),
  }));
}

/**
 * Residual rows for forward's `fromMlp` in a training loop whose batches
 * change every step: each sequence's layer-l residual after attention (its
 * real tokens only) is computed the first time the sequence is used and
 * kept, and `batch` lays the rows out as `padBatch` lays out their tokens
 * (zeros at the padding, which no real position reads).
 */
export class ResidCache<K> {
  private readonly rows = new Map<K, Float32Array>();
  constructor(private readonly model: CausalLM, readonly layer: number) {}

  batch(keys: readonly K[], seqs: readonly number[][], T: number): { layer: number; h: Tensor } {
    const H = this.model.config.hidden;
    // the first index of each key not kept yet
    const missing: number[] = [];
    const seen = new Set<K>();
    keys.forEach((k, i) => {
      if (!this.rows.has(k) && !seen.has(k)) missing.push(i);
      seen.add(k);
    });
    if (missing.length) {
      const { ids, mask, T: Tm } = padBatch(missing.map((i) => seqs[i]), padId(this.model));
      const h = residBeforeMlp(this.model, this.layer, ids, [missing.length, Tm], mask);
      missing.forEach((i, b) => this.rows.set(keys[i], h.data.slice(b * Tm * H, (b * Tm + seqs[i].length) * H)));
    }
    const out = new Float32Array(keys.length * T * H);
    keys.forEach((k, b) => out.set(this.rows.get(k)!, b * T * H));
    return { layer: this.layer, h: fromData(out, [keys.length, T, H]) };
  }
}

/**
 * The MLP keys of layer l — the input of its MLP output projection, as the
 * family's description computes them (GPT-2: gelu of the first projection;
 * Llama: SwiGLU) — from the captured residual + attention output,
 * with base weights. Rows [N, intermediate] for N = B·T positions.
 */
export function mlpInputFrom(model: CausalLM, l: number, resid: Tensor, attn: Tensor): Tensor {
  const L = model.arch.layer(l);
  if (!L.mlp) throw new RangeError('MLP keys of a sparse MoE layer are per expert; ROME/Phase A support dense MLPs only');
  return model.arch.mlpKeys(baseOps(model.arch, model.weights), L.mlp, mlpNormedFrom(model, l, resid, attn));
}

/** Layer l's MLP input after its norm (what the input projection reads), rows [N, hidden], from the captured residual + attention output. */
export function mlpNormedFrom(model: CausalLM, l: number, resid: Tensor, attn: Tensor): Tensor {
  const c = model.config;
  const h = add(resid, attn);
  return model.arch.norm(baseOps(model.arch, model.weights), model.arch.layer(l).mlpNorm, reshape(h, [h.size / c.hidden, c.hidden]), c.normEps);
}

/** W·k for module `mod` (no bias), in the module's layout (GPT-2's Conv1D is [in, out]). */
export function applyWeight(model: CausalLM, mod: string, k: Tensor): Tensor {
  return linear(k, model.weight(`${mod}.weight`), null, model.arch.layout(model.arch.canonical(mod)));
}

/** Right-pad rows into one batch: ids, mask, and the flat index of each row's last token. */
export function padBatch(rows: readonly number[][], pad: number): { ids: Int32Array; mask: Uint8Array; T: number; last: Int32Array } {
  const B = rows.length;
  const T = Math.max(...rows.map((r) => r.length));
  const ids = new Int32Array(B * T).fill(pad);
  const mask = new Uint8Array(B * T);
  const last = new Int32Array(B);
  rows.forEach((r, b) => {
    ids.set(r, b * T);
    mask.fill(1, b * T, b * T + r.length);
    last[b] = b * T + r.length - 1;
  });
  return { ids, mask, T, last };
}

/**
 * Rows split into `k` batches of rows of like length (sorted by length, equal
 * shares), each padded to its own longest: a pool of prompts from 7 to 21
 * tokens padded as one batch is a third padding, which every step would
 * compute. `rows` holds each batch's indices into the input.
 */
export function lengthBuckets(rows: readonly number[][], pad: number, k: number): Array<ReturnType<typeof padBatch> & { rows: number[] }> {
  const order = rows.map((_, i) => i).sort((a, b) => rows[a].length - rows[b].length || a - b);
  const n = Math.max(1, Math.min(k, order.length));
  const out: Array<ReturnType<typeof padBatch> & { rows: number[] }> = [];
  for (let j = 0; j < n; j++) {
    const idx = order.slice(Math.floor((j * order.length) / n), Math.floor(((j + 1) * order.length) / n));
    if (idx.length) out.push({ ...padBatch(idx.map((i) => rows[i]), pad), rows: idx });
  }
  return out;
}

/**
 * Put `weights` in place of the model's tensors of the same names (a folded
 * adapter, or the base weights back); returns the function that restores the
 * weights the model had before.
 */
export function replaceWeights(model: CausalLM, weights: ReadonlyMap<string, Tensor>): () => void {
  const before = new Map(model.weights);
  for (const [k, v] of weights) model.weights.set(k, v);
  return () => {
    model.weights.clear();
    for (const [k, v] of before) model.weights.set(k, v);
  };
}

export function padId(model: CausalLM): number {
  return model.config.padTokenId ?? model.config.eosTokenId ?? 0;
}

/** Greedy next token after each prompt (with the model's active adapters). */
export function top1(model: CausalLM, prompts: readonly number[][], batchSize = 32): number[] {
  const out: number[] = [];
  const V = model.config.vocabSize;
  noGrad(() => {
    for (let s = 0; s < prompts.length; s += batchSize) {
      const rows = prompts.slice(s, s + batchSize);
      const { ids, mask, T, last } = padBatch(rows, padId(model));
      const { logits } = model.forward(ids, [rows.length, T], { attentionMask: mask, logitsAt: last });
      for (let b = 0; b < rows.length; b++) {
        const row = logits.data.subarray(b * V, (b + 1) * V);
        let best = 0;
        for (let i = 1; i < V; i++) if (row[i] > row[best]) best = i;
        out.push(best);
      }
    }
  });
  return out;
}

/** Last-position logits [n, V] of prompts (no grad). */
export function lastLogits(model: CausalLM, prompts: readonly number[][], hooks?: Hooks): Tensor {
  return noGrad(() => {
    const { ids, mask, T, last } = padBatch(prompts, padId(model));
    return model.forward(ids, [prompts.length, T], { attentionMask: mask, logitsAt: last, ...(hooks ? { hooks } : {}) }).logits;
  });
}

const hashCache = new Map<string, string>();

/**
 * sha256 identifying a model directory's weights: the sha256 of its single
 * safetensors file, or of the sorted "name sha256" lines of its shards.
 */
export function modelSha256(dir: string): string {
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.safetensors')).sort();
  if (files.length === 0) throw new RangeError(`model directory ${dir} has no .safetensors files`);
  const key = files.map((f) => {
    const st = fs.statSync(path.join(dir, f));
    return `${path.resolve(dir, f)}:${st.size}:${st.mtimeMs}`;
  }).join('|');
  const hit = hashCache.get(key);
  if (hit) return hit;
  const per = files.map((f) => `${f} ${createHash('sha256').update(fs.readFileSync(path.join(dir, f))).digest('hex')}`);
  const sha = files.length === 1 ? per[0].split(' ')[1] : createHash('sha256').update(per.join('\n') + '\n').digest('hex');
  hashCache.set(key, sha);
  return sha;
}

/** Float32 copy of rows `idx` of a [N, D] tensor's data. */
export function pickRows(t: Tensor, idx: readonly number[], D: number): Tensor {
  const out = new Float32Array(idx.length * D);
  idx.forEach((r, i) => out.set(t.data.subarray(r * D, (r + 1) * D), i * D));
  return fromData(out, [idx.length, D]);
}

/** The activation at hook site `site` (e.g. `layers.2.mlp`, `layers.2.resid_post`) at each prompt's last token, [n × H] float64. */
export function lastTokenActivations(
  model: CausalLM, tok: { encode(text: string): number[] }, prompts: readonly string[], site: string, batchSize = 32,
): Float64Array {
  const H = model.config.hidden;
  const out = new Float64Array(prompts.length * H);
  noGrad(() => {
    for (let s = 0; s < prompts.length; s += batchSize) {
      const rows = prompts.slice(s, s + batchSize).map((p) => tok.encode(p));
      const { ids, mask, T, last } = padBatch(rows, padId(model));
      let y: Tensor | null = null;
      model.forward(ids, [rows.length, T], { attentionMask: mask, skipLogits: true, hooks: { [site]: { capture: (x) => (y = x) } } });
      const data = (y as unknown as Tensor).data;
      rows.forEach((_, b) => {
        for (let a = 0; a < H; a++) out[(s + b) * H + a] = data[last[b] * H + a];
      });
    }
  });
  return out;
}
