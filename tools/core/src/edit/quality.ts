/**
 * Quick edit-quality figures (CounterFact-style, top-1), used by tests and
 * the benchmark to check lora-train's output; `validate` is the full tool.
 *
 *   efficacy     insert: target_new is top-1 on the edit prompt
 *   paraphrase   insert: the same on held-out templates (never trained on)
 *   neighbourhood other subjects of the same relations that the base model
 *                answers correctly still do
 *   forgotten    forget: the old answer is NOT top-1 on edit + held-out prompts
 */
import type { CausalLM } from '../models/causal-lm.js';
import type { LoraAdapter } from '../models/lora.js';
import type { Tokenizer } from '../models/loader.js';
import { Rng } from '../util/random.js';
import { buildRetain, encodeTrainingPair, neighbourFacts, type EditFact, type Rec, type RetainRow, type TemplateBank } from './data.js';
import { klFromLogprobs, logSoftmaxRow } from '../metrics/scoring.js';
import { lastLogits, top1 } from './model-util.js';

export interface QualityFigures {
  efficacy: number;
  paraphrase: number;
  neighbourhood: number;
  /** Forget facts: share of their prompts where the old answer is no longer top-1. */
  forgotten: number;
  /** Counts behind each figure. */
  n: { efficacy: number; paraphrase: number; neighbourhood: number; forgotten: number };
}

interface Row {
  ids: number[];
  target: number;
}

function row(tok: Tokenizer, prompt: string, target: string): Row {
  const { promptIds, targetIds } = encodeTrainingPair(tok, prompt, target);
  return { ids: promptIds, target: targetIds[0] };
}

/**
 * Figures for `adapters` (each active alone, scale 1) over their facts.
 * `known` are true facts for neighbourhood prompts; `avoid` lists neighbour
 * prompts used in training (excluded).
 */
export function editQuality(
  model: CausalLM, tok: Tokenizer, edits: Array<{ adapter: LoraAdapter; facts: EditFact[] }>,
  opts: { templates?: TemplateBank | null; known: readonly Rec[]; neighboursPerFact?: number; seed?: number; avoid?: ReadonlySet<string> },
): QualityFigures {
  const rng = new Rng(opts.seed ?? 12345);
  const per = opts.neighboursPerFact ?? 5;
  const prev = model.activeAdapters();
  const acc = { efficacy: [0, 0], paraphrase: [0, 0], neighbourhood: [0, 0], forgotten: [0, 0] };
  try {
    for (const { adapter, facts } of edits) {
      const eff: Row[] = [];
      let para: Row[] = [];
      const paraTrue: Row[] = [];
      const forg: Row[] = [];
      const neigh: Row[] = [];
      const subjects = new Set(facts.map((f) => f.subject));
      for (const f of facts) {
        const prompt = f.prompt.replace('{}', f.subject);
        const held = (f.relation ? opts.templates?.heldout.get(f.relation) : undefined) ?? [];
        if (f.op === 'insert') {
          eff.push(row(tok, prompt, f.target_new!));
          for (const h of held) para.push(row(tok, h.replace('{}', f.subject), f.target_new!));
        } else {
          forg.push(row(tok, prompt, f.target_true!));
          for (const h of held) forg.push(row(tok, h.replace('{}', f.subject), f.target_true!));
        }
        const same = opts.known.filter(
          (k) => k.relation === f.relation && typeof k.subject === 'string' && !subjects.has(k.subject) && typeof k.prompt === 'string' && typeof k.target_true === 'string',
        );
        let taken = 0;
        for (const k of rng.shuffle(same.slice())) {
          if (taken >= per) break;
          const p = (k.prompt as string).replace('{}', k.subject as string);
          if (opts.avoid?.has(p)) continue;
          neigh.push(row(tok, p, k.target_true as string));
          taken++;
        }
      }
      // neighbours the base model answers correctly: knowledge that must survive the edit
      model.setAdapters([]);
      const baseNeigh = neigh.length ? top1(model, neigh.map((r) => r.ids)) : [];
      const known = neigh.filter((r, i) => baseNeigh[i] === r.target);
      model.setAdapters([{ adapter }]);
      const score = (rows: Row[], key: 'efficacy' | 'paraphrase' | 'forgotten', want: boolean) => {
        if (!rows.length) return;
        const p = top1(model, rows.map((r) => r.ids));
        rows.forEach((r, i) => {
          acc[key][1]++;
          if ((p[i] === r.target) === want) acc[key][0]++;
        });
      };
      score(eff, 'efficacy', true);
      score(para, 'paraphrase', true);
      score(forg, 'forgotten', false);
      if (known.length) {
        const p = top1(model, known.map((r) => r.ids));
        p.forEach((t, i) => {
          acc.neighbourhood[1]++;
          if (t === known[i].target) acc.neighbourhood[0]++;
        });
      }
    }
  } finally {
    model.setAdapters(prev);
  }
  const frac = ([a, b]: number[]) => (b ? a / b : NaN);
  return {
    efficacy: frac(acc.efficacy),
    paraphrase: frac(acc.paraphrase),
    neighbourhood: frac(acc.neighbourhood),
    forgotten: frac(acc.forgotten),
    n: { efficacy: acc.efficacy[1], paraphrase: acc.paraphrase[1], neighbourhood: acc.neighbourhood[1], forgotten: acc.forgotten[1] },
  };
}

