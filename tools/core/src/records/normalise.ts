/**
 * Input normalisation: published edit datasets (records without a `kind`)
 * become `fact` records. The shapes (schema.ts's ACCEPTED_SHAPES says them to users):
 *   - CounterFact (ROME/MEMIT counterfact.json): `requested_rewrite`;
 *   - zsRE as ROME, MEND and EasyEdit publish it (zsre_mem_*.json,
 *     zsre_mend_eval.json): `subject`, `src`, `alt`, `answers`, `rephrase`,
 *     `loc`, `loc_ans`, optional `portability`;
 *   - EasyEdit's flat edit records (KnowEdit and its examples): `prompt`
 *     (the subject written in), `subject`, `target_new`, `ground_truth`,
 *     `rephrase_prompt`, `locality_prompt`, `locality_ground_truth`,
 *     optional `portability`.
 * The extra prompts are kept under `fact.prompts` and `fact.locality` so
 * probe-gen can use them; `portability` is kept as it came.
 */
import { createHash } from 'node:crypto';
import { InputError, describeType } from './errors.js';
import { checkFields, type Fact, type FieldSpec, type FieldType } from './schema.js';

const str: FieldType = { t: 'string' };
const num: FieldType = { t: 'number' };
const strList: FieldType = { t: 'list', of: str };
const req = (name: string, type: FieldType): FieldSpec => ({ name, type, required: true });
const opt = (name: string, type: FieldType): FieldSpec => ({ name, type, required: false });

// CounterFact (ROME/MEMIT `counterfact.json`).
const COUNTERFACT: FieldSpec[] = [
  req('case_id', num),
  req('requested_rewrite', {
    t: 'struct',
    fields: [
      req('prompt', str),
      req('subject', str),
      req('target_new', { t: 'struct', fields: [req('str', str)] }),
      req('target_true', { t: 'struct', fields: [req('str', str)] }),
      opt('relation_id', str),
    ],
  }),
  opt('paraphrase_prompts', strList),
  opt('neighborhood_prompts', strList),
  opt('attribute_prompts', strList),
  opt('generation_prompts', strList),
];

// zsRE (MEND/ROME `zsre_mem_*.json`).
const ZSRE: FieldSpec[] = [
  req('subject', str),
  req('src', str),
  req('alt', str),
  opt('answers', strList),
  opt('rephrase', str),
  opt('loc', str),
  opt('loc_ans', str),
];

// EasyEdit flat records; their answers may be one string or a list (see answer()).
const EASYEDIT: FieldSpec[] = [req('prompt', str), req('subject', str)];

export type InputShape = 'counterfact' | 'zsre' | 'easyedit' | null;

/** Which published shape a kind-less object has, if any. */
export function detectShape(v: Record<string, unknown>): InputShape {
  if (v.kind !== undefined) return null;
  if ('requested_rewrite' in v) return 'counterfact';
  if ('src' in v && 'alt' in v && 'subject' in v) return 'zsre';
  if ('prompt' in v && 'subject' in v && 'target_new' in v) return 'easyedit';
  return null;
}

/** A non-empty answer: a string, or the first string of a list (EasyEdit writes both). */
function answer(v: unknown, field: string, required: boolean): string | undefined {
  const a = Array.isArray(v) ? v[0] : v;
  if (a === undefined && !required && (v === undefined || (Array.isArray(v) && v.length === 0))) return undefined;
  if (typeof a !== 'string') throw new InputError(`expected a string or a list of strings, got ${describeType(a)}`, { field: Array.isArray(v) ? `${field}[0]` : field });
  if (a.trim() === '') throw new InputError('expected a non-empty answer, got an empty string', { field: Array.isArray(v) ? `${field}[0]` : field });
  return a;
}

/** Strings of a field that is one string or a list of them. */
function strings(v: unknown, field: string): string[] {
  const list = Array.isArray(v) ? v : [v];
  list.forEach((x, i) => {
    if (typeof x !== 'string') throw new InputError(`expected a string, got ${describeType(x)}`, { field: Array.isArray(v) ? `${field}[${i}]` : field });
  });
  return list as string[];
}

const contentId = (...parts: string[]): string => createHash('sha256').update(parts.join('\n')).digest('hex').slice(0, 12);

/**
 * EasyEdit's flat record. Its `prompt` has the subject written in; the
 * template replaces the subject's first occurrence by `{}` (a prompt that
 * already has `{}` is kept).
 */
