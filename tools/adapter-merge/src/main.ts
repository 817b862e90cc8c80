#!/usr/bin/env node
/**
 * adapter-merge: merges adapter bundles (cat, linear, svd, ties, dare,
 * negate, scale), consolidates into a ref (--into, consolidate), explains
 * and exports what a ref holds, and runs the adapter registry (add, promote,
 * rollback, log, show, refs, report, verify).
 *
 * Each command is a subcommand with its own flags and `--help`
 * (`adapter-merge promote --help`). A first word that is neither a command
 * nor an input file is a usage error listing the commands. With no command
 * word, `adapter-merge [FILES] --method …` merges (as `merge` does), so
 * pipelines such as `… | adapter-merge --into live` keep working.
 */
// Subpath imports: the registry commands never load the native compute addon at start-up;
// merging, explain and export import it lazily (./merge.js).
import { existsSync } from 'node:fs';
import { hideBin } from 'yargs/helpers';
import type { Options } from 'yargs';
import { packageVersion, runTool, UsageError } from '@catechism/core/cli';
import { runRegistryCommand, type Args, type Ctx } from './commands.js';

const version = packageVersion(import.meta.url);

const O: Record<string, Options> = {
  force: { type: 'boolean', default: false },
  message: { type: 'string', alias: 'm', describe: 'why (recorded in the history)' },
  author: { type: 'string', describe: 'who (default $USER)' },
  to: { type: 'number', describe: 'the ref version to restore' },
  text: { type: 'boolean', default: false, describe: 'readable text instead of records' },
  'lock-timeout': { type: 'number', default: 60, describe: 'seconds to wait for another writer\'s lock' },
  into: { type: 'string', describe: 'merge the input with what REF holds, validate, promote on pass' },
  method: { type: 'string', default: 'cat', describe: 'merge method: cat, linear, svd, ties, dare, negate, scale' },
  weights: { type: 'string', describe: 'comma-separated weight per input adapter (default all 1)' },
  rank: { type: 'number', describe: 'svd/ties/dare: rank of the merged adapter' },
  density: { type: 'number', describe: 'ties: fraction of each adapter\'s entries kept (default 0.2)' },
  drop: { type: 'number', describe: 'dare: drop probability (default 0.9)' },
  by: { type: 'number', describe: 'scale: the factor' },
  out: { type: 'string', describe: 'write the merged bundle to this new directory' },
  add: { type: 'boolean', default: false, describe: 'store the merged bundle in the registry' },
  id: { type: 'string', describe: 'id of the merged adapter (default merge-<method>-<hash>, or REF\'s adapter id with --into)' },
  'adapter-version': { type: 'number', describe: 'version of the merged adapter (default 1, or REF\'s version + 1 with --into)' },
  validator: { type: 'string', describe: 'shell command reading the adapter record on stdin, writing report records (default: `validate` on PATH)' },
  'validator-timeout': { type: 'number', default: 300, describe: 'seconds the validator may run; then it is stopped (with what it started), nothing is promoted, exit 1 (0: no limit)' },
  ref: { type: 'string', describe: 'the ref (or any bundle identifier) to use' },
  target: { type: 'string', describe: 'the answer to score (default: the adapted model\'s top-1 next token)' },
  quarantine: { type: 'string', describe: 'file the failing adapters and their reports are appended to (default INBOX.quarantine.ndjson)' },
  attempts: { type: 'number', default: 3, describe: 'start again this many times when another writer moves REF meanwhile' },
  retrain: { type: 'string', describe: 'trainer command (reads fact and probe records, writes adapter records, e.g. "lora-train"): the first candidate is one adapter it trains on every fact of REF and the inbox, replacing REF\'s; if it fails, the adapters are merged as they are' },
  'retrain-when': { choices: ['always', 'failed'], describe: 'with --retrain: retrain every night (always, the default), or only when the sum of REF and the inbox fails validation (failed: cheaper nights; a retrain then resets the drift)' },
  'retrain-timeout': { type: 'number', default: 3600, describe: 'seconds the --retrain trainer may run; then it is stopped and the night merges the adapters as they are (0: no limit)' },
  'export-format': { choices: ['hf', 'onnx'], default: 'hf', hidden: true }, // given as --format hf|onnx (onnx.ts exportFormatArgs)
  'kv-cache': { type: 'boolean', default: false, describe: 'with --format onnx: past key/values in (past_key_values.{i}.key/.value) and out (present.{i}.key/.value), for generation' },
  runtime: { choices: ['engine', 'onnx'], default: 'engine', describe: 'score with our engine, or with onnxruntime-node on ONNX exports of each adapter state' },
  'onnx-dir': { type: 'string', describe: '--runtime onnx: where exports are looked up (by the state in their export.json) and written (default: a temporary directory)' },
  key: { type: 'string', describe: 'key file (PEM): approve takes the private key, add-approver the public one' },
  note: { type: 'string', describe: 'a note signed with the approval' },
  approvals: { type: 'number', describe: 'approvals by distinct approvers a promotion to REF needs (0: unprotected)' },
  namespace: { type: 'string', describe: 'the namespace whose refs (NS/…) the approver approves (default: refs without a namespace)' },
  html: { type: 'string', describe: 'also write a page with one trend chart per metric (vega-lite, rendered to SVG)' },
  traffic: { type: 'string', describe: 'NDJSON traffic log: one {"prompt": …} per line (as a serving system logs them)' },
  promote: { type: 'boolean', default: false, describe: 'promote the candidate to REF when the canary passes' },
  'max-disagreement': { type: 'number', describe: 'largest share of prompts whose greedy answer may change (default: registry config, 0.2)' },
  'max-kl': { type: 'number', describe: 'largest mean KL(live ‖ candidate) of the next-token distributions (default: registry config, 0.5)' },
  'max-leak': { type: 'number', describe: 'largest share of prompts where the candidate leaks an edited target to another subject (default: registry config, 0)' },
  'answer-tokens': { type: 'number', default: 3, describe: 'tokens of each greedy answer compared' },
};
const pick = (names: string[], over: Record<string, Partial<Options>> = {}): Record<string, Options> =>
  Object.fromEntries(names.map((n) => [n, { ...O[n], ...(over[n] ?? {}) } as Options]));

