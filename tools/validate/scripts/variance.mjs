#!/usr/bin/env node
/**
 * How much would kl and retain_drop move with the retention sample? For one
 * adapter record (NDJSON file, its bundle on disk), per-prompt KL and
 * retain correctness over validate's full fixed set, then the mean over
 * random subsets of n prompts (the old seeded samples), 500 draws each.
 *
 *   node tools/validate/scripts/variance.mjs ADAPTER.ndjson [--model DIR] [--n 100,300,1000]
 *
 * Prints JSON: the full-set mean and standard error, and per n the
 * standard deviation and range of the subset means. Build first.
 */
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { loadModel, loadLora } from '@catechism/core/models';
import { defaultModelDir, modelsDir, worldDir } from '@catechism/core/fixtures';
import { buildSuite, encodeSuite, observe, klFromLogprobs, seOfMean } from '@catechism/core/metrics';
import { Rng } from '@catechism/core';
import { resolveEvalSets } from '../dist/sets.js';
import { excludeEdited } from '../dist/validate.js';

const args = process.argv.slice(2);
const opt = (k, d) => {
  const i = args.indexOf(k);
  return i >= 0 ? args[i + 1] : d;
};
const file = args.find((a, i) => !a.startsWith('--') && !args[i - 1]?.startsWith('--'));
if (!file) {
  console.error('usage: variance.mjs ADAPTER.ndjson [--model DIR] [--n 100,300,1000]');
  process.exit(2);
}
const modelDir = opt('--model', defaultModelDir());
const ns = opt('--n', '100,300,1000').split(',').map(Number);
const rec = readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)).find((r) => r.kind === 'adapter');
const manifest = JSON.parse(readFileSync(path.join(rec.path, 'catechism.json'), 'utf8'));
const { model, tokenizer } = loadModel(modelDir);
const sets = resolveEvalSets({ modelDir, fixtureModels: modelsDir(), fixtureWorld: worldDir(), retainN: 2000, generalN: 500 });
const retain = excludeEdited(sets.retain, manifest.facts);
const enc = encodeSuite(tokenizer, buildSuite([], [], { retain }), { maxLength: model.config.family === 'gpt2' ? model.config.maxPositions : undefined });
const before = observe(model, tokenizer, enc, { noGeneration: true, noAnswers: true });
model.setAdapters([{ adapter: loadLora(rec.path), scale: manifest.scale ?? 1 }]);
const after = observe(model, tokenizer, enc, { noGeneration: true, noAnswers: true });
const kl = after.unrelated.map((q, i) => klFromLogprobs(before.unrelated[i], q));
const drop = before.items.retain.map((b, i) => (b.top1 ? 1 : 0) - (after.items.retain[i].top1 ? 1 : 0));
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
const sd = (xs) => {
  const m = mean(xs);
  return Math.sqrt(xs.reduce((a, b) => a + (b - m) ** 2, 0) / (xs.length - 1));
};
const out = { adapter: rec.id, model: modelDir, n: kl.length, kl: { mean: mean(kl), se: seOfMean(kl) }, retain_drop: { mean: mean(drop), se: seOfMean(drop) }, subsets: {} };
const rng = new Rng(1);
for (const n of ns) {
  if (n >= kl.length) continue;
  const kls = [];
  const drops = [];
  for (let d = 0; d < 500; d++) {
    const idx = rng.shuffle(kl.map((_, i) => i)).slice(0, n);
    kls.push(mean(idx.map((i) => kl[i])));
    drops.push(mean(idx.map((i) => drop[i])));
  }
  out.subsets[n] = {
    kl_sd: sd(kls), kl_min: Math.min(...kls), kl_max: Math.max(...kls),
    retain_drop_sd: sd(drops), retain_drop_min: Math.min(...drops), retain_drop_max: Math.max(...drops),
  };
}
console.log(JSON.stringify(out, null, 2));
