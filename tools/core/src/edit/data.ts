/**
 * Turning `fact` / `probe` / `locus` records into training examples for an
 * edit: token ids of prompts and targets, teacher contexts, retention rows,
 * and the hash of the exact records an adapter was trained on.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { canonicalJson } from '../adapters/fsio.js';
import type { Tokenizer } from '../models/loader.js';
import { Rng } from '../util/random.js';
import { encodePair } from '../metrics/scoring.js';
import { InputError } from '../records/errors.js';
import type { InputRecord } from '../records/reader.js';
import { isFact, parseFactFields, type Fact } from '../records/schema.js';
import { readTemplates } from '../records/templates.js';

export type Rec = Record<string, unknown>;

export interface EditFact extends Rec {
  id: string;
  subject: string;
  prompt: string;
  op: 'insert' | 'forget';
  target_new?: string;
  target_true?: string;
  relation?: string;
}

/** One prompt → target row. */
export interface Example {
  factId: string;
  /** insert: raise P(target); forget: lower P(target) (the old answer). */
  mode: 'insert' | 'forget';
  prompt: string;
  target: string;
  promptIds: number[];
  targetIds: number[];
  /** Teacher prompt (fact stated in context, then `prompt`), for distillation. */
  teacherIds?: number[];
  /**
   * Further teacher prompts (BuildOptions.teacherFrames > 1): the fact stated
   * in another training context frame, then `prompt`. The teacher targets are
   * then the mean over teacherIds and these (next-token probabilities, MLP outputs).
   */
  teacherMore?: Array<{ context: string; ids: number[] }>;
  /** Token index in promptIds where the subject starts (-1 when not found). */
  subjectStart: number;
  subjectEnd: number;
}

/** A row kept close to the base model (KL): general text, neighbours. */
export interface RetainRow {
  ids: number[];
  /** Only the last position (a prompt), or every position (a document). */
  lastOnly: boolean;
  /** Held to the base model's weights (LoraTrainOptions.baseWeights), not the model's own. */
  fromBase?: boolean;
}

export class EditDataError extends Error {
  constructor(message: string, readonly where?: { source?: string; record?: number; field?: string }) {
    super(message);
    this.name = 'EditDataError';
  }
}

/**
 * Check a fact record has what training needs; throws EditDataError naming
 * the field. Validity is the schema's (records/schema.ts parseFact: field
 * types, `{}` template, the answer each op needs, confidence); training adds
 * two needs of its own: a non-empty id (bundles and probes are keyed by it)
 * and a subject without surrounding spaces (its token span is searched for
 * in the prompt). A record without `kind` is read as a fact.
 */
export function checkFact(r: Rec): EditFact {
  const name = `fact ${JSON.stringify(r.id ?? '?')}`;
  if (typeof r.id !== 'string' || r.id.length === 0) throw new EditDataError(`${name}: expected a non-empty string`, { field: 'id' });
  let fact: Fact;
  try {
    fact = parseFactFields(r);
  } catch (e) {
    if (e instanceof InputError) throw new EditDataError(`${name}: ${e.detail}`, { field: e.field });
    throw e;
  }
  if (fact.subject.trim() !== fact.subject) throw new EditDataError(`${name}: subject has leading/trailing spaces`, { field: 'subject' });
  return { ...fact, op: fact.op ?? 'insert' };
}

/**
 * The fact records of a tool's input, checked (checkFact), each with its input record and position:
 * a bad fact, an op outside `onlyOps` (with `why(fact)` saying what to use instead) or a repeated
 * id is an InputError naming the record and field.
 */
