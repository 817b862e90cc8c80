/**
 * validate's erasure probe (issue 20): with `concept` records, an adapter
 * gets erasure_probe_acc before/after and chance, read at the site the LEACE
 * adapter names, and the default gate erasure_probe_gap<=0.03 applies. A
 * LEACE eraser brings the probe down from its reading of the concept; an
 * adapter that changes nothing there leaves it reading the concept and
 * fails the gate. A steering adapter (it names `toward`) gets the steering
 * probe instead: the share of the other side's held-out prompts read as the
 * steered-to side, downstream, by a probe fitted on base activations.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel } from '@catechism/core/models';
import { biasAdapter, eraserAdapter, fitLeace, meanDifference, mlpOutModule, residActivations, siteActivations } from '@catechism/core/edit';
import { checkGates, erasureProbeRows, resolveGates, type ConceptLike } from '@catechism/core/metrics';
import { erasureMetrics, type ValidateContext } from '../src/validate.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const rels = ['works_for', 'lives_in', 'plays_sport'];
const facts = fs.readFileSync(path.join(root, 'fixtures/world/facts.ndjson'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, string>);
// 90 subjects of each relation: two thirds fit the eraser, one third (split test) is the probe's
const concepts: ConceptLike[] = rels.flatMap((r) => facts.filter((f) => f.relation === r).slice(0, 90).map((f, i) => ({
  concept: 'relation', prompt: f.prompt.replace('{}', f.subject), label: r, split: i % 3 === 2 ? 'test' : 'train',
})));

t.test('erasureProbeRows: the test split only, halves alternate per label, duplicates once, too few is null', async (t) => {
  const rows = erasureProbeRows([...concepts, ...concepts], 'relation')!;
  t.equal(rows.train.prompts.length + rows.test.prompts.length, 90, 'the 90 test examples, once');
  t.same(rows.classes, [...rels].sort());
  t.equal(rows.train.prompts.length, 45);
  t.notOk(rows.train.prompts.some((p) => rows.test.prompts.includes(p)), 'the probe\'s halves are disjoint');
  t.equal(erasureProbeRows(concepts, 'other'), null);
  t.equal(erasureProbeRows(concepts.filter((c) => c.label === 'works_for'), 'relation'), null, 'one label');
});

t.test('validate\'s erasure metrics: LEACE at the named site against an adapter that changes nothing', async (t) => {
  const { model, tokenizer } = loadModel(path.join(root, 'fixtures/models/dense'));
  const layer = 2;
  const fit = concepts.filter((c) => c.split === 'train');
  const X = siteActivations(model, tokenizer!, fit.map((c) => c.prompt), layer);
  const e = fitLeace(X, fit.length, model.config.hidden, Int32Array.from(fit, (c) => [...rels].sort().indexOf(c.label)), 3);
  const leace = eraserAdapter(model, e, layer, 'leace-test');
  const noop = eraserAdapter(model, { ...e, B: new Float64Array(e.B.length), mean: new Float64Array(e.dim) }, layer, 'noop');
  const logs: string[] = [];
  const ctx = { model, tokenizer: tokenizer!, concepts, log: (m: string) => logs.push(m) } as unknown as ValidateContext;
  const hp = { concept: 'relation', site: `layers.${layer}.mlp` };
  const m = erasureMetrics(ctx, { id: 'leace', active: [{ adapter: leace }], hyperparameters: hp });
  t.ok(m.erasure_probe_acc_before > 0.8, `the probe reads the relation before (${m.erasure_probe_acc_before.toFixed(3)})`);
  t.ok(m.erasure_probe_acc < m.erasure_probe_acc_before - 0.3, `and much less after LEACE (${m.erasure_probe_acc.toFixed(3)}, chance ${m.erasure_probe_chance.toFixed(3)})`);
  t.equal(m.erasure_probe_gap, Math.abs(m.erasure_probe_acc - m.erasure_probe_chance));
  t.equal(m.n_erasure_probe, 90);
  t.match(logs.join('\n'), /erasure probe of relation at layers\.2\.mlp/);
  const n = erasureMetrics(ctx, { id: 'noop', active: [{ adapter: noop }], hyperparameters: hp });
  t.equal(n.erasure_probe_acc, n.erasure_probe_acc_before, 'an adapter that changes nothing: the same reading');
  const v = checkGates(n, resolveGates());
  t.ok(v.gates.includes('erasure_probe_gap<=0.03'), 'the default gate applies');
  t.notOk(v.pass, 'and fails an adapter that erased nothing');
  t.same(erasureMetrics({ ...ctx, concepts: [] } as ValidateContext, { id: 'x', active: [], hyperparameters: hp }), {}, 'no concept records: nothing measured');
});

t.test('validate\'s steering metrics: a steering vector moves the other side by its scale; none, nothing', async (t) => {
  const { model, tokenizer } = loadModel(path.join(root, 'fixtures/models/dense'));
  const two = concepts.filter((c) => c.label !== 'plays_sport');
  const fit = two.filter((c) => c.split === 'train');
  const layer = 1, H = model.config.hidden, toward = 'lives_in';
  const v = meanDifference(residActivations(model, tokenizer!, fit.map((c) => c.prompt), layer), H, fit.map((c) => c.label === toward));
  const mod = mlpOutModule(model, layer);
  const fin = model.weight(`${model.arch.canonical(mod)}.weight`).shape[0];
  const logs: string[] = [];
  const ctx = { model, tokenizer: tokenizer!, concepts: two, log: (m: string) => logs.push(m) } as unknown as ValidateContext;
  const hp = { concept: 'relation', toward, site: `layers.${layer}.resid_post` };
  const at = (s: number) => erasureMetrics(ctx, { id: `steer-${s}`, active: [{ adapter: biasAdapter(model, mod, v.map((x) => x * s), `steer-${s}`, fin) }], hyperparameters: hp });
  const full = at(1);
  t.equal(full.steer_toward_before, 0, 'the base model\'s works_for prompts read as works_for downstream');
  t.ok(full.steer_shift >= 0.9, `scale 1 moves them to lives_in (${full.steer_toward})`);
  t.ok(full.steer_kept >= 0.9, `and keeps lives_in prompts there (${full.steer_kept})`);
  t.equal(full.erasure_probe_gap, undefined, 'no erasure gate for a steering adapter');
  t.match(logs.join('\n'), /steering probe of relation at layers\.3\.resid_post/, 'read at the last layer\'s residual stream');
  const none = at(0);
  t.equal(none.steer_shift, 0, 'a zero vector moves nothing');
  const verdict = checkGates(none, resolveGates());
  t.ok(verdict.gates.includes('steer_shift>=0.5'), 'the default steering gate applies');
  t.notOk(verdict.pass, 'and fails a vector that steers nothing');
  t.ok(checkGates({ steer_shift: full.steer_shift }, resolveGates()).pass, 'and passes one that steers');
  const away = at(-1);
  t.equal(away.steer_toward, 0, 'the opposite vector moves nothing toward lives_in');
  t.ok(away.steer_kept < full.steer_kept, `and pulls lives_in prompts away (${away.steer_kept})`);
  t.same(erasureMetrics(ctx, { id: 'x', active: [], hyperparameters: { ...hp, toward: 'nobody' } }), {}, 'a label no record has: nothing measured');
});
