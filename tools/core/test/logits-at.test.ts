/**
 * forward's `logitsAt` runs the last layer's dense MLP only at the rows it
 * reads: on every golden architecture the logits there match the full
 * forward's rows (to float rounding; a hook on that MLP, or an MoE block,
 * keeps every row), and gradients through them match too. `lengthBuckets`
 * (ROME's key refit pool) splits rows into like-length batches.
 */
import t from 'tap';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Rng } from '../src/util/random.js';
import { crossEntropy, reshape } from '../src/tensor/index.js';
import { loadModel, type CausalLM } from '../src/models/index.js';
import { mlpModules } from '../src/models/arch/index.js';
import { lengthBuckets, padBatch, padId } from '../src/edit/model-util.js';

const GOLDEN = path.join(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..'), 'fixtures/golden');

function rows(vocab: number, seed: number): number[][] {
  const rng = new Rng(seed);
  return [7, 4, 9].map((n) => Array.from({ length: n }, () => 3 + rng.int(vocab - 3)));
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

for (const arch of ['gpt2', 'llama', 'qwen2', 'mixtral']) {
  const model: CausalLM = loadModel(path.join(GOLDEN, arch)).model;
  const V = model.config.vocabSize;
  t.test(`${arch}: logits at chosen rows equal the full forward's rows, values and gradients`, async (t) => {
    const { ids, mask, T, last } = padBatch(rows(V, 3), padId(model));
    const dims: [number, number] = [3, T];
    // a LoRA on the last layer's MLP, so the narrowed rows carry an adapter too
    const lora = model.createLora('t', mlpModules(model.arch, model.config, model.config.layers - 1).flatMap((m) => [...m.in, m.out]), { r: 2, seed: 1, initBStd: 0.05 });
    model.setAdapters([{ adapter: lora }]);
    // the full forward: every row's logits, then the read rows picked out
    const full = model.forward(ids, dims, { attentionMask: mask });
    const at = model.forward(ids, dims, { attentionMask: mask, logitsAt: last });
    const picked = new Float32Array(3 * V);
    last.forEach((r, b) => picked.set(full.logits.data.subarray(r * V, (r + 1) * V), b * V));
    t.ok(maxDiff(picked, at.logits.data) < 1e-4, `logits: largest difference ${maxDiff(picked, at.logits.data).toExponential(1)}`);
    // the adapter's gradients of a loss at the read rows, both ways
    const targets = Int32Array.from([5, 6, 7]);
    const everyRow = new Int32Array(3 * T).fill(-100);
    last.forEach((r, b) => { everyRow[r] = targets[b]; });
    const grads = (narrow: boolean) => {
      for (const p of lora.parameters()) p.grad = null;
      const { logits } = model.forward(ids, dims, { attentionMask: mask, ...(narrow ? { logitsAt: last } : {}) });
      const loss = narrow ? crossEntropy(logits, targets) : crossEntropy(reshape(logits, [3 * T, V]), everyRow, -100);
      loss.backward();
      return lora.parameters().map((p) => Float32Array.from(p.grad!.data));
    };
    const g0 = grads(false);
    const g1 = grads(true);
    g0.forEach((g, i) => {
      const size = Math.max(...Array.from(g, Math.abs), 1e-12);
      t.ok(maxDiff(g, g1[i]) / size < 1e-3, `gradient ${i}: relative difference ${(maxDiff(g, g1[i]) / size).toExponential(1)}`);
    });
    model.setAdapters([]);
  });
}

t.test('lengthBuckets: like-length batches that cover every row once', async (t) => {
  const lens = [7, 21, 9, 13, 13, 8, 20, 11, 15];
  const rs = lens.map((n, i) => Array.from({ length: n }, (_, j) => 10 + i + j));
  const bs = lengthBuckets(rs, 0, 3);
  t.equal(bs.length, 3);
  t.same(bs.flatMap((b) => b.rows).sort((a, b) => a - b), lens.map((_, i) => i), 'every row once');
  t.same(bs.map((b) => b.rows.map((i) => lens[i])), [[7, 8, 9], [11, 13, 13], [15, 20, 21]], 'sorted by length, equal shares');
  t.same(bs.map((b) => b.T), [9, 13, 21], 'each padded to its own longest');
  const b = bs[1];
  t.same(Array.from(b.ids.subarray(0, b.T)), rs[7].concat([0, 0]), 'a row as padBatch lays it out');
  t.equal(b.last[2], 2 * b.T + 12, 'its last token');
  t.equal(lengthBuckets(rs, 0, 20).length, 9, 'no more batches than rows');
});
