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
 *     config.json                governance: approvers (ed25519 public keys), protected refs, risk rules, canary thresholds
 *     approvals/<ref>.ndjson     signed approvals for promotions to a ref (hash-chained, with a .head)
 *     canary/<sha256>.ndjson     canary reports of a bundle (hash-chained, with a .head)
 *     watch/<ref>.ndjson         drift-watch figures of a ref's live versions (hash-chained, with a .head)
 *
 * A ref name may carry one namespace (`acme/live`): its files live in a
 * subdirectory (`refs/acme/live.ndjson`), and only the namespace's approvers
 * may approve promotions to it (governance.ts).
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
import type { CanaryReport, WatchFigures } from '../records/schema.js';
import {
  approvalId, bundleRisk, defaultConfig, normaliseConfig, readPrivateKey, readPublicKey, publicKeyId, publicKeyPem, refNamespace, signApproval, signatureProblem,
  type Approval, type Approver, type RegistryConfig, type Risk,
} from './governance.js';
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
  /** Promote over a failing or missing report (logged as "force"). Never bypasses approvals. */
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
  /** A rollback the drift watch made (recorded as `automatic: true` with the failing `figures`). */
  automatic?: { figures: Record<string, number>; failures: string[] };
}

/** What a promotion of a bundle to a ref needs in approvals, and what it has. */
export interface ApprovalStatus {
  ref: string;
  bundle: string;
  report: string | null;
  risk: Risk;
  risk_reasons: string[];
  /** Approvals required (0: none). */
  required: number;
  /** Why they are required. */
  because: string[];
  /** Distinct approvers whose approvals count for exactly this bundle and report. */
  valid: Approval[];
  /** Approvals on record for this bundle that do not count, and why. */
  invalid: { approval: Approval; problem: string }[];
}

/** A canary report: live vs candidate on logged traffic (stored in canary/<sha256>.ndjson, chained). */
export type CanaryRecord = CanaryReport & { chain?: string };

/** One drift-watch measurement of a ref's current version (stored in watch/<ref>.ndjson, chained). */
export type WatchRecord = WatchFigures & { when?: string; chain?: string };

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

const REF_PART = '[A-Za-z0-9][A-Za-z0-9._-]{0,99}';
/** `name` or `namespace/name`. */
const REF_NAME = new RegExp(`^(?:${REF_PART}/)?${REF_PART}$`);
const HEX_PREFIX = /^[0-9a-f]{6,64}$/;

