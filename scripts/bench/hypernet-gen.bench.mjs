#!/usr/bin/env node
// hypernet-gen benchmark (issue 22): seconds per adapter on the dense
// fixture model, one adapter per fact, bundles written to disk, side by side
// in one run with what an ML engineer would otherwise run per fact:
// lora-train's default LoRA, its --method patcher (the same neuron form,
// fitted) and ROME (key statistics computed beforehand, cached).
//   hypernet-gen  the shipped hypernetwork, held-out requests 61–80 (after one warm-up)
//   lora-train    requests 61–(60 + BENCH_HYPERNET_TRAINED), --batch 1
// Env: BENCH_HYPERNET_TRAINED (facts per trained method, default 3).
// Markdown table on stdout; progress on stderr.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const { loadResources, measureWorldEdits } = await import('@catechism/lora-train');
const { defaultModelDir } = await import('@catechism/core/fixtures');
const { readNdjson, checkFact, modelSha256 } = await import('@catechism/core/edit');
const { loadHyper, applyHyper, shippedHypernet } = await import('@catechism/hypernet-gen');

const modelDir = defaultModelDir();
const trained = Number(process.env.BENCH_HYPERNET_TRAINED ?? 3);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-hypernet-'));
process.env.CATECHISM_CACHE = path.join(tmp, 'cache');
const res = loadResources({ model: modelDir });
const log = (m) => process.stderr.write(`  ${m}\n`);
const world = path.join(path.dirname(path.dirname(modelDir)), 'world');
const facts = readNdjson(path.join(world, 'edits.ndjson')).filter((f) => f.op === 'insert').slice(60, 80).map(checkFact);

const rows = [];
// hypernet-gen: one warm-up adapter (first-call costs), then 20 held-out facts, each its own bundle
process.stderr.write('hypernet-gen bench: hypernet-gen, 20 facts\n');
const h = loadHyper(shippedHypernet(modelDir));
const hres = { model: res.model, tokenizer: res.tokenizer, modelName: modelDir, modelSha: modelSha256(modelDir), templates: res.templates };
const recs = facts.map((f) => ({ ...f, kind: 'fact' }));
await applyHyper(h, hres, facts.slice(0, 1), recs.slice(0, 1), { batch: 1, phrasings: 5, seed: 0, out: path.join(tmp, 'warm') }, () => {});
const t0 = process.hrtime.bigint();
await applyHyper(h, hres, facts, recs, { batch: 1, phrasings: 5, seed: 0, out: path.join(tmp, 'hyper') }, () => {});
const hyper = Number(process.hrtime.bigint() - t0) / 1e9 / facts.length;
rows.push({ name: 'hypernet-gen (shipped H, one forward a fact)', n: facts.length, s: hyper });

async function trainedRow(name, opts) {
  process.stderr.write(`hypernet-gen bench: ${name}, ${trained} facts\n`);
  const m = await measureWorldEdits(res, { ...opts, op: 'insert', count: trained, skip: 60, batch: 1, out: path.join(tmp, name.replace(/\W+/g, '-')), log });
  rows.push({ name, n: trained, s: m.seconds / trained });
}
await trainedRow('lora-train (default LoRA)', { method: 'lora' });
await trainedRow('lora-train --method patcher', { method: 'patcher' });
// ROME's key statistics once (cached), then the timed edits
await measureWorldEdits(res, { method: 'rome', op: 'insert', count: 1, skip: 20, batch: 1, out: path.join(tmp, 'rome-stats'), log });
await trainedRow('lora-train --method rome (statistics cached)', { method: 'rome' });

console.log('| method | facts | seconds per adapter | hypernet-gen / method |');
console.log('| --- | ---: | ---: | ---: |');
for (const r of rows) console.log(`| ${r.name} | ${r.n} | ${r.s.toFixed(3)} | ${(hyper / r.s).toFixed(4)} |`);
fs.rmSync(tmp, { recursive: true, force: true });
