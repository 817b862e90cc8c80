#!/usr/bin/env node
// moe-route-distill benchmark (issue 21, Bench): one distillation step
// (phase B) at a Mixtral-shaped model with random weights — 4 layers, hidden
// 512, 8 experts, top 2, vocab 32000, batch 4 × 64 — ours vs the same step in
// PyTorch on the CPU with the same thread count (scripts/bench/moe_distill_torch.py:
// the sparse MoE block Hugging Face's Mixtral uses). LoRA r = 8 on every
// layer's router and on experts 0 and 1's output projections; loss =
// next-token cross-entropy + next-token KL to the teacher + router KL to the
// teacher (the tool's routerKl) at every position; backward; AdamW. The
// teacher is one no-grad forward of the base model on other ids, outside the
// timed step on both sides. Each side runs in its own process.
//
// Then edits per second on the MoE fixture model (fixtures/models/moe): ten
// counterfactual edits of the world (requests 1–10, one train edit probe each,
// as tools/moe-route-distill/scripts/measure.mjs feeds them) into one adapter,
// each tool's binary with its defaults, the bundle written: moe-route-distill
// beside lora-train (whose default there is LoRA on the same layer's experts,
// no router), with each bundle's trainable parameters.
//
// Env: BENCH_THREADS (default: all cores), BENCH_ITERS (timed steps after a
// warm-up, default 3), BENCH_ROUNDS (alternating ours/PyTorch process pairs,
// and moe-route-distill/lora-train pairs, default 1; with more, the median and
// the range of per-round ratios), TORCH_PYTHON (default /usr/bin/python3).
// Markdown table on stdout; progress on stderr.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import fs from 'node:fs';
import os from 'node:os';

const here = dirname(fileURLToPath(import.meta.url));
const CFG = {
  model_type: 'mixtral', hidden_size: 512, intermediate_size: 1792, num_hidden_layers: 4,
  num_attention_heads: 8, num_key_value_heads: 2, num_local_experts: 8, num_experts_per_tok: 2,
  vocab_size: 32000, rms_norm_eps: 1e-5, rope_theta: 1e6, max_position_embeddings: 128, tie_word_embeddings: false,
};
const ADAPTED_EXPERTS = [0, 1];
const B = 4;
const T = 64;

async function child(threads, iters) {
  const core = await import('@catechism/core');
  const kernels = await import('@catechism/kernels');
  const { routerKl } = await import(join(here, '../../tools/moe-route-distill/dist/distill.js'));
  kernels.setThreads(threads);
  const { parseConfig, CausalLM, createLora, AdamW, crossEntropy, klDiv, add, reshape, slice, noGrad, Rng } = core;
  const cfg = parseConfig(CFG);
  const model = CausalLM.random(cfg, 0, 0.02);
  const H = cfg.hidden;
  const targets = [];
  for (let l = 0; l < cfg.layers; l++) {
    const moe = model.arch.layer(l).moe;
    targets.push([moe.router, H, cfg.experts]);
    for (const e of ADAPTED_EXPERTS) targets.push([moe.expert(e).out, cfg.intermediate, H]);
  }
  const lora = createLora('bench', targets, { r: 8, alpha: 16, seed: 1, fanInFanOut: model.arch.fanInFanOut });
  const rng = new Rng(0);
  const ids = Int32Array.from({ length: B * T }, () => rng.int(cfg.vocabSize));
  const teacherIds = Int32Array.from({ length: B * T }, () => rng.int(cfg.vocabSize));
  const next = new Int32Array(B * (T - 1));
  for (let b = 0; b < B; b++) for (let t = 0; t < T - 1; t++) next[b * (T - 1) + t] = ids[b * T + t + 1];
  const teacher = noGrad(() => model.forward(teacherIds, [B, T]));
  const tLogits = teacher.logits;
  const layers = [...Array(cfg.layers).keys()];
  const tRouter = new Map(layers.map((l) => [l, teacher.routerLogits[l].data]));
  const rows = [...Array(B * T).keys()];
  model.setAdapters([{ adapter: lora }]);
  const opt = new AdamW(lora.parameters(), { lr: 1e-3, weightDecay: 0 });
  const V = cfg.vocabSize;
  const step = () => {
    const res = model.forward(ids, [B, T]);
    const ce = crossEntropy(reshape(slice(res.logits, 1, 0, T - 1), [B * (T - 1), V]), next);
    const kl = klDiv(reshape(tLogits, [B * T, V]), reshape(res.logits, [B * T, V]));
    const loss = add(add(ce, kl), routerKl(res.routerLogits, rows, tRouter, layers));
    loss.backward();
    opt.step();
    opt.zeroGrad();
    return loss.item();
  };
  step();
  const ts = [];
  for (let i = 0; i < iters; i++) {
    const t0 = process.hrtime.bigint();
    step();
    ts.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  ts.sort((a, b) => a - b);
  const peak_mb = process.resourceUsage().maxRSS / 1024;
  process.stdout.write(JSON.stringify({ step_ms: ts[Math.floor(ts.length / 2)], peak_mb, threads: kernels.info().threads }) + '\n');
}

function runJson(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 24 });
  if (r.status !== 0) {
    process.stderr.write(`moe-route-distill bench: ${cmd} ${args.join(' ')} failed (${r.status ?? r.signal})\n${r.stderr}\n`);
    return null;
  }
  try {
    return JSON.parse(r.stdout.trim().split('\n').pop());
  } catch {
    process.stderr.write(`moe-route-distill bench: unreadable output from ${cmd}\n`);
    return null;
  }
}