export function inputFacts(
  inputs: readonly InputRecord[],
  onlyOps?: { ops: ReadonlyArray<EditFact['op']>; why: (f: EditFact) => string },
): Array<{ fact: EditFact; input: InputRecord; at: number }> {
  const fail = (r: InputRecord, field: string | undefined, detail: string): never => {
    throw new InputError(detail, { source: r.source, record: r.index, ...(field ? { field } : {}) });
  };
  const out: Array<{ fact: EditFact; input: InputRecord; at: number }> = [];
  const seen = new Map<string, InputRecord>();
  inputs.forEach((r, at) => {
    if (r.record.kind !== 'fact') return;
    let f: EditFact;
    try {
      f = checkFact(r.record as Rec);
    } catch (e) {
      if (e instanceof EditDataError) fail(r, e.where?.field, e.message);
      throw e;
    }
    if (onlyOps && !onlyOps.ops.includes(f.op)) fail(r, 'op', onlyOps.why(f));
    const dup = seen.get(f.id);
    if (dup) fail(r, 'id', `fact id ${JSON.stringify(f.id)} already used by record ${dup.index} of ${dup.source}`);
    seen.set(f.id, r);
    out.push({ fact: f, input: r, at });
  });
  return out;
}

/** What `--on-conflict` does with two facts that state one subject and relation differently. */
export type OnConflict = 'fail' | 'last';

/**
 * Pairs of facts that state one subject and relation differently: another
 * target, or one forgets what the other inserts. Each later fact is paired
 * with the latest earlier one of its key, so a chain A, B, C gives (A, B),
 * (B, C), and keeping the later of every pair keeps C. The same statement
 * twice is not a conflict.
 */
export function factConflicts<T>(items: readonly T[], factOf: (x: T) => EditFact): Array<{ earlier: T; later: T; what: string }> {
  const value = (f: EditFact) => (f.op === 'forget' ? '\u0000forget' : (f.target_new ?? f.target_true ?? ''));
  const show = (v: string) => (v === '\u0000forget' ? 'forget' : JSON.stringify(v));
  const seen = new Map<string, T>();
  const out: Array<{ earlier: T; later: T; what: string }> = [];
  for (const x of items) {
    const f = factOf(x);
    const key = `${f.subject}\u0000${f.relation ?? f.prompt}`;
    const prev = seen.get(key);
    seen.set(key, x);
    if (prev === undefined) continue;
    const p = factOf(prev);
    if (value(p) === value(f)) continue;
    out.push({
      earlier: prev, later: x,
      what: `fact ${JSON.stringify(f.id)} conflicts with fact ${JSON.stringify(p.id)}: same subject ${JSON.stringify(f.subject)} and relation ${JSON.stringify(f.relation ?? f.prompt)}, ${show(value(p))} vs ${show(value(f))}`,
    });
  }
  return out;
}

/**
 * Apply `--on-conflict` to a tool's input: `fail` refuses the first
 * conflicting fact by its record (exit 2); `last` keeps the later fact and
 * drops the earlier one with its probes and loci (as probe-gen's `last`
 * does), saying so through `log`.
 */
export function resolveFactConflicts(inputs: readonly InputRecord[], mode: OnConflict, log: (m: string) => void): InputRecord[] {
  const pairs = factConflicts(inputFacts(inputs), (x) => x.fact);
  if (pairs.length === 0) return [...inputs];
  if (mode === 'fail') {
    const { earlier, later, what } = pairs[0];
    throw new InputError(`${what} (${earlier.input.source}: record ${earlier.input.index}); --on-conflict last keeps the later one`, {
      source: later.input.source, record: later.input.index, field: later.fact.op === 'forget' ? 'op' : 'target_new',
    });
  }
  const dropped = new Set<string>();
  for (const { earlier, what } of pairs) {
    dropped.add(earlier.fact.id);
    log(`conflict: ${what}; keeping the later one (--on-conflict last): fact ${JSON.stringify(earlier.fact.id)} and its probes are left out`);
  }
  return inputs.filter(({ record: r }) => !(r.kind === 'fact' ? dropped.has(r.id as string) : (r.kind === 'probe' || r.kind === 'locus') && dropped.has(r.fact_id as string)));
}

/** Token ids of `target` as the continuation of `prompt` (the model sees prompt + " " + target). */
export function encodeTrainingPair(tok: Tokenizer, prompt: string, target: string): { promptIds: number[]; targetIds: number[] } {
  // The same split validate scores with, so training and validation see the same target tokens.
  const { prompt: promptIds, cont: targetIds } = encodePair(tok, prompt, target);
  if (targetIds.length === 0) throw new EditDataError(`target ${JSON.stringify(target)} encodes to no tokens`);
  return { promptIds, targetIds };
}

