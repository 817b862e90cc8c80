/**
 * The full generator: every probe role for a whole stream of facts.
 *
 * It needs the whole stream (conflicts, neighbours drawn from other facts,
 * the replay share of general text), so it works on an array of input
 * records; the first form (`--roles edit`) streams instead (probes.ts).
 *
 * Meaning of `expect`, always about the probe's `target`:
 * - `new`: the target is the edited-in answer; it must become the model's answer.
 * - `true`: the target is the true answer; it must be (and stay) the model's answer.
 * - `unchanged`: the model's answer must not move (the target, when given, is that answer).
 * - `abstain`: the target must lose: it must no longer be the model's answer.
 */
import { InputError } from '@catechism/core/cli';
import { parseFact, type InputRecord } from '@catechism/core/records';
import type { AnyRecord, Fact, Probe, ProbeExpect, ProbeRole } from '@catechism/core/records';
import { fnv1a32, type Rng } from '@catechism/core/random';
import { entryFor, type TemplateBank } from './bank.js';
import { fillPrompt } from './probes.js';

export const ALL_ROLES: readonly ProbeRole[] = ['edit', 'paraphrase', 'context', 'neighborhood', 'counterfactual', 'generation', 'general'];

/** `fact_id` of probes shared by every fact of the stream (general text). */
export const SHARED_FACT_ID = '*';

/** One known fact of the knowledge base: the subject's answer for a relation. */
export interface KbEntry {
  id: string;
  subject: string;
  relation: string;
  target: string;
}

export interface FullOptions {
  roles: ReadonlySet<ProbeRole>;
  seed: number;
  /** Builds a seeded generator (the CLI passes the core Rng's constructor). */
  makeRng: (seed: number) => Rng;
  bank: TemplateBank | null;
  /** Known facts (the --kb file); the stream's own facts are added to these. */
  kb: readonly KbEntry[];
  /** External paraphrases by fact id (already filled with the subject). */
  paraphrases?: ReadonlyMap<string, string[]>;
  /** Share of the external paraphrases of a fact kept for testing. */
  paraphraseTestFraction: number;
  /** At most this many train paraphrases per fact from the bank (0: all). */
  maxParaphrases: number;
  contexts: readonly string[];
  neighbors: number;
  trainNeighbors: number;
  generations: number;
  forgetTarget: 'abstain' | 'any';
  abstainText: string;
  general: readonly string[];
  replay: number;
  onConflict: 'last' | 'fail';
  /** Fact ids the model already answers as the edit asks. */
  known?: ReadonlySet<string>;
  /** Known facts get no probes at all (the fact is still written, flagged). */
  skipKnown?: boolean;
  keepFacts: boolean;
  log: (message: string) => void;
}

/** FNV-1a (core's one hash): a stable per-fact seed, so adding a fact does not reshuffle the others. */
export const hash32 = (s: string): number => fnv1a32(s);

/**
 * Bad-input checks of one fact: the prompt must hold the `{}` subject slot,
 * targets must be non-empty, and the fact needs the target its op uses.
 */
export function checkFact(f: unknown): Fact {
  // The one definition (core's records/schema.ts); a fact with target_true alone is taught as it is.
  return parseFact(f, { known: true });
}

/** checkFact of an input record; the error names its input and record number. */
function checkFactAt(r: InputRecord): Fact {
  try {
    return checkFact(r.record);
  } catch (e) {
    throw e instanceof InputError ? e.locate({ source: r.source, record: r.index }) : e;
  }
}

/** The probe target and expectation of a fact's own prompt. */
export function editTarget(f: Fact): { target: string; expect: ProbeExpect } {
  if (f.op === 'forget') return { target: f.target_true!, expect: 'abstain' };
  if (f.target_new !== undefined) return { target: f.target_new, expect: 'new' };
  return { target: f.target_true!, expect: 'true' };
}

const isEdit = (f: Fact): boolean => f.op === 'forget' || f.target_new !== undefined;

interface FactInfo {
  fact: Fact;
  at: InputRecord;
  supersededBy?: string;
  duplicateOf?: string;
}

