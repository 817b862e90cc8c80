#!/usr/bin/env node
// Where a kept batch's kl sits (issue 19): read an eval-edits bundle
// (`eval-edits.mjs --keep DIR`) over the held-out phrasings of every fact it
// did not edit, as eval-edits' kl does, and sort each prompt's KL(base ‖
// edited) by what the two models answer there: the same top-1, right or
// wrong; a wrong answer made right; a right one lost; a wrong one made
// another wrong one; an answer moved to a new answer of the subject's own
// edits, or to an old answer of its edited facts; and, for a relation the
// world derives from others (world.json `assign.mode: derive`, e.g. a
// person's language from the birth city's country), an answer moved to the
// object the edits imply. Prints each kind's prompts, share of the kl and
// mean, the share by relation, and the largest prompts (--top N); and, beside
// it, the kl over the same facts in their training phrasings (templates.json's
// `train`, what the batch's retention holds). --spec:
// the world description (default the world's world.json, else
// fixtures/world/world.json, which both fixture worlds are made from).
//
//   node scripts/kl-where.mjs --keep DIR [--source facts|edits] [--skip 0] [--count 1000] [--seed 0] [--world DIR --model DIR] [--spec FILE] [--top 10]
// The case options must be the ones the bundle was trained with (the facts it edits).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { keptCase, root } from './kept-case.mjs';

const { a, world, res, known, facts, readback: allReadback, adapters, key, edited, notEdited, trainPhrasings } = await keptCase(import.meta.url, {
  top: { type: 'string', default: '10' }, spec: { type: 'string' },
});
const { lastLogits, encodeTrainingPair } = await import(path.join(root, 'tools/core/dist/edit/index.js'));
const model = res.model;
const tok = res.tokenizer;

const readback = allReadback.filter((p) => !edited.has(key(p.subject, p.relation)));
const pairs = readback.map((p) => encodeTrainingPair(tok, p.prompt, p.target));
const firstToken = (answer) => encodeTrainingPair(tok, 'x', answer).targetIds[0];

// next-token log-probabilities of every read-back prompt, base and edited
const V = model.config.vocabSize;
const logProbs = (pairs) => {
  const out = new Float64Array(pairs.length * V);
  for (let i = 0; i < pairs.length; i += 64) {
    const part = pairs.slice(i, i + 64);
    const lg = lastLogits(model, part.map((x) => x.promptIds)).data;
    part.forEach((_, b) => {
      const row = lg.subarray(b * V, (b + 1) * V);
      let m = -Infinity;
      for (const x of row) m = Math.max(m, x);
      let s = 0;
      for (const x of row) s += Math.exp(x - m);
      const lse = m + Math.log(s);
      for (let j = 0; j < V; j++) out[(i + b) * V + j] = row[j] - lse;
    });
  }
  return out;
};
const prev = model.activeAdapters();
model.setAdapters([]);
const base = logProbs(pairs);
model.setAdapters(adapters.map((adapter) => ({ adapter })));
const after = logProbs(pairs);
model.setAdapters(prev);

// the same facts in their training phrasings: what the retention trains on
const trainPairs = notEdited.flatMap((f) => trainPhrasings(f).map((p) => encodeTrainingPair(tok, p, f.target_true)));
model.setAdapters([]);
const trainBase = logProbs(trainPairs);
model.setAdapters(adapters.map((adapter) => ({ adapter })));
const trainAfter = logProbs(trainPairs);
model.setAdapters(prev);
let trainKl = 0;
for (let i = 0; i < trainBase.length; i++) trainKl += Math.exp(trainBase[i]) * (trainBase[i] - trainAfter[i]);
// mean P(the true answer's first token), base → edited, over some of the prompts
const pTrue = (lpBase, lpAfter, ps, which) => {
  let b = 0, e = 0;
  for (const i of which) {
    const t = ps[i].targetIds[0];
    b += Math.exp(lpBase[i * V + t]);
    e += Math.exp(lpAfter[i * V + t]);
  }
  return `P(true) ${(b / Math.max(which.length, 1)).toFixed(3)} → ${(e / Math.max(which.length, 1)).toFixed(3)}`;
};

