/**
 * Evaluating one model state (base, or base + adapters) on an EvalSuite,
 * and turning a before/after pair of observations into metrics and their
 * standard errors.
 */
import { readFileSync } from 'node:fs';
import type { CausalLM } from '../models/causal-lm.js';
import type { Tokenizer } from '../models/loader.js';
import { encodePair, klFromLogprobs, scoreSequences, type SeqRequest, type SeqScore } from './scoring.js';
import { nGramEntropy } from './ngram.js';
import type { EvalSuite, SuiteItem } from './suite.js';

export interface EncodedItem {
  prompt: number[];
  target: number[];
  alt: number[] | null;
  /** The target spells as (or contains) the tokenizer's unknown token: it never counts as a success. */
  unk: boolean;
}

/** Token ids of everything in a suite (tokenise once, score many times). */
export interface EncodedSuite {
  suite: EvalSuite;
  /** Per list of items: prompt, target continuation, alt continuation (or null). */
  items: Record<ItemList, EncodedItem[]>;
  unrelated: number[][];
  /**
   * The unrelated prompts are exactly the retain items' prompts (validate's
   * default): their next-token distribution is read from the retain rows,
   * so each prompt costs one forward, not two.
   */
  unrelatedIsRetain: boolean;
  /** General texts: [first token], rest. */
  general: Array<{ prompt: number[]; cont: number[] }>;
  generation: number[][];
  /** Skipped with a reason (too long for the model's positions). */
  skipped: string[];
  /** The tokenizer's unknown-token id, when it has one. */
  unkId: number | null;
}

export type ItemList = 'edit' | 'paraphrase' | 'neighborhood' | 'forget' | 'retain' | 'suite';
const LISTS: ItemList[] = ['edit', 'paraphrase', 'neighborhood', 'forget', 'retain', 'suite'];
/** Scored first, apart: the lists every adapter of a run shares. */
const SHARED_FIRST: ItemList[] = ['retain', 'suite'];
const OWN: ItemList[] = ['edit', 'paraphrase', 'neighborhood', 'forget'];
/** Lists whose prompts are also answered by greedy generation (efficacy_gen, generalisation_gen, forget_gen). */
export type AnswerList = 'edit' | 'paraphrase' | 'forget';
const ANSWER_LISTS: AnswerList[] = ['edit', 'paraphrase', 'forget'];

export interface ItemObs {
  /** Sum of target token log-probs (log P of the whole target). */
  lpTarget: number;
  lpAlt: number | null;
  /** Greedy first token equals the target's first token. */
  top1: boolean;
  /** Greedy continuation equals the whole target. */
  full: boolean;
  /** Greedy first token id. */
  pred: number;
}

export interface Observation {
  items: Record<ItemList, ItemObs[]>;
  /** Next-token log-distributions after each unrelated prompt (absent when `unrelatedKl` was computed against a reference instead). */
  unrelated: Float64Array[];
  /** KL(reference ‖ this) per unrelated prompt, when observed with `reference`. */
  unrelatedKl?: number[];
  generalNll: number;
  generalTokens: number;
  /** Per general text: NLL summed over its tokens, and its token count (for standard errors). */
  generalDocNll: number[];
  generalDocTokens: number[];
  /** Fluency generations (prompt included). */
  generations: string[];
  /** Greedy continuations (new text only) of the edit, paraphrase and forget prompts; empty lists when not generated. */
  answers: Record<AnswerList, string[]>;
  /** Sequences scored or generated (forward rows batched), for throughput. */
  sequences: number;
}

export interface EncodeOptions {
  /** Longest sequence the model takes (GPT-2: n_positions). General texts are cut to it; longer probes are skipped. */
  maxLength?: number;
  /** The unknown-token id (default: read from the tokenizer's tokenizer.json). */
  unkId?: number | null;
}

const unkCache = new Map<string, number | null>();

/**
 * The id of the tokenizer's unknown token (`model.unk_token` of its
 * tokenizer.json), or null when it has none (byte-level BPE can spell
 * anything).
 */
