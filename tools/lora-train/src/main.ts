#!/usr/bin/env node
/**
 * lora-train: fact, probe and locus records in; one adapter bundle per batch
 * of facts written (--out or --registry); every input record passed through
 * in order, then one `adapter` record per bundle.
 */
import { packageVersion, runTool, spellingScreen, UsageError } from '@catechism/core/cli';
import type { InputRecord } from '@catechism/core/records';
import { DEFAULT_ARGS, checkDestination, loadResources, trainEdits, type TrainArgs } from './lib.js';

interface Args {
  out?: string;
  method: 'lora' | 'rome';
  objective: 'distill' | 'sft';
  targets?: string[];
  'top-k': number;
  layer?: number;
  rank: number;
  alpha: number;
  lr: number;
  steps: number;
  'phase-a-steps': number;
  'rows-per-step': number;
  batch: number;
  'retain-share': number;
  'retain-weight': number;
  'retain-corpus'?: string;
  'known-facts'?: string;
  neighbours: number;
  templates?: string;
  'use-templates': boolean;
  'stats-corpus'?: string;
  'stats-tokens': number;
  'stats-cache'?: string;
  'rome-prefixes': number;
  'retain-facts': number;
  'retain-phrasings': number;
  'retain-documents': number;
  schedule: 'constant' | 'cosine';
  warmup: number;
  'dpo-beta': number;
  'rome-keep-facts': number;
  'retain-per-kind': boolean;
  'forget-to-rest': boolean;
  'null-space-rank': number;
  'created-at'?: string;
}

const d = DEFAULT_ARGS;

