/**
 * Input normalisation: CounterFact and zsRE records (as published, without a
 * `kind`) become `fact` records. The extra prompts are kept under
 * `fact.prompts` and `fact.locality` so probe-gen can use them.
 */
import { createHash } from 'node:crypto';
import { InputError } from './errors.js';
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

export type InputShape = 'counterfact' | 'zsre' | null;

/** Which published shape a kind-less object has, if any. */
export function detectShape(v: Record<string, unknown>): InputShape {
  if (v.kind !== undefined) return null;
  if ('requested_rewrite' in v) return 'counterfact';
  if ('src' in v && 'alt' in v && 'subject' in v) return 'zsre';
  return null;
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
  if (answers && answers.length > 0) fact.target_true = answers[0];
  fact.op = 'insert';
  fact.source = 'zsre';
  if (typeof v.rephrase === 'string') fact.prompts = { paraphrase: [v.rephrase] };
  if (typeof v.loc === 'string' && typeof v.loc_ans === 'string') {
    fact.locality = [{ prompt: v.loc, target: v.loc_ans }];
  }
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
    default:
      return v;
  }
}