// the world's truth with the edits applied, for the derived relations: follow the path through edited facts
const truth = new Map(known.map((f) => [key(f.subject, f.relation), f.target_true ?? f.target]));
const moved = new Map(truth);
for (const f of facts) moved.set(key(f.subject, f.relation), f.target_new);
const specFile = a.spec ?? [path.join(world, 'world.json'), path.join(root, 'fixtures/world/world.json')].find((f) => fs.existsSync(f));
const worldSpec = JSON.parse(fs.readFileSync(specFile, 'utf8'));
const derivedPath = new Map(worldSpec.relations.filter((r) => r.assign?.mode === 'derive').map((r) => [r.name, r.assign.path]));
const follow = (subject, pathRels, facts) => pathRels.reduce((s, r) => (s === undefined ? undefined : facts.get(key(s, r))), subject);
const editsOf = new Map();
for (const f of facts) (editsOf.get(f.subject) ?? editsOf.set(f.subject, []).get(f.subject)).push(f);

const kinds = new Map();
const byRelation = new Map();
const rows = [];
let total = 0;
readback.forEach((p, i) => {
  const b = base.subarray(i * V, (i + 1) * V);
  const e = after.subarray(i * V, (i + 1) * V);
  let kl = 0;
  for (let j = 0; j < V; j++) kl += Math.exp(b[j]) * (b[j] - e[j]);
  const argmax = (x) => x.indexOf(Math.max(...x));
  const bt = argmax(b);
  const et = argmax(e);
  const right = pairs[i].targetIds[0];
  const own = editsOf.get(p.subject) ?? [];
  const implied = derivedPath.has(p.relation) ? follow(p.subject, derivedPath.get(p.relation), moved) : undefined;
  let kind;
  if (et === bt) kind = bt === right ? 'the same right top-1' : 'the same wrong top-1';
  else if (implied !== undefined && implied !== truth.get(key(p.subject, p.relation)) && et === firstToken(implied)) kind = 'moved to the object the edits imply (a derived relation)';
  else if (own.some((f) => firstToken(f.target_new) === et)) kind = "moved to a new answer of the subject's own edits";
  else if (et === right) kind = 'a wrong top-1 made right';
  else if (own.some((f) => firstToken(f.target_true) === et)) kind = "moved to an old answer of the subject's edited facts";
  else kind = bt === right ? 'a right top-1 lost' : 'a wrong top-1 made another wrong one';
  const k = kinds.get(kind) ?? { n: 0, kl: 0 };
  k.n++;
  k.kl += kl;
  kinds.set(kind, k);
  byRelation.set(p.relation, (byRelation.get(p.relation) ?? 0) + kl);
  total += kl;
  rows.push({ kl, prompt: p.prompt, base: tok.decode([bt]), edited: tok.decode([et]), target: p.target, kind });
});
const pct = (x) => `${(100 * x / total).toFixed(1)}%`;
console.log(`kl ${(total / readback.length).toFixed(4)} over ${readback.length} held-out prompts of the ${known.length - edited.size} facts not edited`);
const baseRight = [], baseWrong = [];
pairs.forEach((x, i) => {
  const row = base.subarray(i * V, (i + 1) * V);
  let best = 0;
  for (let j = 1; j < V; j++) if (row[j] > row[best]) best = j;
  (best === x.targetIds[0] ? baseRight : baseWrong).push(i);
});
console.log(`  ${pTrue(base, after, pairs, baseRight)} where the base model answers rightly (${baseRight.length}), ${pTrue(base, after, pairs, baseWrong)} where it answers wrongly (${baseWrong.length})`);
console.log(`kl ${(trainKl / Math.max(trainPairs.length, 1)).toFixed(4)} over the same facts' ${trainPairs.length} training phrasings (retention draws from these); ${pTrue(trainBase, trainAfter, trainPairs, trainPairs.map((_, i) => i))}`);
console.log('| the prompt | prompts | share of the kl | mean kl |\n|---|---:|---:|---:|');
for (const [kind, v] of [...kinds].sort((x, y) => y[1].kl - x[1].kl)) console.log(`| ${kind} | ${v.n} | ${pct(v.kl)} | ${(v.kl / v.n).toFixed(3)} |`);
console.log(`by relation: ${[...byRelation].sort((x, y) => y[1] - x[1]).map(([r, k]) => `${r} ${pct(k)}`).join(', ')}`);
rows.sort((x, y) => y.kl - x.kl);
for (const r of rows.slice(0, Number(a.top))) console.log(`${r.kl.toFixed(2)}  ${JSON.stringify(r.prompt)}: ${r.base} → ${r.edited} (truth ${r.target}); ${r.kind}`);
