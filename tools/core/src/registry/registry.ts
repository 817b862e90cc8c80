/**
 * The adapter registry: a directory of content-addressed bundles, named refs
 * with an append-only, hash-chained history, and per-bundle validation
 * history. Layout (format 1):
 *
 *     registry.json              {"format": "catechism-registry", "version": 1}
 *     lock                       writer lock (exists only while a writer runs)
 *     objects/<sha256>/          stored bundles, immutable; the name is the bundle's content hash
 *     reports/<sha256>.ndjson    reports attached after the bundle was stored (append-only, hash-chained)
 *     reports/<sha256>.head      the report log's head record: {"count", "chain"} of its last line
 *     refs/<name>.ndjson         a ref's history, one event per line; the last line is its current value
 *     refs/<name>.head           the history's head record: {"count", "chain"} of its last event
 *     tmp/                       staging; anything left here is an interrupted write, removed by the next writer
 *
 * Validation history lives outside the hashed content: a bundle's own
 * `catechism.json` `validation` array is what it shipped with, and
 * `reports/<sha256>.ndjson` holds what was learned later. The effective
 * history is the two concatenated; promotion looks at the last entry that
 * counts.
 *
 * Trust (what makes a report count). A report counts for a bundle only when
 * it names the bundle's content hash (`bundle_sha256`; for a report shipped
 * inside the manifest, the hash the bundle had when the report was made, i.e.
 * with the validation entries before it), the adapter's base model hash
 * (`base_model_sha256`, equal to the manifest's `base_model.sha256`), and the
 * run that made it (`run`: {tool, id}). `addReport` refuses any other report.
 * Stored reports are content-addressed (`report_sha256` = sha256 of the
 * report's canonical JSON) and hash-chained like ref events; a promotion
 * records the `report` hash it was let through on, so a report edited after
 * it was stored no longer matches its hash, its chain or the ref event that
 * names it: `verify` reports it and the gate refuses it.
 *
 * Truncation. Every log (a ref's history, a bundle's report log) has a head
 * record beside it, written atomically after the log itself. A log shorter
 * than its head (cut at a line boundary), empty, or missing while its head
 * exists is damage: reading it throws E_CORRUPT, so explain, rollback and
 * promote refuse instead of silently using an older head. (A log one write
 * ahead of its head is an interrupted write; the next writer catches up.)
 *
 * Consistency: every write is staged (temp → fsync → rename → fsync dir),
 * objects are in place before any ref names them, and writers serialise on
 * the lock, so a process killed at any point leaves a registry that reads
 * and verifies. Readers take no lock.
 */
import { copyFile, mkdir, readdir, readFile, rename, rm, stat, chmod, open } from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { atomicWriteFile, canonicalJson, fsyncDir, mkdirDurable, sha256File, sha256Hex, tempName } from '../adapters/fsio.js';
import { MANIFEST_FILE, listingHash, readBundle, hashBundleDir, adapterRecord, type AdapterRecord, type FileEntry } from '../adapters/bundle.js';
import { ManifestError, normaliseReport, reportProblems, validateManifest, isSha256, type BundleManifest, type ReportRecord } from '../adapters/manifest.js';
import { withLock, type LockOptions } from './lock.js';
import type { RefAction, RefEvent, RegistryVerify, VerifyProblem } from '../records/schema.js';

export const REGISTRY_FORMAT = 'catechism-registry';
export const REGISTRY_VERSION = 1;

/** `$CATECHISM_REGISTRY`, else `~/.catechism/registry`. */
export function defaultRegistryDir(env: NodeJS.ProcessEnv = process.env): string {
  const fromEnv = env.CATECHISM_REGISTRY;
  if (fromEnv && fromEnv.length > 0) return path.resolve(fromEnv);
  return path.join(os.homedir(), '.catechism', 'registry');
}

/** Errors the CLI maps to exit codes: 2 for bad input/usage (unknown ref, bad name), 1 for runtime failures (corruption, refused gate, lock timeout). */
export class RegistryError extends Error {
  constructor(message: string, readonly exitCode: 1 | 2 = 1, readonly code = 'E_REGISTRY') {
    super(message);
    this.name = 'RegistryError';
  }
}

export class CorruptObjectError extends RegistryError {
  constructor(readonly sha256: string, detail: string) {
    super(`object ${sha256} is corrupted: ${detail}; it will not be used (run \`adapter-merge verify\`; re-adding the original bundle repairs it)`, 1, 'E_CORRUPT');
    this.name = 'CorruptObjectError';
  }
}

/** A compare-and-swap promotion found the ref somewhere other than where the caller expected it. */
export class RefMovedError extends RegistryError {
  constructor(readonly ref: string, readonly expected: string | null, readonly actual: string | null) {
    super(`${ref} moved: expected it at ${expected?.slice(0, 12) ?? 'empty'}, it is at ${actual?.slice(0, 12) ?? 'empty'}; nothing promoted`, 1, 'E_MOVED');
    this.name = 'RefMovedError';
  }
}

export type { RefAction, RefEvent, VerifyProblem } from '../records/schema.js';

export interface StoredReport extends ReportRecord {
  recorded_at?: string;
  recorded_by?: string;
  /** Content address: sha256 of the canonical JSON of the report without `report_sha256` and `chain`. */
  report_sha256?: string;
  /** Registry report logs only: sha256(previous line's chain + canonical JSON of this line without `chain`). */
  chain?: string;
}

/** One entry of a bundle's validation history, judged. */
export interface AssessedReport {
  report: StoredReport;
  /** `bundle`: shipped in catechism.json; `registry`: attached later (reports/<sha256>.ndjson). */
  source: 'bundle' | 'registry';
  /** 1-based position within its source. */
  index: number;
  /** Its content hash, recomputed from the bytes as they are now. */
  report_sha256: string;
  /** Null when the report counts for this bundle; else why not. */
  refused: string | null;
}

