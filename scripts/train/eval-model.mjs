#!/usr/bin/env node
// Evaluates a model directory on the world's eval sets with the trainer's own
// measures (top-1 on facts-train / facts-heldout / context, general-text
// perplexity) and prints the figures as JSON. With --update, writes them
// (and the ids of the probes answered wrongly) into the model's training.json.
//   node scripts/train/eval-model.mjs --model fixtures/models/dense [--world fixtures/world] [--update]
import { parseArgs } from 'node:util';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { existsSync, readFileSync } from 'node:fs';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
let args;
try {
  args = parseArgs({ options: { model: { type: 'string' }, world: { type: 'string' }, update: { type: 'boolean' }, threads: { type: 'string' } } }).values;
} catch (e) {
  process.stderr.write(`eval-model: ${e.message}\nusage: node scripts/train/eval-model.mjs --model <dir> [--world <dir>] [--update]\n`);
  process.exit(2);
}
if (!args.model) {
  process.stderr.write('eval-model: --model is required\n');
  process.exit(2);
}
const { loadModel, Tokenizer, writeFileAtomic } = await import('@catechism/core');
const kernels = await import('@catechism/kernels');
const { loadProbes, loadGeneral } = await import('./data.mjs');
const { top1, perplexity } = await import('./evaluate.mjs');
kernels.setThreads(Number(args.threads ?? 2));

const dir = resolve(args.model);
const worldDir = resolve(args.world ?? join(root, 'fixtures/world'));
const { model } = loadModel(dir, { tokenizer: false });
const tok = Tokenizer.load(worldDir);
const eos = tok.tokenToId('<|endoftext|>');
const sets = {
  facts_train: top1(model, loadProbes(join(worldDir, 'eval/facts-train.ndjson'), tok)),
  facts_heldout: top1(model, loadProbes(join(worldDir, 'eval/facts-heldout.ndjson'), tok)),
  context: top1(model, loadProbes(join(worldDir, 'eval/context.ndjson'), tok)),
};
if (existsSync(join(worldDir, 'eval/context-heldout-frames.ndjson'))) {
  sets.context_heldout_frames = top1(model, loadProbes(join(worldDir, 'eval/context-heldout-frames.ndjson'), tok));
}
const general = perplexity(model, loadGeneral(join(worldDir, 'eval/general.ndjson'), tok, eos));
const figures = {
  facts_train_top1: sets.facts_train.acc,
  facts_heldout_top1: sets.facts_heldout.acc,
  context_top1: sets.context.acc,
  ...(sets.context_heldout_frames ? { context_heldout_frames_top1: sets.context_heldout_frames.acc } : {}),
  general_ppl: general.ppl,
  evaluated_on: 'full eval sets',
  counts: { ...Object.fromEntries(Object.entries(sets).map(([k, v]) => [k, v.n])), general: general.tokens },
};
if (args.update) {
  const file = join(dir, 'training.json');
  const tr = existsSync(file) ? JSON.parse(readFileSync(file, 'utf-8')) : {};
  tr.figures = figures;
  tr.misses = { facts_train: sets.facts_train.misses, context: sets.context.misses };
  writeFileAtomic(file, JSON.stringify(tr, null, 2) + '\n');
}
process.stdout.write(JSON.stringify(figures) + '\n');
