#!/usr/bin/env node
// ONNX benchmark (issue 23). Three tables:
//  1. eval forward (batch 4 × 64 tokens, full logits) of our engine vs
//     onnxruntime-node (CPU execution provider) on the ONNX export of the
//     same model, GPT-2 architecture with random weights at GPT-2-small shape
//     (12 layers, 768 wide, vocab 50257) and tiny shape (4 layers, 128 wide,
//     vocab 2000), the same thread count for both (our pool and onnxruntime's
//     intra-op threads); ratio = onnxruntime ms / ours ms (< 1: onnxruntime faster);
//  2. validate's probes per second with --runtime engine and --runtime onnx
//     (the fixture dense model, one synthetic adapter, small fixed sets);
//  3. parity: 50 prompts per model (fixture dense and MoE, the golden model of
//     every family), base and with an adapter: max |Δ logits| over real
//     tokens, and whether greedy generations (8 tokens) are identical.
// Env: BENCH_THREADS (default: all cores), BENCH_SHAPES (default tiny,small),
// BENCH_ITERS (timed repetitions after one warm-up; default tiny 10, small 3),
// BENCH_PARTS (default forward,validate,parity).
// Prints Markdown tables on stdout; progress on stderr.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import os from 'node:os';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../..');
const SHAPES = {
  tiny: { n_layer: 4, n_embd: 128, n_head: 4, vocab_size: 2000, n_positions: 128 },
  small: { n_layer: 12, n_embd: 768, n_head: 12, vocab_size: 50257, n_positions: 1024 },
};
const B = 4;
const T = 64;
const threads = Number(process.env.BENCH_THREADS ?? os.cpus().length);
const parts = (process.env.BENCH_PARTS ?? 'forward,validate,parity').split(',');
const log = (s) => process.stderr.write(`onnx bench: ${s}\n`);

const core = await import('@catechism/core');
const kernels = await import('@catechism/kernels');
const onnx = await import('@catechism/core/onnx');
const ort = (await import('onnxruntime-node')).default;
kernels.setThreads(threads);
const tmp = mkdtempSync(join(os.tmpdir(), 'onnx-bench-'));
const out = [];

