/**
 * The merging side of adapter-merge: `adapter-merge [FILES]` (merge the
 * adapter records read into one bundle), `--into REF` (consolidate with
 * what REF holds, validate, promote on pass), `explain` and `export`.
 */
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { InputError, UsageError } from '@catechism/core/cli';
import type { AnyRecord } from '@catechism/core/records';
import { BundleError, ManifestError, Registry, RegistryError, RefMovedError, adapterRecord, defaultRegistryDir, type BundleManifest } from './core.js';
import {
  MERGE_METHODS, MergeError, ablateBlocks, exportMerged, loadParent, mergeBundles, scoreAnswer, writeMergedBundle,
  type MergeMethod, type ParentBundle,
} from './merge-lib.js';
import type { Ctx } from './commands.js';

export interface MergeArgs {
  method: string;
  weights?: string;
  rank?: number;
  density?: number;
  drop?: number;
  by?: number;
  out?: string;
  add: boolean;
  id?: string;
  'adapter-version'?: number;
  validator?: string;
  'validator-timeout'?: number;
  ref?: string;
  target?: string;
}

/** Default --validator-timeout (seconds): a validator that hangs must not hold a nightly run forever. */
export const DEFAULT_VALIDATOR_TIMEOUT_S = 300;

const text = (s: string) => new Promise<void>((resolve, reject) => process.stdout.write(s, (err) => (err ? reject(err) : resolve())));

export function libError(e: unknown): unknown {
  if (e instanceof MergeError || e instanceof ManifestError || e instanceof BundleError) return new InputError(e.message);
  if (e instanceof RegistryError) return e.exitCode === 2 ? new UsageError(e.message) : e;
  if (e instanceof Error && e.name === 'ModelLoadError') return new InputError(e.message);
  if (e instanceof Error && e.name === 'FixturesNotFoundError') return new UsageError(`${e.message} (no default model: pass --model DIR)`);
  return e;
}

export function parseWeights(s: string | undefined): number[] | undefined {
  if (s === undefined) return undefined;
  const w = s.split(',').map((x) => Number(x.trim()));
  if (w.length === 0 || w.some((x, i) => !Number.isFinite(x) || s.split(',')[i].trim() === '')) throw new UsageError(`--weights: expected comma-separated numbers (e.g. 1,0.5,-1), got "${s}"`);
  return w;
}