const ID_HELP =
  'ID is a ref (its current bundle), REF@VERSION, a bundle hash or unique prefix (6+ hex digits), or an adapter id (ID = its highest version, ID@V = version V).';
const REGISTRY_HELP = 'Registry: --registry DIR, else $CATECHISM_REGISTRY, else ~/.catechism/registry.';
const MERGE_FLAGS = ['method', 'weights', 'rank', 'density', 'drop', 'by', 'out', 'add', 'id', 'adapter-version', 'into', 'validator', 'validator-timeout', 'force', 'message', 'author', 'lock-timeout', 'text'];

interface Command {
  synopsis: string;
  summary: string;
  describe: string;
  options: Record<string, Options>;
  examples: Array<[string, string]>;
  /** Reads records (files or stdin). */
  reads: boolean;
  run(ctx: Ctx, rest: string[]): Promise<void>;
}

const registry = (cmd: Parameters<typeof runRegistryCommand>[1]) => (ctx: Ctx, rest: string[]) => runRegistryCommand(ctx, cmd, rest);
const merge = () => import('./merge.js');
/** A registry read-out: prints records (or --text), reads no input. */
const readout = (cmd: Parameters<typeof runRegistryCommand>[1], c: Pick<Command, 'synopsis' | 'summary' | 'describe'>, example: [string, string]): Command => ({
  ...c,
  options: pick(['text']),
  examples: [example],
  reads: false,
  run: registry(cmd),
});

