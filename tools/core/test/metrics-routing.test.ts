/**
 * Routing metrics (metrics/routing.ts): total variation, top-k changes and
 * expert load on hand-made router distributions; teacher agreement; and
 * routingMetrics on the golden Mixtral checkpoint (zero without an adapter,
 * positive with a gate adapter, null for a dense model), with its default
 * gate in validate's table.
 */
import t from 'tap';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  METRICS, alignedPositions, expertLoad, resolveGates, routerProbs, routingMetrics, routingShift, topExperts, topKAgreement, type RouteRows,
} from '../src/metrics/index.js';
import { loadModel } from '../src/models/index.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

/** One prompt, one layer, given per-token distributions over E experts (top-2). */
function rows(dists: number[][][], topK = 2): RouteRows {
  const E = dists[0][0].length;
  return { probs: dists.map((d) => Float32Array.from(d.flat())), lengths: dists.map((d) => d.length), layers: 1, experts: E, topK };
}

t.test('total variation, top-k changes and load shift on known distributions', async (t) => {
  const before = rows([[[0.5, 0.3, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]]]);
  const after = rows([[[0.1, 0.3, 0.5, 0.1], [0.25, 0.25, 0.25, 0.25]]]);
  const s = routingShift(before, after);
  // token 0: ½(0.4 + 0 + 0.4 + 0) = 0.4; token 1: 0
  t.ok(Math.abs(s.tv - 0.2) < 1e-6, `tv ${s.tv}`);
  t.ok(Math.abs(s.tvMax - 0.2) < 1e-6, 'one prompt: its mean is the max');
  t.equal(s.changed, 0.5, 'token 0 went {0,1} → {2,1}; token 1 unchanged (ties to the lower index)');
  // loads: before {0:2,1:2}/4, after {0:1,1:2,2:1}/4 → TV ½(¼ + 0 + ¼) = ¼
  t.ok(Math.abs(s.loadShift - 0.25) < 1e-9, `load shift ${s.loadShift}`);
  t.equal(s.tokens, 2);
  t.same(Array.from(expertLoad(before)[0]), [0.5, 0.5, 0, 0]);
  const same = routingShift(before, before);
  t.equal(same.tv, 0);
  t.equal(same.changed, 0);
  // prompts outside `keep` do not count
  const two = routingShift(rows([[[1, 0, 0, 0]], [[1, 0, 0, 0]]]), rows([[[0, 1, 0, 0]], [[1, 0, 0, 0]]]), (i) => i === 1);
  t.equal(two.tv, 0, 'the moved prompt is excluded');
  t.equal(two.prompts, 1);
  t.throws(() => routingShift(before, rows([[[1, 0, 0, 0]], [[1, 0, 0, 0]]])), /prompts before/);
});

t.test('top experts, aligned positions and agreement', async (t) => {
  t.same(topExperts([0.1, 0.4, 0.4, 0.1], 0, 4, 2), [1, 2], 'ties to the lower index');
  t.same(alignedPositions([7, 8, 9], [1, 2, 7, 8, 9], 1), [[1, 3], [2, 4]], 'suffix aligned from `from`');
  t.same(alignedPositions([7, 8, 9], [8, 9], 0), [], 'a teacher shorter than the student aligns nothing');
  t.same(alignedPositions([7, 8, 9], [1, 7, 0, 9], 0), [[0, 1], [2, 3]], 'positions whose tokens differ are left out');
  const student = rows([[[0.4, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1]]]);
  const teacher = rows([[[0.0, 0.0, 0.0, 0.0], [0.4, 0.1, 0.3, 0.2], [0.1, 0.2, 0.3, 0.4]]]);
  // pos 0 ↔ teacher 1: {0,1} vs {0,2} → ½; pos 1 ↔ teacher 2: {0,1} vs {3,2} → 0
  const a = topKAgreement(student, teacher, [[[0, 1], [1, 2]]]);
  t.equal(a.agree, 0.25);
  t.equal(a.tokens, 2);
});

t.test('routingMetrics on the golden Mixtral: zero without an adapter, moved by a gate adapter; null for a dense model', async (t) => {
  const { model, tokenizer } = loadModel(path.join(ROOT, 'fixtures/golden/mixtral'));
  const unrelated = ['hello world', 'the cat sat on the mat', 'a b c d e f', 'one two three'];
  const facts = [{ id: 'f', subject: 'cat', prompt: 'the {} sat on the', target_new: 'mat', op: 'insert' }];
  const none = routingMetrics(model, tokenizer, { unrelated, facts, active: [] })!;
  t.equal(none.metrics.route_tv, 0);
  t.equal(none.metrics.route_changed, 0);
  t.equal(none.metrics.route_agree, none.metrics.route_agree_before, 'no adapter: agreement unchanged');
  t.ok(none.metrics.route_agree >= 0 && none.metrics.route_agree <= 1);
  t.equal(none.metrics.n_route_prompts, 4);
  const gate = model.arch.layer(0).moe!.router;
  const lora = model.createLora('g', [gate], { r: 2, alpha: 2, seed: 1, initBStd: 2 });
  const moved = routingMetrics(model, tokenizer, { unrelated, facts, active: [{ adapter: lora }] })!;
  t.ok(moved.metrics.route_tv > 0.01, `route_tv ${moved.metrics.route_tv}`);
  t.ok(moved.metrics.route_tv <= 1);
  t.ok(moved.se.route_tv > 0, 'standard error over prompts');
  t.same(model.activeAdapters(), [], 'the model is left with no adapters');
  // the base routes are computed once per prompt list: the same floats again
  const again = routingMetrics(model, tokenizer, { unrelated, facts, active: [{ adapter: lora }] })!;
  t.equal(again.metrics.route_tv, moved.metrics.route_tv);
  // the measured value is the mean over tokens and layers of ½Σ|p − q|
  const ids = unrelated.map((u) => tokenizer.encode(u));
  const b = routerProbs(model, ids);
  model.setAdapters([{ adapter: lora }]);
  const a = routerProbs(model, ids);
  model.setAdapters([]);
  let s = 0;
  let n = 0;
  b.probs.forEach((p, i) => {
    for (let j = 0; j < p.length; j += b.experts) {
      let d = 0;
      for (let e = 0; e < b.experts; e++) d += Math.abs(p[j + e] - a.probs[i][j + e]);
      s += d / 2;
      n++;
    }
  });
  t.ok(Math.abs(s / n - moved.metrics.route_tv) < 1e-6);
  const excl = routingMetrics(model, tokenizer, { unrelated, excluded: new Set(['hello world']), facts, active: [{ adapter: lora }] })!;
  t.equal(excl.metrics.n_route_prompts, 3, 'excluded prompts are scored but not counted');

  const dense = loadModel(path.join(ROOT, 'fixtures/golden/gpt2'));
  t.equal(routingMetrics(dense.model, dense.tokenizer!, { unrelated, facts, active: [] }), null);
  t.throws(() => routerProbs(dense.model, [[1, 2]]), /mixture-of-experts/);
});

t.test('route_tv has a default gate in validate\'s table; the other routing metrics are listed', async (t) => {
  t.match(resolveGates().find((g) => g.metric === 'route_tv'), { op: '<=', value: 0.05 });
  for (const m of ['route_tv_max', 'route_changed', 'route_load_shift', 'route_agree', 'route_agree_before', 'n_route_tokens']) t.ok(METRICS[m], m);
});