/**
 * The strict read-back of an edit (issue 17): every fact the model is known
 * to answer, one prompt each (`readback`, e.g. the world's
 * eval/facts-train.ndjson), scored before and after, not a sample.
 *
 *   efficacy      insert facts: target_new top-1 on the fact's own prompt
 *   paraphrase    insert facts: the same on the relation's held-out templates
 *                 (those where the base model gives target_true: a phrasing it
 *                 cannot answer for the true fact cannot test generalisation)
 *   neighbourhood read-back prompts of the edited relations (other subjects)
 *                 the base model answers correctly and still does
 *   kl            mean KL(base ‖ edited) of the next-token distribution over
 *                 the read-back prompts of every fact not edited (validate's
 *                 `kl`, over all of them)
 *   retain_drop   top-1 accuracy on those prompts before − after
 *   forgotten     forget facts: the old answer not top-1 (own prompt + the held-out
 *                 templates where the base model gives the old answer, as
 *                 validate keeps a forget paraphrase)
 *   forget_kind   forget facts: the new top-1 is an answer of the relation's
 *                 kind (an object some known fact of the relation has) or,
 *                 with `abstain`, the abstention text's first token
 *   forget_abstain (only with `abstain`) forget facts: the new top-1 is the
 *                 abstention text's first token (a share of all forget prompts)
 *
 * `groups`: the adapters active together for the facts of each group (one
 * group for a batch; one per fact for single ROME edits, each measured
 * alone). Figures are pooled over groups (kl, retain_drop: means over groups).
 */
export interface ReadbackProbe {
  prompt: string;
  target: string;
  subject?: string;
  relation?: string;
}

export interface ReadbackFigures {
  efficacy: number;
  paraphrase: number;
  neighbourhood: number;
  kl: number;
  /** Largest per-group kl. */
  kl_max: number;
  retain_drop: number;
  retain_drop_max: number;
  /** Standard errors (s.d./√n over the read-back prompts; paired for retain_drop), means over groups. */
  kl_se: number;
  retain_drop_se: number;
  /**
   * kl split by the base model's answer (means over groups): over the prompts it answers rightly, and
   * over those it answers wrongly, where an edit that moves the answer toward the truth counts as harm too.
   */
  kl_base_right: number;
  kl_base_wrong: number;
  forgotten: number;
  forget_kind: number;
  /** With `abstain` only: share of forget prompts whose top-1 is the abstention. */
  forget_abstain?: number;
  n: { efficacy: number; paraphrase: number; neighbourhood: number; retain: number; base_right: number; forgotten: number; groups: number };
}

