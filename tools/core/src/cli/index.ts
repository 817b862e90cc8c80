/**
 * The CLI layer every binary uses, so each binary is a thin file:
 *
 *   await runTool({ name: 'probe-gen', version, describe, examples, options, run: async (ctx) => { … } });
 *
 * It gives every tool the same flags (--format, --seed, --model, --device,
 * --registry, --quiet, --debug, --help with examples, --version), the same
 * exit codes (0 ok, 2 bad input or usage, 1 runtime failure), one-line error
 * messages on stderr (stack only with --debug), a quiet exit when stdout is
 * closed early (`| head -1`), and progress on stderr only when it is a TTY.
 *
 * With CATECHISM_REPORT_MAXRSS=1 in the environment the tool prints
 * `maxrss_kib=N` (its peak resident memory) as the last stderr line; the
 * memory tests use it.
 */
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import * as path from 'node:path';
import yargs, { type Options } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { InputError, UsageError } from '../records/errors.js';
import { DEFAULT_MAX_RECORD_BYTES, readRecordBatches, readRecords, type InputRecord, type ReadOptions, type RejectedRecord } from '../records/reader.js';
import { OUTPUT_FORMATS, createRecordWriter, type OutputFormat, type RecordWriter } from '../records/writer.js';
import { Rng } from '../util/random.js';
import { findModelDir, loadToolModel, registryDir, worldDefaults, type ModelDir, type ToolModel, type WorldDefaults } from './resources.js';

export { InputError, UsageError };

export type { Device } from '../tensor/tensor.js';
import type { Device } from '../tensor/tensor.js';

export interface CommonArgs {
  /** Input files (positional); empty means stdin. */
  inputs: string[];
  format: OutputFormat;
  seed: number;
  model?: string;
  device: Device;
  registry?: string;
  quiet: boolean;
  debug: boolean;
  /** What a bad input record does: end the run (exit 2) or be skipped (written to --rejects, exit 4). */
  'on-bad-record': 'fail' | 'skip';
  /** With skip: NDJSON file that gets each rejected record and why. */
  rejects?: string;
  'max-record-bytes': number;
  /** Go on with answers the model's tokenizer cannot spell (they become its unknown token). */
  'allow-unknown': boolean;
}

/** Exit status when the run finished but --on-bad-record skip skipped some records. */
export const EXIT_SKIPPED = 4;

export interface ToolContext<A> {
  name: string;
  args: CommonArgs & A;
  /** Seeded from --seed; fork() it for independent streams. */
  rng: Rng;
  /** Records of the inputs (files or stdin), normalised and validated. */
  read(options?: ReadOptions): AsyncGenerator<InputRecord>;
  /** The same in batches of a few hundred records (less overhead per record). */
  readBatches(options?: ReadOptions): AsyncGenerator<InputRecord[]>;
  /** The stdout record writer in the chosen --format. */
  out: RecordWriter;
  progress: Progress;
  /** A diagnostic line on stderr (suppressed by --quiet). */
  log(message: string): void;
  /**
   * A record a tool finds bad after reading it (e.g. an answer the model
   * cannot spell). With --on-bad-record fail (the default) this throws the
   * error (located at the record); with skip it writes the record and the
   * reason to --rejects, counts it, and returns: the tool leaves it out.
   */
  reject(at: { source: string; index: number; record?: unknown }, error: InputError): void;
  /** Records skipped so far (reader and reject()). */
  readonly skipped: number;
  /**
   * The model directory (--model, else `fallback` when it is a model
   * directory, else the bundled fixture model), checked but not loaded. A
   * missing or bad one is a usage error worded the same in every tool.
   */
  modelDir(fallback?: string): ModelDir;
  /**
   * The model, loaded once per directory (later calls return the same one);
   * `sha256()` hashes its weights once. `tokenizer: false` skips tokenizer.json.
   */
  model(opts?: { fallback?: string; tokenizer?: boolean }): Promise<ToolModel>;
  /**
   * The registry directory: --registry, else $CATECHISM_REGISTRY, else
   * ~/.catechism/registry. With `{ home: false }` the last is not used
   * (undefined): for tools that write to a registry only when one is named.
   */
  registry(): string;
  registry(opts: { home: false }): string | undefined;
  /** The fixture world's files as defaults: only when the model in use is a bundled fixture model. */
  defaults(): WorldDefaults;
  /**
   * The exit status when the run ends without an error (validate --strict:
   * 3 when a gate fails). Unset: 0, or 4 when --on-bad-record skip left records out.
   */
  exitCode: number | undefined;
}

