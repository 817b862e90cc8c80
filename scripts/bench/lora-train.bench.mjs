#!/usr/bin/env node
// lora-train benchmark and quality run (issue 8): on the fixture model
// (fixtures/models/dense, or BENCH_EDIT_MODEL), the world's edit requests
// through lora-train's own path (trainEdits), measuring edits per second,
// bytes per adapter and top-1 quality:
//   lora distill   10 counterfactual inserts in one adapter
//   lora sft       the same 10 with cross-entropy only
//   lora forget    10 forget requests in one adapter
//   rome           20 inserts, one rank-one adapter each (key statistics
//                  computed once, then cached: the first edit's time
//                  includes them, the table reports both), and the same 20
//                  with ROME's closed-form key (--rome-key-steps 0)
// Quality: efficacy (edit prompt), paraphrase (held-out templates, never
// trained on), neighbourhood (other subjects of the same relations keep the
// base model's top-1), forgotten (old answer no longer top-1).
// The ratio column compares with the gate (figure / gate).
//
// Speed vs PyTorch (rome-small): one ROME edit on a GPT-2-small-shaped model
// with random weights (12 layers, 768 wide, vocab 50257; layer 3; 6 rewriting
// prompts; exactly BENCH_ROME_STEPS δ steps on both sides, no early stop),
// key statistics computed beforehand (cached) on both sides; ours vs
// scripts/bench/rome_torch.py (Debian's python3-torch, same thread count).
// Our first edit also factorises C (3072²; reused by later edits at the
// layer); the ratio uses the median of the later edits vs PyTorch's median
// (which solves each time, as ROME does).
//
// Check (check): the training loop on 1,000 counterfactuals of the world's
// known facts (sft, the last two layers' MLPs at rank 32, BENCH_CHECK_STEPS steps,
// default 100), its early-stop check reading a 256-row sample in turn (the
// default, checkSample) against reading every row (checkSample Infinity,
// what it did before): the same steps and weights, seconds side by side.
//
// Env: BENCH_EDIT_MODEL (model dir), BENCH_EDIT_ONLY (comma list of rows:
// distill,sft,forget,rome,memit,rome-small,check), BENCH_EDIT_ROME_FACTS (default 20),
// BENCH_MEMIT_EDITS (default 1,10,100),
// BENCH_ROME_STEPS (default 20), BENCH_THREADS (default: all cores),
// TORCH_PYTHON (default /usr/bin/python3).
// Markdown table on stdout; progress on stderr.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const { loadResources, measureWorldEdits } = await import('@catechism/lora-train');
const { defaultModelDir } = await import('@catechism/core/fixtures');

const modelDir = process.env.BENCH_EDIT_MODEL ?? defaultModelDir();
if (!fs.existsSync(path.join(modelDir, 'config.json'))) {
  console.error(`lora-train bench: no model at ${modelDir} (train the fixture model or set BENCH_EDIT_MODEL)`);
  process.exit(1);
}
const only = (process.env.BENCH_EDIT_ONLY ?? 'distill,sft,forget,rome,memit,rome-small,check').split(',');
const memitEdits = (process.env.BENCH_MEMIT_EDITS ?? '1,10,100').split(',').map(Number);
const romeFacts = Number(process.env.BENCH_EDIT_ROME_FACTS ?? 20);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-lora-train-'));
const cache = path.join(tmp, 'cache');
process.env.CATECHISM_CACHE = cache;
const res = loadResources({ model: modelDir });
const log = (m) => process.stderr.write(`  ${m}\n`);

const rows = [];
const pct = (x) => (Number.isNaN(x) ? '—' : `${(100 * x).toFixed(0)}%`);
const gate = (x, g) => (Number.isNaN(x) ? '—' : (x / g).toFixed(2));
async function row(name, opts, gates) {
  process.stderr.write(`lora-train bench: ${name}\n`);
  const m = await measureWorldEdits(res, { ...opts, out: path.join(tmp, name.replace(/\W+/g, '-')), log });
  const f = m.figures;
  const q = opts.op === 'forget'
    ? [`forgotten ${pct(f.forgotten)} (n=${f.n.forgotten})`, `others kept ${pct(f.neighbourhood)} (n=${f.n.neighbourhood})`]
    : [`eff ${pct(f.efficacy)} / para ${pct(f.paraphrase)} (n=${f.n.paraphrase})`, `neigh ${pct(f.neighbourhood)} (n=${f.n.neighbourhood})`];
  const ratios = opts.op === 'forget'
    ? `${gate(f.forgotten, 0.9)} / ${gate(f.neighbourhood, 0.9)}`
    : `${gate(f.efficacy, 0.95)} / ${gate(f.paraphrase, 0.8)} / ${gate(f.neighbourhood, 0.9)}`;
  rows.push(`| ${name} | ${opts.count} | ${m.adapters} | ${m.seconds.toFixed(1)} | ${m.editsPerSecond.toFixed(3)} | ${(m.bytesPerAdapter / 1024).toFixed(1)} | ${q[0]} | ${q[1]} | ${ratios} |`);
  return m;
}

