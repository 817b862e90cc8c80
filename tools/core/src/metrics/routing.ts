/**
 * Routing metrics of sparse mixture-of-experts models: how much an adapter
 * moves the routers (validate's `route_*` metrics) and how close the
 * adapted model's routing is to a teacher's (the same model with the fact
 * stated in its context, as moe-route-distill trains).
 *
 *   route_tv          unrelated prompts: mean total-variation distance
 *                     ½·Σₑ|p_e − q_e| between the base and the adapted
 *                     router distributions (softmax over every expert), per
 *                     token and layer; gate ≤ 0.05
 *   route_tv_max      the largest per-prompt mean of it
 *   route_changed     unrelated prompts: share of (token, layer) whose
 *                     chosen top-k set of experts changed
 *   route_load_shift  unrelated prompts: the largest, over layers, total
 *                     variation between the base and the adapted expert
 *                     load (share of top-k slots each expert takes)
 *   route_agree       insert facts' prompts: mean share |S ∩ T| / k of the
 *                     adapted model's top-k experts S that are the
 *                     teacher's T, over the prompt positions from the
 *                     subject on and every layer
 *   route_agree_before the same for the base model (what the edit started from)
 *
 * Router distributions are read from the `layers.{i}.router` logits that
 * CausalLM.forward returns for MoE models. Only real tokens count (batches
 * are right-padded).
 */
import { createHash } from 'node:crypto';
import type { ActiveAdapter, CausalLM } from '../models/causal-lm.js';
import type { Tokenizer } from '../models/loader.js';
import { noGrad } from '../tensor/index.js';
import { statementInContext, subjectSpan, type EditFact } from '../edit/data.js';
import type { MetricInfo } from './gates.js';
import type { FactLike } from './suite.js';

/** The routing metrics, for validate's table of metrics and gates (spread into METRICS). */
export const ROUTING_METRICS: Readonly<Record<string, MetricInfo>> = {
  route_tv: { describe: 'MoE, unrelated prompts: mean total-variation distance of the router distributions, base vs adapted, per token and layer', gate: { op: '<=', value: 0.05 } },
  route_tv_max: { describe: 'MoE, unrelated prompts: the largest per-prompt mean route_tv' },
  route_changed: { describe: 'MoE, unrelated prompts: share of (token, layer) whose top-k experts changed' },
  route_load_shift: { describe: 'MoE, unrelated prompts: largest (over layers) total variation of the expert load (share of top-k slots), base vs adapted' },
  route_agree: { describe: 'MoE, insert facts\' prompts (subject onwards, every layer): share of the adapted model\'s top-k experts that the teacher (fact in context) also picks' },
  route_agree_before: { describe: 'MoE: route_agree of the base model' },
  n_route_prompts: { describe: 'MoE: unrelated prompts of the routing metrics' },
  n_route_tokens: { describe: 'MoE: (token, layer) pairs behind route_tv' },
};

/** Router probabilities of some prompts: per prompt [layers × T × E], row-major. */
export interface RouteRows {
  probs: Float32Array[];
  lengths: number[];
  layers: number;
  experts: number;
  topK: number;
}

/** True for a model whose layers route tokens to experts. */
export function isMoe(model: CausalLM): boolean {
  return model.config.experts > 0 && model.arch.layer(0).moe !== null;
}

/** Softmax of row r of a flat [n, E] logits array into out (float64 maths). */
function softmaxRow(src: Float32Array, off: number, E: number, out: Float32Array, outOff: number): void {
  let m = -Infinity;
  for (let e = 0; e < E; e++) m = Math.max(m, src[off + e]);
  let z = 0;
  for (let e = 0; e < E; e++) z += Math.exp(src[off + e] - m);
  for (let e = 0; e < E; e++) out[outOff + e] = Math.exp(src[off + e] - m) / z;
}

/**
 * Router distributions of each prompt (token ids) at every layer and real
 * token, with the model's active adapters. Fixed batches of `batchSize` in
 * the given order, so the same list gives the same floats.
 */
export function routerProbs(model: CausalLM, prompts: readonly number[][], opts: { batchSize?: number } = {}): RouteRows {
  if (!isMoe(model)) throw new RangeError(`routing metrics need a mixture-of-experts model; this is ${model.config.modelType}`);
  const L = model.config.layers;
  const E = model.config.experts;
  const bs = opts.batchSize ?? 64;
  const pad = model.config.padTokenId ?? model.config.eosTokenId ?? 0;
  const probs: Float32Array[] = [];
  noGrad(() => {
    for (let s = 0; s < prompts.length; s += bs) {
      const rows = prompts.slice(s, s + bs);
      const T = Math.max(...rows.map((r) => r.length));
      const ids = new Int32Array(rows.length * T).fill(pad);
      const mask = new Uint8Array(rows.length * T);
      rows.forEach((r, b) => {
        ids.set(r, b * T);
        mask.fill(1, b * T, b * T + r.length);
      });
      const { routerLogits } = model.forward(ids, [rows.length, T], { attentionMask: mask, skipLogits: true });
      rows.forEach((r, b) => {
        const out = new Float32Array(L * r.length * E);
        for (let l = 0; l < L; l++) {
          const src = routerLogits![l].data;
          for (let t = 0; t < r.length; t++) softmaxRow(src, (b * T + t) * E, E, out, (l * r.length + t) * E);
        }
        probs.push(out);
      });
    }
  });
  return { probs, lengths: prompts.map((p) => p.length), layers: L, experts: E, topK: model.config.expertsPerTok };
}