/** A log's head record: how many lines it has and the chain of the last. Written after the log. */
interface LogHead {
  count: number;
  chain: string;
}

export interface StoredBundle {
  sha256: string;
  path: string;
  manifest: BundleManifest;
  files: FileEntry[];
}

export interface WriteMeta {
  /** Why (`--message`). */
  message?: string | null;
  /** Who (`--author`); default $USER. */
  author?: string | null;
}

export interface PromoteOptions extends WriteMeta {
  force?: boolean;
  /**
   * Compare-and-swap: promote only if REF currently points to this bundle hash
   * (null: only if REF has no history). Checked under the writer lock, so a
   * read-merge-promote cycle cannot overwrite a concurrent writer's change.
   */
  expectHead?: string | null;
}

export interface RollbackOptions extends WriteMeta {
  /** History version to restore; default: one step back (see rollback()). */
  to?: number;
}

export interface RegistryOptions extends LockOptions {
  /** Clock, for tests. */
  now?: () => Date;
}

/** `verify`'s result: the schema's `registry_verify` record. */
export type VerifyResult = RegistryVerify;

export interface ShowResult {
  bundle: StoredBundle;
  record: AdapterRecord;
  validation: StoredReport[];
  /** For each entry of `validation`: null when it counts for this bundle, else why not. */
  refused: (string | null)[];
  refs: { ref: string; versions: number[]; current: boolean }[];
}

const REF_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;
const HEX_PREFIX = /^[0-9a-f]{6,64}$/;

export function checkRefName(name: string): void {
  if (!REF_NAME.test(name) || name.endsWith('.ndjson') || name.includes('..')) {
    throw new RegistryError(`invalid ref name "${name}": use letters, digits, '.', '_', '-' (starting with a letter or digit, at most 100 characters)`, 2, 'E_USAGE');
  }
}

function defaultAuthor(): string {
  const env = process.env.USER ?? process.env.LOGNAME;
  if (env) return env;
  try {
    return os.userInfo().username;
  } catch {
    return 'unknown';
  }
}

function eventChain(prevChain: string | null, ev: object): string {
  const { chain: _drop, ...rest } = ev as { chain?: unknown };
  return sha256Hex(`${prevChain ?? ''}\n${canonicalJson(rest)}`);
}

/** A report's content address: sha256 of its canonical JSON without the fields that seal it. */
export function reportSha256(report: object): string {
  const { chain: _c, report_sha256: _r, ...rest } = report as { chain?: unknown; report_sha256?: unknown };
  return sha256Hex(canonicalJson(rest));
}

/**
 * Why a report does not count for the bundle whose content hash was
 * `bundleSha` when the report was made, or null when it does. See the
 * "Trust" paragraph at the top of this file.
 */
export function reportBindingProblem(report: Record<string, unknown>, bundleSha: string, manifest: BundleManifest): string | null {
  const b = report.bundle_sha256;
  if (b === undefined) return 'it names no bundle (no bundle_sha256; a report counts only for the exact bundle it names)';
  if (b !== bundleSha) return `it is about bundle ${typeof b === 'string' ? b.slice(0, 12) : JSON.stringify(b)}, not this one (${bundleSha.slice(0, 12)})`;
  const m = report.base_model_sha256;
  if (m === undefined) return 'it names no base model (no base_model_sha256; a report counts only for the base model it was measured on)';
  if (m !== manifest.base_model.sha256) return `it was measured on base model ${typeof m === 'string' ? m.slice(0, 12) : JSON.stringify(m)}, but the adapter's base model is ${manifest.base_model.name} (${manifest.base_model.sha256.slice(0, 12)})`;
  const run = report.run as { tool?: unknown; id?: unknown } | undefined;
  if (run === null || typeof run !== 'object' || typeof run.tool !== 'string' || run.tool === '' || typeof run.id !== 'string' || run.id === '') {
    return 'it does not name the validation run that made it (run: {tool, id})';
  }
  return null;
}

/**
 * The content hash a bundle had before each of its manifest's reports was
 * appended: entry i is the hash with `validation` cut to its first i entries
 * (the manifest re-serialised as the bundle writer writes it). `raw` is the
 * manifest exactly as parsed from the file, so key order is the file's.
 */
function manifestPrefixHashes(files: FileEntry[], raw: Record<string, unknown>): string[] {
  const validation = Array.isArray(raw.validation) ? raw.validation : [];
  const out: string[] = [];
  for (let i = 0; i < validation.length; i++) {
    const text = JSON.stringify({ ...raw, validation: validation.slice(0, i) }, null, 2) + '\n';
    out.push(listingHash(files.map((f) => (f.path === MANIFEST_FILE ? { ...f, sha256: sha256Hex(text) } : f))));
  }
  return out;
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}

/** A file's text, or null when it does not exist. */
async function readTextOrNull(file: string): Promise<string | null> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

async function readHead(file: string): Promise<LogHead | null | Error> {
  const text = await readTextOrNull(file);
  if (text === null) return null;
  try {
    const h = JSON.parse(text) as Partial<LogHead>;
    if (Number.isInteger(h.count) && (h.count as number) >= 0 && typeof h.chain === 'string') return { count: h.count as number, chain: h.chain };
  } catch {
    /* below */
  }
  return new Error(`${file}: not a head record (expected {"count": N, "chain": HASH})`);
}

/**
 * Parse a hash-chained log, checked against its head record (read first: the
 * writer writes the log before the head, so a reader racing a writer sees
 * the log at least as long as the head it read). Throws E_CORRUPT when the
 * log was cut, emptied, deleted or rewritten below its head.
 */