/** Facts that disagree about one subject and relation: report, then keep the last (or fail). */
function resolveConflicts(infos: FactInfo[], onConflict: 'last' | 'fail', log: (m: string) => void): void {
  const seen = new Map<string, FactInfo>();
  for (const info of infos) {
    const f = info.fact;
    const edit = isEdit(f);
    // Edits conflict with edits; plain known facts only with known facts.
    const key = `${edit ? 'e' : 'k'}\u0000${f.subject}\u0000${f.relation ?? f.prompt}`;
    const value = f.op === 'forget' ? '\u0000forget' : (f.target_new ?? f.target_true)!;
    const prev = seen.get(key);
    seen.set(key, info);
    if (!prev) continue;
    const pf = prev.fact;
    const pv = pf.op === 'forget' ? '\u0000forget' : (pf.target_new ?? pf.target_true)!;
    const show = (v: string) => (v === '\u0000forget' ? 'forget' : JSON.stringify(v));
    if (pv === value) {
      info.duplicateOf = pf.id;
      log(`fact ${JSON.stringify(f.id)} (${info.at.source}: record ${info.at.index}) repeats fact ${JSON.stringify(pf.id)}: no probes of its own`);
      seen.set(key, prev);
      continue;
    }
    const what = `fact ${JSON.stringify(f.id)} conflicts with fact ${JSON.stringify(pf.id)} (${prev.at.source}: record ${prev.at.index}): same subject ${JSON.stringify(f.subject)} and relation ${JSON.stringify(f.relation ?? f.prompt)}, ${show(pv)} vs ${show(value)}`;
    if (onConflict === 'fail') {
      throw new InputError(`${what} (--on-conflict last keeps the later one)`, { source: info.at.source, record: info.at.index, field: f.op === 'forget' ? 'op' : f.target_new !== undefined ? 'target_new' : 'target_true' });
    }
    prev.supersededBy = f.id;
    log(`conflict: ${what}; keeping the later one (--on-conflict last)`);
  }
}

/** A normalised form for comparing prompts (spacing and case do not make a new prompt). */
const norm = (s: string): string => s.replace(/\s+/g, ' ').trim().toLowerCase();

/**
 * Every record of the output, in order: other records as they came, each
 * fact followed by its probes, then the general (replay) probes.
 */
