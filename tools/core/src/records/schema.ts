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
  /** Governance: `high` needs approval to be promoted (the registry also raises forget ops and facts about people to high). */
  risk?: 'low' | 'high';
  /** What the subject is (`person` makes the fact high risk). */
  subject_type?: string;
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

/**
 * One labelled example of a concept (lora-train --method leace erases it):
 * `prompt` is read at its last token, `label` is its class. `concept` names
 * the concept (one eraser per concept); `split` test examples are held out
 * from the fit (validate's linear probe reads them). E.g. the facts of the
 * world's relations, concept "relation", label the relation's name.
 */
export interface Concept {
  kind: 'concept';
  concept: string;
  prompt: string;
  label: string;
  id?: string;
  split?: 'train' | 'test';
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

// The kinds adapter-merge writes about the registry and its bundles. A tool
// reading a stream that holds them checks them like the kinds above and
// passes them through.

export type RefAction = 'promote' | 'rollback' | 'force';
/** One line of a ref's history. `chain` = sha256(previous chain + canonical JSON of this event without `chain`). */
export interface RefEvent {
  kind: 'ref_event';
  ref: string;
  /** 1-based position in the ref's history. */
  version: number;
  action: RefAction;
  /** Content hash of the bundle the ref points to from this event on. */
  bundle: string;
  adapter_id: string;
  adapter_version: number;
  /** Bundle the ref pointed to before (null for the first event). */
  previous: string | null;
  /** For rollbacks: the history version whose bundle was restored. */
  to_version?: number;
  /** For forced promotions: why the gate would have refused. */
  forced_over?: string;
  /** For gated promotions: `report_sha256` of the passing report the gate let through. */
  report?: string;
  /** Promotions: the adapter's risk as the registry computed it from its facts. */
  risk?: 'low' | 'high';
  /** Promotions that needed approvals: the ids (sha256 of the signature) of the approvals they were let through on. */
  approvals?: string[];
  /** Rollbacks the drift watch made, with the figures and failures that triggered them. */
  automatic?: boolean;
  figures?: Record<string, number>;
  failures?: string[];
  when: string;
  why: string | null;
  who: string;
  chain: string;
  [k: string]: unknown;
}

/** A signed approval of a bundle (with the report it was judged by) for promotion to a ref. */
export interface ApprovalRecord {
  kind: 'approval';
  ref: string;
  bundle: string;
  adapter_id: string;
  adapter_version: number;
  /** report_sha256 of the report the gate judges the bundle by (null: none counts, a forced promotion). */
  report: string | null;
  approver: string;
  key_id: string;
  public_key: string;
  when: string;
  note: string | null;
  /** base64 ed25519 signature of the registry's signedPayload(). */
  signature: string;
  /** sha256(previous approval's chain + canonical JSON of this line without chain). */
  chain?: string;
  [k: string]: unknown;
}

/** A canary run: a candidate against a ref's live bundle on logged traffic. */
export interface CanaryReport {
  kind: 'canary';
  ref: string;
  bundle: string;
  adapter_id: string;
  live: string | null;
  metrics: Record<string, number>;
  thresholds: Record<string, number>;
  pass: boolean;
  failures: string[];
  [k: string]: unknown;
}

/** One drift-watch measurement of a ref's current version. */
export interface WatchFigures {
  kind: 'watch';
  ref: string;
  version: number;
  bundle: string;
  adapter_id: string;
  metrics: Record<string, number>;
  pass: boolean;
  failures: string[];
  /** Set when this measurement made the watch roll back: the version restored. */
  rolled_back_to?: number | null;
  [k: string]: unknown;
}

/** `adapter-merge history`: one metric of one version of a ref. */
export interface HistoryPoint {
  kind: 'history_point';
  ref: string;
  version: number;
  bundle: string;
  adapter_id: string;
  source: 'validation' | 'watch';
  when: string;
  metric: string;
  value: number;
  pass: boolean;
  [k: string]: unknown;
}

/** `adapter-merge add-approver`: an approver as listed in the registry's config. */
export interface ApproverRecord {
  kind: 'approver';
  name: string;
  namespace: string | null;
  public_key: string;
  key_id: string;
  [k: string]: unknown;
}

/** `adapter-merge protect`: how many approvals a ref now needs. */
export interface Protection {
  kind: 'protection';
  ref: string;
  approvals: number;
  [k: string]: unknown;
}

/** `adapter-merge keygen`: where the new key pair was written. */
export interface ApproverKey {
  kind: 'approver_key';
  key_id: string;
  private_key_file: string;
  public_key_file: string;
  [k: string]: unknown;
}

export interface VerifyProblem {
  /** `object`, `ref`, `reports`, `layout`. */
  area: string;
  /** The object hash, ref name or file concerned. */
  target: string;
  problem: string;
}

/** `adapter-merge verify`'s result. */
export interface RegistryVerify {
  kind: 'registry_verify';
  registry: string;
  ok: boolean;
  objects: number;
  refs: number;
  reports: number;
  problems: VerifyProblem[];
  /** Harmless leftovers (interrupted writes' temporaries, a lock held now). */
  notes: string[];
  [k: string]: unknown;
}

/** What the model answers, and its log-probability of the asked answer (null: -Infinity, which JSON cannot hold). */
export interface ExplainAnswer {
  top1: string;
  logprob: number | null;
}

/** One parent of an explained bundle, and what removing it changes. */
export interface ExplainContribution {
  id: string;
  version: number | null;
  sha256: string;
  method: string | null;
  weight: number;
  fact_ids: string[];
  facts: Record<string, unknown>[];
  source: string | null;
  author: string | null;
  data_sha256: string | null;
  created_at: string | null;
  ablation: string;
  ablated: ExplainAnswer | null;
  delta_logprob: number | null;
  top1_changes: boolean | null;
}

/** `adapter-merge explain`: which parents of a ref's bundle an answer went through. */
export interface Explain {
  kind: 'explain';
  ref: string;
  bundle: string;
  adapter_id: string;
  adapter_version: number;
  method: string;
  prompt: string;
  answer: string;
  base: ExplainAnswer;
  adapted: ExplainAnswer;
  contributions: ExplainContribution[];
  [k: string]: unknown;
}

/** `adapter-merge export`: a ref's bundle folded into a copy of the base model. */
export interface Export {
  kind: 'export';
  ref: string;
  bundle: string;
  adapter_id: string;
  adapter_version: number;
  /** The base model's directory. */
  base_model: string;
  /** The written model directory. */
  path: string;
  files: string[];
  [k: string]: unknown;
}

/** An adapter named in a consolidation summary. */
export interface ConsolidatedAdapter {
  id: string;
  version: number;
  sha256: string;
  /** Quarantined adapters: why. */
  reason?: string;
}

/** `adapter-merge consolidate`: what one nightly run promoted and quarantined. */
export interface Consolidation {
  kind: 'consolidation';
  ref: string;
  inbox: string;
  pending_files: string[];
  promoted: { bundle: string; version: number; id: string } | null;
  accepted: ConsolidatedAdapter[];
  quarantined: ConsolidatedAdapter[];
  quarantine_file: string | null;
  validations: number;
  [k: string]: unknown;
}

export type KnownRecord = Fact | Probe | Locus | Concept | Adapter | Report | Route | RefEvent | RegistryVerify | Explain | Export | Consolidation | ApprovalRecord | CanaryReport | WatchFigures | HistoryPoint | ApproverRecord | Protection | ApproverKey;
/** Each known kind's record type, by kind. */
export type RecordOf<K extends KnownRecord['kind']> = Extract<KnownRecord, { kind: K }>;

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
  /** JSON null is allowed too (Arrow carries a null in `extra`). */
  nullable?: boolean;
}

