/**
 * Evaluating one model state (base, or base + adapters) on an EvalSuite,
 * and turning a before/after pair of observations into metrics.
 */
import type { CausalLM } from '../models/causal-lm.js';
import type { Tokenizer } from '../models/loader.js';
import { encodePair, klFromLogprobs, scoreSequences, type SeqRequest } from './scoring.js';
import { nGramEntropy } from './ngram.js';
import type { EvalSuite, SuiteItem } from './suite.js';

/** Token ids of everything in a suite (tokenise once, score many times). */
export interface EncodedSuite {
  suite: EvalSuite;
  /** Per list of items: [prompt, target cont, alt cont | null]. */
  items: Record<ItemList, Array<{ prompt: number[]; target: number[]; alt: number[] | null }>>;
  unrelated: number[][];
  /** General texts: [first token], rest. */
  general: Array<{ prompt: number[]; cont: number[] }>;
  generation: number[][];
  /** Skipped with a reason (too long for the model's positions). */
  skipped: string[];
}

export type ItemList = 'edit' | 'paraphrase' | 'neighborhood' | 'forget' | 'retain' | 'suite';
const LISTS: ItemList[] = ['edit', 'paraphrase', 'neighborhood', 'forget', 'retain', 'suite'];

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
  unrelated: Float64Array[];
  generalNll: number;
  generalTokens: number;
  generations: string[];
  /** Sequences scored (forward rows batched), for throughput. */
  sequences: number;
}

export interface EncodeOptions {
  /** Longest sequence the model takes (GPT-2: n_positions). General texts are cut to it; longer probes are skipped. */
  maxLength?: number;
}

export function encodeSuite(tok: Tokenizer, suite: EvalSuite, opts: EncodeOptions = {}): EncodedSuite {
  const max = opts.maxLength ?? Infinity;
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
      items[l].push({ prompt: t.prompt, target: t.cont, alt: a });
      kept[l].push(it);
    }
  }
  const unrelated = suite.unrelated.map((p) => tok.encode(p)).filter((ids) => ids.length > 0 && ids.length <= max);
  const general = suite.general
    .map((text) => tok.encode(text).slice(0, Number.isFinite(max) ? max : undefined))
    .filter((ids) => ids.length >= 2)
    .map((ids) => ({ prompt: ids.slice(0, 1), cont: ids.slice(1) }));
  const generation = suite.generation.map((p) => tok.encode(p)).filter((ids) => ids.length > 0 && ids.length < max);
  return { suite: { ...suite, ...kept }, items, unrelated, general, generation, skipped };
}

export interface ObserveOptions {
  batchSize?: number;
  /** New tokens per generation (fluency); kept within the model's positions. Default 16. */
  genTokens?: number;
  /** Skip generation (no fluency). */
  noGeneration?: boolean;
  maxLength?: number;
}

