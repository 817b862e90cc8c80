#!/usr/bin/env node
// Where a kept batch's kl is made (issue 19): read an eval-edits bundle
// (`eval-edits.mjs --keep DIR`) back the same strict way twice — as trained,
// and with the adapter's MLP deltas only at the position each read takes
// (the prompt's last token): every other position's output of the changed
// MLPs is put back to the base model's, so the subject's tokens reach the
// read exactly as in the base model. If the figures barely move, the edits
// (and their harm to other facts) are made at the read position, not by
// moving the subjects' representations. --none puts every position back
// (a check of the hook: efficacy and kl read 0).
//
//   node scripts/lora-read-position.mjs --keep DIR [--source facts|edits] [--skip 0] [--count 1000] [--seed 0] [--world DIR --model DIR] [--layers 2,3] [--none]
// The case options must be the ones the bundle was trained with (the facts it edits).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const { values: a } = parseArgs({ options: {
  keep: { type: 'string' }, source: { type: 'string', default: 'facts' }, skip: { type: 'string', default: '0' }, count: { type: 'string', default: '1000' },
  seed: { type: 'string', default: '0' }, world: { type: 'string', default: 'fixtures/world' }, model: { type: 'string', default: 'fixtures/models/dense' },
  layers: { type: 'string', default: '2,3' }, none: { type: 'boolean', default: false }, help: { type: 'boolean', default: false },
} });
if (a.help) {
  console.log(fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').filter((l) => l.startsWith('//')).map((l) => l.slice(3)).join('\n'));
  process.exit(0);
}
if (!a.keep) {
  console.error('lora-read-position: --keep DIR is required (the directory `eval-edits.mjs --keep DIR` wrote); --help for usage');
  process.exit(2);
}
const { loadResources, counterfactualFacts } = await import(path.join(root, 'tools/lora-train/dist/index.js'));
const { readNdjson, checkFact, editReadback } = await import(path.join(root, 'tools/core/dist/edit/index.js'));
const { loadLora } = await import(path.join(root, 'tools/core/dist/models/index.js'));
const { fromData } = await import(path.join(root, 'tools/core/dist/tensor/index.js'));

const world = path.resolve(root, a.world);
const res = loadResources({
  model: path.resolve(root, a.model), templates: path.join(world, 'templates.json'), retainCorpus: path.join(world, 'train.txt'), knownFacts: path.join(world, 'facts.ndjson'),
});
const edits = readNdjson(path.join(world, 'edits.ndjson'));
const skip = Number(a.skip);
const count = Number(a.count);
const facts = a.source === 'facts'
  ? counterfactualFacts(readNdjson(path.join(world, 'facts.ndjson')), { skip, count, seed: Number(a.seed), op: 'insert', exclude: edits })
  : edits.filter((f) => f.op === 'insert').slice(skip, skip + count);
const dirs = fs.existsSync(a.keep) ? fs.readdirSync(a.keep).filter((d) => d.startsWith('lora-')).map((d) => path.join(a.keep, d)) : [];
if (dirs.length === 0) {
  console.error(`lora-read-position: --keep ${a.keep}: no lora-* bundle there (a LoRA run's \`eval-edits.mjs --keep DIR\`)`);
  process.exit(2);
}
const groups = [{ adapters: dirs.map((d) => loadLora(d)), facts: facts.map(checkFact) }];
const readback = readNdjson(path.join(world, 'eval/facts-heldout.ndjson')).map((p) => ({
  prompt: p.prompt, target: p.target,
  ...(typeof p.subject === 'string' ? { subject: p.subject } : {}), ...(typeof p.relation === 'string' ? { relation: p.relation } : {}),
}));
const model = res.model;
const read = () => editReadback(model, res.tokenizer, groups, { templates: res.templates, readback });
const line = (tag, f) => console.log(`${tag}: ${['efficacy', 'paraphrase', 'neighbourhood'].map((k) => `${k} ${(100 * f[k]).toFixed(1)}%`).join(', ')}, kl ${f.kl.toFixed(3)} ± ${f.kl_se.toFixed(3)}, retain_drop ${f.retain_drop.toFixed(3)}`);
line('as trained', read());

// every read takes logits at chosen rows (logitsAt); any other position of the
// listed MLPs gets the base model's output, computed by a base pass of the same batch
const layers = a.layers.split(',').map(Number);
const forward = model.forward.bind(model);
model.forward = (ids, dims, opts = {}) => {
  if (!opts.logitsAt || opts.hooks || opts.fromMlp || opts.kvCache) return forward(ids, dims, opts);
  const [B, T] = dims;
  const H = model.config.hidden;
  const kept = new Set(a.none ? [] : opts.logitsAt);
  const active = model.activeAdapters();
  const base = new Map();
  model.setAdapters([]);
  forward(ids, dims, { ...opts, hooks: Object.fromEntries(layers.map((l) => [`layers.${l}.mlp`, { capture: (x) => base.set(l, x.data.slice()) }])) });
  model.setAdapters(active);
  const put = (l) => (x) => {
    const d = x.data.slice();
    const b = base.get(l);
    for (let r = 0; r < B * T; r++) if (!kept.has(r)) d.set(b.subarray(r * H, (r + 1) * H), r * H);
    return fromData(d, x.shape);
  };
  return forward(ids, dims, { ...opts, hooks: Object.fromEntries(layers.map((l) => [`layers.${l}.mlp`, { fn: put(l) }])) });
};
line(a.none ? 'no position (check)' : `deltas of layers ${a.layers} at the read position only`, read());
