/**
 * The registry subcommands of adapter-merge. Each writes records to stdout
 * (NDJSON by default, Arrow with --format arrow) or, with --text, readable
 * lines; diagnostics go to stderr.
 */
import { stat, readFile, writeFile, chmod } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { InputError, UsageError, type ToolContext } from '@catechism/core/cli';
import { readRecords, type AnyRecord, type HistoryPoint as HistoryPointRecord } from '@catechism/core/records';
import { BundleError, ManifestError, Registry, RegistryError, adapterRecord, defaultRegistryDir, generateApproverKeys, type RefEvent } from './core.js';
import { eventLine, showText, verifyText } from './text.js';
import type { MergeArgs } from './merge.js';
import type { ConsolidateArgs } from './consolidate.js';
import type { CanaryArgs } from './canary.js';

export interface Args extends MergeArgs, ConsolidateArgs, CanaryArgs {
  force: boolean;
  message?: string;
  author?: string;
  to?: number;
  text: boolean;
  into?: string;
  'lock-timeout': number;
  key?: string;
  note?: string;
  approvals?: number;
  namespace?: string;
  html?: string;
}

export type Ctx = ToolContext<Args>;

export const REGISTRY_COMMANDS = ['add', 'promote', 'rollback', 'log', 'show', 'refs', 'report', 'verify', 'keygen', 'add-approver', 'protect', 'approve', 'approvals', 'watch', 'history'] as const;
/** Commands that need the model engine (loaded lazily). */
export const MODEL_COMMANDS = ['explain', 'export'] as const;

type Command = (typeof REGISTRY_COMMANDS)[number];

const SYNOPSIS: Record<Command, string> = {
  add: 'add BUNDLE_DIR...',
  promote: 'promote REF BUNDLE_DIR|ID',
  rollback: 'rollback REF [--to VERSION]',
  log: 'log REF',
  show: 'show ID',
  refs: 'refs',
  report: 'report ID [FILES...]',
  verify: 'verify',
  keygen: 'keygen --out FILE',
  'add-approver': 'add-approver NAME --key PUBLIC_KEY_FILE [--namespace NS]',
  protect: 'protect REF --approvals N',
  approve: 'approve REF ID --key PRIVATE_KEY_FILE [--note TEXT]',
  approvals: 'approvals REF',
  watch: 'watch REF [REPORT_FILES...]',
  history: 'history REF [--html FILE]',
};

/** Registry errors of the "bad input" kind exit 2, like the rest of the CLI layer's input errors. */
function cliError(e: unknown): unknown {
  if (e instanceof RegistryError) return e.exitCode === 2 ? new UsageError(e.message) : e;
  if (e instanceof ManifestError || e instanceof BundleError) return new InputError(e.message);
  return e;
}

function arity(cmd: Command, args: string[], min: number, max: number): void {
  if (args.length < min || args.length > max) {
    const got = args.length === 0 ? 'none' : args.map((a) => JSON.stringify(a)).join(' ');
    throw new UsageError(`${cmd}: expected \`adapter-merge ${SYNOPSIS[cmd]}\`, got ${got} (see --help)`);
  }
}

async function isDir(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isDirectory();
  } catch {
    return false;
  }
}

export function isRegistryCommand(word: string | undefined): word is Command {
  return word !== undefined && (REGISTRY_COMMANDS as readonly string[]).includes(word);
}