/** Run the model (in its current adapter state) over an encoded suite. */
export function observe(model: CausalLM, tok: Tokenizer, enc: EncodedSuite, opts: ObserveOptions = {}): Observation {
  const reqs: SeqRequest[] = [];
  const where: Array<{ list: ItemList; i: number; alt: boolean }> = [];
  for (const l of LISTS) {
    enc.items[l].forEach((it, i) => {
      reqs.push({ prompt: it.prompt, cont: it.target });
      where.push({ list: l, i, alt: false });
      if (it.alt) {
        reqs.push({ prompt: it.prompt, cont: it.alt });
        where.push({ list: l, i, alt: true });
      }
    });
  }
  const uStart = reqs.length;
  for (const u of enc.unrelated) reqs.push({ prompt: u, cont: [], keepDist: true });
  const gStart = reqs.length;
  for (const g of enc.general) reqs.push({ prompt: g.prompt, cont: g.cont });
  const scores = scoreSequences(model, reqs, { batchSize: opts.batchSize });

  const items = {} as Record<ItemList, ItemObs[]>;
  for (const l of LISTS) items[l] = new Array(enc.items[l].length);
  where.forEach((w, r) => {
    const sc = scores[r];
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
  const unrelated = scores.slice(uStart, gStart).map((s) => s.dist!);
  let generalNll = 0;
  let generalTokens = 0;
  for (const s of scores.slice(gStart)) {
    for (const v of s.tokenLogprobs) generalNll -= v;
    generalTokens += s.tokenLogprobs.length;
  }
  const generations: string[] = [];
  if (!opts.noGeneration && enc.generation.length > 0) {
    const max = opts.maxLength ?? Infinity;
    const want = opts.genTokens ?? 16;
    // one batch per prompt length budget: keep prompt + generation within the positions
    const longest = Math.max(...enc.generation.map((g) => g.length));
    const n = Math.max(1, Math.min(want, max - longest));
    const bs = opts.batchSize ?? 32;
    for (let s = 0; s < enc.generation.length; s += bs) {
      const prompts = enc.generation.slice(s, s + bs);
      // fixed-length generations (no stop at eos), as ROME measures them: an early eos would shorten the text and lower its entropy
      const outs = model.generate(prompts, { maxNewTokens: n, greedy: true, eosTokenId: null });
      outs.forEach((o, i) => generations.push(tok.decode(prompts[i].concat(o), { skipSpecialTokens: true })));
    }
  }
  return { items, unrelated, generalNll, generalTokens, generations, sequences: reqs.length + enc.generation.length };
}

function mean(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  let s = 0;
  for (const x of xs) s += x;
  return s / xs.length;
}

const rate = (xs: readonly boolean[]): number => mean(xs.map((x) => (x ? 1 : 0)));

/**
 * Metrics of an adapted model (`after`) against the base (`before`) on the
 * same encoded suite. Metrics with nothing to measure are left out (their
 * gates are then skipped), never reported as 0 or 1.
 */
export function computeMetrics(enc: EncodedSuite, before: Observation, after: Observation): Record<string, number> {
  const m: Record<string, number> = {};
  // records carry finite numbers only: an overflowing perplexity is reported as the largest double
  const set = (k: string, v: number): void => {
    if (!Number.isNaN(v)) m[k] = Number.isFinite(v) ? v : Math.sign(v) * Number.MAX_VALUE;
  };
  const A = after.items;
  const B = before.items;
  const withAlt = (xs: ItemObs[]) => xs.filter((x) => x.lpAlt !== null).map((x) => x.lpTarget > (x.lpAlt as number));

  set('efficacy', rate(A.edit.map((x) => x.top1)));
  set('efficacy_full', rate(A.edit.map((x) => x.full)));
  set('efficacy_prob', rate(withAlt(A.edit)));
  set('p_new', mean(A.edit.map((x) => Math.exp(x.lpTarget))));
  set('generalisation', rate(A.paraphrase.map((x) => x.top1)));
  set('generalisation_full', rate(A.paraphrase.map((x) => x.full)));
  set('generalisation_prob', rate(withAlt(A.paraphrase)));
  set('specificity', rate(A.neighborhood.map((x, i) => x.pred === B.neighborhood[i].pred)));
  set('specificity_prob', rate(A.neighborhood.filter((_, i) => enc.items.neighborhood[i].target.length > 0 && enc.items.neighborhood[i].alt).map((x) => x.lpTarget > (x.lpAlt as number))));
  const kls = after.unrelated.map((q, i) => klFromLogprobs(before.unrelated[i], q));
  set('kl', mean(kls));
  if (kls.length > 0) set('kl_max', Math.max(...kls));
  if (before.generalTokens > 0) {
    const pb = Math.exp(before.generalNll / before.generalTokens);
    const pa = Math.exp(after.generalNll / after.generalTokens);
    set('ppl_before', pb);
    set('ppl_after', pa);
    set('ppl_delta', pa / pb - 1);
  }
  if (A.retain.length > 0) {
    const rb = rate(B.retain.map((x) => x.top1));
    const ra = rate(A.retain.map((x) => x.top1));
    set('retain_before', rb);
    set('retain_after', ra);
    set('retain_drop', rb - ra);
  }
  if (A.suite.length > 0) {
    const passes = (o: Observation) =>
      o.items.suite.map((x, i) => {
        const e = enc.suite.suite[i].expect ?? 'true';
        if (e === 'unchanged') return x.pred === B.suite[i].pred;
        if (e === 'abstain') return !x.top1;
        return x.top1;
      });
    const sb = rate(passes(before));
    const sa = rate(passes(after));
    set('suite_before', sb);
    set('suite_after', sa);
    set('suite_drop', sb - sa);
  }
  if (A.forget.length > 0) {
    set('forget_top1', rate(A.forget.map((x) => x.top1)));
    set('forget_p_true', mean(A.forget.map((x) => Math.exp(x.lpTarget))));
    set('forget_p_true_before', mean(B.forget.map((x) => Math.exp(x.lpTarget))));
  }
  if (after.generations.length > 0 && before.generations.length > 0) {
    const fb = mean(before.generations.map((t) => nGramEntropy(t)));
    const fa = mean(after.generations.map((t) => nGramEntropy(t)));
    set('fluency_before', fb);
    set('fluency', fa);
    if (fb > 0) set('fluency_drop', 1 - fa / fb);
  }
  set('n_edit', A.edit.length);
  set('n_paraphrase', A.paraphrase.length);
  set('n_neighborhood', A.neighborhood.length);
  set('n_unrelated', after.unrelated.length);
  set('n_general', enc.general.length);
  set('n_retain', A.retain.length);
  set('n_suite', A.suite.length);
  set('n_forget', A.forget.length);
  set('n_generation', after.generations.length);
  return m;
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
      rows.push(row);
    });
  }
  return rows;
}
