#!/usr/bin/env node
/**
 * lora-train: fact, probe and locus records in; one adapter bundle per batch
 * of facts written (--out or --registry); every input record passed through
 * in order, then one `adapter` record per bundle. The --method choices and
 * each method's options come from core's EDIT_METHODS.
 */
import type { Options } from 'yargs';
import { packageVersion, runTool, spellingScreen, UsageError } from '@catechism/core/cli';
import type { InputRecord } from '@catechism/core/records';
import { EDIT_METHODS, resolveFactConflicts, type MethodOption, type OnConflict } from '@catechism/core/edit';
import { DEFAULT_ARGS, checkDestination, methodNamed, methodOptions, resourcesFrom, trainEdits, type TrainArgs } from './lib.js';

interface Args {
  out?: string;
  method: string;
  targets?: string[];
  'top-k'?: number;
  layer?: number;
  batch: number;
  'retain-corpus'?: string;
  'known-facts'?: string;
  templates?: string;
  'use-templates': boolean;
  'created-at'?: string;
  over?: string;
  'on-conflict': OnConflict;
  [methodFlag: string]: unknown;
}

const d = DEFAULT_ARGS;

/** Which methods declare each method flag (a flag two methods share is offered once). */
const owners = new Map<string, string[]>();
const methodFlags: Record<string, Options> = {};
for (const m of EDIT_METHODS) {
  for (const [flag, o] of Object.entries(m.options)) {
    const by = owners.get(flag);
    if (by) {
      by.push(m.name);
      continue;
    }
    owners.set(flag, [m.name]);
    methodFlags[flag] = yargsOption(o, `--method ${m.name}:`);
  }
}
// a flag several methods declare is listed under the first one's heading, naming the others
for (const [flag, by] of owners) if (by.length > 1) methodFlags[flag].describe += ` (also ${by.slice(1).map((n) => `--method ${n}`).join(', ')})`;

/** A method option as a yargs option, with no default set (so a flag given can be told from one not given). */
function yargsOption(o: MethodOption, group: string): Options {
  const base: Options = { describe: o.describe, group, ...(o.default !== undefined ? { defaultDescription: JSON.stringify(o.default) } : {}) };
  if (o.choices) return { ...base, choices: [...o.choices] };
  if (o.type === 'array') return { ...base, type: 'array', string: true };
  return { ...base, type: o.type };
}