export function generateAll(records: readonly InputRecord[], o: FullOptions): AnyRecord[] {
  const infos: FactInfo[] = [];
  for (const r of records) {
    if (r.record.kind === 'fact') infos.push({ fact: checkFactAt(r), at: r });
  }
  resolveConflicts(infos, o.onConflict, o.log);
  const active = infos.filter((i) => !i.supersededBy && !i.duplicateOf);

  // Knowledge: the --kb facts plus the stream's, minus every (subject, relation) being edited.
  const relationOf = (f: Fact): string | undefined => f.relation ?? entryFor(o.bank, undefined, f.prompt)?.relation;
  const edited = new Set<string>();
  for (const { fact: f } of active) {
    const rel = relationOf(f);
    if (isEdit(f) && rel !== undefined) edited.add(`${f.subject}\u0000${rel}`);
  }
  const byAnswer = new Map<string, KbEntry[]>();
  const answerOf = new Map<string, string>();
  const kbSeen = new Set<string>();
  const addKb = (e: KbEntry): void => {
    const sr = `${e.subject}\u0000${e.relation}`;
    if (!answerOf.has(sr)) answerOf.set(sr, e.target);
    if (edited.has(sr) || kbSeen.has(sr)) return;
    kbSeen.add(sr);
    const k = `${e.relation}\u0000${e.target}`;
    const l = byAnswer.get(k) ?? [];
    l.push(e);
    byAnswer.set(k, l);
  };
  for (const e of o.kb) addKb(e);
  for (const { fact: f } of active) {
    const rel = relationOf(f);
    if (rel !== undefined && f.target_true !== undefined) addKb({ id: f.id, subject: f.subject, relation: rel, target: f.target_true });
  }

  const probesOf = new Map<string, Probe[]>();
  const trainPrompts = new Set<string>();
  for (const info of active) {
    const ps = o.skipKnown && o.known?.has(info.fact.id) ? [] : factProbes(info.fact, relationOf(info.fact), byAnswer, answerOf, o);
    probesOf.set(info.fact.id, ps);
    for (const p of ps) if (p.split === 'train') trainPrompts.add(norm(p.prompt));
  }
  // No test paraphrase or neighbour may be a prompt trained on anywhere in the stream.
  let dropped = 0;
  let nTrain = 0;
  for (const [id, ps] of probesOf) {
    const kept = ps.filter((p) => {
      const leak = p.split === 'test' && (p.role === 'paraphrase' || p.role === 'neighborhood') && trainPrompts.has(norm(p.prompt));
      if (leak) dropped++;
      return !leak;
    });
    nTrain += kept.filter((p) => p.split === 'train').length;
    probesOf.set(id, kept);
  }
  if (dropped > 0) o.log(`dropped ${dropped} test probe(s) whose prompt is also a train prompt`);

  const known = active.filter((i) => o.known?.has(i.fact.id)).length;
  if (known > 0) o.log(`${known} fact(s) flagged already_known: the model already answers them as asked${o.skipKnown ? '; no probes for them (--skip-known)' : ''}`);

  const out: AnyRecord[] = [];
  const infoOf = new Map(infos.map((i) => [i.at, i]));
  for (const r of records) {
    const info = infoOf.get(r);
    if (!info) {
      out.push(r.record);
      continue;
    }
    const f = info.fact;
    const flagged = o.known?.has(f.id) && !info.supersededBy && !info.duplicateOf;
    if (o.keepFacts) {
      const extra: Record<string, unknown> = {};
      if (info.supersededBy) extra.superseded_by = info.supersededBy;
      if (info.duplicateOf) extra.duplicate_of = info.duplicateOf;
      if (flagged) extra.already_known = true;
      out.push(Object.keys(extra).length ? { ...f, ...extra } : f);
    }
    for (const p of probesOf.get(f.id) ?? []) out.push(flagged ? { ...p, already_known: true } : p);
  }
  if (o.roles.has('general')) out.push(...generalProbes(o, nTrain));
  return out;
}

