#!/usr/bin/env node
// Models benchmark (issue 4, Speed): GPT-2 architecture with random weights in
// two shapes — GPT-2 small (12 layers, 768 wide, 12 heads, vocab 50257) and
// tiny (4 layers, 128 wide, 4 heads, vocab 2000) — batch 4 × 64 tokens, LoRA
// r = 8 on every layer's attn.c_attn and mlp.c_proj. Times one LoRA training
// step (forward, next-token cross-entropy, backward, AdamW) and one evaluation
// forward, ours vs PyTorch on the CPU with the same thread count
// (scripts/bench/models_torch.py), and each one's peak RSS. Each (shape,
// implementation) runs in its own process so peak memory is its own.
//
// Env: BENCH_THREADS (default: all cores), BENCH_SHAPES (default tiny,small),
// BENCH_ITERS (timed repetitions after one warm-up; default tiny 10, small 3),
// BENCH_ROUNDS (alternating ours/PyTorch process pairs per shape, default 1;
// with more, times are the median over rounds and the ratio cell also shows
// the range of the per-round ratios — the spread on a shared machine),
// TORCH_PYTHON (default /usr/bin/python3).
// Prints a Markdown table on stdout; progress on stderr.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import os from 'node:os';

const here = dirname(fileURLToPath(import.meta.url));
const SHAPES = {
  tiny: { n_layer: 4, n_embd: 128, n_head: 4, vocab_size: 2000, n_positions: 128 },
  small: { n_layer: 12, n_embd: 768, n_head: 12, vocab_size: 50257, n_positions: 1024 },
};
const B = 4;
const T = 64;
const R = 8;
const ALPHA = 16;

async function child(shape, threads, iters) {
  // only the parts a training step needs (no records, ONNX or CLI), so the child also runs
  // where just the kernels and the tokenizer package are installed (scripts/gpu-check.sh's device run)
  const core = { ...(await import('@catechism/core/models')), ...(await import('@catechism/core/tensor')), ...(await import('@catechism/core/random')) };
  const kernels = await import('@catechism/kernels');
  kernels.setThreads(threads);
  const { parseConfig, CausalLM, createLora, AdamW, crossEntropy, reshape, slice, noGrad, Rng } = core;
  const cfg = parseConfig({ model_type: 'gpt2', layer_norm_epsilon: 1e-5, ...SHAPES[shape] });
  const model = CausalLM.random(cfg, 0, 0.02);
  const H = cfg.hidden;
  const targets = [];
  for (let i = 0; i < cfg.layers; i++) {
    const L = model.arch.layer(i); // GPT-2: attn.c_attn and mlp.c_proj
    targets.push([L.qkv.fused, H, 3 * H], [L.mlp.out, 4 * H, H]);
  }
  const lora = createLora('bench', targets, { r: R, alpha: ALPHA, seed: 1, fanInFanOut: model.arch.fanInFanOut });
  model.setAdapters([{ adapter: lora }]);
  const opt = new AdamW(lora.parameters(), { lr: 1e-3, weightDecay: 0 });
  const rng = new Rng(0);
  const ids = Int32Array.from({ length: B * T }, () => rng.int(cfg.vocabSize));
  const targetsIds = new Int32Array(B * (T - 1));
  for (let b = 0; b < B; b++) for (let t = 0; t < T - 1; t++) targetsIds[b * (T - 1) + t] = ids[b * T + t + 1];

  const trainStep = () => {
    const { logits } = model.forward(ids, [B, T]);
    const loss = crossEntropy(reshape(slice(logits, 1, 0, T - 1), [B * (T - 1), cfg.vocabSize]), targetsIds);
    loss.backward();
    opt.step();
    opt.zeroGrad();
    return loss.item();
  };
  const evalStep = () => noGrad(() => model.forward(ids, [B, T]).logits.data[0]);
  const timed = (fn) => {
    fn();
    const ts = [];
    for (let i = 0; i < iters; i++) {
      const t0 = process.hrtime.bigint();
      fn();
      ts.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    ts.sort((a, b) => a - b);
    return ts[Math.floor(ts.length / 2)];
  };
  const train_ms = timed(trainStep);
  const eval_ms = timed(evalStep);
  const peak_mb = process.resourceUsage().maxRSS / 1024;
  process.stdout.write(JSON.stringify({ train_ms, eval_ms, peak_mb, threads: kernels.info().threads }) + '\n');
}

function runJson(cmd, args, env = {}, unset = []) {
  const e = { ...process.env, ...env };
  for (const k of unset) delete e[k];
  const r = spawnSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: e, maxBuffer: 1 << 24 });
  if (r.status !== 0) {
    process.stderr.write(`models bench: ${cmd} ${args.join(' ')} failed (${r.status ?? r.signal})\n${r.stderr}\n`);
    return null;
  }
  const line = r.stdout.trim().split('\n').pop();
  try {
    return JSON.parse(line);
  } catch {
    process.stderr.write(`models bench: unreadable output from ${cmd}: ${line}\n`);
    return null;
  }
}

