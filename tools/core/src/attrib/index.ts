/**
 * Attribution: where in a frozen model a fact's answer is produced.
 *
 *   const input = prepareFact(tok, '{} works for', 'Dabe Tensunov', 'Quonorex');
 *   const tr = causalTrace(model, input, { samples: 4, rng });   // patch (ROME)
 *   const ap = attributionPatch(model, input, { samples: 4, rng }); // atp
 *   const gx = gradXAct(model, input);                            // grad × act
 *   selectLoci(...)                                               // ranked loci
 *
 * Probabilities are of the target's first token after the prompt (as in
 * ROME's causal tracing). Corruption adds Gaussian noise of `noise` × the
 * standard deviation of the token-embedding matrix to the subject's token
 * embeddings (at the `embed` site), one draw per sample; the same draws are
 * used for every restored run so effects of different sites are comparable.
 */
import type { CausalLM } from '../models/causal-lm.js';
import type { Tokenizer } from '../models/loader.js';
import type { Hooks } from '../models/hooks.js';
import { attentionModules } from '../models/arch/index.js';
import { Tensor, fromData, gather, logSoftmax, noGrad, softmax, sum, reshape, slice } from '../tensor/index.js';
import { encodePair } from '../metrics/scoring.js';
import { Rng } from '../util/random.js';

export type SiteKind = 'resid_post' | 'mlp' | 'attn';
export const SITE_KINDS: readonly SiteKind[] = ['resid_post', 'mlp', 'attn'];

/** A fact, tokenised: prompt ids, the subject's token span [start, end), the target's first token. */
export interface AttribInput {
  ids: number[];
  subject: [number, number];
  target: number;
  /** The prompt with the subject filled in. */
  text: string;
}

export class AttribInputError extends Error {
  /** The fact field at fault (prompt, subject, target_true, …). */
  constructor(message: string, readonly field?: string) {
    super(message);
    this.name = 'AttribInputError';
  }
}

function startsWith(a: readonly number[], p: readonly number[]): boolean {
  if (p.length > a.length) return false;
  for (let i = 0; i < p.length; i++) if (a[i] !== p[i]) return false;
  return true;
}

function findSub(a: readonly number[], s: readonly number[]): number {
  outer: for (let i = 0; i + s.length <= a.length; i++) {
    for (let j = 0; j < s.length; j++) if (a[i + j] !== s[j]) continue outer;
    return i;
  }
  return -1;
}

/**
 * Tokenise a fact: `prompt` holds `{}` where the subject goes. The subject's
 * span is found by tokenising the text before it and the text through it
 * (prefix property); when the tokeniser merges across the boundary, by
 * searching the subject's own tokens in the prompt. Throws AttribInputError
 * when neither finds it.
 */
export function prepareFact(tok: Tokenizer, prompt: string, subject: string, target: string): AttribInput {
  const at = prompt.indexOf('{}');
  if (at < 0) throw new AttribInputError(`prompt ${JSON.stringify(prompt)} has no {} for the subject`, 'prompt');
  if (subject.trim() === '') throw new AttribInputError('subject is empty', 'subject');
  if (target.trim() === '') throw new AttribInputError('target is empty', 'target');
  const before = prompt.slice(0, at);
  const text = before + subject + prompt.slice(at + 2);
  const ids = tok.encode(text);
  const a = tok.encode(before);
  const b = tok.encode(before + subject);
  let span: [number, number] | null = null;
  if (b.length > a.length && startsWith(b, a) && startsWith(ids, b)) span = [a.length, b.length];
  else {
    for (const s of [subject, ' ' + subject]) {
      const sub = tok.encode(s, { addSpecialTokens: false });
      const i = sub.length > 0 ? findSub(ids, sub) : -1;
      if (i >= 0) {
        span = [i, i + sub.length];
        break;
      }
    }
  }
  if (!span) throw new AttribInputError(`subject ${JSON.stringify(subject)} not found in the tokens of its prompt ${JSON.stringify(text)}`, 'subject');
  const cont = encodePair(tok, text, target).cont;
  if (cont.length === 0) throw new AttribInputError(`target ${JSON.stringify(target)} encodes to no tokens`, 'target');
  return { ids, subject: span, target: cont[0], text };
}

