#!/usr/bin/env node
// Forgetting measured through the tools (issue 20): --count known facts of the
// world (a seeded order, from --skip on; counterfactualFacts of lora-train's
// measure.ts) made `op: forget`, probes by probe-gen --roles all (held-out
// paraphrases, neighbourhood, generation), trained by lora-train's own path
// (trainEdits; ROME one fact per adapter, MEMIT and LoRA one batch), then
// validate (the CLI, default gates, --no-fluency) on every adapter. Prints one
// markdown row: forget_top1 (old answer top-1 on edit + held-out paraphrases
// the base model answered), forget_p_true, forget_gen, specificity (other
// subjects of the relation kept), kl, ppl_delta, retain_drop: means over the
// adapters (max in brackets), and how many pass every gate.
//
//   node scripts/unlearn/forget-eval.mjs [--world fixtures/world] [--model fixtures/models/dense]
//     [--method rome|memit|lora] [--skip 0] [--count 8] [--relation R] [--seed 0]
//     [--layer L]           lora-train --layer (default: ROME's candidates, the first that forgets)
//     [--opt flag=json ...]   a lora-train method option by flag name, e.g. --opt rome-keep-facts=100
//     [--set key=json ...]  ROME forget options (ROME_FORGET_DEFAULTS, rank-one-forget.ts), e.g. --set keepWeight=1
//     [--keep DIR]          keep the adapters and records there (relearn.mjs reads them)
//     [--label TEXT] [--header] [--json FILE]
// Build first. Run it with `nice`: it trains.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const lt = await import(path.join(root, 'tools/lora-train/dist/index.js'));
const { readNdjson } = await import(path.join(root, 'tools/core/dist/edit/index.js'));
const rof = await import(path.join(root, 'tools/core/dist/edit/rank-one-forget.js'));

const { values: a } = parseArgs({ options: {
  world: { type: 'string', default: 'fixtures/world' }, model: { type: 'string' }, method: { type: 'string', default: 'rome' },
  skip: { type: 'string', default: '0' }, count: { type: 'string', default: '8' }, relation: { type: 'string' }, seed: { type: 'string', default: '0' },
  layer: { type: 'string' }, opt: { type: 'string', multiple: true, default: [] }, set: { type: 'string', multiple: true, default: [] }, keep: { type: 'string' }, label: { type: 'string' }, header: { type: 'boolean', default: false }, json: { type: 'string' },
} });
const world = path.resolve(a.world);
const model = path.resolve(a.model ?? path.join(root, 'fixtures/models/dense'));
const overrides = {};
for (const kv of a.set) {
  const i = kv.indexOf('=');
  overrides[kv.slice(0, i)] = JSON.parse(kv.slice(i + 1));
}
Object.assign(rof.ROME_FORGET_DEFAULTS, overrides);
const bin = (n) => path.join(root, 'node_modules/.bin', n);
const dir = a.keep ? path.resolve(a.keep) : fs.mkdtempSync(path.join(os.tmpdir(), 'forget-eval-'));
fs.mkdirSync(dir, { recursive: true });
process.env.CATECHISM_CACHE ??= path.join(os.tmpdir(), 'eval-edits-cache');

const facts = lt.counterfactualFacts(readNdjson(path.join(world, 'facts.ndjson')), { relation: a.relation, skip: Number(a.skip), count: Number(a.count), seed: Number(a.seed), op: 'forget', exclude: readNdjson(path.join(world, 'edits.ndjson')) });
fs.writeFileSync(path.join(dir, 'facts.ndjson'), facts.map((f) => JSON.stringify(f)).join('\n') + '\n');
const pg = spawnSync(bin('probe-gen'), ['--roles', 'all', '--model', model, '--templates', path.join(world, 'templates.json'), path.join(dir, 'facts.ndjson')], { encoding: 'utf8', maxBuffer: 256 << 20 });
if (pg.status !== 0) throw new Error(pg.stderr);
fs.writeFileSync(path.join(dir, 'probes.ndjson'), pg.stdout);
const recs = pg.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l));
const inputs = recs.map((record, i) => ({ record, source: 'probes', index: i + 1 }));

const res = lt.loadResources({ model, templates: path.join(world, 'templates.json'), retainCorpus: path.join(world, 'train.txt'), knownFacts: path.join(world, 'facts.ndjson') });
const args = { ...lt.DEFAULT_ARGS, seed: Number(a.seed), out: path.join(dir, 'adapters'), method: a.method, batch: 0, options: Object.fromEntries(a.opt.map((kv) => [kv.slice(0, kv.indexOf('=')), JSON.parse(kv.slice(kv.indexOf('=') + 1))])), ...(a.layer !== undefined ? { layer: Number(a.layer) } : {}) };
const log = (m) => process.stderr.write(`  ${m}\n`);
const t0 = Date.now();
const records = [];
const refused = [];
const groups = a.method === 'rome' ? facts.map((f) => [f.id]) : [facts.map((f) => f.id)];
for (const ids of groups) {
  try {
    records.push(...(await lt.trainEdits(inputs.filter((r) => ids.includes(r.record.id) || ids.includes(r.record.fact_id)), args, res, { log })));
  } catch (e) {
    if (e.name !== 'EditRefusedError') throw e;
    refused.push(...ids);
  }
}
const seconds = (Date.now() - t0) / 1000;
fs.writeFileSync(path.join(dir, 'adapters.ndjson'), records.map((r) => JSON.stringify(r)).join('\n') + '\n');
const v = spawnSync(bin('validate'), ['--model', model, '--world', world, '--no-record', '--no-fluency', path.join(dir, 'adapters.ndjson'), path.join(dir, 'probes.ndjson')], { encoding: 'utf8', maxBuffer: 256 << 20 });
if (v.status !== 0) throw new Error(v.stderr);
const reports = v.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l)).filter((r) => r.kind === 'report');
fs.writeFileSync(path.join(dir, 'reports.ndjson'), reports.map((r) => JSON.stringify(r)).join('\n') + '\n');
const keys = ['forget_top1', 'forget_p_true', 'forget_gen', 'specificity', 'kl', 'ppl_delta', 'retain_drop'];
const agg = {};
for (const k of keys) {
  const xs = reports.map((r) => r.metrics[k]).filter((x) => typeof x === 'number' && !Number.isNaN(x));
  agg[k] = { mean: xs.reduce((s, x) => s + x, 0) / Math.max(xs.length, 1), max: Math.max(...xs) };
}
const passes = reports.filter((r) => r.pass).length;
const label = a.label ?? ([...(a.layer !== undefined ? [`layer=${a.layer}`] : []), ...a.opt, ...a.set].join(' ') || 'defaults');
const f3 = (x) => (Number.isFinite(x) ? x.toFixed(3) : '–');
if (a.header) {
  console.log(`| case | world | method | facts | ${keys.join(' | ')} | pass | refused | s |`);
  console.log(`|${'---|'.repeat(keys.length + 8)}`);
}
console.log(`| ${label} | ${path.basename(world)} skip ${a.skip} | ${a.method} | ${facts.length} | ${keys.map((k) => `${f3(agg[k].mean)} (${f3(agg[k].max)})`).join(' | ')} | ${passes}/${reports.length} | ${refused.length} | ${seconds.toFixed(0)} |`);
if (a.json) fs.appendFileSync(a.json, JSON.stringify({ label, world: path.basename(world), skip: Number(a.skip), method: a.method, set: overrides, agg, passes, reports: reports.length, refused, seconds, failures: reports.map((r) => r.failures) }) + '\n');
if (!a.keep) fs.rmSync(dir, { recursive: true, force: true });
