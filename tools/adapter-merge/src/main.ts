#!/usr/bin/env node
/**
 * adapter-merge: merges adapter bundles (cat, linear, svd, ties, dare,
 * negate, scale), consolidates into a ref (--into), explains and exports
 * what a ref holds, and runs the adapter registry (add, promote, rollback,
 * log, show, refs, report, verify).
 */
// Subpath imports: the registry commands never load the native compute addon at start-up;
// merging, explain and export import it lazily (./merge.js).
import { packageVersion, runTool, UsageError } from '@catechism/core/cli';
import { commandsHelp, isRegistryCommand, runRegistryCommand, type Args } from './commands.js';

await runTool<Args>({
  name: 'adapter-merge',
  version: packageVersion(import.meta.url),
  describe:
    'Keeps adapters versioned, auditable and reversible in a registry: bundles stored by content hash ' +
    '(sha256 over the sorted `sha256  path` listing of their files), named refs (live, canary, any name) ' +
    'with an append-only, hash-chained history of what each pointed to, when, why and by whom.\n\n' +
    `Commands:\n${commandsHelp()}\n\n` +
    'ID is a ref (its current bundle), REF@VERSION, a bundle hash or unique prefix (6+ hex digits), ' +
    'or an adapter id (ID = its highest version, ID@V = version V); promote takes an existing directory as a bundle to add first. promote refuses a bundle whose latest ' +
    'validation report does not pass, unless --force (logged). rollback with no --to steps back one version ' +
    'per call (repeated rollbacks walk further back). report attaches the report records it reads ' +
    '(files or stdin) to a bundle\'s validation history (kept beside the bundle, so its hash never changes).\n\n' +
    'Registry: --registry DIR, else $CATECHISM_REGISTRY, else ~/.catechism/registry. Writers serialise on ' +
    'a lock; every write is temp file → fsync → rename, so a killed run leaves the registry consistent.\n\n' +
    'Output: records (NDJSON, or Arrow with --format arrow): `adapter` records (add, show), `ref_event` ' +
    'records (promote, rollback, log, refs), `report` records (report), one `registry_verify` record ' +
    '(verify; exit 1 when anything is corrupted). --text prints readable lines instead.\n\n' +
    'Merging: `adapter-merge [FILES] --method M (--out DIR | --add | --into REF)` reads adapter records (files or stdin; ' +
    'other records pass through) and writes ONE merged bundle and its adapter record. Methods: cat (exact: ranks stacked, ' +
    'ΔW = Σ wᵢ·ΔWᵢ, rank Σ rᵢ), linear (the same, weighted), svd (Σ ΔWᵢ recompressed to --rank by truncated SVD; energy kept ' +
    'reported), ties (--density, then SVD to --rank), dare (--drop, seeded by --seed, then SVD to --rank), negate and ' +
    'scale --by S (one adapter). --into REF merges the input with what REF holds, validates the result (--validator CMD, ' +
    'else `validate` on PATH) and promotes it only on pass; with no validator it refuses unless --force (logged).\n\n' +
    `Model commands:\n  adapter-merge explain --ref REF "prompt" [--target TEXT]   which adapters on REF change the answer, and how much\n` +
    '  adapter-merge export --ref REF DIR                        base model with REF\'s adapter folded in (Hugging Face directory)\n' +
    'Both refuse a model whose weights\' sha256 differs from the base model recorded in the adapter (catechism.json) unless --force.',
  examples: [
    ['adapter-merge add out/fact-42/', 'store a bundle; prints its adapter record with the content hash'],
    ['adapter-merge promote live out/fact-42/ -m "user correction #42"', 'store and promote (needs a passing report)'],
    ['adapter-merge show fact-42 | validate --no-record | adapter-merge report fact-42', 'attach validate\'s reports to the bundle'],
    ['adapter-merge promote canary fact-42 --force -m "manual test"', 'promote by id (or hash prefix) despite the gate (logged)'],
    ['adapter-merge rollback live -m "regressed on search"', 'back to the previous version'],
    ['adapter-merge rollback live --to 3', 'back to the bundle of live@3'],
    ['adapter-merge log live --text', 'who promoted what, when and why'],
    ['adapter-merge show live --text', 'the live bundle: manifest, facts, reports, where it is referenced'],
    ['adapter-merge verify --registry reg/', 'recompute every hash; exit 1 on corruption'],
    ['cat adapters.ndjson | adapter-merge --method cat --out merged/', 'stack every adapter into one exact bundle'],
    ['adapter-merge a.ndjson --method svd --rank 16 --add', 'recompress into the registry; energy kept on stderr'],
    ['lora-train --out adapters/ probes.ndjson | validate | adapter-merge --into live', 'nightly consolidation: merge, validate, promote on pass'],
    ['adapter-merge explain --ref live "Dabe Tensunov works for"', 'which adapter makes the answer'],
    ['adapter-merge export --ref live out/model', 'fold live into the base model'],
  ],
  options: {
    force: { type: 'boolean', default: false, describe: 'promote/--into: promote even without a passing report (logged as "force"); explain/export: use a model other than the adapter\'s base model (its sha256 differs)' },
    message: { type: 'string', alias: 'm', describe: 'promote/rollback/report: why (recorded in the history)' },
    author: { type: 'string', describe: 'promote/rollback/report: who (default $USER)' },
    to: { type: 'number', describe: 'rollback: the ref version to restore' },
    text: { type: 'boolean', default: false, describe: 'readable text instead of records' },
    'lock-timeout': { type: 'number', default: 60, describe: 'seconds to wait for another writer\'s lock' },
    into: { type: 'string', describe: 'merge the input with what REF holds, validate, promote on pass' },
    method: { type: 'string', default: 'cat', describe: 'merge method: cat, linear, svd, ties, dare, negate, scale' },
    weights: { type: 'string', describe: 'merge: comma-separated weight per input adapter (default all 1)' },
    rank: { type: 'number', describe: 'svd/ties/dare: rank of the merged adapter' },
    density: { type: 'number', describe: 'ties: fraction of each adapter\'s entries kept (default 0.2)' },
    drop: { type: 'number', describe: 'dare: drop probability (default 0.9)' },
    by: { type: 'number', describe: 'scale: the factor' },
    out: { type: 'string', describe: 'merge: write the merged bundle to this new directory' },
    add: { type: 'boolean', default: false, describe: 'merge: store the merged bundle in the registry' },
    id: { type: 'string', describe: 'merge: id of the merged adapter (default merge-<method>-<hash>, or REF\'s adapter id with --into)' },
    'adapter-version': { type: 'number', describe: 'merge: version of the merged adapter (default 1, or REF\'s version + 1 with --into)' },
    validator: { type: 'string', describe: '--into: shell command reading the adapter record on stdin, writing report records' },
    ref: { type: 'string', describe: 'explain/export: the ref (or any bundle identifier) to use' },
    target: { type: 'string', describe: 'explain: the answer to score (default: the adapted model\'s top-1 next token)' },
  },
  async run(ctx) {
    const [cmd, ...rest] = ctx.args.inputs;
    if (isRegistryCommand(cmd)) {
      if (ctx.args.into !== undefined) throw new UsageError(`--into is for merging, not for ${cmd}`);
      return runRegistryCommand(ctx, cmd, rest);
    }
    const m = await import('./merge.js');
    if (cmd === 'explain') return m.runExplain(ctx, rest);
    if (cmd === 'export') return m.runExport(ctx, rest);
    return m.runMerge(ctx, ctx.args.inputs);
  },
});