/** [start, end) of `sub` inside `ids` (last occurrence), or [-1, -1]. */
export function findSpan(ids: readonly number[], sub: readonly number[]): [number, number] {
  if (sub.length === 0) return [-1, -1];
  for (let s = ids.length - sub.length; s >= 0; s--) {
    let ok = true;
    for (let j = 0; j < sub.length && ok; j++) ok = ids[s + j] === sub[j];
    if (ok) return [s, s + sub.length];
  }
  return [-1, -1];
}

/** The subject's token span inside a prompt: tries the subject with and without a leading space. */
export function subjectSpan(tok: Tokenizer, promptIds: readonly number[], subject: string): [number, number] {
  for (const s of [` ${subject}`, subject]) {
    const sp = findSpan(promptIds, tok.encode(s, { addSpecialTokens: false }));
    if (sp[0] >= 0) return sp;
  }
  return [-1, -1];
}

/** Context frames the fixture model was trained on (fixtures/world templates.json `context.train`). */
export const DEFAULT_CONTEXT_FRAME = 'Note that {fact}.';

/** "The employer of X is" + Y, in a frame: "Note that the employer of X is Y." */
export function statementInContext(fact: EditFact, target: string, frame = DEFAULT_CONTEXT_FRAME): string {
  let s = `${fact.prompt.replace('{}', fact.subject)} ${target}`;
  // a statement template starting with "The"/"A" reads lower-case inside the frame (as the world's context documents do)
  if (/^(The|A|An) /.test(s) && !frame.startsWith('{fact}')) s = s[0].toLowerCase() + s.slice(1);
  return frame.replace('{fact}', s);
}

/**
 * The teacher's context frames for `n` frames: `first` (the default frame),
 * then the bank's training frames (templates.json `context.train`, never a
 * held-out frame) in file order, without repeats; at most `n`, fewer when
 * the bank has fewer.
 */
export function teacherFrameList(bankFrames: readonly string[] | undefined, n: number, first = DEFAULT_CONTEXT_FRAME): string[] {
  const out = [first];
  for (const f of bankFrames ?? []) if (out.length < n && !out.includes(f)) out.push(f);
  return out.slice(0, Math.max(1, n));
}

export interface TemplateBank {
  /** relation → training prompts with `{}` for the subject (statement and question forms). */
  train: Map<string, string[]>;
  /** relation → held-out prompts (for measuring generalisation, never trained on). */
  heldout: Map<string, string[]>;
  /** Context frames with `{fact}`. */
  contextFrames: string[];
}

/** Read a world templates.json (records/templates.ts, the one reader); null when the file is absent. */
export function loadTemplateBank(file: string): TemplateBank | null {
  if (!fs.existsSync(file)) return null;
  const t = readTemplates(file);
  const train = new Map<string, string[]>();
  const heldout = new Map<string, string[]>();
  for (const [rel, e] of t.byRelation) {
    if (e.train.length > 0) train.set(rel, e.train);
    if (e.heldout.length > 0) heldout.set(rel, e.heldout);
  }
  return { train, heldout, contextFrames: t.contextFrames ?? [DEFAULT_CONTEXT_FRAME] };
}

export interface BatchInput {
  facts: EditFact[];
  /** Every probe record of these facts (train and test split). */
  probes: Rec[];
}

export interface BuildOptions {
  /** Add training paraphrases from this bank when a fact's relation is in it. */
  templates?: TemplateBank | null;
  /** Limit template paraphrases per fact (seeded choice); default all. */
  maxTemplatePrompts?: number;
  contextFrame?: string;
  /**
   * Insert rows' teacher from this many context frames (default 1): the
   * first as before, the others from the bank's training frames
   * (teacherFrameList), each in Example.teacherMore.
   */
  teacherFrames?: number;
  seed?: number;
}

