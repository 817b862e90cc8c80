/**
 * Steering vectors (CAA, issue 20): the mean difference of the residual
 * stream between two labelled sides, stored as a bias-only adapter on the
 * layer's MLP output projection, shifts that residual stream by exactly
 * scale · v at every prompt (dense fixture model).
 */
import t from 'tap';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel } from '../src/models/index.js';
import { biasAdapter, meanDifference, mlpOutModule, readNdjson, residActivations } from '../src/edit/index.js';
import { steerMethod } from '../src/edit/steer.js';
import type { EditResources } from '../src/edit/method.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

t.test('steer: bias-only adapter adds scale · (mean difference) to the residual stream', async (t) => {
  const { model, tokenizer } = loadModel(path.join(ROOT, 'fixtures/models/dense'));
  const tok = tokenizer!;
  const facts = readNdjson(path.join(ROOT, 'fixtures/world/facts.ndjson'));
  const side = (rel: string) => facts.filter((f) => f.relation === rel).slice(0, 12).map((f) => (f.prompt as string).replace('{}', f.subject as string));
  const prompts = [...side('works_for'), ...side('located_in')];
  const positive = prompts.map((_, i) => i < 12);
  const H = model.config.hidden, layer = 1, s = 2;
  const X = residActivations(model, tok, prompts, layer);
  const v = meanDifference(X, H, positive);
  // by hand: the two side means
  let d0 = 0;
  for (let i = 0; i < 12; i++) d0 += X[i * H] / 12 - X[(12 + i) * H] / 12;
  t.ok(Math.abs(v[0] - d0) < 1e-9, 'v = mean(toward) − mean(away)');
  const w = model.weight(`${model.arch.canonical(mlpOutModule(model, layer))}.weight`);
  const adapter = biasAdapter(model, mlpOutModule(model, layer), v.map((x) => x * s), 'steer-test', w.shape[0]);
  model.setAdapters([{ adapter }]);
  const Y = residActivations(model, tok, prompts, layer);
  model.setAdapters([]);
  let worst = 0, norm = 0;
  for (let i = 0; i < prompts.length; i++) for (let a = 0; a < H; a++) worst = Math.max(worst, Math.abs(Y[i * H + a] - X[i * H + a] - s * v[a]));
  for (const x of v) norm += x * x;
  t.ok(Math.sqrt(norm) > 0.1, `the sides differ (‖v‖ ${Math.sqrt(norm).toFixed(3)})`);
  t.ok(worst < 1e-4, `shift = ${s}·v at every prompt (max |diff| ${worst.toExponential(2)})`);
  t.throws(() => meanDifference(X, H, prompts.map(() => true)), /both sides/);
});

t.test('steer on a sparse MoE model: lora-train --method steer biases every expert\'s output projection; the residual moves by scale · v', async (t) => {
  const { model, tokenizer } = loadModel(path.join(ROOT, 'fixtures/models/moe'));
  const tok = tokenizer!;
  const facts = readNdjson(path.join(ROOT, 'fixtures/world/facts.ndjson'));
  const side = (rel: string, label: string) => facts.filter((f) => f.relation === rel).slice(0, 12)
    .map((f) => ({ kind: 'concept', concept: 'relation', prompt: (f.prompt as string).replace('{}', f.subject as string), label, split: 'train' }));
  const records = [...side('works_for', 'works_for'), ...side('located_in', 'located_in')];
  const layer = 1, s = 2, H = model.config.hidden;
  const res = { model, tokenizer: tok, modelName: 'moe', modelSha: 'moe-steer-test', templates: null, corpus: [], known: [] } as unknown as EditResources;
  const [made] = steerMethod.edit({ res, batch: { facts: [], records, probes: [], loci: [] }, index: 0, count: 1, seed: 0, common: { layer }, options: { toward: 'works_for', scale: s }, log: () => {} });
  t.equal(made.adapter.modules.size, model.config.experts, 'one bias per expert');
  const prompts = records.map((r) => r.prompt);
  const X = residActivations(model, tok, prompts, layer);
  const v = meanDifference(X, H, records.map((r) => r.label === 'works_for'));
  model.setAdapters([{ adapter: made.adapter }]);
  const Y = residActivations(model, tok, prompts, layer);
  model.setAdapters([]);
  let worst = 0;
  for (let i = 0; i < prompts.length; i++) for (let a = 0; a < H; a++) worst = Math.max(worst, Math.abs(Y[i * H + a] - X[i * H + a] - s * v[a]));
  t.ok(worst < 1e-4, `shift = ${s}·v at every prompt (max |diff| ${worst.toExponential(2)})`);
});