export function editReadback(
  model: CausalLM, tok: Tokenizer, groups: Array<{ adapters: LoraAdapter[]; facts: EditFact[] }>,
  opts: { templates?: TemplateBank | null; readback: readonly ReadbackProbe[]; abstain?: string },
): ReadbackFigures {
  const V = model.config.vocabSize;
  const first = (p: string, t: string) => row(tok, p, t);
  const rb = opts.readback.map((p) => ({ ...p, r: first(p.prompt, p.target) }));
  // the relation's kinds of answer: every first token a known fact of the relation answers with
  const kinds = new Map<string, Set<number>>();
  for (const p of rb) if (p.relation) (kinds.get(p.relation) ?? kinds.set(p.relation, new Set()).get(p.relation)!).add(p.r.target);
  const prev = model.activeAdapters();
  const cnt = { efficacy: [0, 0], paraphrase: [0, 0], neighbourhood: [0, 0], forgotten: [0, 0], forget_kind: [0, 0], forget_abstain: [0, 0] };
  let klSum = 0;
  let klMax = 0;
  let dropSum = 0;
  let dropMax = 0;
  let nRetain = 0;
  let klSeSum = 0;
  let dropSeSum = 0;
  let klRightSum = 0;
  let klWrongSum = 0;
  let nRight = 0;
  // base-model read-back once: logits of every prompt
  model.setAdapters([]);
  const baseLog = logitsOf(model, rb.map((p) => p.r.ids));
  try {
    for (const g of groups) {
      const edited = new Set(g.facts.map((f) => `${f.subject}\u0000${f.relation ?? ''}`));
      const subjects = new Set(g.facts.map((f) => f.subject));
      const rels = new Set(g.facts.map((f) => f.relation));
      const eff: Row[] = [];
      let para: Row[] = [];
      const paraTrue: Row[] = [];
      let forg: Array<Row & { relation?: string; abstain?: number; heldOut?: boolean }> = [];
      for (const f of g.facts) {
        const prompt = f.prompt.replace('{}', f.subject);
        const held = (f.relation ? opts.templates?.heldout.get(f.relation) : undefined) ?? [];
        if (f.op === 'insert') {
          eff.push(first(prompt, f.target_new!));
          for (const h of held) {
            const p = h.replace('{}', f.subject);
            // a held-out phrasing the base model cannot answer for the true fact cannot test generalisation
            if (f.target_true) paraTrue.push(first(p, f.target_true));
            para.push(first(p, f.target_new!));
          }
        } else {
          // the abstention's first token after each prompt (an acceptable replacement with `abstain`)
          const ab = (p: string) => (opts.abstain !== undefined ? { abstain: first(p, opts.abstain).target } : {});
          forg.push({ ...first(prompt, f.target_true!), relation: f.relation, ...ab(prompt) });
          for (const h of held) {
            const p = h.replace('{}', f.subject);
            forg.push({ ...first(p, f.target_true!), relation: f.relation, ...ab(p), heldOut: true });
          }
        }
      }
      if (paraTrue.length === para.length && para.length) {
        model.setAdapters([]);
        const known = top1(model, paraTrue.map((r) => r.ids));
        para = para.filter((_, i) => known[i] === paraTrue[i].target);
      }
      // likewise a held-out phrasing where the base model does not answer the old answer has nothing to
      // forget, nor a replacement to judge: read only those it answers (validate's forget probes alike)
      if (forg.some((r) => r.heldOut)) {
        model.setAdapters([]);
        const known = top1(model, forg.map((r) => r.ids));
        forg = forg.filter((r, i) => !r.heldOut || known[i] === r.target);
      }
      model.setAdapters(g.adapters.map((adapter) => ({ adapter })));
      const top = (rows: Row[]) => (rows.length ? top1(model, rows.map((r) => r.ids)) : []);
      top(eff).forEach((t, i) => { cnt.efficacy[1]++; if (t === eff[i].target) cnt.efficacy[0]++; });
      top(para).forEach((t, i) => { cnt.paraphrase[1]++; if (t === para[i].target) cnt.paraphrase[0]++; });
      top(forg).forEach((t, i) => {
        cnt.forgotten[1]++;
        if (t !== forg[i].target) cnt.forgotten[0]++;
        cnt.forget_kind[1]++;
        const abstained = forg[i].abstain !== undefined && t === forg[i].abstain && t !== forg[i].target;
        if (abstained || (t !== forg[i].target && forg[i].relation && kinds.get(forg[i].relation!)?.has(t))) cnt.forget_kind[0]++;
        cnt.forget_abstain[1]++;
        if (abstained) cnt.forget_abstain[0]++;
      });
      const afterLog = logitsOf(model, rb.map((p) => p.r.ids));
      let kl = 0;
      let kl2 = 0;
      let before = 0;
      let after = 0;
      let d2 = 0;
      let n = 0;
      let klRight = 0;
      let right = 0;
      rb.forEach((p, i) => {
        if (edited.has(`${p.subject ?? ''}\u0000${p.relation ?? ''}`)) return;
        const b = baseLog.subarray(i * V, (i + 1) * V);
        const a = afterLog.subarray(i * V, (i + 1) * V);
        const k = klFromLogprobs(logSoftmaxRow(b), logSoftmaxRow(a));
        kl += k;
        kl2 += k * k;
        const bOk = argmax(b) === p.r.target;
        const aOk = argmax(a) === p.r.target;
        if (bOk) {
          before++;
          klRight += k;
          right++;
        }
        if (aOk) after++;
        if (bOk !== aOk) d2++;
        n++;
        if (p.relation && rels.has(p.relation) && !(p.subject && subjects.has(p.subject)) && bOk) {
          cnt.neighbourhood[1]++;
          if (aOk) cnt.neighbourhood[0]++;
        }
      });
      const gkl = n ? kl / n : 0;
      const gdrop = n ? (before - after) / n : 0;
      // s.d./√n of the per-prompt KL and of the paired differences (bOk − aOk ∈ {−1, 0, 1})
      const se = (sumSq: number, m: number) => (n > 1 ? Math.sqrt(Math.max(0, sumSq / n - m * m) / (n - 1)) : 0);
      klSeSum += se(kl2, gkl);
      dropSeSum += se(d2, gdrop);
      klSum += gkl;
      klMax = Math.max(klMax, gkl);
      dropSum += gdrop;
      dropMax = Math.max(dropMax, gdrop);
      nRetain = Math.max(nRetain, n);
      klRightSum += right ? klRight / right : 0;
      klWrongSum += n > right ? (kl - klRight) / (n - right) : 0;
      nRight = Math.max(nRight, right);
    }
  } finally {
    model.setAdapters(prev);
  }
  const frac = ([a, b]: number[]) => (b ? a / b : NaN);
  const G = Math.max(1, groups.length);
  return {
    efficacy: frac(cnt.efficacy), paraphrase: frac(cnt.paraphrase), neighbourhood: frac(cnt.neighbourhood),
    kl: klSum / G, kl_max: klMax, retain_drop: dropSum / G, retain_drop_max: dropMax, kl_se: klSeSum / G, retain_drop_se: dropSeSum / G,
    kl_base_right: klRightSum / G, kl_base_wrong: klWrongSum / G,
    forgotten: frac(cnt.forgotten), forget_kind: frac(cnt.forget_kind),
    ...(opts.abstain !== undefined ? { forget_abstain: frac(cnt.forget_abstain) } : {}),
    n: { efficacy: cnt.efficacy[1], paraphrase: cnt.paraphrase[1], neighbourhood: cnt.neighbourhood[1], retain: nRetain, base_right: nRight, forgotten: cnt.forgotten[1], groups: groups.length },
  };
}

