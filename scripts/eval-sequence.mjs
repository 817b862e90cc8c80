#!/usr/bin/env node
// Edits in sequence (issue 19): --rounds batches of --count facts, each batch
// edited on the model that already carries the earlier batches, then read
// back the strict way (the world's eval/facts-heldout.ndjson, as
// scripts/eval-edits.mjs). AlphaEdit's next batch gets the previous batch's
// key memory (the method option `memory`: what `--preserved FILE` or the
// registry's live ref would give it); patcher's gets the neurons the earlier
// batches repurposed to avoid (what the registry's live ref gives it); MEMIT
// and ROME get none.
//
//   --apply fold (default): after each round its update is folded into the
//     weights (W += B·A; merge/fold.ts), so the next round's keys, targets and
//     residuals are computed on the edited model: the papers' sequential
//     setting. The key statistics stay the base model's (their cache is keyed
//     by the base model's hash), as in the papers.
//   --apply sum: every round is computed on the base weights and the adapters
//     are summed (what lora-train + adapter-merge --into live do without
//     --over).
//   --apply tools: through the binaries, as a user's cron would run it: each
//     round is `lora-train --registry R --over live … | adapter-merge --into
//     live --validator 'validate … --gate …'` on a fresh registry, so every
//     round is made on the model live serves and promoted only when the
//     merged live passes the validator (--gate, repeatable: validate's gates
//     replaced; the issue-19 sequential row's by default). A refused round
//     never reaches live; its facts count as failed. The figures read live's
//     adapter on the base weights. Seconds: the whole pipe (process starts,
//     training, merge, validation).
//
// Prints one markdown row: efficacy / paraphrase / neighbourhood / kl /
// retain_drop of all the edits at the end (every round's adapter active,
// which for --apply fold is the folded model), round 1's efficacy and
// paraphrase right after round 1 and at the end, and round 1's efficacy after
// each round (the erosion curve). Wall seconds: the edits only.
//
// Usage:
//   node scripts/eval-sequence.mjs --method alphaedit|memit|rome|patcher [--world fixtures/world]
//     [--model fixtures/models/dense] [--source edits|facts] [--skip N] [--count 10] [--rounds 5]
//     [--apply fold|sum|tools] [--gate METRIC<=N ...] [--seed 0] [--set flag=value ...] [--label TEXT] [--header] [--json FILE]
//   --source / --skip: as eval-edits (the world's insert requests from --skip on, or the seeded
//     counterfactuals of facts.ndjson from --skip on); rounds take consecutive slices.
//   --set: a method option by flag name (--set refine-steps=0), or one of the run's fields
//     as eval-edits takes them (layer, targets, topK: --set layer=0).
// Build first (npm run build). Run it with `nice env CATECHISM_THREADS=1`.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const { loadResources, counterfactualFacts, editInputs, planBatches, methodOptions } = await import(path.join(root, 'tools/lora-train/dist/index.js'));
const { readNdjson, editMethod, editReadback, readMemory, checkFact, ALPHAEDIT_MEMORY_FILE } = await import(path.join(root, 'tools/core/dist/edit/index.js'));
const { foldAdapters } = await import(path.join(root, 'tools/core/dist/merge/index.js'));
const { Registry } = await import(path.join(root, 'tools/core/dist/registry/index.js'));
const { loadLora } = await import(path.join(root, 'tools/core/dist/models/index.js'));