const median = (xs) => {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  return v.length === 0 ? undefined : v.length % 2 ? v[v.length >> 1] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
};
const fmt = (x, d = 1) => (x === undefined ? 'n/a' : x.toFixed(d));

async function main() {
  const args = process.argv.slice(2);
  if (args[0] === '--child') return child(Number(args[1]), Number(args[2]));
  const threads = Number(process.env.BENCH_THREADS ?? os.availableParallelism?.() ?? os.cpus().length);
  const iters = Number(process.env.BENCH_ITERS ?? 3);
  const rounds = Math.max(1, Number(process.env.BENCH_ROUNDS ?? 1));
  const py = process.env.TORCH_PYTHON ?? '/usr/bin/python3';
  const ours = [];
  const torch = [];
  let torchVersion = 'not installed';
  for (let r = 0; r < rounds; r++) {
    process.stderr.write(`moe-route-distill bench: round ${r + 1}/${rounds}: ours\n`);
    ours.push(runJson(process.execPath, [fileURLToPath(import.meta.url), '--child', String(threads), String(iters)]));
    process.stderr.write(`moe-route-distill bench: round ${r + 1}/${rounds}: PyTorch\n`);
    const t = runJson(py, [join(here, 'moe_distill_torch.py'), '--threads', String(threads), '--iters', String(iters)]);
    torch.push(t);
    if (t) torchVersion = t.torch;
  }
  const o = median(ours.map((x) => x?.step_ms));
  const p = median(torch.map((x) => x?.step_ms));
  const ratios = ours.map((x, i) => (x && torch[i] ? x.step_ms / torch[i].step_ms : NaN)).filter(Number.isFinite);
  const spread = ratios.length > 1 ? ` (${fmt(Math.min(...ratios), 2)}–${fmt(Math.max(...ratios), 2)})` : '';
  console.log(`One distillation step, Mixtral-shaped random model (4 layers, hidden 512, 8 experts top 2, vocab 32000), B ${B} × T ${T}, LoRA r 8 on routers + 2 experts per layer; ${threads} threads, ${iters} timed steps, ${rounds} round(s); PyTorch ${torchVersion}.\n`);
  console.log('| step | ours ms | PyTorch ms | ours / PyTorch | ours peak MB | PyTorch peak MB |');
  console.log('| --- | --- | --- | --- | --- | --- |');
  const peak = (xs) => fmt(median(xs.map((x) => x?.peak_mb)), 0);
  console.log(`| phase B (CE + KL + router KL, backward, AdamW) | ${fmt(o)} | ${fmt(p)} | ${o && p ? fmt(o / p, 2) + spread : 'n/a'} | ${peak(ours)} | ${peak(torch)} |`);
  await editsPerSecond(threads, rounds);
}

/** Ten edits into one adapter with each tool's binary on the MoE fixture: wall seconds, edits/s, trainable parameters. */
async function editsPerSecond(threads, rounds) {
  const root = join(here, '../..');
  const { loadLora } = await import('@catechism/core/models');
  const facts = fs.readFileSync(join(root, 'fixtures/world/edits.ndjson'), 'utf8').split('\n').filter(Boolean)
    .map((l) => JSON.parse(l)).filter((f) => f.op === 'insert').slice(0, 10);
  const input = facts.flatMap((f) => [JSON.stringify(f), JSON.stringify({
    kind: 'probe', id: `${f.id}/edit/0`, fact_id: f.id, role: 'edit', split: 'train', prompt: f.prompt.replace('{}', f.subject), target: f.target_new, expect: 'new',
  })]).join('\n') + '\n';
  const tools = ['moe-route-distill', 'lora-train'];
  const got = new Map(tools.map((t) => [t, { seconds: [], params: 0 }]));
  for (let r = 0; r < rounds; r++) {
    for (const tool of tools) {
      process.stderr.write(`moe-route-distill bench: round ${r + 1}/${rounds}: ${tool}, 10 edits on the MoE fixture\n`);
      const out = fs.mkdtempSync(join(os.tmpdir(), 'moe-bench-'));
      const t0 = process.hrtime.bigint();
      const run = spawnSync(process.execPath, [join(root, 'tools', tool, 'dist/main.js'), '--model', join(root, 'fixtures/models/moe'), '--seed', '0', '--out', out, '-q'], {
        input, encoding: 'utf8', maxBuffer: 1 << 28, env: { ...process.env, CATECHISM_THREADS: String(threads) },
      });
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      if (run.status !== 0) {
        process.stderr.write(`moe-route-distill bench: ${tool} failed (${run.status ?? run.signal})\n${run.stderr}\n`);
      } else {
        const rec = run.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l)).find((x) => x.kind === 'adapter');
        const g = got.get(tool);
        g.seconds.push(seconds);
        g.params = loadLora(rec.path).parameters().reduce((a, p) => a + p.size, 0);
      }
      fs.rmSync(out, { recursive: true, force: true });
    }
  }
  console.log(`\nTen edits (world requests 1–10) into one adapter on the MoE fixture model, each binary with its defaults, ${threads} threads, ${rounds} round(s); wall seconds include loading and writing the bundle.\n`);
  console.log('| tool | seconds | edits/s | trainable params | seconds / lora-train |');
  console.log('| --- | --- | --- | --- | --- |');
  const base = median(got.get('lora-train').seconds);
  for (const tool of tools) {
    const g = got.get(tool);
    const s = median(g.seconds);
    console.log(`| ${tool} | ${fmt(s)} | ${s ? fmt(10 / s, 2) : 'n/a'} | ${g.params} | ${s && base ? fmt(s / base, 2) : 'n/a'} |`);
  }
}

await main();