export interface ToolSpec<A> {
  name: string;
  version: string;
  /** One paragraph for --help. */
  describe: string;
  /** [command, what it does] pairs shown by --help. */
  examples: Array<[string, string]>;
  /** The synopsis after "Usage: " (default `$0 [options] [files..]`); false `readsRecords` drops the sentence about input records. */
  usage?: string;
  readsRecords?: boolean;
  /** Tool-specific options (yargs option definitions). */
  options?: Record<string, Options>;
  /** Common flags that mean nothing for this tool (`registry` for a tool that never touches one): not offered, so not accepted. */
  without?: ReadonlyArray<'registry' | 'model'>;
  run(ctx: ToolContext<A>): Promise<void>;
}

/** Reads `version` from the package.json next to a binary's dist/ folder. */
export function packageVersion(metaUrl: string): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', metaUrl), 'utf8')) as { version?: string };
    return pkg.version ?? '0.0.0';
  } catch {
    return '0.0.0';
  }
}

/** Progress counter on stderr: only when stderr is a TTY and not --quiet. */
export class Progress {
  private count = 0;
  private last = 0;
  private lastCheck = 0;
  private shown = false;
  // Records between clock checks: grows to 4096 for fast streams (off the hot path),
  // stays near 1 for slow per-record work (attrib, training), so both show progress.
  private stride = 1;
  private nextCheck = 1;
  constructor(
    private readonly name: string,
    private readonly enabled: boolean,
    private readonly unit = 'records',
  ) {}
  tick(n = 1): void {
    this.count += n;
    if (!this.enabled || this.count < this.nextCheck) return;
    const now = Date.now();
    this.stride = now - this.lastCheck < 50 ? Math.min(this.stride * 2, 4096) : Math.max(1, this.stride >> 1);
    this.lastCheck = now;
    this.nextCheck = this.count + this.stride;
    if (now - this.last < 250) return;
    this.last = now;
    this.shown = true;
    process.stderr.write(`\r${this.name}: ${this.count} ${this.unit}`);
  }
  done(): void {
    if (this.shown) process.stderr.write('\r\x1b[K');
    this.shown = false;
  }
}

/**
 * Peak resident memory of this process in KiB. On Linux, VmHWM of the
 * current address space: getrusage's maxrss survives execve, so a child
 * spawned by a large parent would report the parent's size.
 */
export function peakRssKib(): number {
  try {
    const m = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync('/proc/self/status', 'utf8'));
    if (m) return Number(m[1]);
  } catch {
    // not Linux
  }
  return process.resourceUsage().maxRSS;
}

const COMMON_OPTIONS: Record<string, Options> = {
  format: { choices: OUTPUT_FORMATS as unknown as string[], default: 'ndjson', describe: 'output format (input format is detected)', group: 'Common:' },
  seed: { type: 'number', default: 0, describe: 'seed for everything random', group: 'Common:' },
  model: { type: 'string', describe: 'model directory (default: the bundled fixture model)', group: 'Common:' },
  device: { choices: ['cpu', 'cuda'], default: process.env.CATECHISM_DEVICE || 'cpu', describe: 'compute device (default: $CATECHISM_DEVICE or cpu); cuda needs a usable GPU', group: 'Common:' },
  registry: { type: 'string', describe: 'adapter registry directory', group: 'Common:' },
  quiet: { type: 'boolean', default: false, alias: 'q', describe: 'no progress or diagnostics on stderr', group: 'Common:' },
  'on-bad-record': { choices: ['fail', 'skip'], default: 'fail', describe: `a bad input record ends the run (fail, exit 2) or is left out (skip: written to --rejects, counted on stderr, exit ${EXIT_SKIPPED} at the end)`, group: 'Input:' },
  rejects: { type: 'string', describe: 'with --on-bad-record skip: append each rejected record and its reason to FILE (NDJSON)', group: 'Input:' },
  'max-record-bytes': { type: 'number', default: DEFAULT_MAX_RECORD_BYTES, describe: 'longest NDJSON record (line) accepted, in bytes', group: 'Input:' },
  'allow-unknown': { type: 'boolean', default: false, describe: 'go on when an answer has a word the model\'s tokenizer cannot spell (it becomes the unknown token); such answers never count as a success', group: 'Input:' },
  debug: { type: 'boolean', default: false, describe: 'stack traces on errors', group: 'Common:' },
};

// A model or bundle file that cannot be read as what it claims to be is bad input, in every tool.
const BAD_INPUT_ERRORS = new Set(['ModelLoadError', 'SafetensorsError', 'ConfigError', 'BundleError', 'ManifestError']);

function exitCodeOf(e: unknown): number {
  if (e instanceof InputError || e instanceof UsageError) return 2;
  if (e instanceof Error && BAD_INPUT_ERRORS.has(e.name)) return 2;
  const code = (e as NodeJS.ErrnoException | null)?.code;
  if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') return 2;
  return 1;
}