async function readChainedLog<T extends { chain?: string }>(file: string, headFile: string, what: string): Promise<T[]> {
  const head = await readHead(headFile);
  if (head instanceof Error) throw new RegistryError(`${head.message}; ${what} cannot be trusted (run \`adapter-merge verify\`)`, 1, 'E_CORRUPT');
  const lines = await readLines(file);
  const items = (lines ?? []).map((line, i) => {
    try {
      return JSON.parse(line) as T;
    } catch {
      throw new RegistryError(`${file}: line ${i + 1} is not valid JSON (${what} is damaged; run \`adapter-merge verify\`)`, 1, 'E_CORRUPT');
    }
  });
  const damaged = (detail: string) =>
    new RegistryError(`${what} is damaged: ${detail}; refusing to use an older head (restore ${path.basename(file)} from a backup; \`adapter-merge verify\` lists the damage)`, 1, 'E_CORRUPT');
  if (head === null) {
    // only a first write can have been interrupted between the log and its head
    if (items.length > 1) throw damaged(`${path.basename(headFile)} is missing (it records how long the history is), and the history has ${items.length} lines`);
    return items;
  }
  if (lines === null && head.count > 0) throw damaged(`${path.basename(file)} is missing, but its head record says it had ${head.count} line(s)`);
  if (items.length === 0 && head.count > 0) throw damaged(`${path.basename(file)} is empty, but its head record says it had ${head.count} line(s)`);
  if (items.length < head.count) throw damaged(`${path.basename(file)} has ${items.length} line(s), but its head record says ${head.count}: it was cut`);
  if (head.count > 0 && items[head.count - 1].chain !== head.chain) throw damaged(`line ${head.count} of ${path.basename(file)} does not carry the chain hash its head record names (${head.chain.slice(0, 12)}): it was rewritten`);
  return items;
}

async function readLines(file: string): Promise<string[] | null> {
  const text = await readTextOrNull(file);
  return text === null ? null : text.split('\n').filter((l) => l.length > 0);
}

export class Registry {
  readonly root: string;
  private readonly opts: RegistryOptions;

  constructor(root: string, opts: RegistryOptions = {}) {
    this.root = path.resolve(root);
    this.opts = opts;
  }

  private p(...parts: string[]): string {
    return path.join(this.root, ...parts);
  }
  objectPath(sha256: string): string {
    return this.p('objects', sha256);
  }
  private refFile(name: string): string {
    return this.p('refs', `${name}.ndjson`);
  }
  /** `<name>.head` never collides with a log file: ref names cannot end in `.ndjson`. */
  private refHeadFile(name: string): string {
    return this.p('refs', `${name}.head`);
  }
  private reportsFile(sha256: string): string {
    return this.p('reports', `${sha256}.ndjson`);
  }
  private reportsHeadFile(sha256: string): string {
    return this.p('reports', `${sha256}.head`);
  }
  private now(): Date {
    return this.opts.now ? this.opts.now() : new Date();
  }

  // ---------------------------------------------------------------- reading

  /** Throw a usage error unless the registry exists (read commands never create one). */
  async requireExists(): Promise<void> {
    const marker = this.p('registry.json');
    let text: string;
    try {
      text = await readFile(marker, 'utf8');
    } catch {
      throw new RegistryError(`no registry at ${this.root} (it is created by the first \`adapter-merge add\` or \`promote\`; choose one with --registry or $CATECHISM_REGISTRY)`, 2, 'E_NO_REGISTRY');
    }
    let meta: { format?: unknown; version?: unknown };
    try {
      meta = JSON.parse(text);
    } catch {
      throw new RegistryError(`${marker}: not valid JSON; is ${this.root} a catechism registry?`, 1, 'E_CORRUPT');
    }
    if (meta.format !== REGISTRY_FORMAT) throw new RegistryError(`${this.root} is not a catechism registry (registry.json format is ${JSON.stringify(meta.format)})`, 2, 'E_NO_REGISTRY');
    if (meta.version !== REGISTRY_VERSION) throw new RegistryError(`${this.root}: registry format version ${String(meta.version)} is not supported by this build (supports ${REGISTRY_VERSION})`, 1);
  }

  /** Every stored object's hash (not verified). */
  async objects(): Promise<string[]> {
    try {
      return (await readdir(this.p('objects'))).filter((n) => isSha256(n)).sort();
    } catch {
      return [];
    }
  }

  /** Every ref name (a ref whose history file was deleted is still listed by its head record). */
  async refs(): Promise<string[]> {
    try {
      const names = new Set<string>();
      for (const n of await readdir(this.p('refs'))) {
        const m = /^(.*)\.(ndjson|head)$/.exec(n);
        if (m && REF_NAME.test(m[1]) && !m[1].endsWith('.ndjson')) names.add(m[1]);
      }
      return [...names].sort();
    } catch {
      return [];
    }
  }

  /**
   * `sha256` and every bundle it was merged from, transitively (manifest
   * `parents`). A parent that is not stored (given by path only) is in the
   * set but its own parents are not known.
   */
  async ancestry(sha256: string): Promise<Set<string>> {
    const seen = new Set<string>();
    const queue = [sha256];
    while (queue.length > 0) {
      const q = queue.pop()!;
      if (seen.has(q)) continue;
      seen.add(q);
      const st = await this.get(q).catch(() => null);
      if (st) queue.push(...st.manifest.parents.map((p) => p.sha256));
    }
    return seen;
  }