if (only.includes('distill')) await row('lora distill (10 in 1)', { method: 'lora', objective: 'distill', op: 'insert', count: 10 });
if (only.includes('sft')) await row('lora sft (10 in 1)', { method: 'lora', objective: 'sft', op: 'insert', count: 10 });
if (only.includes('forget')) {
  await row('lora forget (10 in 1)', { method: 'lora', objective: 'sft', op: 'forget', count: 10 });
  // without the made-up-surname copies of each person's forget rows (the default makes one): what they cost
  await row('lora forget, no name copies (10 in 1)', { method: 'lora', objective: 'sft', op: 'forget', count: 10, options: { 'forget-name-parts': 0 } });
}
if (only.includes('rome')) {
  // first edit pays for the key statistics; the rest read them from the cache
  const first = await row('rome (1st, computes stats)', { method: 'rome', op: 'insert', count: 1, skip: 20 });
  void first;
  await row(`rome (${romeFacts} edits, stats cached)`, { method: 'rome', op: 'insert', count: romeFacts, skip: 20 });
  // the paper's closed-form key direction (no refit), the same edits: what the key refit costs
  await row(`rome closed-form key (${romeFacts} edits)`, { method: 'rome', op: 'insert', count: romeFacts, skip: 20, options: { 'rome-key-steps': 0 } });
  // one layer, the first where the edit takes (the default compares two and keeps the smaller ‖δ‖): what the comparison costs
  await row(`rome first layer only (${romeFacts} edits)`, { method: 'rome', op: 'insert', count: romeFacts, skip: 20, options: { 'rome-insert-compare': 1 } });
}
if (only.includes('memit')) {
  // one stats-computing warm-up edit unless ROME's rows already cached the statistics (MEMIT reads the same cache)
  if (!only.includes('rome')) await row('memit (1st, computes stats)', { method: 'memit', op: 'insert', count: 1, skip: 20 });
  for (const n of memitEdits) await row(`memit (${n} in 1, stats cached)`, { method: 'memit', op: 'insert', count: n });
}

const speed = [];
if (only.includes('rome-small')) {
  const { spawnSync } = await import('node:child_process');
  const core = await import('@catechism/core');
  const kernels = await import('@catechism/kernels');
  const edit = await import('@catechism/core/edit');
  const threads = Number(process.env.BENCH_THREADS ?? os.availableParallelism());
  kernels.setThreads(threads);
  const steps = Number(process.env.BENCH_ROME_STEPS ?? 20);
  const cfg = core.parseConfig({ model_type: 'gpt2', n_layer: 12, n_embd: 768, n_head: 12, vocab_size: 50257, n_positions: 1024, layer_norm_epsilon: 1e-5 });
  process.stderr.write('lora-train bench: rome-small (GPT-2-small shape, random weights)\n');
  const model = core.CausalLM.random(cfg, 0, 0.02);
  // a word-level stand-in tokenizer: one id per word (random weights, so only the shapes matter)
  const idOf = (w) => {
    let h = 2166136261;
    for (const c of w) h = Math.imul(h ^ c.charCodeAt(0), 16777619) >>> 0;
    return h % cfg.vocabSize;
  };
  const tok = { encode: (text) => text.split(' ').filter(Boolean).map(idOf) };
  const layer = edit.romeDefaultLayer(cfg.layers);
  const rng = new core.Rng(1);
  const words = Array.from({ length: 500 }, (_, i) => `w${i}`);
  const docs = Array.from({ length: 32 }, () => Array.from({ length: 64 }, () => rng.pick(words)).join(' '));
  const statsTokens = 2048;
  const stats = edit.computeKeyStats(model, tok, docs, layer, statsTokens);
  const prefixes = Array.from({ length: 5 }, () => Array.from({ length: 5 }, () => rng.pick(words)).join(' ') + '.');
  const facts = [0, 1, 2].map((i) => edit.checkFact({ kind: 'fact', id: `s${i}`, subject: `Subject${i} Name${i}`, prompt: '{} works for the company', target_new: `Target${i}`, op: 'insert' }));
  const opts = { ...edit.ROME_DEFAULTS, vSteps: steps, nllStop: -1, layer, prefixes };
  const ours = facts.map((f) => {
    const t0 = process.hrtime.bigint();
    edit.romeEdit(model, tok, f, stats, { ...opts, name: f.id });
    return Number(process.hrtime.bigint() - t0) / 1e9;
  });
  // the same rows for PyTorch
  const tedits = facts.map((f) => {
    const rows = [''].concat(prefixes).map((pre) => {
      const prompt = (pre ? `${pre} ` : '') + f.prompt.replace('{}', f.subject);
      const p = edit.encodeTrainingPair(tok, prompt, f.target_new);
      return { p, subj: edit.subjectSpan(tok, p.promptIds, f.subject)[1] - 1 };
    });
    const essence = tok.encode(`${f.subject} is a`);
    return { rows: rows.map((r) => r.p.promptIds), targets: rows.map((r) => r.p.targetIds), subj: rows.map((r) => r.subj), plain: rows.map((_, i) => i === 0), essence };
  });
  const py = process.env.TORCH_PYTHON ?? '/usr/bin/python3';
  const input = JSON.stringify({ layer, threads, edits: tedits, v_steps: steps, v_lr: opts.vLr, kl: opts.klWeight, wd: opts.weightDecay, clamp: opts.clamp, ridge: opts.ridge, plain_weight: opts.plainWeight, stats_tokens: statsTokens });
  const r = spawnSync(py, [path.join(path.dirname(new URL(import.meta.url).pathname), 'rome_torch.py')], { input, encoding: 'utf8', env: { ...process.env, OMP_NUM_THREADS: String(threads) } });
  const med = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const oursMed = med(ours.slice(1));
  if (r.status !== 0) {
    process.stderr.write(`rome_torch.py failed (${r.status}): ${r.stderr.slice(-500)}\n`);
    speed.push(`| ROME edit, GPT-2-small shape, ${steps} δ steps, ${threads} threads | ${oursMed.toFixed(2)} (1st: ${ours[0].toFixed(2)}) | — | — |`);
  } else {
    const t = JSON.parse(r.stdout);
    const tm = med(t.seconds);
    speed.push(`| ROME edit, GPT-2-small shape, ${steps} δ steps, ${threads} threads | ${oursMed.toFixed(2)} (1st, with C factorisation: ${ours[0].toFixed(2)}) | ${tm.toFixed(2)} (torch ${t.torch}) | ${(oursMed / tm).toFixed(2)} |`);
  }
}