await runTool<Args>({
  name: 'lora-train',
  version: packageVersion(import.meta.url),
  describe:
    'Turns facts and their probes into adapters: one bundle (PEFT LoRA files + catechism.json) per batch of facts. ' +
    '--method lora (default): --objective distill trains from the same model with the fact stated in context (phase A: the target ' +
    'module alone; phase B: end to end with MSE to the teacher\'s block outputs, KL to its logits and CE on the target), --objective sft ' +
    'on the targets only; op "forget" facts lower P(old answer); a share of general text and neighbour prompts is held to the base model (KL). ' +
    '--method rome: one rank-one edit per fact (key statistics cached on disk). Input records pass through in order, then one "adapter" record per bundle.',
  examples: [
    ['probe-gen edits.ndjson | lora-train --out adapters/ > out.ndjson', 'one distilled LoRA adapter for all facts'],
    ['lora-train --objective sft --batch 10 --rank 4 --out adapters/ probes.ndjson', 'SFT, one adapter per 10 facts'],
    ['lora-train --method rome --registry reg/ probes.ndjson', 'ROME edits stored in a registry'],
    ['attrib probes.ndjson | lora-train --top-k 2 --out adapters/', 'targets from the top-2 loci'],
  ],
  options: {
    out: { type: 'string', describe: 'directory for the bundles (one subdirectory each); or use --registry' },
    method: { choices: ['lora', 'rome'], default: d.method, describe: 'editing method' },
    objective: { choices: ['distill', 'sft', 'dpo'], default: d.objective, describe: 'LoRA objective (dpo: chosen = the new answer, rejected = the old one, reference = the base model; plus CE on the new answer)' },
    targets: { type: 'array', string: true, describe: 'target modules by name or pattern ({L} = --layer, * = any one name part); default: top loci, else the middle layer\'s MLP output' },
    'top-k': { type: 'number', default: d.topK, describe: 'modules taken from the locus records' },
    layer: { type: 'number', describe: 'layer for default targets (default: the middle layer) and ROME (default: about 35% of the depth, then the next two layers for a fact that edit leaves unsolved)' },
    rank: { type: 'number', default: d.rank, describe: 'LoRA rank' },
    alpha: { type: 'number', default: d.alpha, describe: 'LoRA alpha (scale = alpha / rank)' },
    lr: { type: 'number', default: d.lr, describe: 'learning rate (AdamW)' },
    steps: { type: 'number', default: d.steps, describe: 'step cap (training stops early when every train probe is solved and the loss stalls)' },
    'phase-a-steps': { type: 'number', default: d.phaseASteps, describe: 'distill phase A steps per MLP target' },
    'rows-per-step': { type: 'number', default: d.rowsPerStep, describe: 'training rows (prompts) per step' },
    batch: { type: 'number', default: d.batch, describe: 'facts per adapter (0: all in one)' },
    'retain-share': { type: 'number', default: d.retainShare, describe: 'share of retention rows (general text, neighbour prompts) per step' },
    'retain-weight': { type: 'number', default: d.retainWeight, describe: 'weight of the KL-to-base retention term' },
    'retain-corpus': { type: 'string', describe: 'general text for retention, one document per line (default: the fixture world\'s train.txt)' },
    'known-facts': { type: 'string', describe: 'fact records whose answers neighbour prompts keep (default: the world\'s facts.ndjson)' },
    neighbours: { type: 'number', default: d.neighbours, describe: 'neighbour prompts per fact (same relation, other subjects)' },
    templates: { type: 'string', describe: 'templates.json with training paraphrases per relation (default: the world\'s)' },
    'use-templates': { type: 'boolean', default: d.useTemplates, describe: 'add training paraphrases from the templates (--no-use-templates: probes only)' },
    'stats-corpus': { type: 'string', describe: 'ROME: text for the key statistics (default: the retention corpus)' },
    'stats-tokens': { type: 'number', default: d.statsTokens, describe: 'ROME: tokens for the key statistics' },
    'stats-cache': { type: 'string', describe: 'ROME: statistics cache directory (default: $CATECHISM_CACHE or ~/.cache/catechism)' },
    'rome-prefixes': { type: 'number', default: d.romePrefixes, describe: 'ROME: context prefixes averaged for the key' },
    'rome-keep-facts': { type: 'number', default: d.romeKeepFacts, describe: 'ROME: also keep (KL) the subject\'s other facts and this many known facts of any relation (0: only ten of the relation\'s)' },
    'retain-facts': { type: 'number', default: d.retainFacts, describe: 'known facts of every relation (one training phrasing each, from --known-facts) also held to the base model (KL)' },
    'retain-phrasings': { type: 'number', default: d.retainPhrasings, describe: 'training phrasings per known fact in the --retain-facts set (never a held-out phrasing: validate reads retention on those)' },
    'retain-documents': { type: 'number', default: d.retainDocuments, describe: 'general-text documents (from --retain-corpus) held to the base model at every position' },
    schedule: { choices: ['constant', 'cosine'], default: d.schedule, describe: 'learning-rate schedule (cosine: linear --warmup steps, then cosine decay to 0 at --steps)' },
    warmup: { type: 'number', default: d.warmup, describe: 'warmup steps of --schedule cosine' },
    'dpo-beta': { type: 'number', default: d.dpoBeta, describe: '--objective dpo: β, the inverse temperature of the preference margin against the base model' },
    'retain-per-kind': { type: 'boolean', default: d.retainPerKind, describe: 'retention KL as a mean over prompts plus a mean over document positions (not one mean over every position)' },
    'forget-to-rest': { type: 'boolean', default: d.forgetToRest, describe: 'forget rows learn the base model\'s distribution without the old answer, so the replacement is an answer of the relation\'s kind' },
    'null-space-rank': { type: 'number', default: d.nullSpaceRank, describe: 'AlphaEdit-style: keep lora_A out of the dominant subspace (this many directions) of the preserved keys at each MLP output target (0: off)' },
    'created-at': { type: 'string', describe: 'timestamp for the manifests (default: now; for reproducible bundles)' },
  },
  async run(ctx) {
    const a = ctx.args;
    const posInt = (name: string, v: number, min = 1) => {
      if (!Number.isInteger(v) || v < min) throw new UsageError(`--${name}: expected an integer ≥ ${min}, got ${v}`);
    };
    posInt('rank', a.rank);
    posInt('steps', a.steps, 0);
    posInt('phase-a-steps', a['phase-a-steps'], 0);
    posInt('rows-per-step', a['rows-per-step']);
    posInt('batch', a.batch, 0);
    posInt('top-k', a['top-k']);
    posInt('neighbours', a.neighbours, 0);
    posInt('stats-tokens', a['stats-tokens']);
    posInt('rome-prefixes', a['rome-prefixes'], 0);
    posInt('retain-facts', a['retain-facts'], 0);
    posInt('retain-phrasings', a['retain-phrasings']);
    posInt('retain-documents', a['retain-documents'], 0);
    posInt('warmup', a.warmup, 0);
    if (!(a['dpo-beta'] > 0)) throw new UsageError(`--dpo-beta: expected a positive number, got ${a['dpo-beta']}`);
    posInt('rome-keep-facts', a['rome-keep-facts'], 0);
    posInt('null-space-rank', a['null-space-rank'], 0);
    if (a.layer !== undefined) posInt('layer', a.layer, 0);
    if (!(a['retain-share'] >= 0 && a['retain-share'] < 1)) throw new UsageError(`--retain-share: expected a number in [0, 1), got ${a['retain-share']}`);
    if (!(a['retain-weight'] >= 0)) throw new UsageError(`--retain-weight: expected a number ≥ 0, got ${a['retain-weight']}`);
    if (!(a.lr > 0)) throw new UsageError(`--lr: expected a positive number, got ${a.lr}`);
    if (!(a.alpha > 0)) throw new UsageError(`--alpha: expected a positive number, got ${a.alpha}`);
    if (a['created-at'] !== undefined && Number.isNaN(Date.parse(a['created-at']))) throw new UsageError(`--created-at: not a timestamp: ${a['created-at']}`);
    checkDestination(a.out, a.registry);
    const args: TrainArgs = {
      model: a.model, seed: a.seed, registry: a.registry, out: a.out, method: a.method, objective: a.objective, targets: a.targets,
      topK: a['top-k'], layer: a.layer, rank: a.rank, alpha: a.alpha, lr: a.lr, steps: a.steps, phaseASteps: a['phase-a-steps'],
      rowsPerStep: a['rows-per-step'], batch: a.batch, retainShare: a['retain-share'], retainWeight: a['retain-weight'], retainCorpus: a['retain-corpus'],
      knownFacts: a['known-facts'], neighbours: a.neighbours, templates: a.templates, useTemplates: a['use-templates'],
      statsCorpus: a['stats-corpus'], statsTokens: a['stats-tokens'], statsCache: a['stats-cache'], romePrefixes: a['rome-prefixes'],
      retainFacts: a['retain-facts'], retainPhrasings: a['retain-phrasings'], retainDocuments: a['retain-documents'], schedule: a.schedule, warmup: a.warmup, dpoBeta: a['dpo-beta'], romeKeepFacts: a['rome-keep-facts'], retainPerKind: a['retain-per-kind'], forgetToRest: a['forget-to-rest'], nullSpaceRank: a['null-space-rank'],
      createdAt: a['created-at'],
    };
    // every record is needed before training (a batch's probes may come after its facts)
    const read: InputRecord[] = [];
    for await (const batch of ctx.readBatches()) {
      ctx.progress.tick(batch.length);
      read.push(...batch);
    }
    const res = loadResources(args);
    // answers the model cannot spell: refused (exit 2), or left out with --on-bad-record skip, or kept with --allow-unknown
    const screen = spellingScreen(ctx, res.tokenizer);
    const inputs = read.filter((r) => screen.keep(r));
    screen.finish();
    const adapters = await trainEdits(inputs, args, res, { log: ctx.log });
    await ctx.out.writeBatch(inputs.map((r) => r.record));
    await ctx.out.writeBatch(adapters);
  },
});