function unkIdOf(tok: Tokenizer): number | null {
  const hit = unkCache.get(tok.file);
  if (hit !== undefined) return hit;
  let id: number | null = null;
  try {
    const json = JSON.parse(readFileSync(tok.file, 'utf8')) as { model?: { unk_token?: unknown } };
    const u = json.model?.unk_token;
    if (typeof u === 'string') id = tok.tokenToId(u) ?? null;
  } catch {
    id = null;
  }
  unkCache.set(tok.file, id);
  return id;
}

export function encodeSuite(tok: Tokenizer, suite: EvalSuite, opts: EncodeOptions = {}): EncodedSuite {
  const max = opts.maxLength ?? Infinity;
  const unkId = opts.unkId !== undefined ? opts.unkId : unkIdOf(tok);
  const skipped: string[] = [];
  const items = {} as EncodedSuite['items'];
  const kept = {} as Record<ItemList, SuiteItem[]>;
  for (const l of LISTS) {
    items[l] = [];
    kept[l] = [];
    for (const it of suite[l]) {
      const t = encodePair(tok, it.prompt, it.target);
      const a = it.alt !== undefined && it.alt !== '' ? encodePair(tok, it.prompt, it.alt).cont : null;
      const len = t.prompt.length + Math.max(t.cont.length, a?.length ?? 0);
      if (len > max) {
        skipped.push(`${l} probe ${JSON.stringify(it.prompt)}: ${len} tokens exceed the model's ${max} positions`);
        continue;
      }
      items[l].push({ prompt: t.prompt, target: t.cont, alt: a, unk: unkId !== null && t.cont.includes(unkId) });
      kept[l].push(it);
    }
  }
  const sameAsRetain = suite.unrelated.length === suite.retain.length && suite.unrelated.every((p, i) => p === suite.retain[i].prompt);
  const unrelatedIsRetain = sameAsRetain && suite.retain.length > 0;
  const unrelated = unrelatedIsRetain
    ? items.retain.map((it) => it.prompt)
    : suite.unrelated.map((p) => tok.encode(p)).filter((ids) => ids.length > 0 && ids.length <= max);
  const general = suite.general
    .map((text) => tok.encode(text).slice(0, Number.isFinite(max) ? max : undefined))
    .filter((ids) => ids.length >= 2)
    .map((ids) => ({ prompt: ids.slice(0, 1), cont: ids.slice(1) }));
  const generation = suite.generation.map((p) => tok.encode(p)).filter((ids) => ids.length > 0 && ids.length < max);
  return { suite: { ...suite, ...kept }, items, unrelated, unrelatedIsRetain, general, generation, skipped, unkId };
}

export interface ObserveOptions {
  batchSize?: number;
  /** New tokens per generation (fluency, and the forget answers); kept within the model's positions. Default 16. */
  genTokens?: number;
  /** Skip the fluency generations. */
  noGeneration?: boolean;
  /** Skip the greedy answers of edit/paraphrase/forget prompts (efficacy_gen and friends). */
  noAnswers?: boolean;
  maxLength?: number;
  /**
   * The base model's observation of the same suite: the KL per unrelated
   * prompt is then computed on the fly and the distributions are not kept
   * (memory stays flat with a large vocabulary).
   */
  reference?: Observation;
  /**
   * Scores of sequences already seen in this same model state (pass one
   * map per state, e.g. the base model's across every adapter validated in
   * a run): cached sequences are not scored again; new ones are added.
   */
  cache?: Map<string, SeqScore>;
}

function cacheKey(r: SeqRequest): string {
  return `${r.prompt.join(',')}|${r.cont.join(',')}|${r.keepDist ? 1 : 0}`;
}

/** scoreSequences through a cache of earlier scores (same model state). */
function scoreCached(model: CausalLM, reqs: readonly SeqRequest[], batchSize: number | undefined, cache: Map<string, SeqScore> | undefined): SeqScore[] {
  if (!cache) return scoreSequences(model, reqs, { batchSize });
  const keys = reqs.map(cacheKey);
  const todo = [...new Set(keys.filter((k) => !cache.has(k)))];
  const first = new Map(keys.map((k, i) => [k, i]));
  const fresh = scoreSequences(model, todo.map((k) => reqs[first.get(k)!]), { batchSize });
  todo.forEach((k, i) => cache.set(k, fresh[i]));
  return keys.map((k) => cache.get(k)!);
}

