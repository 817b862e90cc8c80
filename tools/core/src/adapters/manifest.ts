/**
 * The bundle manifest (`catechism.json`): what an adapter is, what made it,
 * what tests it, and how it fared. Validation collects every problem with its
 * field path (`$.base_model.sha256`) so one run shows everything to fix.
 */

export const MANIFEST_FORMAT = 'catechism-adapter';
export const MANIFEST_FORMAT_VERSION = 1;

/** Methods known today; any lower-case identifier is accepted so new methods need no schema change. */
export const KNOWN_METHODS = ['lora', 'rome', 'memit', 'leace', 'hypernet', 'moe-route', 'merge-cat', 'merge-svd', 'merge-ties', 'merge-dare', 'merge-linear', 'negate', 'scale'] as const;

export interface BaseModelRef {
  /** Model name or path as given to the tool (e.g. `fixtures/models/tiny-gpt2`). */
  name: string;
  /** sha256 identifying the base weights the adapter was made against. */
  sha256: string;
}

export interface ParentRef {
  id: string;
  /** Registry content hash of the parent bundle. */
  sha256: string;
}

/** A `report` record (as written by `validate`). Only `pass` and the adapter id are required here. */
export interface ReportRecord {
  kind: 'report';
  adapter_id: string;
  pass: boolean;
  metrics?: Record<string, unknown>;
  thresholds?: Record<string, unknown>;
  failures?: unknown[];
  created_at?: string;
  [extra: string]: unknown;
}

export interface BundleManifest {
  format: typeof MANIFEST_FORMAT;
  format_version: number;
  id: string;
  /** Positive integer; a new adapter for the same id bumps it. */
  version: number;
  method: string;
  base_model: BaseModelRef;
  /** Checkpoint module names the adapter changes, as the base model's checkpoint spells them. */
  targets: string[];
  rank: number;
  /** Ids of the facts this adapter carries. */
  fact_ids: string[];
  /** The `fact` records themselves (each `id` is in `fact_ids`). */
  facts: Record<string, unknown>[];
  source: string | null;
  author: string | null;
  /** In [0, 1], or null when unknown. */
  confidence: number | null;
  /** sha256 of the training records (the exact bytes the trainer read). */
  data_sha256: string;
  parents: ParentRef[];
  /** The `probe` records that are this adapter's tests. */
  probes: Record<string, unknown>[];
  /** ISO 8601 timestamp. */
  created_at: string;
  /** Reports shipped inside the bundle when it was made; later ones live in the registry. */
  validation: ReportRecord[];
  /** Output scale applied to the delta (−1 negates); default 1. */
  scale?: number;
  [extra: string]: unknown;
}

export interface FieldProblem {
  path: string;
  message: string;
}

export class ManifestError extends Error {
  readonly problems: FieldProblem[];
  constructor(where: string, problems: FieldProblem[]) {
    const shown = problems.slice(0, 5).map((p) => `${p.path}: ${p.message}`).join('; ');
    const more = problems.length > 5 ? ` (and ${problems.length - 5} more)` : '';
    super(`${where}: invalid manifest: ${shown}${more}`);
    this.name = 'ManifestError';
    this.problems = problems;
  }
}

const HEX64 = /^[0-9a-f]{64}$/;
const ID_RE = /^[^\s\u0000-\u001f]{1,200}$/;
const METHOD_RE = /^[a-z][a-z0-9_+:-]{0,63}$/;

function describe(v: unknown): string {
  if (v === undefined) return 'missing';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return `"${v.length > 40 ? v.slice(0, 40) + '…' : v}"`;
  if (typeof v === 'object') return 'an object';
  return `${typeof v} ${String(v)}`;
}

function isObj(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

export function isSha256(v: unknown): v is string {
  return typeof v === 'string' && HEX64.test(v);
}

function isIsoDate(v: unknown): boolean {
  return typeof v === 'string' && /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$/.test(v) && !Number.isNaN(Date.parse(v));
}

class Checker {
  problems: FieldProblem[] = [];
  bad(path: string, message: string): void {
    this.problems.push({ path, message });
  }
  str(o: Record<string, unknown>, key: string, base: string, opts: { nullable?: boolean; re?: RegExp; what?: string } = {}): void {
    const v = o[key];
    const p = `${base}.${key}`;
    if (v === null && opts.nullable) return;
    if (typeof v !== 'string' || v.length === 0) {
      this.bad(p, `expected a non-empty string${opts.nullable ? ' or null' : ''}, got ${describe(v)}`);
      return;
    }
    if (opts.re && !opts.re.test(v)) this.bad(p, `expected ${opts.what ?? `to match ${opts.re}`}, got ${describe(v)}`);
  }
  sha(o: Record<string, unknown>, key: string, base: string): void {
    const v = o[key];
    if (!isSha256(v)) this.bad(`${base}.${key}`, `expected a sha256 (64 lowercase hex digits), got ${describe(v)}`);
  }
  posInt(o: Record<string, unknown>, key: string, base: string): void {
    const v = o[key];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) this.bad(`${base}.${key}`, `expected a positive integer, got ${describe(v)}`);
  }
  arr(o: Record<string, unknown>, key: string, base: string): unknown[] | null {
    const v = o[key];
    if (!Array.isArray(v)) {
      this.bad(`${base}.${key}`, `expected an array, got ${describe(v)}`);
      return null;
    }
    return v;
  }
}

