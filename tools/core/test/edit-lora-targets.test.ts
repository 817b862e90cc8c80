/**
 * lora-train's default targets (issue 17): the last layer's MLP, its input
 * and output projections, on GELU and SwiGLU models and a sparse MoE last
 * layer (each expert's). Prefixed rows and
 * subject-only MSE default on when every target is in the last layer and the
 * batch has at most 30 facts; above 30 there, rank 16 instead of 8. On a
 * sparse MoE last layer the targets are every expert's projections. A batch
 * with forget facts gets, at the last layer, the forget rows' replacement over
 * the relation's answers, weight 5 and floor 0.002.
 */
import t from 'tap';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel } from '../src/models/index.js';
import { LARGE_BATCH, LORA_METHOD_DEFAULTS, chooseTargets, isLargeBatch, largeBatchTargets, loraSiteOptions } from '../src/edit/lora-method.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const common = { topK: 2 } as Parameters<typeof chooseTargets>[1];

t.test('GPT-2 (GELU): c_fc and c_proj of the last layer; --layer keeps its MLP output', async (t) => {
  const { model } = loadModel(path.join(ROOT, 'fixtures/models/dense'));
  t.equal(model.config.layers, 4);
  const targets = chooseTargets(model, common, []);
  t.same(targets, ['transformer.h.3.mlp.c_fc', 'transformer.h.3.mlp.c_proj']);
  t.match(loraSiteOptions(model, targets, 10, LORA_METHOD_DEFAULTS), { rank: 8, prefixRows: 1, mseSubjectOnly: true }, 'on at the last layer');
  t.match(loraSiteOptions(model, targets, 30, LORA_METHOD_DEFAULTS), { rank: 8, prefixRows: 1, mseSubjectOnly: true }, 'up to 30 facts');
  t.match(loraSiteOptions(model, targets, 31, LORA_METHOD_DEFAULTS), { rank: 16, prefixRows: 0, mseSubjectOnly: false }, 'above 30 facts: rank 16 instead');
  t.match(loraSiteOptions(model, targets, 100, { ...LORA_METHOD_DEFAULTS, rank: 4 }), { rank: 4 }, 'a given rank wins');
  const l0 = chooseTargets(model, { ...common, layer: 0 }, []);
  t.same(l0, ['transformer.h.0.mlp.c_proj'], '--layer 0: that layer\'s MLP output, as before');
  t.match(loraSiteOptions(model, l0, 10, LORA_METHOD_DEFAULTS), { prefixRows: 0, mseSubjectOnly: false }, 'off elsewhere');
  t.match(loraSiteOptions(model, l0, 100, LORA_METHOD_DEFAULTS), { rank: 8, prefixRows: 0 }, 'elsewhere rank 8 whatever the batch');
  t.match(loraSiteOptions(model, [...l0, ...targets], 10, LORA_METHOD_DEFAULTS), { prefixRows: 0, mseSubjectOnly: false }, 'off unless every target is in the last layer');
  t.match(loraSiteOptions(model, targets, 10, { ...LORA_METHOD_DEFAULTS, prefixRows: 0, mseSubjectOnly: false }), { prefixRows: 0, mseSubjectOnly: false }, 'given values win');
  // forget rows: at a dense model's last layer, the replacement over the relation's answers, weight 10, floor 0.002,
  // the early stop waiting for P(old) < 0.002, only when the batch forgets
  t.match(loraSiteOptions(model, targets, 10, LORA_METHOD_DEFAULTS, 3), { forgetToKind: true, forgetWeight: 10, forgetFloor: 0.002, forgetStopP: 0.002 }, 'forgets at the last layer');
  t.match(loraSiteOptions(model, targets, 10, LORA_METHOD_DEFAULTS, 0), { forgetToKind: false, forgetWeight: 1, forgetFloor: 0.02, forgetStopP: 0 }, 'an insert-only batch: trainLora\'s values, so its bundle is as before');
  t.match(loraSiteOptions(model, l0, 10, LORA_METHOD_DEFAULTS, 3), { forgetToKind: false, forgetWeight: 1, forgetFloor: 0.02, forgetStopP: 0 }, 'elsewhere as before');
  t.match(loraSiteOptions(model, targets, 10, { ...LORA_METHOD_DEFAULTS, forgetToKind: false, forgetWeight: 2, forgetFloor: 0.01, forgetStopP: 0 }, 3), { forgetToKind: false, forgetWeight: 2, forgetFloor: 0.01, forgetStopP: 0 }, 'given forget values win');
  const { model: moe } = loadModel(path.join(ROOT, 'fixtures/models/moe'));
  t.match(loraSiteOptions(moe, chooseTargets(moe, common, []), 10, LORA_METHOD_DEFAULTS, 3), { forgetToKind: true, forgetWeight: 5, forgetFloor: 0.002, forgetStopP: 0 }, 'a sparse MoE model\'s last layer: weight 5, the top-1 stop');
  const loci = [{ kind: 'locus', fact_id: 'f', layer: 0, module: 'transformer.h.0.attn.c_proj', score: 0.4 }];
  t.same(chooseTargets(model, common, loci), ['transformer.h.0.attn.c_proj'], 'with --top-k the loci choose');
  t.same(chooseTargets(model, {}, loci), targets, 'without it they do not');
});