/** Requests per scoring call: bounds the memory that kept next-token distributions take. */
const CHUNK = 512;

/** The new text after a prompt, as the tokenizer writes it, without leading whitespace. */
function continuationText(tok: Tokenizer, prompt: number[], out: number[]): string {
  const p = tok.decode(prompt, { skipSpecialTokens: true });
  const all = tok.decode(prompt.concat(out), { skipSpecialTokens: true });
  return (all.startsWith(p) ? all.slice(p.length) : tok.decode(out, { skipSpecialTokens: true })).trimStart();
}

function generateAll(model: CausalLM, prompts: number[][], want: number, max: number, bs: number): number[][] {
  if (prompts.length === 0) return [];
  const longest = Math.max(...prompts.map((g) => g.length));
  const n = Math.min(want, max - longest);
  if (n <= 0) return prompts.map(() => []);
  const out: number[][] = [];
  for (let s = 0; s < prompts.length; s += bs) out.push(...model.generate(prompts.slice(s, s + bs), { maxNewTokens: n, greedy: true }));
  return out;
}

/** Run the model (in its current adapter state) over an encoded suite. */
export function observe(model: CausalLM, tok: Tokenizer, enc: EncodedSuite, opts: ObserveOptions = {}): Observation {
  const reqs: SeqRequest[] = [];
  const where: Array<{ list: ItemList; i: number; alt: boolean }> = [];
  // request index of each unrelated prompt's distribution
  const distAt: number[] = [];
  // The shared sets (retain, unrelated, general) come first and are scored apart from the
  // adapter's own probes: their batches, and so their floating-point results, are then the
  // same whatever else is validated (and cacheable across adapters).
  for (const l of SHARED_FIRST) {
    enc.items[l].forEach((it, i) => {
      const keep = l === 'retain' && enc.unrelatedIsRetain;
      if (keep) distAt.push(reqs.length);
      reqs.push(keep ? { prompt: it.prompt, cont: it.target, keepDist: true } : { prompt: it.prompt, cont: it.target });
      where.push({ list: l, i, alt: false });
      if (it.alt) {
        reqs.push({ prompt: it.prompt, cont: it.alt });
        where.push({ list: l, i, alt: true });
      }
    });
  }
  const nItems = where.length;
  if (!enc.unrelatedIsRetain) {
    for (const u of enc.unrelated) {
      distAt.push(reqs.length);
      reqs.push({ prompt: u, cont: [], keepDist: true });
    }
  }
  const gStart = reqs.length;
  for (const g of enc.general) reqs.push({ prompt: g.prompt, cont: g.cont });
  const gEnd = reqs.length;
  // the adapter's own items last, in their own chunks
  const ownStart = reqs.length;
  for (const l of OWN) {
    enc.items[l].forEach((it, i) => {
      reqs.push({ prompt: it.prompt, cont: it.target });
      where.push({ list: l, i, alt: false });
      if (it.alt) {
        reqs.push({ prompt: it.prompt, cont: it.alt });
        where.push({ list: l, i, alt: true });
      }
    });
  }
  const whereAt = (r: number): { list: ItemList; i: number; alt: boolean } | undefined => (r < nItems ? where[r] : r >= ownStart ? where[nItems + r - ownStart] : undefined);

  const items = {} as Record<ItemList, ItemObs[]>;
  for (const l of LISTS) items[l] = new Array(enc.items[l].length);
  const unrelated: Float64Array[] = [];
  const unrelatedKl: number[] = [];
  const distIndex = new Map<number, number>(distAt.map((r, k) => [r, k]));
  const ref = opts.reference;
  const generalDocNll: number[] = [];
  const generalDocTokens: number[] = [];
  let generalNll = 0;
  let generalTokens = 0;
  // chunks never straddle the shared/own boundary
  const chunks: Array<[number, number]> = [];
  for (let c = 0; c < ownStart; c += CHUNK) chunks.push([c, Math.min(c + CHUNK, ownStart)]);
  for (let c = ownStart; c < reqs.length; c += CHUNK) chunks.push([c, Math.min(c + CHUNK, reqs.length)]);
  for (const [c, e] of chunks) {
    const scores = scoreCached(model, reqs.slice(c, e), opts.batchSize, opts.cache);
    scores.forEach((sc, k) => {
      const r = c + k;
      const u = distIndex.get(r);
      if (u !== undefined) {
        if (ref) unrelatedKl[u] = klFromLogprobs(refDist(ref, u), sc.dist!);
        else unrelated[u] = sc.dist!;
      }
      if (r >= gStart && r < gEnd) {
        let nll = 0;
        for (const v of sc.tokenLogprobs) nll -= v;
        generalDocNll.push(nll);
        generalDocTokens.push(sc.tokenLogprobs.length);
        generalNll += nll;
        generalTokens += sc.tokenLogprobs.length;
        return;
      }
      const w = whereAt(r);
      if (w === undefined) return;
      const lp = sc.tokenLogprobs.reduce((a, b) => a + b, 0);
      if (w.alt) {
        items[w.list][w.i].lpAlt = lp;
        return;
      }
      const target = enc.items[w.list][w.i].target;
      let full = target.length > 0;
      for (let j = 0; j < target.length; j++) if (sc.argmax[j] !== target[j]) full = false;
      items[w.list][w.i] = { lpTarget: lp, lpAlt: null, top1: target.length > 0 && sc.argmax[0] === target[0], full, pred: sc.argmax[0] };
    });
  }
  const max = opts.maxLength ?? Infinity;
  const bs = opts.batchSize ?? 32;
  let generated = 0;
  const generations: string[] = [];
  if (!opts.noGeneration && enc.generation.length > 0) {
    // fixed-length generations (no stop at eos), as ROME measures them: an early eos would shorten the text and lower its entropy
    const want = opts.genTokens ?? 16;
    const longest = Math.max(...enc.generation.map((g) => g.length));
    const n = Math.max(1, Math.min(want, max - longest));
    for (let s = 0; s < enc.generation.length; s += bs) {
      const prompts = enc.generation.slice(s, s + bs);
      const outs = model.generate(prompts, { maxNewTokens: n, greedy: true, eosTokenId: null });
      outs.forEach((o, i) => generations.push(tok.decode(prompts[i].concat(o), { skipSpecialTokens: true })));
    }
    generated += enc.generation.length;
  }
  const answers: Record<AnswerList, string[]> = { edit: [], paraphrase: [], forget: [] };
  if (!opts.noAnswers) {
    for (const l of ANSWER_LISTS) {
      const its = enc.items[l];
      if (its.length === 0) continue;
      // an insert answer is read up to one token past the target (to see where its word ends);
      // a forget answer over a whole phrase, since the old answer may come a few words later
      const longestTarget = Math.max(...its.map((it) => it.target.length));
      const want = l === 'forget' ? Math.max(longestTarget + 1, opts.genTokens ?? 16) : longestTarget + 1;
      const outs = generateAll(model, its.map((it) => it.prompt), want, max, bs);
      answers[l] = outs.map((o, i) => continuationText(tok, its[i].prompt, o));
      generated += its.length;
    }
  }
  const obs: Observation = { items, unrelated, generalNll, generalTokens, generalDocNll, generalDocTokens, generations, answers, sequences: reqs.length + generated };
  if (ref) obs.unrelatedKl = unrelatedKl;
  return obs;
}