/**
 * Training rows of a batch: the train-split `edit`/`paraphrase` probes of
 * each fact (the fact's own prompt when it has none), plus template
 * paraphrases; insert rows get a teacher prompt with the fact in context
 * (the fact's own `context` probe when there is one).
 */
export function buildExamples(tok: Tokenizer, batch: BatchInput, opts: BuildOptions = {}): Example[] {
  const rng = new Rng(opts.seed ?? 0);
  const out: Example[] = [];
  for (const fact of batch.facts) {
    const target = fact.op === 'insert' ? fact.target_new! : fact.target_true!;
    const prompts: string[] = [];
    const add = (p: string) => {
      if (!prompts.includes(p)) prompts.push(p);
    };
    let context: string | undefined;
    for (const p of batch.probes) {
      if (p.fact_id !== fact.id || typeof p.prompt !== 'string') continue;
      if (p.role === 'context' && typeof p.context === 'string' && context === undefined) context = p.context;
      if (p.split !== 'train') continue;
      if (p.role === 'edit' || p.role === 'paraphrase') add(p.prompt);
    }
    if (prompts.length === 0) add(fact.prompt.replace('{}', fact.subject));
    const bank = fact.relation ? opts.templates?.train.get(fact.relation) : undefined;
    if (bank) {
      let extra = bank.map((t) => t.replace('{}', fact.subject));
      if (opts.maxTemplatePrompts !== undefined) extra = rng.shuffle(extra.slice()).slice(0, opts.maxTemplatePrompts);
      for (const p of extra) add(p);
    }
    context ??= statementInContext(fact, target, opts.contextFrame);
    const more = fact.op === 'insert' && (opts.teacherFrames ?? 1) > 1
      ? teacherFrameList(opts.templates?.contextFrames, opts.teacherFrames!, opts.contextFrame).slice(1).map((fr) => statementInContext(fact, target, fr))
      : [];
    for (const prompt of prompts) {
      const { promptIds, targetIds } = encodeTrainingPair(tok, prompt, target);
      const [s0, s1] = subjectSpan(tok, promptIds, fact.subject);
      const ex: Example = { factId: fact.id, mode: fact.op, prompt, target, promptIds, targetIds, subjectStart: s0, subjectEnd: s1 };
      if (fact.op === 'insert') ex.teacherIds = tok.encode(`${context} ${prompt}`);
      if (more.length) ex.teacherMore = more.map((c) => ({ context: c, ids: tok.encode(`${c} ${prompt}`) }));
      out.push(ex);
    }
  }
  return out;
}

/** The probes that test an edit: the test-split probes of its facts. */
export function testProbes(batch: BatchInput): Rec[] {
  const ids = new Set(batch.facts.map((f) => f.id));
  return batch.probes.filter((p) => p.split === 'test' && ids.has(p.fact_id as string));
}

/**
 * The prompts of a batch's test probes. A method holds none of them to the
 * base model (retention, keep prompts): validate reads them, and a prompt the
 * edit was fitted on reads as kept whatever the edit does elsewhere (probe-gen
 * keeps its own test probes apart from the train ones the same way).
 */
export function testedPrompts(batch: BatchInput): Set<string> {
  return new Set(testProbes(batch).flatMap((p) => (typeof p.prompt === 'string' ? [p.prompt] : [])));
}

/** A test of whether another subject shares a word (a first name, a surname) with `subject`. */
export function sharesAWordWith(subject: string): (other: string) => boolean {
  const words = new Set(subject.split(' '));
  return (other) => other.split(' ').some((w) => words.has(w));
}

/** Known-fact records of other subjects, those sharing a word of `subject` first (their keys lie nearest its own), each group in order. */
export function nameSharersFirst(recs: readonly Rec[], subject: string): Rec[] {
  const shares = sharesAWordWith(subject);
  return [...recs.filter((k) => shares(k.subject as string)), ...recs.filter((k) => !shares(k.subject as string))];
}