const { values: a } = parseArgs({
  options: {
    world: { type: 'string', default: 'fixtures/world' },
    model: { type: 'string' },
    method: { type: 'string', default: 'alphaedit' },
    source: { type: 'string', default: 'edits' },
    skip: { type: 'string', default: '0' },
    count: { type: 'string', default: '10' },
    rounds: { type: 'string', default: '5' },
    apply: { type: 'string', default: 'fold' },
    seed: { type: 'string', default: '0' },
    set: { type: 'string', multiple: true, default: [] },
    label: { type: 'string' },
    header: { type: 'boolean', default: false },
    json: { type: 'string' },
    gate: { type: 'string', multiple: true, default: ['efficacy>=0.9', 'generalisation>=0.75', 'specificity>=0.85', 'retain_drop<=0.05', 'kl<=1'] },
    help: { type: 'boolean', default: false },
  },
});
if (a.help) {
  console.log(fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').filter((l) => l.startsWith('//')).map((l) => l.slice(3)).join('\n'));
  process.exit(0);
}
if (!['fold', 'sum', 'tools'].includes(a.apply)) throw new Error(`--apply: fold, sum or tools, got ${a.apply}`);
const world = path.resolve(a.world);
const model = path.resolve(a.model ?? path.join(root, 'fixtures/models/dense'));
const skip = Number(a.skip);
const count = Number(a.count);
const rounds = Number(a.rounds);
const seed = Number(a.seed);
const need = count * rounds;

const edits = readNdjson(path.join(world, 'edits.ndjson'));
const facts = a.source === 'edits'
  ? edits.filter((f) => f.op === 'insert').slice(skip, skip + need)
  : counterfactualFacts(readNdjson(path.join(world, 'facts.ndjson')), { skip, count: need, seed, op: 'insert', exclude: edits });
if (facts.length < need) throw new Error(`only ${facts.length} facts from ${a.source} after ${skip}; asked for ${need}`);

const method = editMethod(a.method);
if (!method) throw new Error(`--method: unknown ${a.method}`);
const flags = {};
const RUN_KEYS = new Set(['layer', 'targets', 'topK']);
const common = {}; // the run's fields; without them each method's defaults
for (const kv of a.set) {
  const i = kv.indexOf('=');
  if (i < 0) throw new Error(`--set ${kv}: expected flag=value`);
  let v = kv.slice(i + 1);
  try { v = JSON.parse(v); } catch { /* a string */ }
  if (RUN_KEYS.has(kv.slice(0, i))) common[kv.slice(0, i)] = v;
  else flags[kv.slice(0, i).replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)] = v;
}
const options = methodOptions(method, flags);
process.env.CATECHISM_CACHE ??= path.join(os.tmpdir(), 'eval-edits-cache');
const res = loadResources({
  model, templates: path.join(world, 'templates.json'), retainCorpus: path.join(world, 'train.txt'), knownFacts: path.join(world, 'facts.ndjson'),
});
method.check?.(res, common, options);
const lm = res.model;
const baseWeights = new Map(lm.weights);
let folded = new Map(lm.weights);
const setWeights = (w) => { for (const [k, v] of w) lm.weights.set(k, v); };
const readback = readNdjson(path.join(world, 'eval/facts-heldout.ndjson')).map((p) => ({
  prompt: p.prompt, target: p.target, ...(typeof p.subject === 'string' ? { subject: p.subject } : {}), ...(typeof p.relation === 'string' ? { relation: p.relation } : {}),
}));
const log = (m) => process.stderr.write(`  ${m}\n`);
const checked = facts.map((f) => checkFact(f));
/** Figures of `which` facts with every adapter made so far active on the base weights (= the folded model). */
const figures = (which, rb) => {
  setWeights(baseWeights);
  const adapters = a.apply === 'tools' ? (live ? [live] : []) : made.map((m) => m.adapter);
  try { return editReadback(lm, res.tokenizer, [{ adapters, facts: which }], { templates: res.templates, readback: rb }); }
  finally { setWeights(a.apply === 'fold' ? folded : baseWeights); }
};