function refDist(ref: Observation, u: number): Float64Array {
  const d = ref.unrelated[u];
  if (d === undefined) throw new RangeError(`observe: the reference observation has no distribution for unrelated prompt ${u}`);
  return d;
}

function mean(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  let s = 0;
  for (const x of xs) s += x;
  return s / xs.length;
}

/** Standard error of a mean (sample standard deviation / √n); NaN below two values. */
export function seOfMean(xs: readonly number[]): number {
  const n = xs.length;
  if (n < 2) return NaN;
  const m = mean(xs);
  let ss = 0;
  for (const x of xs) ss += (x - m) * (x - m);
  return Math.sqrt(ss / (n - 1) / n);
}

/**
 * Standard error of a ratio of sums Σa / Σb over paired units (the
 * linearised ratio estimator): √(Σ(aᵢ − R bᵢ)² / (n(n−1))) / b̄.
 */
export function seOfRatio(a: readonly number[], b: readonly number[]): number {
  const n = a.length;
  if (n < 2 || b.length !== n) return NaN;
  let sa = 0;
  let sb = 0;
  for (let i = 0; i < n; i++) {
    sa += a[i];
    sb += b[i];
  }
  if (sb === 0) return NaN;
  const R = sa / sb;
  let ss = 0;
  for (let i = 0; i < n; i++) ss += (a[i] - R * b[i]) ** 2;
  return Math.sqrt(ss / (n * (n - 1))) / (sb / n);
}