/** Check a `report` record; returns the problems (empty when valid). `adapter`/`adapter.id` are accepted for `adapter_id`. */
export function reportProblems(v: unknown, base = '$'): FieldProblem[] {
  const c = new Checker();
  if (!isObj(v)) {
    c.bad(base, `expected a report object, got ${describe(v)}`);
    return c.problems;
  }
  if (v.kind !== 'report') c.bad(`${base}.kind`, `expected "report", got ${describe(v.kind)}`);
  if (typeof v.pass !== 'boolean') c.bad(`${base}.pass`, `expected true or false, got ${describe(v.pass)}`);
  if (reportAdapterId(v) === null) c.bad(`${base}.adapter_id`, `expected the adapter's id (a non-empty string), got ${describe(v.adapter_id ?? v.adapter)}`);
  if (v.created_at !== undefined && !isIsoDate(v.created_at)) c.bad(`${base}.created_at`, `expected an ISO 8601 timestamp, got ${describe(v.created_at)}`);
  return c.problems;
}

/** The adapter id a report is about (`adapter_id`, or `adapter` as a string or `{id}`), or null. */
export function reportAdapterId(v: Record<string, unknown>): string | null {
  const a = v.adapter_id ?? v.adapter;
  if (typeof a === 'string' && a.length > 0) return a;
  if (isObj(a) && typeof a.id === 'string' && a.id.length > 0) return a.id;
  return null;
}

/** Normalise a valid report record so `adapter_id` is set (other fields kept as they were). */
export function normaliseReport(v: Record<string, unknown>): ReportRecord {
  const id = reportAdapterId(v);
  if (id === null || typeof v.pass !== 'boolean') throw new ManifestError('report', reportProblems(v));
  return { ...v, kind: 'report', adapter_id: id, pass: v.pass } as ReportRecord;
}

