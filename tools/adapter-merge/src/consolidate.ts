/**
 * `adapter-merge consolidate INBOX --into REF`: the nightly job, so that one
 * bad adapter never blocks every later one.
 *
 * 1. Takes the inbox's lock (`INBOX.lock`; a second run at the same time
 *    exits 1 saying another run holds the inbox), renames INBOX to
 *    `INBOX.pending-<time>` (records appended during the run wait for the
 *    next night) and reads every pending file's `adapter` records.
 * 2. Merges them all with what REF holds and validates the candidate. If it
 *    passes, that is the result. If not, bisects: the pending adapters are
 *    split in halves, each half is tried on top of REF plus what was
 *    accepted so far; a half that passes is accepted whole, one that fails
 *    is split again, and a single adapter that fails is quarantined. With one
 *    bad adapter among n this costs about 2·log2(n) validations; adapters
 *    that are fine alone but break together are resolved in inbox order (the
 *    later one is quarantined).
 * 3. Promotes the last passing candidate (REF + every accepted adapter) with
 *    compare-and-swap on the head it merged with; if another writer moved REF
 *    meanwhile, starts again (up to --attempts times).
 * 4. Appends each quarantined adapter's record (with a `quarantine` field:
 *    why, when, which candidate) and the failing report(s) to the quarantine
 *    file (default `INBOX.quarantine.ndjson`), and renames the pending files
 *    to `.done-<time>`. When the validator itself fails (non-zero exit,
 *    --validator-timeout) nothing is quarantined or promoted and the pending
 *    files stay for the next run.
 *
 * With `--retrain CMD` the first candidate is not the sum of the adapters:
 * CMD (e.g. `lora-train`) trains one adapter on every fact
 * REF and the pending adapters state (with their probes), on the base model,
 * and that adapter replaces REF's. Summed adapters add their drifts (five
 * last-layer LoRA batches read kl 0.103 where the same 25 facts in one
 * adapter read 0.027), so a ref that only ever grows by sums soon fails the
 * kl gate and bisection starts refusing good adapters. When the retrained
 * candidate fails validation, or CMD fails, the night falls back to the
 * sum-and-bisect above. `--retrain-when failed` tries the sum first and
 * retrains only when it fails (cheaper nights; the retrain resets the drift).
 */