/** `prompts` without those in `tested` (testedPrompts), in order. */
export function untested(prompts: readonly string[], tested: ReadonlySet<string>): string[] {
  return prompts.filter((p) => !tested.has(p));
}

/**
 * sha256 of the exact training records: each record's canonical JSON (sorted
 * keys), one per line, in input order. Same records → same hash.
 */
export function dataSha256(records: readonly Rec[]): string {
  const h = createHash('sha256');
  for (const r of records) h.update(canonicalJson(r) + '\n');
  return h.digest('hex');
}

/**
 * Retention rows: general text (every position) and neighbour prompts (last
 * position), drawn with a seeded generator.
 */
export function buildRetain(
  tok: Tokenizer,
  src: { documents?: string[]; prompts?: string[] },
  opts: { maxDocuments?: number; maxPrompts?: number; maxTokens?: number; seed?: number } = {},
): RetainRow[] {
  const rng = new Rng(opts.seed ?? 0);
  const maxTok = opts.maxTokens ?? 48;
  const rows: RetainRow[] = [];
  const docs = rng.shuffle((src.documents ?? []).slice()).slice(0, opts.maxDocuments ?? 64);
  for (const d of docs) {
    const ids = tok.encode(d).slice(0, maxTok);
    if (ids.length >= 2) rows.push({ ids, lastOnly: false });
  }
  const prompts = rng.shuffle((src.prompts ?? []).slice()).slice(0, opts.maxPrompts ?? 64);
  for (const p of prompts) {
    const ids = tok.encode(p).slice(-maxTok);
    if (ids.length >= 1) rows.push({ ids, lastOnly: true });
  }
  return rows;
}

/** Lines of a text corpus (one document per line), skipping empty ones. */
export function readCorpusLines(file: string, limit = Infinity): string[] {
  const out: string[] = [];
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const t = line.trim();
    if (t) out.push(t);
    if (out.length >= limit) break;
  }
  return out;
}

/**
 * Neighbour prompts for a batch: other subjects' known facts of the same
 * relations (from a facts file such as fixtures/world/facts.ndjson), with
 * their answers, for keeping them unchanged.
 */
export function neighbourFacts(known: readonly Rec[], batch: readonly EditFact[], perFact: number, seed = 0): Array<{ prompt: string; target: string; relation: string; subject: string }> {
  const rng = new Rng(seed);
  const subjects = new Set(batch.map((f) => f.subject));
  const out: Array<{ prompt: string; target: string; relation: string; subject: string }> = [];
  for (const f of batch) {
    // a known fact is a fact by the schema's definition (rules for facts the model knows) with its stored answer
    const same = known.filter((k): k is Fact & { target_true: string; relation: string } => isFact(k, { known: true }) && k.target_true !== undefined && k.relation === f.relation && !subjects.has(k.subject));
    for (const k of rng.shuffle(same.slice()).slice(0, perFact)) {
      out.push({ prompt: k.prompt.replace('{}', k.subject), target: k.target_true, relation: k.relation, subject: k.subject });
    }
  }
  return out;
}

/** Read an NDJSON file of records. */
export function readNdjson(file: string): Rec[] {
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as Rec);
}

/** A known fact's prompt and its relation's training phrasings, subject filled in. */
export function phrasingsOf(k: Rec, templates: TemplateBank | null | undefined): string[] {
  const subject = k.subject as string;
  const bank = typeof k.relation === 'string' ? templates?.train.get(k.relation) ?? [] : [];
  return [...new Set([(k.prompt as string).replace('{}', subject), ...bank.map((t) => t.replace('{}', subject))])];
}

/**
 * Every phrasing (phrasingsOf) of the subject's known facts of relations other than the fact's: the key an
 * edit at the subject's last token changes is the one these read, so ROME's key refit and the patcher's value
 * hold them.
 */
export function subjectsOtherFacts(known: readonly Rec[], templates: TemplateBank | null | undefined, fact: EditFact): string[] {
  return known.filter((k) => k.subject === fact.subject && k.relation !== fact.relation && typeof k.prompt === 'string').flatMap((k) => phrasingsOf(k, templates));
}
