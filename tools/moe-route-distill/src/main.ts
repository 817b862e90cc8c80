#!/usr/bin/env node
/**
 * moe-route-distill: fact, probe and locus records in; one adapter bundle per
 * batch of facts written (--out or --registry); every input record passed
 * through in order, then one `adapter` record per bundle, then (with
 * --emit-routes) the `route` records.
 */
import { packageVersion, runTool, spellingScreen, UsageError } from '@catechism/core/cli';
import type { InputRecord } from '@catechism/core/records';
import { DEFAULT_ARGS, checkDestination, distillEdits, loadResources, type DistillArgs } from './lib.js';

interface Args {
  out?: string;
  layers?: number[];
  'router-only': boolean;
  'experts-only': boolean;
  'experts-per-layer': number;
  'expert-inputs': boolean;
  'drop-teacher-misses': boolean;
  rank: number;
  alpha: number;
  lr: number;
  steps: number;
  'phase-a-steps': number;
  'rows-per-step': number;
  batch: number;
  'router-weight': number;
  'mse-weight': number;
  'pin-weight': number;
  'subject-prefixes': number;
  'retain-share': number;
  'retain-weight': number;
  'route-retain-weight': number;
  schedule: string;
  warmup: number;
  'anneal-steps': number;
  'retain-phrasings': number;
  'retain-documents': number;
  'neighbour-prompts': number;
  'retain-corpus'?: string;
  'known-facts'?: string;
  neighbours: number;
  'retain-facts': number;
  'kl-budget': number;
  'kl-monitor': number;
  'dual-rate': number;
  'dual-max': number;
  lookalikes: number;
  'lookalike-repeat': number;
  prefixes: number;
  templates?: string;
  'use-templates': boolean;
  'emit-routes': boolean;
  'created-at'?: string;
}

const d = DEFAULT_ARGS;