export async function runRegistryCommand(ctx: Ctx, cmd: Command, rest: string[]): Promise<void> {
  const a = ctx.args;
  // each command offers only its own flags (main.ts), so yargs refuses the others
  if (a.to !== undefined && (!Number.isInteger(a.to) || a.to < 1)) throw new UsageError(`--to: expected a version number (1, 2, …), got ${String(a.to)}`);
  const timeout = a['lock-timeout'] ?? 60;
  if (!(timeout >= 0)) throw new UsageError(`--lock-timeout: expected seconds (a number ≥ 0), got ${String(timeout)}`);
  const reg = new Registry(a.registry ?? defaultRegistryDir(), { timeoutMs: timeout * 1000 });
  const meta = { message: a.message ?? null, author: a.author ?? null };
  const text = (s: string) => new Promise<void>((resolve, reject) => process.stdout.write(s, (err) => (err ? reject(err) : resolve())));
  const emitEvent = async (e: RefEvent) => (a.text ? text(eventLine(e) + '\n') : ctx.out.write(e));

  try {
    switch (cmd) {
      case 'add': {
        arity(cmd, rest, 1, Infinity);
        for (const dir of rest) {
          const r = await reg.add(dir);
          const rec = { ...adapterRecord(r.bundle.manifest, { path: r.bundle.path, sha256: r.bundle.sha256 }), added: r.added };
          ctx.log(`${r.added ? (r.repaired ? 'repaired' : 'stored') : 'already stored'}: ${r.bundle.manifest.id} v${r.bundle.manifest.version} ${r.bundle.sha256}`);
          if (a.text) await text(`${r.bundle.sha256}  ${rec.id} v${rec.version}  ${r.added ? 'added' : 'already stored'}\n`);
          else await ctx.out.write(rec);
        }
        return;
      }
      case 'promote': {
        arity(cmd, rest, 2, 2);
        const [ref, target] = rest;
        const looksLikePath = target.includes('/') || target.startsWith('.');
        const dir = await isDir(target);
        if (looksLikePath && !dir) throw new UsageError(`promote: ${target}: no such bundle directory`);
        const r = await reg.promote(ref, dir ? { dir: target } : { id: target }, { ...meta, force: a.force === true });
        if (r.event === null) {
          ctx.log(`${ref} already points to ${r.bundle.manifest.id} v${r.bundle.manifest.version} (${r.bundle.sha256.slice(0, 12)}); nothing recorded`);
          const head = await reg.head(ref);
          if (head) await emitEvent(head);
          return;
        }
        if (r.event.action === 'force') ctx.log(`forced: ${r.event.forced_over} (logged in ${ref}@${r.event.version})`);
        await emitEvent(r.event);
        return;
      }
      case 'rollback': {
        arity(cmd, rest, 1, 1);
        const r = await reg.rollback(rest[0], { ...meta, ...(a.to !== undefined ? { to: a.to } : {}) });
        await emitEvent(r.event);
        return;
      }
      case 'log': {
        arity(cmd, rest, 1, 1);
        await reg.requireExists();
        const log = await reg.log(rest[0]);
        if (log.length === 0) throw new UsageError(`no ref named "${rest[0]}" in ${reg.root} (refs: ${(await reg.refs()).join(', ') || 'none'})`);
        for (const e of log) await emitEvent(e);
        return;
      }
      case 'refs': {
        arity(cmd, rest, 0, 0);
        await reg.requireExists();
        for (const r of await reg.refs()) {
          const head = await reg.head(r);
          if (head) await emitEvent(head);
        }
        return;
      }
      case 'show': {
        arity(cmd, rest, 1, 1);
        const s = await reg.show(rest[0]);
        if (a.text) await text(showText(s));
        else await ctx.out.write({ ...s.record, manifest: s.bundle.manifest, validation: s.validation, validation_refused: s.refused, refs: s.refs, files: s.bundle.files });
        return;
      }
      case 'report': {
        arity(cmd, rest, 1, Infinity);
        const [id, ...files] = rest;
        await reg.requireExists();
        await reg.resolve(id); // fail fast on an unknown id, before reading input
        let attached = 0;
        for await (const { record, source, index } of readRecords(files)) {
          if (record.kind !== 'report') {
            if (!a.text) await ctx.out.write(record); // other records pass through
            continue;
          }
          try {
            const r = await reg.addReport(id, record, meta);
            attached++;
            if (a.text) await text(`${r.bundle.sha256.slice(0, 12)}  ${r.report.adapter_id}  ${r.report.pass ? 'pass' : 'FAIL'}  attached\n`);
            else await ctx.out.write(r.report);
          } catch (e) {
            const err = cliError(e);
            if (err instanceof UsageError || err instanceof InputError) throw new InputError(err.message, { source, record: index });
            throw err;
          }
        }
        if (attached === 0) throw new InputError(`no report records in ${files.length > 0 ? files.join(', ') : 'stdin'}; nothing attached to ${id}`);
        ctx.log(`attached ${attached} report(s) to ${id}`);
        return;
      }
      case 'keygen': {
        arity(cmd, rest, 0, 0);
        const out = a.out;
        if (out === undefined) throw new UsageError('keygen: expected `adapter-merge keygen --out FILE` (writes FILE, the private key, and FILE.pub)');
        if (existsSync(out) || existsSync(`${out}.pub`)) throw new UsageError(`keygen: ${existsSync(out) ? out : `${out}.pub`} exists; not overwriting a key`);
        const k = generateApproverKeys();
        await writeFile(out, k.privatePem, { mode: 0o600, flag: 'wx' });
        await chmod(out, 0o600);
        await writeFile(`${out}.pub`, k.publicPem, { flag: 'wx' });
        ctx.log(`wrote the private key ${out} (mode 600; keep it secret) and the public key ${out}.pub (key id ${k.keyId.slice(0, 12)})`);
        if (a.text) await text(`${k.keyId}  ${out}.pub\n`);
        else await ctx.out.write({ kind: 'approver_key', key_id: k.keyId, private_key_file: out, public_key_file: `${out}.pub` });
        return;
      }
      case 'add-approver': {
        arity(cmd, rest, 1, 1);
        if (a.key === undefined) throw new UsageError('add-approver: --key PUBLIC_KEY_FILE is required');
        const pem = await readKeyFile(a.key);
        const ap = await reg.addApprover(rest[0], pem, a.namespace ?? null, meta);
        ctx.log(`${ap.name} (key ${ap.key_id.slice(0, 12)}) approves ${ap.namespace === null ? 'refs without a namespace' : `refs ${ap.namespace}/…`}`);
        if (a.text) await text(`${ap.key_id}  ${ap.name}  ${ap.namespace ?? '-'}\n`);
        else await ctx.out.write({ kind: 'approver', ...ap });
        return;
      }
      case 'protect': {
        arity(cmd, rest, 1, 1);
        if (a.approvals === undefined) throw new UsageError('protect: --approvals N is required (0 lifts the protection)');
        const c = await reg.protect(rest[0], a.approvals);
        const n = c.protected[rest[0]] ?? 0;
        const ns = rest[0].includes('/') ? rest[0].slice(0, rest[0].indexOf('/')) : null;
        const have = c.approvers.filter((x) => x.namespace === ns).length;
        if (n > have) ctx.log(`warning: ${rest[0]} needs ${n} approvals but its namespace has ${have} approver(s); add some with \`adapter-merge add-approver\``);
        if (a.text) await text(`${rest[0]}  approvals ${n}\n`);
        else await ctx.out.write({ kind: 'protection', ref: rest[0], approvals: n });
        return;
      }
      case 'approve': {
        arity(cmd, rest, 2, 2);
        if (a.key === undefined) throw new UsageError('approve: --key PRIVATE_KEY_FILE is required');
        const pem = await readKeyFile(a.key);
        const r = await reg.approve(rest[0], rest[1], pem, a.note ?? null, meta);
        const st = r.status;
        if (!r.added) ctx.log(`${r.approval.approver} already approved ${r.approval.adapter_id} (${r.approval.bundle.slice(0, 12)}) for ${rest[0]}; nothing recorded`);
        if (st.report === null) ctx.log('warning: no validation report counts for this bundle; the approval covers the bundle without one (a forced promotion)');
        ctx.log(`${rest[0]}: ${st.valid.length} of ${st.required} required approval(s)${st.because.length > 0 ? ` (${st.because.join('; ')})` : ''}; risk ${st.risk}`);
        if (a.text) await text(`${r.approval.bundle.slice(0, 12)}  ${r.approval.adapter_id}  approved by ${r.approval.approver} for ${rest[0]}  (${st.valid.length}/${st.required})\n`);
        else await ctx.out.write(r.approval);
        return;
      }
      case 'approvals': {
        arity(cmd, rest, 1, 1);
        await reg.requireExists();
        const list = await reg.approvals(rest[0]);
        if (list.length === 0 && a.text) await text(`no approvals recorded for ${rest[0]}\n`);
        for (const ap of list) {
          if (a.text) await text(`${ap.when}  ${ap.approver}  ${ap.adapter_id} v${ap.adapter_version}  ${ap.bundle.slice(0, 12)}  report ${String(ap.report).slice(0, 12)}${ap.note ? `  ${JSON.stringify(ap.note)}` : ''}\n`);
          else await ctx.out.write(ap);
        }
        return;
      }
      case 'watch': {
        arity(cmd, rest, 1, Infinity);
        const [ref, ...files] = rest;
        await reg.requireExists();
        const head = await reg.head(ref);
        if (!head) throw new UsageError(`no ref named "${ref}" in ${reg.root}`);
        // the watch judges the latest report about REF's current bundle; the others pass through
        let judged: { metrics: Record<string, number>; pass: boolean; failures: string[]; bundle?: string } | null = null;
        for await (const { record, source, index } of readRecords(files)) {
          if (record.kind !== 'report') {
            if (!a.text) await ctx.out.write(record);
            continue;
          }
          const b = record.bundle_sha256;
          if (typeof b === 'string' && b !== head.bundle) throw new InputError(`bundle_sha256: the report is about ${b.slice(0, 12)}, but ${ref} points to ${head.bundle.slice(0, 12)}`, { source, record: index });
          judged = { metrics: (record.metrics ?? {}) as Record<string, number>, pass: record.pass === true, failures: Array.isArray(record.failures) ? (record.failures as string[]) : [], ...(typeof b === 'string' ? { bundle: b } : {}) };
        }
        if (judged === null) throw new InputError(`no report records in ${files.length > 0 ? files.join(', ') : 'stdin'}; nothing to judge ${ref} by`);
        const r = await reg.watch(ref, judged, meta);
        if (r.rollback) ctx.log(`automatic rollback: ${ref}@${r.record.version} failed (${judged.failures.join('; ').slice(0, 200)}); ${ref} is back at version ${r.rollback.to_version} (${r.rollback.bundle.slice(0, 12)})`);
        if (a.text) await text(`${ref}@${r.record.version}  ${judged.pass ? 'pass' : 'FAIL'}${r.rollback ? `  rolled back to @${r.rollback.to_version}` : ''}\n`);
        else {
          await ctx.out.write(r.record);
          if (r.rollback) await ctx.out.write(r.rollback);
        }
        if (!judged.pass && !r.rollback) {
          await ctx.out.end();
          throw new RegistryError(`${ref}@${r.record.version} failed the watch (${judged.failures.join('; ').slice(0, 200)}) and ${r.note ?? 'was not rolled back'}`, 1);
        }
        return;
      }
      case 'history': {
        arity(cmd, rest, 1, 1);
        await reg.requireExists();
        const ref = rest[0];
        const log = await reg.log(ref);
        if (log.length === 0) throw new UsageError(`no ref named "${ref}" in ${reg.root}`);
        const watch = await reg.watchLog(ref);
        const points = await historyPoints(reg, log, watch);
        if (a.html !== undefined) {
          const { writeHistoryHtml } = await import('./history-html.js');
          await writeHistoryHtml(a.html, ref, points, log);
          ctx.log(`wrote ${a.html}: ${new Set(points.map((p) => p.metric)).size} metric(s) over ${new Set(points.map((p) => p.version)).size} version(s)`);
        }
        if (a.text && points.length === 0) await text(`${ref}: no figures yet (no promotion let through on a report, no watch run)\n`);
        if (a.text) for (const p of points) await text(`${ref}@${p.version}  ${p.source.padEnd(10)}  ${p.metric} = ${p.value}\n`);
        else for (const p of points) await ctx.out.write({ kind: 'history_point', ref, ...p });
        return;
      }
      case 'verify': {
        arity(cmd, rest, 0, 0);
        const v = await reg.verify();
        if (a.text) await text(verifyText(v));
        else await ctx.out.write(v);
        if (!v.ok) {
          await ctx.out.end(); // the report must be out before the failing exit
          throw new RegistryError(`registry ${reg.root} has ${v.problems.length} problem(s): ${v.problems.slice(0, 3).map((p) => `${p.area} ${p.target.slice(0, 16)}`).join(', ')}${v.problems.length > 3 ? ', …' : ''}`, 1);
        }
        for (const n of v.notes) ctx.log(`note: ${n}`);
        return;
      }
    }
  } catch (e) {
    throw cliError(e);
  }
}