function argmax(row: Float32Array): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

/** Last-position logits of every prompt, [n·V] (active adapters, no grad, batches of 64). */
function logitsOf(model: CausalLM, prompts: readonly number[][]): Float32Array {
  const V = model.config.vocabSize;
  const out = new Float32Array(prompts.length * V);
  for (let s = 0; s < prompts.length; s += 64) {
    const l = lastLogits(model, prompts.slice(s, s + 64));
    out.set(l.data.subarray(0, Math.min(64, prompts.length - s) * V), s * V);
  }
  return out;
}

/**
 * The training phrasings of a relation: its `train` prompts, less any that
 * is also a held-out prompt. Retention training draws only from these and
 * the test side (validate's default retention set, eval-edits' read-back,
 * paraphrase probes) only from the held-out ones, so the two never share a
 * prompt (issue 17: retention trained and measured on the same phrasings
 * read kl 0.018 where held-out phrasings gave 0.062).
 */
export function trainPhrasings(templates: TemplateBank | null | undefined, relation: string | undefined): string[] {
  if (!templates || relation === undefined) return [];
  const held = new Set(templates.heldout.get(relation) ?? []);
  return (templates.train.get(relation) ?? []).filter((t) => !held.has(t));
}

/**
 * Known facts held to the base model while an edit trains (KL): up to `n`
 * facts of every relation, in a seeded order, skipping the batch's own
 * (subject, relation) pairs, each in `phrasings` distinct training
 * phrasings of its relation (its own prompt when the relation has none in
 * the bank). With phrasings = 1 the order and choice are those of
 * lora-train's first version (one seeded template per fact).
 */