async function forwardRow(shape) {
  const iters = Number(process.env.BENCH_ITERS ?? (shape === 'small' ? 3 : 10));
  const cfg = core.parseConfig({ model_type: 'gpt2', layer_norm_epsilon: 1e-5, ...SHAPES[shape] });
  const model = core.CausalLM.random(cfg, 0, 0.02);
  const rng = new core.Rng(0);
  const ids = Int32Array.from({ length: B * T }, () => rng.int(cfg.vocabSize));
  const t0 = performance.now();
  const { bytes } = onnx.onnxModel(model, [], 'bench');
  const file = join(tmp, `${shape}.onnx`);
  writeFileSync(file, bytes);
  const export_s = (performance.now() - t0) / 1000;
  const session = await ort.InferenceSession.create(file, { executionProviders: ['cpu'], intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all' });
  const feeds = {
    input_ids: new ort.Tensor('int64', BigInt64Array.from(ids, (v) => BigInt(v)), [B, T]),
    attention_mask: new ort.Tensor('int64', new BigInt64Array(B * T).fill(1n), [B, T]),
  };
  const median = async (fn) => {
    await fn();
    const ts = [];
    for (let i = 0; i < iters; i++) {
      const s = performance.now();
      await fn();
      ts.push(performance.now() - s);
    }
    ts.sort((a, b) => a - b);
    return ts[Math.floor(ts.length / 2)];
  };
  let check = 0;
  const ours = await median(async () => {
    check = core.noGrad(() => model.forward(ids, [B, T]).logits.data[0]);
  });
  let theirs = 0;
  const ortMs = await median(async () => {
    const r = await session.run(feeds);
    theirs = r.logits.data[0];
  });
  await session.release();
  log(`${shape}: ours ${ours.toFixed(1)} ms, onnxruntime ${ortMs.toFixed(1)} ms (logit[0] ${check} vs ${theirs})`);
  return `| ${shape} | ${cfg.layers}×${cfg.hidden}, V ${cfg.vocabSize} | ${threads} | ${ours.toFixed(1)} | ${ortMs.toFixed(1)} | ${(ortMs / ours).toFixed(2)} | ${(bytes.length / 2 ** 20).toFixed(1)} MiB, ${export_s.toFixed(1)} s |`;
}

if (parts.includes('forward')) {
  const rows = [];
  for (const s of (process.env.BENCH_SHAPES ?? 'tiny,small').split(',')) rows.push(await forwardRow(s));
  out.push('Eval forward, batch 4 × 64, full logits (median ms; ratio = onnxruntime / ours):\n');
  out.push('| shape | model | threads | ours ms | onnxruntime ms | ratio | model.onnx, export time |', '|---|---|---|---|---|---|---|', ...rows, '');
}

if (parts.includes('validate')) {
  const DENSE = core.defaultModelDir();
  const bundle = join(tmp, 'bundle');
  const { sha256, manifest } = await core.writeSyntheticBundle(bundle, {
    seed: 3, id: 'bench', rank: 4, pass: null,
    targets: { 'transformer.h.2.mlp.c_proj': [128, 512] },
    manifest: { base_model: { name: DENSE, sha256: core.modelSha256(DENSE) } },
  });
  const input = join(tmp, 'adapter.ndjson');
  writeFileSync(input, JSON.stringify(core.adapterRecord(manifest, { path: bundle, sha256 })) + '\n');
  const VALIDATE = join(root, 'tools/validate/dist/main.js');
  const rows = [];
  for (const runtime of ['engine', 'onnx']) {
    const env = { ...process.env, CATECHISM_THREADS: String(threads) };
    const r = spawnSync(process.execPath, [VALIDATE, input, '--no-record', '--allow-unknown', '--retain-n', '200', '--general-n', '50', '--runtime', runtime, '--onnx-dir', join(tmp, 'exports')], { encoding: 'utf8', env, maxBuffer: 64 << 20 });
    if (r.status !== 0) throw new Error(`validate --runtime ${runtime}: exit ${r.status}: ${r.stderr}`);
    const rep = r.stdout.trim().split('\n').map((l) => JSON.parse(l)).find((x) => x.kind === 'report');
    log(`validate --runtime ${runtime}: ${rep.metrics.probes_per_second.toFixed(1)} probes/s`);
    rows.push(`| ${runtime} | ${rep.metrics.n_retain + rep.metrics.n_general} | ${rep.metrics.eval_seconds.toFixed(2)} | ${rep.metrics.probes_per_second.toFixed(1)} |`);
  }
  out.push(`validate on the fixture dense model, one synthetic adapter (--retain-n 200 --general-n 50; the onnx run includes exporting both model states), ${threads} threads:\n`);
  out.push('| runtime | retain + general probes | eval s | probes/s |', '|---|---|---|---|', ...rows, '');
}

if (parts.includes('parity')) {
  const models = [['dense', 'fixtures/models/dense'], ['moe', 'fixtures/models/moe'], ...['gpt2', 'llama', 'llama3', 'qwen2', 'mixtral'].map((f) => [f, `fixtures/golden/${f}`])];
  const rows = [];
  for (const [name, rel] of models) {
    const dir = join(root, rel);
    const { model } = core.loadModel(dir, { tokenizer: false });
    const c = model.config;
    const adapter = existsSync(join(dir, 'adapter')) ? core.loadLora(join(dir, 'adapter'))
      : model.createLora('every', model.linearModules().map(([n]) => n), { r: 2, seed: 11, initBStd: 0.05 });
    const lm = new onnx.OnnxLM(model, { modelDir: dir, baseSha256: name, dir: join(tmp, `parity-${name}`), threads });
    const rng = new core.Rng(50);
    const maxLen = Math.min(24, (c.maxPositions || 32) - 8);
    const prompts = Array.from({ length: 50 }, () => Array.from({ length: 2 + rng.int(maxLen - 1) }, () => rng.int(c.vocabSize)));
    for (const active of [[], [{ adapter }]]) {
      model.setAdapters(active);
      lm.setAdapters(active);
      const L = Math.max(...prompts.map((p) => p.length));
      const ids = new Int32Array(prompts.length * L);
      const mask = new Uint8Array(prompts.length * L);
      prompts.forEach((p, b) => {
        ids.set(p, b * L);
        mask.fill(1, b * L, b * L + p.length);
      });
      const a = core.noGrad(() => model.forward(ids, [prompts.length, L], { attentionMask: mask })).logits.data;
      const b = lm.forward(ids, [prompts.length, L], { attentionMask: mask }).logits.data;
      let d = 0;
      for (let i = 0; i < a.length; i++) if (mask[Math.floor(i / c.vocabSize)]) d = Math.max(d, Math.abs(a[i] - b[i]));
      const gen = { maxNewTokens: 8, greedy: true, eosTokenId: null };
      const g0 = core.noGrad(() => model.generate(prompts, gen));
      const g1 = lm.generate(prompts, gen);
      const same = g0.filter((g, i) => JSON.stringify(g) === JSON.stringify(g1[i])).length;
      rows.push(`| ${name} | ${active.length ? adapter.name : 'base'} | ${d.toExponential(2)} | ${same}/50 |`);
      log(`parity ${name} ${active.length ? 'adapted' : 'base'}: ${d.toExponential(2)}, greedy ${same}/50`);
    }
    lm.close();
  }
  out.push('Parity, 50 prompts (2–24 tokens) per model, fp32 (max |Δ logits| over real tokens; greedy: 8 new tokens, identical rows):\n');
  out.push('| model | adapter | max abs Δ logits | greedy identical |', '|---|---|---|---|', ...rows, '');
}
rmSync(tmp, { recursive: true, force: true });
console.log(out.join('\n'));
process.exit(0);
