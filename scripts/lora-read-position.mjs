#!/usr/bin/env node
// Where a kept batch's kl is made (issue 19): read an eval-edits bundle
// (`eval-edits.mjs --keep DIR`) back the same strict way twice — as trained,
// and with the adapter's MLP deltas only at the position each read takes
// (the prompt's last token): every other position's output of the changed
// MLPs is put back to the base model's, so the subject's tokens reach the
// read exactly as in the base model. If the figures barely move, the edits
// (and their harm to other facts) are made at the read position, not by
// moving the subjects' representations. --none puts every position back
// (a check of the hook: efficacy and kl read 0).
//
//   node scripts/lora-read-position.mjs --keep DIR [--source facts|edits] [--skip 0] [--count 1000] [--seed 0] [--world DIR --model DIR] [--layers 2,3] [--none]
// The case options must be the ones the bundle was trained with (the facts it edits).
import { keptCase, root } from './kept-case.mjs';
import * as path from 'node:path';

const { a, res, facts, readback, adapters } = await keptCase(import.meta.url, {
  layers: { type: 'string', default: '2,3' }, none: { type: 'boolean', default: false },
});
const { editReadback } = await import(path.join(root, 'tools/core/dist/edit/index.js'));
const { fromData } = await import(path.join(root, 'tools/core/dist/tensor/index.js'));
const groups = [{ adapters, facts }];
const model = res.model;
const read = () => editReadback(model, res.tokenizer, groups, { templates: res.templates, readback });
const line = (tag, f) => console.log(`${tag}: ${['efficacy', 'paraphrase', 'neighbourhood'].map((k) => `${k} ${(100 * f[k]).toFixed(1)}%`).join(', ')}, kl ${f.kl.toFixed(3)} ± ${f.kl_se.toFixed(3)}, retain_drop ${f.retain_drop.toFixed(3)}`);
line('as trained', read());

// every read takes logits at chosen rows (logitsAt); any other position of the
// listed MLPs gets the base model's output, computed by a base pass of the same batch
const layers = a.layers.split(',').map(Number);
const forward = model.forward.bind(model);
model.forward = (ids, dims, opts = {}) => {
  if (!opts.logitsAt || opts.hooks || opts.fromMlp || opts.kvCache) return forward(ids, dims, opts);
  const [B, T] = dims;
  const H = model.config.hidden;
  const kept = new Set(a.none ? [] : opts.logitsAt);
  const active = model.activeAdapters();
  const base = new Map();
  model.setAdapters([]);
  forward(ids, dims, { ...opts, hooks: Object.fromEntries(layers.map((l) => [`layers.${l}.mlp`, { capture: (x) => base.set(l, x.data.slice()) }])) });
  model.setAdapters(active);
  const put = (l) => (x) => {
    const d = x.data.slice();
    const b = base.get(l);
    for (let r = 0; r < B * T; r++) if (!kept.has(r)) d.set(b.subarray(r * H, (r + 1) * H), r * H);
    return fromData(d, x.shape);
  };
  return forward(ids, dims, { ...opts, hooks: Object.fromEntries(layers.map((l) => [`layers.${l}.mlp`, { fn: put(l) }])) });
};
line(a.none ? 'no position (check)' : `deltas of layers ${a.layers} at the read position only`, read());
