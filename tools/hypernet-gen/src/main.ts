#!/usr/bin/env node
/**
 * hypernet-gen: fact (and probe) records in; one adapter bundle per fact
 * (or per --batch of facts) written by the trained hypernetwork; every input
 * record passed through in order, then one `adapter` record per bundle.
 *
 * hypernet-gen train: learns the hypernetwork (no records read; training
 * edits from --facts and/or --counterfactuals N of the known facts).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { packageVersion, runTool, spellingScreen, UsageError } from '@catechism/core/cli';
import type { InputRecord } from '@catechism/core/records';
import { patchedNeuronsIn, romeDefaultLayer, type PatchedNeuron } from '@catechism/core/edit';
import { Registry } from '@catechism/core/registry';
import {
  REFINE_DEFAULTS, TRAIN_DEFAULTS, applyHyper, checkCompatible, counterfactuals, inputFacts, loadHyper, readFacts, readLines, loadTemplates, shippedHypernet, trainHyper, trainingFacts,
  type TrainOptions, type ZPart,
} from './lib.js';

const version = packageVersion(import.meta.url);
const argv = process.argv.slice(2);

const int = (name: string, v: number, min: number) => {
  if (!Number.isInteger(v) || v < min) throw new UsageError(`--${name}: expected an integer ≥ ${min}, got ${v}`);
};
const pos = (name: string, v: number, zero = false) => {
  if (!(zero ? v >= 0 : v > 0) || !Number.isFinite(v)) throw new UsageError(`--${name}: expected a number ${zero ? '≥ 0' : '> 0'}, got ${v}`);
};

interface TrainArgs {
  out?: string;
  facts?: string;
  counterfactuals: number;
  holdout?: string[];
  'known-facts'?: string;
  templates?: string;
  corpus?: string;
  'stats-cache'?: string;
  'stats-tokens': number;
  site: 'subject' | 'last';
  'gate-margin': number;
  layer?: number;
  width: number;
  z: string[];
  steps: number;
  'facts-per-step': number;
  lr: number;
  'kl-weight': number;
  'l2-weight': number;
  'keep-same': number;
  'keep-other': number;
  phrasings: number;
  checkpoint?: string;
  'checkpoint-every': number;
  resume: boolean;
}

interface ApplyArgs {
  hypernet?: string;
  out?: string;
  batch: number;
  targets?: string[];
  templates?: string;
  phrasings: number;
  refine: number;
  'refine-lr': number;
  'max-norm': number;
  'batch-max-norm': number;
  'created-at'?: string;
  'avoid-neurons-of'?: string;
}

const d = TRAIN_DEFAULTS;

/**
 * The neurons a last-site hypernetwork must not repurpose: those patched in
 * --avoid-neurons-of DIR, or, into a registry, in its live ref's bundle (so
 * the new adapters merge into live, as lora-train's patcher does).
 */
async function neuronsToAvoid(dir: string | undefined, registry: string | undefined, log: (m: string) => void): Promise<PatchedNeuron[]> {
  let from = dir;
  if (from === undefined && registry && fs.existsSync(path.join(registry, 'registry.json'))) {
    const reg = new Registry(registry);
    const head = await reg.head('live').catch(() => null);
    if (head) {
      from = reg.objectPath(head.bundle);
      log(`avoiding the neurons patched in ref live (${head.adapter_id} v${head.adapter_version})`);
    }
  }
  return from === undefined ? [] : patchedNeuronsIn(from);
}