await runTool<Args>({
  name: 'moe-route-distill',
  version: packageVersion(import.meta.url),
  describe:
    'For mixture-of-experts models (default: the MoE fixture model): turns facts into adapters by distilling from the same model with the fact ' +
    'stated in its context. The teacher\'s router logits and its experts\' inputs and outputs are recorded at the prompt positions from the ' +
    'subject on; the student (no context) trains LoRA on the experts of the adapted layers (default: every expert of the last layer, input and ' +
    'output projections) and on their routers, end to end: CE on the target, next-token KL and router KL to the teacher (on rows whose teacher ' +
    'states the target), holding general text, neighbour prompts and known facts to the base model (next-token and router KL, under a KL ' +
    'budget). Phase A (warm start per module) and MSE to the teacher\'s MoE block outputs are options. One PEFT bundle per batch (router and ' +
    'expert LoRAs; catechism.json records the routing per expert before and after). Input records pass through in order, then one "adapter" ' +
    'record per bundle; --emit-routes adds "route" records (teacher, base, adapted) for each fact\'s edit and paraphrase probes.',
  examples: [
    ['probe-gen facts.ndjson | moe-route-distill --steps 20 --out adapters/ > out.ndjson', 'one adapter (router + experts) for all facts, at most 20 steps'],
    ['moe-route-distill --experts-only --steps 20 --out adapters/ probes.ndjson', 'experts only, no router adapter (ablation)'],
    ['attrib --method expert --model fixtures/models/moe facts.ndjson | moe-route-distill --layers 1 --experts-per-layer 2 --emit-routes --steps 20 --out adapters/', 'at layer 1, the two experts attrib ranks first there, with routing provenance'],
  ],
  options: {
    out: { type: 'string', describe: 'directory for the bundles (one subdirectory each); or use --registry' },
    layers: { type: 'array', number: true, describe: 'layers whose routers and experts are adapted (default: the last layer)' },
    'router-only': { type: 'boolean', default: d.routerOnly, describe: 'adapt the routers only (no expert LoRA)' },
    'experts-only': { type: 'boolean', default: d.expertsOnly, describe: 'adapt the experts only (no router LoRA, no router KL)' },
    'experts-per-layer': { type: 'number', default: d.expertsPerLayer, describe: 'experts adapted per layer: those locus records name, then the most teacher routing weight (0: every expert of the layer)' },
    'expert-inputs': { type: 'boolean', default: d.expertInputs, describe: 'also adapt the chosen experts\' input projections (gate and up), not only their output projection' },
    'drop-teacher-misses': { type: 'boolean', default: d.dropTeacherMisses, describe: 'training rows whose teacher does not answer the target (top-1) with the fact in context learn from the target\'s CE alone (no next-token KL, router KL or block MSE to that teacher)' },
    rank: { type: 'number', default: d.rank, describe: 'LoRA rank' },
    alpha: { type: 'number', default: d.alpha, describe: 'LoRA alpha (scale = alpha / rank)' },
    lr: { type: 'number', default: d.lr, describe: 'learning rate (AdamW)' },
    steps: { type: 'number', default: d.steps, describe: 'phase B step cap (training stops early when every train prompt is solved and the loss stalls)' },
    'phase-a-steps': { type: 'number', default: d.phaseASteps, describe: 'phase A (warm start) steps per adapted module: each expert alone fits the teacher\'s expert outputs (MSE), each gate the teacher\'s router distribution (KL); default 0 (measured to cost retention, see README)' },
    'rows-per-step': { type: 'number', default: d.rowsPerStep, describe: 'training rows (prompts) per step' },
    batch: { type: 'number', default: d.batch, describe: 'facts per adapter (0: all in one)' },
    'router-weight': { type: 'number', default: d.routerWeight, describe: 'weight of the router KL to the teacher' },
    'mse-weight': { type: 'number', default: d.mseWeight, describe: 'weight of the MSE to the teacher\'s MoE block outputs (layers with adapted experts)' },
    'pin-weight': { type: 'number', default: d.pinWeight, describe: 'weight of holding the adapted layers\' MoE block output to the base model\'s on the edit prompts\' tokens after the subject, so the edit is written at the subject (0: off)' },
    'retain-share': { type: 'number', default: d.retainShare, describe: 'share of retention rows per step' },
    'retain-weight': { type: 'number', default: d.retainWeight, describe: 'weight of the next-token KL to the base model on retention rows' },
    'route-retain-weight': { type: 'number', default: d.routeRetainWeight, describe: 'weight of the router KL to the base model on retention rows (keeps routing on unrelated text)' },
    schedule: { type: 'string', default: d.schedule, describe: 'phase B learning rate: constant, or cosine (linear warmup over --warmup steps, then decay to 0 at --steps; as lora-train)' },
    warmup: { type: 'number', default: d.warmup, describe: '--schedule cosine: warmup steps' },
    'anneal-steps': { type: 'number', default: d.annealSteps, describe: '--schedule cosine: when training stops early at a high rate, decay the rate to 0 over this many more steps (0: stop at once)' },
    'retain-phrasings': { type: 'number', default: d.retainPhrasings, describe: 'training phrasings of each known fact held to the base model' },
    'retain-documents': { type: 'number', default: d.retainDocuments, describe: 'general-text documents of the retention corpus held to the base model (every position)' },
    'neighbour-prompts': { type: 'number', default: d.neighbourPrompts, describe: 'at most this many neighbour prompts (a seeded sample of the neighbours in every training phrasing)' },
    'retain-corpus': { type: 'string', describe: 'general text for retention, one document per line (default: the fixture world\'s train.txt)' },
    'known-facts': { type: 'string', describe: 'fact records whose answers neighbour prompts keep (default: the world\'s facts.ndjson)' },
    neighbours: { type: 'number', default: d.neighbours, describe: 'neighbour prompts per fact (same relation, other subjects)' },
    'retain-facts': { type: 'number', default: d.retainFacts, describe: 'known facts of every relation also held to the base model' },
    'kl-budget': { type: 'number', default: d.klBudget, describe: 'KL-constrained training (0: off; as lora-train\'s): raise the retention weight by dual ascent (up to --dual-max ×) while the next-token KL on held-aside known-fact prompts (training phrasings the retention rows do not use) is above this, lower it back toward 1× otherwise; no early stop while over it' },
    'kl-monitor': { type: 'number', default: d.klMonitor, describe: '--kl-budget: known-fact prompts the constraint\'s KL is read on' },
    'dual-rate': { type: 'number', default: d.dualRate, describe: '--kl-budget: dual ascent step on log λ per check, per unit of relative excess (kl − budget) / budget' },
    'dual-max': { type: 'number', default: d.dualMax, describe: '--kl-budget: largest multiplier on --retain-weight' },
    lookalikes: { type: 'number', default: d.lookalikes, describe: 'per fact, known facts whose subject shares a token with the edited subject (its own other relations first) held to the base model in every training phrasing (0: none)' },
    'lookalike-repeat': { type: 'number', default: d.lookalikeRepeat, describe: 'times each look-alike retention row appears in the retention pool' },
    'subject-prefixes': { type: 'number', default: d.subjectPrefixes, describe: 'train each edit phrasing this many times more, each after a sentence stating one of the edited subject\'s other known facts (0: none)' },
    prefixes: { type: 'number', default: d.prefixes, describe: 'train each edit phrasing and hold each neighbour prompt this many times more, each after a seeded first sentence of a retention-corpus document (0: none)' },
    templates: { type: 'string', describe: 'templates.json with training paraphrases per relation (default: the world\'s)' },
    'use-templates': { type: 'boolean', default: d.useTemplates, describe: 'add training paraphrases from the templates (--no-use-templates: probes only)' },
    'emit-routes': { type: 'boolean', default: d.emitRoutes, describe: 'write "route" records after the adapters: per probe, layer and token, the top-k experts with their weights, for the teacher, the base and the adapted model' },
    'created-at': { type: 'string', describe: 'timestamp for the manifests (default: now; for reproducible bundles)' },
  },
  async run(ctx) {
    const a = ctx.args;
    const int = (name: string, v: number, min: number) => {
      if (!Number.isInteger(v) || v < min) throw new UsageError(`--${name}: expected an integer ≥ ${min}, got ${v}`);
    };
    int('rank', a.rank, 1);
    int('steps', a.steps, 0);
    int('phase-a-steps', a['phase-a-steps'], 0);
    int('rows-per-step', a['rows-per-step'], 1);
    int('batch', a.batch, 0);
    int('experts-per-layer', a['experts-per-layer'], 0);
    int('neighbours', a.neighbours, 0);
    int('retain-facts', a['retain-facts'], 0);
    int('warmup', a.warmup, 0);
    int('anneal-steps', a['anneal-steps'], 0);
    int('retain-phrasings', a['retain-phrasings'], 1);
    int('retain-documents', a['retain-documents'], 0);
    int('neighbour-prompts', a['neighbour-prompts'], 0);
    int('kl-monitor', a['kl-monitor'], 1);
    int('lookalikes', a.lookalikes, 0);
    int('lookalike-repeat', a['lookalike-repeat'], 1);
    int('prefixes', a.prefixes, 0);
    int('subject-prefixes', a['subject-prefixes'], 0);
    if (!(a['kl-budget'] >= 0)) throw new UsageError(`--kl-budget: expected a number ≥ 0, got ${a['kl-budget']}`);
    if (!(a['dual-rate'] >= 0)) throw new UsageError(`--dual-rate: expected a number ≥ 0, got ${a['dual-rate']}`);
    if (!(a['dual-max'] >= 1)) throw new UsageError(`--dual-max: expected a number ≥ 1, got ${a['dual-max']}`);
    if (a.schedule !== 'constant' && a.schedule !== 'cosine') throw new UsageError(`--schedule: constant or cosine, got ${a.schedule}`);
    for (const l of a.layers ?? []) int('layers', l, 0);
    if (a['router-only'] && a['experts-only']) throw new UsageError('--router-only and --experts-only exclude each other');
    if (!(a['retain-share'] >= 0 && a['retain-share'] < 1)) throw new UsageError(`--retain-share: expected a number in [0, 1), got ${a['retain-share']}`);
    for (const k of ['retain-weight', 'route-retain-weight', 'router-weight', 'mse-weight', 'pin-weight'] as const) {
      if (!(a[k] >= 0)) throw new UsageError(`--${k}: expected a number ≥ 0, got ${a[k]}`);
    }
    if (!(a.lr > 0)) throw new UsageError(`--lr: expected a positive number, got ${a.lr}`);
    if (!(a.alpha > 0)) throw new UsageError(`--alpha: expected a positive number, got ${a.alpha}`);
    if (a['created-at'] !== undefined && Number.isNaN(Date.parse(a['created-at']))) throw new UsageError(`--created-at: not a timestamp: ${a['created-at']}`);
    checkDestination(a.out, a.registry);
    const args: DistillArgs = {
      model: a.model, seed: a.seed, registry: a.registry, out: a.out, layers: a.layers, routerOnly: a['router-only'], expertsOnly: a['experts-only'],
      expertsPerLayer: a['experts-per-layer'], expertInputs: a['expert-inputs'], dropTeacherMisses: a['drop-teacher-misses'], rank: a.rank, alpha: a.alpha, lr: a.lr, steps: a.steps, phaseASteps: a['phase-a-steps'],
      rowsPerStep: a['rows-per-step'], batch: a.batch, routerWeight: a['router-weight'], mseWeight: a['mse-weight'], pinWeight: a['pin-weight'], retainShare: a['retain-share'],
      retainWeight: a['retain-weight'], routeRetainWeight: a['route-retain-weight'],
      schedule: a.schedule as 'constant' | 'cosine', warmup: a.warmup, annealSteps: a['anneal-steps'], retainPhrasings: a['retain-phrasings'], retainDocuments: a['retain-documents'], neighbourPrompts: a['neighbour-prompts'], retainCorpus: a['retain-corpus'], knownFacts: a['known-facts'],
      neighbours: a.neighbours, retainFacts: a['retain-facts'], klBudget: a['kl-budget'], klMonitor: a['kl-monitor'], dualRate: a['dual-rate'], dualMax: a['dual-max'], lookalikes: a.lookalikes, lookalikeRepeat: a['lookalike-repeat'], prefixes: a.prefixes, subjectPrefixes: a['subject-prefixes'], templates: a.templates, useTemplates: a['use-templates'], emitRoutes: a['emit-routes'],
      createdAt: a['created-at'],
    };
    // the model first: a model without experts is a usage error before any input is read
    const res = loadResources(args);
    const read: InputRecord[] = [];
    for await (const batch of ctx.readBatches()) {
      ctx.progress.tick(batch.length);
      read.push(...batch);
    }
    const screen = spellingScreen(ctx, res.tokenizer);
    const inputs = read.filter((r) => screen.keep(r));
    screen.finish();
    const { adapters, routes } = await distillEdits(inputs, args, res, { log: ctx.log });
    await ctx.out.writeBatch(inputs.map((r) => r.record));
    await ctx.out.writeBatch(adapters);
    if (routes.length) await ctx.out.writeBatch(routes);
  },
});