export function knownFactRetainPrompts(
  known: readonly Rec[], templates: TemplateBank | null | undefined, edited: ReadonlyArray<{ subject: string; relation?: string }>,
  n: number, seed: number, phrasings = 1,
): string[] {
  return knownFactRetainSplit(known, templates, edited, n, seed, phrasings, 0).retain;
}

/**
 * knownFactRetainPrompts' prompts (`retain`, the same ones in the same
 * order) and up to `monitor` prompts held aside from them (`monitor`): for
 * facts in the seeded order, one TRAINING phrasing of the relation that the
 * fact's retain prompts do not use (any training phrasing for a fact beyond
 * the first `n`), drawn by a separate seeded generator. Never a held-out
 * phrasing, and never a retain prompt: a KL read on them while training
 * (lora-train's --kl-budget) sees how retention carries to phrasings the
 * retention term never fitted, without touching validate's held-out set.
 * Facts whose relation has no phrasing left are skipped.
 */
export function knownFactRetainSplit(
  known: readonly Rec[], templates: TemplateBank | null | undefined, edited: ReadonlyArray<{ subject: string; relation?: string }>,
  n: number, seed: number, phrasings = 1, monitor = 0,
): { retain: string[]; monitor: string[] } {
  const rng = new Rng(seed + 7919);
  const mrng = new Rng(seed + 104729);
  const skip = new Set(edited.map((f) => `${f.subject}\u0000${f.relation ?? ''}`));
  const pool = known.filter(
    (k) => typeof k.subject === 'string' && typeof k.prompt === 'string' && !skip.has(`${k.subject}\u0000${String(k.relation ?? '')}`),
  );
  const out: string[] = [];
  const aside: string[] = [];
  const order = rng.shuffle(pool.slice());
  order.forEach((k, i) => {
    const bank = trainPhrasings(templates, typeof k.relation === 'string' ? k.relation : undefined);
    const subject = k.subject as string;
    let used: string[] = [];
    if (i < n) {
      if (bank.length === 0) out.push((k.prompt as string).replace('{}', subject));
      else {
        used = phrasings <= 1 ? [bank[rng.int(bank.length)]] : rng.shuffle(bank.slice()).slice(0, phrasings);
        for (const t of used) out.push(t.replace('{}', subject));
      }
    }
    if (aside.length < monitor) {
      const left = bank.filter((t) => !used.includes(t));
      if (left.length) aside.push(left[mrng.int(left.length)].replace('{}', subject));
    }
  });
  return { retain: out, monitor: aside };
}

/**
 * Neighbour prompts for retention: `perFact` known facts of each edited
 * relation about other subjects (neighbourFacts), each in every training
 * phrasing of its relation (its own prompt when the relation has none).
 */
