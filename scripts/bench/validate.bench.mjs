#!/usr/bin/env node
// validate benchmark (issue 9, Speed): probes scored per second, batched —
// each probe a prompt of 6–14 tokens and a one-token target: one forward over
// the prompt, log-softmax and the target's log-prob at its last position
// (what validate does for every edit/paraphrase/neighbour/retain probe).
// Ours: the metrics library's scoreSequences (batch 32, length-sorted,
// logits only at the rows read); reference: a plain PyTorch forward over the
// same batches (scripts/bench/validate_torch.py, the golden reference model),
// same thread count. Shapes: the fixture model's (fixtures/models/dense when
// present, else a tiny GPT-2: 4 layers, 128 wide, vocab 2000) and GPT-2 small
// (12 layers, 768 wide, vocab 50257), random weights (timing does not depend
// on the values). Each (shape, implementation) runs in its own process.
//
// Env: BENCH_THREADS (default: all cores), BENCH_SHAPES (default fixture,small),
// BENCH_ITERS (timed repetitions after one warm-up; default 3),
// TORCH_PYTHON (default /usr/bin/python3).
// Prints a Markdown table on stdout; progress on stderr.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import os from 'node:os';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const BATCH = 32;

function shapeConfig(shape) {
  if (shape === 'small') return { name: 'GPT-2 small (random)', cfg: { n_layer: 12, n_embd: 768, n_head: 12, vocab_size: 50257, n_positions: 1024 }, probes: 128 };
  const dense = join(root, 'fixtures', 'models', 'dense', 'config.json');
  if (existsSync(dense)) {
    const c = JSON.parse(readFileSync(dense, 'utf8'));
    return { name: 'fixture dense', cfg: { n_layer: c.n_layer, n_embd: c.n_embd, n_head: c.n_head, vocab_size: c.vocab_size, n_positions: c.n_positions }, probes: 512 };
  }
  return { name: 'tiny GPT-2 (fixture model absent)', cfg: { n_layer: 4, n_embd: 128, n_head: 4, vocab_size: 2000, n_positions: 128 }, probes: 512 };
}

/** The probes and the batches validate forms from them (sorted by length, as scoreSequences does). */
async function makeProbes(cfg, n) {
  const { Rng } = await import('@catechism/core');
  const rng = new Rng(42);
  const reqs = [];
  for (let i = 0; i < n; i++) {
    const len = 6 + rng.int(9);
    reqs.push({ prompt: Array.from({ length: len }, () => rng.int(cfg.vocab_size)), cont: [rng.int(cfg.vocab_size)] });
  }
  return reqs;
}

async function child(shape, threads, iters) {
  const core = await import('@catechism/core');
  const kernels = await import('@catechism/kernels');
  const { scoreSequences } = await import(join(root, 'tools', 'core', 'dist', 'metrics', 'index.js'));
  kernels.setThreads(threads);
  const { cfg, probes } = shapeConfig(shape);
  const model = core.CausalLM.random(core.parseConfig({ model_type: 'gpt2', layer_norm_epsilon: 1e-5, ...cfg }), 0, 0.02);
  const reqs = await makeProbes(cfg, probes);
  const run = () => scoreSequences(model, reqs, { batchSize: BATCH });
  run();
  const ts = [];
  for (let i = 0; i < iters; i++) {
    const t0 = process.hrtime.bigint();
    run();
    ts.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  ts.sort((a, b) => a - b);
  process.stdout.write(JSON.stringify({ ms: ts[Math.floor(ts.length / 2)], peak_mb: process.resourceUsage().maxRSS / 1024, threads: kernels.info().threads }) + '\n');
}

function runJson(cmd, args, env = {}, unset = []) {
  const e = { ...process.env, ...env };
  for (const k of unset) delete e[k];
  const r = spawnSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: e, maxBuffer: 1 << 24 });
  if (r.status !== 0) {
    process.stderr.write(`validate bench: ${cmd} ${args.join(' ')} failed (${r.status ?? r.signal})\n${r.stderr}\n`);
    return null;
  }
  try {
    return JSON.parse(r.stdout.trim().split('\n').pop());
  } catch {
    process.stderr.write(`validate bench: unreadable output from ${cmd}: ${r.stdout}\n`);
    return null;
  }
}

const fmt = (x, d = 1) => (x === undefined || x === null || !Number.isFinite(x) ? 'n/a' : x.toFixed(d));

async function main() {
  const args = process.argv.slice(2);
  if (args[0] === '--child') return child(args[1], Number(args[2]), Number(args[3]));
  const threads = Number(process.env.BENCH_THREADS ?? os.availableParallelism?.() ?? os.cpus().length);
  const shapes = (process.env.BENCH_SHAPES ?? 'fixture,small').split(',').filter((s) => s === 'fixture' || s === 'small');
  const iters = Number(process.env.BENCH_ITERS ?? 3);
  const py = process.env.TORCH_PYTHON ?? '/usr/bin/python3';
  const tmp = mkdtempSync(join(os.tmpdir(), 'validate-bench-'));
  const rows = [];
  try {
    for (const shape of shapes) {
      const { name, cfg, probes } = shapeConfig(shape);
      process.stderr.write(`validate bench: ${name}, ours\n`);
      const ours = runJson(process.execPath, [fileURLToPath(import.meta.url), '--child', shape, String(threads), String(iters)]);
      // the same batches for the reference: sorted by length, BATCH at a time
      const reqs = await makeProbes(cfg, probes);
      const order = reqs.map((_, i) => i).sort((a, b) => reqs[a].prompt.length - reqs[b].prompt.length);
      const batches = [];
      const targets = [];
      for (let s = 0; s < order.length; s += BATCH) {
        const idx = order.slice(s, s + BATCH);
        batches.push(idx.map((i) => reqs[i].prompt));
        targets.push(idx.map((i) => reqs[i].cont[0]));
      }
      const spec = join(tmp, `${shape}.json`);
      writeFileSync(spec, JSON.stringify({ config: { ...cfg, layer_norm_epsilon: 1e-5 }, batches, targets }));
      process.stderr.write(`validate bench: ${name}, PyTorch\n`);
      const ref = runJson(py, [join(here, 'validate_torch.py'), '--spec', spec, '--threads', String(threads), '--iters', String(iters)], { OMP_NUM_THREADS: String(threads) }, ['OPENBLAS_CORETYPE', 'OPENBLAS_L2_SIZE']);
      const ps = (r) => (r ? (probes / r.ms) * 1000 : null);
      const a = ps(ours);
      const b = ps(ref);
      rows.push(`| ${name} | ${probes} | ${fmt(ours?.ms)} | ${fmt(ref?.ms)} | ${fmt(a, 0)} | ${fmt(b, 0)} | ${a && b ? (a / b).toFixed(2) : 'n/a'} | ${fmt(ours?.peak_mb, 0)} |`);
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  process.stdout.write([
    `### validate: probes scored per second (prompt 6–14 tokens + 1-token target, batch ${BATCH}, ${threads} threads)`,
    '',
    'Median over timed runs (one warm-up excluded). ratio = ours / PyTorch in probes per second (higher is better, goal ≥ 1.0).',
    '',
    '| model | probes | ours ms | PyTorch ms | ours probes/s | PyTorch probes/s | ratio | ours peak MB |',
    '|---|---:|---:|---:|---:|---:|---:|---:|',
    ...rows,
    '',
  ].join('\n') + '\n');
}

await main();
