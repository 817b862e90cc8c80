/**
 * The registry subcommands of adapter-merge. Each writes records to stdout
 * (NDJSON by default, Arrow with --format arrow) or, with --text, readable
 * lines; diagnostics go to stderr.
 */
import { stat } from 'node:fs/promises';
import { InputError, UsageError, type ToolContext } from '@catechism/core/cli';
import { readRecords, type AnyRecord } from '@catechism/core/records';
import { BundleError, ManifestError, Registry, RegistryError, adapterRecord, defaultRegistryDir, type RefEvent } from './core.js';
import { eventLine, showText, verifyText } from './text.js';
import type { MergeArgs } from './merge.js';
import type { ConsolidateArgs } from './consolidate.js';

export interface Args extends MergeArgs, ConsolidateArgs {
  force: boolean;
  message?: string;
  author?: string;
  to?: number;
  text: boolean;
  into?: string;
  'lock-timeout': number;
}

export type Ctx = ToolContext<Args>;

export const REGISTRY_COMMANDS = ['add', 'promote', 'rollback', 'log', 'show', 'refs', 'report', 'verify'] as const;
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

export function commandsHelp(): string {
  return REGISTRY_COMMANDS.map((c) => `  adapter-merge ${SYNOPSIS[c]}`).join('\n');
}