export function checkMethod(m: string): MergeMethod {
  if (!(MERGE_METHODS as readonly string[]).includes(m)) throw new UsageError(`--method: expected one of ${MERGE_METHODS.join(', ')}, got "${m}"`);
  return m as MergeMethod;
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/** A parent named by an adapter record: its bundle directory, else the registry object with its hash. */
export async function parentOf(rec: AnyRecord, where: string, reg: Registry | null): Promise<ParentBundle> {
  const id = typeof rec.id === 'string' ? rec.id : '?';
  const sha = typeof rec.sha256 === 'string' && /^[0-9a-f]{64}$/.test(rec.sha256) ? rec.sha256 : undefined;
  const p = typeof rec.path === 'string' ? rec.path : '';
  const wrap = (e: unknown): unknown => {
    const err = libError(e);
    return err instanceof InputError || err instanceof UsageError ? new InputError(`${where}: adapter ${id}: ${err.message}`) : err;
  };
  if (p !== '' && isDir(p)) return loadParent(p, sha).catch((e) => { throw wrap(e); });
  const tried = [p !== '' ? `no bundle directory ${p}` : 'no path'];
  if (sha === undefined) tried.push('no sha256 to look up in a registry');
  else if (reg === null || !existsSync(path.join(reg.root, 'registry.json'))) tried.push(`no registry at ${reg?.root ?? '(none)'} to look up ${sha.slice(0, 12)}…`);
  else {
    try {
      const stored = await reg.get(sha);
      return await loadParent(stored.path, sha);
    } catch (e) {
      if (!(e instanceof RegistryError && e.code === 'E_NOT_FOUND')) throw wrap(e);
      tried.push(`no object ${sha.slice(0, 12)}… in ${reg.root}`);
    }
  }
  throw new InputError(`${where}: adapter ${id}: bundle not found (${tried.join('; ')})`);
}

export function energyLine(manifest: BundleManifest): string | null {
  const merge = manifest.merge as { energy?: Record<string, number>; residual?: Record<string, number> } | undefined;
  if (!merge?.energy) return null;
  const parts = Object.entries(merge.energy).map(([m, e]) => `${m} ${(100 * e).toFixed(2)}%`);
  return `energy kept at rank ${manifest.rank}: ${parts.join(', ')}`;
}

/**
 * Run the validator command on a bundle; returns its report records. The
 * command runs in its own process group, so when it outlives `timeoutS`
 * (0: no limit) it is killed with everything it started, and nothing is promoted.
 */
export async function runValidator(cmd: string, rec: AnyRecord, ctx: Ctx, timeoutS: number): Promise<AnyRecord[]> {
  ctx.log(`validating with: ${cmd}`);
  const out = await runRecordCommand(cmd, JSON.stringify(rec) + '\n', { role: 'validator', timeoutFlag: '--validator-timeout', timeoutS, then: 'nothing promoted' });
  return out.filter((v) => v.kind === 'report');
}

/**
 * Run a shell command that reads NDJSON records on stdin and writes NDJSON
 * records on stdout (the validator; consolidate's --retrain trainer); returns
 * what it wrote. It runs in its own process group, killed with everything it
 * started when it outlives `timeoutS` (0: no limit) or when we exit.
 */
export async function runRecordCommand(
  cmd: string,
  input: string,
  o: { role: string; timeoutFlag: string; timeoutS: number; env?: NodeJS.ProcessEnv; then: string },
): Promise<AnyRecord[]> {
  const stdout = await new Promise<string>((resolve, reject) => {
    const child = spawn('sh', ['-c', cmd], { stdio: ['pipe', 'pipe', 'inherit'], detached: true, ...(o.env ? { env: o.env } : {}) });
    const killGroup = () => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    };
    process.once('exit', killGroup); // the command never outlives us
    let timedOut = false;
    const timer = o.timeoutS > 0 ? setTimeout(() => ((timedOut = true), killGroup()), o.timeoutS * 1000) : null;
    const chunks: Buffer[] = [];
    child.stdout!.on('data', (d: Buffer) => chunks.push(d));
    child.stdin!.on('error', () => undefined); // a command need not read its input
    child.on('error', (e) => {
      if (timer) clearTimeout(timer);
      process.removeListener('exit', killGroup);
      reject(new RegistryError(`${o.role} "${cmd}" did not run: ${e.message}`, 1));
    });
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      process.removeListener('exit', killGroup);
      killGroup(); // anything it left running in its group
      if (timedOut) reject(new RegistryError(`${o.role} "${cmd}" did not finish within ${o.timeoutS} s (${o.timeoutFlag}); it was stopped; ${o.then}`, 1, 'E_TIMEOUT'));
      else if (code !== 0) reject(new RegistryError(`${o.role} "${cmd}" exited with status ${code ?? signal}; ${o.then}`, 1));
      else resolve(Buffer.concat(chunks).toString('utf8'));
    });
    child.stdin!.end(input);
  });
  const out: AnyRecord[] = [];
  for (const line of stdout.split('\n')) {
    if (line.trim() === '') continue;
    try {
      const v = JSON.parse(line) as AnyRecord;
      if (v && typeof v === 'object') out.push(v);
    } catch {
      throw new RegistryError(`${o.role} "${cmd}" wrote a line that is not JSON: ${line.slice(0, 80)}`, 1);
    }
  }
  return out;
}

/** The validator to use: --validator, else a `validate` on PATH, else none. */
export function findValidator(explicit: string | undefined): string | null {
  if (explicit !== undefined) return explicit;
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir !== '' && existsSync(path.join(dir, 'validate'))) return 'validate';
  }
  return null;
}

/** What REF holds now: its head bundle (null when REF is new) and every adapter already in it (its ancestry). */
export interface IntoState {
  current: ParentBundle | null;
  /** Content hashes of REF's bundle and its stored ancestors: merging them in again would count them twice. */
  held: Set<string>;
}