/** Every problem with a manifest, by field path; empty when valid. */
export function manifestProblems(v: unknown): FieldProblem[] {
  const c = new Checker();
  const $ = '$';
  if (!isObj(v)) {
    c.bad($, `expected a JSON object, got ${describe(v)}`);
    return c.problems;
  }
  if (v.format !== MANIFEST_FORMAT) c.bad('$.format', `expected "${MANIFEST_FORMAT}", got ${describe(v.format)}`);
  if (v.format_version !== MANIFEST_FORMAT_VERSION) c.bad('$.format_version', `expected ${MANIFEST_FORMAT_VERSION} (the only version this build reads), got ${describe(v.format_version)}`);
  c.str(v, 'id', $, { re: ID_RE, what: 'no whitespace or control characters, at most 200 characters' });
  c.posInt(v, 'version', $);
  c.str(v, 'method', $, { re: METHOD_RE, what: `a lower-case method name (known: ${KNOWN_METHODS.join(', ')})` });
  if (!isObj(v.base_model)) c.bad('$.base_model', `expected {name, sha256}, got ${describe(v.base_model)}`);
  else {
    c.str(v.base_model, 'name', '$.base_model');
    c.sha(v.base_model, 'sha256', '$.base_model');
  }
  const targets = c.arr(v, 'targets', $);
  if (targets) {
    if (targets.length === 0) c.bad('$.targets', 'expected at least one target module');
    targets.forEach((t, i) => {
      if (typeof t !== 'string' || t.length === 0) c.bad(`$.targets[${i}]`, `expected a module name, got ${describe(t)}`);
    });
    if (new Set(targets).size !== targets.length) c.bad('$.targets', 'contains duplicates');
  }
  c.posInt(v, 'rank', $);
  const factIds = c.arr(v, 'fact_ids', $);
  const idSet = new Set<string>();
  if (factIds) {
    factIds.forEach((f, i) => {
      if (typeof f !== 'string' || f.length === 0) c.bad(`$.fact_ids[${i}]`, `expected a fact id, got ${describe(f)}`);
      else if (idSet.has(f)) c.bad(`$.fact_ids[${i}]`, `duplicate fact id "${f}"`);
      else idSet.add(f);
    });
  }
  const facts = c.arr(v, 'facts', $);
  if (facts) {
    facts.forEach((f, i) => {
      const p = `$.facts[${i}]`;
      if (!isObj(f)) return c.bad(p, `expected a fact record, got ${describe(f)}`);
      if (f.kind !== undefined && f.kind !== 'fact') c.bad(`${p}.kind`, `expected "fact", got ${describe(f.kind)}`);
      if (typeof f.id !== 'string' || f.id.length === 0) c.bad(`${p}.id`, `expected the fact's id, got ${describe(f.id)}`);
      else if (factIds && !idSet.has(f.id)) c.bad(`${p}.id`, `"${f.id}" is not listed in $.fact_ids`);
    });
  }
  for (const key of ['source', 'author'] as const) c.str(v, key, $, { nullable: true });
  const conf = v.confidence;
  if (conf !== null && (typeof conf !== 'number' || !(conf >= 0 && conf <= 1))) c.bad('$.confidence', `expected a number in [0, 1] or null, got ${describe(conf)}`);
  c.sha(v, 'data_sha256', $);
  const parents = c.arr(v, 'parents', $);
  if (parents) {
    parents.forEach((p, i) => {
      const base = `$.parents[${i}]`;
      if (!isObj(p)) return c.bad(base, `expected {id, sha256}, got ${describe(p)}`);
      c.str(p, 'id', base);
      c.sha(p, 'sha256', base);
    });
  }
  const probes = c.arr(v, 'probes', $);
  if (probes) {
    probes.forEach((p, i) => {
      if (!isObj(p)) return c.bad(`$.probes[${i}]`, `expected a probe record, got ${describe(p)}`);
      if (p.kind !== 'probe') c.bad(`$.probes[${i}].kind`, `expected "probe", got ${describe(p.kind)}`);
    });
  }
  if (!isIsoDate(v.created_at)) c.bad('$.created_at', `expected an ISO 8601 timestamp, got ${describe(v.created_at)}`);
  const validation = c.arr(v, 'validation', $);
  if (validation) {
    validation.forEach((r, i) => {
      c.problems.push(...reportProblems(r, `$.validation[${i}]`));
      if (isObj(r) && typeof v.id === 'string') {
        const rid = reportAdapterId(r);
        if (rid !== null && rid !== v.id) c.bad(`$.validation[${i}].adapter_id`, `report is about "${rid}", not this adapter "${v.id}"`);
      }
    });
  }
  if (v.scale !== undefined && (typeof v.scale !== 'number' || !Number.isFinite(v.scale))) c.bad('$.scale', `expected a finite number, got ${describe(v.scale)}`);
  return c.problems;
}

/** Validate and return a manifest; throws ManifestError naming every bad field. */
export function validateManifest(v: unknown, where = 'catechism.json'): BundleManifest {
  const problems = manifestProblems(v);
  if (problems.length > 0) throw new ManifestError(where, problems);
  const m = v as BundleManifest;
  return { ...m, validation: m.validation.map((r) => normaliseReport(r as Record<string, unknown>)) };
}

export interface ManifestInput {
  id: string;
  version: number;
  method: string;
  base_model: BaseModelRef;
  targets: string[];
  rank: number;
  fact_ids: string[];
  data_sha256: string;
  facts?: Record<string, unknown>[];
  source?: string | null;
  author?: string | null;
  confidence?: number | null;
  parents?: ParentRef[];
  probes?: Record<string, unknown>[];
  created_at?: string;
  validation?: ReportRecord[];
  scale?: number;
  [extra: string]: unknown;
}

/** Build a manifest from the fields a tool knows, with defaults for the rest; validated. */
export function createManifest(input: ManifestInput): BundleManifest {
  const m: BundleManifest = {
    format: MANIFEST_FORMAT,
    format_version: MANIFEST_FORMAT_VERSION,
    ...input,
    facts: input.facts ?? [],
    source: input.source ?? null,
    author: input.author ?? null,
    confidence: input.confidence ?? null,
    parents: input.parents ?? [],
    probes: input.probes ?? [],
    created_at: input.created_at ?? new Date().toISOString(),
    validation: input.validation ?? [],
  };
  return validateManifest(m, 'manifest');
}
