/**
 * The record kinds of DESIGN.md: TypeScript types, and one declarative
 * description per kind that drives both the input validator and the Arrow
 * column mapping (arrow.ts), so the two cannot drift apart.
 *
 * Validation is open: extra fields are allowed (and preserved), only the
 * declared ones are checked. Records whose `kind` is not listed here pass
 * through untouched.
 */
import { InputError, describeType } from './errors.js';

// ---------------------------------------------------------------- types

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
/** Any record: an object with a string `kind`. */
export interface AnyRecord {
  kind: string;
  [k: string]: unknown;
}

export type FactOp = 'insert' | 'forget';
export interface Fact {
  kind: 'fact';
  id: string;
  subject: string;
  /** Prompt template with `{}` where the subject goes. */
  prompt: string;
  target_new?: string;
  target_true?: string;
  relation?: string;
  op?: FactOp;
  source?: string;
  author?: string;
  confidence?: number;
  /** Extra prompts kept from CounterFact / zsRE for probe-gen. */
  prompts?: { paraphrase?: string[]; neighborhood?: string[]; attribute?: string[]; generation?: string[] };
  /** Unrelated prompts whose answers must not move (zsRE `loc`/`loc_ans`). */
  locality?: Array<{ prompt: string; target: string }>;
  [k: string]: unknown;
}

export type ProbeRole = 'edit' | 'paraphrase' | 'neighborhood' | 'counterfactual' | 'generation' | 'context' | 'general';
export type ProbeExpect = 'new' | 'true' | 'unchanged' | 'abstain';
export interface Probe {
  kind: 'probe';
  id?: string;
  fact_id: string;
  role: ProbeRole;
  split: 'train' | 'test';
  prompt: string;
  target?: string;
  expect: ProbeExpect;
  [k: string]: unknown;
}

export interface Locus {
  kind: 'locus';
  fact_id: string;
  site: string;
  layer: number;
  module?: string;
  expert?: number;
  method: string;
  score: number;
  rank?: number;
  [k: string]: unknown;
}

export interface Adapter {
  kind: 'adapter';
  id: string;
  version: number;
  path: string;
  method: string;
  base_model: { name: string; sha256: string };
  targets: string[];
  rank: number;
  fact_ids: string[];
  data_sha256?: string;
  parents?: string[];
  created_at: string;
  [k: string]: unknown;
}

export interface Report {
  kind: 'report';
  adapter_id: string;
  metrics: Record<string, number>;
  thresholds?: Record<string, number>;
  pass: boolean;
  failures: string[];
  [k: string]: unknown;
}

export interface Route {
  kind: 'route';
  fact_id?: string;
  probe_id?: string;
  token_index: number;
  token?: string;
  layer: number;
  /** Expert indices chosen by the router, best first. */
  experts: number[];
  /** Router probabilities over all experts: a float32 tensor. */
  weights: number[];
  [k: string]: unknown;
}

export type KnownRecord = Fact | Probe | Locus | Adapter | Report | Route;

// ---------------------------------------------------------------- descriptors

/** Field types. `tensor` is a float32 vector (FixedSizeList<Float32> in Arrow). */
export type FieldType =
  | { t: 'string' }
  | { t: 'number' }
  | { t: 'boolean' }
  | { t: 'enum'; values: readonly string[] }
  | { t: 'list'; of: FieldType }
  | { t: 'struct'; fields: FieldSpec[] }
  | { t: 'map'; of: FieldType }
  | { t: 'tensor' };

export interface FieldSpec {
  name: string;
  type: FieldType;
  required: boolean;
}

const str: FieldType = { t: 'string' };
const num: FieldType = { t: 'number' };
const bool: FieldType = { t: 'boolean' };
const strList: FieldType = { t: 'list', of: str };
const req = (name: string, type: FieldType): FieldSpec => ({ name, type, required: true });
const opt = (name: string, type: FieldType): FieldSpec => ({ name, type, required: false });
const en = (...values: string[]): FieldType => ({ t: 'enum', values });

export const PROBE_ROLES: readonly ProbeRole[] = ['edit', 'paraphrase', 'neighborhood', 'counterfactual', 'generation', 'context', 'general'];
export const PROBE_EXPECTS: readonly ProbeExpect[] = ['new', 'true', 'unchanged', 'abstain'];

