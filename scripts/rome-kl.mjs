#!/usr/bin/env node
// Where a ROME single edit's kl comes from (issue 17): train ROME edits of the
// world's insert requests (--skip, --count) through lora-train's trainEdits,
// read every fact's held-out phrasings back (eval/facts-heldout.ndjson) with
// each edit alone, and print per edit: its layer, ‖δ‖, mean KL(base ‖ edited)
// over the prompts not about the edited fact, and how that kl splits between
// prompts about the same subject, subjects sharing its last / first word, and
// all others. --directions adds, per edit, |A·k| (the rank-one direction's
// response, relative to the subject's own) at every position of 300 read-back
// prompts, and the tokens answering above half the subject's.
//
// Each line also gives `monitor`: the mean KL over 256 known facts of other
// subjects in TRAINING phrasings the key refit's pool does not use
// (knownFactRetainSplit's monitor side), which a run could read without
// touching the held-out set.
//
//   node scripts/rome-kl.mjs [--skip 0] [--count 4] [--ids edit-0007,...] [--source edits|facts] [--world DIR --model DIR] [--layer L] [--ridge R] [--directions] [--set flag=value ...]
// --source facts: eval-edits' counterfactuals of known facts (seed 0, the world's edits left out)
// instead of the world's insert requests; --ids then names them (cf-…). --relation R keeps those of R.
// --ridge overrides ROME_DEFAULTS.ridge (the share of C's mean diagonal added); --set passes a
// method option by flag name (e.g. --set rome-key-weight=10, --set rome-key-own=false).
// Build first; run with `nice` (it trains).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const { values: a } = parseArgs({ options: {
  skip: { type: 'string', default: '0' }, count: { type: 'string', default: '4' }, layer: { type: 'string' },
  source: { type: 'string', default: 'edits' }, relation: { type: 'string' },
  ridge: { type: 'string' }, directions: { type: 'boolean', default: false }, set: { type: 'string', multiple: true, default: [] }, ids: { type: 'string' }, world: { type: 'string' }, model: { type: 'string' },
} });
const { DEFAULT_ARGS, loadResources, trainEdits, editInputs, counterfactualFacts } = await import(path.join(root, 'tools/lora-train/dist/index.js'));
const { readNdjson, lastLogits, mlpInputHooks, mlpInputFrom, padBatch, ROME_DEFAULTS, knownFactRetainSplit } = await import(path.join(root, 'tools/core/dist/edit/index.js'));
const { loadLora } = await import(path.join(root, 'tools/core/dist/models/index.js'));
const { noGrad } = await import(path.join(root, 'tools/core/dist/tensor/index.js'));
const { defaultModelDir, worldDir } = await import(path.join(root, 'tools/core/dist/fixtures/index.js'));
if (a.ridge !== undefined) ROME_DEFAULTS.ridge = Number(a.ridge);

const skip = Number(a.skip);
const count = Number(a.count);
// --world DIR --model DIR: another world and its model (e.g. fixtures/world-b, fixtures/models/dense-b)
const world = a.world ? path.resolve(a.world) : worldDir();
const res = loadResources(a.world
  ? { model: path.resolve(a.model ?? defaultModelDir()), templates: path.join(world, 'templates.json'), retainCorpus: path.join(world, 'train.txt'), knownFacts: path.join(world, 'facts.ndjson') }
  : { model: a.model ? path.resolve(a.model) : defaultModelDir() });
if (a.source !== 'edits' && a.source !== 'facts') throw new Error(`--source: edits or facts, got ${a.source}`);
const edits = readNdjson(path.join(world, 'edits.ndjson'));
const facts = (a.source === 'facts'
  ? counterfactualFacts(readNdjson(path.join(world, 'facts.ndjson')), { skip, count, seed: 0, op: 'insert', exclude: edits })
  : edits.filter((f) => f.op === 'insert').slice(skip, skip + count))
  .filter((f) => (a.ids === undefined || a.ids.split(',').includes(f.id)) && (a.relation === undefined || f.relation === a.relation));
