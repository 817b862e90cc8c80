#!/usr/bin/env node
// `concept` records for a relation concept (issue 20): the prompts of the
// world's facts of --relations (one class each), every --test-th subject of a
// relation held out as split "test" (validate's erasure probe reads those;
// lora-train --method leace fits on the rest).
//
//   node scripts/unlearn/concepts.mjs [--facts fixtures/world/facts.ndjson] [--relations works_for,lives_in,plays_sport]
//     [--per 220] [--test 3] [--concept relation] [--phrasings one|train] [--templates fixtures/world/templates.json]
//   --phrasings train: each fitted (split "train") subject in every training template of its
//     relation (--templates), not only its fact's prompt: five times the rows for the eraser's
//     class means and covariance; held-out subjects keep their one prompt.
import * as fs from 'node:fs';
import { parseArgs } from 'node:util';
const { values: a } = parseArgs({ options: {
  facts: { type: 'string', default: 'fixtures/world/facts.ndjson' }, relations: { type: 'string', default: 'works_for,lives_in,plays_sport' },
  per: { type: 'string', default: '220' }, phrasings: { type: 'string', default: 'one' },
  templates: { type: 'string', default: 'fixtures/world/templates.json' }, test: { type: 'string', default: '3' }, concept: { type: 'string', default: 'relation' },
} });
const rels = a.relations.split(',');
if (a.phrasings !== 'one' && a.phrasings !== 'train') throw new Error(`--phrasings: one or train, got ${a.phrasings}`);
const train = a.phrasings === 'train' ? JSON.parse(fs.readFileSync(a.templates, 'utf8')).relations : null;
const seen = new Map();
for (const l of fs.readFileSync(a.facts, 'utf8').split('\n')) {
  if (!l.trim()) continue;
  const f = JSON.parse(l);
  if (f.kind !== 'fact' || !rels.includes(f.relation)) continue;
  const n = seen.get(f.relation) ?? 0;
  if (n >= Number(a.per)) continue;
  seen.set(f.relation, n + 1);
  const split = n % Number(a.test) === Number(a.test) - 1 ? 'test' : 'train';
  const prompts = split === 'train' && train ? [...new Set([f.prompt, ...train[f.relation].templates.train])] : [f.prompt];
  prompts.forEach((p, i) => {
    const id = i === 0 ? f.id : `${f.id}#${i}`;
    console.log(JSON.stringify({ kind: 'concept', concept: a.concept, prompt: p.replace('{}', f.subject), label: f.relation, id, split }));
  });
}