const COMMANDS: Record<string, Command> = {
  merge: {
    synopsis: 'merge [FILES] --method M (--out DIR | --add | --into REF)',
    summary: 'merge the adapter records read into ONE bundle (the default command)',
    describe:
      'Reads adapter records (files or stdin; other records pass through) and writes ONE merged bundle and its adapter record. Methods: cat (exact: ranks stacked, ' +
      'ΔW = Σ wᵢ·ΔWᵢ, rank Σ rᵢ), linear (the same, weighted), svd (Σ ΔWᵢ recompressed to --rank by truncated SVD; energy kept ' +
      'reported), ties (--density, then SVD to --rank), dare (--drop, seeded by --seed, then SVD to --rank), negate and ' +
      'scale --by S (one adapter). --into REF merges the input with what REF holds, validates the result (--validator CMD, ' +
      'else `validate` on PATH; stopped after --validator-timeout) and promotes it only on a passing report that counts (it names the merged bundle\'s ' +
      'sha256 and its base model\'s sha256); with no validator it refuses unless --force (logged). Of two concurrent --into runs one wins, the other exits 1 ("moved").',
    options: pick(MERGE_FLAGS, {
      force: { describe: '--into: promote even without a passing report, or with no validator (logged as "force")' },
      message: { describe: '--into: why (recorded in the history; also the merged bundle\'s source)' },
    }),
    examples: [
      ['cat adapters.ndjson | adapter-merge --method cat --out merged/', 'stack every adapter into one exact bundle'],
      ['adapter-merge merge a.ndjson --method svd --rank 16 --add', 'recompress into the registry; energy kept on stderr'],
      ['lora-train --out adapters/ probes.ndjson | validate | adapter-merge --into live', 'merge, validate, promote on pass'],
    ],
    reads: true,
    run: async (ctx, rest) => (await merge()).runMerge(ctx, rest),
  },
  consolidate: {
    synopsis: 'consolidate INBOX [--into REF] [--quarantine FILE]',
    summary: 'nightly: merge an inbox into REF; bisect out and quarantine the adapters that break it',
    describe:
      'The nightly job. Takes INBOX.lock (a second run at the same time exits 1: another run holds the inbox), renames INBOX to ' +
      'INBOX.pending-<time>, merges every pending adapter record with what REF (default live) holds and validates the candidate. ' +
      'If it fails, finds which adapters break it by bisection (halves tried on top of REF and what was accepted so far; about 2·log2(n) ' +
      'validations for one bad adapter among n), promotes the rest (compare-and-swap; again when another writer moved REF, up to ' +
      '--attempts), and appends each failing adapter\'s record (with a `quarantine` field saying why) and its failing report to ' +
      'the quarantine file. Pending files become INBOX.done-<time>. A validator that fails or outlives --validator-timeout ' +
      'quarantines nothing: the pending files stay for the next run (exit 1). Writes one `consolidation` record (what was promoted, accepted, quarantined). ' +
      'With --retrain CMD, the first candidate is one adapter CMD trains on every fact REF and the pending adapters state (with their probes) on the base model, ' +
      'replacing REF\'s adapter: summed adapters add their drifts, a retrained one does not. If it fails validation (or CMD fails), the night merges and bisects as above. ' +
      'With --retrain-when failed the sum is tried first and the retrain only when the sum fails.',
    options: pick(['into', 'quarantine', 'validator', 'validator-timeout', 'retrain', 'retrain-when', 'retrain-timeout', 'method', 'rank', 'attempts', 'message', 'author', 'lock-timeout', 'text'], {
      into: { describe: 'the ref to consolidate into', default: 'live' },
    }),
    examples: [
      ['adapter-merge consolidate inbox.ndjson --into live', 'what scripts/nightly-consolidate.sh runs'],
      ['adapter-merge consolidate inbox.ndjson --validator "validate --quiet --retain-n 50"', 'with validate\'s options'],
      ['adapter-merge consolidate inbox.ndjson --retrain "lora-train"', 'live retrained as one adapter from all its facts'],
    ],
    reads: false,
    run: async (ctx, rest) => (await import('./consolidate.js')).runConsolidate(ctx, rest),
  },
  add: {
    synopsis: 'add BUNDLE_DIR...',
    summary: 'store bundles by content hash',
    describe: 'Stores bundle directories by content hash (sha256 over the sorted `sha256  path` listing of their files); prints an adapter record per bundle.',
    options: pick(['lock-timeout', 'text']),
    examples: [['adapter-merge add out/fact-42/', 'store a bundle; prints its adapter record with the content hash']],
    reads: false,
    run: registry('add'),
  },
  promote: {
    synopsis: 'promote REF BUNDLE_DIR|ID',
    summary: 'point REF at a bundle whose latest report that counts passes',
    describe:
      `Points REF at a bundle (an existing directory is added first). Refused unless the bundle's latest report that counts passes: a report counts when it names the bundle's sha256 (bundle_sha256), ` +
      `its base model's sha256 (base_model_sha256) and the run that made it (run), and was not changed after it was stored. --force promotes anyway (logged with the reason). ` +
      `A protected ref (\`protect\`), or a high-risk adapter where its namespace has approvers, also needs signed approvals (\`approve\`), checked under the lock; --force never replaces them. ${ID_HELP}`,
    options: pick(['force', 'message', 'author', 'lock-timeout', 'text'], { force: { describe: 'promote even without a passing report (logged as "force")' } }),
    examples: [
      ['adapter-merge promote live out/fact-42/ -m "user correction #42"', 'store and promote (needs a passing report)'],
      ['adapter-merge promote canary fact-42 --force -m "manual test"', 'promote by id (or hash prefix) despite the gate (logged)'],
    ],
    reads: false,
    run: registry('promote'),
  },
  rollback: {
    synopsis: 'rollback REF [--to VERSION]',
    summary: 'move REF back (one step per call, or to --to VERSION)',
    describe: 'Moves REF back: with no --to one version per call (repeated rollbacks walk further back), with --to the bundle of that history version. Refused when REF\'s history is damaged (cut, emptied or deleted below its head record).',
    options: pick(['to', 'message', 'author', 'lock-timeout', 'text']),
    examples: [
      ['adapter-merge rollback live -m "regressed on search"', 'back to the previous version'],
      ['adapter-merge rollback live --to 3', 'back to the bundle of live@3'],
    ],
    reads: false,
    run: registry('rollback'),
  },
  log: readout(
    'log',
    {
      synopsis: 'log REF',
      summary: 'REF\'s history: who promoted what, when and why',
      describe: 'Prints REF\'s history, one `ref_event` record per version (promotions name the report they were let through on).',
    },
    ['adapter-merge log live --text', 'who promoted what, when and why'],
  ),
  show: readout(
    'show',
    {
      synopsis: 'show ID',
      summary: 'a bundle: manifest, facts, reports, where it is referenced',
      describe: `Prints a stored bundle's adapter record with its manifest, validation history and the refs that point to it. ${ID_HELP}`,
    },
    ['adapter-merge show live --text', 'the live bundle: manifest, facts, reports, where it is referenced'],
  ),
  refs: readout(
    'refs',
    {
      synopsis: 'refs',
      summary: 'every ref and where it points',
      describe: 'Prints the current `ref_event` of every ref.',
    },
    ['adapter-merge refs --text', 'every ref and its bundle'],
  ),
  report: {
    synopsis: 'report ID [FILES...]',
    summary: 'attach validate\'s reports to a bundle\'s history',
    describe:
      `Attaches the report records it reads (files or stdin) to a stored bundle's validation history (kept beside the bundle, so its hash never changes), ` +
      `sealed with their content hash (report_sha256) and a hash chain. A report is refused (exit 2) unless it names this bundle's sha256 (bundle_sha256), ` +
      `the adapter's base model sha256 (base_model_sha256) and the run that made it (run: {tool, id}), as validate's reports do. ${ID_HELP}`,
    options: pick(['message', 'author', 'lock-timeout', 'text']),
    examples: [['adapter-merge show fact-42 | validate --no-record | adapter-merge report fact-42', 'attach validate\'s report to the bundle']],
    reads: true,
    run: registry('report'),
  },
  verify: readout(
    'verify',
    {
      synopsis: 'verify',
      summary: 'recompute every hash; exit 1 on any damage',
      describe:
        'Recomputes every object\'s hash and checks every ref history and report log: hash chains, head records (a history cut at a line boundary, ' +
        'emptied or deleted), reports edited after they were stored, and the reports promotions were let through on. One `registry_verify` record; exit 1 when anything is damaged.',
    },
    ['adapter-merge verify --registry reg/', 'recompute every hash; exit 1 on corruption'],
  ),
  keygen: {
    synopsis: 'keygen --out FILE',
    summary: 'make an ed25519 key pair for an approver (FILE, FILE.pub)',
    describe: 'Writes a new ed25519 private key to FILE (PKCS#8 PEM, mode 600) and its public key to FILE.pub (SPKI PEM). The same with openssl: `openssl genpkey -algorithm ed25519 -out FILE && openssl pkey -in FILE -pubout -out FILE.pub`.',
    options: pick(['out', 'text'], { out: { describe: 'the private key file to write (the public key goes to FILE.pub)' } }),
    examples: [['adapter-merge keygen --out alice.key', 'alice.key (secret) and alice.key.pub']],
    reads: false,
    run: registry('keygen'),
  },
  'add-approver': {
    synopsis: 'add-approver NAME --key PUBLIC_KEY_FILE [--namespace NS]',
    summary: 'list a public key as an approver (of refs without a namespace, or of NS/…)',
    describe: 'Adds an approver to the registry\'s config.json: a name and an ed25519 public key (PEM; a private key\'s file gives its public half). With --namespace NS the key approves only refs NS/…; without, only refs without a namespace.',
    options: pick(['key', 'namespace', 'author', 'lock-timeout', 'text']),
    examples: [['adapter-merge add-approver alice --key alice.key.pub', 'alice may approve live, canary, … (acme/… needs --namespace acme)']],
    reads: false,
    run: registry('add-approver'),
  },
  protect: {
    synopsis: 'protect REF --approvals N',
    summary: 'promotions to REF need N approvals by distinct approvers',
    describe: 'Protects REF: a promotion to it then needs N valid signatures by distinct approvers of its namespace over exactly the bundle and the report the gate judges it by (checked under the registry lock; --force does not replace them). N = 0 lifts the protection.',
    options: pick(['approvals', 'lock-timeout', 'text']),
    examples: [['adapter-merge protect live --approvals 2', 'two approvers must sign each promotion to live']],
    reads: false,
    run: registry('protect'),
  },
  approve: {
    synopsis: 'approve REF ID --key PRIVATE_KEY_FILE [--note TEXT]',
    summary: 'sign an approval of a bundle (and its report) for promotion to REF',
    describe: `Signs (ed25519) and records an approval: approver, ref, bundle sha256, the sha256 of the report the gate judges the bundle by, time and note, appended to REF's hash-chained approvals log. Refused (exit 1) when the key is not an approver of REF's namespace. ${ID_HELP}`,
    options: pick(['key', 'note', 'author', 'lock-timeout', 'text']),
    examples: [['adapter-merge add-approver alice --key alice.key.pub && adapter-merge approve live fact-42 --key alice.key --note "checked the sources"', 'alice, an approver, approves fact-42 for live']],
    reads: false,
    run: registry('approve'),
  },
  approvals: readout(
    'approvals',
    {
      synopsis: 'approvals REF',
      summary: 'the approvals recorded for REF',
      describe: 'Prints the signed approvals recorded for promotions to REF (`approval` records).',
    },
    ['adapter-merge approvals live --text', 'who approved what for live'],
  ),
  canary: {
    synopsis: 'canary REF ID --traffic FILE [--promote]',
    summary: 'replay logged traffic through REF and a candidate; promote or refuse',
    describe:
      'Replays the prompts of a traffic log (NDJSON, one {"prompt": …} per line) through REF\'s current bundle (the base model when REF is empty) and through the candidate ID, ' +
      'and measures: disagreement (share of prompts whose greedy answer, --answer-tokens tokens, changes), kl (mean KL(live ‖ candidate) of the next-token distribution) and leak ' +
      '(share of prompts not about an edited fact\'s subject where the candidate answers with that fact\'s target_new and live did not). Thresholds (--max-*, else the registry config\'s `canary`) ' +
      'decide: the `canary` record is stored with the bundle (canary/<sha256>.ndjson); a refused candidate exits 1 and `promote` to REF refuses it from then on; with --promote a passing one is promoted (gate and approvals apply).',
    options: pick(['traffic', 'promote', 'max-disagreement', 'max-kl', 'max-leak', 'answer-tokens', 'message', 'author', 'lock-timeout', 'force', 'text'], {
      force: { describe: 'use a model other than the adapters\' base model (its sha256 differs)' },
    }),
    examples: [['adapter-merge canary live fact-42 --traffic fixtures/world/eval/general.ndjson --promote', 'promote fact-42 only if it behaves on the logged prompts (any records with a prompt)']],
    reads: false,
    run: async (ctx, rest) => (await import('./canary.js')).runCanary(ctx, rest),
  },
  watch: {
    synopsis: 'watch REF [REPORT_FILES...]',
    summary: 'drift watch: record REF\'s figures; roll back automatically when they fail',
    describe:
      'Reads report records about REF\'s current bundle (validate\'s output; files or stdin), appends the figures of the last one to REF\'s watch history, and when it failed rolls REF back to the ' +
      'last good version (the latest earlier version, of another bundle, whose own watch figures did not fail), logged as an automatic rollback with the failing figures. What scripts/watch-live.sh runs from cron.',
    options: pick(['message', 'author', 'lock-timeout', 'text']),
    examples: [['adapter-merge show live | validate --no-record --retain-n 50 --general-n 20 --no-fluency | adapter-merge watch live', 'validate live now; roll back if it fails']],
    reads: true,
    run: registry('watch'),
  },
  history: {
    synopsis: 'history REF [--html FILE]',
    summary: 'every metric of every version of REF (validation and watch); --html: trend charts',
    describe: 'Prints one `history_point` record per metric of each version of REF: the report its promotion was let through on, and every drift-watch measurement. --html FILE also writes a page with one trend chart per metric (vega-lite, rendered to SVG) and the history table.',
    options: pick(['html', 'text']),
    examples: [['adapter-merge history live --html live.html', 'trend of each metric per version of live']],
    reads: false,
    run: registry('history'),
  },
  explain: {
    synopsis: 'explain --ref REF "prompt" [--target TEXT]',
    summary: 'which adapters on REF change the answer, and how much',
    describe:
      'Scores the prompt on the base model and with REF\'s bundle, then with each merged parent ablated. Refuses a model whose weights\' sha256 differs from the adapter\'s recorded base model unless --force.',
    options: pick(['ref', 'target', 'force', 'text', 'runtime', 'onnx-dir'], { force: { describe: 'use a model other than the adapter\'s base model (its sha256 differs)' } }),
    examples: [
      ['adapter-merge explain --ref live "Dabe Tensunov works for"', 'which adapter makes the answer'],
      ['adapter-merge explain --ref live "Dabe Tensunov works for" --runtime onnx', 'the same, scored by onnxruntime-node'],
    ],
    reads: false,
    run: async (ctx, rest) => (await merge()).runExplain(ctx, rest),
  },
  export: {
    synopsis: 'export --ref REF DIR',
    summary: 'base model with REF\'s adapter folded in (Hugging Face directory or ONNX)',
    describe:
      'Writes the base model with REF\'s adapter folded into its weights as a new Hugging Face model directory (--format hf, the default: config.json, model.safetensors, the tokenizer files), ' +
      'or as ONNX (--format onnx: model.onnx, opset 17, input_ids and attention_mask in, logits out; the tokenizer and config files beside it; export.json and the model\'s metadata_props record the base model\'s sha256, the adapter\'s hashes and the options; the same inputs give byte-identical files). ' +
      'Refuses a base model without tokenizer.json (the export would not be usable), and one whose weights\' sha256 differs from the adapter\'s recorded base model unless --force.',
    options: pick(['ref', 'force', 'text', 'export-format', 'kv-cache'], { force: { describe: 'use a model other than the adapter\'s base model (its sha256 differs)' } }),
    examples: [
      ['adapter-merge export --ref live out/model', 'fold live into the base model'],
      ['adapter-merge export --ref live --format onnx out/onnx', 'the same as ONNX, for onnxruntime and other ONNX runtimes'],
    ],
    reads: false,
    run: async (ctx, rest) => (await merge()).runExport(ctx, rest),
  },
};