t.test('Llama (SwiGLU): gate, up and down projections of the last layer', async (t) => {
  const { model } = loadModel(path.join(ROOT, 'fixtures/golden/llama'));
  const last = model.config.layers - 1;
  t.same([...chooseTargets(model, common, [])].sort(), [`model.layers.${last}.mlp.down_proj`, `model.layers.${last}.mlp.gate_proj`, `model.layers.${last}.mlp.up_proj`]);
});

t.test('Mixtral-shaped MoE: every expert\'s w1, w3 and w2 of the last layer, the router untouched; the last-layer options on', async (t) => {
  const { model } = loadModel(path.join(ROOT, 'fixtures/models/moe'));
  const last = model.config.layers - 1;
  const targets = chooseTargets(model, common, []);
  const want = Array.from({ length: model.config.experts }, (_, e) => ['w1', 'w3', 'w2'].map((w) => `model.layers.${last}.block_sparse_moe.experts.${e}.${w}`)).flat();
  t.same([...targets].sort(), want.sort(), `${model.config.experts} experts × 3 projections`);
  t.notOk(targets.some((m) => m.includes('block_sparse_moe.gate')), 'not the router');
  t.match(loraSiteOptions(model, targets, 10, LORA_METHOD_DEFAULTS, 2), { prefixRows: 1, mseSubjectOnly: true, forgetToKind: true, forgetWeight: 5 });
});

t.test('a large batch (more than LARGE_BATCH.above insert facts, dense, no targets given): the last two layers\' MLPs, sft, rank 32, 2,000 steps unscaled', async (t) => {
  const { model } = loadModel(path.join(ROOT, 'fixtures/models/dense'));
  const ins = (n: number) => Array.from({ length: n }, () => ({ op: 'insert' }));
  const d = LORA_METHOD_DEFAULTS;
  const n = LARGE_BATCH.above;
  t.notOk(isLargeBatch(model, {}, d, ins(n)), `${n} facts: the small-batch defaults`);
  t.ok(isLargeBatch(model, {}, d, ins(n + 1)), `${n + 1}: large`);
  t.ok(isLargeBatch(model, {}, d, ins(2 * n)), `${2 * n}: large`);
  t.notOk(isLargeBatch(model, {}, d, [...ins(2 * n), { op: 'forget' }]), 'a batch with a forget keeps the forget defaults');
  t.notOk(isLargeBatch(model, { targets: ['transformer.h.0.mlp.c_proj'] } as Parameters<typeof chooseTargets>[1], d, ins(2 * n)), '--targets given');
  t.notOk(isLargeBatch(model, { layer: 1 } as Parameters<typeof chooseTargets>[1], d, ins(2 * n)), '--layer given');
  t.notOk(isLargeBatch(model, common, d, ins(2 * n)), '--top-k given');
  t.notOk(isLargeBatch(model, {}, { largeBatchAbove: 0 }, ins(5000)), '--large-batch-above 0: never');
  const { model: moe } = loadModel(path.join(ROOT, 'fixtures/models/moe'));
  t.notOk(isLargeBatch(moe, {}, d, ins(2 * n)), 'not on a sparse MoE model (unmeasured there)');
  const targets = largeBatchTargets(model);
  t.same(targets, ['transformer.h.2.mlp.c_fc', 'transformer.h.2.mlp.c_proj', 'transformer.h.3.mlp.c_fc', 'transformer.h.3.mlp.c_proj']);
  t.match(loraSiteOptions(model, targets, 300, d, 0, true), { objective: 'sft', rank: 32, steps: 2000, scaleStepsAbove: 0, prefixRows: 0, mseSubjectOnly: false });
  t.match(loraSiteOptions(model, targets, 300, { ...d, objective: 'distill', rank: 8, steps: 50, scaleStepsAbove: 10 }, 0, true), { objective: 'distill', rank: 8, steps: 50, scaleStepsAbove: 10 }, 'given values win');
  t.match(loraSiteOptions(model, chooseTargets(model, {}, []), 100, d), { objective: 'distill', rank: 16, steps: 400, scaleStepsAbove: 10 }, 'the small-batch defaults');
});