import { appendFile, mkdtemp, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { InputError, UsageError } from '@catechism/core/cli';
import { readRecords } from '@catechism/core/records';
import type { AnyRecord } from '@catechism/core/records';
import { FileLock, LockTimeoutError, Registry, RegistryError, defaultRegistryDir } from './core.js';
import { mergeStatements, type ParentBundle } from './merge-lib.js';
import { buildCandidate, checkMethod, checkRankOptions, findValidator, libError, parentOf, promoteCas, readInto, runRecordCommand, validateCandidate, validatorTimeout, type Candidate } from './merge.js';
import type { Ctx } from './commands.js';

const text = (s: string) => new Promise<void>((resolve, reject) => process.stdout.write(s, (err) => (err ? reject(err) : resolve())));

interface Item {
  parent: ParentBundle;
  record: AnyRecord;
  where: string;
}

interface Quarantined {
  item: Item;
  reason: string;
  /** The candidate that failed validation; null when the merge itself was refused. */
  candidate: string | null;
  reports: AnyRecord[];
}

export interface ConsolidateArgs {
  quarantine?: string;
  attempts?: number;
  retrain?: string;
  'retrain-timeout'?: number;
  'retrain-when'?: string;
}

const stampOf = (d: Date) => d.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');

/**
 * `file`, or `file-1`, `file-2`, … if it exists: a run in the same second as
 * a failed one (whose pending file keeps that second's stamp) must not
 * rename the inbox over it. Called under the inbox's lock, so no race.
 */
async function unusedName(file: string): Promise<string> {
  for (let n = 0; ; n++) {
    const name = n === 0 ? file : `${file}-${n}`;
    try {
      await stat(name);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return name;
      throw e;
    }
  }
}

/** Take INBOX's lock without waiting: a second nightly run must say plainly that another one holds the inbox. */
async function lockInbox(inbox: string): Promise<FileLock> {
  const file = `${inbox}.lock`;
  try {
    return await FileLock.acquire(file, { timeoutMs: 0 });
  } catch (e) {
    if (!(e instanceof LockTimeoutError)) throw e;
    let who = 'another process';
    try {
      const o = JSON.parse(await readFile(file, 'utf8')) as { pid?: number; host?: string; acquired_at?: string };
      who = `pid ${o.pid} on ${o.host} since ${o.acquired_at}`;
    } catch {
      /* the owner had not written its name yet */
    }
    throw new RegistryError(`another consolidation run holds the inbox ${inbox} (${who}; lock file ${file}); this run does nothing — try again when it has finished`, 1, 'E_BUSY');
  }
}

async function pendingFiles(inbox: string): Promise<string[]> {
  const dir = path.dirname(inbox);
  const base = `${path.basename(inbox)}.pending-`;
  return (await readdir(dir)).filter((n) => n.startsWith(base)).sort().map((n) => path.join(dir, n));
}

export async function runConsolidate(ctx: Ctx, rest: string[]): Promise<void> {
  const a = ctx.args;
  if (rest.length !== 1) throw new UsageError(`consolidate: expected \`adapter-merge consolidate INBOX [--into REF]\`, got ${rest.length === 0 ? 'no inbox' : rest.map((r) => JSON.stringify(r)).join(' ')} (see adapter-merge consolidate --help)`);
  const inbox = path.resolve(rest[0]);
  const ref = a.into ?? 'live';
  const method = checkMethod(a.method);
  checkRankOptions(ctx, method);
  validatorTimeout(ctx);
  const attempts = a.attempts ?? 3;
  if (!Number.isInteger(attempts) || attempts < 1) throw new UsageError(`--attempts: expected a whole number ≥ 1, got ${String(attempts)}`);
  const quarantineFile = path.resolve(a.quarantine ?? `${inbox}.quarantine.ndjson`);
  const retrainTimeout = a['retrain-timeout'] ?? 3600;
  if (!(Number.isFinite(retrainTimeout) && retrainTimeout >= 0)) throw new UsageError(`--retrain-timeout: expected seconds ≥ 0, got ${String(retrainTimeout)}`);
  if (a.retrain !== undefined && (typeof a.retrain !== 'string' || a.retrain.trim() === '')) throw new UsageError('--retrain: expected a trainer command (e.g. "lora-train")');
  const when = (a['retrain-when'] ?? 'always') as 'always' | 'failed'; // yargs' choices checked the value
  if (a['retrain-when'] !== undefined && a.retrain === undefined) throw new UsageError('--retrain-when needs --retrain CMD');
  const retrain = a.retrain !== undefined ? { trainer: a.retrain, timeoutS: retrainTimeout, when } : null;
  const validator = findValidator(a.validator);
  if (validator === null) throw new UsageError('consolidate: no validator (no --validator CMD and no `validate` on PATH); consolidation never promotes unvalidated');
  try {
    if (!(await stat(path.dirname(inbox))).isDirectory()) throw new Error('not a directory');
  } catch {
    throw new UsageError(`consolidate: ${path.dirname(inbox)}: no such directory for the inbox`);
  }

  const lock = await lockInbox(inbox);
  try {
    const now = new Date();
    const stamp = stampOf(now);
    try {
      if ((await stat(inbox)).size > 0) await rename(inbox, await unusedName(`${inbox}.pending-${stamp}`));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    const pending = await pendingFiles(inbox);
    if (pending.length === 0) {
      ctx.log(`${inbox} is empty; nothing to consolidate`);
      return;
    }
    const reg = new Registry(a.registry ?? defaultRegistryDir(), { timeoutMs: a['lock-timeout'] * 1000 });
    ctx.log(`consolidating ${pending.length} pending file(s) into ${ref}: ${pending.map((f) => path.basename(f)).join(', ')}`);
    const result = await consolidatePending(ctx, reg, ref, pending, validator, method, attempts, stamp, retrain);
    if (result.quarantined.length > 0) await writeQuarantine(quarantineFile, ref, now, result.quarantined);
    for (const f of pending) await rename(f, await unusedName(f.replace('.pending-', '.done-')));
    const summary = {
      kind: 'consolidation',
      ref,
      inbox,
      pending_files: pending.map((f) => path.basename(f)),
      promoted: result.promoted,
      accepted: result.accepted.map((i) => ({ id: i.parent.manifest.id, version: i.parent.manifest.version, sha256: i.parent.sha256 })),
      quarantined: result.quarantined.map((q) => ({ id: q.item.parent.manifest.id, version: q.item.parent.manifest.version, sha256: q.item.parent.sha256, reason: q.reason })),
      quarantine_file: result.quarantined.length > 0 ? quarantineFile : null,
      validations: result.validations,
      retrained: result.retrained,
    };
    for (const q of result.quarantined) ctx.log(`quarantined ${q.item.parent.manifest.id} (${q.item.parent.sha256.slice(0, 12)}): ${q.reason} → ${quarantineFile}`);
    ctx.log(`${ref}: ${result.accepted.length} adapter(s) consolidated, ${result.quarantined.length} quarantined, ${result.validations} validation(s)`);
    if (a.text) {
      await text(`${ref}: ${result.promoted ? `promoted ${result.promoted.bundle.slice(0, 12)} (v${result.promoted.version})` : 'nothing promoted'}${result.retrained ? (result.retrained.pass ? `, retrained from ${result.retrained.facts} fact(s)` : ', retraining refused') : ''}; ${result.accepted.length} adapter(s) consolidated, ${result.quarantined.length} quarantined${result.quarantined.length > 0 ? ` (${quarantineFile})` : ''}; ${result.validations} validation(s)\n`);
    } else await ctx.out.write(summary);
  } finally {
    await lock.release();
  }
}

async function readItems(ctx: Ctx, reg: Registry, files: string[]): Promise<Item[]> {
  const items: Item[] = [];
  const seen = new Set<string>();
  for await (const { record, source, index } of readRecords(files)) {
    if (record.kind !== 'adapter') continue;
    const where = `${source}: record ${index}`;
    const parent = await parentOf(record, where, reg);
    if (seen.has(parent.sha256)) {
      ctx.log(`${where}: ${parent.manifest.id} (${parent.sha256.slice(0, 12)}) is already in the inbox; skipped`);
      continue;
    }
    seen.add(parent.sha256);
    items.push({ parent, record, where });
  }
  if (items.length === 0) throw new InputError(`no adapter records in ${files.join(', ')}: nothing to consolidate`);
  return items;
}

interface Outcome {
  accepted: Item[];
  quarantined: Quarantined[];
  promoted: { bundle: string; version: number; id: string } | null;
  validations: number;
  retrained: RetrainOutcome | null;
}

/** What --retrain did this night (the `consolidation` record's `retrained`). */
interface RetrainOutcome {
  /** The candidate made from the retrained adapter(s), null when the trainer failed. */
  candidate: string | null;
  /** The trainer's own bundle(s), stored in the registry. */
  trained: string[];
  facts: number;
  probes: number;
  pass: boolean;
  reason: string | null;
}

/**
 * Train one adapter on every fact REF and the pending adapters state, with
 * the trainer command, on the base model, and make it REF's next candidate.
 * The trainer stores into a fresh, empty registry (so nothing it reads from
 * a registry, such as live's neurons or key memory, makes it work around
 * the adapters it replaces); its bundles are then added to ours.
 */
async function retrainCandidate(ctx: Ctx, reg: Registry, ref: string, current: ParentBundle | null, items: Item[], trainer: string, timeoutS: number): Promise<{ cand: Candidate; trained: string[]; facts: number; probes: number }> {
  const manifests = [...(current ? [current.manifest] : []), ...items.map((i) => i.parent.manifest)];
  const { facts, probes } = mergeStatements(manifests);
  const base = items[0].parent.manifest.base_model;
  ctx.log(`retraining ${facts.length} fact(s) (${probes.length} probes) of ${current ? `${ref} and ` : ''}${items.length} pending adapter(s) with: ${trainer}`);
  const scratch = await mkdtemp(path.join(os.tmpdir(), 'adapter-merge-retrain-'));
  try {
    const scratchReg = path.join(scratch, 'registry');
    const input = [...facts, ...probes].map((r) => JSON.stringify(r)).join('\n') + '\n';
    const out = await runRecordCommand(trainer, input, { role: 'trainer', timeoutFlag: '--retrain-timeout', timeoutS, env: { ...process.env, CATECHISM_REGISTRY: scratchReg }, then: 'no retrained candidate' });
    const records = out.filter((r) => r.kind === 'adapter');
    if (records.length === 0) throw new InputError(`trainer "${trainer}" wrote no adapter records`);
    const trained: ParentBundle[] = [];
    const scratchRegistry = new Registry(scratchReg);
    for (const [i, r] of records.entries()) trained.push(await parentOf(r, `trainer output, adapter record ${i + 1}`, scratchRegistry));
    for (const t of trained) {
      if (t.manifest.base_model.sha256 !== base.sha256) {
        throw new InputError(`trainer "${trainer}" trained ${t.manifest.id} for ${t.manifest.base_model.name} (sha256 ${t.manifest.base_model.sha256.slice(0, 12)}…), but ${ref}'s adapters are for ${base.name} (sha256 ${base.sha256.slice(0, 12)}…): give the trainer --model`);
      }
    }
    const covered = new Set(trained.flatMap((t) => t.manifest.fact_ids));
    const missing = facts.map((f) => String(f.id)).filter((id) => !covered.has(id));
    if (missing.length > 0) throw new InputError(`trainer "${trainer}" left out ${missing.length} fact(s): ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', …' : ''}`);
    const stored: ParentBundle[] = [];
    for (const t of trained) {
      const r = await reg.add(t.dir).catch((e) => { throw libError(e); });
      stored.push({ ...t, dir: r.bundle.path, sha256: r.bundle.sha256 });
    }
    const cand = await buildCandidate(ctx, reg, stored, { method: 'cat', into: ref, current, store: true, quiet: true });
    return { cand, trained: stored.map((t) => t.sha256), facts: facts.length, probes: probes.length };
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

/**
 * The retrained candidate and its verdict. A trainer that fails does not stop
 * the night (the adapters as they are still get their chance); a validator
 * that fails does, as it does for a summed candidate.
 */
async function retrainAndValidate(
  ctx: Ctx, reg: Registry, ref: string, current: ParentBundle | null, items: Item[], retrain: { trainer: string; timeoutS: number },
  validator: string, meta: { message: string | null; author: string | null },
): Promise<{ outcome: RetrainOutcome; cand: Candidate | null }> {
  const outcome: RetrainOutcome = { candidate: null, trained: [], facts: 0, probes: 0, pass: false, reason: null };
  let r: Awaited<ReturnType<typeof retrainCandidate>>;
  try {
    r = await retrainCandidate(ctx, reg, ref, current, items, retrain.trainer, retrain.timeoutS);
  } catch (e) {
    if (!(e instanceof InputError || e instanceof RegistryError)) throw e;
    ctx.log(`retraining failed: ${e.message}`);
    return { outcome: { ...outcome, reason: `retraining failed: ${e.message}` }, cand: null };
  }
  Object.assign(outcome, { candidate: r.cand.sha, trained: r.trained, facts: r.facts, probes: r.probes });
  const v = await validateCandidate(ctx, reg, validator, r.cand.rec, r.cand.sha, meta);
  ctx.log(`retrained: ${r.facts} fact(s) in one adapter → ${r.cand.sha.slice(0, 12)}: ${v.refusal === null ? 'pass' : `FAIL (${v.refusal})`}`);
  return { outcome: { ...outcome, pass: v.refusal === null, reason: v.refusal }, cand: r.cand };
}

async function consolidatePending(
  ctx: Ctx, reg: Registry, ref: string, pending: string[], validator: string, method: ReturnType<typeof checkMethod>, attempts: number, stamp: string,
  retrain: { trainer: string; timeoutS: number; when: 'always' | 'failed' } | null,
): Promise<Outcome> {
  const a = ctx.args;
  const all = await readItems(ctx, reg, pending);
  const meta = { message: a.message ?? `nightly consolidation ${stamp}`, author: a.author ?? null };
  let validations = 0;
  for (let attempt = 1; ; attempt++) {
    const { current, held } = await readInto(ctx, reg, ref);
    // a retrained ref descends from the trained bundle, not from the adapters it was trained from, so an adapter
    // is also held when REF already states each of its facts as it does (the same record)
    const stated = new Set((current?.manifest.facts ?? []).map((f) => JSON.stringify(f)));
    const items = all.filter((i) => {
      const facts = i.parent.manifest.facts;
      if (held.has(i.parent.sha256)) ctx.log(`${i.where}: ${i.parent.manifest.id} (${i.parent.sha256.slice(0, 12)}) is already in ${ref}; skipped`);
      else if (facts.length > 0 && facts.every((f) => stated.has(JSON.stringify(f)))) ctx.log(`${i.where}: ${i.parent.manifest.id} (${i.parent.sha256.slice(0, 12)}): ${ref} already states its fact(s); skipped`);
      else return true;
      return false;
    });
    if (items.length === 0) {
      ctx.log(`no new adapters for ${ref}; nothing to do`);
      return { accepted: [], quarantined: [], promoted: null, validations, retrained: null };
    }
    const accepted: Item[] = [];
    const quarantined: Quarantined[] = [];
    let lastPass: Candidate | null = null;
    let trial = 0;
    const tryOn = async (set: Item[]): Promise<{ pass: boolean; cand: Candidate | null; reason: string | null; reports: AnyRecord[] }> => {
      trial++;
      const parents = [...(current ? [current] : []), ...accepted.map((i) => i.parent), ...set.map((i) => i.parent)];
      const names = set.map((i) => i.parent.manifest.id).join(', ');
      let cand: Candidate;
      try {
        cand = await buildCandidate(ctx, reg, parents, { method, into: ref, current, store: true, quiet: true });
      } catch (e) {
        // bundles that cannot be merged at all (e.g. two patcher bundles on one neuron) fail like a failed validation,
        // so the search isolates them instead of stopping the whole consolidation
        if (!(e instanceof InputError)) throw e;
        ctx.log(`trial ${trial}: ${ref}${accepted.length > 0 ? ` + ${accepted.length} accepted` : ''} + [${names}]: merge refused (${e.message})`);
        return { pass: false, cand: null, reason: `merge refused: ${e.message}`, reports: [] };
      }
      validations++;
      const v = await validateCandidate(ctx, reg, validator, cand.rec, cand.sha, meta);
      ctx.log(`trial ${trial}: ${ref}${accepted.length > 0 ? ` + ${accepted.length} accepted` : ''} + [${names}] → ${cand.sha.slice(0, 12)}: ${v.refusal === null ? 'pass' : `FAIL (${v.refusal})`}`);
      return { pass: v.refusal === null, cand, reason: v.refusal, reports: v.reports };
    };
    // Adaptive group testing: accept a set that passes whole, split one that fails, quarantine a single failure.
    const solve = async (set: Item[], tried?: Awaited<ReturnType<typeof tryOn>>): Promise<void> => {
      if (set.length === 0) return;
      const r = tried ?? (await tryOn(set));
      if (r.pass) {
        accepted.push(...set);
        lastPass = r.cand!;
        return;
      }
      if (set.length === 1) {
        quarantined.push({ item: set[0], reason: r.reason ?? 'failed validation', candidate: r.cand?.sha ?? null, reports: r.reports });
        return;
      }
      const mid = Math.ceil(set.length / 2);
      await solve(set.slice(0, mid));
      await solve(set.slice(mid));
    };
    let retrained: RetrainOutcome | null = null;
    // --retrain-when failed: the sum first, the retrain only when the sum fails (then the sum's trial is not repeated)
    let whole: Awaited<ReturnType<typeof tryOn>> | undefined;
    if (retrain !== null && retrain.when === 'failed') {
      whole = await tryOn(items);
      if (whole.pass) {
        accepted.push(...items);
        lastPass = whole.cand!;
      } else ctx.log(`${ref}: the sum failed; retraining`);
    }
    if (retrain !== null && lastPass === null) {
      const r = await retrainAndValidate(ctx, reg, ref, current, items, retrain, validator, meta);
      retrained = r.outcome;
      if (r.cand !== null) validations++;
      if (r.outcome.pass) {
        accepted.push(...items);
        lastPass = r.cand;
      } else ctx.log(`${ref}: the retrained candidate was not promoted; merging the pending adapters as they are`);
    }
    if (lastPass === null) await solve(items, whole);
    const passing = lastPass as Candidate | null;
    if (passing === null) return { accepted, quarantined, promoted: null, validations, retrained };
    try {
      await promoteCas(ctx, reg, ref, passing.rec, passing.sha, current?.sha256 ?? null, meta);
    } catch (e) {
      if (e instanceof RegistryError && e.code === 'E_MOVED' && attempt < attempts) {
        ctx.log(`${ref} moved during attempt ${attempt} (another writer); consolidating again`);
        continue;
      }
      throw libError(e);
    }
    return { accepted, quarantined, promoted: { bundle: passing.sha, version: Number(passing.rec.version), id: String(passing.rec.id) }, validations, retrained };
  }
}

/** Append the quarantined adapters' records and their failing reports, durably, to the quarantine file. */
async function writeQuarantine(file: string, ref: string, when: Date, qs: Quarantined[]): Promise<void> {
  let out = '';
  for (const q of qs) {
    const rec = { ...q.item.record, quarantine: { ref, when: when.toISOString(), reason: q.reason, candidate: q.candidate, from: q.item.where } };
    out += JSON.stringify(rec) + '\n';
    for (const r of q.reports) out += JSON.stringify(r) + '\n';
  }
  await appendFile(file, out);
  const fh = await open(file, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