export const COMMAND_NAMES = Object.keys(COMMANDS);

/** One short line per command (yargs wraps --help text at 100 columns). */
function commandsList(): string {
  return Object.entries(COMMANDS)
    .map(([n, c]) => `  ${n.padEnd(13)}${c.summary}`)
    .join('\n');
}

/** Options (common ones included) that take a value, so the word after them is not the command. */
const VALUE_OPTIONS = new Set(['format', 'seed', 'model', 'device', 'registry', 'm']);
for (const [name, o] of Object.entries(O)) {
  if (o.type !== 'boolean') {
    VALUE_OPTIONS.add(name);
    if (typeof o.alias === 'string') VALUE_OPTIONS.add(o.alias);
  }
}

/** The index in argv of the first positional word, or -1. */
function firstWord(argv: string[]): number {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') return i + 1 < argv.length ? i + 1 : -1;
    if (a.startsWith('-') && a !== '-') {
      if (a.includes('=')) continue;
      const name = a.replace(/^--?/, '');
      if (VALUE_OPTIONS.has(name)) i++;
      continue;
    }
    return i;
  }
  return -1;
}

const argv = hideBin(process.argv);
const at = firstWord(argv);
const word = at >= 0 ? argv[at] : undefined;
let name: string;
let args = argv;
if (word !== undefined && word in COMMANDS) {
  name = word;
  args = [...argv.slice(0, at), ...argv.slice(at + 1)];
} else {
  name = 'merge';
  if (word !== undefined && word !== '-' && !existsSync(word)) {
    // not a command and not a file to merge: a mistyped command, most likely
    process.stderr.write(`adapter-merge: unknown command "${word}" (and no file of that name to merge); the commands are:\n${commandsList()}\nSee adapter-merge COMMAND --help.\n`);
    process.exit(2);
  }
}
if (name === 'export') args = (await import('./onnx.js')).exportFormatArgs(args);
const cmd = COMMANDS[name];
const overview = word === undefined || !(word in COMMANDS);

await runTool<Args>(
  {
    name: 'adapter-merge',
    version,
    usage: overview ? `$0 COMMAND [options]   (no COMMAND: $0 ${COMMANDS.merge.synopsis.replace(/^merge /, '')})` : `$0 ${cmd.synopsis} [options]`,
    readsRecords: cmd.reads,
    describe: overview
      ? 'Keeps adapters versioned, auditable and reversible in a registry: bundles stored by content hash, named refs (live, canary, any name) ' +
        'with an append-only, hash-chained history of what each pointed to, when, why and by whom; merges and consolidates adapters.\n\n' +
        `Commands (each has its own --help):\n${commandsList()}\n\n` +
        `${REGISTRY_HELP} Writers serialise on a lock; every write is temp file → fsync → rename, so a killed run leaves the registry consistent.\n\n` +
        `With no command, adapter-merge merges: ${cmd.describe}`
      : `${cmd.describe}${cmd.options['lock-timeout'] || name === 'verify' || name === 'log' || name === 'show' || name === 'refs' ? `\n\n${REGISTRY_HELP}` : ''}`,
    examples: cmd.examples,
    options: cmd.options,
    async run(ctx) {
      return cmd.run(ctx as Ctx, ctx.args.inputs);
    },
  },
  args,
);