const str: FieldType = { t: 'string' };
const num: FieldType = { t: 'number' };
const bool: FieldType = { t: 'boolean' };
const strList: FieldType = { t: 'list', of: str };
const req = (name: string, type: FieldType): FieldSpec => ({ name, type, required: true });
const opt = (name: string, type: FieldType): FieldSpec => ({ name, type, required: false });
const en = (...values: string[]): FieldType => ({ t: 'enum', values });
/** Required, but may be null. */
const reqNull = (name: string, type: FieldType): FieldSpec => ({ name, type, required: true, nullable: true });
const struct = (...fields: FieldSpec[]): FieldType => ({ t: 'struct', fields });
const answer = struct(req('top1', str), reqNull('logprob', num));
const explainApprovals: FieldType = { t: 'list', of: struct(req('ref', str), req('approver', str), req('key_id', str), req('when', str), reqNull('note', str), req('signature_ok', bool)) };
const adapterRef = (...more: FieldSpec[]): FieldType => ({ t: 'list', of: struct(req('id', str), req('version', num), req('sha256', str), ...more) });

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
    // `risk` and `subject_type` travel in Arrow's `extra` (typed columns would cost every fact stream); the registry reads them (governance.ts)
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
  concept: [
    req('concept', str),
    req('prompt', str),
    req('label', str),
    opt('id', str),
    opt('split', en('train', 'test')),
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
  ref_event: [
    req('ref', str),
    req('version', num),
    req('action', en('promote', 'rollback', 'force')),
    req('bundle', str),
    req('adapter_id', str),
    req('adapter_version', num),
    reqNull('previous', str),
    opt('to_version', num),
    opt('forced_over', str),
    opt('report', str),
    opt('risk', en('low', 'high')),
    opt('approvals', strList),
    opt('automatic', bool),
    opt('figures', { t: 'map', of: num }),
    opt('failures', strList),
    req('when', str),
    reqNull('why', str),
    req('who', str),
    req('chain', str),
  ],
  approval: [
    req('ref', str),
    req('bundle', str),
    req('adapter_id', str),
    req('adapter_version', num),
    reqNull('report', str),
    req('approver', str),
    req('key_id', str),
    req('public_key', str),
    req('when', str),
    reqNull('note', str),
    req('signature', str),
    opt('chain', str),
  ],
  canary: [
    req('ref', str),
    req('bundle', str),
    req('adapter_id', str),
    reqNull('live', str),
    req('metrics', { t: 'map', of: num }),
    req('thresholds', { t: 'map', of: num }),
    req('pass', bool),
    req('failures', strList),
  ],
  watch: [
    req('ref', str),
    req('version', num),
    req('bundle', str),
    req('adapter_id', str),
    req('metrics', { t: 'map', of: num }),
    req('pass', bool),
    req('failures', strList),
    { ...opt('rolled_back_to', num), nullable: true },
  ],
  history_point: [
    req('ref', str),
    req('version', num),
    req('bundle', str),
    req('adapter_id', str),
    req('source', en('validation', 'watch')),
    req('when', str),
    req('metric', str),
    req('value', num),
    req('pass', bool),
  ],
  approver: [req('name', str), reqNull('namespace', str), req('public_key', str), req('key_id', str)],
  protection: [req('ref', str), req('approvals', num)],
  approver_key: [req('key_id', str), req('private_key_file', str), req('public_key_file', str)],
  registry_verify: [
    req('registry', str),
    req('ok', bool),
    req('objects', num),
    req('refs', num),
    req('reports', num),
    req('problems', { t: 'list', of: struct(req('area', str), req('target', str), req('problem', str)) }),
    req('notes', strList),
  ],
  explain: [
    req('ref', str),
    req('bundle', str),
    req('adapter_id', str),
    req('adapter_version', num),
    req('method', str),
    req('prompt', str),
    req('answer', str),
    req('base', answer),
    req('adapted', answer),
    req('contributions', {
      t: 'list',
      of: struct(
        req('id', str),
        reqNull('version', num),
        req('sha256', str),
        reqNull('method', str),
        req('weight', num),
        req('fact_ids', strList),
        reqNull('source', str),
        reqNull('author', str),
        reqNull('data_sha256', str),
        reqNull('created_at', str),
        req('ablation', str),
        { ...req('ablated', answer), nullable: true },
        reqNull('delta_logprob', num),
        reqNull('top1_changes', bool),
        opt('approvals', explainApprovals),
      ),
    }),
    opt('approvals', explainApprovals),
    opt('experts', { t: 'list', of: struct(req('layer', num), req('base', { t: 'list', of: num }), req('adapted', { t: 'list', of: num }), req('changed', bool)) }),
  ],
  export: [
    req('ref', str),
    req('bundle', str),
    req('adapter_id', str),
    req('adapter_version', num),
    req('base_model', str),
    req('path', str),
    req('files', strList),
  ],
  consolidation: [
    req('ref', str),
    req('inbox', str),
    req('pending_files', strList),
    { ...req('promoted', struct(req('bundle', str), req('version', num), req('id', str))), nullable: true },
    req('accepted', adapterRef()),
    req('quarantined', adapterRef(req('reason', str))),
    reqNull('quarantine_file', str),
    req('validations', num),
  ],
};

