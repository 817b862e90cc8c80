#!/usr/bin/env node
// Trains a fixture knowledge model from random init on the synthetic world,
// with catechism's own tensor engine, and writes a Hugging Face model dir.
//   node scripts/train-fixture.mjs --arch gpt2 --seed 1 --out fixtures/models/dense
//   node scripts/train-fixture.mjs --arch mixtral --seed 1 --out fixtures/models/moe
// Needs the built packages (npx turbo run build). Progress goes to stderr; the
// final figures are printed to stdout as JSON and recorded in training.json.
import { parseArgs } from 'node:util';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { existsSync } from 'node:fs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

const DEFAULTS = {
  // Measured on the fixture world: ~11 epochs at batch 64 are needed for ≥ 95% of the facts (see fixtures/models/README.md).
  gpt2: { hidden: 128, layers: 4, heads: 4, intermediate: 512, lr: 3e-3, steps: 4000, batch: 64 },
  // small experts and the context documents twice: the sparse model otherwise stores facts too firmly to follow a
  // counterfactual in its context (fixtures/models/README.md, "Status")
  mixtral: { hidden: 128, layers: 4, heads: 4, intermediate: 128, lr: 3e-3, steps: 4000, batch: 64, experts: 4, 'top-k': 2, 'context-repeat': 2 },
};

function usage(msg, code = 2) {
  process.stderr.write(`train-fixture: ${msg}
usage: node scripts/train-fixture.mjs --arch gpt2|mixtral --out <dir> [--seed 1] [--world fixtures/world]
  [--steps 4000] [--batch 64] [--lr X] [--min-lr-frac 0.1] [--warmup 100] [--wd 0.1] [--clip 1]
  [--hidden H] [--layers L] [--heads N] [--intermediate I] [--experts 4] [--top-k 2] [--aux-coef 0.01]
  [--positions 64] [--threads 2] [--eval-every 500] [--eval-sample 300] [--final-eval full|sample]
  [--init-from <model dir>]   continue training that model (its config wins over the size options)
  [--context-repeat 1|2]      each context document (a fact stated in a frame, then used) this many times per epoch
                              (default 1 for gpt2, 2 for mixtral)
                              (a fraction, e.g. 1.5: every other one twice)
`);
  process.exit(code);
}

let parsed;
try {
  parsed = parseArgs({
    options: Object.fromEntries(
      ['arch', 'out', 'seed', 'world', 'steps', 'batch', 'lr', 'min-lr-frac', 'warmup', 'wd', 'clip', 'hidden', 'layers', 'heads',
        'intermediate', 'experts', 'top-k', 'aux-coef', 'positions', 'threads', 'eval-every', 'eval-sample', 'final-eval', 'init-from', 'context-repeat']
        .map((k) => [k, { type: 'string' }]).concat([['help', { type: 'boolean', short: 'h' }]]),
    ),
    strict: true,
  }).values;
} catch (e) {
  usage(e.message);
}
if (parsed.help) usage('help', 0);
const arch = parsed.arch;
if (arch !== 'gpt2' && arch !== 'mixtral') usage(`--arch must be gpt2 or mixtral, got ${JSON.stringify(arch)}`);
if (!parsed.out) usage('--out is required');
const d = DEFAULTS[arch];
function num(key, dflt, { int = false, min = 0 } = {}) {
  const raw = parsed[key];
  if (raw === undefined) return dflt;
  const v = Number(raw);
  if (!Number.isFinite(v) || v < min || (int && !Number.isInteger(v))) usage(`--${key} must be ${int ? 'an integer' : 'a number'} ≥ ${min}, got "${raw}"`);
  return v;
}
const hp = {
  seed: num('seed', 1, { int: true }),
  steps: num('steps', d.steps, { int: true, min: 1 }),
  batch: num('batch', d.batch, { int: true, min: 1 }),
  lr: num('lr', d.lr),
  minLrFrac: num('min-lr-frac', 0.1),
  warmup: num('warmup', 100, { int: true }),
  weightDecay: num('wd', 0.1),
  clip: num('clip', 1),
  hidden: num('hidden', d.hidden, { int: true, min: 1 }),
  layers: num('layers', d.layers, { int: true, min: 1 }),
  heads: num('heads', d.heads, { int: true, min: 1 }),
  intermediate: num('intermediate', d.intermediate, { int: true, min: 1 }),
  positions: num('positions', 64, { int: true, min: 2 }),
  threads: num('threads', 2, { int: true, min: 1 }),
  contextRepeat: num('context-repeat', d['context-repeat'] ?? 1, { min: 1 }),
  evalEvery: num('eval-every', 500, { int: true }),
  evalSample: num('eval-sample', 300, { int: true, min: 1 }),
};
if (arch === 'mixtral') {
  hp.experts = num('experts', d.experts, { int: true, min: 1 });
  hp.topK = num('top-k', d['top-k'], { int: true, min: 1 });
  hp.auxCoef = num('aux-coef', 0.01);
}
const finalEval = parsed['final-eval'] ?? 'full';
if (finalEval !== 'full' && finalEval !== 'sample') usage(`--final-eval must be full or sample, got "${finalEval}"`);
if (hp.hidden % hp.heads !== 0) usage(`--hidden ${hp.hidden} is not divisible by --heads ${hp.heads}`);
const worldDir = resolve(parsed.world ?? join(root, 'fixtures/world'));
const outDir = resolve(parsed.out);
if (!existsSync(join(worldDir, 'train.txt'))) usage(`world directory ${worldDir} has no train.txt`);

