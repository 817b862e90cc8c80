#!/usr/bin/env node
// LEACE erasure read by a linear probe (issue 20), the diagnostic behind the
// figures in tools/lora-train/README.md ("Unlearning"). Concept: the relation
// of a prompt (--relations, one class each). Rows: the world's facts of those
// relations, each subject once per phrasing (--phrasings facts: the fact's own
// template; heldout: eval/facts-heldout.ndjson's two held-out phrasings; both).
// Subjects are split (seeded) into: fit (the eraser), probe-train, probe-test
// (--fit 0.5: the rest halved). The eraser is fitted at layers.L.mlp (L =
// --layer) and applied as the adapter lora-train writes; the probe
// (metrics/erasure.ts) is read at every --read site, before and after.
//
//   node scripts/unlearn/leace-probe.mjs [--world fixtures/world] [--model fixtures/models/dense]
//     [--relations works_for,lives_in,plays_sport] [--layer 2] [--phrasings facts|heldout|both]
//     [--fit 0.5] [--per 220] [--read layers.2.mlp,layers.2.resid_post,layers.3.resid_post] [--seed 0]
//     [--insample]   also: the probe trained and read on the erased fit rows themselves
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const { loadModel } = await import(path.join(root, 'tools/core/dist/models/index.js'));
const { fitLeace, eraserAdapter, classMeanGap, applyEraser } = await import(path.join(root, 'tools/core/dist/edit/leace.js'));
const { lastTokenActivations } = await import(path.join(root, 'tools/core/dist/edit/model-util.js'));
const { linearProbe } = await import(path.join(root, 'tools/core/dist/metrics/erasure.js'));
const { Rng } = await import(path.join(root, 'tools/core/dist/index.js'));