const rate = (xs: readonly boolean[]): number => mean(xs.map((x) => (x ? 1 : 0)));
/** Binomial standard error of a rate, √(p(1−p)/n). */
const seRate = (xs: readonly boolean[]): number => {
  if (xs.length === 0) return NaN;
  const p = rate(xs);
  return Math.sqrt((p * (1 - p)) / xs.length);
};

const WORD = /[\p{L}\p{N}]/u;

/** The continuation begins with the target (as a whole word: the next character is no letter or digit). */
export function answerBeginsWith(text: string, target: string): boolean {
  const t = target.trim();
  if (t === '' || !text.startsWith(t)) return false;
  const next = text.charAt(t.length);
  return next === '' || !WORD.test(next);
}

/** The answer (the continuation up to its first sentence end) contains the word(s) `old`. */
export function answerContains(text: string, old: string): boolean {
  const o = old.trim();
  if (o === '') return false;
  const span = text.split(/[.?!\n]/u, 1)[0];
  let from = 0;
  for (;;) {
    const i = span.indexOf(o, from);
    if (i < 0) return false;
    const before = i === 0 ? '' : span.charAt(i - 1);
    const after = span.charAt(i + o.length);
    if ((before === '' || !WORD.test(before)) && (after === '' || !WORD.test(after))) return true;
    from = i + 1;
  }
}

/** What computeMetricsSe returns: the metrics and, per metric where one is defined, its standard error. */
export interface MetricsWithSe {
  metrics: Record<string, number>;
  se: Record<string, number>;
}

/**
 * Metrics of an adapted model (`after`) against the base (`before`) on the
 * same encoded suite. Metrics with nothing to measure are left out (their
 * gates are then skipped), never reported as 0 or 1.
 */
export function computeMetrics(enc: EncodedSuite, before: Observation, after: Observation): Record<string, number> {
  return computeMetricsSe(enc, before, after).metrics;
}

/**
 * computeMetrics with the standard error of each metric: binomial for rates,
 * sample s.d./√n for means (kl, p_new, forget_p_true) and paired differences
 * (retain_drop, suite_drop), the ratio estimator for perplexity and fluency.
 *
 * Items that cannot test what a metric claims are left out of it: a
 * paraphrase of an insert fact (or of a forget fact) whose true answer the
 * base model does not give top-1 (counted in n_paraphrase_excluded /
 * n_forget_excluded). A target the tokenizer spells with its unknown token
 * is never a success (for forgets: the old answer counts as still there).
 */