let core, kernels;
try {
  core = await import('@catechism/core');
  kernels = await import('@catechism/kernels');
} catch (e) {
  process.stderr.write(`train-fixture: cannot load the built packages (run npx turbo run build): ${e.message}\n`);
  process.exit(1);
}
const { Rng, Tokenizer, AdamW, clipGradNorm, crossEntropy, softmax, reshape, indexSelect, mean, mul, sum, add, scale, fromData } = core;
const { loadCorpus, epochBatches, makeBatch, loadProbes, loadGeneral } = await import('./train/data.mjs');
const { hfConfig, initModel, decays, saveModelDir } = await import('./train/model.mjs');
const { top1, perplexity } = await import('./train/evaluate.mjs');
const { gpt2Forward, checkAgainst } = await import('./train/gpt2-forward.mjs');

kernels.setThreads(hp.threads);
const log = (s) => process.stderr.write(`[train-fixture ${arch}] ${s}\n`);

const tok = Tokenizer.load(worldDir);
const eosId = tok.tokenToId('<|endoftext|>');
const padId = tok.tokenToId('<pad>');
if (eosId === undefined || padId === undefined) usage(`${worldDir}/tokenizer.json lacks <|endoftext|> or <pad>`);
const vocab = JSON.parse((await import('node:fs')).readFileSync(join(worldDir, 'tokenizer.json'), 'utf-8')).model.vocab;
const vocabSize = Object.keys(vocab).length;