export function fromEasyEdit(v: Record<string, unknown>): Fact {
  checkFields(v, EASYEDIT, '');
  const subject = v.subject as string;
  const text = v.prompt as string;
  if (subject.trim() === '') throw new InputError('expected a non-empty subject', { field: 'subject' });
  const target = answer(v.target_new, 'target_new', true)!;
  const prompt = text.includes('{}') ? text : templateFromQuestion(text, subject);
  if (prompt === null) throw new InputError(`expected a prompt containing the subject ${JSON.stringify(subject)}`, { field: 'prompt' });
  const id = typeof v.case_id === 'number' || typeof v.case_id === 'string' ? `easyedit-${String(v.case_id)}` : `easyedit-${contentId(subject, text, target)}`;
  const fact: Fact = { kind: 'fact', id, subject: text.includes('{}') ? subject : text.substr(prompt.indexOf('{}'), subject.length), prompt, target_new: target };
  const truth = answer(v.ground_truth, 'ground_truth', false);
  // EasyEdit writes "<|endoftext|>" when the true answer is unknown.
  if (truth !== undefined && truth !== '<|endoftext|>') fact.target_true = truth;
  fact.op = 'insert';
  fact.source = 'easyedit';
  if (v.rephrase_prompt !== undefined) fact.prompts = { paraphrase: strings(v.rephrase_prompt, 'rephrase_prompt') };
  if (v.locality_prompt !== undefined) {
    const prompts = strings(v.locality_prompt, 'locality_prompt');
    const truths = v.locality_ground_truth === undefined ? [] : Array.isArray(v.locality_ground_truth) && prompts.length > 1 ? v.locality_ground_truth : [v.locality_ground_truth];
    if (truths.length !== prompts.length) throw new InputError(`expected one answer per locality prompt (${prompts.length})`, { field: 'locality_ground_truth' });
    fact.locality = prompts.map((p, i) => ({ prompt: p, target: answer(truths[i], `locality_ground_truth${prompts.length > 1 ? `[${i}]` : ''}`, true)! }));
  }
  if (v.portability !== undefined) fact.portability = v.portability;
  return fact;
}

export function fromCounterFact(v: Record<string, unknown>): Fact {
  checkFields(v, COUNTERFACT, '');
  const rr = v.requested_rewrite as {
    prompt: string;
    subject: string;
    target_new: { str: string };
    target_true: { str: string };
    relation_id?: string;
  };
  if (!rr.prompt.includes('{}')) {
    throw new InputError('expected a template containing "{}" where the subject goes', { field: 'requested_rewrite.prompt' });
  }
  const fact: Fact = {
    kind: 'fact',
    id: `counterfact-${v.case_id as number}`,
    subject: rr.subject,
    prompt: rr.prompt,
    target_new: rr.target_new.str,
    target_true: rr.target_true.str,
  };
  if (rr.relation_id !== undefined) fact.relation = rr.relation_id;
  fact.op = 'insert';
  fact.source = 'counterfact';
  const prompts: NonNullable<Fact['prompts']> = {};
  if (v.paraphrase_prompts) prompts.paraphrase = v.paraphrase_prompts as string[];
  if (v.neighborhood_prompts) prompts.neighborhood = v.neighborhood_prompts as string[];
  if (v.attribute_prompts) prompts.attribute = v.attribute_prompts as string[];
  if (v.generation_prompts) prompts.generation = v.generation_prompts as string[];
  if (Object.keys(prompts).length > 0) fact.prompts = prompts;
  return fact;
}

/**
 * zsRE's `src` is a question that contains the subject ("What university did
 * Watts Humphrey attend?"). The fact's prompt is that question with the
 * subject's first occurrence replaced by `{}` (exact match, else
 * case-insensitive), so substituting the subject gives back `src` exactly.
 * A question that does not contain its subject cannot be templated: that is
 * bad input, reported on field "src".
 */
export function templateFromQuestion(src: string, subject: string): string | null {
  let at = src.indexOf(subject);
  if (at < 0) at = src.toLowerCase().indexOf(subject.toLowerCase());
  if (at < 0 || subject.length === 0) return null;
  return src.slice(0, at) + '{}' + src.slice(at + subject.length);
}

export function fromZsre(v: Record<string, unknown>): Fact {
  checkFields(v, ZSRE, '');
  // Published zsRE files have a few rows with an empty answer (zsRE-MEND's eval file: two).
  if ((v.alt as string).trim() === '') throw new InputError('expected a non-empty answer, got an empty string', { field: 'alt' });
  if ((v.subject as string).trim() === '') throw new InputError('expected a non-empty subject', { field: 'subject' });
  const subject = v.subject as string;
  const src = v.src as string;
  const prompt = templateFromQuestion(src, subject);
  if (prompt === null) {
    throw new InputError(`expected a question containing the subject ${JSON.stringify(subject)}`, { field: 'src' });
  }
  // The subject is substituted back exactly as the question spelled it.
  const spelled = src.substr(prompt.indexOf('{}'), subject.length);
  // zsRE has no ids: derive one from the content, so the same question gets
  // the same id whichever file or position it comes from.
  const id = createHash('sha256').update(`${subject}\n${src}\n${v.alt as string}`).digest('hex').slice(0, 12);
  const fact: Fact = {
    kind: 'fact',
    id: `zsre-${id}`,
    subject: spelled,
    prompt,
    target_new: v.alt as string,
  };
  const answers = v.answers as string[] | undefined;
  if (answers && answers.length > 0 && answers[0].trim() !== '') fact.target_true = answers[0];
  fact.op = 'insert';
  fact.source = 'zsre';
  if (typeof v.rephrase === 'string') fact.prompts = { paraphrase: [v.rephrase] };
  if (typeof v.loc === 'string' && typeof v.loc_ans === 'string') {
    fact.locality = [{ prompt: v.loc, target: v.loc_ans }];
  }
  if (v.portability !== undefined) fact.portability = v.portability;
  return fact;
}

/**
 * Normalises one kind-less published record; returns the value unchanged if
 * it has a `kind` or no known shape.
 */
export function normaliseRecord(v: unknown): unknown {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return v;
  const o = v as Record<string, unknown>;
  switch (detectShape(o)) {
    case 'counterfact':
      return fromCounterFact(o);
    case 'zsre':
      return fromZsre(o);
    case 'easyedit':
      return fromEasyEdit(o);
    default:
      return v;
  }
}