/** The top-k experts of one distribution (probabilities p[off..off+E)), best first; ties to the lower index. */
export function topExperts(p: ArrayLike<number>, off: number, E: number, k: number): number[] {
  const idx = Array.from({ length: E }, (_, e) => e);
  idx.sort((a, b) => p[off + b] - p[off + a] || a - b);
  return idx.slice(0, k);
}

/** ½·Σ|p − q| of two distributions stored at the same offset. */
function tvAt(p: Float32Array, q: Float32Array, off: number, E: number): number {
  let s = 0;
  for (let e = 0; e < E; e++) s += Math.abs(p[off + e] - q[off + e]);
  return s / 2;
}

/** Expert load per layer: the share of top-k slots each expert takes over the prompts' tokens (prompts in `keep` only, when given). */
export function expertLoad(r: RouteRows, keep?: (i: number) => boolean): Float64Array[] {
  const { layers: L, experts: E, topK: K } = r;
  const load = Array.from({ length: L }, () => new Float64Array(E));
  r.probs.forEach((p, i) => {
    if (keep && !keep(i)) return;
    const T = r.lengths[i];
    for (let l = 0; l < L; l++) for (let t = 0; t < T; t++) for (const e of topExperts(p, (l * T + t) * E, E, K)) load[l][e]++;
  });
  for (const row of load) {
    let n = 0;
    for (const v of row) n += v;
    if (n > 0) for (let e = 0; e < E; e++) row[e] /= n;
  }
  return load;
}

export interface RoutingShift {
  /** Mean TV per (token, layer). */
  tv: number;
  /** Standard error of tv over prompts (per-prompt means are the independent units). */
  tvSe: number;
  tvMax: number;
  changed: number;
  loadShift: number;
  prompts: number;
  tokens: number;
}

/** Routing shift between two observations of the same prompts (before: base, after: adapted); prompts outside `keep` are left out. */
export function routingShift(before: RouteRows, after: RouteRows, keep?: (i: number) => boolean): RoutingShift {
  const { layers: L, experts: E, topK: K } = before;
  if (after.probs.length !== before.probs.length) throw new RangeError(`routingShift: ${before.probs.length} prompts before, ${after.probs.length} after`);
  let sum = 0;
  let changed = 0;
  let tokens = 0;
  let tvMax = 0;
  const perPrompt: number[] = [];
  before.probs.forEach((p, i) => {
    if (keep && !keep(i)) return;
    const q = after.probs[i];
    const T = before.lengths[i];
    let s = 0;
    for (let l = 0; l < L; l++) {
      for (let t = 0; t < T; t++) {
        const off = (l * T + t) * E;
        s += tvAt(p, q, off, E);
        const a = topExperts(p, off, E, K).sort();
        const b = topExperts(q, off, E, K).sort();
        if (a.some((x, j) => x !== b[j])) changed++;
      }
    }
    const n = L * T;
    sum += s;
    tokens += n;
    perPrompt.push(s / n);
    tvMax = Math.max(tvMax, s / n);
  });
  const lb = expertLoad(before, keep);
  const la = expertLoad(after, keep);
  let loadShift = 0;
  for (let l = 0; l < L; l++) {
    let s = 0;
    for (let e = 0; e < E; e++) s += Math.abs(lb[l][e] - la[l][e]);
    loadShift = Math.max(loadShift, s / 2);
  }
  const n = perPrompt.length;
  const m = n ? perPrompt.reduce((a, b) => a + b, 0) / n : 0;
  const sd = n > 1 ? Math.sqrt(perPrompt.reduce((a, b) => a + (b - m) ** 2, 0) / (n - 1)) : 0;
  return { tv: tokens ? sum / tokens : NaN, tvSe: n > 1 ? sd / Math.sqrt(n) : NaN, tvMax, changed: tokens ? changed / tokens : NaN, loadShift, prompts: n, tokens };
}

/**
 * Student positions aligned with the teacher's (the teacher prompt is the
 * context followed by the student prompt): from `from` to the end, where the
 * tokens agree. Returns [student index, teacher index] pairs.
 */
export function alignedPositions(student: readonly number[], teacher: readonly number[], from: number): Array<[number, number]> {
  const off = teacher.length - student.length;
  const out: Array<[number, number]> = [];
  if (off < 0) return out;
  for (let p = Math.max(0, from); p < student.length; p++) if (teacher[p + off] === student[p]) out.push([p, p + off]);
  return out;
}