const t0 = Date.now();
const { docs, tokens, contextDocs } = loadCorpus(worldDir, tok, eosId, hp.positions, { contextRepeat: hp.contextRepeat });
const evalSets = {
  facts_train: loadProbes(join(worldDir, 'eval/facts-train.ndjson'), tok),
  facts_heldout: loadProbes(join(worldDir, 'eval/facts-heldout.ndjson'), tok),
  context: loadProbes(join(worldDir, 'eval/context.ndjson'), tok),
};
if (existsSync(join(worldDir, 'eval/context-heldout-frames.ndjson'))) {
  evalSets.context_heldout_frames = loadProbes(join(worldDir, 'eval/context-heldout-frames.ndjson'), tok);
}
const general = loadGeneral(join(worldDir, 'eval/general.ndjson'), tok, eosId);
log(`corpus: ${docs.length} documents (${contextDocs} context documents × ${hp.contextRepeat}), ${tokens} tokens; vocabulary ${vocabSize}; tokenised in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

const rng = new Rng(hp.seed);
const initRng = rng.fork();
let cfgJson;
let model;
let previous = null;
if (parsed['init-from']) {
  // more epochs on an earlier run: its weights and config, a fresh optimiser and schedule
  const from = resolve(parsed['init-from']);
  const { readFileSync } = await import('node:fs');
  cfgJson = JSON.parse(readFileSync(join(from, 'config.json'), 'utf-8'));
  if (cfgJson.model_type !== (arch === 'gpt2' ? 'gpt2' : 'mixtral')) usage(`--init-from ${from} is a ${cfgJson.model_type} model, not --arch ${arch}`);
  const loaded = core.loadModel(from, { tokenizer: false }).model;
  const w = new Map([...loaded.weights].map(([n, t]) => [n, fromData(t.data.slice(), t.shape, { requiresGrad: true })]));
  model = new core.CausalLM(loaded.config, w);
  if (existsSync(join(from, 'training.json'))) previous = JSON.parse(readFileSync(join(from, 'training.json'), 'utf-8'));
  if (arch === 'mixtral') Object.assign(hp, { experts: cfgJson.num_local_experts, topK: cfgJson.num_experts_per_tok });
  Object.assign(hp, { hidden: model.config.hidden, layers: model.config.layers, heads: model.config.heads, intermediate: model.config.intermediate });
  log(`continuing ${from}${previous ? ` (${previous.steps} steps already)` : ''}`);
} else {
  cfgJson = hfConfig(arch, {
    vocab: vocabSize, hidden: hp.hidden, layers: hp.layers, heads: hp.heads, intermediate: hp.intermediate,
    positions: hp.positions, experts: hp.experts, topK: hp.topK, auxCoef: hp.auxCoef, eosId, padId,
  });
  model = initModel(cfgJson, initRng);
}
const dataRng = rng.fork();
const named = [...model.weights.entries()];
const nParams = named.reduce((a, [, t]) => a + t.size, 0);
const decayed = named.filter(([n, t]) => decays(model, n, t)).map(([, t]) => t);
const plain = named.filter(([n, t]) => !decays(model, n, t)).map(([, t]) => t);
const params = named.map(([, t]) => t);
const opts = { lr: hp.lr, beta1: 0.9, beta2: 0.98, eps: 1e-8 };
const optim = [new AdamW(decayed, { ...opts, weightDecay: hp.weightDecay }), new AdamW(plain, { ...opts, weightDecay: 0 })];
log(`${arch}: ${nParams} parameters (${(nParams * 4 / 1e6).toFixed(2)} MB float32), ${hp.steps} steps of ${hp.batch} documents, ${hp.threads} thread(s)`);

function lrAt(step) {
  if (step <= hp.warmup) return hp.lr * step / Math.max(1, hp.warmup);
  const p = (step - hp.warmup) / Math.max(1, hp.steps - hp.warmup);
  return hp.lr * (hp.minLrFrac + (1 - hp.minLrFrac) * 0.5 * (1 + Math.cos(Math.PI * Math.min(1, p))));
}

/**
 * Switch-style load-balancing loss: E · Σ_e f_e · P_e over real tokens, where
 * f_e is the share of top-k slots routed to e (constant) and P_e the mean
 * router probability (differentiable). Keeps all experts in use.
 */
function auxLoss(routerLogits, rows) {
  const E = hp.experts;
  let total = null;
  for (const r of routerLogits) {
    const flat = indexSelect(reshape(r, [r.size / E, E]), 0, rows);
    const probs = softmax(flat);
    const N = rows.length;
    const f = new Float32Array(E);
    for (let n = 0; n < N; n++) {
      const row = probs.data.subarray(n * E, (n + 1) * E);
      const order = Array.from(row.keys()).sort((a, b) => row[b] - row[a] || a - b);
      for (let j = 0; j < hp.topK; j++) f[order[j]] += 1 / (N * hp.topK);
    }
    const l = scale(sum(mul(mean(probs, 0), fromData(f, [E]))), E);
    total = total === null ? l : add(total, l);
  }
  return scale(total, 1 / routerLogits.length);
}

/** Each eval set's first `n` probes in a seeded order (same subset every time). */
const sampleRng = new Rng(hp.seed + 7);
const samples = Object.fromEntries(Object.entries(evalSets).map(([k, v]) => [k, sampleRng.shuffle(v.slice()).slice(0, hp.evalSample)]));
function evaluate(full) {
  const sets = full ? evalSets : samples;
  const out = {};
  for (const [k, v] of Object.entries(sets)) out[k] = top1(model, v);
  out.general = perplexity(model, full ? general : general.slice(0, 60));
  return out;
}
const fmt = (e) => Object.entries(e).map(([k, v]) => (k === 'general' ? `general ppl ${v.ppl.toFixed(3)}` : `${k} ${(100 * v.acc).toFixed(1)}%`)).join(', ');

let batches = [];
let epoch = 0;
let seen = 0;
const tStart = Date.now();
let lossAvg = null;
let auxAvg = null;
let skipped = 0;
const history = [];
for (let step = 1; step <= hp.steps; step++) {
  if (batches.length === 0) {
    batches = epochBatches(docs, hp.batch, dataRng);
    epoch++;
  }
  const b = makeBatch(docs, batches.pop(), padId);
  seen += b.targets.length;
  const lr = lrAt(step);
  for (const o of optim) o.lr = lr;
  if (step === 1 && arch === 'gpt2') {
    const diff = checkAgainst(model, b);
    log(`training forward vs CausalLM.forward: max |Δlogit| ${diff.toExponential(2)}`);
    if (!(diff < 1e-3)) throw new Error(`the training forward disagrees with CausalLM.forward (max |Δlogit| ${diff})`);
  }
  const res = arch === 'gpt2'
    ? { logits: gpt2Forward(model, b.ids, b.dims, b.mask, b.rows) }
    : model.forward(b.ids, b.dims, { attentionMask: b.mask, logitsAt: b.rows });
  const ce = crossEntropy(res.logits, b.targets);
  let loss = ce;
  if (arch === 'mixtral' && hp.auxCoef > 0) {
    // rows with a target are exactly the real tokens of the batch
    const aux = auxLoss(res.routerLogits, b.rows);
    auxAvg = auxAvg === null ? aux.item() : 0.98 * auxAvg + 0.02 * aux.item();
    loss = add(ce, scale(aux, hp.auxCoef));
  }
  loss.backward();
  const norm = clipGradNorm(params, hp.clip);
  if (Number.isFinite(norm)) for (const o of optim) o.step();
  else skipped++;
  for (const o of optim) o.zeroGrad();
  const l = ce.item();
  lossAvg = lossAvg === null ? l : 0.98 * lossAvg + 0.02 * l;
  if (step % 50 === 0 || step === 1 || step === hp.steps) {
    const el = (Date.now() - tStart) / 1000;
    log(`step ${step}/${hp.steps} epoch ${epoch} loss ${lossAvg.toFixed(4)}${auxAvg !== null ? ` aux ${auxAvg.toFixed(3)}` : ''} lr ${lr.toExponential(2)} |g| ${norm.toFixed(2)} ${(seen / el).toFixed(0)} tok/s ${el.toFixed(0)} s`);
  }
  if (hp.evalEvery > 0 && step % hp.evalEvery === 0 && step < hp.steps) {
    const e = evaluate(false);
    history.push({ step, loss: lossAvg, ...Object.fromEntries(Object.entries(e).map(([k, v]) => [k, k === 'general' ? v.ppl : v.acc])) });
    log(`eval @${step} (sample): ${fmt(e)}`);
  }
}
const trainSeconds = (Date.now() - tStart) / 1000;
log(`trained in ${trainSeconds.toFixed(0)} s; final evaluation on the ${finalEval === 'full' ? 'full sets' : 'samples'}`);
const fin = evaluate(finalEval === 'full');
log(`final: ${fmt(fin)}`);

const training = {
  command: ['node', 'scripts/train-fixture.mjs', ...process.argv.slice(2)].join(' '),
  arch,
  model_type: cfgJson.model_type,
  seed: hp.seed,
  hyperparameters: { ...hp, optimizer: 'AdamW', beta1: opts.beta1, beta2: opts.beta2, eps: opts.eps, schedule: 'linear warmup, cosine decay to min-lr-frac·lr', loss: 'next-token cross-entropy over every real token (documents + <|endoftext|>), padded length-bucketed batches' + (arch === 'mixtral' ? ' + aux-coef · load-balancing loss' : '') },
  parameters: nParams,
  steps: hp.steps,
  epochs: +(hp.steps * hp.batch / docs.length).toFixed(2),
  tokens_seen: seen,
  corpus: { documents: docs.length, tokens, world: relative(root, worldDir) || '.' },
  wall_seconds: { train: +trainSeconds.toFixed(3), total: +((Date.now() - t0) / 1000).toFixed(3) },
  threads: hp.threads,
  machine: `${(await import('node:os')).cpus()[0]?.model ?? 'unknown cpu'}, ${(await import('node:os')).cpus().length} cores (shared)`,
  simd: kernels.info().simd,
  skipped_steps: skipped,
  final_train_loss: +lossAvg.toFixed(5),
  figures: {
    facts_train_top1: fin.facts_train.acc,
    facts_heldout_top1: fin.facts_heldout.acc,
    context_top1: fin.context.acc,
    ...(fin.context_heldout_frames ? { context_heldout_frames_top1: fin.context_heldout_frames.acc } : {}),
    general_ppl: fin.general.ppl,
    evaluated_on: finalEval === 'full' ? 'full eval sets' : `samples of ${hp.evalSample}`,
    counts: Object.fromEntries(Object.entries(fin).map(([k, v]) => [k, k === 'general' ? v.tokens : v.n])),
  },
  history,
  ...(previous ? { previous_stage: previous, total_steps: (previous.total_steps ?? previous.steps) + hp.steps,
    total_train_seconds: +((previous.total_train_seconds ?? previous.wall_seconds?.train ?? 0) + trainSeconds).toFixed(1) } : {}),
  // probes answered wrongly at the end (tests compare a sample against these)
  misses: { facts_train: fin.facts_train.misses, context: fin.context.misses },
};
saveModelDir(outDir, model, cfgJson, worldDir, training);
log(`wrote ${outDir}`);
process.stdout.write(JSON.stringify(training.figures) + '\n');