/** Module (checkpoint name) that writes a site's output, or undefined (residual stream, MoE block). */
export function moduleOf(model: CausalLM, kind: SiteKind, layer: number, expert?: number): string | undefined {
  const L = model.arch.layer(layer);
  if (expert !== undefined) return L.moe?.expert(expert).out;
  if (kind === 'mlp') return L.mlp?.out;
  if (kind === 'attn') return L.attnOut;
  return undefined;
}

const embStd = new WeakMap<CausalLM, number>();
/** Standard deviation of the token-embedding matrix's entries (float64 accumulation). */
export function embeddingStd(model: CausalLM): number {
  const c = embStd.get(model);
  if (c !== undefined) return c;
  const w = model.weight(`${model.arch.tokenEmbedding}.weight`).data;
  let s = 0;
  let s2 = 0;
  for (let i = 0; i < w.length; i++) {
    s += w[i];
    s2 += w[i] * w[i];
  }
  const m = s / w.length;
  const std = Math.sqrt(Math.max(0, s2 / w.length - m * m));
  embStd.set(model, std);
  return std;
}

export interface NoiseOptions {
  /** Corrupted runs averaged over (default 10). */
  samples?: number;
  /** Noise scale in embedding standard deviations (default 3). */
  noise?: number;
  rng?: Rng;
}

/** One noise draw per sample, each [subject tokens × hidden]. */
export function drawNoise(model: CausalLM, input: AttribInput, opts: NoiseOptions): Float32Array[] {
  const S = opts.samples ?? 10;
  if (!Number.isInteger(S) || S < 1) throw new RangeError(`samples must be a positive integer, got ${S}`);
  const rng = opts.rng ?? new Rng(0);
  const sd = (opts.noise ?? 3) * embeddingStd(model);
  const n = (input.subject[1] - input.subject[0]) * model.config.hidden;
  return Array.from({ length: S }, () => {
    const z = new Float32Array(n);
    for (let i = 0; i < n; i++) z[i] = rng.normal() * sd;
    return z;
  });
}

function siteName(kind: SiteKind, layer: number): string {
  return `layers.${layer}.${kind}`;
}

/** ids repeated over B rows. */
function repeatIds(ids: readonly number[], B: number): Int32Array {
  const out = new Int32Array(B * ids.length);
  for (let b = 0; b < B; b++) out.set(ids, b * ids.length);
  return out;
}

/** The embed hook adding noise draw noiseOf(row) at the subject's positions of every row. */
function noiseHook(
  input: AttribInput, noise: Float32Array[], B: number, noiseOf: (row: number) => number, H: number, skip?: ReadonlySet<number>,
) {
  const [s0, s1] = input.subject;
  const positions: Array<[number, number]> = [];
  const rows: Float32Array[] = [];
  for (let b = 0; b < B; b++) {
    for (let t = s0; t < s1; t++) {
      if (skip?.has(t)) continue;
      positions.push([b, t]);
      rows.push(noise[noiseOf(b)].subarray((t - s0) * H, (t - s0 + 1) * H));
    }
  }
  const v = new Float32Array(rows.length * H);
  rows.forEach((r, i) => v.set(r, i * H));
  return { value: fromData(v, [rows.length, H]), positions };
}

/** P(target) at the last position of each of B rows. */
function targetProbs(logits: Tensor, target: number): Float64Array {
  const V = logits.shape[logits.shape.length - 1];
  const B = logits.size / V;
  const out = new Float64Array(B);
  for (let b = 0; b < B; b++) {
    const row = logits.data.subarray(b * V, (b + 1) * V);
    let m = -Infinity;
    for (const v of row) if (v > m) m = v;
    let z = 0;
    for (const v of row) z += Math.exp(v - m);
    out[b] = Math.exp(row[target] - m) / z;
  }
  return out;
}

function lastRows(B: number, T: number): Int32Array {
  return Int32Array.from({ length: B }, (_, b) => b * T + T - 1);
}

