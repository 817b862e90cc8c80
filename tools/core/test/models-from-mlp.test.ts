/**
 * forward's `fromMlp` (start at a layer's MLP from the residual after its
 * attention) against the full forward, on every golden architecture (GPT-2,
 * Llama and Qwen2 with RoPE, Mixtral's sparse MoE): with a LoRA on that MLP
 * active, logits and the adapter's gradients are the full forward's bit for
 * bit, padding included; the patcher and lora-train start their steps there
 * (`residBeforeMlp`, `ResidCache`, `firstChangedMlp`). With the MLP's keys
 * given too (`mlpStart`, ROME's steps: an adapter on the output projection
 * alone), the same to float rounding, from the output projection.
 */
import t from 'tap';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Rng } from '../src/util/random.js';
import { crossEntropy, scale, type Tensor } from '../src/tensor/index.js';
import { KVCache, loadModel, type CausalLM } from '../src/models/index.js';
import { mlpModules } from '../src/models/arch/index.js';
import { ResidCache, mlpStart, padBatch, padId, residBeforeMlp } from '../src/edit/model-util.js';
import { firstChangedMlp, solvedFraction } from '../src/edit/lora-train.js';
import type { Example } from '../src/edit/data.js';

const GOLDEN = path.join(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..'), 'fixtures/golden');

function rows(vocab: number, seed: number): number[][] {
  const rng = new Rng(seed);
  // three lengths, so two rows carry padding
  return [7, 4, 9].map((n) => Array.from({ length: n }, () => 3 + rng.int(vocab - 3)));
}

function sameBits(a: ArrayLike<number>, b: ArrayLike<number>): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return false;
  return true;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

for (const arch of ['gpt2', 'llama', 'qwen2', 'mixtral']) {
  const model: CausalLM = loadModel(path.join(GOLDEN, arch)).model;
  const c = model.config;
  for (const layer of [0, c.layers - 1]) {
    t.test(`${arch}: fromMlp at layer ${layer} gives the full forward's logits and gradients`, async (t) => {
      const targets = mlpModules(model.arch, c, layer).flatMap((m) => [...m.in, m.out]);
      t.equal(firstChangedMlp(model, targets), layer, 'the MLP\'s own modules: start there');
      const adapter = model.createLora('m', targets, { r: 2, alpha: 4, seed: 3, initBStd: 0.3 });
      const seqs = rows(c.vocabSize, 10 + layer);
      const { ids, mask, T } = padBatch(seqs, padId(model));
      const at = Int32Array.from(seqs.flatMap((s, b) => s.map((_, i) => b * T + i)));
      const targetsIds = Int32Array.from(seqs.flatMap((s) => s.map((x) => (x * 7 + 1) % c.vocabSize)));
      model.setAdapters([{ adapter }]);
      try {
        const run = (from?: { layer: number; h: Tensor }) => {
          for (const p of adapter.parameters()) p.grad = null;
          const { logits } = model.forward(ids, [seqs.length, T], { attentionMask: mask, logitsAt: at, ...(from ? { fromMlp: from } : {}) });
          crossEntropy(logits, targetsIds).backward();
          return { logits: logits.data.slice(), grads: adapter.parameters().map((p) => p.grad!.data.slice()) };
        };
        const full = run();
        const h = residBeforeMlp(model, layer, ids, [seqs.length, T], mask);
        t.same(h.shape, [seqs.length, T, c.hidden]);
        const resumed = run({ layer, h });
        t.ok(sameBits(full.logits, resumed.logits), 'logits at every real position, bit for bit');
        t.ok(full.grads.every((g, i) => sameBits(g, resumed.grads[i])), `the adapter's ${full.grads.length} gradients, bit for bit`);
        t.ok(full.grads.some((g) => g.some((x) => x !== 0)), 'the gradients are not all zero');
        // and the forward does start from h: another h, other logits
        const other = model.forward(ids, [seqs.length, T], { attentionMask: mask, logitsAt: at, fromMlp: { layer, h: scale(h, 1.5) } }).logits.data;
        t.notOk(sameBits(other, full.logits), 'a different h gives different logits');

        // the cache's rows come from other batches (another order, another padding): the same logits
        const cache = new ResidCache<number>(model, layer);
        cache.batch([2, 0], [seqs[2], seqs[0]], 9);
        const cached = cache.batch([0, 1, 2], seqs, T);
        const fromCache = model.forward(ids, [seqs.length, T], { attentionMask: mask, logitsAt: at, fromMlp: cached }).logits.data;
        let d = 0;
        for (let i = 0; i < fromCache.length; i++) d = Math.max(d, Math.abs(fromCache[i] - full.logits[i]));
        t.ok(d <= 1e-5, `rows computed in other batches: max |Δlogit| ${d.toExponential(2)} ≤ 1e-5`);
      } finally {
        model.setAdapters([]);
      }
    });
  }

  for (const layer of [0, c.layers - 1]) {
    t.test(`${arch}: fromMlp with the keys at layer ${layer} (an adapter on the output projection) gives the full forward's logits and gradients`, async (t) => {
      const seqs = rows(c.vocabSize, 40 + layer);
      const { ids, mask, T, last } = padBatch(seqs, padId(model));
      if (!model.arch.layer(layer).mlp) {
        t.throws(() => mlpStart(model, layer, ids, [seqs.length, T], mask), /sparse MoE/, 'a sparse MoE layer has no one set of keys');
        return;
      }
      const [mlp] = mlpModules(model.arch, c, layer);
      const adapter = model.createLora('o', [mlp.out], { r: 1, alpha: 1, seed: 4, initBStd: 0.3 });
      // every real position, and the last tokens only (where the last layer's rows are narrowed, keys with them)
      for (const [what, at] of [['every position', Int32Array.from(seqs.flatMap((s, b) => s.map((_, i) => b * T + i)))], ['the last tokens', last]] as const) {
        const targetsIds = Int32Array.from(at, (r) => (r * 7 + 1) % c.vocabSize);
        const start = mlpStart(model, layer, ids, [seqs.length, T], mask);
        t.same(start.keys.shape, [seqs.length, T, c.intermediate], 'keys [B, T, intermediate]');
        model.setAdapters([{ adapter }]);
        try {
          const run = (from?: { layer: number; h: Tensor; keys?: Tensor }) => {
            for (const p of adapter.parameters()) p.grad = null;
            const { logits } = model.forward(ids, [seqs.length, T], { attentionMask: mask, logitsAt: at, ...(from ? { fromMlp: from } : {}) });
            crossEntropy(logits, targetsIds).backward();
            return { logits: logits.data.slice(), grads: adapter.parameters().map((p) => p.grad!.data.slice()) };
          };
          const full = run();
          const resumed = run(start);
          // to rounding, not bit for bit: at the last layer the full forward computes the keys of the read rows
          // alone, the resumed one reads them out of every row's (the same sums in another gemm's blocking)
          const dl = maxAbsDiff(full.logits, resumed.logits);
          t.ok(dl <= 1e-5, `${what}: logits, max |Δ| ${dl.toExponential(2)} ≤ 1e-5`);
          const dg = Math.max(...full.grads.map((g, i) => maxAbsDiff(g, resumed.grads[i]) / Math.max(...g.map(Math.abs))));
          t.ok(dg <= 1e-5, `${what}: the adapter's gradients, max |Δ| / max |g| ${dg.toExponential(2)} ≤ 1e-5`);
          t.ok(full.grads.every((g) => g.some((x) => x !== 0)), 'the gradients are not all zero');
          const other = model.forward(ids, [seqs.length, T], { attentionMask: mask, logitsAt: at, fromMlp: { ...start, keys: scale(start.keys, 1.5) } }).logits.data;
          t.notOk(sameBits(other, full.logits), `${what}: other keys, other logits (the keys are read)`);
        } finally {
          model.setAdapters([]);
        }
      }
      // keys are exact only while nothing computing them changes: an adapter on an input projection is refused
      const start = mlpStart(model, layer, ids, [seqs.length, T], mask);
      model.setAdapters([{ adapter: model.createLora('i', [mlp.in[0]], { r: 1, alpha: 1, seed: 4, initBStd: 0.3 }) }]);
      try {
        t.throws(() => model.forward(ids, [seqs.length, T], { attentionMask: mask, fromMlp: start }), /an active adapter changes .*which computes them/);
      } finally {
        model.setAdapters([]);
      }
      t.throws(() => model.forward(ids, [seqs.length, T], { attentionMask: mask, fromMlp: { ...start, keys: start.h } }), /fromMlp keys are \[/, 'keys of the wrong width');
    });
  }

  t.test(`${arch}: what fromMlp refuses, and targets that cannot start at an MLP`, async (t) => {
    const last = c.layers - 1;
    const seqs = rows(c.vocabSize, 20);
    const { ids, mask, T } = padBatch(seqs, padId(model));
    const h = residBeforeMlp(model, last, ids, [seqs.length, T], mask);
    t.throws(() => model.forward(ids, [seqs.length, T], { attentionMask: mask, fromMlp: { layer: c.layers, h } }), /fromMlp layer/);
    t.throws(() => model.forward(ids.subarray(0, T), [1, T], { fromMlp: { layer: last, h } }), /fromMlp h is/);
    t.throws(() => model.forward(ids.subarray(0, T), [1, T], { kvCache: new KVCache(1), fromMlp: { layer: last, h } }), /KV cache/);
    const L = model.arch.layer(last);
    t.equal(firstChangedMlp(model, [L.attnOut, ...mlpModules(model.arch, c, last)[0].in]), null, 'an attention module in that layer');
    t.equal(firstChangedMlp(model, ['lm_head']), null, 'a module in no layer');
    t.equal(firstChangedMlp(model, [...mlpModules(model.arch, c, 0)[0].in, L.attnOut]), 0, 'attention in a later layer still starts at the earlier MLP');
  });
}

t.test('lora-train\'s checks started at the last MLP count what the full forward counts', async (t) => {
  const model: CausalLM = loadModel(path.join(GOLDEN, 'gpt2')).model;
  const c = model.config;
  const last = c.layers - 1;
  const adapter = model.createLora('m', mlpModules(model.arch, c, last).flatMap((m) => [...m.in, m.out]), { r: 2, alpha: 4, seed: 5, initBStd: 0.3 });
  model.setAdapters([{ adapter }]);
  try {
    const prompts = [...rows(c.vocabSize, 30), ...rows(c.vocabSize, 31), ...rows(c.vocabSize, 32)];
    const { ids, mask, T, last: at } = padBatch(prompts, padId(model));
    const logits = model.forward(ids, [prompts.length, T], { attentionMask: mask, logitsAt: at }).logits.data;
    const V = c.vocabSize;
    const top = prompts.map((_, b) => {
      const row = logits.subarray(b * V, (b + 1) * V);
      return row.indexOf(Math.max(...row));
    });
    // inserts solved and not, forgets whose old answer is still top-1 and ones that are gone
    const exs: Example[] = prompts.map((p, i) => ({
      factId: `f${i}`, mode: i % 2 ? 'forget' : 'insert', prompt: '', target: '', promptIds: p,
      targetIds: [i % 3 === 0 ? top[i] : (top[i] + 1 + i) % V],
    }));
    const got: number[] = [];
    for (const stop of [0, 0.01, 1e-9]) {
      const full = solvedFraction(model, exs, stop);
      const fromMlp = solvedFraction(model, exs, stop, new ResidCache<Example>(model, last));
      t.equal(fromMlp, full, `forget stop ${stop}: ${full.toFixed(3)} solved either way`);
      got.push(full);
    }
    t.ok(got[0] > 0 && got[0] < 1, 'some rows solved, some not');
    t.ok(got[2] < got[0], 'a forget stop below every P(old) leaves the forgets unsolved');
  } finally {
    model.setAdapters([]);
  }
});