export async function readInto(ctx: Ctx, reg: Registry, ref: string): Promise<IntoState> {
  const held = new Set<string>();
  const head = existsSync(path.join(reg.root, 'registry.json')) ? await reg.head(ref).catch((e) => { throw libError(e); }) : null;
  if (!head) {
    ctx.log(`${ref} does not exist yet; it will hold the merge of the input alone`);
    return { current: null, held };
  }
  const stored = await reg.get(head.bundle).catch((e) => { throw libError(e); });
  const current = await loadParent(stored.path, head.bundle).catch((e) => { throw libError(e); });
  for (const q of await reg.ancestry(current.sha256)) held.add(q);
  ctx.log(`${ref} holds ${current.manifest.id} v${current.manifest.version} (${current.sha256.slice(0, 12)}); merging the input into it`);
  return { current, held };
}

/**
 * An adapter made by `lora-train --over` is a delta on the model it was
 * trained over: merged into REF when REF holds something else, the result is
 * not the model the edit was made for. Said on stderr (the validator still
 * judges the merged result); the cure is training again over REF.
 */
export function warnTrainedOver(ctx: Ctx, p: ParentBundle, ref: string, current: ParentBundle | null, where: string): void {
  const over = (p.manifest.hyperparameters as { trained_over?: { id?: unknown; version?: unknown; sha256?: unknown } } | undefined)?.trained_over;
  if (!over || typeof over.sha256 !== 'string' || over.sha256 === current?.sha256) return;
  const now = current ? `${current.manifest.id} v${current.manifest.version} (${current.sha256.slice(0, 12)})` : 'nothing';
  ctx.log(`warning: ${where}: ${p.manifest.id} was trained over ${String(over.id)} v${String(over.version)} (${over.sha256.slice(0, 12)}), but ${ref} holds ${now}: the merge is not the model it was trained for (train it again with lora-train --over ${ref})`);
}

export interface Candidate {
  /** The merged bundle's adapter record (path in the registry when stored). */
  rec: AnyRecord;
  sha: string;
  parents: number;
}

/**
 * Merge `parents` into one bundle, write it (to `out`, else a staging
 * directory) and store it when `store`. The id and version continue REF's
 * adapter when `into` is given.
 */
export async function buildCandidate(
  ctx: Ctx,
  reg: Registry,
  parents: ParentBundle[],
  o: { method: MergeMethod; weights?: number[]; into?: string; current: ParentBundle | null; store: boolean; out?: string; quiet?: boolean },
): Promise<Candidate> {
  const a = ctx.args;
  const id = a.id ?? (o.into !== undefined ? (o.current?.manifest.id ?? o.into) : undefined);
  const version = a['adapter-version'] ?? (o.current !== null && id === o.current.manifest.id ? o.current.manifest.version + 1 : undefined);
  let merged;
  try {
    merged = mergeBundles(parents, {
      method: o.method,
      ...(o.weights ? { weights: o.weights } : {}),
      ...(a.rank !== undefined ? { rank: a.rank } : {}),
      ...(a.density !== undefined ? { density: a.density } : {}),
      ...(a.drop !== undefined ? { drop: a.drop } : {}),
      ...(a.by !== undefined ? { by: a.by } : {}),
      seed: a.seed,
      ...(id !== undefined ? { id } : {}),
      ...(version !== undefined ? { version } : {}),
      author: a.author ?? process.env.USER ?? null,
      ...(a.message !== undefined ? { source: a.message } : {}),
    });
  } catch (e) {
    throw libError(e);
  }
  const el = energyLine(merged.manifest);
  if (el && !o.quiet) ctx.log(el);
  let outDir = o.out;
  let staging: string | null = null;
  if (outDir === undefined) {
    staging = mkdtempSync(path.join(os.tmpdir(), 'adapter-merge-'));
    outDir = path.join(staging, merged.manifest.id.replace(/[^A-Za-z0-9._-]/g, '_'));
  }
  try {
    const written = await writeMergedBundle(outDir, merged);
    let recPath = path.resolve(outDir);
    let sha = written.sha256;
    if (o.store) {
      const r = await reg.add(outDir).catch((e) => { throw libError(e); });
      recPath = r.bundle.path;
      sha = r.bundle.sha256;
      ctx.log(`${r.added ? 'stored' : 'already stored'}: ${merged.manifest.id} v${merged.manifest.version} ${sha}`);
    }
    const rec = { ...adapterRecord(merged.manifest, { path: recPath, sha256: sha }), merge: { method: o.method, ...(merged.result.energy ? { energy: merged.result.energy } : {}) } };
    if (a.text && !o.quiet) await text(`${sha}  ${rec.id} v${rec.version}  ${merged.manifest.method} rank ${rec.rank} of ${parents.length} adapters${el ? `  (${el})` : ''}\n`);
    return { rec, sha, parents: parents.length };
  } finally {
    if (staging !== null) rmSync(staging, { recursive: true, force: true });
  }
}

