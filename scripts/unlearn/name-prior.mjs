#!/usr/bin/env node
// How much of a fact the base model reads from a part of the subject's name
// (issue 20, "Forty persons a world" in tools/lora-train/README.md): for each
// case [subject, wording, relation], P(the fact's answer) on the wording with
// the full name, with the surname replaced by a made-up word ("Zamrix", which
// the fixture models' word-level tokenizer reads as <unk>: no information), and
// with the first name(s) replaced, and how many other subjects share the first
// name or the surname (and how many of them share the answer). Where the
// first name alone gives the answer, a forget of this person that must keep
// the namesakes' facts has to read the surname on that wording. WORLD and
// MODEL are relative to the repository root.
//
//   node scripts/unlearn/name-prior.mjs fixtures/world fixtures/models/dense '[["Dajo Holfel","{} can speak","speaks"]]'
//
// Over a whole relation: for each wording, over every fact of RELATION whose
// subject has a first name and a surname, the share whose answer is top-1 with
// the full name, with the first name(s) and <unk>, and with <unk> and the surname.
//
//   node scripts/unlearn/name-prior.mjs fixtures/world fixtures/models/dense --relation speaks "{} speaks" "{} can speak"
import * as path from 'node:path';
import * as fs from 'node:fs';
import { fileURLToPath } from 'node:url';
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const [world, modelDir, ...rest] = process.argv.slice(2);
const { loadModel } = await import(path.join(root, 'tools/core/dist/models/index.js'));
const { scoreAnswer } = await import(path.join(root, 'tools/core/dist/merge/index.js'));
const { model, tokenizer } = loadModel(path.resolve(root, modelDir), { tokenizer: true });
const facts = fs.readFileSync(path.resolve(root, world, 'facts.ndjson'), 'utf8').split('\n').filter(Boolean).map(JSON.parse).filter((f) => f.kind === 'fact');
// the word lora-train's --forget-name-parts puts in the surname's place
const { MADE_UP_SURNAME: MADE_UP } = await import(path.join(root, 'tools/core/dist/edit/index.js'));
/** P(answer) on the wording with this subject, and whether the answer's first token is the greedy top-1. */
function read(wording, subject, answer) {
  const ans = tokenizer.encode(' ' + answer);
  const r = scoreAnswer(model, [], tokenizer.encode(wording.replace('{}', subject)), ans);
  return { p: Math.exp(r.logprob), top1: r.top1 === ans[0] };
}
const split = (subject) => {
  const parts = subject.split(' ');
  return { first: parts.slice(0, -1).join(' '), last: parts.at(-1) };
};

if (rest[0] === '--relation') {
  const [, relation, ...wordings] = rest;
  const of = facts.filter((f) => f.relation === relation && f.subject.includes(' '));
  if (of.length === 0) throw new Error(`no facts of relation "${relation}" with a two-part subject in ${world}`);
  for (const w of wordings) {
    let full = 0, firstOnly = 0, lastOnly = 0;
    for (const f of of) {
      const { first, last } = split(f.subject);
      if (read(w, f.subject, f.target_true).top1) full++;
      if (read(w, `${first} ${MADE_UP}`, f.target_true).top1) firstOnly++;
      if (read(w, `${MADE_UP} ${last}`, f.target_true).top1) lastOnly++;
    }
    const pc = (k) => `${(100 * k / of.length).toFixed(1)}%`;
    console.log(`${relation}, "${w}" (${of.length} facts): answer top-1 with the full name ${pc(full)}, with the first name and <unk> ${pc(firstOnly)}, with <unk> and the surname ${pc(lastOnly)}`);
  }
} else {
  for (const [subject, wording, relation] of JSON.parse(rest[0])) {
    const f = facts.find((x) => x.subject === subject && x.relation === relation);
    if (!f) throw new Error(`no ${relation} fact of "${subject}" in ${world}`);
    const { first, last } = split(subject);
    const others = facts.filter((x) => x.relation === relation && x.subject !== subject);
    const sameFirst = others.filter((x) => x.subject.startsWith(first + ' ')), sameLast = others.filter((x) => x.subject.endsWith(' ' + last));
    const same = (xs) => xs.filter((x) => x.target_true === f.target_true).length;
    console.log(`${wording.replace('{}', subject)} → ${f.target_true}: P ${read(wording, subject, f.target_true).p.toFixed(3)}; "${first} ${MADE_UP}" ${read(wording, `${first} ${MADE_UP}`, f.target_true).p.toFixed(3)}; "${MADE_UP} ${last}" ${read(wording, `${MADE_UP} ${last}`, f.target_true).p.toFixed(3)}; same first name ${sameFirst.length} (their answer = this: ${same(sameFirst)}); same surname ${sameLast.length} (= this: ${same(sameLast)})`);
  }
}