function factProbes(f: Fact, relation: string | undefined, byAnswer: Map<string, KbEntry[]>, answerOf: Map<string, string>, o: FullOptions): Probe[] {
  const rng = o.makeRng((o.seed ^ hash32(f.id)) >>> 0);
  const forget = f.op === 'forget';
  const { target, expect } = editTarget(f);
  const editPrompt = fillPrompt(f.prompt, f.subject);
  const out: Probe[] = [];
  const counters = new Map<string, number>();
  const seen = new Set<string>();
  const add = (role: ProbeRole, split: 'train' | 'test', prompt: string, t: string | undefined, e: ProbeExpect, extra: Record<string, unknown> = {}): void => {
    const key = `${role}\u0000${norm(prompt)}\u0000${t ?? ''}\u0000${e}`;
    if (seen.has(key)) return; // duplicates removed; the first (train before test) wins
    seen.add(key);
    const k = counters.get(role) ?? 0;
    counters.set(role, k + 1);
    out.push({ kind: 'probe', id: `${f.id}/${role}/${k}`, fact_id: f.id, role, split, prompt, ...(t !== undefined ? { target: t } : {}), expect: e, ...extra });
  };
  const has = (r: ProbeRole) => o.roles.has(r);
  const entry = entryFor(o.bank, relation, f.prompt);

  if (has('edit')) add('edit', 'train', editPrompt, target, expect);

  // paraphrases: bank train templates → train; held-out templates, the input's own, a share of the external ones → test
  const testParas: string[] = [];
  if (has('paraphrase')) {
    const editKey = norm(editPrompt);
    let trainParas = (entry?.train ?? []).map((t) => fillPrompt(t, f.subject)).filter((p) => norm(p) !== editKey);
    if (o.maxParaphrases > 0 && trainParas.length > o.maxParaphrases) trainParas = rng.shuffle(trainParas.slice()).slice(0, o.maxParaphrases);
    const external = rng.shuffle([...(o.paraphrases?.get(f.id) ?? [])].filter((p) => norm(p) !== editKey));
    const nExtTest = Math.round(external.length * o.paraphraseTestFraction);
    trainParas.push(...external.slice(nExtTest));
    testParas.push(...(entry?.heldout ?? []).map((t) => fillPrompt(t, f.subject)), ...(f.prompts?.paraphrase ?? []), ...external.slice(0, nExtTest));
    const trainKeys = new Set([editKey, ...trainParas.map(norm)]);
    for (const p of trainParas) add('paraphrase', 'train', p, target, expect);
    for (const p of testParas) if (!trainKeys.has(norm(p))) add('paraphrase', 'test', p, target, expect);
  }

  if (has('context')) {
    for (const c of o.contexts) add('context', 'train', `${c} ${editPrompt}`, target, expect, { context: c });
  }

  if (has('neighborhood')) {
    const original = f.target_true ?? (relation !== undefined ? answerOf.get(`${f.subject}\u0000${relation}`) : undefined);
    if (relation !== undefined && original !== undefined) {
      const pool = (byAnswer.get(`${relation}\u0000${original}`) ?? []).filter((e) => e.subject !== f.subject);
      const picked = rng.shuffle(pool.slice()).slice(0, o.neighbors + o.trainNeighbors);
      picked.forEach((n, i) => {
        add('neighborhood', i < o.neighbors ? 'test' : 'train', fillPrompt(f.prompt, n.subject), n.target, 'unchanged', { subject: n.subject, relation, neighbor_id: n.id });
      });
    }
    if (original !== undefined) for (const p of f.prompts?.neighborhood ?? []) add('neighborhood', 'test', p, original, 'unchanged');
    for (const l of f.locality ?? []) add('neighborhood', 'test', l.prompt, l.target, 'unchanged', { locality: true });
  }

  if (has('counterfactual')) {
    if (!forget && f.target_new !== undefined && f.target_true !== undefined) {
      // the old answer must lose to the new one
      add('counterfactual', 'test', editPrompt, f.target_true, 'abstain', { target_new: f.target_new });
    } else if (forget && o.forgetTarget === 'abstain') {
      // teach the abstention answer in place of the forgotten one
      add('counterfactual', 'train', editPrompt, o.abstainText, 'new', { target_true: f.target_true });
      const held = testParas.find((p) => norm(p) !== norm(editPrompt));
      if (held !== undefined) add('counterfactual', 'test', held, o.abstainText, 'new', { target_true: f.target_true });
    } else if (forget) {
      // any answer but the forgotten one
      add('counterfactual', 'test', editPrompt, f.target_true, 'abstain');
    }
  }

  if (has('generation') && o.generations > 0) {
    const own = f.prompts?.generation ?? [];
    const others = [...(o.bank?.byRelation.values() ?? [])]
      .filter((e) => e.relation !== entry?.relation && entry?.subjectType !== undefined && e.subjectType === entry.subjectType && e.train.length > 0)
      .map((e) => fillPrompt(e.train[0], f.subject));
    let prompts = [...own, ...rng.shuffle(others)].slice(0, o.generations);
    if (prompts.length === 0) prompts = [f.subject];
    for (const p of prompts) {
      if (forget) add('generation', 'test', p, f.target_true, 'abstain');
      else add('generation', 'test', p, undefined, expect, f.target_new !== undefined ? { target_new: f.target_new } : {});
    }
  }
  return out;
}

/** Replay: general texts mixed into training, `replay` × the number of train probes. */
function generalProbes(o: FullOptions, nTrain: number): Probe[] {
  const pool = [...new Set(o.general.map((g) => g.trim()).filter((g) => g !== ''))];
  const want = Math.round(o.replay * nTrain);
  if (want > pool.length) o.log(`--replay ${o.replay} asks for ${want} general probes but the general text has ${pool.length}; using all of them`);
  const picked = o.makeRng((o.seed ^ hash32('\u0000general')) >>> 0).shuffle(pool).slice(0, want);
  return picked.map((prompt, i) => ({ kind: 'probe', id: `general/${i}`, fact_id: SHARED_FACT_ID, role: 'general', split: 'train', prompt, expect: 'unchanged' }));
}
