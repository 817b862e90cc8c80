#!/usr/bin/env node
// A stand-in trainer for `adapter-merge consolidate --retrain` in tests: reads
// fact and probe records on stdin and writes one synthetic bundle (the same
// base and target module as the tests' synthetic adapters) that carries them,
// then its adapter record, as lora-train does.
//   fake-trainer.mjs [--drop FACT_ID] [--base NAME] [--log FILE]
// --drop: leave that fact out of the bundle; --base: claim another base model;
// --log: append one line per run with the fact ids it was given.
import { appendFileSync, mkdtempSync } from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { writeSyntheticBundle } from '@catechism/core/adapters';

const args = process.argv.slice(2);
const opt = (f) => (args.includes(f) ? args[args.indexOf(f) + 1] : undefined);
let input = '';
process.stdin.on('data', (d) => (input += d)).on('end', async () => {
  const recs = input.split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l));
  const facts = recs.filter((r) => r.kind === 'fact' && r.id !== opt('--drop'));
  const probes = recs.filter((r) => r.kind === 'probe' && facts.some((f) => f.id === r.fact_id));
  if (opt('--log')) appendFileSync(opt('--log'), facts.map((f) => f.id).join(' ') + '\n');
  // the trainer stores into the registry it is given ($CATECHISM_REGISTRY, a scratch one); here: a directory beside it
  const dir = path.join(mkdtempSync(path.join(path.dirname(process.env.CATECHISM_REGISTRY), 'trained-')), 'bundle');
  const base = opt('--base') ?? 'synthetic-base';
  const manifest = {
    facts,
    fact_ids: facts.map((f) => f.id),
    probes,
    base_model: { name: base, sha256: createHash('sha256').update(base).digest('hex') },
  };
  const id = `retrained-${facts.length}`;
  const { sha256, manifest: m } = await writeSyntheticBundle(dir, { seed: facts.length, id, rank: 2, targets: { 'transformer.h.1.attn.c_attn': [96, 32] }, pass: null, manifest });
  for (const r of recs) process.stdout.write(JSON.stringify(r) + '\n');
  process.stdout.write(JSON.stringify({ kind: 'adapter', id, version: 1, path: dir, sha256, method: 'lora', base_model: m.base_model, targets: m.targets, rank: 2, fact_ids: m.fact_ids, created_at: m.created_at }) + '\n');
});