export async function runMerge(ctx: Ctx, files: string[]): Promise<void> {
  const a = ctx.args;
  const method = checkMethod(a.method);
  const weights = parseWeights(a.weights);
  if (a.out === undefined && !a.add && a.into === undefined) throw new UsageError('say where the merged bundle goes: --out DIR, --add (into the registry), or --into REF');
  if (a.out !== undefined && existsSync(a.out)) throw new UsageError(`--out ${a.out}: already exists (bundles are immutable; name a new directory)`);
  checkRankOptions(ctx, method);
  validatorTimeout(ctx);
  const regDir = a.registry ?? defaultRegistryDir();
  const reg = new Registry(regDir, { timeoutMs: a['lock-timeout'] * 1000 });

  const parents: ParentBundle[] = [];
  let current: ParentBundle | null = null;
  let seen = new Set<string>();
  if (a.into !== undefined) {
    const st = await readInto(ctx, reg, a.into);
    current = st.current;
    seen = st.held;
    if (current) parents.push(current);
  }
  let readCount = 0;
  for await (const { record, source, index } of ctx.read()) {
    readCount++;
    if (record.kind !== 'adapter') {
      if (!a.text) await ctx.out.write(record); // other records pass through, in order
      continue;
    }
    const p = await parentOf(record, `${source}: record ${index}`, reg);
    if (seen.has(p.sha256)) {
      ctx.log(`${source}: record ${index}: ${p.manifest.id} (${p.sha256.slice(0, 12)}) is already ${current !== null ? `in ${a.into} or ` : ''}in the merge; skipped`);
      continue;
    }
    seen.add(p.sha256);
    parents.push(p);
    if (a.into !== undefined) warnTrainedOver(ctx, p, a.into, current, `${source}: record ${index}`);
  }
  if (parents.length === 0 && readCount === 0) {
    // empty input is not an error in any tool (issue 18): say so and exit 0
    ctx.log(`no records in ${files.length > 0 ? files.join(', ') : 'stdin'}: nothing to merge`);
    return;
  }
  if (parents.length === 0) throw new InputError(`no adapter records in ${files.length > 0 ? files.join(', ') : 'stdin'}: nothing to merge`);
  if (current !== null && parents.length === 1) {
    ctx.log(`no new adapters for ${a.into}; nothing to do`);
    return;
  }
  const allWeights = weights && current !== null && weights.length === parents.length - 1 ? [1, ...weights] : weights;
  const cand = await buildCandidate(ctx, reg, parents, {
    method, ...(allWeights ? { weights: allWeights } : {}), ...(a.into !== undefined ? { into: a.into } : {}), current,
    store: a.add || a.into !== undefined, ...(a.out !== undefined ? { out: a.out } : {}),
  });
  if (!a.text) await ctx.out.write(cand.rec);
  if (a.into !== undefined) {
    try {
      await promoteInto(ctx, reg, a.into, cand.rec, cand.sha, current?.sha256 ?? null);
    } catch (e) {
      await ctx.out.end(); // what was stored and attached must be on stdout before the failing exit
      throw e;
    }
  }
}

export function checkRankOptions(ctx: Ctx, method: MergeMethod): void {
  const a = ctx.args;
  if (method !== 'svd' && method !== 'ties' && method !== 'dare' && a.rank !== undefined) throw new UsageError(`--rank is for svd, ties and dare (cat and linear keep every rank: Σ rᵢ)`);
  if ((method === 'svd' || method === 'ties' || method === 'dare') && a.rank === undefined) throw new UsageError(`--method ${method} needs --rank R (the rank of the result)`);
  if (method === 'scale' && a.by === undefined) throw new UsageError('--method scale needs --by S');
}