  /** A stored bundle, its hash re-verified; throws CorruptObjectError if the bytes changed. */
  async get(sha256: string): Promise<StoredBundle> {
    if (!isSha256(sha256)) throw new RegistryError(`not a bundle hash: "${sha256}"`, 2, 'E_USAGE');
    const dir = this.objectPath(sha256);
    if (!(await exists(dir))) {
      // Missing and named by a history: damage, not a typo.
      for (const r of await this.refs()) {
        const hit = (await this.log(r).catch(() => [] as RefEvent[])).find((e) => e.bundle === sha256);
        if (hit) throw new RegistryError(`object ${sha256} is missing, but ${r}@${hit.version} names it: the registry is damaged (run \`adapter-merge verify\`; re-adding the bundle restores it)`, 1, 'E_CORRUPT');
      }
      throw new RegistryError(`no object ${sha256} in ${this.root}`, 2, 'E_NOT_FOUND');
    }
    let hashed;
    try {
      hashed = await hashBundleDir(dir);
    } catch (err) {
      throw new CorruptObjectError(sha256, (err as Error).message);
    }
    if (hashed.sha256 !== sha256) throw new CorruptObjectError(sha256, `its content now hashes to ${hashed.sha256} (files: ${hashed.files.map((f) => f.path).join(', ') || 'none'})`);
    let manifest: BundleManifest;
    try {
      manifest = validateManifest(JSON.parse(await readFile(path.join(dir, MANIFEST_FILE), 'utf8')), path.join(dir, MANIFEST_FILE));
    } catch (err) {
      throw new CorruptObjectError(sha256, `its manifest does not read: ${(err as Error).message}`);
    }
    return { sha256, path: dir, manifest, files: hashed.files };
  }

  /**
   * A ref's full history (empty array for a ref that does not exist). Throws
   * E_CORRUPT if the log is unreadable, or shorter than its head record says
   * (cut, emptied, deleted): nothing then uses an older head by mistake.
   */
  async log(ref: string): Promise<RefEvent[]> {
    checkRefName(ref);
    return readChainedLog<RefEvent>(this.refFile(ref), this.refHeadFile(ref), `the history of ref "${ref}"`);
  }

  /** The ref's current event, or null when the ref has no history. */
  async head(ref: string): Promise<RefEvent | null> {
    const log = await this.log(ref);
    return log.length > 0 ? log[log.length - 1] : null;
  }

  /** Reports attached in the registry (not those inside the manifest). Throws E_CORRUPT when the log is cut below its head. */
  async attachedReports(sha256: string): Promise<StoredReport[]> {
    return readChainedLog<StoredReport>(this.reportsFile(sha256), this.reportsHeadFile(sha256), `the report log of ${sha256.slice(0, 12)}`);
  }

  /** Effective validation history: the manifest's own reports, then those attached later. */
  async validationHistory(bundle: StoredBundle): Promise<StoredReport[]> {
    return (await this.assessedHistory(bundle)).map((a) => a.report);
  }

  /**
   * The validation history with each report judged: does it count for this
   * bundle (bound to its hash and base model, naming its run, and, for
   * attached reports, unchanged since it was stored)?
   */
  async assessedHistory(bundle: StoredBundle): Promise<AssessedReport[]> {
    const out: AssessedReport[] = [];
    let raw: Record<string, unknown> = {};
    try {
      raw = JSON.parse(await readFile(path.join(bundle.path, MANIFEST_FILE), 'utf8')) as Record<string, unknown>;
    } catch {
      /* get() read it a moment ago; an unreadable manifest leaves no shipped reports to count */
    }
    const prefix = manifestPrefixHashes(bundle.files, raw);
    bundle.manifest.validation.forEach((r, i) => {
      const rep = r as StoredReport;
      out.push({ report: rep, source: 'bundle', index: i + 1, report_sha256: reportSha256(rep), refused: reportBindingProblem(rep, prefix[i] ?? '', bundle.manifest) });
    });
    let prevChain: string | null = null;
    (await this.attachedReports(bundle.sha256)).forEach((rep, i) => {
      const sha = reportSha256(rep);
      let refused: string | null = null;
      if (rep.report_sha256 !== sha) refused = `it was changed after it was stored (its content hashes to ${sha.slice(0, 12)}, it was stored as ${String(rep.report_sha256 ?? 'unsealed').slice(0, 12)})`;
      else if (rep.chain !== eventChain(prevChain, rep)) refused = 'the report log was edited here (hash chain broken)';
      else refused = reportBindingProblem(rep, bundle.sha256, bundle.manifest);
      prevChain = rep.chain ?? null;
      out.push({ report: rep, source: 'registry', index: i + 1, report_sha256: sha, refused });
    });
    return out;
  }