export const KNOWN_KINDS = Object.keys(KIND_FIELDS) as Array<KnownRecord['kind']>;

export function isKnownKind(kind: string): kind is KnownRecord['kind'] {
  return Object.prototype.hasOwnProperty.call(KIND_FIELDS, kind);
}

/**
 * The kinds that get their own typed struct in an Arrow stream (arrow.ts):
 * the data kinds the pipeline carries in bulk. The registry's and merge's
 * kinds (ref_event, registry_verify, explain, export, consolidation) are
 * checked on input like the rest but travel in Arrow's `extra` JSON column:
 * typed columns for them would add their (deeply nested) layout to every
 * stream's schema and batches.
 */
export type ArrowKind = 'fact' | 'probe' | 'locus' | 'adapter' | 'report' | 'route';
export const ARROW_KINDS: readonly ArrowKind[] = ['fact', 'probe', 'locus', 'adapter', 'report', 'route'];

export function isArrowKind(kind: string): kind is ArrowKind {
  return (ARROW_KINDS as readonly string[]).includes(kind);
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
      if (f.required) throw new InputError(`missing required field (expected ${describeExpected(f.type)}${f.nullable ? ' or null' : ''})`, { field: prefix + f.name });
      continue;
    }
    if (v === null && f.nullable) continue;
    checkValue(v, f.type, prefix + f.name);
  }
}