export function validatorTimeout(ctx: Ctx): number {
  const v = ctx.args['validator-timeout'] ?? DEFAULT_VALIDATOR_TIMEOUT_S;
  if (!(typeof v === 'number' && Number.isFinite(v) && v >= 0)) throw new UsageError(`--validator-timeout: expected seconds (a number ≥ 0; 0: no limit), got ${String(v)}`);
  return v;
}

export interface Verdict {
  /** The report records the validator wrote, as stored. */
  reports: AnyRecord[];
  /** Null when the gate lets the candidate through; else why not. */
  refusal: string | null;
}

/**
 * Validate a stored candidate with the validator and attach its reports to
 * the candidate's history (unless the validator recorded them itself, as
 * catechism's validate does for stored bundles). A report that does not count
 * for the candidate (wrong bundle or base model) is a validator failure
 * (exit 1): nothing is promoted on it.
 */
export async function validateCandidate(ctx: Ctx, reg: Registry, validator: string, rec: AnyRecord, sha: string, meta: { message: string | null; author: string | null }): Promise<Verdict> {
  const before = (await reg.attachedReports(sha)).length;
  const reports = await runValidator(validator, rec, ctx, validatorTimeout(ctx));
  if (reports.length === 0) throw new RegistryError(`validator "${validator}" wrote no report records; ${sha.slice(0, 12)} stored but NOT promoted`, 1);
  const recordedByValidator = (await reg.attachedReports(sha)).length > before;
  const stored: AnyRecord[] = [];
  if (recordedByValidator) {
    ctx.log(`the validator recorded its report(s) in ${sha.slice(0, 12)}'s history itself`);
    stored.push(...reports);
  } else {
    // adapter-merge ran the command, so a report that names no run is from this run of it
    const run = { tool: 'adapter-merge --validator', command: validator, id: randomUUID(), started_at: new Date().toISOString() };
    for (const r of reports) {
      try {
        stored.push((await reg.addReport(sha, { run, ...r, adapter_id: rec.id }, meta)).report);
      } catch (e) {
        if (e instanceof RegistryError && e.exitCode === 2) throw new RegistryError(`validator "${validator}" wrote a report that does not count: ${e.message}; ${sha.slice(0, 12)} stored but NOT promoted`, 1, 'E_GATE');
        throw libError(e);
      }
    }
  }
  const bundle = await reg.get(sha).catch((e) => { throw libError(e); });
  return { reports: stored, refusal: (await reg.gate(bundle)).refusal };
}

/** Validate the merged bundle (pluggable) and promote it to REF only on pass. */
async function promoteInto(ctx: Ctx, reg: Registry, ref: string, rec: AnyRecord, sha: string, mergedWith: string | null): Promise<void> {
  const a = ctx.args;
  const validator = findValidator(a.validator);
  const meta = { message: a.message ?? `consolidate into ${ref}`, author: a.author ?? null };
  if (validator === null) {
    if (!a.force) {
      throw new RegistryError(
        `no validator available (no --validator CMD and no \`validate\` on PATH): the merged bundle is stored as ${sha.slice(0, 12)} but NOT promoted to ${ref}; ` +
          `pass --validator CMD, or --force to promote unvalidated (logged)`,
        1,
      );
    }
    ctx.log(`warning: no validator available; promoting unvalidated because of --force (logged)`);
  } else {
    const v = await validateCandidate(ctx, reg, validator, rec, sha, meta);
    if (!a.text) for (const r of v.reports) await ctx.out.write(r);
  }
  await promoteCas(ctx, reg, ref, rec, sha, mergedWith, meta);
}

/**
 * Promote with compare-and-swap on the head we merged with: another writer may
 * have moved REF while we merged and validated, and promoting then would drop its change.
 */
