/**
 * Our GPT-2 / Llama / Qwen2 / Mixtral against PyTorch golden outputs
 * (scripts/golden/make_golden.py): logits, every named site, router logits,
 * and gradients of a next-token loss w.r.t. LoRA A/B and a site activation.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { crossEntropy, reshape, slice, type Tensor } from '../src/tensor/index.js';
import { loadModel, loadLora, readSafetensors, siteNames, type Hooks } from '../src/models/index.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const GOLDEN = path.join(ROOT, 'fixtures/golden');
const TOL = 1e-4;

/** max |a − b| / max |b|: error relative to the tensor's scale. */
function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let d = 0;
  let m = 1e-12;
  for (let i = 0; i < a.length; i++) {
    const e = Math.abs(a[i] - b[i]);
    if (!(e <= d)) d = e;
    m = Math.max(m, Math.abs(b[i]));
  }
  return d / m;
}

/**
 * Rows [.., D] at real (unpadded) positions only: what a model computes at
 * padding positions is unspecified (HF itself gives pads different position
 * ids in forward and in generate).
 */
function real(data: Float32Array, mask: Uint8Array): Float32Array {
  const D = data.length / mask.length;
  const out: number[] = [];
  mask.forEach((m, i) => {
    if (m) for (let j = 0; j < D; j++) out.push(data[i * D + j]);
  });
  return Float32Array.from(out);
}

interface GoldenMeta {
  input_ids: number[][];
  attention_mask: number[][];
  lora_targets: string[];
  lora_loss: number;
  greedy: Array<{ prompt: number[]; new_tokens: number[] }>;
}

/** Next-token targets over real tokens, -100 elsewhere (as the reference). */
function targetsOf(meta: GoldenMeta): Int32Array {
  const B = meta.input_ids.length;
  const T = meta.input_ids[0].length;
  const tg = new Int32Array(B * (T - 1));
  for (let b = 0; b < B; b++) {
    for (let s = 0; s < T - 1; s++) tg[b * (T - 1) + s] = meta.attention_mask[b][s + 1] ? meta.input_ids[b][s + 1] : -100;
  }
  return tg;
}

for (const arch of ['gpt2', 'llama', 'qwen2', 'mixtral', 'llama3']) {
  t.test(`${arch} matches PyTorch`, async (t) => {
    const dir = path.join(GOLDEN, arch);
    const meta = JSON.parse(fs.readFileSync(path.join(dir, 'golden.json'), 'utf-8')) as GoldenMeta;
    const gold = readSafetensors(path.join(dir, 'golden.safetensors'));
    const { model } = loadModel(dir);
    const c = model.config;
    const B = meta.input_ids.length;
    const T = meta.input_ids[0].length;
    const ids = Int32Array.from(meta.input_ids.flat());
    const mask = Uint8Array.from(meta.attention_mask.flat());

    const captured = new Map<string, Tensor>();
    const sites = siteNames(c.layers, c.experts);
    const hooks: Hooks = {};
    for (const s of sites) hooks[s] = { capture: (x) => void captured.set(s, x) };
    const out = model.forward(ids, [B, T], { attentionMask: mask, hooks });
    const cmp = (ours: Float32Array, name: string) => relErr(real(ours, mask), real(gold.float32(name), mask));
    t.ok(cmp(out.logits.data, 'logits') <= TOL, `logits rel err ${cmp(out.logits.data, 'logits').toExponential(2)}`);
    t.same(out.logits.shape, [B, T, c.vocabSize]);
    for (const s of sites) {
      const x = captured.get(s);
      t.ok(x, `site ${s} captured`);
      const e = cmp(x!.data, `site.${s}`);
      t.ok(e <= TOL, `site ${s} rel err ${e.toExponential(2)}`);
    }
    if (c.family === 'mixtral') {
      // golden router logits are [B, T, L, E]; ours are per layer [B, T, E]
      const g = gold.float32('router_logits');
      const E = c.experts;
      const L = c.layers;
      const ours = new Float32Array(g.length);
      out.routerLogits!.forEach((r, l) => {
        for (let bt = 0; bt < B * T; bt++) ours.set(r.data.subarray(bt * E, (bt + 1) * E), (bt * L + l) * E);
      });
      t.ok(relErr(real(ours, mask), real(g, mask)) <= TOL, 'router logits');
      // without expert hooks (sparse path) the logits are the same
      const sparse = model.forward(ids, [B, T], { attentionMask: mask });
      t.ok(cmp(sparse.logits.data, 'logits') <= TOL, 'sparse MoE path logits');
    } else {
      t.equal(out.routerLogits, undefined);
    }

    // greedy generation (ours with the KV cache, batched and left-padded) = PyTorch's full recompute
    const gen = model.generate(meta.greedy.map((g) => g.prompt), { maxNewTokens: 6, eosTokenId: null });
    t.same(gen, meta.greedy.map((g) => g.new_tokens), 'greedy continuations match PyTorch');

    // LoRA: the reference adapter, the same loss, gradients to A, B and layers.0.mlp
    const adapter = loadLora(path.join(dir, 'adapter'));
    t.same(adapter.targets().sort(), meta.lora_targets.slice().sort());
    model.setAdapters([{ adapter }]);
    let site: Tensor | null = null;
    const lo = model.forward(ids, [B, T], {
      attentionMask: mask,
      hooks: { 'layers.0.mlp': { capture: (x) => { site = x.retainGrad(); } } },
    });
    t.ok(cmp(lo.logits.data, 'lora.logits') <= TOL, 'logits with LoRA');
    const V = c.vocabSize;
    const pred = reshape(slice(lo.logits, 1, 0, T - 1), [B * (T - 1), V]);
    const loss = crossEntropy(pred, targetsOf(meta));
    t.ok(Math.abs(loss.item() - meta.lora_loss) <= TOL * Math.abs(meta.lora_loss), `loss ${loss.item()} vs ${meta.lora_loss}`);
    loss.backward();
    for (const [mod, { A, B: Bm }] of adapter.modules) {
      const eA = relErr(A.grad!.data, gold.float32(`lora.grad.${mod}.lora_A`));
      const eB = relErr(Bm.grad!.data, gold.float32(`lora.grad.${mod}.lora_B`));
      t.ok(eA <= TOL, `${mod} dL/dA rel err ${eA.toExponential(2)}`);
      t.ok(eB <= TOL, `${mod} dL/dB rel err ${eB.toExponential(2)}`);
    }
    const gs = (site as Tensor | null)?.grad;
    t.ok(gs, 'hooked activation received a gradient');
    t.ok(relErr(gs!.data, gold.float32('lora.grad.site.layers.0.mlp')) <= TOL, 'dL/d layers.0.mlp (all positions)');
    // the base stays frozen
    for (const w of model.weights.values()) {
      if (w.grad !== null || w.requiresGrad) {
        t.fail('a base weight requires or received a gradient');
        break;
      }
    }
    model.setAdapters([]);
  });
}
