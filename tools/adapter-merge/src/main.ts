#!/usr/bin/env node
/**
 * adapter-merge: the adapter registry's command line (add, promote,
 * rollback, log, show, refs, report, verify). Merging adapters
 * (`adapter-merge [files]` over adapter records, `--into REF`), `explain` and
 * `export` need the model engine and come next; they answer with a usage
 * error (exit 2) saying so.
 */
// Subpath imports: the registry commands never load the native compute addon at start-up.
import { packageVersion, runTool, UsageError } from '@catechism/core/cli';
import { LATER_COMMANDS, commandsHelp, isRegistryCommand, runRegistryCommand, type Args } from './commands.js';

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
    'Not implemented yet (exit 2): merging (`adapter-merge [files]` of adapter records, --into REF), explain, export.',
  examples: [
    ['adapter-merge add out/fact-42/', 'store a bundle; prints its adapter record with the content hash'],
    ['adapter-merge promote live out/fact-42/ -m "user correction #42"', 'store and promote (needs a passing report)'],
    ['validate --adapter out/fact-42 | adapter-merge report fact-42', 'attach validate\'s reports to the bundle'],
    ['adapter-merge promote canary 3f9a2c --force -m "manual test"', 'promote by hash prefix despite the gate (logged)'],
    ['adapter-merge rollback live -m "regressed on search"', 'back to the previous version'],
    ['adapter-merge rollback live --to 3', 'back to the bundle of live@3'],
    ['adapter-merge log live --text', 'who promoted what, when and why'],
    ['adapter-merge show live --text', 'the live bundle: manifest, facts, reports, where it is referenced'],
    ['adapter-merge verify --registry /srv/catechism', 'recompute every hash; exit 1 on corruption'],
  ],
  options: {
    force: { type: 'boolean', default: false, describe: 'promote: promote even without a passing report (logged as "force")' },
    message: { type: 'string', alias: 'm', describe: 'promote/rollback/report: why (recorded in the history)' },
    author: { type: 'string', describe: 'promote/rollback/report: who (default $USER)' },
    to: { type: 'number', describe: 'rollback: the ref version to restore' },
    text: { type: 'boolean', default: false, describe: 'readable text instead of records' },
    'lock-timeout': { type: 'number', default: 60, describe: 'seconds to wait for another writer\'s lock' },
    into: { type: 'string', describe: 'merge into REF, validate, promote on pass (not implemented yet)' },
  },
  async run(ctx) {
    const [cmd, ...rest] = ctx.args.inputs;
    if (isRegistryCommand(cmd)) {
      if (ctx.args.into !== undefined) throw new UsageError(`--into is for merging, not for ${cmd}`);
      return runRegistryCommand(ctx, cmd, rest);
    }
    const available = 'available now: add, promote, rollback, log, show, refs, report, verify (see --help)';
    if (cmd !== undefined && (LATER_COMMANDS as readonly string[]).includes(cmd)) throw new UsageError(`${cmd} is not implemented yet (it needs the model engine); ${available}`);
    throw new UsageError(`merging adapters (adapter-merge [files] reading adapter records${ctx.args.into !== undefined ? ', --into' : ''}) is not implemented yet; ${available}`);
  },
});
