#!/usr/bin/env node
// lora-train benchmark and quality run (issue 8): on the fixture model
// (fixtures/models/dense, or BENCH_EDIT_MODEL), the world's edit requests
// through lora-train's own path (trainEdits), measuring edits per second,
// bytes per adapter and top-1 quality:
//   lora distill   10 counterfactual inserts in one adapter
//   lora sft       the same 10 with cross-entropy only
//   lora forget    10 forget requests in one adapter
//   rome           20 inserts, one rank-one adapter each (key statistics
//                  computed once, then cached: the first edit's time
//                  includes them, the table reports both)
// Quality: efficacy (edit prompt), paraphrase (held-out templates, never
// trained on), neighbourhood (other subjects of the same relations keep the
// base model's top-1), forgotten (old answer no longer top-1).
// The ratio column compares with the gate (figure / gate).
//
// Env: BENCH_EDIT_MODEL (model dir), BENCH_EDIT_ONLY (comma list of rows:
// distill,sft,forget,rome), BENCH_EDIT_ROME_FACTS (default 20).
// Markdown table on stdout; progress on stderr.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const { loadResources, measureWorldEdits, DEFAULT_ARGS } = await import('@catechism/lora-train');
const { defaultModelDir } = await import('@catechism/core/fixtures');

const modelDir = process.env.BENCH_EDIT_MODEL ?? defaultModelDir();
if (!fs.existsSync(path.join(modelDir, 'config.json'))) {
  console.error(`lora-train bench: no model at ${modelDir} (train the fixture model or set BENCH_EDIT_MODEL)`);
  process.exit(1);
}
const only = (process.env.BENCH_EDIT_ONLY ?? 'distill,sft,forget,rome').split(',');
const romeFacts = Number(process.env.BENCH_EDIT_ROME_FACTS ?? 20);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-lora-train-'));
const cache = path.join(tmp, 'cache');
process.env.CATECHISM_CACHE = cache;
const res = loadResources({ ...DEFAULT_ARGS, seed: 0, model: modelDir });
const log = (m) => process.stderr.write(`  ${m}\n`);

const rows = [];
const pct = (x) => (Number.isNaN(x) ? '—' : `${(100 * x).toFixed(0)}%`);
const gate = (x, g) => (Number.isNaN(x) ? '—' : (x / g).toFixed(2));
async function row(name, opts, gates) {
  process.stderr.write(`lora-train bench: ${name}\n`);
  const m = await measureWorldEdits(res, { ...opts, out: path.join(tmp, name.replace(/\W+/g, '-')), log });
  const f = m.figures;
  const q = opts.op === 'forget'
    ? [`forgotten ${pct(f.forgotten)} (n=${f.n.forgotten})`, `others kept ${pct(f.neighbourhood)} (n=${f.n.neighbourhood})`]
    : [`eff ${pct(f.efficacy)} / para ${pct(f.paraphrase)} (n=${f.n.paraphrase})`, `neigh ${pct(f.neighbourhood)} (n=${f.n.neighbourhood})`];
  const ratios = opts.op === 'forget'
    ? `${gate(f.forgotten, 0.9)} / ${gate(f.neighbourhood, 0.9)}`
    : `${gate(f.efficacy, 0.95)} / ${gate(f.paraphrase, 0.8)} / ${gate(f.neighbourhood, 0.9)}`;
  rows.push(`| ${name} | ${opts.count} | ${m.adapters} | ${m.seconds.toFixed(1)} | ${m.editsPerSecond.toFixed(3)} | ${(m.bytesPerAdapter / 1024).toFixed(1)} | ${q[0]} | ${q[1]} | ${ratios} |`);
  return m;
}

if (only.includes('distill')) await row('lora distill (10 in 1)', { method: 'lora', objective: 'distill', op: 'insert', count: 10 });
if (only.includes('sft')) await row('lora sft (10 in 1)', { method: 'lora', objective: 'sft', op: 'insert', count: 10 });
if (only.includes('forget')) await row('lora forget (10 in 1)', { method: 'lora', objective: 'sft', op: 'forget', count: 10 });
if (only.includes('rome')) {
  // first edit pays for the key statistics; the rest read them from the cache
  const first = await row('rome (1st, computes stats)', { method: 'rome', op: 'insert', count: 1, skip: 20 });
  void first;
  await row(`rome (${romeFacts} edits, stats cached)`, { method: 'rome', op: 'insert', count: romeFacts, skip: 20 });
}

console.log(`### lora-train on ${path.relative(process.cwd(), modelDir) || modelDir} (${res.model.config.layers} layers, hidden ${res.model.config.hidden})\n`);
console.log('| run | facts | adapters | seconds | edits/s | KiB/adapter | quality | specificity | figure / gate (eff 95%, para 80%, neigh 90%; forget 90%, kept 90%) |');
console.log('| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |');
for (const r of rows) console.log(r);
fs.rmSync(tmp, { recursive: true, force: true });