/** Clean activations of every site kind, [layer][T × H], and P_clean. */
function cleanRun(model: CausalLM, input: AttribInput, kinds: readonly SiteKind[]): { acts: Map<string, Float32Array>; p: number } {
  const acts = new Map<string, Float32Array>();
  const hooks: Hooks = {};
  for (let l = 0; l < model.config.layers; l++) {
    for (const k of kinds) hooks[siteName(k, l)] = { capture: (x, s) => acts.set(s, x.data.slice()) };
  }
  const T = input.ids.length;
  const { logits } = noGrad(() => model.forward(Int32Array.from(input.ids), [1, T], { hooks, logitsAt: lastRows(1, T) }));
  return { acts, p: targetProbs(logits, input.target)[0] };
}

export interface TraceResult {
  tokens: number[];
  subject: [number, number];
  target: number;
  layers: number;
  pClean: number;
  /** Mean over samples of P(target) with the subject corrupted. */
  pCorrupt: number;
  /** Per site kind: [layer × T] indirect effect, mean over samples of P_restored − P_corrupted. */
  effects: Partial<Record<SiteKind, Float64Array>>;
}

export interface TraceOptions extends NoiseOptions {
  kinds?: readonly SiteKind[];
  /** Rows per forward pass (restored runs × samples; default 64). */
  batchRows?: number;
  /** Noise draws to use instead of drawing (tests). */
  noiseDraws?: Float32Array[];
}

/**
 * Causal tracing (Meng et al. 2022): corrupt the subject, then restore the
 * clean activation of one site at one position; the indirect effect is the
 * restored P(target) minus the corrupted one. Restored runs are batched:
 * each batch row is one (site, layer, position, sample).
 */
export function causalTrace(model: CausalLM, input: AttribInput, opts: TraceOptions = {}): TraceResult {
  const kinds = opts.kinds ?? SITE_KINDS;
  const L = model.config.layers;
  const H = model.config.hidden;
  const T = input.ids.length;
  const noise = opts.noiseDraws ?? drawNoise(model, input, opts);
  const S = noise.length;
  const clean = cleanRun(model, input, kinds);
  // corrupted baseline, one row per sample
  const corr = noGrad(() =>
    model.forward(repeatIds(input.ids, S), [S, T], { hooks: { embed: { add: noiseHook(input, noise, S, (b) => b, H) } }, logitsAt: lastRows(S, T) }),
  );
  const pCorr = targetProbs(corr.logits, input.target);
  const pCorrupt = pCorr.reduce((a, b) => a + b, 0) / S;
  // Cells whose effect is exactly zero are not run: before the subject the clean and
  // corrupted activations are equal (causal attention), and the last layer reaches the
  // prediction only through the final position.
  const jobs: Array<[SiteKind, number, number]> = [];
  for (const k of kinds) {
    for (let l = 0; l < L; l++) for (let t = input.subject[0]; t < T; t++) if (l < L - 1 || t === T - 1) jobs.push([k, l, t]);
  }
  const effects: Partial<Record<SiteKind, Float64Array>> = {};
  for (const k of kinds) effects[k] = new Float64Array(L * T);
  const per = Math.max(1, Math.floor((opts.batchRows ?? 64) / S));
  for (let j0 = 0; j0 < jobs.length; j0 += per) {
    const chunk = jobs.slice(j0, j0 + per);
    const B = chunk.length * S;
    const bySite = new Map<string, { positions: Array<[number, number]>; rows: number[] }>();
    chunk.forEach(([k, l, t], j) => {
      const s = siteName(k, l);
      const e = bySite.get(s) ?? { positions: [], rows: [] };
      for (let r = 0; r < S; r++) {
        e.positions.push([j * S + r, t]);
        e.rows.push(t);
      }
      bySite.set(s, e);
    });
    const hooks: Hooks = { embed: { add: noiseHook(input, noise, B, (b) => b % S, H) } };
    for (const [s, { positions, rows }] of bySite) {
      const src = clean.acts.get(s)!;
      const v = new Float32Array(rows.length * H);
      rows.forEach((t, i) => v.set(src.subarray(t * H, (t + 1) * H), i * H));
      hooks[s] = { patch: { value: fromData(v, [rows.length, H]), positions } };
    }
    const { logits } = noGrad(() => model.forward(repeatIds(input.ids, B), [B, T], { hooks, logitsAt: lastRows(B, T) }));
    const p = targetProbs(logits, input.target);
    chunk.forEach(([k, l, t], j) => {
      let e = 0;
      for (let r = 0; r < S; r++) e += p[j * S + r] - pCorr[r];
      effects[k]![l * T + t] = e / S;
    });
  }
  return { tokens: input.ids.slice(), subject: input.subject, target: input.target, layers: L, pClean: clean.p, pCorrupt, effects };
}