const { values: a } = parseArgs({ options: {
  world: { type: 'string', default: 'fixtures/world' }, model: { type: 'string', default: 'fixtures/models/dense' },
  relations: { type: 'string', default: 'works_for,lives_in,plays_sport' }, layer: { type: 'string', default: '2' },
  phrasings: { type: 'string', default: 'facts' }, fit: { type: 'string', default: '0.5' }, per: { type: 'string', default: '220' },
  read: { type: 'string' }, split: { type: 'string', default: 'subject' }, l2: { type: 'string', default: '0.001' }, shrink: { type: 'string', default: '0' }, seed: { type: 'string', default: '0' }, insample: { type: 'boolean', default: false },
} });
const rels = a.relations.split(',');
const layers = a.layer.split(',').map(Number);
const lines = (f) => fs.readFileSync(f, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
const facts = lines(path.join(a.world, 'facts.ndjson')).filter((f) => rels.includes(f.relation));
const held = a.phrasings === 'facts' ? [] : lines(path.join(a.world, 'eval/facts-heldout.ndjson'));
const bySubject = new Map();
for (const r of rels) for (const f of facts.filter((f) => f.relation === r).slice(0, Number(a.per))) {
  const ps = [];
  if (a.phrasings !== 'heldout') ps.push(f.prompt.replace('{}', f.subject));
  for (const p of held) if (p.fact_id === f.id) ps.push(p.prompt);
  bySubject.set(f.id, { label: rels.indexOf(r), prompts: ps });
}
// --split subject (default): a subject's prompts of every relation go to the same part (the classes share
// their subjects, so subject effects cancel in the class means); fact: each fact on its own
const unit = (id) => (a.split === 'subject' ? facts.find((f) => f.id === id).subject : id);
const units = new Rng(Number(a.seed)).shuffle([...new Set([...bySubject.keys()].map(unit))]);
const nFitU = Math.round(units.length * Number(a.fit)), nTrU = Math.round((units.length - nFitU) / 2);
const partOf = new Map(units.map((u, i) => [u, i < nFitU ? 0 : i < nFitU + nTrU ? 1 : 2]));
const ids = [...bySubject.keys()].sort((x, y) => partOf.get(unit(x)) - partOf.get(unit(y)));
const nFit = ids.filter((id) => partOf.get(unit(id)) === 0).length, nTr = ids.filter((id) => partOf.get(unit(id)) === 1).length;
const part = (xs) => {
  const prompts = [], labels = [];
  for (const id of xs) for (const p of bySubject.get(id).prompts) { prompts.push(p); labels.push(bySubject.get(id).label); }
  return { prompts, labels: Int32Array.from(labels) };
};
const fit = part(ids.slice(0, nFit)), ptr = part(ids.slice(nFit, nFit + nTr)), pte = part(ids.slice(nFit + nTr));
const { model, tokenizer } = loadModel(path.resolve(a.model));
const H = model.config.hidden, k = rels.length;
const adapters = layers.map((l) => {
  const X = lastTokenActivations(model, tokenizer, fit.prompts, `layers.${l}.mlp`);
  // later sites are captured with the earlier erasers on (the activations the next eraser sees)
  const e = fitLeace(X, fit.prompts.length, H, fit.labels, k, 1e-10, Number(a.shrink));
  const ad = eraserAdapter(model, e, l, `leace-${l}`);
  return ad;
});
// (the multi-layer case fits each eraser on the base model's activations; see README)
const reads = (a.read ?? `layers.${layers.at(-1)}.mlp,layers.${layers.at(-1)}.resid_post${layers.at(-1) + 1 < model.config.layers ? `,layers.${model.config.layers - 1}.resid_post` : ''}`).split(',');
const probeAt = (site) => {
  const tr = lastTokenActivations(model, tokenizer, ptr.prompts, site), te = lastTokenActivations(model, tokenizer, pte.prompts, site);
  return linearProbe(tr, ptr.labels, te, pte.labels, H, k, { l2: Number(a.l2) });
};
const before = reads.map(probeAt);
model.setAdapters(adapters.map((adapter) => ({ adapter })));
const after = reads.map(probeAt);
let ins = null;
if (a.insample) {
  const Y = lastTokenActivations(model, tokenizer, fit.prompts, `layers.${layers.at(-1)}.mlp`);
  const half = (i) => i % 2 === 0;
  const pick = (X, f) => { const idx = [...fit.labels.keys()].filter(f); const out = new Float64Array(idx.length * H); idx.forEach((r, j) => out.set(X.subarray(r * H, (r + 1) * H), j * H)); return { X: out, y: Int32Array.from(idx, (r) => fit.labels[r]) }; };
  const A = pick(Y, half), B = pick(Y, (i) => !half(i));
  ins = { probe: linearProbe(A.X, A.y, B.X, B.y, H, k), gap: classMeanGap(Y, fit.prompts.length, H, fit.labels, k) };
}
model.setAdapters([]);
const f3 = (x) => x.toFixed(3);
console.log(`# ${path.basename(a.world)} ${path.basename(a.model)}; relations ${rels.join(', ')}; erased at ${layers.map((l) => `layers.${l}.mlp`).join(' + ')}; phrasings ${a.phrasings}; split by ${a.split}; rows fit ${fit.prompts.length}, probe train ${ptr.prompts.length}, test ${pte.prompts.length}`);
console.log('| read at | before | after | chance | after − chance | probe train acc after |');
console.log('|---|---|---|---|---|---|');
reads.forEach((s, i) => console.log(`| ${s} | ${f3(before[i].accuracy)} | ${f3(after[i].accuracy)} | ${f3(after[i].chance)} | ${(after[i].accuracy - after[i].chance >= 0 ? '+' : '') + f3(after[i].accuracy - after[i].chance)} | ${f3(after[i].trainAccuracy)} |`));
if (ins) console.log(`in-sample (fit rows, erased, probe on half, read on the other half): ${f3(ins.probe.accuracy)} (chance ${f3(ins.probe.chance)}), class-mean gap ${ins.gap.toExponential(1)}`);