/** One line for the errors of the system that a user fixes outside the tool (full disk, permissions). */
function systemMessage(e: unknown): string | null {
  const err = e as NodeJS.ErrnoException | null;
  if (!err || typeof err.code !== 'string') return null;
  const where = err.path ?? (err.syscall === 'write' ? 'the output' : undefined);
  const at = where !== undefined ? ` (${err.syscall ?? 'writing'} ${where})` : '';
  switch (err.code) {
    case 'ENOSPC':
      return `no space left on the device${at}; free some space and run again`;
    case 'EDQUOT':
      return `disk quota exceeded${at}`;
    case 'EACCES':
    case 'EPERM':
      return `permission denied${at}`;
    case 'EROFS':
      return `read-only file system${at}`;
    default:
      return null;
  }
}

function isEpipe(e: unknown): boolean {
  return (e as NodeJS.ErrnoException | null)?.code === 'EPIPE';
}

/**
 * Parses argv, runs the tool, and exits with the right code. Never throws.
 */
export async function runTool<A = Record<string, unknown>>(spec: ToolSpec<A>, argv: string[] = hideBin(process.argv)): Promise<void> {
  const debugFlag = argv.includes('--debug');
  const fail = (e: unknown): never => {
    if (isEpipe(e)) process.exit(0);
    const msg = systemMessage(e) ?? (e instanceof Error ? e.message : String(e));
    process.stderr.write(`${spec.name}: ${msg}\n`);
    if (debugFlag && e instanceof Error && e.stack) process.stderr.write(`${e.stack}\n`);
    process.exit(exitCodeOf(e));
  };

  // A reader that goes away (`| head -1`) is not an error: end quietly.
  process.stdout.on('error', (e) => (isEpipe(e) ? process.exit(0) : fail(e)));
  if (process.env.CATECHISM_REPORT_MAXRSS === '1') {
    process.on('exit', () => {
      process.stderr.write(`maxrss_kib=${peakRssKib()}\n`);
    });
  }

  let args: CommonArgs & A;
  try {
    const y = yargs(argv)
      .scriptName(spec.name)
      .usage(`Usage: ${spec.usage ?? '$0 [options] [files..]'}\n\n${spec.describe}${spec.readsRecords === false ? '' : '\n\nReads records from the files (or stdin when none or "-"): NDJSON, a JSON array, or an Arrow IPC stream.'}`)
      .parserConfiguration({ 'parse-positional-numbers': false })
      .options({ ...Object.fromEntries(Object.entries(COMMON_OPTIONS).filter(([k]) => !spec.without?.includes(k as 'registry' | 'model'))), ...(spec.options ?? {}) })
      .strictOptions()
      .version(spec.version)
      .help()
      .alias('h', 'help')
      .wrap(Math.min(100, process.stdout.columns ?? 100))
      .epilogue(`Exit status: 0 ok, 2 bad input or usage, 1 runtime failure, ${EXIT_SKIPPED} finished but --on-bad-record skip left records out.`)
      .fail((msg, err) => {
        throw err ?? new UsageError(`${msg.replace(/\s*\n\s*/g, ' ')} (see --help)`);
      });
    for (const [cmd, what] of spec.examples) y.example(cmd, what);
    const parsed = (await y.parseAsync()) as Record<string, unknown>;
    const seed = parsed.seed as number;
    if (!Number.isInteger(seed)) throw new UsageError(`--seed: expected an integer, got ${String(parsed.seed)} (see --help)`);
    if (parsed.device !== 'cpu' && parsed.device !== 'cuda') throw new UsageError(`--device: expected cpu or cuda, got ${JSON.stringify(parsed.device)} (from CATECHISM_DEVICE)`);
    const maxBytes = parsed['max-record-bytes'] as number;
    if (!Number.isInteger(maxBytes) || maxBytes < 1) throw new UsageError(`--max-record-bytes: expected a positive integer, got ${String(parsed['max-record-bytes'])} (see --help)`);
    if (parsed.rejects !== undefined && parsed['on-bad-record'] !== 'skip') throw new UsageError('--rejects needs --on-bad-record skip (see --help)');
    args = { ...(parsed as A), inputs: (parsed._ as unknown[]).map(String) } as CommonArgs & A;
  } catch (e) {
    return fail(e instanceof UsageError || e instanceof InputError ? e : new UsageError((e as Error).message));
  }
  // --device cuda: every kernel of the run goes to the GPU (one switch for all
  // tools). Without a usable GPU the run fails (exit 1, a runtime failure: the
  // flag is valid, the machine lacks a GPU) naming what is missing, never a
  // silent CPU run. Loaded only when asked for.
  if (args.device === 'cuda') {
    try {
      const { useDevice } = await import('../tensor/device.js');
      useDevice('cuda');
    } catch (e) {
      return fail(e);
    }
  }

  // Someone typing at a terminal should know the tool is waiting for them.
  let hinted = false;
  const hintStdin = (): void => {
    if (hinted || args.quiet || !process.stdin.isTTY || !process.stderr.isTTY) return;
    if (args.inputs.length > 0 && !args.inputs.includes('-')) return;
    hinted = true;
    process.stderr.write(`${spec.name}: reading records from the terminal (end with Ctrl-D; see --help)\n`);
  };
  const progress = new Progress(spec.name, !!process.stderr.isTTY && !args.quiet);
  const out = createRecordWriter(process.stdout, { format: args.format });
  // Rejected records (--on-bad-record skip): appended synchronously, so a later crash keeps them.
  let skipped = 0;
  let rejectsFd: number | null = null;
  const skip = (bad: RejectedRecord): void => {
    skipped++;
    if (args.rejects !== undefined) {
      rejectsFd ??= openSync(args.rejects, 'a');
      const line: Record<string, unknown> = { source: bad.source, record: bad.index, error: bad.error.message };
      if (bad.error.field !== undefined) line.field = bad.error.field;
      if (bad.record !== undefined) line.value = bad.record;
      else if (bad.text !== undefined) line.text = bad.text;
      writeSync(rejectsFd, JSON.stringify(line) + '\n');
    }
    if (skipped <= 3 && !args.quiet) process.stderr.write(`${spec.name}: skipped ${bad.error.message}\n`);
  };
  const readOptions = (options?: ReadOptions): ReadOptions => ({
    maxRecordBytes: args['max-record-bytes'],
    ...(args['on-bad-record'] === 'skip' ? { onBad: skip } : {}),
    ...options,
  });
  const loaded = new Map<string, Promise<ToolModel>>();
  const ctx: ToolContext<A> = {
    name: spec.name,
    args,
    rng: new Rng(args.seed),
    read: (options?: ReadOptions) => {
      hintStdin();
      return readRecords(args.inputs, readOptions(options));
    },
    readBatches: (options?: ReadOptions) => {
      hintStdin();
      return readRecordBatches(args.inputs, readOptions(options));
    },
    out,
    progress,
    log: (message: string) => {
      if (!args.quiet) process.stderr.write(`${spec.name}: ${message}\n`);
    },
    reject: (at, error) => {
      error.locate({ source: at.source, record: at.index });
      if (args['on-bad-record'] !== 'skip') throw error;
      skip({ source: at.source, index: at.index, error, record: at.record });
    },
    get skipped() {
      return skipped;
    },
    modelDir: (fallback?: string) => findModelDir(args.model, fallback),
    model: (opts = {}) => {
      const found = findModelDir(args.model, opts.fallback);
      const key = `${path.resolve(found.dir)}\u0000${opts.tokenizer === false ? 0 : 1}`;
      let p = loaded.get(key);
      if (!p) {
        p = loadToolModel(found, opts);
        loaded.set(key, p);
      }
      return p;
    },
    registry: ((opts?: { home: false }) => {
      const r = registryDir(args.registry);
      return opts?.home === false && r.from === 'home' ? undefined : r.dir;
    }) as ToolContext<A>['registry'],
    defaults: () => worldDefaults(findModelDir(args.model)),
    exitCode: undefined,
  };
  const reportSkipped = (): void => {
    if (rejectsFd !== null) closeSync(rejectsFd);
    rejectsFd = null;
    if (skipped > 0) {
      // Said even with --quiet: the output is short of records.
      process.stderr.write(`${spec.name}: ${skipped} bad record(s) skipped${args.rejects !== undefined ? `, written to ${args.rejects}` : ' (--rejects FILE keeps them)'}\n`);
    }
  };
  try {
    await spec.run(ctx);
    await out.end();
    progress.done();
  } catch (e) {
    progress.done();
    reportSkipped();
    fail(e);
  }
  reportSkipped();
  // A tool may have set its own code (validate --strict: 3); skipping is reported unless it did.
  process.exitCode = ctx.exitCode ?? (skipped > 0 && !process.exitCode ? EXIT_SKIPPED : (process.exitCode ?? 0));
}

export { spellingScreen, type SpellingScreen } from './spelling.js';
export { findModelDir, fixtureWorldOf, loadToolModel, registryDir, worldDefaults, type ModelDir, type ToolModel, type WorldDefaults } from './resources.js';