/**
 * P(target) with the subject corrupted and the clean activations of the
 * given (site, position) pairs restored together, mean over the noise draws.
 */
export function restoredProb(
  model: CausalLM, input: AttribInput, restore: ReadonlyArray<{ site: string; position: number }>, noise: Float32Array[],
): number {
  const H = model.config.hidden;
  const T = input.ids.length;
  const S = noise.length;
  const acts = new Map<string, Float32Array>();
  const cap: Hooks = {};
  for (const r of restore) cap[r.site] = { capture: (x, s) => acts.set(s, x.data.slice()) };
  noGrad(() => model.forward(Int32Array.from(input.ids), [1, T], { hooks: cap, skipLogits: true }));
  const bySite = new Map<string, number[]>();
  for (const r of restore) bySite.set(r.site, [...(bySite.get(r.site) ?? []), r.position]);
  // a restored embedding row is the clean one: no noise there
  const skip = new Set(bySite.get('embed') ?? []);
  const noised = noiseHook(input, noise, S, (b) => b, H, skip);
  const hooks: Hooks = noised.positions.length > 0 ? { embed: { add: noised } } : {};
  for (const [s, ts] of bySite) {
    const src = acts.get(s)!;
    const v = new Float32Array(S * ts.length * H);
    const positions: Array<[number, number]> = [];
    let i = 0;
    for (let b = 0; b < S; b++) {
      for (const t of ts) {
        positions.push([b, t]);
        v.set(src.subarray(t * H, (t + 1) * H), i++ * H);
      }
    }
    hooks[s] = { ...hooks[s], patch: { value: fromData(v, [S * ts.length, H]), positions } };
  }
  const { logits } = noGrad(() => model.forward(repeatIds(input.ids, S), [S, T], { hooks, logitsAt: lastRows(S, T) }));
  return targetProbs(logits, input.target).reduce((a, b) => a + b, 0) / S;
}

/**
 * Attribution patching (Nanda; Syed et al. 2023): the first-order estimate
 * of causalTrace's effects, (clean − corrupted activation) · ∂P/∂activation
 * at the corrupted run. One forward (the clean run and every sample's
 * corrupted run as one batch) and one backward.
 */
export function attributionPatch(model: CausalLM, input: AttribInput, opts: TraceOptions = {}): TraceResult {
  const kinds = opts.kinds ?? SITE_KINDS;
  const L = model.config.layers;
  const H = model.config.hidden;
  const T = input.ids.length;
  const noise = opts.noiseDraws ?? drawNoise(model, input, opts);
  const S = noise.length;
  // Row 0 is the clean run, rows 1..S the corrupted ones: one forward reads the
  // weights once for all of them (small batches are bound by weight reads).
  const B = S + 1;
  const draws = [new Float32Array(noise[0].length), ...noise];
  const acts = new Map<string, Tensor>();
  // the embed leaf makes the frozen model's graph record; retainGrad keeps each site's gradient
  const hooks: Hooks = { embed: { leaf: true, add: noiseHook(input, draws, B, (b) => b, H) } };
  for (let l = 0; l < L; l++) {
    for (const k of kinds) {
      hooks[siteName(k, l)] = {
        capture: (x, s) => {
          x.retainGrad();
          acts.set(s, x);
        },
      };
    }
  }
  const { logits } = model.forward(repeatIds(input.ids, B), [B, T], { hooks, logitsAt: lastRows(B, T) });
  const probs = gather(softmax(logits), new Int32Array(B).fill(input.target), 1);
  const pClean = probs.data[0];
  let pCorrupt = 0;
  for (let b = 1; b < B; b++) pCorrupt += probs.data[b] / S;
  sum(slice(probs, 0, 1, B)).backward();
  const effects: Partial<Record<SiteKind, Float64Array>> = {};
  for (const k of kinds) {
    const e = new Float64Array(L * T);
    for (let l = 0; l < L; l++) {
      const x = acts.get(siteName(k, l))!;
      const g = x.grad!.data;
      const a = x.data;
      for (let t = 0; t < T; t++) {
        let acc = 0;
        for (let b = 1; b < B; b++) {
          const o = (b * T + t) * H;
          for (let d = 0; d < H; d++) acc += (a[t * H + d] - a[o + d]) * g[o + d];
        }
        e[l * T + t] = acc / S;
      }
    }
    effects[k] = e;
  }
  return { tokens: input.ids.slice(), subject: input.subject, target: input.target, layers: L, pClean, pCorrupt, effects };
}

