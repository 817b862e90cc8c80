#!/usr/bin/env node
// Where an adapter's kl comes from: per prompt of the held-out read-back
// (fixtures/world/eval/facts-heldout.ndjson, the facts not edited), KL(base ‖
// adapted) of the next token, grouped by the edited subjects' other relations
// ("same-subject"), the edited relations' other subjects ("edited-relation")
// and the rest, per template, the 15 largest prompts and the top 10%'s share.
//   node tools/moe-route-distill/scripts/kl-breakdown.mjs ADAPTER_DIR SKIP
// SKIP: the edits were the insert requests SKIP+1..SKIP+10 of fixtures/world/edits.ndjson
// (train one with the CLI: see README "Where the kl comes from").
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const core = (p) => import(path.join(root, 'tools/core/dist', p));
const { loadModel, loadLora } = await core('models/index.js');
const { readNdjson } = await core('edit/index.js');
const [adPath, skip] = process.argv.slice(2);
const { model, tokenizer: tok } = loadModel(path.join(root, 'fixtures/models/moe'));
const facts = readNdjson(path.join(root, 'fixtures/world/edits.ndjson')).filter((f) => f.op === 'insert').slice(Number(skip), Number(skip) + 10);
const rb = readNdjson(path.join(root, 'fixtures/world/eval/facts-heldout.ndjson'));
const V = model.config.vocabSize;
function logits(prompts) {
  const out = [];
  for (const p of prompts) {
    const ids = tok.encode(p);
    const r = model.forward(Int32Array.from(ids), [1, ids.length], { logitsAt: Int32Array.from([ids.length - 1]) });
    out.push(r.logits.data.slice(0, V));
  }
  return out;
}
const lsm = (a) => { let m = -Infinity; for (const v of a) m = Math.max(m, v); let s = 0; for (const v of a) s += Math.exp(v - m); const z = m + Math.log(s); return a.map((v) => v - z); };
const edited = new Set(facts.map((f) => f.subject + '|' + f.relation));
const subj = new Set(facts.map((f) => f.subject));
const rels = new Set(facts.map((f) => f.relation));
const items = rb.filter((p) => !edited.has(p.subject + '|' + p.relation));
model.setAdapters([]);
const b = logits(items.map((p) => p.prompt));
model.setAdapters([{ adapter: loadLora(adPath) }]);
const a = logits(items.map((p) => p.prompt));
const groups = {};
const per = [];
items.forEach((p, i) => {
  const lb = lsm(b[i]), la = lsm(a[i]);
  let k = 0; for (let v = 0; v < V; v++) k += Math.exp(lb[v]) * (lb[v] - la[v]);
  const g = subj.has(p.subject) ? 'same-subject' : rels.has(p.relation) ? 'edited-relation' : 'other';
  (groups[g] ??= []).push(k);
  (groups['tpl:' + p.template] ??= []).push(k);
  per.push([k, g, p.prompt]);
});
const tot = per.reduce((s, x) => s + x[0], 0);
console.log('n', per.length, 'mean kl', (tot / per.length).toFixed(4));
for (const [g, ks] of Object.entries(groups).filter(([g]) => !g.startsWith('tpl:'))) console.log(g, ks.length, 'mean', (ks.reduce((s, x) => s + x, 0) / ks.length).toFixed(4), 'share of total', (ks.reduce((s, x) => s + x, 0) / tot).toFixed(3));
const tpl = Object.entries(groups).filter(([g]) => g.startsWith('tpl:')).map(([g, ks]) => [g, ks.length, ks.reduce((s, x) => s + x, 0) / ks.length]).sort((x, y) => y[2] - x[2]);
for (const t of tpl.slice(0, 12)) console.log(t[0], t[1], t[2].toFixed(4));
per.sort((x, y) => y[0] - x[0]);
for (const x of per.slice(0, 15)) console.log(x[0].toFixed(3), x[1], x[2]);
const top10 = per.slice(0, Math.round(per.length * 0.1)).reduce((s, x) => s + x[0], 0);
console.log('top 10% prompts share', (top10 / tot).toFixed(3));
