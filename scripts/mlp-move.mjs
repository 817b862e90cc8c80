#!/usr/bin/env node
// How far a kept batch moves the MLP outputs where the answer is read (issue
// 19): read an eval-edits bundle (`eval-edits.mjs --keep DIR`) at the last
// token of three groups of prompts — the edited facts in their training
// phrasings, the facts not edited in their training phrasings (what the
// retention holds), and those facts' held-out phrasings (what eval-edits' kl
// reads) — and print, per layer's MLP output (--layers), the mean norm of the
// change the adapter makes there beside the mean norm of the base model's
// output. Behind lora-train README's "Hidden-state retention".
//
//   node scripts/mlp-move.mjs --keep DIR [--source facts|edits] [--skip 0] [--count 1000] [--seed 0] [--world DIR --model DIR] [--layers 2,3]
// The case options must be the ones the bundle was trained with (the facts it edits).
import * as path from 'node:path';
import { keptCase, root } from './kept-case.mjs';

const { a, res, facts, readback, adapters, key, edited, notEdited, trainPhrasings } = await keptCase(import.meta.url, { layers: { type: 'string', default: '2,3' } });
const { lastTokenActivations } = await import(path.join(root, 'tools/core/dist/edit/index.js'));
const model = res.model;
const H = model.config.hidden;
const groups = [
  ['edited facts, training phrasings', facts.flatMap(trainPhrasings)],
  ['facts not edited, training phrasings', notEdited.flatMap(trainPhrasings)],
  ['facts not edited, held-out phrasings', readback.filter((p) => !edited.has(key(p.subject, p.relation))).map((p) => p.prompt)],
];
const prev = model.activeAdapters();
console.log('| MLP output | prompts | n | mean ‖Δ‖ | mean ‖base‖ |\n|---|---|---:|---:|---:|');
for (const l of a.layers.split(',').map(Number)) {
  for (const [name, prompts] of groups) {
    model.setAdapters([]);
    const base = lastTokenActivations(model, res.tokenizer, prompts, `layers.${l}.mlp`);
    model.setAdapters(adapters.map((adapter) => ({ adapter })));
    const after = lastTokenActivations(model, res.tokenizer, prompts, `layers.${l}.mlp`);
    let moved = 0, size = 0;
    for (let i = 0; i < prompts.length; i++) {
      let d = 0, b = 0;
      for (let j = 0; j < H; j++) {
        d += (after[i * H + j] - base[i * H + j]) ** 2;
        b += base[i * H + j] ** 2;
      }
      moved += Math.sqrt(d);
      size += Math.sqrt(b);
    }
    console.log(`| layers.${l}.mlp | ${name} | ${prompts.length} | ${(moved / prompts.length).toFixed(2)} | ${(size / prompts.length).toFixed(2)} |`);
  }
}
model.setAdapters(prev);