export interface ModuleScore {
  module: string;
  layer: number;
  site: string;
  /** Σ ∂logP/∂W ⊙ W: the first-order change of log P(target) were the weight zeroed, negated. */
  score: number;
  /** Σ |∂logP/∂W ⊙ W|. */
  abs: number;
}

export interface ExpertScore {
  layer: number;
  expert: number;
  /** Σ over positions of ∂logP/∂y_e · y_e (y_e: the expert's routing-weighted output). */
  score: number;
  /** Fraction of the subject's tokens and the final token routed to this expert. */
  routeFreq: number;
}

export interface GradXActResult {
  logp: number;
  layers: number;
  tokens: number[];
  subject: [number, number];
  /** Per site kind: [layer × T] ∂logP/∂a_t · a_t. */
  sites: Record<SiteKind, Float64Array>;
  modules: ModuleScore[];
  experts: ExpertScore[];
}

function layerOf(name: string): number {
  const m = /\.(?:h|layers)\.(\d+)\./.exec(name);
  return m ? Number(m[1]) : -1;
}

/**
 * Gradient × activation of log P(target) on the clean run: per site and
 * position (activation gradients through leaf/retained hooks), per linear
 * module (weight gradients; weights are switched to requiresGrad for this
 * call only) and, for MoE models, per expert.
 */
export function gradXAct(model: CausalLM, input: AttribInput, opts: { modules?: boolean } = {}): GradXActResult {
  const c = model.config;
  const L = c.layers;
  const H = c.hidden;
  const T = input.ids.length;
  const E = c.experts; // 0 unless the model is a sparse MoE
  const caps = new Map<string, Tensor>();
  const capture = (x: Tensor, s: string) => {
    x.retainGrad();
    caps.set(s, x);
  };
  const hooks: Hooks = { embed: { leaf: true } };
  for (let l = 0; l < L; l++) {
    for (const k of SITE_KINDS) hooks[siteName(k, l)] = { capture };
    for (let e = 0; e < E; e++) hooks[`layers.${l}.experts.${e}`] = { capture };
  }
  const mods = opts.modules === false ? [] : model.linearModules().filter(([n]) => layerOf(n) >= 0);
  const ws = mods.map(([n]) => model.weight(n + '.weight'));
  for (const w of ws) {
    w.requiresGrad = true;
    w.grad = null;
  }
  try {
    const res = model.forward(Int32Array.from(input.ids), [1, T], { hooks, logitsAt: lastRows(1, T) });
    const lp = gather(logSoftmax(res.logits), Int32Array.of(input.target), 1);
    reshape(lp, []).backward();
    const dot = (s: string, t: number) => {
      const x = caps.get(s)!;
      const g = x.grad?.data;
      if (!g) return 0;
      let a = 0;
      for (let d = 0; d < H; d++) a += g[t * H + d] * x.data[t * H + d];
      return a;
    };
    const sites = {} as Record<SiteKind, Float64Array>;
    for (const k of SITE_KINDS) {
      const v = new Float64Array(L * T);
      for (let l = 0; l < L; l++) for (let t = 0; t < T; t++) v[l * T + t] = dot(siteName(k, l), t);
      sites[k] = v;
    }
    const modules: ModuleScore[] = mods.map(([n], i) => {
      const w = ws[i];
      const g = w.grad?.data;
      let s = 0;
      let a = 0;
      if (g) {
        for (let j = 0; j < g.length; j++) {
          const p = g[j] * w.data[j];
          s += p;
          a += Math.abs(p);
        }
      }
      const site = attentionModules(model.arch.layer(layerOf(n))).includes(n) ? `layers.${layerOf(n)}.attn` : `layers.${layerOf(n)}.mlp`;
      return { module: n, layer: layerOf(n), site, score: s, abs: a };
    });
    const experts: ExpertScore[] = [];
    if (E > 0) {
      const K = c.expertsPerTok;
      const toks = [];
      for (let t = input.subject[0]; t < input.subject[1]; t++) toks.push(t);
      if (!toks.includes(T - 1)) toks.push(T - 1);
      for (let l = 0; l < L; l++) {
        const r = res.routerLogits![l].data; // [1, T, E]
        const freq = new Float64Array(E);
        for (const t of toks) {
          // top-K by router logit (softmax is monotone)
          const order = Array.from({ length: E }, (_, e) => e).sort((a, b) => r[t * E + b] - r[t * E + a]);
          for (let j = 0; j < K; j++) freq[order[j]] += 1 / toks.length;
        }
        for (let e = 0; e < E; e++) {
          let s = 0;
          for (let t = 0; t < T; t++) s += dot(`layers.${l}.experts.${e}`, t);
          experts.push({ layer: l, expert: e, score: s, routeFreq: freq[e] });
        }
      }
    }
    return { logp: lp.data[0], layers: L, tokens: input.ids.slice(), subject: input.subject, sites, modules, experts };
  } finally {
    for (const w of ws) {
      w.requiresGrad = false;
      w.grad = null;
    }
  }
}