  /**
   * Resolve an identifier to a stored bundle hash. Accepted, in this order:
   * a ref name (its current bundle); `REF@N` (version N of REF's history);
   * a full hash or a unique prefix of at least 6 hex digits; an adapter id
   * (`ID` = its highest version, `ID@V` = that version).
   */
  async resolve(id: string): Promise<string> {
    if (id.length === 0) throw new RegistryError('empty bundle identifier', 2, 'E_USAGE');
    const at = id.lastIndexOf('@');
    if (REF_NAME.test(id) && ((await exists(this.refFile(id))) || (await exists(this.refHeadFile(id))))) {
      const h = await this.head(id);
      if (h) return h.bundle;
    }
    if (at > 0) {
      const name = id.slice(0, at);
      const n = Number(id.slice(at + 1));
      if (REF_NAME.test(name) && ((await exists(this.refFile(name))) || (await exists(this.refHeadFile(name))))) {
        const log = await this.log(name);
        if (!Number.isInteger(n) || n < 1 || n > log.length) throw new RegistryError(`${name} has versions 1..${log.length}; no version "${id.slice(at + 1)}"`, 2, 'E_NOT_FOUND');
        return log[n - 1].bundle;
      }
    }
    const objs = await this.objects();
    if (HEX_PREFIX.test(id)) {
      const hits = objs.filter((o) => o.startsWith(id));
      if (hits.length === 1) return hits[0];
      if (hits.length > 1) throw new RegistryError(`"${id}" is ambiguous: matches ${hits.length} objects (${hits.slice(0, 3).map((h) => h.slice(0, 12)).join(', ')}…); give more digits`, 2, 'E_USAGE');
    }
    // Adapter id lookup reads manifests only (cheap); the caller's get() verifies the chosen object.
    // `ID@V` only when V is a version number; otherwise '@' is part of the id.
    const [aid, aver] = at > 0 && /^[1-9][0-9]*$/.test(id.slice(at + 1)) ? [id.slice(0, at), Number(id.slice(at + 1))] : [id, null];
    const matches: { sha: string; version: number }[] = [];
    for (const o of objs) {
      try {
        const m = JSON.parse(await readFile(path.join(this.objectPath(o), MANIFEST_FILE), 'utf8')) as { id?: unknown; version?: unknown };
        if (m.id === aid && typeof m.version === 'number' && (aver === null || m.version === aver)) matches.push({ sha: o, version: m.version });
      } catch {
        /* unreadable manifests are reported by verify */
      }
    }
    if (matches.length === 0) throw new RegistryError(`nothing in ${this.root} matches "${id}" (not a ref, ref@version, hash prefix or adapter id)`, 2, 'E_NOT_FOUND');
    const top = Math.max(...matches.map((m) => m.version));
    const best = matches.filter((m) => m.version === top);
    if (best.length > 1) throw new RegistryError(`adapter "${aid}" version ${top} is stored ${best.length} times with different content (${best.map((b) => b.sha.slice(0, 12)).join(', ')}); name one by hash`, 2, 'E_USAGE');
    return best[0].sha;
  }

  /** A bundle by any identifier, with its history and where it is referenced. */
  async show(id: string): Promise<ShowResult> {
    await this.requireExists();
    const sha = await this.resolve(id);
    const bundle = await this.get(sha);
    const refs: ShowResult['refs'] = [];
    for (const r of await this.refs()) {
      const log = await this.log(r);
      const versions = log.filter((e) => e.bundle === sha).map((e) => e.version);
      if (versions.length > 0) refs.push({ ref: r, versions, current: log[log.length - 1].bundle === sha });
    }
    const assessed = await this.assessedHistory(bundle);
    return { bundle, record: adapterRecord(bundle.manifest, { path: bundle.path, sha256: sha }), validation: assessed.map((x) => x.report), refused: assessed.map((x) => x.refused), refs };
  }

  // ---------------------------------------------------------------- writing

  /** Run `fn` as the registry's only writer: layout ensured, leftovers of interrupted writes removed. */
  private async write<T>(fn: () => Promise<T>): Promise<T> {
    await mkdirDurable(this.root);
    if (!(await exists(this.p('registry.json')))) {
      // Never turn someone's existing directory into a registry; an interrupted init is fine.
      const own = new Set(['objects', 'refs', 'reports', 'tmp', 'lock', 'lock.break']);
      const foreign = (await readdir(this.root)).filter((n) => !own.has(n));
      // a concurrent writer may have just finished the init (its registry.json is then in the listing)
      if (foreign.length > 0 && !(await exists(this.p('registry.json')))) throw new RegistryError(`${this.root} is not empty and not a registry (found ${foreign.slice(0, 3).join(', ')}${foreign.length > 3 ? ', …' : ''}); choose an empty or new directory for --registry`, 2, 'E_NO_REGISTRY');
    }
    return withLock(this.p('lock'), this.opts, async () => {
      await this.ensureLayout();
      // Only lock holders write to tmp/, so anything there now is from a killed writer.
      for (const n of await readdir(this.p('tmp'))) await rm(this.p('tmp', n), { recursive: true, force: true });
      return fn();
    });
  }

  private async ensureLayout(): Promise<void> {
    for (const d of ['objects', 'refs', 'reports', 'tmp']) await mkdirDurable(this.p(d));
    const marker = this.p('registry.json');
    if (!(await exists(marker))) {
      await atomicWriteFile(marker, JSON.stringify({ format: REGISTRY_FORMAT, version: REGISTRY_VERSION }) + '\n', this.p('tmp'));
    } else {
      await this.requireExists();
    }
  }

  /** Store a bundle directory (idempotent). Returns its hash and whether it was new. */
  async add(bundleDir: string): Promise<{ bundle: StoredBundle; added: boolean; repaired: boolean }> {
    const src = await readBundle(bundleDir); // validate before taking the lock
    return this.write(() => this.addLocked(bundleDir, src.sha256));
  }

  private async addLocked(bundleDir: string, expected: string): Promise<{ bundle: StoredBundle; added: boolean; repaired: boolean }> {
    const dest = this.objectPath(expected);
    let corrupt = false;
    if (await exists(dest)) {
      try {
        return { bundle: await this.get(expected), added: false, repaired: false };
      } catch (err) {
        if (!(err instanceof CorruptObjectError)) throw err;
        corrupt = true; // same content hash, damaged bytes: replaced below by the good copy (its meaning is unchanged)
      }
    }
    const src = await readBundle(bundleDir);
    if (src.sha256 !== expected) throw new RegistryError(`${bundleDir}: bundle changed while it was being added; try again`, 1);
    const staging = this.p('tmp', tempName('add'));
    await mkdir(staging);
    const copied: FileEntry[] = [];
    const dirs = new Set<string>([staging]);
    for (const f of src.files) {
      const to = path.join(staging, ...f.path.split('/'));
      const parent = path.dirname(to);
      if (!dirs.has(parent)) {
        await mkdir(parent, { recursive: true });
        dirs.add(parent);
      }
      await copyFile(path.join(bundleDir, ...f.path.split('/')), to);
      const fh = await open(to, 'r+');
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
      await chmod(to, 0o444); // stored objects are never edited in place
      const h = await sha256File(to);
      copied.push({ path: f.path, sha256: h.sha256, size: h.size });
    }
    if (listingHash(copied) !== expected) throw new RegistryError(`${bundleDir}: bundle changed while it was being copied; try again`, 1);
    for (const d of dirs) await fsyncDir(d);
    if (corrupt) {
      // The good copy is complete before the damaged one moves aside, so the gap is two renames.
      await rename(dest, this.p('tmp', tempName(`corrupt-${expected.slice(0, 12)}`)));
    }
    await rename(staging, dest);
    await fsyncDir(this.p('objects'));
    return { bundle: await this.get(expected), added: true, repaired: corrupt };
  }

