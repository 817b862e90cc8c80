#!/usr/bin/env node
// Quality of hypernet-gen's adapters, read back the way scripts/eval-edits.mjs
// reads lora-train's and ROME's (same read-back: the world's
// eval/facts-heldout.ndjson, held-out phrasings only; same gates), so the
// rows sit in one table. Prints one markdown row per case:
//
//   case | world | method | n | efficacy | paraphrase | neighbourhood | kl | retain_drop | gates | ms per adapter
//
// --batch 1: one adapter per fact, each read back alone (kl, retain_drop:
// means over the adapters, as eval-edits does for ROME); --batch N: one
// adapter per N facts (least-squares over their keys), read back per adapter.
// ms: generating the adapter (model forward + H + solve), and with the
// bundle written (writeEditBundle into a temporary directory).
//
// Usage:
//   node scripts/hypernet/eval.mjs [--world fixtures/world] [--model fixtures/models/dense]
//     [--hypernet fixtures/hypernet/dense] [--skip 60] [--count 20] [--batch 1] [--solve lsq|sum] [--header] [--json FILE]
//     [--refine N [--refine-lr 0.1] [--max-norm 0.4] [--batch-max-norm 0.2]]
//   --refine N: N gradient steps on each δ after H, ‖δ‖ ≤ max-norm × H's (hypernet-gen --refine)
//   --solve sum: a batch adapter is the sum of the facts' rank-one edits (ROME's A each) instead of the least-squares solve
// Build first (npm run build).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '../..');
const core = (p) => import(path.join(root, 'tools/core/dist', p));
const { loadModel } = await core('models/index.js');
const { readNdjson, checkFact, loadTemplateBank, editReadback, modelSha256 } = await core('edit/index.js');
const { loadHyper, generate, applyHyper, checkCompatible, REFINE_DEFAULTS } = await import(path.join(root, 'tools/hypernet-gen/dist/lib.js'));