/** Mean share of the student's top-k experts that the teacher also picks, over aligned positions and every layer. */
export function topKAgreement(
  student: RouteRows, teacher: RouteRows, pairs: ReadonlyArray<ReadonlyArray<readonly [number, number]>>,
): { agree: number; tokens: number } {
  const { layers: L, experts: E, topK: K } = student;
  let s = 0;
  let n = 0;
  pairs.forEach((al, i) => {
    const Ts = student.lengths[i];
    const Tt = teacher.lengths[i];
    for (const [sp, tp] of al) {
      for (let l = 0; l < L; l++) {
        const a = topExperts(student.probs[i], (l * Ts + sp) * E, E, K);
        const b = new Set(topExperts(teacher.probs[i], (l * Tt + tp) * E, E, K));
        s += a.filter((x) => b.has(x)).length / K;
        n++;
      }
    }
  });
  return { agree: n ? s / n : NaN, tokens: n };
}

/** The teacher prompt for a fact (the fact stated in context, then the prompt), as distillation builds it. */
export function teacherPrompt(fact: FactLike, prompt: string, frame?: string): string {
  return `${statementInContext(fact as EditFact, fact.target_new!, frame)} ${prompt}`;
}

// base-model routes of a fixed prompt list, kept across the adapters of one run (the model's weights never change)
const baseRoutes = new WeakMap<CausalLM, Map<string, RouteRows>>();

function listKey(prompts: readonly string[]): string {
  const h = createHash('sha256');
  for (const p of prompts) h.update(p + '\u0000');
  return h.digest('hex');
}

export interface RoutingInput {
  /** Unrelated prompts (a fixed list: validate's retain prompts). */
  unrelated: readonly string[];
  /** Prompts of `unrelated` about the adapter's own facts: scored (the batches stay the same) but not counted. */
  excluded?: ReadonlySet<string>;
  /** The adapter's facts (insert facts give the teacher-agreement prompts). */
  facts: readonly FactLike[];
  /** The adapters to measure (none: the base model against itself). */
  active: ActiveAdapter[];
  batchSize?: number;
}

/**
 * validate's routing metrics and their standard errors, or null for a model
 * without experts. Leaves the model with no adapters.
 */
export function routingMetrics(model: CausalLM, tok: Tokenizer, input: RoutingInput): { metrics: Record<string, number>; se: Record<string, number> } | null {
  if (!isMoe(model)) return null;
  const bs = { batchSize: input.batchSize ?? 64 };
  const unrelatedIds = input.unrelated.map((p) => tok.encode(p));
  const key = listKey(input.unrelated);
  let cache = baseRoutes.get(model);
  if (!cache) baseRoutes.set(model, (cache = new Map()));
  model.setAdapters([]);
  let before = cache.get(key);
  if (!before) {
    before = routerProbs(model, unrelatedIds, bs);
    cache.set(key, before);
  }
  // the edit prompts: student (no context) and teacher (the fact in context)
  const inserts = input.facts.filter((f) => (f.op ?? 'insert') === 'insert' && typeof f.target_new === 'string' && f.prompt.includes('{}'));
  const student = inserts.map((f) => tok.encode(f.prompt.replace('{}', f.subject)));
  const teacher = inserts.map((f) => tok.encode(teacherPrompt(f, f.prompt.replace('{}', f.subject))));
  const pairs = inserts.map((f, i) => alignedPositions(student[i], teacher[i], Math.max(0, subjectSpan(tok, student[i], f.subject)[0])));
  const tRoutes = inserts.length ? routerProbs(model, teacher, bs) : null;
  const sBefore = inserts.length ? routerProbs(model, student, bs) : null;
  let after = before;
  let sAfter = sBefore;
  if (input.active.length > 0) {
    model.setAdapters(input.active);
    try {
      after = routerProbs(model, unrelatedIds, bs);
      if (inserts.length) sAfter = routerProbs(model, student, bs);
    } finally {
      model.setAdapters([]);
    }
  }
  const keep = input.excluded && input.excluded.size ? (i: number) => !input.excluded!.has(input.unrelated[i]) : undefined;
  const shift = routingShift(before, after, keep);
  const metrics: Record<string, number> = {
    route_tv: shift.tv, route_tv_max: shift.tvMax, route_changed: shift.changed, route_load_shift: shift.loadShift,
    n_route_prompts: shift.prompts, n_route_tokens: shift.tokens,
  };
  const se: Record<string, number> = { route_tv: shift.tvSe };
  if (tRoutes && sBefore && sAfter) {
    metrics.route_agree = topKAgreement(sAfter, tRoutes, pairs).agree;
    metrics.route_agree_before = topKAgreement(sBefore, tRoutes, pairs).agree;
  }
  return { metrics, se };
}