/** Median of the numbers in xs (failed runs are skipped); undefined when none. */
function median(xs) {
  const v = xs.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return undefined;
  const h = v.length >> 1;
  return v.length % 2 ? v[h] : (v[h - 1] + v[h]) / 2;
}

function fmt(x, d = 1) {
  return x === undefined || x === null ? 'n/a' : x.toFixed(d);
}

async function main() {
  const args = process.argv.slice(2);
  if (args[0] === '--child') {
    await child(args[1], Number(args[2]), Number(args[3]));
    return;
  }
  const threads = Number(process.env.BENCH_THREADS ?? os.availableParallelism?.() ?? os.cpus().length);
  const shapes = (process.env.BENCH_SHAPES ?? 'tiny,small').split(',').filter((s) => s in SHAPES);
  const py = process.env.TORCH_PYTHON ?? '/usr/bin/python3';
  const rounds = Math.max(1, Number(process.env.BENCH_ROUNDS ?? 1));
  const rows = [];
  for (const shape of shapes) {
    const iters = Number(process.env.BENCH_ITERS ?? (shape === 'tiny' ? 10 : 3));
    const ours = [], refs = [];
    for (let r = 1; r <= rounds; r++) {
      const tag = rounds > 1 ? ` (round ${r}/${rounds})` : '';
      process.stderr.write(`models bench: ${shape}, ours${tag}\n`);
      ours.push(runJson(process.execPath, [fileURLToPath(import.meta.url), '--child', shape, String(threads), String(iters)]));
      process.stderr.write(`models bench: ${shape}, PyTorch${tag}\n`);
      // Threads pinned to ours; OpenBLAS tuning overrides that slow it on this
      // machine (see ENVIRONMENT-NOTES) are dropped for the reference only.
      refs.push(runJson(
        py,
        [join(here, 'models_torch.py'), '--shape', shape, '--threads', String(threads), '--iters', String(iters)],
        { OMP_NUM_THREADS: String(threads) },
        ['OPENBLAS_CORETYPE', 'OPENBLAS_L2_SIZE'],
      ));
    }
    const peakOurs = median(ours.map((o) => o?.peak_mb));
    const peakRef = median(refs.map((o) => o?.peak_mb));
    for (const [task, key] of [['LoRA train step', 'train_ms'], ['eval forward', 'eval_ms']]) {
      const a = median(ours.map((o) => o?.[key]));
      const b = median(refs.map((o) => o?.[key]));
      // ratios within a round: the two processes ran back to back under the same load
      const ratios = ours.map((o, i) => (o?.[key] && refs[i]?.[key] ? o[key] / refs[i][key] : null)).filter((x) => x !== null);
      let cell = ratios.length > 0 ? median(ratios).toFixed(2) : 'n/a';
      if (ratios.length > 1) cell += ` (${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)})`;
      rows.push(`| ${shape} | ${task} | ${fmt(a)} | ${fmt(b)} | ${cell} | ${fmt(peakOurs, 0)} | ${fmt(peakRef, 0)} |`);
    }
  }
  const lines = [
    `### Models: GPT-2 architecture, batch ${B}×${T}, LoRA r=${R} on attn.c_attn + mlp.c_proj (${threads} threads)`,
    '',
    `Median ms per step (one warm-up excluded${rounds > 1 ? `; median over ${rounds} alternating rounds` : ''}); ratio = ours / PyTorch (lower is better, goal ≤ 1.0${rounds > 1 ? '; median and range of the per-round ratios' : ''}); peak RSS of each process (MB).`,
    '',
    '| shape | task | ours ms | PyTorch ms | ratio | ours peak MB | PyTorch peak MB |',
    '|---|---|---:|---:|---:|---:|---:|',
    ...rows,
    '',
  ];
  process.stdout.write(lines.join('\n') + '\n');
}

await main();