export function neighbourPhrasings(known: readonly Rec[], templates: TemplateBank | null | undefined, facts: readonly EditFact[], perFact: number, seed: number): string[] {
  const out: string[] = [];
  for (const n of neighbourFacts(known, facts, perFact, seed)) {
    const bank = trainPhrasings(templates, n.relation);
    if (bank.length) for (const t of bank) out.push(t.replace('{}', n.subject));
    else out.push(n.prompt);
  }
  return out;
}

/**
 * Look-alike prompts of a batch: per edited fact, up to `perFact` known facts
 * (never an edited subject + relation pair) most at risk from the edit, each
 * in every training phrasing of its relation (its own prompt without one).
 * First, for a forget fact, the relation's other subjects with the same old
 * answer (pushing the answer down pushes it down for them too); then
 * subjects sharing tokens with the edited subject, the most shared first (the
 * subject's own other relations, then e.g. a shared surname: an edit keyed on
 * a subject token fires on every subject that carries it); ties in a seeded
 * order.
 */
export function lookalikePhrasings(
  known: readonly Rec[], tok: Pick<Tokenizer, 'encode'>, templates: TemplateBank | null | undefined, batch: readonly EditFact[], perFact: number, seed: number,
): string[] {
  if (perFact <= 0) return [];
  const words = (s: string) => new Set(tok.encode(s));
  const skip = new Set(batch.map((f) => `${f.subject}\u0000${f.relation ?? ''}`));
  const pool = known.filter(
    (k) => typeof k.subject === 'string' && typeof k.prompt === 'string' && !skip.has(`${k.subject}\u0000${String(k.relation ?? '')}`),
  );
  const poolWords = pool.map((k) => words(k.subject as string));
  const rng = new Rng(seed + 31337);
  const chosen = new Set<number>();
  const SAME_ANSWER = 1e6;
  for (const f of batch) {
    const mine = words(f.subject);
    const scored: Array<{ i: number; s: number; r: number }> = [];
    pool.forEach((k, i) => {
      let s = f.op === 'forget' && f.target_true !== undefined && k.relation === f.relation && k.target_true === f.target_true ? SAME_ANSWER : 0;
      for (const w of poolWords[i]) if (mine.has(w)) s++;
      if (s > 0) scored.push({ i, s, r: rng.uniform() });
    });
    scored.sort((a, b) => b.s - a.s || a.r - b.r);
    for (const x of scored.slice(0, perFact)) chosen.add(x.i);
  }
  const out: string[] = [];
  for (const i of [...chosen].sort((a, b) => a - b)) {
    const k = pool[i];
    const bank = trainPhrasings(templates, typeof k.relation === 'string' ? k.relation : undefined);
    if (bank.length) for (const t of bank) out.push(t.replace('{}', k.subject as string));
    else out.push((k.prompt as string).replace('{}', k.subject as string));
  }
  return out;
}

/**
 * The known-fact retention prompts and, with a KL budget (`klBudget` > 0),
 * `klMonitor` known-fact prompts held aside from them, tokenised
 * (knownFactRetainSplit): what lora-train's and moe-route-distill's
 * retention and KL constraint read.
 */
export function knownFactRetainAndMonitor(
  tok: Tokenizer, known: readonly Rec[], templates: TemplateBank | null | undefined, facts: readonly EditFact[],
  o: { retainFacts: number; retainPhrasings: number; klBudget: number; klMonitor: number }, seed: number, log: (m: string) => void,
): { otherFacts: string[]; monitor: RetainRow[] } {
  const monitorN = o.klBudget > 0 ? o.klMonitor : 0;
  const split = o.retainFacts > 0 || monitorN > 0
    ? knownFactRetainSplit(known, templates, facts, o.retainFacts, seed, o.retainPhrasings, monitorN)
    : { retain: [], monitor: [] };
  const monitor = buildRetain(tok, { prompts: split.monitor }, { seed: seed + 2, maxPrompts: split.monitor.length });
  if (o.klBudget > 0 && monitor.length === 0) log('--kl-budget: no known-fact prompt left to monitor (no --known-facts or templates); the constraint is off');
  return { otherFacts: split.retain, monitor };
}