export function computeMetricsSe(enc: EncodedSuite, before: Observation, after: Observation): MetricsWithSe {
  const m: Record<string, number> = {};
  const se: Record<string, number> = {};
  // records carry finite numbers only: an overflowing perplexity is reported as the largest double
  const set = (k: string, v: number, e?: number): void => {
    if (Number.isNaN(v)) return;
    m[k] = Number.isFinite(v) ? v : Math.sign(v) * Number.MAX_VALUE;
    if (e !== undefined && Number.isFinite(e)) se[k] = e;
  };
  const setRate = (k: string, xs: readonly boolean[]): void => set(k, rate(xs), seRate(xs));
  const A = after.items;
  const B = before.items;
  const E = enc.items;
  const pick = <T>(xs: readonly T[], keep: readonly boolean[]): T[] => xs.filter((_, i) => keep[i]);

  // which items can test their metric
  const paraOk = E.paraphrase.map((it, i) => it.alt === null || (it.alt.length > 0 && B.paraphrase[i].pred === it.alt[0]));
  const forgetOk = E.forget.map((it, i) => enc.suite.forget[i].role !== 'paraphrase' || (B.forget[i].top1 && !it.unk));
  const ok = (l: ItemList, i: number, x: ItemObs): boolean => !E[l][i].unk && x.top1;
  const okFull = (l: ItemList, i: number, x: ItemObs): boolean => !E[l][i].unk && x.full;
  const okProb = (l: ItemList) => A[l].map((x, i) => ({ x, i })).filter(({ x }) => x.lpAlt !== null).map(({ x, i }) => !E[l][i].unk && x.lpTarget > (x.lpAlt as number));

  setRate('efficacy', A.edit.map((x, i) => ok('edit', i, x)));
  setRate('efficacy_full', A.edit.map((x, i) => okFull('edit', i, x)));
  setRate('efficacy_prob', okProb('edit'));
  const pNew = A.edit.map((x) => Math.exp(x.lpTarget));
  set('p_new', mean(pNew), seOfMean(pNew));
  const P = pick(A.paraphrase.map((x, i) => ({ x, i })), paraOk);
  setRate('generalisation', P.map(({ x, i }) => ok('paraphrase', i, x)));
  setRate('generalisation_full', P.map(({ x, i }) => okFull('paraphrase', i, x)));
  setRate('generalisation_prob', P.filter(({ x }) => x.lpAlt !== null).map(({ x, i }) => !E.paraphrase[i].unk && x.lpTarget > (x.lpAlt as number)));
  if (after.answers.edit.length === A.edit.length) {
    setRate('efficacy_gen', after.answers.edit.map((text, i) => !E.edit[i].unk && answerBeginsWith(text, enc.suite.edit[i].target)));
  }
  if (after.answers.paraphrase.length === A.paraphrase.length) {
    setRate('generalisation_gen', P.map(({ i }) => !E.paraphrase[i].unk && answerBeginsWith(after.answers.paraphrase[i], enc.suite.paraphrase[i].target)));
  }
  setRate('specificity', A.neighborhood.map((x, i) => x.pred === B.neighborhood[i].pred));
  setRate('specificity_prob', A.neighborhood.filter((_, i) => E.neighborhood[i].target.length > 0 && E.neighborhood[i].alt).map((x) => x.lpTarget > (x.lpAlt as number)));
  const retainIn = enc.suite.retain.map((it) => !it.excluded);
  const klAll = after.unrelatedKl ?? after.unrelated.map((q, i) => klFromLogprobs(before.unrelated[i], q));
  // KL prompts that are retain prompts about an edited fact are left out with them
  const kls = enc.unrelatedIsRetain ? pick(klAll, retainIn) : klAll;
  set('kl', mean(kls), seOfMean(kls));
  if (kls.length > 0) set('kl_max', Math.max(...kls));
  if (before.generalTokens > 0) {
    const pb = Math.exp(before.generalNll / before.generalTokens);
    const pa = Math.exp(after.generalNll / after.generalTokens);
    set('ppl_before', pb);
    set('ppl_after', pa);
    // ppl_delta = exp(D) − 1 with D the per-token NLL difference, a ratio of sums over texts
    const d = after.generalDocNll.map((x, i) => x - before.generalDocNll[i]);
    const D = (after.generalNll - before.generalNll) / before.generalTokens;
    set('ppl_delta', pa / pb - 1, Math.exp(D) * seOfRatio(d, before.generalDocTokens));
  }
  if (retainIn.some((x) => x)) {
    const b = pick(B.retain.map((x, i) => ok('retain', i, x)), retainIn);
    const a = pick(A.retain.map((x, i) => ok('retain', i, x)), retainIn);
    set('retain_before', rate(b), seRate(b));
    set('retain_after', rate(a), seRate(a));
    const diff = b.map((x, i) => (x ? 1 : 0) - (a[i] ? 1 : 0));
    set('retain_drop', mean(diff), seOfMean(diff));
  }
  if (A.suite.length > 0) {
    const passes = (o: Observation) =>
      o.items.suite.map((x, i) => {
        const e = enc.suite.suite[i].expect ?? 'true';
        if (e === 'unchanged') return x.pred === B.suite[i].pred;
        if (e === 'abstain') return !x.top1;
        return x.top1 && !E.suite[i].unk;
      });
    const sb = passes(before);
    const sa = passes(after);
    set('suite_before', rate(sb), seRate(sb));
    set('suite_after', rate(sa), seRate(sa));
    const diff = sb.map((x, i) => (x ? 1 : 0) - (sa[i] ? 1 : 0));
    set('suite_drop', mean(diff), seOfMean(diff));
  }
  const F = pick(A.forget.map((x, i) => ({ x, i })), forgetOk);
  if (F.length > 0) {
    // an old answer the tokenizer cannot spell cannot be shown gone: it counts as still there
    setRate('forget_top1', F.map(({ x, i }) => x.top1 || E.forget[i].unk));
    const pt = F.map(({ x }) => Math.exp(x.lpTarget));
    set('forget_p_true', mean(pt), seOfMean(pt));
    const ptb = F.map(({ i }) => Math.exp(B.forget[i].lpTarget));
    set('forget_p_true_before', mean(ptb), seOfMean(ptb));
    if (after.answers.forget.length === A.forget.length) {
      setRate('forget_gen', F.map(({ i }) => E.forget[i].unk || answerContains(after.answers.forget[i], enc.suite.forget[i].target)));
    }
  }
  if (after.generations.length > 0 && before.generations.length > 0) {
    const eb = before.generations.map((t) => nGramEntropy(t));
    const ea = after.generations.map((t) => nGramEntropy(t));
    const fb = mean(eb);
    const fa = mean(ea);
    set('fluency_before', fb, seOfMean(eb));
    set('fluency', fa, seOfMean(ea));
    if (fb > 0) set('fluency_drop', 1 - fa / fb, eb.length === ea.length ? seOfRatio(ea, eb) : undefined);
  }
  set('n_edit', A.edit.length);
  set('n_paraphrase', P.length);
  set('n_paraphrase_excluded', A.paraphrase.length - P.length);
  set('n_neighborhood', A.neighborhood.length);
  set('n_unrelated', kls.length);
  set('n_general', enc.general.length);
  set('n_retain', retainIn.filter((x) => x).length);
  set('n_suite', A.suite.length);
  set('n_forget', F.length);
  set('n_forget_excluded', A.forget.length - F.length);
  set('n_unknown_target', [...E.edit, ...E.paraphrase, ...E.forget].filter((it) => it.unk).length);
  set('n_generation', after.generations.length);
  return { metrics: m, se };
}