/** Declared fields of each kind, in output order (after `kind`). */
export const KIND_FIELDS: Readonly<Record<KnownRecord['kind'], FieldSpec[]>> = {
  fact: [
    req('id', str),
    req('subject', str),
    req('prompt', str),
    opt('target_new', str),
    opt('target_true', str),
    opt('relation', str),
    opt('op', en('insert', 'forget')),
    opt('source', str),
    opt('author', str),
    opt('confidence', num),
    opt('prompts', {
      t: 'struct',
      fields: [opt('paraphrase', strList), opt('neighborhood', strList), opt('attribute', strList), opt('generation', strList)],
    }),
    opt('locality', { t: 'list', of: { t: 'struct', fields: [req('prompt', str), req('target', str)] } }),
  ],
  probe: [
    opt('id', str),
    req('fact_id', str),
    req('role', en(...PROBE_ROLES)),
    req('split', en('train', 'test')),
    req('prompt', str),
    opt('target', str),
    req('expect', en(...PROBE_EXPECTS)),
  ],
  locus: [
    req('fact_id', str),
    req('site', str),
    req('layer', num),
    opt('module', str),
    opt('expert', num),
    req('method', str),
    req('score', num),
    opt('rank', num),
  ],
  adapter: [
    req('id', str),
    req('version', num),
    req('path', str),
    req('method', str),
    req('base_model', { t: 'struct', fields: [req('name', str), req('sha256', str)] }),
    req('targets', strList),
    req('rank', num),
    req('fact_ids', strList),
    opt('data_sha256', str),
    opt('parents', strList),
    req('created_at', str),
  ],
  report: [
    req('adapter_id', str),
    req('metrics', { t: 'map', of: num }),
    opt('thresholds', { t: 'map', of: num }),
    req('pass', bool),
    req('failures', strList),
  ],
  route: [
    opt('fact_id', str),
    opt('probe_id', str),
    req('token_index', num),
    opt('token', str),
    req('layer', num),
    req('experts', { t: 'list', of: num }),
    req('weights', { t: 'tensor' }),
  ],
};

export const KNOWN_KINDS = Object.keys(KIND_FIELDS) as Array<KnownRecord['kind']>;

export function isKnownKind(kind: string): kind is KnownRecord['kind'] {
  return Object.prototype.hasOwnProperty.call(KIND_FIELDS, kind);
}

// ---------------------------------------------------------------- validation

function describeExpected(type: FieldType): string {
  switch (type.t) {
    case 'enum':
      return `one of ${type.values.map((v) => JSON.stringify(v)).join(', ')}`;
    case 'list':
      return `array of ${describeExpected(type.of)}`;
    case 'struct':
      return 'object';
    case 'map':
      return `object of ${describeExpected(type.of)}`;
    case 'tensor':
      return 'array of numbers';
    case 'number':
      return 'finite number';
    default:
      return type.t;
  }
}