const { values: a } = parseArgs({
  options: {
    world: { type: 'string', default: 'fixtures/world' },
    model: { type: 'string' },
    hypernet: { type: 'string' },
    skip: { type: 'string', default: '60' },
    count: { type: 'string', default: '20' },
    batch: { type: 'string', default: '1' },
    solve: { type: 'string', default: 'lsq' },
    refine: { type: 'string', default: '0' },
    phrasings: { type: 'string' },
    'refine-lr': { type: 'string' },
    'max-norm': { type: 'string' },
    'batch-max-norm': { type: 'string' },
    'stats-facts': { type: 'string' },
    'gate-margin': { type: 'string' },
    header: { type: 'boolean', default: false },
    json: { type: 'string' },
    label: { type: 'string' },
  },
});
const world = path.resolve(root, a.world);
const modelDir = path.resolve(root, a.model ?? 'fixtures/models/dense');
const hdir = path.resolve(root, a.hypernet ?? `fixtures/hypernet/${path.basename(modelDir)}`);
const skip = Number(a.skip);
const count = Number(a.count);
const batch = Number(a.batch);
const refine = { steps: Number(a.refine), lr: Number(a['refine-lr'] ?? REFINE_DEFAULTS.lr), maxNorm: Number(a['max-norm'] ?? REFINE_DEFAULTS.maxNorm), batchMaxNorm: Number(a['batch-max-norm'] ?? a['max-norm'] ?? REFINE_DEFAULTS.batchMaxNorm) };
const { model, tokenizer } = loadModel(modelDir);
const sha = modelSha256(modelDir);
const h = loadHyper(hdir);
checkCompatible(h, model, sha, modelDir);
// last-token site: another place for the gates' thresholds than H's (0: the negatives' quantile, 1: the positives' 10th percentile)
if (a['gate-margin'] !== undefined) h.gate.settings = { ...h.gate.settings, margin: Number(a['gate-margin']) };
const templates = loadTemplateBank(path.join(world, 'templates.json'));
if (a['stats-facts'] !== undefined) {
  // another key covariance than the one H was trained with (an ablation of the key side alone)
  const { keyFactor } = await import(path.join(root, 'tools/hypernet-gen/dist/lib.js'));
  const { readCorpusLines } = await core('edit/index.js');
  const res = { model, tokenizer, modelSha: sha, templates, corpus: readCorpusLines(path.join(world, 'train.txt'), 50000), known: readNdjson(path.join(world, 'facts.ndjson')) };
  h.chol = keyFactor(res, h.config.layer, 1e-3, 20000, Number(a['stats-facts']), 0).chol;
}
const facts = readNdjson(path.join(world, 'edits.ndjson')).filter((f) => f.op === 'insert').slice(skip, skip + count).map(checkFact);
const readback = readNdjson(path.join(world, 'eval/facts-heldout.ndjson')).map((p) => ({
  prompt: p.prompt, target: p.target, ...(typeof p.subject === 'string' ? { subject: p.subject } : {}), ...(typeof p.relation === 'string' ? { relation: p.relation } : {}),
}));
// warm-up (first-call costs: native kernels, allocations), not counted
generate(h, model, tokenizer, facts.slice(0, 1), [], templates, a.phrasings !== undefined ? Number(a.phrasings) : h.config.training?.hyperparameters?.phrasings ?? 6, 'warm', 'lsq', refine);
const phr = a.phrasings !== undefined ? Number(a.phrasings) : h.config.training?.hyperparameters?.phrasings ?? 6;
const groups = [];
let genMs = 0;
for (let s = 0; s < facts.length; s += batch) {
  const g = generate(h, model, tokenizer, facts.slice(s, s + batch), [], templates, phr, `eval-${s}`, a.solve, refine);
  genMs += g.ms;
  groups.push({ adapters: [g.adapter], facts: g.facts });
}
// the same through the CLI's writer (bundle files written), for the per-adapter time with I/O
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'hypernet-eval-'));
const t0 = performance.now();
const recs = facts.map((f) => ({ ...f, kind: 'fact' }));
const { adapters } = await applyHyper(h, { model, tokenizer, modelName: a.model ?? 'fixtures/models/dense', modelSha: sha, templates }, facts, recs, { batch, phrasings: phr, refine, seed: 0, out: tmp }, () => {});
const withIo = (performance.now() - t0) / adapters.length;
fs.rmSync(tmp, { recursive: true, force: true });
const f = editReadback(model, tokenizer, groups, { templates, readback });
const pct = (x) => (x === undefined || Number.isNaN(x) ? '—' : (100 * x).toFixed(1));
const num = (x) => (x === undefined || Number.isNaN(x) ? '—' : x.toFixed(3));
const fails = [];
if (!(f.kl <= 0.05)) fails.push('kl');
if (!(f.retain_drop <= 0.05)) fails.push('retain_drop');
if (!(f.efficacy >= 0.95)) fails.push('efficacy');
if (!(f.paraphrase >= 0.8)) fails.push('paraphrase');
const label = a.label ?? `edits ${skip + 1}–${skip + count}${batch > 1 ? ` (batches of ${batch}${h.config.site === 'last' ? ', one neuron each' : a.solve === 'sum' ? ', deltas summed' : ', least squares'})` : ''}${a.phrasings !== undefined ? `, ${phr} phrasings` : ''}${a["gate-margin"] !== undefined ? `, gate margin ${a["gate-margin"]}` : ""}${refine.steps > 0 ? `, refine ${refine.steps} (lr ${refine.lr}, max norm ${batch > 1 ? refine.batchMaxNorm : refine.maxNorm})` : ''}`;
if (a.header) {
  console.log('| case | world | method | n | efficacy % | paraphrase % | neighbourhood % | kl | retain_drop | validate gates | ms/adapter (generate; with bundle written) |');
  console.log('|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|');
}
console.log(`| ${label} | ${path.basename(world)} | hypernet | ${facts.length} | ${pct(f.efficacy)} | ${pct(f.paraphrase)} | ${pct(f.neighbourhood)} | ${num(f.kl)} ± ${num(f.kl_se)} (max ${num(f.kl_max)}) | ${num(f.retain_drop)} ± ${num(f.retain_drop_se)} | ${fails.length ? `fail (${fails.join(', ')})` : 'pass'} | ${(genMs / groups.length).toFixed(1)}; ${withIo.toFixed(1)} |`);
if (a.json) fs.appendFileSync(a.json, JSON.stringify({ label, world: path.basename(world), hypernet: h.config.id, batch, refine, figures: f, ms: genMs / groups.length, ms_io: withIo }) + '\n');