/** Per-fact probabilities before and after (for charts): one row per scored item. */
export interface ItemRow {
  list: ItemList;
  fact_id?: string;
  prompt: string;
  target: string;
  p_before: number;
  p_after: number;
  alt?: string;
  p_alt_before?: number;
  p_alt_after?: number;
  /** The greedy answer with the adapter (edit, paraphrase, forget prompts). */
  answer_after?: string;
}

export function itemRows(enc: EncodedSuite, before: Observation, after: Observation, lists: ItemList[] = ['edit', 'paraphrase', 'neighborhood', 'forget']): ItemRow[] {
  const rows: ItemRow[] = [];
  for (const l of lists) {
    enc.suite[l].forEach((it, i) => {
      const b = before.items[l][i];
      const a = after.items[l][i];
      const row: ItemRow = { list: l, prompt: it.prompt, target: it.target, p_before: Math.exp(b.lpTarget), p_after: Math.exp(a.lpTarget) };
      if (it.fact_id !== undefined) row.fact_id = it.fact_id;
      if (it.alt !== undefined && b.lpAlt !== null && a.lpAlt !== null) {
        row.alt = it.alt;
        row.p_alt_before = Math.exp(b.lpAlt);
        row.p_alt_after = Math.exp(a.lpAlt);
      }
      const ans = (after.answers as Partial<Record<ItemList, string[]>>)[l]?.[i];
      if (ans !== undefined) row.answer_after = ans;
      rows.push(row);
    });
  }
  return rows;
}