if (argv[0] === 'train') {
  await runTool<TrainArgs>({
    name: 'hypernet-gen train',
    version,
    usage: 'hypernet-gen train --out DIR [options]',
    readsRecords: false,
    describe:
      'Trains the hypernetwork H for one base model (default: the dense fixture model). --site last (default): H gives the value of one gated neuron of the last ' +
      'layer at the prompt\'s last token, the gate placed in closed form from statistics of the known facts and general text, stored with H. --site subject: ' +
      'H gives the value change δ of one MLP output projection at the subject (ROME\'s layer, about 35% of the depth), A from ROME\'s key covariance. ' +
      'Training edits: --facts FILE (insert facts) and/or --counterfactuals N made from the known facts (another object of the same relation), never of a ' +
      'subject in the --holdout files (default: every request of the world\'s edits.ndjson). H learns end to end through the frozen model: target NLL on the ' +
      'relation\'s training phrasings + KL to the base model on prompts of other subjects. ' +
      'Saves hypernet.safetensors + hypernet.json (content-addressed: its id is the weights\' sha256; base model sha256 and target module recorded). Progress with ETA on stderr; ' +
      '--checkpoint FILE is written as it goes and --resume continues from it (the same run, bit for bit).',
    examples: [
      ['hypernet-gen train --counterfactuals 16 --steps 4 --facts-per-step 4 --out hnet/', 'a tiny run: 16 generated edits, 4 steps'],
      ['hypernet-gen train --counterfactuals 16 --steps 4 --facts-per-step 4 --checkpoint h.ckpt --resume --out hnet/', 'resume from (or start) a checkpoint'],
      ['hypernet-gen train --site subject --counterfactuals 16 --steps 4 --facts-per-step 4 --stats-tokens 2000 --out hnet-subject/', 'the subject site (ROME\'s layer and key side)'],
    ],
    options: {
      out: { type: 'string', describe: 'directory for hypernet.safetensors and hypernet.json' },
      facts: { type: 'string', describe: 'NDJSON of training edits (insert facts with target_new)' },
      counterfactuals: { type: 'number', default: 0, describe: 'also generate N training edits from the known facts (seeded)' },
      holdout: { type: 'array', string: true, describe: 'fact files whose subjects no generated edit uses (default: the world\'s edits.ndjson)' },
      'known-facts': { type: 'string', describe: 'facts the model knows: counterfactual sources and keep prompts (default: the world\'s facts.ndjson)' },
      templates: { type: 'string', describe: 'templates.json with training phrasings per relation (default: the world\'s)' },
      corpus: { type: 'string', describe: 'text for the key statistics, one document per line (default: the world\'s train.txt)' },
      'stats-cache': { type: 'string', describe: 'key statistics cache directory (default: $CATECHISM_CACHE or ~/.cache/catechism; shared with ROME)' },
      'stats-tokens': { type: 'number', default: d.statsTokens, describe: 'corpus tokens for the key covariance (ROME\'s default, so the cache is shared)' },
      site: {
        type: 'string', default: d.site, choices: ['subject', 'last'],
        describe: 'where H writes: "subject", a rank-one δA at the subject\'s last token of --layer (ROME\'s key side); "last", one gated neuron of the last layer at the prompt\'s last token (the gate in closed form, H the value)',
      },
      'gate-margin': {
        type: 'number', default: d.gate.margin,
        describe: '--site last: where each gate\'s threshold sits between the negatives\' 99.9% quantile (0) and the fact\'s phrasings\' 10th percentile (1); stored with H',
      },
      layer: { type: 'number', describe: 'edited layer (default: ROME\'s, about 35% of the depth; --site last: the last layer)' },
      width: { type: 'number', default: d.width, describe: 'hidden width of H' },
      z: { type: 'array', string: true, default: d.z, choices: ['key', 'out', 'target', 'rel'], describe: '--site subject: what H is conditioned on (--site last: the MLP input and the residual at the last token, the target\'s embedding): the subject\'s key, the MLP output there, the target\'s embedding, the last layer\'s residual where the answer is predicted (rel)' },
      steps: { type: 'number', default: d.steps, describe: 'training steps' },
      'facts-per-step': { type: 'number', default: d.factsPerStep, describe: 'training edits per step' },
      lr: { type: 'number', default: d.lr, describe: 'peak learning rate (Adam, warmup then cosine)' },
      'kl-weight': { type: 'number', default: d.klWeight, describe: 'weight of the KL to the base model on keep prompts' },
      'l2-weight': { type: 'number', default: d.l2Weight, describe: 'weight of ‖δ/rms(o)‖²' },
      'keep-same': { type: 'number', default: d.keepSame, describe: 'keep prompts per edit: other subjects of its relation' },
      'keep-other': { type: 'number', default: d.keepOther, describe: 'keep prompts per edit: known facts of any relation' },
      phrasings: { type: 'number', default: d.phrasings, describe: 'phrasings per edit (its prompt, then the relation\'s training phrasings)' },
      checkpoint: { type: 'string', describe: 'checkpoint file (written every --checkpoint-every steps and at the end)' },
      'checkpoint-every': { type: 'number', default: 100, describe: 'steps between checkpoints' },
      resume: { type: 'boolean', default: false, describe: 'continue from --checkpoint' },
    },
    async run(ctx) {
      const a = ctx.args;
      int('steps', a.steps, 1);
      int('facts-per-step', a['facts-per-step'], 1);
      int('width', a.width, 1);
      int('counterfactuals', a.counterfactuals, 0);
      int('keep-same', a['keep-same'], 0);
      int('keep-other', a['keep-other'], 0);
      int('phrasings', a.phrasings, 1);
      int('checkpoint-every', a['checkpoint-every'], 1);
      int('stats-tokens', a['stats-tokens'], 1);
      pos('lr', a.lr);
      pos('kl-weight', a['kl-weight'], true);
      pos('l2-weight', a['l2-weight'], true);
      if (!a.out && !a.checkpoint) throw new UsageError('give --out DIR (and/or --checkpoint FILE): the trained hypernetwork has to go somewhere');
      const found = ctx.modelDir();
      const w = ctx.defaults();
      const known = a['known-facts'] ?? w.file('facts.ndjson');
      const templates = a.templates ?? w.file('templates.json');
      const corpus = a.corpus ?? w.need('train.txt', '--corpus', 'corpus for the key statistics');
      const tm = await ctx.model();
      const model = tm.model;
      const layer = a.layer ?? (a.site === 'last' ? model.config.layers - 1 : romeDefaultLayer(model.config.layers));
      int('layer', layer, 0);
      if (a.site === 'subject' && layer >= model.config.layers - 1) throw new UsageError(`--layer ${layer}: choose 0–${model.config.layers - 2} (the last layer's MLP output at the subject cannot reach the prediction)`);
      const knownRecs = readFacts(known);
      const facts = a.facts ? trainingFacts(a.facts) : [];
      if (a.counterfactuals > 0) {
        const holdFiles = a.holdout ?? [w.file('edits.ndjson')].filter((x): x is string => !!x);
        const exclude = new Set<string>();
        for (const f of holdFiles) for (const r of readFacts(f)) if (typeof r.subject === 'string') exclude.add(r.subject);
        facts.push(...counterfactuals(knownRecs, a.counterfactuals, a.seed, exclude));
        ctx.log(`${a.counterfactuals} counterfactual training edits from ${known ?? '(no known facts)'}, ${exclude.size} held-out subjects excluded`);
      }
      const o: TrainOptions = {
        ...d, site: a.site, gate: { ...d.gate, margin: a['gate-margin'] }, layer, seed: a.seed, width: a.width, z: a.z as ZPart[], steps: a.steps, factsPerStep: a['facts-per-step'], lr: a.lr, klWeight: a['kl-weight'],
        l2Weight: a['l2-weight'], statsTokens: a['stats-tokens'], keepSame: a['keep-same'], keepOther: a['keep-other'], phrasings: a.phrasings,
      };
      await trainHyper(
        { model, tokenizer: tm.tokenizer!, modelName: found.name, modelSha: tm.sha256(), templates: loadTemplates(templates), corpus: readLines(corpus), known: knownRecs, statsCache: a['stats-cache'] },
        facts, o,
        { out: a.out, checkpoint: a.checkpoint, checkpointEvery: a['checkpoint-every'], resume: a.resume, log: (m) => ctx.log(m), logEvery: Math.max(1, Math.min(25, Math.ceil(a.steps / 20))) },
      );
    },
  }, argv.slice(1));
} else {
  await runTool<ApplyArgs>({
    name: 'hypernet-gen',
    version,
    describe:
      'Turns facts into adapters with a trained hypernetwork (default: the one shipped for the dense fixture model, fixtures/hypernet/dense), one forward pass ' +
      'of the base model and of H per fact, no optimisation. The shipped H writes one gated neuron of the last layer per fact: the gate, in closed form from the ' +
      'fact\'s phrasings at their last token (Fisher\'s discriminant against statistics stored in H), opens only on that fact; H gives the value it writes. ' +
      'Each fact of a run takes its own neuron, so a run\'s adapters can be summed. A subject-site H (hypernet-gen train --site subject; ' +
      'fixtures/hypernet/dense-subject) writes ROME\'s rank-one δA instead, and --batch N there is solved as least squares over the facts\' keys. ' +
      'Input records pass through in order, then one "adapter" record per bundle (method hypernet, the hypernetwork\'s id and sha256 in the manifest). ' +
      'Train one with `hypernet-gen train`.',
    examples: [
      ['hypernet-gen --out adapters/ facts.ndjson | validate --no-record', 'one adapter per fact, each validated'],
      ['hypernet-gen --batch 10 --out adapters/ facts.ndjson', 'one adapter for every 10 facts'],
      ['probe-gen facts.ndjson | hypernet-gen --out adapters/ > out.ndjson', 'probes travel into each bundle as its tests'],
      ['hypernet-gen --hypernet fixtures/hypernet/dense-subject --refine 10 --out adapters/ facts.ndjson', 'the subject site: H\'s δ then 10 gradient steps each, norm at most 0.4 × H\'s'],
    ],
    options: {
      hypernet: { type: 'string', describe: 'hypernetwork directory (hypernet.json + hypernet.safetensors; default: the shipped one for a bundled fixture model)' },
      out: { type: 'string', describe: 'directory for the bundles (one subdirectory each); or use --registry' },
      batch: { type: 'number', default: 1, describe: 'facts per adapter (last-token site: one neuron each; subject site: a least-squares solve over their keys)' },
      targets: { type: 'array', string: true, describe: 'the module(s) the adapters must edit; refused unless the hypernetwork was trained for exactly these' },
      templates: { type: 'string', describe: 'templates.json whose training phrasings define each fact\'s key (default: the world\'s, when the hypernetwork was trained with them)' },
      phrasings: { type: 'number', default: d.phrasings, describe: 'phrasings per fact for its key' },
      refine: { type: 'number', default: 0, describe: `subject-site hypernetworks only: after H, this many gradient steps on each fact's δ (its own target NLL; one forward + backward each). 0: H's δ as is, one forward per fact. ${REFINE_DEFAULTS.steps} is the measured setting (README)` },
      'refine-lr': { type: 'number', default: REFINE_DEFAULTS.lr, describe: 'refinement step size, as a share of ‖δ_H‖' },
      'max-norm': { type: 'number', default: REFINE_DEFAULTS.maxNorm, describe: 'with --refine: ‖δ‖ at most this times the norm H gave (the edit\'s reach into other prompts grows with ‖δ‖²)' },
      'batch-max-norm': { type: 'number', default: REFINE_DEFAULTS.batchMaxNorm, describe: 'with --refine and --batch N > 1: the bound for each δ of a batch (refined together under the batch\'s solve; ten edits\' reaches add)' },
      'created-at': { type: 'string', describe: 'timestamp for the manifests (default: now; for reproducible bundles)' },
      'avoid-neurons-of': {
        type: 'string',
        describe: 'a bundle directory whose patched neurons a last-site hypernetwork must not reuse, so the two merge (with --registry: the live ref\'s bundle, by default)',
      },
    },
    async run(ctx) {
      const a = ctx.args;
      int('batch', a.batch, 1);
      int('phrasings', a.phrasings, 1);
      int('refine', a.refine, 0);
      pos('refine-lr', a['refine-lr']);
      pos('max-norm', a['max-norm']);
      pos('batch-max-norm', a['batch-max-norm']);
      if (a['created-at'] !== undefined && Number.isNaN(Date.parse(a['created-at']))) throw new UsageError(`--created-at: not a timestamp: ${a['created-at']}`);
      if (a.out && a.registry) throw new UsageError('--out and --registry exclude each other: give one place for the adapter bundles');
      if (!a.out && !a.registry) throw new UsageError('give --out DIR or --registry DIR for the adapter bundles');
      const found = ctx.modelDir();
      const hdir = a.hypernet ?? shippedHypernet(found.dir);
      if (!hdir) throw new UsageError(`no hypernetwork for --model ${found.dir}: give --hypernet DIR (train one with \`hypernet-gen train --model ${found.dir} --out DIR\`)`);
      const h = loadHyper(hdir);
      const tm = await ctx.model();
      checkCompatible(h, tm.model, tm.sha256(), found.name, a.targets);
      const tfile = a.templates ?? (h.config.templates ? ctx.defaults().file('templates.json') : undefined);
      if (h.config.templates && !tfile) ctx.log(`note: ${h.config.id} was trained with the relation's training phrasings; without --templates each key comes from the fact's prompt and probes only`);
      const read: InputRecord[] = [];
      for await (const batch of ctx.readBatches()) {
        ctx.progress.tick(batch.length);
        read.push(...batch);
      }
      const screen = spellingScreen(ctx, tm.tokenizer!);
      const inputs = read.filter((r) => screen.keep(r));
      screen.finish();
      const facts = inputFacts(inputs);
      const avoid = h.config.site === 'last' ? await neuronsToAvoid(a['avoid-neurons-of'], a.registry ? ctx.registry() : undefined, (m) => ctx.log(m)) : [];
      const { adapters, msPerAdapter } = await applyHyper(
        h, { model: tm.model, tokenizer: tm.tokenizer!, modelName: found.name, modelSha: tm.sha256(), templates: loadTemplates(tfile) },
        facts, inputs.map((r) => r.record as Record<string, unknown>), { batch: a.batch, phrasings: a.phrasings, refine: { steps: a.refine, lr: a['refine-lr'], maxNorm: a['max-norm'], batchMaxNorm: a['batch-max-norm'] }, seed: a.seed, out: a.out, registry: a.registry ? ctx.registry() : undefined, createdAt: a['created-at'], avoid },
        (m) => ctx.log(m),
      );
      if (msPerAdapter.length) ctx.log(`${adapters.length} adapter${adapters.length > 1 ? 's' : ''} from ${path.basename(h.dir)} (${h.config.id}), ${(msPerAdapter.reduce((s, x) => s + x, 0) / msPerAdapter.length).toFixed(1)} ms each to generate`);
      await ctx.out.writeBatch(inputs.map((r) => r.record));
      await ctx.out.writeBatch(adapters);
    },
  }, argv);
}