  /** Why the promotion gate refuses a bundle, or null when its latest report that counts passes. */
  async gateRefusal(bundle: StoredBundle): Promise<string | null> {
    return (await this.gate(bundle)).refusal;
  }

  /**
   * The promotion gate: the latest report that counts (see reportBindingProblem)
   * must pass. Returns why it refuses (null: it lets through) and the report it judged by.
   */
  async gate(bundle: StoredBundle): Promise<{ refusal: string | null; report: AssessedReport | null }> {
    const hist = await this.assessedHistory(bundle);
    if (hist.length === 0) return { refusal: 'it has no validation report', report: null };
    const counting = hist.filter((h) => h.refused === null);
    if (counting.length === 0) {
      const last = hist[hist.length - 1];
      return { refusal: `it has no validation report that counts (${hist.length} report(s); the latest, ${last.source === 'bundle' ? 'in its manifest' : 'in the registry'} #${last.index}, does not count: ${last.refused})`, report: null };
    }
    const latest = counting[counting.length - 1];
    if (latest.report.pass !== true) {
      const fl = latest.report.failures;
      const f = Array.isArray(fl) && fl.length > 0 ? ` (failures: ${fl.map((x) => (typeof x === 'string' ? x : JSON.stringify(x))).join('; ').slice(0, 200)})` : '';
      return { refusal: `its latest validation report failed${f}`, report: latest };
    }
    return { refusal: null, report: latest };
  }

  /**
   * Point REF at a bundle (a bundle directory, which is added first, or an
   * identifier as resolve() takes). Refused unless the bundle's latest report
   * passes, or `force` (then logged as action "force" with the reason).
   * Promoting the bundle REF already points to is a no-op (returns null).
   * With `expectHead`, throws RefMovedError (E_MOVED) unless REF's head is
   * that bundle (null: REF has no history), checked under the lock.
   */
  async promote(ref: string, target: { dir: string } | { id: string }, opts: PromoteOptions = {}): Promise<{ event: RefEvent | null; bundle: StoredBundle }> {
    checkRefName(ref);
    if (opts.expectHead != null && !isSha256(opts.expectHead)) throw new RegistryError(`expected head of ${ref} must be a full sha256 or null, got "${opts.expectHead}"`, 2, 'E_USAGE');
    if ('dir' in target) await readBundle(target.dir);
    return this.write(async () => {
      let sha: string;
      if ('dir' in target) sha = (await this.addLocked(target.dir, (await readBundle(target.dir)).sha256)).bundle.sha256;
      else sha = await this.resolve(target.id);
      const bundle = await this.get(sha);
      const log = await this.log(ref);
      const head = log.length > 0 ? log[log.length - 1] : null;
      if (opts.expectHead !== undefined && (head?.bundle ?? null) !== opts.expectHead) throw new RefMovedError(ref, opts.expectHead, head?.bundle ?? null);
      if (head && head.bundle === sha) return { event: null, bundle };
      const { refusal, report } = await this.gate(bundle);
      if (refusal !== null && !opts.force) {
        throw new RegistryError(`refusing to promote ${bundle.manifest.id} v${bundle.manifest.version} (${sha.slice(0, 12)}) to ${ref}: ${refusal}; attach a passing report with \`adapter-merge report\`, or use --force (logged)`, 1, 'E_GATE');
      }
      const ev = await this.appendEvent(ref, log, {
        action: refusal !== null ? 'force' : 'promote',
        bundle,
        ...(refusal !== null ? { forced_over: refusal } : { report: report!.report_sha256 }),
        meta: opts,
      });
      return { event: ev, bundle };
    });
  }

  /**
   * Move REF back. With `to`, restore the bundle of that history version.
   * Without, step back one version along the history: from a promotion at
   * version k to the bundle of version k−1; from a rollback that restored
   * version j, to version j−1 — so repeated rollbacks walk further back
   * (an undo stack), never ping-pong.
   */
  async rollback(ref: string, opts: RollbackOptions = {}): Promise<{ event: RefEvent; bundle: StoredBundle }> {
    checkRefName(ref);
    return this.write(async () => {
      const log = await this.log(ref);
      if (log.length === 0) throw new RegistryError(`ref "${ref}" has no history in ${this.root}`, 2, 'E_NOT_FOUND');
      const head = log[log.length - 1];
      let to: number;
      if (opts.to !== undefined) {
        if (!Number.isInteger(opts.to) || opts.to < 1 || opts.to > log.length) throw new RegistryError(`${ref} has versions 1..${log.length}; cannot roll back to ${opts.to}`, 2, 'E_USAGE');
        to = opts.to;
      } else {
        const pos = head.action === 'rollback' && head.to_version !== undefined ? head.to_version : head.version;
        to = pos - 1;
        if (to < 1) throw new RegistryError(`${ref}@${head.version} ${pos !== head.version ? `restored version ${pos}, ` : 'is '}the earliest; nothing to roll back to (use --to VERSION to go forward again)`, 2, 'E_USAGE');
      }
      const target = log[to - 1];
      if (target.bundle === head.bundle) throw new RegistryError(`${ref} version ${to} is the bundle ${ref} already points to (${head.bundle.slice(0, 12)})`, 2, 'E_USAGE');
      const bundle = await this.get(target.bundle); // refuses a corrupted object
      const ev = await this.appendEvent(ref, log, { action: 'rollback', bundle, to_version: to, meta: opts });
      return { event: ev, bundle };
    });
  }