await runTool<Args>({
  name: 'lora-train',
  version: packageVersion(import.meta.url),
  describe:
    'Turns facts and their probes into adapters (PEFT LoRA files + catechism.json) by an edit method. ' +
    EDIT_METHODS.map((m) => `--method ${m.name}${m.name === d.method ? ' (default)' : ''}: ${m.describe}`).join(' ') +
    ' Input records pass through in order, then one "adapter" record per bundle. A method\'s options (under its heading) are refused with another method.',
  examples: [
    ['probe-gen edits.ndjson | lora-train --out adapters/ > out.ndjson', 'one distilled LoRA adapter for all facts'],
    ['lora-train --objective sft --batch 10 --rank 4 --out adapters/ probes.ndjson', 'SFT, one adapter per 10 facts'],
    ['head -1 facts.ndjson | probe-gen | lora-train --method rome --registry reg/', 'a ROME edit of one fact (about a minute on two cores), stored in a registry'],
    ['attrib probes.ndjson | lora-train --top-k 2 --out adapters/', 'targets from the top-2 loci'],
    ['lora-train --over live probes.ndjson | adapter-merge --into live', 'edit the model as live serves it, then consolidate (both in $CATECHISM_REGISTRY)'],
  ],
  options: {
    out: { type: 'string', describe: 'directory for the bundles (one subdirectory each); or --registry DIR, or $CATECHISM_REGISTRY' },
    method: { choices: EDIT_METHODS.map((m) => m.name), default: d.method, describe: 'editing method' },
    targets: { type: 'array', string: true, describe: 'target modules by name or pattern ({L} = --layer, * = any one name part); default: with --top-k the top loci, else --layer\'s MLP output, else the last layer\'s MLP (its input and output projections; a MoE model: ROME\'s layer\'s MLP output)' },
    'top-k': { type: 'number', describe: 'train the top N modules of the locus records (attrib\'s); without it loci do not choose the targets (the default targets measured better)' },
    layer: { type: 'number', describe: 'layer whose MLP output is the target (without it: the last layer\'s MLP, both projections) and ROME\'s layer (default about 35% of the depth, then the next two layers for a fact that edit leaves unsolved)' },
    batch: { type: 'number', default: d.batch, describe: 'facts per batch (one adapter per batch for LoRA; 0: all in one)' },
    'retain-corpus': { type: 'string', describe: 'general text for retention, one document per line (default with a fixture model: its world\'s train.txt)' },
    'known-facts': { type: 'string', describe: 'fact records whose answers the edits keep (default with a fixture model: its world\'s facts.ndjson)' },
    templates: { type: 'string', describe: 'templates.json with training paraphrases per relation (default with a fixture model: its world\'s)' },
    'use-templates': { type: 'boolean', default: true, describe: 'add training paraphrases from the templates (--no-use-templates: probes only)' },
    'on-conflict': { choices: ['fail', 'last'], default: 'fail', describe: 'two facts with the same subject and relation but different targets (or one forgetting what the other inserts): fail (exit 2, naming the later record) or keep the last, leaving the earlier fact and its probes out of the training and the output (probe-gen\'s --on-conflict)' },
    'created-at': { type: 'string', describe: 'timestamp for the manifests (default: now; for reproducible bundles)' },
    over: { type: 'string', describe: 'make the edits on top of this adapter (a bundle directory; with --registry a ref such as live, a hash or an adapter id): its update is folded into the weights first, and the new adapter is a delta to merge with it (adapter-merge --into); a ref nothing was promoted to yet: the base model' },
    ...methodFlags,
  },
  async run(ctx) {
    const a = ctx.args;
    const method = methodNamed(a.method);
    // a flag of another method means nothing here: refused rather than silently ignored
    for (const [flag, by] of owners) {
      if (a[flag] !== undefined && !by.includes(method.name)) {
        throw new UsageError(`--${flag} is an option of --method ${by.join(', ')}; it means nothing with --method ${method.name}`);
      }
    }
    const posInt = (name: string, v: number, min = 1) => {
      if (!Number.isInteger(v) || v < min) throw new UsageError(`--${name}: expected an integer ≥ ${min}, got ${v}`);
    };
    posInt('batch', a.batch, 0);
    if (a['top-k'] !== undefined) posInt('top-k', a['top-k']);
    if (a.layer !== undefined) posInt('layer', a.layer, 0);
    const flags: Record<string, unknown> = {};
    for (const flag of Object.keys(method.options)) if (a[flag] !== undefined) flags[flag] = a[flag];
    methodOptions(method, flags);
    if (a['created-at'] !== undefined && Number.isNaN(Date.parse(a['created-at']))) throw new UsageError(`--created-at: not a timestamp: ${a['created-at']}`);
    // --out, else the registry (--registry, else $CATECHISM_REGISTRY); both named is an error
    const registry = a.registry ?? (a.out === undefined ? ctx.registry({ home: false }) : undefined);
    checkDestination(a.out, registry);
    const args: TrainArgs = {
      seed: a.seed, out: a.out, registry, method: method.name, batch: a.batch, layer: a.layer, targets: a.targets, topK: a['top-k'],
      options: flags, createdAt: a['created-at'], ...(a.over !== undefined ? { over: a.over } : {}),
    };
    // every record is needed before training (a batch's probes may come after its facts)
    const read: InputRecord[] = [];
    for await (const batch of ctx.readBatches()) {
      ctx.progress.tick(batch.length);
      read.push(...batch);
    }
    const lm = await ctx.model();
    const res = resourcesFrom(
      { model: lm.model, tokenizer: lm.tokenizer!, name: lm.name, sha256: lm.sha256() }, ctx.defaults(),
      { templates: a.templates, retainCorpus: a['retain-corpus'], knownFacts: a['known-facts'], useTemplates: a['use-templates'] }, ctx.log,
    );
    // answers the model cannot spell: refused (exit 2), or left out with --on-bad-record skip, or kept with --allow-unknown
    const screen = spellingScreen(ctx, res.tokenizer);
    const screened = read.filter((r) => screen.keep(r));
    screen.finish();
    // facts that disagree about one subject and relation: refused, or the later kept (before any training)
    const inputs = resolveFactConflicts(screened, a['on-conflict'], ctx.log);
    const adapters = await trainEdits(inputs, args, res, { log: ctx.log });
    await ctx.out.writeBatch(inputs.map((r) => r.record));
    await ctx.out.writeBatch(adapters);
  },
});
