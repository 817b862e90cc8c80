#!/usr/bin/env node
// MEMIT / AlphaEdit measured on a fixture world with the strict read-back
// (core's editReadback over every known fact of <world>/eval/facts-train.ndjson):
// one markdown table row per run:
//
//   case | world | method | n | efficacy | paraphrase | neighbourhood | kl | retain_drop | s/edit | gates
//
// Edits are counterfactuals of known facts (<world>/facts.ndjson), each moved
// to another object of its relation (seeded), in a seeded order that leaves
// out the world's edits.ndjson pairs. --split tune takes them from the start
// of that order (positions 0..TUNE-1, TUNE = 200), --split heldout after it:
// tuning never sees the held-out edits. When the world has
// eval/edits-tune.ndjson / eval/edits-heldout.ndjson (world-gen --edits),
// those files are used instead. --relation R: one relation only.
// --rounds K: K sequential batches of --count each, every batch applied on
// top of the earlier ones (AlphaEdit gets the earlier keys); figures are for
// all edits at the end, and round 1's efficacy is reported too.
//
// Usage:
//   node scripts/eval-memit.mjs [--world fixtures/world] [--model fixtures/models/dense]
//     [--method memit|alphaedit] [--split tune|heldout] [--relation R] [--count 10]
//     [--rounds 1] [--seed 0] [--set flag=value ...] [--label TEXT] [--header] [--json FILE]
//   --set: a method option by its flag name (--set mom2-weight=5000 --set layers=0,1).
//   --sweep flag=v1,v2,...: one row per value, the targets fitted once (rounds = 1).
// Build core first (npx tsc -p tools/core/tsconfig.json). Run it with `nice`.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const edit = await import(path.join(root, 'tools/core/dist/edit/index.js'));
const { loadModel } = await import(path.join(root, 'tools/core/dist/models/index.js'));
const { Rng } = await import(path.join(root, 'tools/core/dist/util/random.js'));

const { values: a } = parseArgs({
  options: {
    world: { type: 'string', default: 'fixtures/world' },
    model: { type: 'string' },
    method: { type: 'string', default: 'memit' },
    split: { type: 'string', default: 'heldout' },
    relation: { type: 'string' },
    count: { type: 'string', default: '10' },
    rounds: { type: 'string', default: '1' },
    seed: { type: 'string', default: '0' },
    set: { type: 'string', multiple: true, default: [] },
    sweep: { type: 'string' },
    label: { type: 'string' },
    header: { type: 'boolean', default: false },
    json: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});
if (a.help) {
  console.log(fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').filter((l) => l.startsWith('//')).map((l) => l.slice(3)).join('\n'));
  process.exit(0);
}
const TUNE = 200;
const world = path.resolve(a.world);
const modelDir = path.resolve(a.model ?? path.join(root, path.basename(world) === 'world-b' ? 'fixtures/models/dense-b' : 'fixtures/models/dense'));
const count = Number(a.count);
const rounds = Number(a.rounds);
const seed = Number(a.seed);
const method = a.method === 'alphaedit' ? edit.alphaeditMethod : a.method === 'memit' ? edit.memitMethod : null;
if (!method) throw new Error(`--method: memit or alphaedit, got ${a.method}`);
if (!['tune', 'heldout'].includes(a.split)) throw new Error(`--split: tune or heldout, got ${a.split}`);

/** Counterfactuals of known facts, as lora-train's counterfactualFacts: seeded order, seeded new object. */
function counterfactuals(known, exclude) {
  const excluded = new Set(exclude.map((f) => `${f.subject}\u0000${f.relation}`));
  const objects = new Map();
  for (const k of known) if (typeof k.target_true === 'string') (objects.get(k.relation) ?? objects.set(k.relation, []).get(k.relation)).push(k.target_true);
  const rng = new Rng(1000 + seed);
  const pool = rng.shuffle(known.filter((k) => !excluded.has(`${k.subject}\u0000${k.relation}`)));
  return pool.map((k, i) => {
    const others = [...new Set(objects.get(k.relation))].filter((o) => o !== k.target_true).sort();
    return { kind: 'fact', id: `cf-${String(i + 1).padStart(4, '0')}`, subject: k.subject, prompt: k.prompt, relation: k.relation, source: 'counterfactual', target_new: others[rng.int(others.length)], target_true: k.target_true, op: 'insert' };
  });
}

function caseFacts() {
  const splitFile = path.join(world, 'eval', a.split === 'tune' ? 'edits-tune.ndjson' : 'edits-heldout.ndjson');
  let pool;
  if (fs.existsSync(splitFile)) pool = edit.readNdjson(splitFile).filter((f) => f.op === 'insert');
  else {
    const all = counterfactuals(edit.readNdjson(path.join(world, 'facts.ndjson')), edit.readNdjson(path.join(world, 'edits.ndjson')));
    pool = a.split === 'tune' ? all.slice(0, TUNE) : all.slice(TUNE);
  }
  if (a.relation) pool = pool.filter((f) => f.relation === a.relation);
  return pool;
}

const pool = caseFacts();
const need = count * rounds;
if (pool.length < need) throw new Error(`only ${pool.length} ${a.split} edits${a.relation ? ` of ${a.relation}` : ''}; asked for ${need}`);
const facts = pool.slice(0, need).map((f) => edit.checkFact(f));

const flags = {};
for (const kv of a.set) {
  const i = kv.indexOf('=');
  if (i < 0) throw new Error(`--set ${kv}: expected flag=value`);
  const k = kv.slice(i + 1);
  flags[kv.slice(0, i)] = kv.slice(0, i) === 'layers' ? k.split(',') : Number.isNaN(Number(k)) ? k : Number(k);
}
process.env.CATECHISM_CACHE ??= path.join(os.tmpdir(), 'eval-edits-cache');
const { model, tokenizer } = loadModel(modelDir);
const res = {
  model, tokenizer, modelName: modelDir, modelSha: edit.modelSha256(modelDir),
  templates: edit.loadTemplateBank(path.join(world, 'templates.json')),
  corpus: edit.readCorpusLines(path.join(world, 'train.txt'), 50000),
  known: edit.readNdjson(path.join(world, 'facts.ndjson')),
};
const common = { topK: 1 };
method.check?.(res, common, method.parseOptions(flags));
const log = (m) => process.stderr.write(`  ${m}\n`);
const targetsCache = new Map();
const sweep = a.sweep ? { flag: a.sweep.slice(0, a.sweep.indexOf('=')), values: a.sweep.slice(a.sweep.indexOf('=') + 1).split(',').map(Number) } : null;
let headerDone = false;
let firstValueSeconds = 0;
for (const sv of sweep ? sweep.values : [null]) {
const options = method.parseOptions(sweep ? { ...flags, [sweep.flag]: sv } : flags);
options.targetsCache = targetsCache;
const t0 = Date.now();
const made = [];
let memory = null;
for (let r = 0; r < rounds; r++) {
  const group = facts.slice(r * count, (r + 1) * count);
  const probes = group.map((f) => ({ kind: 'probe', id: `${f.id}/edit/0`, fact_id: f.id, role: 'edit', split: 'train', prompt: f.prompt.replace('{}', f.subject), target: f.target_new, expect: 'new' }));
  // later rounds edit the model with the earlier rounds' edits applied
  model.setAdapters(made.map((m) => ({ adapter: m.adapter })));
  const base = model.activeAdapters();
  const out = await method.edit({
    res, batch: { facts: group, records: [...group, ...probes], probes, loci: [] }, index: r, count: rounds, seed: seed + r, common,
    options: { ...options, ...(memory ? { memory } : {}) }, log,
  });
  model.setAdapters(base);
  for (const m of out) log(m.summary);
  made.push(...out);
  if (a.method === 'alphaedit') memory = edit.readMemory ? memoryOf(out[0]) : null;
}
function memoryOf(m) {
  // the sidecar bytes, read back as the next batch's --preserved would read them
  const f = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'memit-mem-')), m.sidecar.name);
  fs.writeFileSync(f, m.sidecar.bytes);
  const mem = edit.readMemory(f);
  fs.rmSync(path.dirname(f), { recursive: true, force: true });
  return mem;
}
const seconds = (Date.now() - t0) / 1000 + (sweep && sv !== sweep.values[0] ? firstValueSeconds : 0);
if (sweep && sv === sweep.values[0]) firstValueSeconds = made.reduce((x, m) => x + (m.training.seconds ?? 0), 0) - made.reduce((x, m) => x + (m.training.update_seconds ?? 0), 0);
model.setAdapters([]);
const readback = edit.readNdjson(path.join(world, 'eval/facts-train.ndjson')).map((p) => ({ prompt: p.prompt, target: p.target, subject: p.subject, relation: p.relation }));
const adapters = made.map((m) => m.adapter);
const f = edit.editReadback(model, tokenizer, [{ adapters, facts }], { templates: res.templates, readback });
let round1 = null;
if (rounds > 1) round1 = edit.editReadback(model, tokenizer, [{ adapters, facts: facts.slice(0, count) }], { templates: res.templates, readback: [] });