  private async appendEvent(
    ref: string,
    log: RefEvent[],
    e: { action: RefAction; bundle: StoredBundle; to_version?: number; forced_over?: string; report?: string; meta: WriteMeta },
  ): Promise<RefEvent> {
    const prev = log.length > 0 ? log[log.length - 1] : null;
    const base = {
      kind: 'ref_event' as const,
      ref,
      version: log.length + 1,
      action: e.action,
      bundle: e.bundle.sha256,
      adapter_id: e.bundle.manifest.id,
      adapter_version: e.bundle.manifest.version,
      previous: prev ? prev.bundle : null,
      ...(e.to_version !== undefined ? { to_version: e.to_version } : {}),
      ...(e.forced_over !== undefined ? { forced_over: e.forced_over } : {}),
      ...(e.report !== undefined ? { report: e.report } : {}),
      when: this.now().toISOString(),
      why: e.meta.message ?? null,
      who: e.meta.author ?? defaultAuthor(),
    };
    const ev: RefEvent = { ...base, chain: eventChain(prev ? prev.chain : null, base) };
    // Append-only by construction: the new file is the old bytes plus one line, swapped in atomically.
    const text = log.map((x) => JSON.stringify(x) + '\n').join('') + JSON.stringify(ev) + '\n';
    await atomicWriteFile(this.refFile(ref), text, this.p('tmp'));
    // the head goes second: a crash between the two leaves the log one event ahead, which readers accept
    await atomicWriteFile(this.refHeadFile(ref), JSON.stringify({ count: log.length + 1, chain: ev.chain }) + '\n', this.p('tmp'));
    return ev;
  }

  /**
   * Attach a report to a stored bundle's validation history. Refused (exit 2)
   * unless it is about that adapter and counts for it: it names the bundle's
   * content hash, the adapter's base model hash and the run that made it.
   * Stored sealed: `report_sha256` (its content address) and `chain`.
   */
  async addReport(id: string, report: Record<string, unknown>, meta: WriteMeta = {}): Promise<{ report: StoredReport; bundle: StoredBundle }> {
    const problems = reportProblems(report);
    if (problems.length > 0) throw new ManifestError('report', problems);
    // a report carried over from elsewhere is sealed afresh here
    const { chain: _c, report_sha256: _r, recorded_at: _a, recorded_by: _b, ...rep } = normaliseReport(report) as StoredReport;
    return this.write(async () => {
      const sha = await this.resolve(id);
      const bundle = await this.get(sha);
      if (rep.adapter_id !== bundle.manifest.id) throw new RegistryError(`report is about adapter "${rep.adapter_id}", but ${id} is adapter "${bundle.manifest.id}" (${sha.slice(0, 12)})`, 2, 'E_USAGE');
      const unbound = reportBindingProblem(rep, sha, bundle.manifest);
      if (unbound !== null) throw new RegistryError(`report not attached to ${bundle.manifest.id} v${bundle.manifest.version} (${sha.slice(0, 12)}): ${unbound}`, 2, 'E_USAGE');
      const existing = await this.attachedReports(sha); // refuses a log cut below its head
      const content: StoredReport = { ...rep, recorded_at: this.now().toISOString(), recorded_by: meta.author ?? defaultAuthor() };
      const sealed: StoredReport = { ...content, report_sha256: reportSha256(content) };
      const prev = existing.length > 0 ? existing[existing.length - 1].chain ?? null : null;
      const stored: StoredReport = { ...sealed, chain: eventChain(prev, sealed) };
      const text = existing.map((l) => JSON.stringify(l) + '\n').join('') + JSON.stringify(stored) + '\n';
      await atomicWriteFile(this.reportsFile(sha), text, this.p('tmp'));
      await atomicWriteFile(this.reportsHeadFile(sha), JSON.stringify({ count: existing.length + 1, chain: stored.chain }) + '\n', this.p('tmp'));
      return { report: stored, bundle };
    });
  }

  // ---------------------------------------------------------------- checking