// --apply tools: a fresh registry, and one pipe of the binaries per round
const bin = (tool) => path.join(root, `tools/${tool}/dist/main.js`);
const q = (x) => `'${String(x).replace(/'/g, `'\\''`)}'`;
const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'eval-sequence-tools-'));
const regDir = path.join(runDir, 'registry');
const registry = new Registry(regDir);
const worldFlags = ['--model', model, '--templates', path.join(world, 'templates.json'), '--retain-corpus', path.join(world, 'train.txt'), '--known-facts', path.join(world, 'facts.ndjson')];
const methodArgs = [];
for (const kv of a.set) {
  const i = kv.indexOf('=');
  let v = kv.slice(i + 1);
  try { v = JSON.parse(v); } catch { /* a string */ }
  const flag = kv.slice(0, i) === 'topK' ? 'top-k' : kv.slice(0, i).replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
  methodArgs.push(`--${flag}`, ...(Array.isArray(v) ? v.map(String) : [String(v)]));
}
/** One round through lora-train --over live | adapter-merge --into live; true when live was promoted. */
function roundThroughTools(r, group) {
  const input = path.join(runDir, `round-${r + 1}.ndjson`);
  fs.writeFileSync(input, editInputs(group).map((x) => JSON.stringify(x.record)).join('\n') + '\n');
  const validator = ['node', bin('validate'), '--model', model, ...a.gate.flatMap((g) => ['--gate', g]), '-q'].map(q).join(' ');
  const train = ['node', bin('lora-train'), ...worldFlags, '--registry', regDir, '--over', 'live', '--method', a.method, '--seed', seed + r, ...methodArgs, '-q', input].map(q).join(' ');
  const merge = ['node', bin('adapter-merge'), '--registry', regDir, '--model', model, '--into', 'live', '--validator', validator, '--message', `round ${r + 1}`, '-q'].map(q).join(' ');
  const p = spawnSync('bash', ['-o', 'pipefail', '-c', `${train} | ${merge}`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 28 });
  if (p.status !== 0) log(`round ${r + 1}: exit ${p.status}: ${p.stderr.trim().split('\n').slice(-3).join(' | ')}`);
  const report = p.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l)).find((x) => x.kind === 'report');
  if (report) log(`round ${r + 1}: validator ${report.pass ? 'pass' : 'FAIL'}: ${Object.entries(report.metrics ?? {}).filter(([k]) => ['efficacy', 'specificity', 'kl', 'retain_drop', 'ppl_delta'].includes(k)).map(([k, v]) => `${k} ${Number(v).toFixed(3)}`).join(', ')}`);
  return p.status === 0;
}

const made = [];
const refused = [];
let live = null; // --apply tools: live's adapter after the last round
const round1 = [];
let memory = null;
const patched = [];
let editSeconds = 0;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'eval-sequence-'));
for (let r = 0; r < rounds; r++) {
  const group = facts.slice(r * count, (r + 1) * count);
  const batch = planBatches(editInputs(group), 0)[0];
  const t0 = Date.now();
  if (a.apply === 'tools') {
    const promoted = roundThroughTools(r, group);
    editSeconds += (Date.now() - t0) / 1000;
    if (!promoted) {
      refused.push(...group.map((f) => f.id));
      log(`round ${r + 1}: refused by the validator; live unchanged`);
    }
    const head = await registry.head('live');
    if (head) live = loadLora(registry.objectPath(head.bundle), 'live');
    const f1 = figures(checked.slice(0, count), []);
    round1.push(f1.efficacy);
    log(`after round ${r + 1}: round-1 efficacy ${(100 * f1.efficacy).toFixed(1)}%, paraphrase ${(100 * f1.paraphrase).toFixed(1)}%, live ${head ? `v${head.adapter_version}, rank ${live.r}` : 'empty'}`);
    continue;
  }
  let out = [];
  try {
    out = await method.edit({ res, batch, index: r, count: rounds, seed: seed + r, common, options: { ...options, ...(memory ? { memory } : {}), ...(patched.length ? { avoid: patched.slice() } : {}) }, log });
  } catch (e) {
    if (e.name !== 'EditRefusedError') throw e;
    refused.push(...group.map((f) => f.id));
    log(`round ${r + 1}: refused (${e.message})`);
  }
  editSeconds += (Date.now() - t0) / 1000;
  for (const m of out) {
    log(`round ${r + 1}: ${m.summary}`);
    made.push(m);
    if (Array.isArray(m.training?.neurons)) patched.push(...m.training.neurons);
    if (a.apply === 'fold') folded = foldAdapters({ ...lm, weights: folded, arch: lm.arch, config: lm.config }, [{ adapter: m.adapter }]).weights;
    const bytes = m.files?.[ALPHAEDIT_MEMORY_FILE];
    if (bytes) {
      const f = path.join(tmp, `mem-${r}.safetensors`);
      fs.writeFileSync(f, bytes);
      memory = readMemory(f);
    }
  }
  if (a.apply === 'fold') setWeights(folded);
  const f1 = figures(checked.slice(0, count), []);
  round1.push(f1.efficacy);
  log(`after round ${r + 1}: round-1 efficacy ${(100 * f1.efficacy).toFixed(1)}%, paraphrase ${(100 * f1.paraphrase).toFixed(1)}%${memory ? `, memory of ${memory.edits} edits` : ''}`);
}
fs.rmSync(tmp, { recursive: true, force: true });
fs.rmSync(runDir, { recursive: true, force: true });
const r1end = figures(checked.slice(0, count), []);
const all = figures(checked, readback);
setWeights(baseWeights);

const pct = (x) => (x === undefined || Number.isNaN(x) ? '—' : (100 * x).toFixed(1));
const num = (x) => (x === undefined || Number.isNaN(x) ? '—' : x.toFixed(3));
const label = a.label ?? `${a.source === 'facts' ? 'facts cf' : 'edits'} ${skip + 1}–${skip + need}, ${rounds}×${count} in sequence (${a.apply})`;
const setTxt = a.set.length ? ` [${a.set.join(' ')}]` : '';
if (a.header) {
  console.log('| case | world | method | n | efficacy % (all, end) | paraphrase % | neighbourhood % | kl | retain_drop | round-1 efficacy % after each round | round-1 paraphrase % end | refused | s | s/edit |');
  console.log('|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|');
}
console.log(`| ${label}${setTxt} | ${path.basename(world)} | ${a.method} | ${facts.length} | ${pct(all.efficacy)} | ${pct(all.paraphrase)} | ${pct(all.neighbourhood)} | ${num(all.kl)} ± ${num(all.kl_se)} | ${num(all.retain_drop)} ± ${num(all.retain_drop_se)} | ${round1.map(pct).join(' → ')} | ${pct(r1end.paraphrase)} | ${refused.length} | ${editSeconds.toFixed(0)} | ${(editSeconds / facts.length).toFixed(1)} |`);
if (a.json) fs.appendFileSync(a.json, JSON.stringify({ label, world: path.basename(world), method: a.method, apply: a.apply, set: a.set, facts: facts.length, rounds, count, figures: all, round1_after_each: round1, round1_end: r1end, refused, seconds: editSeconds, ...(live ? { live_rank: live.r } : {}) }) + '\n');