export async function promoteCas(ctx: Ctx, reg: Registry, ref: string, rec: AnyRecord, sha: string, mergedWith: string | null, meta: { message: string | null; author: string | null }): Promise<void> {
  const a = ctx.args;
  const r = await reg.promote(ref, { id: sha }, { ...meta, force: a.force, expectHead: mergedWith }).catch((e) => {
    if (e instanceof RefMovedError) {
      throw new RegistryError(`${ref} moved while merging (it was ${e.expected?.slice(0, 12) ?? 'empty'}, now ${e.actual?.slice(0, 12) ?? 'empty'}); ${sha.slice(0, 12)} is stored but NOT promoted; run the merge again`, 1, 'E_MOVED');
    }
    throw libError(e);
  });
  if (r.event) {
    if (a.text) await text(`${ref}@${r.event.version}  ${r.event.action}  ${sha.slice(0, 12)}\n`);
    else await ctx.out.write(r.event);
    ctx.log(`${ref} → ${String(rec.id)} v${String(rec.version)} (${sha.slice(0, 12)})${r.event.action === 'force' ? ' [forced]' : ''}`);
  }
}


async function loadRef(ctx: Ctx, ref: string) {
  const reg = new Registry(ctx.args.registry ?? defaultRegistryDir());
  try {
    await reg.requireExists();
    const sha = await reg.resolve(ref);
    const stored = await reg.get(sha);
    const bundle = await loadParent(stored.path, sha);
    return { reg, bundle };
  } catch (e) {
    throw libError(e);
  }
}

/** --model, else the bundle's base_model.name when it is a model directory, else the bundled fixture model (loaded once by the runner). */
export async function loadBase(ctx: Ctx, withTokenizer: boolean, baseName?: string) {
  try {
    return await ctx.model({ ...(baseName !== undefined ? { fallback: baseName } : {}), tokenizer: withTokenizer });
  } catch (e) {
    throw libError(e);
  }
}

/**
 * Refuse a model the adapter was not trained on: its deltas would be applied to
 * other weights and the answers would mean nothing. --force overrides (warned).
 */
export async function checkBaseModel(ctx: Ctx, bundle: ParentBundle, dir: string): Promise<void> {
  const { modelSha256 } = await import('@catechism/core/edit');
  let have: string;
  try {
    have = modelSha256(dir);
  } catch (e) {
    throw new InputError(`model ${dir}: cannot hash its weights: ${(e as Error).message}`);
  }
  const want = bundle.manifest.base_model;
  if (have === want.sha256) return;
  const what = `adapter ${bundle.manifest.id} v${bundle.manifest.version} (${bundle.sha256.slice(0, 12)}) was made for base model ${want.name} (sha256 ${want.sha256}), but the model ${dir} has sha256 ${have}`;
  if (!ctx.args.force) throw new UsageError(`${what}; pass its base model with --model DIR, or --force to use this one anyway`);
  ctx.log(`warning: ${what}; going on because of --force`);
}

export async function runExport(ctx: Ctx, rest: string[]): Promise<void> {
  const ref = ctx.args.ref;
  if (ref === undefined || rest.length !== 1) throw new UsageError('export: expected `adapter-merge export --ref REF DIR`');
  const [out] = rest;
  const { bundle } = await loadRef(ctx, ref);
  const base = await loadBase(ctx, false, bundle.manifest.base_model.name);
  // a model directory without its tokenizer cannot be used by anything that loads it
  if (!existsSync(path.join(base.dir, 'tokenizer.json'))) throw new UsageError(`export: the base model ${base.dir} has no tokenizer.json, so the exported model could not be used; pass --model with a complete Hugging Face model directory`);
  await checkBaseModel(ctx, bundle, base.dir);
  if ((ctx.args as { 'export-format'?: string })['export-format'] === 'onnx') return (await import('./onnx.js')).exportOnnx(ctx, ref, bundle, base, out, text);
  let res;
  try {
    res = exportMerged(base.dir, base.model, [{ adapter: bundle.adapter, scale: bundle.manifest.scale ?? 1 }], out);
  } catch (e) {
    throw libError(e);
  }
  ctx.log(`exported ${base.dir} + ${bundle.manifest.id} v${bundle.manifest.version} (${bundle.sha256.slice(0, 12)}) → ${out}${res.untied ? ' (lm_head untied from the embeddings)' : ''}`);
  const rec = { kind: 'export', ref, bundle: bundle.sha256, adapter_id: bundle.manifest.id, adapter_version: bundle.manifest.version, base_model: base.dir, path: path.resolve(out), files: res.files };
  if (ctx.args.text) await text(`${path.resolve(out)}  ${bundle.manifest.id} v${bundle.manifest.version} folded into ${base.dir}\n`);
  else await ctx.out.write(rec);
}