async function readKeyFile(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (e) {
    throw new UsageError(`--key: cannot read ${file}: ${(e as Error).message}`);
  }
}

/** One metric of one version of a ref, from its validation report (when promoted) or a drift-watch measurement: the history_point record without kind and ref. */
export type HistoryPoint = Pick<HistoryPointRecord, 'version' | 'bundle' | 'adapter_id' | 'source' | 'when' | 'metric' | 'value' | 'pass'>;

/** Every metric of every version of REF: its promotion's report, then each watch measurement. */
export async function historyPoints(reg: Registry, log: RefEvent[], watch: Awaited<ReturnType<Registry['watchLog']>>): Promise<HistoryPoint[]> {
  const out: HistoryPoint[] = [];
  for (const ev of log) {
    if (ev.report === undefined) continue;
    const hist = await reg.assessedHistory(await reg.get(ev.bundle)).catch(() => []);
    const rep = hist.find((h) => h.report_sha256 === ev.report);
    if (!rep) continue;
    for (const [metric, value] of Object.entries(rep.report.metrics ?? {})) {
      if (typeof value === 'number' && Number.isFinite(value)) out.push({ version: ev.version, bundle: ev.bundle, adapter_id: ev.adapter_id, source: 'validation', when: ev.when, metric, value, pass: rep.report.pass === true });
    }
  }
  for (const w of watch) {
    for (const [metric, value] of Object.entries(w.metrics)) {
      if (typeof value === 'number' && Number.isFinite(value)) out.push({ version: w.version, bundle: w.bundle, adapter_id: w.adapter_id, source: 'watch', when: w.when ?? '', metric, value, pass: w.pass });
    }
  }
  return out;
}

export function commandsHelp(): string {
  return REGISTRY_COMMANDS.map((c) => `  adapter-merge ${SYNOPSIS[c]}`).join('\n');
}