export type SelectRule = 'subject-last' | 'last' | 'max' | 'mean';
export const SELECT_RULES: readonly SelectRule[] = ['subject-last', 'last', 'max', 'mean'];

export interface LocusCandidate {
  site: string;
  layer: number;
  module?: string;
  expert?: number;
  score: number;
  /** Token position the score was read at (per-position methods). */
  position?: number;
  [k: string]: unknown;
}

/**
 * One candidate per (site kind, layer) from a per-position map, scored by
 * the select rule: `subject-last` the effect at the subject's last token
 * (ROME's choice), `last` at the prompt's final token, `max` the largest
 * over positions, `mean` the mean over positions. Sorted best first.
 */
export function siteCandidates(
  model: CausalLM, effects: Partial<Record<SiteKind, Float64Array>>, T: number, subject: [number, number],
  rule: SelectRule, kinds: readonly SiteKind[],
): LocusCandidate[] {
  const out: LocusCandidate[] = [];
  for (const k of kinds) {
    const e = effects[k];
    if (!e) continue;
    for (let l = 0; l < e.length / T; l++) {
      let pos = rule === 'last' ? T - 1 : subject[1] - 1;
      let score = e[l * T + pos];
      if (rule === 'max') {
        for (let t = 0; t < T; t++) if (e[l * T + t] > score) [score, pos] = [e[l * T + t], t];
      } else if (rule === 'mean') {
        score = 0;
        for (let t = 0; t < T; t++) score += e[l * T + t] / T;
      }
      const module = moduleOf(model, k, l);
      out.push({ site: siteName(k, l), layer: l, ...(module ? { module } : {}), score, ...(rule === 'mean' ? {} : { position: pos }) });
    }
  }
  return out.sort((a, b) => b.score - a.score);
}

/** Spearman rank correlation (average ranks for ties). */
export function spearman(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new RangeError(`spearman: ${a.length} vs ${b.length} values`);
  const rank = (x: ArrayLike<number>) => {
    const idx = Array.from({ length: x.length }, (_, i) => i).sort((i, j) => x[i] - x[j]);
    const r = new Float64Array(x.length);
    for (let i = 0; i < idx.length; ) {
      let j = i;
      while (j + 1 < idx.length && x[idx[j + 1]] === x[idx[i]]) j++;
      for (let k = i; k <= j; k++) r[idx[k]] = (i + j) / 2;
      i = j + 1;
    }
    return r;
  };
  const ra = rank(a);
  const rb = rank(b);
  const n = a.length;
  const ma = ra.reduce((s, v) => s + v, 0) / n;
  const mb = rb.reduce((s, v) => s + v, 0) / n;
  let num = 0;
  let da = 0;
  let db = 0;
  for (let i = 0; i < n; i++) {
    num += (ra[i] - ma) * (rb[i] - mb);
    da += (ra[i] - ma) ** 2;
    db += (rb[i] - mb) ** 2;
  }
  return da === 0 || db === 0 ? 0 : num / Math.sqrt(da * db);
}