interface ParentInfo {
  id: string;
  version?: number;
  sha256: string;
  method?: string;
  weight?: number;
  block?: { offset: number; rank: number };
  fact_ids?: string[];
  source?: string | null;
  author?: string | null;
  data_sha256?: string;
  created_at?: string;
}

export async function runExplain(ctx: Ctx, rest: string[]): Promise<void> {
  const ref = ctx.args.ref;
  if (ref === undefined || rest.length !== 1) throw new UsageError('explain: expected `adapter-merge explain --ref REF "prompt"`');
  const prompt = rest[0];
  const { reg, bundle } = await loadRef(ctx, ref);
  const base = await loadBase(ctx, true, bundle.manifest.base_model.name);
  await checkBaseModel(ctx, bundle, base.dir);
  const tok = base.tokenizer!;
  const model = await (await import('./onnx.js')).runtimeModel(ctx, base);
  const m = bundle.manifest;
  const full = [{ adapter: bundle.adapter, scale: m.scale ?? 1 }];
  // words the tokenizer cannot spell become its unknown token: the answer to such a prompt means little
  const { unknownWords } = await import('@catechism/core/models');
  const unknownInPrompt = unknownWords(tok, prompt);
  if (unknownInPrompt.length > 0) ctx.log(`warning: ${unknownInPrompt.length} word(s) of the prompt are unknown to the model's tokenizer (${unknownInPrompt.slice(0, 5).map((w) => JSON.stringify(w)).join(', ')}); they read as its unknown token`);
  if (ctx.args.target !== undefined && !ctx.args['allow-unknown']) {
    const bad = unknownWords(tok, ctx.args.target);
    if (bad.length > 0) throw new UsageError(`--target: the model's tokenizer cannot spell ${JSON.stringify(bad[0])} (it becomes its unknown token); use an answer the model can write, or --allow-unknown`);
  }
  const promptIds = tok.encode(prompt);
  let answerIds: number[];
  try {
    answerIds = ctx.args.target !== undefined ? tok.encode(ctx.args.target, { addSpecialTokens: false }) : [scoreAnswer(model, full, promptIds, []).top1];
  } catch (e) {
    throw libError(e);
  }
  if (answerIds.length === 0) throw new UsageError('--target encodes to no tokens');
  const score = (active: typeof full) => scoreAnswer(model, active, promptIds, answerIds);
  const adapted = score(full);
  const baseline = score([]);
  const merge = m.merge as { method?: string; parents?: ParentInfo[] } | undefined;
  const parents: ParentInfo[] = merge?.parents ?? [{ id: m.id, version: m.version, sha256: bundle.sha256, method: m.method, fact_ids: m.fact_ids, source: m.source, author: m.author, data_sha256: m.data_sha256, created_at: m.created_at }];
  const factsById = new Map(m.facts.map((f) => [String(f.id), f]));
  const decode = (id: number) => tok.decode([id]);
  const contributions = [];
  for (const p of parents) {
    let ablated: ReturnType<typeof score> | null = null;
    let how: string;
    if (!merge?.parents || merge.method === 'negate' || merge.method === 'scale') {
      ablated = baseline;
      how = 'adapter removed (base model)';
    } else if (p.block) {
      ablated = score([{ adapter: ablateBlocks(bundle.adapter, [p.block]), scale: m.scale ?? 1 }]);
      how = `rank block ${p.block.offset}..${p.block.offset + p.block.rank - 1} zeroed (exact)`;
    } else {
      try {
        const stored = await reg.get(p.sha256);
        const pb = await loadParent(stored.path, p.sha256);
        ablated = score([...full, { adapter: pb.adapter, scale: -(p.weight ?? 1) * (pb.manifest.scale ?? 1) }]);
        how = merge.method === 'cat' || merge.method === 'linear'
          ? `parent subtracted (exact up to rounding: the ${merge.method} merge was re-factored at full rank, so it has no rank blocks)`
          : `parent subtracted (approximate: the ${merge.method} merge is not linear)`;
      } catch {
        how = `parent ${p.sha256.slice(0, 12)} is not in the registry; cannot ablate`;
      }
    }
    contributions.push({
      id: p.id,
      version: p.version ?? null,
      sha256: p.sha256,
      method: p.method ?? null,
      weight: p.weight ?? 1,
      fact_ids: p.fact_ids ?? [],
      facts: (p.fact_ids ?? []).map((f) => factsById.get(f)).filter((f) => f !== undefined),
      source: p.source ?? null,
      author: p.author ?? null,
      data_sha256: p.data_sha256 ?? null,
      created_at: p.created_at ?? null,
      ablation: how,
      ablated: ablated ? { top1: decode(ablated.top1), logprob: ablated.logprob } : null,
      delta_logprob: ablated ? adapted.logprob - ablated.logprob : null,
      top1_changes: ablated ? ablated.top1 !== adapted.top1 : null,
    });
  }
  // governance (issue 25): who approved what makes the answer, and which experts route it
  const { approvalsByBundle, answerExperts } = await import('./explain-extra.js');
  const approvals = await approvalsByBundle(reg, [bundle.sha256, ...contributions.map((c) => c.sha256)]);
  for (const c of contributions) Object.assign(c, { approvals: approvals.get(c.sha256) ?? [] });
  const experts = answerExperts(model, full, promptIds);
  const rec = {
    kind: 'explain',
    ref,
    bundle: bundle.sha256,
    adapter_id: m.id,
    adapter_version: m.version,
    method: m.method,
    prompt,
    answer: tok.decode(answerIds),
    base: { top1: decode(baseline.top1), logprob: baseline.logprob },
    adapted: { top1: decode(adapted.top1), logprob: adapted.logprob },
    contributions,
    approvals: approvals.get(bundle.sha256) ?? [],
    ...(experts ? { experts } : {}),
  };
  if (ctx.args.text) {
    const f = (x: number) => x.toFixed(3);
    let s = `${ref}: ${m.id} v${m.version} (${m.method}, ${bundle.sha256.slice(0, 12)})\nprompt ${JSON.stringify(prompt)}  answer ${JSON.stringify(rec.answer)}\n`;
    s += `  base:    top-1 ${JSON.stringify(rec.base.top1)}  log P(answer) ${f(baseline.logprob)}\n  adapted: top-1 ${JSON.stringify(rec.adapted.top1)}  log P(answer) ${f(adapted.logprob)}\n`;
    for (const c of contributions) {
      s += `  ${c.id} v${c.version ?? '?'} ${c.sha256.slice(0, 12)} facts ${c.fact_ids.join(',') || '-'} by ${c.author ?? '?'} from ${c.source ?? '?'}\n`;
      s += c.ablated ? `    without it: top-1 ${JSON.stringify(c.ablated.top1)}  Δ log P(answer) ${f(c.delta_logprob!)}${c.top1_changes ? '  (top-1 changes)' : ''}  [${c.ablation}]\n` : `    [${c.ablation}]\n`;
      const ap = approvals.get(c.sha256) ?? [];
      if (ap.length > 0) s += `    approved by ${ap.map((x) => `${x.approver} for ${x.ref}${x.signature_ok ? '' : ' [BAD SIGNATURE]'}`).join(', ')}\n`;
    }
    const own = approvals.get(bundle.sha256) ?? [];
    s += `  approvals of ${bundle.sha256.slice(0, 12)}: ${own.length > 0 ? own.map((x) => `${x.approver} for ${x.ref}${x.signature_ok ? '' : ' [BAD SIGNATURE]'}`).join(', ') : 'none'}\n`;
    if (experts) {
      s += '  experts at the answer position (base → adapted):\n';
      for (const e of experts) s += `    layer ${e.layer}: [${e.base.join(', ')}] → [${e.adapted.join(', ')}]${e.changed ? '  (changed)' : ''}\n`;
    }
    await text(s);
  } else await ctx.out.write(rec);
}