const out = fs.mkdtempSync(path.join((await import('node:os')).tmpdir(), 'rome-kl-'));
const options = Object.fromEntries(a.set.map((kv) => {
  const i = kv.indexOf('=');
  if (i < 0) throw new Error(`--set ${kv}: expected flag=value`);
  const v = kv.slice(i + 1);
  return [kv.slice(0, i), v === 'true' ? true : v === 'false' ? false : Number.isNaN(Number(v)) ? v : Number(v)];
}));
const recs = await trainEdits(editInputs(facts), { ...DEFAULT_ARGS, seed: 0, method: 'rome', layer: a.layer === undefined ? undefined : Number(a.layer), out, options }, res, { log: () => {} });
const rb = readNdjson(path.join(world, 'eval/facts-heldout.ndjson'));
const m = res.model;
const tok = res.tokenizer;
const V = m.config.vocabSize;
const ids = rb.map((p) => tok.encode(p.prompt));
const logProbs = (ids) => {
  const rows = [];
  for (let s = 0; s < ids.length; s += 64) {
    const l = lastLogits(m, ids.slice(s, s + 64));
    for (let i = 0; i < Math.min(64, ids.length - s); i++) {
      const r = l.data.subarray(i * V, (i + 1) * V);
      let mx = -Infinity;
      for (const v of r) mx = Math.max(mx, v);
      let z = 0;
      for (const v of r) z += Math.exp(v - mx);
      const lz = mx + Math.log(z);
      rows.push(Float64Array.from(r, (v) => v - lz));
    }
  }
  return rows;
};
m.setAdapters([]);
const base = logProbs(ids);
const klMean = (p, q) => {
  let t = 0;
  p.forEach((row, i) => { for (let v = 0; v < V; v++) t += Math.exp(row[v]) * (row[v] - q[i][v]); });
  return t / p.length;
};
for (const r of recs) {
  const f = facts.find((x) => x.id === r.fact_ids[0]);
  const words = f.subject.split(' ');
  const adapter = loadLora(r.path);
  // the monitor side of the refit pool's split (same seed 0, same fact skipped): training phrasings the pool does not use
  const mon = knownFactRetainSplit(res.known, res.templates, [f], 256, 0, 1, 256).monitor.map((p) => tok.encode(p));
  m.setAdapters([]);
  const monBase = logProbs(mon);
  m.setAdapters([{ adapter }]);
  const monitor = klMean(monBase, logProbs(mon));
  const after = logProbs(ids);
  const groups = { same_subject: [0, 0], shares_last_word: [0, 0], shares_first_word: [0, 0], other: [0, 0] };
  let tot = 0;
  let n = 0;
  const byTemplate = new Map();
  rb.forEach((p, i) => {
    if (p.subject === f.subject && p.relation === f.relation) return;
    let kl = 0;
    for (let v = 0; v < V; v++) kl += Math.exp(base[i][v]) * (base[i][v] - after[i][v]);
    const sw = String(p.subject ?? '').split(' ');
    const g = p.subject === f.subject ? 'same_subject' : sw.includes(words.at(-1)) ? 'shares_last_word' : sw.includes(words[0]) ? 'shares_first_word' : 'other';
    byTemplate.set(p.template, (byTemplate.get(p.template) ?? 0) + kl);
    groups[g][0] += kl;
    groups[g][1]++;
    tot += kl;
    n++;
  });
  const hp = JSON.parse(fs.readFileSync(path.join(r.path, 'catechism.json'), 'utf8'));
  console.log(`${f.id} ${JSON.stringify(f.subject)} layer ${hp.hyperparameters.layer}${hp.training.layers_compared ? ` (of ${hp.training.layers_compared.map((c) => `${c.layer}: ‖δ‖ ${c.delta_norm.toFixed(1)}`).join(', ')})` : ''} ‖δ‖ ${hp.training.delta_norm.toFixed(1)} kl ${(tot / n).toFixed(4)} monitor ${monitor.toFixed(5)}: ` +
    Object.entries(groups).map(([k, [s, c]]) => `${k} n=${c} ${(100 * s / tot).toFixed(0)}%`).join(', ') +
    `; templates: ${[...byTemplate].sort((u, v) => v[1] - u[1]).slice(0, 4).map(([t, s]) => `${JSON.stringify(t)} ${(100 * s / tot).toFixed(0)}%`).join(', ')}`);
  if (a.directions) directions(f, adapter);
}

/** |A·k| / |A·k_subject| at every position of every 10th read-back prompt (300). */
function directions(f, adapter) {
  m.setAdapters([]);
  const [mod, { A: At }] = [...adapter.modules][0];
  const A = At.data;
  const l = Number(/\.(\d+)\./.exec(mod)[1]);
  const dots = (rows) => {
    const { ids: bid, mask, T } = padBatch(rows, 1);
    const got = {};
    m.forward(bid, [rows.length, T], { attentionMask: mask, skipLogits: true, hooks: mlpInputHooks(l, got) });
    const k = mlpInputFrom(m, l, got.resid, got.attn);
    const D = k.shape.at(-1);
    return rows.map((row, b) => row.map((_, p) => {
      let d = 0;
      for (let i = 0; i < D; i++) d += A[i] * k.data[(b * T + p) * D + i];
      return Math.abs(d);
    }));
  };
  noGrad(() => {
    const ref = Math.max(...dots([tok.encode(f.prompt.replace('{}', f.subject))])[0]);
    const sample = ids.filter((_, i) => i % 10 === 0);
    const last = [];
    const other = [];
    const high = new Map();
    for (let s = 0; s < sample.length; s += 64) {
      const rows = sample.slice(s, s + 64);
      dots(rows).forEach((ds, b) => ds.forEach((d, p) => {
        (p === ds.length - 1 ? last : other).push(d / ref);
        if (d / ref > 0.5) high.set(tok.decode([rows[b][p]]), (high.get(tok.decode([rows[b][p]])) ?? 0) + 1);
      }));
    }
    const q = (xs, x) => xs.slice().sort((u, v) => u - v)[Math.floor(x * (xs.length - 1))].toFixed(3);
    console.log(`  |A·k| / subject's: last position median ${q(last, 0.5)}, p90 ${q(last, 0.9)}, max ${q(last, 1)}; ` +
      `other positions median ${q(other, 0.5)}, p90 ${q(other, 0.9)}, max ${q(other, 1)}; above 0.5: ${JSON.stringify([...high].sort((u, v) => v[1] - u[1]).slice(0, 10))}`);
  });
}
fs.rmSync(out, { recursive: true, force: true });