  /** Recompute every hash and check every ref and report log. Read-only; takes no lock. */
  async verify(): Promise<VerifyResult> {
    await this.requireExists();
    const problems: VerifyProblem[] = [];
    const notes: string[] = [];
    // Read refs and reports before listing objects: writers put an object in place before anything
    // names it, and never remove one, so a concurrent write cannot look like a missing object.
    const refNames = await this.refs();
    const logs = new Map<string, RefEvent[] | Error>();
    for (const r of refNames) {
      try {
        logs.set(r, await this.log(r));
      } catch (err) {
        logs.set(r, err as Error);
      }
    }
    let reportFiles: string[] = [];
    try {
      reportFiles = (await readdir(this.p('reports'))).sort();
    } catch {
      /* none */
    }
    const reportLogs = new Map<string, StoredReport[] | Error>();
    for (const f of reportFiles) {
      const sha = f.replace(/\.(ndjson|head)$/, '');
      if (/\.(ndjson|head)$/.test(f) && isSha256(sha) && !reportLogs.has(sha)) {
        try {
          reportLogs.set(sha, await this.attachedReports(sha));
        } catch (err) {
          reportLogs.set(sha, err as Error);
        }
      }
    }
    const intact = new Set<string>();
    const manifests = new Map<string, BundleManifest>();
    const bundles = new Map<string, StoredBundle>();
    let objectNames: string[] = [];
    try {
      objectNames = await readdir(this.p('objects'));
    } catch {
      /* no objects yet */
    }
    for (const name of objectNames.sort()) {
      if (!isSha256(name)) {
        problems.push({ area: 'object', target: `objects/${name}`, problem: 'not a bundle (names in objects/ must be content hashes)' });
        continue;
      }
      try {
        const b = await this.get(name);
        await readBundle(b.path); // full bundle checks (config, weights framing)
        intact.add(name);
        manifests.set(name, b.manifest);
        bundles.set(name, b);
      } catch (err) {
        const msg = err instanceof CorruptObjectError ? err.message.replace(/; it will not be used.*$/, '') : `object ${name}: ${(err as Error).message}`;
        problems.push({ area: 'object', target: name, problem: msg });
      }
    }
    const promotedOn: { where: string; bundle: string; report: string }[] = [];
    for (const r of refNames) {
      const log = logs.get(r) as RefEvent[] | Error;
      if (log instanceof Error) {
        problems.push({ area: 'ref', target: r, problem: log.message });
        continue;
      }
      const head = await readHead(this.refHeadFile(r)).catch(() => null);
      if (head !== null && !(head instanceof Error) && head.count < log.length) notes.push(`ref ${r}: its head record lags the history by ${log.length - head.count} event(s) (an interrupted write; the next write catches up)`);
      let prevChain: string | null = null;
      let prevBundle: string | null = null;
      log.forEach((ev, i) => {
        const where = `${r}@${i + 1}`;
        if (ev.version !== i + 1) problems.push({ area: 'ref', target: where, problem: `version is ${ev.version}, expected ${i + 1}` });
        if (ev.previous !== prevBundle) problems.push({ area: 'ref', target: where, problem: `previous is ${ev.previous}, but the bundle before was ${prevBundle}` });
        if (ev.chain !== eventChain(prevChain, ev)) problems.push({ area: 'ref', target: where, problem: 'hash chain broken (the history was edited)' });
        if (!isSha256(ev.bundle)) problems.push({ area: 'ref', target: where, problem: `bundle "${ev.bundle}" is not a hash` });
        else if (!intact.has(ev.bundle)) problems.push({ area: 'ref', target: where, problem: objectNames.includes(ev.bundle) ? `points to corrupted object ${ev.bundle}` : `points to missing object ${ev.bundle}` });
        else if (ev.report !== undefined) promotedOn.push({ where, bundle: ev.bundle, report: ev.report });
        prevChain = ev.chain;
        prevBundle = ev.bundle;
      });
    }
    // a promotion names the report it was let through on: that report must still be there, unchanged
    const assessed = new Map<string, AssessedReport[] | Error>();
    const assess = async (sha: string) => {
      if (!assessed.has(sha)) assessed.set(sha, await this.assessedHistory(bundles.get(sha)!).catch((e: Error) => e));
      return assessed.get(sha)!;
    };
    for (const p of promotedOn) {
      const hist = await assess(p.bundle);
      if (hist instanceof Error) continue; // the report log's own damage is reported below
      const hit = hist.find((h) => h.report_sha256 === p.report);
      if (!hit) problems.push({ area: 'ref', target: p.where, problem: `was promoted on report ${p.report.slice(0, 12)} of ${p.bundle.slice(0, 12)}, which is no longer in its validation history (edited or removed)` });
      else if (hit.refused !== null) problems.push({ area: 'ref', target: p.where, problem: `was promoted on report ${p.report.slice(0, 12)}, which no longer counts: ${hit.refused}` });
    }
    for (const f of reportFiles) {
      const sha = f.replace(/\.(ndjson|head)$/, '');
      const reps = reportLogs.get(sha);
      if (reps === undefined) {
        problems.push({ area: 'reports', target: `reports/${f}`, problem: 'unexpected file' });
        continue;
      }
      if (f.endsWith('.head')) continue; // judged with its log
      if (!objectNames.includes(sha)) problems.push({ area: 'reports', target: sha, problem: 'reports for an object that is not stored' });
      if (reps instanceof Error) {
        problems.push({ area: 'reports', target: sha, problem: reps.message });
        continue;
      }
      reps.forEach((rep, i) => {
        for (const p of reportProblems(rep)) problems.push({ area: 'reports', target: `${sha}#${i + 1}`, problem: `${p.path}: ${p.message}` });
        const m = manifests.get(sha);
        if (m && rep.adapter_id !== m.id) problems.push({ area: 'reports', target: `${sha}#${i + 1}`, problem: `report is about "${rep.adapter_id}", object is "${m.id}"` });
      });
      if (!intact.has(sha)) continue;
      // every attached report was bound and sealed when it was stored: one that no longer is was edited
      const hist = await assess(sha);
      if (hist instanceof Error) problems.push({ area: 'reports', target: sha, problem: hist.message });
      else for (const h of hist) if (h.source === 'registry' && h.refused !== null) problems.push({ area: 'reports', target: `${sha}#${h.index}`, problem: `report does not count: ${h.refused}` });
    }
    for (const sha of reportLogs.keys()) {
      if (!reportFiles.includes(`${sha}.ndjson`) && reportLogs.get(sha) instanceof Error) problems.push({ area: 'reports', target: sha, problem: (reportLogs.get(sha) as Error).message });
    }
    try {
      const leftovers = await readdir(this.p('tmp'));
      if (leftovers.length > 0) notes.push(`${leftovers.length} temporary file(s) from interrupted writes in tmp/ (removed by the next write)`);
    } catch {
      /* no tmp */
    }
    if (await exists(this.p('lock'))) notes.push('the writer lock is present (a write is running, or a killed writer left it; the next writer breaks a stale lock)');
    return { kind: 'registry_verify', registry: this.root, ok: problems.length === 0, objects: objectNames.filter(isSha256).length, refs: refNames.length, reports: reportLogs.size, problems, notes };
  }
}


