#!/usr/bin/env node
// Where an adapter's kl comes from: the read-back's retain prompts split into
// the edited subject's other relations, subjects sharing a word with it
// (surname), and the rest. Usage: node scripts/hypernet/kl-split.mjs [--hypernet DIR] [--skip 60] [--count 20]
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '../..');
const core = (p) => import(path.join(root, 'tools/core/dist', p));
const { loadModel } = await core('models/index.js');
const { readNdjson, checkFact, loadTemplateBank, padBatch, padId } = await core('edit/index.js');
const { noGrad, fromData } = await core('tensor/index.js');
const { loadHyper, generate } = await import(path.join(root, 'tools/hypernet-gen/dist/lib.js'));
const { values: a } = parseArgs({ options: { world: { type: 'string', default: 'fixtures/world' }, model: { type: 'string', default: 'fixtures/models/dense' }, hypernet: { type: 'string', default: 'fixtures/hypernet/dense' }, skip: { type: 'string', default: '60' }, count: { type: 'string', default: '20' } } });
const world = path.resolve(root, a.world);
const { model, tokenizer } = loadModel(path.resolve(root, a.model));
const h = loadHyper(path.resolve(root, a.hypernet));
const templates = loadTemplateBank(path.join(world, 'templates.json'));
const facts = readNdjson(path.join(world, 'edits.ndjson')).filter((f) => f.op === 'insert').slice(Number(a.skip), Number(a.skip) + Number(a.count)).map(checkFact);
const rb = readNdjson(path.join(world, 'eval/facts-heldout.ndjson'));
const V = model.config.vocabSize;
function lastLogits(prompts) {
  const out = new Float32Array(prompts.length * V);
  for (let s = 0; s < prompts.length; s += 64) {
    const ids = prompts.slice(s, s + 64).map((p) => tokenizer.encode(p));
    const { ids: flat, mask, T, last } = padBatch(ids, padId(model));
    noGrad(() => { const l = model.forward(flat, [ids.length, T], { attentionMask: mask, logitsAt: last }).logits.data; out.set(l.subarray(0, ids.length * V), s * V); });
  }
  return out;
}
const lsm = (row) => { let m = -Infinity; for (const v of row) m = Math.max(m, v); let s = 0; for (const v of row) s += Math.exp(v - m); const z = m + Math.log(s); return Float64Array.from(row, (v) => v - z); };
model.setAdapters([]);
const base = lastLogits(rb.map((p) => p.prompt));
const baseLs = rb.map((_, i) => lsm(base.subarray(i * V, (i + 1) * V)));
const tot = { self: [0, 0], surname: [0, 0], other: [0, 0] };
for (const f of facts) {
  const g = generate(h, model, tokenizer, [f], [], templates, h.config.training?.hyperparameters?.phrasings ?? 5, 'x');
  model.setAdapters([{ adapter: g.adapter }]);
  const after = lastLogits(rb.map((p) => p.prompt));
  model.setAdapters([]);
  const words = new Set(f.subject.split(' '));
  const per = { self: [0, 0], surname: [0, 0], other: [0, 0] };
  rb.forEach((p, i) => {
    if (p.subject === f.subject && p.relation === f.relation) return;
    const b = baseLs[i]; const aa = lsm(after.subarray(i * V, (i + 1) * V));
    let k = 0; for (let v = 0; v < V; v++) k += Math.exp(b[v]) * (b[v] - aa[v]);
    const grp = p.subject === f.subject ? 'self' : p.subject.split(' ').some((w) => words.has(w)) ? 'surname' : 'other';
    per[grp][0] += k; per[grp][1]++;
  });
  const n = per.self[1] + per.surname[1] + per.other[1];
  for (const k of Object.keys(per)) { tot[k][0] += per[k][0] / n; tot[k][1] += per[k][1]; }
  console.log(f.id, f.subject, Object.entries(per).map(([k, [s, c]]) => `${k} ${c} prompts: share of kl ${(s / n).toFixed(3)} (mean ${(c ? s / c : 0).toFixed(2)})`).join('; '));
}
console.log('mean kl contribution per adapter:', Object.entries(tot).map(([k, [s, c]]) => `${k} ${(s / facts.length).toFixed(3)} (${(c / facts.length).toFixed(0)} prompts)`).join('; '));