export function checkRefName(name: string): void {
  if (!REF_NAME.test(name) || name.split('/').some((p) => p.endsWith('.ndjson')) || name.includes('..')) {
    throw new RegistryError(`invalid ref name "${name}": use letters, digits, '.', '_', '-' (starting with a letter or digit, at most 100 characters), optionally after one namespace and '/' (acme/live)`, 2, 'E_USAGE');
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
  private configFile(): string {
    return this.p('config.json');
  }
  /** A per-ref log beside the ref's history (approvals/, watch/); a namespaced ref's in a subdirectory. */
  private refLogFiles(area: 'approvals' | 'watch', ref: string): [string, string] {
    return [this.p(area, `${ref}.ndjson`), this.p(area, `${ref}.head`)];
  }
  private canaryFiles(sha256: string): [string, string] {
    return [this.p('canary', `${sha256}.ndjson`), this.p('canary', `${sha256}.head`)];
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
    return this.logNames('refs');
  }

  /** The ref names that have a log (or its head) in `area`, namespaced ones (`ns/name`) included. */
  private async logNames(area: string): Promise<string[]> {
    const names = new Set<string>();
    const scan = async (dir: string, prefix: string) => {
      let entries;
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch {
        return;
      }
      for (const e of entries) {
        if (e.isDirectory() && prefix === '' && new RegExp(`^${REF_PART}$`).test(e.name)) await scan(path.join(dir, e.name), `${e.name}/`);
        const m = /^(.*)\.(ndjson|head)$/.exec(e.name);
        if (e.isFile() && m && REF_NAME.test(prefix + m[1]) && !m[1].endsWith('.ndjson')) names.add(prefix + m[1]);
      }
    };
    await scan(this.p(area), '');
    return [...names].sort();
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

  // ---------------------------------------------------------------- governance (reading)

  /** The registry's governance config (defaults when it has none). */
  async config(): Promise<RegistryConfig> {
    const text = await readTextOrNull(this.configFile());
    if (text === null) return defaultConfig();
    try {
      return normaliseConfig(JSON.parse(text), this.configFile());
    } catch (e) {
      throw new RegistryError(`${this.configFile()}: ${(e as Error).message.replace(`${this.configFile()}: `, '')}; fix or restore it`, 1, 'E_CORRUPT');
    }
  }

  /** Approvals recorded for promotions to REF, oldest first. Throws E_CORRUPT when the log was cut. */
  async approvals(ref: string): Promise<Approval[]> {
    checkRefName(ref);
    const [f, h] = this.refLogFiles('approvals', ref);
    return readChainedLog<Approval>(f, h, `the approvals of ref "${ref}"`);
  }

  /** Canary reports of a bundle, oldest first. */
  async canaries(sha256: string): Promise<CanaryRecord[]> {
    const [f, h] = this.canaryFiles(sha256);
    return readChainedLog<CanaryRecord & { chain?: string }>(f, h, `the canary log of ${sha256.slice(0, 12)}`);
  }

  /** The drift watch's measurements of REF, oldest first. */
  async watchLog(ref: string): Promise<WatchRecord[]> {
    checkRefName(ref);
    const [f, h] = this.refLogFiles('watch', ref);
    return readChainedLog<WatchRecord & { chain?: string }>(f, h, `the watch history of ref "${ref}"`);
  }

  /**
   * What promoting `bundle` to `ref` needs in approvals: the ref's protection
   * (config `protected`), and one approval for a high-risk adapter where the
   * ref's namespace has approvers (with none, nobody could approve: the risk
   * is recorded and warned about instead). An approval counts when its
   * signature holds, its key is an approver of the ref's namespace now, and
   * it names exactly this ref, bundle and report; each approver counts once.
   */
  async approvalStatus(ref: string, bundle: StoredBundle, report: string | null, cfg?: RegistryConfig): Promise<ApprovalStatus> {
    const config = cfg ?? (await this.config());
    const ns = refNamespace(ref);
    const approvers = config.approvers.filter((a) => a.namespace === ns);
    const { risk, reasons } = bundleRisk(bundle.manifest, config.risk);
    const because: string[] = [];
    let required = 0;
    const prot = config.protected[ref] ?? 0;
    if (prot > 0) {
      required = prot;
      because.push(`${ref} is protected (${prot} approval(s))`);
    }
    if (risk === 'high' && approvers.length > 0) {
      required = Math.max(required, 1);
      because.push(`the adapter is high risk (${reasons.slice(0, 3).join('; ')}${reasons.length > 3 ? '; …' : ''})`);
    }
    const valid: Approval[] = [];
    const invalid: ApprovalStatus['invalid'] = [];
    const seen = new Set<string>();
    for (const a of await this.approvals(ref)) {
      if (a.bundle !== bundle.sha256) continue;
      const sig = signatureProblem(a);
      const who = approvers.find((x) => x.key_id === a.key_id);
      let problem: string | null = null;
      if (sig !== null) problem = sig;
      else if (a.ref !== ref) problem = `it approves ref ${a.ref}, not ${ref}`;
      else if (!who) problem = `key ${a.key_id.slice(0, 12)} (${a.approver}) is not an approver of ${ns === null ? 'refs without a namespace' : `namespace ${ns}`}`;
      else if (a.report !== report) problem = `it approves report ${String(a.report).slice(0, 12)}, but the gate judges by ${String(report).slice(0, 12)}`;
      if (problem !== null) invalid.push({ approval: a, problem });
      else if (!seen.has(a.key_id)) {
        seen.add(a.key_id);
        valid.push(a);
      }
    }
    return { ref, bundle: bundle.sha256, report, risk, risk_reasons: reasons, required, because, valid, invalid };
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
      const own = new Set(['objects', 'refs', 'reports', 'tmp', 'lock', 'lock.break', 'config.json', 'approvals', 'canary', 'watch']);
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
   * passes (and its latest canary on REF, if any, passed), or `force` (then
   * logged as action "force" with the reason). Then, whatever `force` says,
   * the approvals approvalStatus() asks for must be there.
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
      const gate = await this.gate(bundle);
      let { refusal } = gate;
      const { report } = gate;
      // a canary that ran for this ref and refused the bundle is a failing gate too
      const canary = (await this.canaries(sha)).filter((c) => c.ref === ref).pop();
      if (refusal === null && canary && !canary.pass) refusal = `its latest canary on ${ref} refused it (${canary.failures.join('; ').slice(0, 200)})`;
      if (refusal !== null && !opts.force) {
        throw new RegistryError(`refusing to promote ${bundle.manifest.id} v${bundle.manifest.version} (${sha.slice(0, 12)}) to ${ref}: ${refusal}; attach a passing report with \`adapter-merge report\`, or use --force (logged)`, 1, 'E_GATE');
      }
      // approvals are checked under the lock and are never bypassed by --force: they are the sign-off --force would otherwise forge
      const st = await this.approvalStatus(ref, bundle, report?.report_sha256 ?? null);
      if (st.valid.length < st.required) {
        const bad = st.invalid.length > 0 ? `; not counted: ${st.invalid.slice(0, 3).map((x) => `${x.approval.approver} (${x.problem})`).join('; ')}` : '';
        throw new RegistryError(
          `refusing to promote ${bundle.manifest.id} v${bundle.manifest.version} (${sha.slice(0, 12)}) to ${ref}: it needs ${st.required} approval(s) by distinct approvers (${st.because.join('; ')}), it has ${st.valid.length}${bad}; approvers run \`adapter-merge approve ${ref} ${sha.slice(0, 12)} --key KEY\` (--force does not replace approvals)`,
          1,
          'E_APPROVAL',
        );
      }
      const ev = await this.appendEvent(ref, log, {
        action: refusal !== null ? 'force' : 'promote',
        bundle,
        ...(refusal !== null ? { forced_over: refusal } : { report: report!.report_sha256 }),
        governance: { risk: st.risk, approvals: st.required > 0 ? st.valid.map(approvalId) : undefined },
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
      const ev = await this.appendEvent(ref, log, { action: 'rollback', bundle, to_version: to, ...(opts.automatic ? { automatic: opts.automatic } : {}), meta: opts });
      return { event: ev, bundle };
    });
  }

  private async appendEvent(
    ref: string,
    log: RefEvent[],
    e: {
      action: RefAction;
      bundle: StoredBundle;
      to_version?: number;
      forced_over?: string;
      report?: string;
      governance?: { risk: Risk; approvals?: string[] };
      automatic?: { figures: Record<string, number>; failures: string[] };
      meta: WriteMeta;
    },
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
      ...(e.governance ? { risk: e.governance.risk } : {}),
      ...(e.governance?.approvals ? { approvals: e.governance.approvals } : {}),
      ...(e.automatic ? { automatic: true, figures: e.automatic.figures, failures: e.automatic.failures } : {}),
      when: this.now().toISOString(),
      why: e.meta.message ?? null,
      who: e.meta.author ?? defaultAuthor(),
    };
    const ev: RefEvent = { ...base, chain: eventChain(prev ? prev.chain : null, base) };
    // Append-only by construction: the new file is the old bytes plus one line, swapped in atomically.
    const text = log.map((x) => JSON.stringify(x) + '\n').join('') + JSON.stringify(ev) + '\n';
    if (refNamespace(ref) !== null) await mkdirDurable(path.dirname(this.refFile(ref)));
    await this.catchUpHead(this.refHeadFile(ref), log);
    await atomicWriteFile(this.refFile(ref), text, this.p('tmp'));
    // the head goes second: a crash between the two leaves the log one event ahead, which readers accept
    await atomicWriteFile(this.refHeadFile(ref), JSON.stringify({ count: log.length + 1, chain: ev.chain }) + '\n', this.p('tmp'));
    return ev;
  }

  /**
   * A first write killed between its log and its head leaves a log with no head, which readers
   * accept for one line only: write the head of what is there before appending, or a second kill
   * in the same window leaves two lines and no head, which readers refuse as damage. Under the lock.
   */
  private async catchUpHead(headFile: string, existing: ReadonlyArray<{ chain?: string }>): Promise<void> {
    if (existing.length === 0 || (await readHead(headFile)) !== null) return;
    const last = existing[existing.length - 1].chain;
    if (typeof last !== 'string') return;
    await atomicWriteFile(headFile, JSON.stringify({ count: existing.length, chain: last }) + '\n', this.p('tmp'));
  }

  /** Append one sealed line to a hash-chained log and then its head (the order readers rely on). Call under the lock. */
  private async appendChained<T extends object>(file: string, headFile: string, existing: { chain?: string }[], content: T): Promise<T & { chain: string }> {
    const prev = existing.length > 0 ? existing[existing.length - 1].chain ?? null : null;
    const stored = { ...content, chain: eventChain(prev, content) };
    await mkdirDurable(path.dirname(file));
    const text = existing.map((l) => JSON.stringify(l) + '\n').join('') + JSON.stringify(stored) + '\n';
    await this.catchUpHead(headFile, existing);
    await atomicWriteFile(file, text, this.p('tmp'));
    await atomicWriteFile(headFile, JSON.stringify({ count: existing.length + 1, chain: stored.chain }) + '\n', this.p('tmp'));
    return stored;
  }

  /** Change the governance config under the lock (written atomically). */
  async updateConfig(fn: (c: RegistryConfig) => RegistryConfig | Promise<RegistryConfig>): Promise<RegistryConfig> {
    return this.write(async () => {
      const next = await fn(await this.config());
      await atomicWriteFile(this.configFile(), JSON.stringify(next, null, 2) + '\n', this.p('tmp'));
      return next;
    });
  }

  /** Add an approver (an ed25519 public key, PEM) for refs without a namespace (null) or for one namespace. */
  async addApprover(name: string, publicPem: string, namespace: string | null, meta: WriteMeta = {}): Promise<Approver> {
    if (!/^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$/.test(name)) throw new RegistryError(`invalid approver name "${name}": letters, digits, '.', '_', '@', '-'`, 2, 'E_USAGE');
    if (namespace !== null && !new RegExp(`^${REF_PART}$`).test(namespace)) throw new RegistryError(`invalid namespace "${namespace}"`, 2, 'E_USAGE');
    let keyId: string, pem: string;
    try {
      const pub = readPublicKey(publicPem);
      keyId = publicKeyId(pub);
      pem = publicKeyPem(pub);
    } catch (e) {
      throw new RegistryError(`approver ${name}: not an ed25519 public key: ${(e as Error).message}`, 2, 'E_USAGE');
    }
    const a: Approver = { name, namespace, public_key: pem, key_id: keyId, added_at: this.now().toISOString(), added_by: meta.author ?? defaultAuthor() };
    await this.updateConfig((c) => {
      const clash = c.approvers.find((x) => x.namespace === namespace && (x.name === name || x.key_id === keyId));
      if (clash) throw new RegistryError(`${clash.name} (key ${clash.key_id.slice(0, 12)}) is already an approver of ${namespace ?? 'refs without a namespace'}`, 2, 'E_USAGE');
      return { ...c, approvers: [...c.approvers, a] };
    });
    return a;
  }

  /** Require `approvals` distinct approvers' signatures for promotions to REF (0 lifts it). */
  async protect(ref: string, approvals: number): Promise<RegistryConfig> {
    checkRefName(ref);
    if (!Number.isInteger(approvals) || approvals < 0) throw new RegistryError(`--approvals: expected a whole number ≥ 0, got ${approvals}`, 2, 'E_USAGE');
    return this.updateConfig((c) => {
      const prot = { ...c.protected };
      if (approvals === 0) delete prot[ref];
      else prot[ref] = approvals;
      return { ...c, protected: prot };
    });
  }

  /**
   * Sign and record an approval of bundle ID for promotion to REF, with the
   * private key `keyPem` (PKCS#8 PEM). Refused (exit 1) when the key is not an
   * approver of REF's namespace. It approves the bundle together with the
   * report the gate judges it by now (null when none counts). Approving the
   * same bundle and report twice with one key records nothing new.
   */
  async approve(ref: string, id: string, keyPem: string, note: string | null, meta: WriteMeta = {}): Promise<{ approval: Approval; added: boolean; status: ApprovalStatus }> {
    checkRefName(ref);
    let key;
    try {
      key = readPrivateKey(keyPem);
    } catch (e) {
      throw new RegistryError(`--key: not an ed25519 private key: ${(e as Error).message}`, 2, 'E_USAGE');
    }
    const keyId = publicKeyId(readPublicKey(keyPem));
    return this.write(async () => {
      const sha = await this.resolve(id);
      const bundle = await this.get(sha);
      const config = await this.config();
      const ns = refNamespace(ref);
      const who = config.approvers.find((a) => a.key_id === keyId && a.namespace === ns);
      if (!who) {
        const elsewhere = config.approvers.filter((a) => a.key_id === keyId).map((a) => a.namespace ?? '(no namespace)');
        throw new RegistryError(
          `key ${keyId.slice(0, 12)} is not an approver of ${ns === null ? 'refs without a namespace' : `namespace ${ns}`}${elsewhere.length > 0 ? ` (it approves ${elsewhere.join(', ')} only)` : ''}; nothing recorded`,
          1,
          'E_APPROVER',
        );
      }
      const report = (await this.gate(bundle)).report?.report_sha256 ?? null;
      const existing = await this.approvals(ref);
      const dup = existing.find((a) => a.key_id === keyId && a.bundle === sha && a.report === report && signatureProblem(a) === null);
      if (dup) return { approval: dup, added: false, status: await this.approvalStatus(ref, bundle, report, config) };
      const content = { ref, bundle: sha, report, key_id: keyId, when: this.now().toISOString(), note };
      const rec = {
        kind: 'approval' as const,
        ...content,
        adapter_id: bundle.manifest.id,
        adapter_version: bundle.manifest.version,
        approver: who.name,
        public_key: who.public_key,
        signature: signApproval(content, key),
        recorded_by: meta.author ?? defaultAuthor(),
      };
      const [f, h] = this.refLogFiles('approvals', ref);
      const stored = (await this.appendChained(f, h, existing, rec)) as Approval;
      return { approval: stored, added: true, status: await this.approvalStatus(ref, bundle, report, config) };
    });
  }

  /** Store a canary report with its bundle (canary/<sha256>.ndjson). */
  async addCanary(rec: CanaryRecord, meta: WriteMeta = {}): Promise<CanaryRecord> {
    return this.write(async () => {
      await this.get(rec.bundle);
      const [f, h] = this.canaryFiles(rec.bundle);
      return this.appendChained(f, h, await this.canaries(rec.bundle), { ...rec, recorded_at: this.now().toISOString(), recorded_by: meta.author ?? defaultAuthor() });
    });
  }

  /**
   * The drift watch: record REF's figures for its current version, and when
   * they fail, roll REF back to the last good version — the latest earlier
   * version whose bundle differs and whose own watch figures (if any) passed —
   * logged as an automatic rollback with the failing figures. Returns the
   * record and the rollback event (null when none was needed or possible).
   */
  async watch(ref: string, m: { metrics: Record<string, number>; pass: boolean; failures: string[]; bundle?: string }, meta: WriteMeta = {}): Promise<{ record: WatchRecord; rollback: RefEvent | null; note: string | null }> {
    checkRefName(ref);
    return this.write(async () => {
      const log = await this.log(ref);
      if (log.length === 0) throw new RegistryError(`ref "${ref}" has no history in ${this.root}`, 2, 'E_NOT_FOUND');
      const head = log[log.length - 1];
      if (m.bundle !== undefined && m.bundle !== head.bundle) throw new RegistryError(`the figures are about bundle ${m.bundle.slice(0, 12)}, but ${ref} now points to ${head.bundle.slice(0, 12)} (it moved while the watch measured); nothing recorded`, 1, 'E_MOVED');
      const history = await this.watchLog(ref);
      let target: RefEvent | null = null;
      let note: string | null = null;
      if (!m.pass) {
        const failed = new Set(history.filter((w) => !w.pass).map((w) => w.bundle));
        failed.add(head.bundle);
        for (let i = log.length - 2; i >= 0 && target === null; i--) if (!failed.has(log[i].bundle)) target = log[i];
        if (target === null) note = `no earlier version of ${ref} without failing figures; ${ref} stays where it is`;
      }
      const rec: WatchRecord = {
        kind: 'watch',
        ref,
        version: head.version,
        bundle: head.bundle,
        adapter_id: head.adapter_id,
        metrics: m.metrics,
        pass: m.pass,
        failures: m.failures,
        when: this.now().toISOString(),
        rolled_back_to: target ? target.version : null,
      };
      const [f, h] = this.refLogFiles('watch', ref);
      const stored = await this.appendChained(f, h, history, rec);
      let rollback: RefEvent | null = null;
      if (target) {
        const bundle = await this.get(target.bundle);
        rollback = await this.appendEvent(ref, log, {
          action: 'rollback',
          bundle,
          to_version: target.version,
          automatic: { figures: m.metrics, failures: m.failures },
          meta: { message: meta.message ?? `automatic rollback: drift watch failed (${m.failures.join('; ').slice(0, 200)})`, author: meta.author ?? 'watch-live' },
        });
      }
      return { record: stored, rollback, note };
    });
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
      // as every chained log: a head a killed write left missing is caught up first
      const stored = (await this.appendChained(this.reportsFile(sha), this.reportsHeadFile(sha), existing, sealed)) as StoredReport;
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
    // approvals: every line's chain and signature; a promotion's approvals must still be there and hold
    const goodApprovals = new Map<string, Set<string>>();
    for (const r of await this.logNames('approvals')) {
      const ids = new Set<string>();
      goodApprovals.set(r, ids);
      let list: Approval[];
      try {
        list = await this.approvals(r);
      } catch (err) {
        problems.push({ area: 'approvals', target: r, problem: (err as Error).message });
        continue;
      }
      let prev: string | null = null;
      list.forEach((a, i) => {
        const where = `${r}#${i + 1}`;
        if (a.chain !== eventChain(prev, a)) problems.push({ area: 'approvals', target: where, problem: 'hash chain broken (the approvals log was edited)' });
        const sig = signatureProblem(a);
        if (sig !== null) problems.push({ area: 'approvals', target: where, problem: `approval by ${String(a.approver)} of ${String(a.bundle).slice(0, 12)}: ${sig}` });
        else if (a.ref !== r) problems.push({ area: 'approvals', target: where, problem: `approves ref ${a.ref}, but is in the log of ${r}` });
        else ids.add(approvalId(a));
        prev = a.chain;
      });
    }
    for (const r of refNames) {
      const log = logs.get(r);
      if (!Array.isArray(log)) continue;
      for (const ev of log) {
        const ids = (ev as { approvals?: unknown }).approvals;
        if (!Array.isArray(ids)) continue;
        for (const id of ids) {
          if (!goodApprovals.get(r)?.has(String(id))) problems.push({ area: 'ref', target: `${r}@${ev.version}`, problem: `was promoted on approval ${String(id).slice(0, 12)}, which is no longer in the approvals of ${r} or no longer verifies` });
        }
      }
    }
    // the other sealed logs (canary reports, watch figures): chains intact
    const chainCheck = async (area: string, target: string, read: () => Promise<{ chain?: string }[]>) => {
      try {
        let prev: string | null = null;
        (await read()).forEach((x, i) => {
          if (x.chain !== eventChain(prev, x)) problems.push({ area, target: `${target}#${i + 1}`, problem: `hash chain broken (the ${area} log was edited)` });
          prev = x.chain ?? null;
        });
      } catch (err) {
        problems.push({ area, target, problem: (err as Error).message });
      }
    };
    for (const r of await this.logNames('watch')) await chainCheck('watch', r, () => this.watchLog(r));
    for (const f of await readdir(this.p('canary')).catch(() => [] as string[])) {
      const sha = f.replace(/\.(ndjson|head)$/, '');
      if (f.endsWith('.ndjson') && isSha256(sha)) await chainCheck('canary', sha, () => this.canaries(sha));
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