const pct = (x) => (x === undefined || Number.isNaN(x) ? '—' : (100 * x).toFixed(1));
const num = (x) => (x === undefined || Number.isNaN(x) ? '—' : x.toFixed(3));
const fails = [];
if (!(f.kl <= 0.05)) fails.push('kl');
if (!(f.retain_drop <= 0.02)) fails.push('retain_drop');
if (!(f.efficacy >= 0.95)) fails.push('efficacy');
if (!(f.paraphrase >= 0.8)) fails.push('paraphrase');
if (!(f.neighbourhood >= 0.9)) fails.push('neighbourhood');
const label = a.label ?? `${a.split} ${a.relation ?? ''} ${rounds > 1 ? `${rounds}×${count}` : count}`.replace(/ +/g, ' ');
if (a.header && !headerDone) {
  headerDone = true;
  console.log('| case | world | method | n | efficacy % | paraphrase % | neighbourhood % | kl | retain_drop pts | s/edit | round-1 efficacy % | gates (100-edit row of issue 19) |');
  console.log('|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|');
}
const setList = [...a.set, ...(sweep ? [`${sweep.flag}=${sv}`] : [])];
const setTxt = setList.length ? ` [${setList.join(' ')}]` : '';
console.log(`| ${label}${setTxt} | ${path.basename(world)} | ${a.method} | ${facts.length} | ${pct(f.efficacy)} | ${pct(f.paraphrase)} | ${pct(f.neighbourhood)} | ${num(f.kl)} | ${(100 * f.retain_drop).toFixed(1)} | ${(seconds / facts.length).toFixed(2)} | ${round1 ? pct(round1.efficacy) : '—'} | ${fails.length ? `fail (${fails.join(', ')})` : 'pass'} |`);
if (a.json) fs.appendFileSync(a.json, JSON.stringify({ label, world: path.basename(world), method: a.method, set: setList, facts: facts.length, rounds, figures: f, round1: round1?.efficacy, seconds, training: made.map((m) => m.training) }) + '\n');
}