function fail(path: string, type: FieldType, got: unknown): never {
  const gotText = type.t === 'enum' && typeof got === 'string' ? JSON.stringify(got) : describeType(got);
  throw new InputError(`expected ${describeExpected(type)}, got ${gotText}`, { field: path });
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function checkValue(v: unknown, type: FieldType, path: string): void {
  switch (type.t) {
    case 'string':
      if (typeof v !== 'string') fail(path, type, v);
      return;
    case 'number':
      if (typeof v !== 'number' || !Number.isFinite(v)) fail(path, type, v);
      return;
    case 'boolean':
      if (typeof v !== 'boolean') fail(path, type, v);
      return;
    case 'enum':
      if (typeof v !== 'string' || !type.values.includes(v)) fail(path, type, v);
      return;
    case 'tensor':
      if (!Array.isArray(v)) fail(path, type, v);
      for (let i = 0; i < v.length; i++) {
        if (typeof v[i] !== 'number') fail(`${path}[${i}]`, { t: 'number' }, v[i]);
      }
      return;
    case 'list':
      if (!Array.isArray(v)) fail(path, type, v);
      for (let i = 0; i < v.length; i++) checkValue(v[i], type.of, `${path}[${i}]`);
      return;
    case 'map':
      if (!isPlainObject(v)) fail(path, type, v);
      for (const k of Object.keys(v)) checkValue(v[k], type.of, `${path}.${k}`);
      return;
    case 'struct':
      if (!isPlainObject(v)) fail(path, type, v);
      checkFields(v, type.fields, `${path}.`);
      return;
  }
}

export function checkFields(obj: Record<string, unknown>, fields: FieldSpec[], prefix: string): void {
  for (const f of fields) {
    const v = obj[f.name];
    if (v === undefined) {
      if (f.required) throw new InputError(`missing required field (expected ${describeExpected(f.type)})`, { field: prefix + f.name });
      continue;
    }
    checkValue(v, f.type, prefix + f.name);
  }
}

/** The record shapes read as input, for messages about records of no known shape. */
export const ACCEPTED_SHAPES =
  'a catechism record (with "kind": fact, probe, locus, adapter, report, route, …), ' +
  'CounterFact ("case_id", "requested_rewrite"), ' +
  'zsRE as ROME/MEND/EasyEdit publish it ("subject", "src", "alt", "answers", "rephrase", "loc", "loc_ans"), ' +
  'or EasyEdit\'s flat edit ("prompt", "subject", "target_new", "ground_truth", "rephrase_prompt", "locality_prompt", "locality_ground_truth")';

/**
 * Validates one record. Throws InputError naming the field path and what was
 * expected; the caller adds the source and record number. Returns the record
 * typed as AnyRecord. Unknown kinds are only checked for a string `kind`.
 */
export function validateRecord(value: unknown): AnyRecord {
  if (!isPlainObject(value)) {
    throw new InputError(`expected a JSON object, got ${describeType(value)}`);
  }
  const kind = value.kind;
  if (typeof kind !== 'string') {
    if (kind === undefined) throw new InputError(`missing required field (expected string); a record of no known shape: accepted are ${ACCEPTED_SHAPES}`, { field: 'kind' });
    throw new InputError(`expected string, got ${describeType(kind)}`, { field: 'kind' });
  }
  if (isKnownKind(kind)) {
    checkFields(value, KIND_FIELDS[kind], '');
    if (kind === 'fact') checkFact(value as Fact);
  }
  return value as AnyRecord;
}

// ---------------------------------------------------------------- facts: the one definition

/** How strict parseFact is about answers. */
export interface FactRules {
  /**
   * A fact the model already knows (the world's facts.ndjson, --kb, attrib's
   * traced facts): `target_true` alone is enough for op "insert". Default
   * false: an insert needs `target_new`.
   */
  known?: boolean;
}

/**
 * The one definition of a valid fact: the declared field types (KIND_FIELDS.fact)
 * and the rules across fields (non-empty subject and answers, a `{}` template,
 * the answer each op needs, confidence in [0, 1]). Throws InputError naming
 * the field; the caller adds the input and record number. Returns the value
 * typed as Fact (the same object: extra fields kept).
 */
export function parseFact(value: unknown, rules: FactRules = {}): Fact {
  if (!isPlainObject(value)) throw new InputError(`expected a JSON object, got ${describeType(value)}`);
  if (value.kind !== 'fact') throw new InputError(`expected "fact", got ${typeof value.kind === 'string' ? JSON.stringify(value.kind) : describeType(value.kind)}`, { field: 'kind' });
  checkFields(value, KIND_FIELDS.fact, '');
  checkFact(value as Fact, rules);
  return value as Fact;
}

/** Whether `value` is a valid fact (parseFact without the error). */
export function isFact(value: unknown, rules: FactRules = {}): value is Fact {
  try {
    parseFact(value, rules);
    return true;
  } catch (e) {
    if (e instanceof InputError) return false;
    throw e;
  }
}

/** Rules that span fields of a fact. */
function checkFact(f: Fact, rules: FactRules = {}): void {
  // An empty subject or answer would train and score nothing (zsRE-MEND has rows with an empty alt).
  if (f.subject.trim() === '') throw new InputError('expected a non-empty subject', { field: 'subject' });
  for (const k of ['target_new', 'target_true'] as const) {
    if (f[k] !== undefined && f[k]!.trim() === '') throw new InputError('expected a non-empty answer, got an empty string', { field: k });
  }
  if (!f.prompt.includes('{}')) {
    throw new InputError('expected a template containing "{}" where the subject goes', { field: 'prompt' });
  }
  const op = f.op ?? 'insert';
  if (op === 'insert' && f.target_new === undefined && !(rules.known && f.target_true !== undefined)) {
    throw new InputError(`missing required field for op "insert" (expected string${rules.known ? '; or target_true for a fact the model knows' : ''})`, { field: 'target_new' });
  }
  if (op === 'forget' && f.target_true === undefined) {
    throw new InputError('missing required field for op "forget" (expected string)', { field: 'target_true' });
  }
  if (f.confidence !== undefined && (f.confidence < 0 || f.confidence > 1)) {
    throw new InputError(`expected a number in [0, 1], got ${f.confidence}`, { field: 'confidence' });
  }
}