const check = [];
if (only.includes('check')) {
  const { counterfactualFacts } = await import('@catechism/lora-train');
  const edit = await import('@catechism/core/edit');
  const steps = Number(process.env.BENCH_CHECK_STEPS ?? 100);
  process.stderr.write(`lora-train bench: check (1,000 facts, ${steps} steps, sampled vs full)\n`);
  const facts = counterfactualFacts(res.known, { count: 1000 }).map((f) => edit.checkFact(f));
  const exs = edit.buildExamples(res.tokenizer, { facts, probes: [] }, { templates: res.templates });
  const retain = edit.buildRetain(res.tokenizer, { documents: res.corpus }, { maxDocuments: 32 });
  const { mlpModules } = await import('@catechism/core/models');
  const L = res.model.config.layers;
  // the last two layers' MLPs, both projections (the 1,000-edit recipe in the lora-train README)
  const targets = [L - 2, L - 1].flatMap((l) => mlpModules(res.model.arch, res.model.config, l).flatMap((m) => [...m.in, m.out]));
  const run = (checkSample) => {
    const t0 = process.hrtime.bigint();
    const r = edit.trainLora(res.model, exs, retain, { ...edit.LORA_DEFAULTS, objective: 'sft', rank: 32, alpha: 16, steps, targets, name: 'check', checkSample });
    return { s: Number(process.hrtime.bigint() - t0) / 1e9, w: r.adapter.parameters().map((p) => Array.from(p.data)).flat() };
  };
  const sampled = run(256);
  const full = run(Infinity);
  const same = sampled.w.length === full.w.length && sampled.w.every((v, i) => v === full.w[i]);
  check.push(`| LoRA, 1,000 facts (${exs.length} check rows), ${steps} sft steps, last two layers' MLPs, rank 32 | ${sampled.s.toFixed(1)} | ${full.s.toFixed(1)} | ${(sampled.s / full.s).toFixed(2)} | ${same ? 'yes' : 'NO'} |`);
}

console.log(`### lora-train on ${path.relative(process.cwd(), modelDir) || modelDir} (${res.model.config.layers} layers, hidden ${res.model.config.hidden})\n`);
console.log('| run | facts | adapters | seconds | edits/s | KiB/adapter | quality | specificity | figure / gate (eff 95%, para 80%, neigh 90%; forget 90%, kept 90%) |');
console.log('| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |');
for (const r of rows) console.log(r);
if (speed.length) {
  console.log('\n### ROME speed vs PyTorch (statistics cached on both sides)\n');
  console.log('| case | ours s/edit | PyTorch s/edit | ours / PyTorch |');
  console.log('| --- | ---: | ---: | ---: |');
  for (const r of speed) console.log(r);
}
if (check.length) {
  console.log('\n### The early-stop check on a large batch (sampled vs every row)\n');
  console.log('| case | sampled check s | full check s | sampled / full | same weights |');
  console.log('| --- | ---: | ---: | ---: | --- |');
  for (const r of check) console.log(r);
}
fs.rmSync(tmp, { recursive: true, force: true });
