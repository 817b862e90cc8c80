#!/usr/bin/env node
// How much of a fact the base model reads from a part of the subject's name
// (issue 20, "Forty persons a world" in tools/lora-train/README.md): for each
// case [subject, wording, relation], P(the fact's answer) on the wording with
// the full name, with the surname replaced by a made-up word ("Zamrix", which
// the fixture models' word-level tokenizer reads as <unk>: no information), and
// with the first name(s) replaced, and how many other subjects share the first
// name or the surname (and how many of them share the answer). A wording
// answered as well from the first name alone is one a forget of this person
// cannot clear without moving everyone of that first name.
//
//   node scripts/unlearn/name-prior.mjs fixtures/world fixtures/models/dense '[["Dajo Holfel","{} can speak","speaks"]]'
import * as path from 'node:path';
import * as fs from 'node:fs';
import { fileURLToPath } from 'node:url';
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const [world, modelDir] = process.argv.slice(2);
const { loadModel } = await import(path.join(root, 'tools/core/dist/models/index.js'));
const { scoreAnswer } = await import(path.join(root, 'tools/core/dist/merge/index.js'));
const { model, tokenizer } = loadModel(path.resolve(root, modelDir), { tokenizer: true });
const facts = fs.readFileSync(path.resolve(root, world, 'facts.ndjson'), 'utf8').split('\n').filter(Boolean).map(JSON.parse);
const cases = JSON.parse(process.argv[4]);
const P = (t, s, a) => Math.exp(scoreAnswer(model, [], tokenizer.encode(t.replace('{}', s)), tokenizer.encode(' ' + a)).logprob);
for (const [subject, tmpl, rel] of cases) {
  const f = facts.find((x) => x.subject === subject && x.relation === rel);
  const parts = subject.split(' ');
  const first = parts.slice(0, -1).join(' '), last = parts.at(-1);
  const others = facts.filter((x) => x.relation === rel && x.subject !== subject);
  const sameFirst = others.filter((x) => x.subject.startsWith(first + ' ')), sameLast = others.filter((x) => x.subject.endsWith(' ' + last));
  const avg = (xs) => xs.length ? (xs.reduce((a, b) => a + b, 0) / xs.length).toFixed(3) : '—';
  console.log(`${tmpl.replace('{}', subject)} → ${f.target_true}: P ${P(tmpl, subject, f.target_true).toFixed(3)}; "${first} Zamrix" ${P(tmpl, first + ' Zamrix', f.target_true).toFixed(3)}; "Zamrix ${last}" ${P(tmpl, 'Zamrix ' + last, f.target_true).toFixed(3)}; same first name ${sameFirst.length} (their answer = this: ${sameFirst.filter((x) => x.target_true === f.target_true).length}); same surname ${sameLast.length} (= this: ${sameLast.filter((x) => x.target_true === f.target_true).length})`);
}
