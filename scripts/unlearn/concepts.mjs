#!/usr/bin/env node
// `concept` records for a relation concept (issue 20): the prompts of the
// world's facts of --relations (one class each), every --test-th subject of a
// relation held out as split "test" (validate's erasure probe reads those;
// lora-train --method leace fits on the rest).
//
//   node scripts/unlearn/concepts.mjs [--facts fixtures/world/facts.ndjson] [--relations works_for,lives_in,plays_sport]
//     [--per 220] [--test 3] [--offset 2] [--stratify none|answer] [--concept relation] [--phrasings one|train] [--templates fixtures/world/templates.json]
//   --offset K: which of every --test subjects is held out (0-based; default --test − 1, the last).
//   --stratify answer: count every --test-th holder of each answer (target_true) instead of every --test-th
//     subject of the relation, so the held-out subjects' answers come in about the fit's proportions
//     (answers with fewer than --offset + 1 holders are never held out). A diagnostic of the LEACE residual
//     (lora-train README, "LEACE read by validate's erasure probe"), not a fix.
//   --phrasings train: each fitted (split "train") subject in every training template of its
//     relation (--templates), not only its fact's prompt: five times the rows for the eraser's
//     class means and covariance; held-out subjects keep their one prompt.
//   --synthetic N: also N made-up persons per relation (a known person's first names with another's
//     surname, none a world subject), each in every fact template of the relation seen, all split
//     "train". The concept here is which relation a prompt asks, which does not need a known subject,
//     so the eraser's class means can be fitted on many more subjects than the world has (their error
//     on held-out subjects falls as 1/sqrt(n)); the held-out rows stay the world's own subjects.
//     Persons only (relations whose subjects are cities or companies are skipped by this flag).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const { values: a } = parseArgs({ options: {
  facts: { type: 'string', default: 'fixtures/world/facts.ndjson' }, relations: { type: 'string', default: 'works_for,lives_in,plays_sport' },
  per: { type: 'string', default: '220' }, phrasings: { type: 'string', default: 'one' },
  templates: { type: 'string', default: 'fixtures/world/templates.json' }, test: { type: 'string', default: '3' }, concept: { type: 'string', default: 'relation' },
  synthetic: { type: 'string', default: '0' }, seed: { type: 'string', default: '0' },
  offset: { type: 'string' }, stratify: { type: 'string', default: 'none' },
} });
const rels = a.relations.split(',');
const every = Number(a.test);
const offset = a.offset === undefined ? every - 1 : Number(a.offset);
if (!Number.isInteger(every) || every < 2) throw new Error(`--test: an integer of at least 2, got ${a.test}`);
if (!Number.isInteger(offset) || offset < 0 || offset >= every) throw new Error(`--offset: an integer in 0..${every - 1}, got ${a.offset}`);
if (a.stratify !== 'none' && a.stratify !== 'answer') throw new Error(`--stratify: none or answer, got ${a.stratify}`);
const holders = new Map(); // relation + answer -> subjects counted so far (--stratify answer)
if (a.phrasings !== 'one' && a.phrasings !== 'train') throw new Error(`--phrasings: one or train, got ${a.phrasings}`);
const train = a.phrasings === 'train' ? JSON.parse(fs.readFileSync(a.templates, 'utf8')).relations : null;
const seen = new Map();
const templatesOf = new Map(); // relation -> the fact templates seen (for --synthetic)
const persons = new Set();
for (const l of fs.readFileSync(a.facts, 'utf8').split('\n')) {
  if (!l.trim()) continue;
  const f = JSON.parse(l);
  if (f.kind !== 'fact' || !rels.includes(f.relation)) continue;
  if (f.subject.includes(' ')) persons.add(f.subject);
  if (!templatesOf.has(f.relation)) templatesOf.set(f.relation, new Set());
  templatesOf.get(f.relation).add(f.prompt);
  const n = seen.get(f.relation) ?? 0;
  if (n >= Number(a.per)) continue;
  seen.set(f.relation, n + 1);
  const key = `${f.relation}\u0000${f.target_true}`;
  const k = a.stratify === 'answer' ? (holders.get(key) ?? 0) : n;
  holders.set(key, k + 1);
  const split = k % every === offset ? 'test' : 'train';
  const prompts = split === 'train' && train ? [...new Set([f.prompt, ...train[f.relation].templates.train])] : [f.prompt];
  prompts.forEach((p, i) => {
    const id = i === 0 ? f.id : `${f.id}#${i}`;
    console.log(JSON.stringify({ kind: 'concept', concept: a.concept, prompt: p.replace('{}', f.subject), label: f.relation, id, split }));
  });
}

const nSynthetic = Number(a.synthetic);
if (nSynthetic > 0) {
  // seeded made-up names: first names of one known person + the surname of another (core's Rng, build first)
  const { Rng } = await import(path.join(root, 'tools/core/dist/index.js'));
  const rng = new Rng(Number(a.seed));
  const known = [...persons].sort();
  const made = new Set();
  for (let guard = 0; made.size < nSynthetic && guard < nSynthetic * 100; guard++) {
    const first = rng.pick(known).split(' ').slice(0, -1).join(' ');
    const last = rng.pick(known).split(' ').at(-1);
    const name = `${first} ${last}`;
    if (!persons.has(name)) made.add(name);
  }
  if (made.size < nSynthetic) throw new Error(`--synthetic ${nSynthetic}: only ${made.size} new names can be made from ${known.length} persons`);
  for (const r of rels) {
    const ts = [...(templatesOf.get(r) ?? [])];
    let i = 0;
    for (const name of made) {
      for (const t of ts) console.log(JSON.stringify({ kind: 'concept', concept: a.concept, prompt: t.replace('{}', name), label: r, id: `synthetic:${r}:${i}${ts.length > 1 ? `#${ts.indexOf(t)}` : ''}`, split: 'train' }));
      i++;
    }
  }
}