/** The record shapes read as input, for messages about records of no known shape. */
export const ACCEPTED_SHAPES =
  'a catechism record (with "kind": fact, probe, locus, adapter, report, route, ref_event, …), ' +
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

// ---------------------------------------------------------------- typed parse and guard per kind

/**
 * Checks `value` as a record of `kind` (declared field types, and for facts
 * the rules across fields) and returns it typed: parseRecord('ref_event', v)
 * is a RefEvent, parseRecord('probe', v) a Probe, and so on. Throws InputError naming
 * the field; the caller adds the input and record number.
 */
export function parseRecord<K extends KnownRecord['kind']>(kind: K, value: unknown): RecordOf<K> {
  if (kind === 'fact') return parseFact(value) as RecordOf<K>;
  const r = expectKind(value, kind);
  checkFields(r, KIND_FIELDS[kind], '');
  return r as RecordOf<K>;
}

/** Whether `value` is a valid record of `kind` (parseRecord without the error). */
export function isRecord<K extends KnownRecord['kind']>(kind: K, value: unknown): value is RecordOf<K> {
  return passes(() => parseRecord(kind, value));
}

/** Whether `check` returns rather than throwing an InputError (other errors propagate). */
function passes(check: () => unknown): boolean {
  try {
    check();
    return true;
  } catch (e) {
    if (e instanceof InputError) return false;
    throw e;
  }
}

/**
 * Narrows a record the reader has already checked (validateRecord runs on
 * every input record of a known kind) by its kind alone; use parseRecord or
 * isRecord for a value that has not been through the reader.
 */
export function isKind<K extends KnownRecord['kind']>(record: AnyRecord, kind: K): record is AnyRecord & RecordOf<K> {
  return record.kind === kind;
}

function expectKind(value: unknown, kind: string): Record<string, unknown> {
  if (!isPlainObject(value)) throw new InputError(`expected a JSON object, got ${describeType(value)}`);
  if (value.kind !== kind) throw new InputError(`expected ${JSON.stringify(kind)}, got ${typeof value.kind === 'string' ? JSON.stringify(value.kind) : describeType(value.kind)}`, { field: 'kind' });
  return value;
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
  expectKind(value, 'fact');
  return parseFactFields(value as Record<string, unknown>, rules);
}

/** parseFact's checks of the fields alone, for a record not yet labelled `kind: "fact"` (edit/data.ts's checkFact). */
export function parseFactFields(value: Record<string, unknown>, rules: FactRules = {}): Fact {
  checkFields(value, KIND_FIELDS.fact, '');
  checkFact(value as Fact, rules);
  return value as Fact;
}

/** Whether `value` is a valid fact (parseFact without the error). */
export function isFact(value: unknown, rules: FactRules = {}): value is Fact {
  return passes(() => parseFact(value, rules));
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
