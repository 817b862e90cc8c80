/**
 * distillEdits in one process on the MoE fixture model (the model loaded
 * once): --router-only adapts the gates alone and --experts-only the experts
 * alone (no gate, no router KL); training on one fact makes it (the default
 * layer and schedule recorded, the rate decayed by the end; --schedule
 * constant keeps it); layer and
 * expert counts the model does not have are usage errors; locus records
 * choose the experts.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { UsageError, type InputRecord } from '@catechism/core/records';
import { top1, encodeTrainingPair, subjectSpan, type Example } from '@catechism/core/edit';
import type { Tensor } from '@catechism/core/tensor';
import { loadLora } from '@catechism/core/models';
import { postSubjectPositions } from '../src/distill.js';
import { Rng } from '@catechism/core/random';
import { subjectFactSentences } from '../src/lib.js';
import { DEFAULT_ARGS, distillEdits, lociExperts, loadResources, lookalikePrompts, planBatches, type DistillArgs } from '../src/lib.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cat-moe-lib-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const res = loadResources({ model: path.join(ROOT, 'fixtures/models/moe'), useTemplates: true });
const { model, tokenizer } = res;
const moe = (l: number) => model.arch.layer(l).moe!;

const fact = { kind: 'fact', id: 'edit-0003', subject: 'Kani Alu Tenberov', prompt: '{} plays the', target_new: 'drums', target_true: 'harp', relation: 'plays_instrument', op: 'insert', source: 'w' };
const inputs = (extra: Record<string, unknown>[] = []): InputRecord[] => [fact, ...extra].map((record, i) => ({ record: record as InputRecord['record'], source: 'test', index: i + 1 }));
const base: DistillArgs = { ...DEFAULT_ARGS, seed: 0, retainFacts: 50, neighbours: 5, steps: 6, phaseASteps: 3 };
const quiet = { log: () => {} };

t.test('--router-only: gates alone; --experts-only: experts alone', async (t) => {
  const ro = await distillEdits(inputs(), { ...base, routerOnly: true, layers: [1, 2], out: path.join(tmp, 'ro') }, res, quiet);
  t.same(ro.adapters[0].targets, [moe(1).router, moe(2).router]);
  const eo = await distillEdits(inputs(), { ...base, expertsOnly: true, layers: [0], expertsPerLayer: 1, expertInputs: false, out: path.join(tmp, 'eo') }, res, quiet);
  const tg = eo.adapters[0].targets;
  t.equal(tg.length, 1);
  t.ok(Array.from({ length: model.config.experts }, (_, e) => moe(0).expert(e).out).includes(tg[0]), `${tg[0]} is an expert of layer 0`);
  const man = JSON.parse(fs.readFileSync(path.join(eo.adapters[0].path, 'catechism.json'), 'utf8'));
  t.same(man.training.adapted.routers, [], 'no gate adapted');
  t.match(man.hyperparameters, { router: false, experts: true, layers: [0] });
});

t.test('the default run makes the edit: target_new becomes top-1 on the prompt', async (t) => {
  const r = await distillEdits(inputs(), { ...base, steps: 60, phaseASteps: 0, out: path.join(tmp, 'full') }, res, quiet);
  const { promptIds, targetIds } = encodeTrainingPair(tokenizer, 'Kani Alu Tenberov plays the', 'drums');
  t.not(top1(model, [promptIds])[0], targetIds[0], 'the base model does not say it');
  model.setAdapters([{ adapter: loadLora(r.adapters[0].path) }]);
  t.equal(top1(model, [promptIds])[0], targetIds[0], 'the adapted model does');
  model.setAdapters([]);
  // the defaults: the last layer, every expert's input and output projections, teacher terms only where the
  // teacher states the target, a KL budget, lora-train's cosine schedule: the rate has decayed by the last step
  const man = JSON.parse(fs.readFileSync(path.join(r.adapters[0].path, 'catechism.json'), 'utf8'));
  const last = model.config.layers - 1;
  t.match(man.hyperparameters, { layers: [last], experts_per_layer: 0, expert_inputs: true, drop_teacher_misses: true, kl_budget: 0.01, schedule: 'cosine', warmup_steps: 10, anneal_steps: 50, retain_phrasings: 3 });
  t.equal(r.adapters[0].targets.length, 1 + 3 * model.config.experts, 'the gate and w1, w3, w2 of every expert');
  t.ok(man.training.last_lr < 0.1 * DEFAULT_ARGS.lr, `last rate ${man.training.last_lr} < 10% of ${DEFAULT_ARGS.lr} (cosine or anneal)`);
  // --schedule constant keeps the rate
  const c = await distillEdits(inputs(), { ...base, steps: 4, phaseASteps: 0, schedule: 'constant', out: path.join(tmp, 'const') }, res, quiet);
  const mc = JSON.parse(fs.readFileSync(path.join(c.adapters[0].path, 'catechism.json'), 'utf8'));
  t.equal(mc.training.last_lr, DEFAULT_ARGS.lr, 'constant: the last step at the full rate');
  t.notOk('schedule' in mc.hyperparameters);
});

t.test('layers and experts the model does not have are usage errors; locus records choose the experts', async (t) => {
  await t.rejects(distillEdits(inputs(), { ...base, layers: [9], out: path.join(tmp, 'x') }, res, quiet), new UsageError('--layers 9: the model has 4 layers (0–3)'));
  await t.rejects(distillEdits(inputs(), { ...base, expertsPerLayer: 5, out: path.join(tmp, 'x') }, res, quiet), /--experts-per-layer 5: the model has 4 experts/);
  const loci = [
    { kind: 'locus', fact_id: 'edit-0003', site: 'layers.2.experts.1', layer: 2, expert: 1, method: 'expert', score: 0.5, rank: 2 },
    { kind: 'locus', fact_id: 'edit-0003', site: 'layers.2.experts.3', layer: 2, expert: 3, method: 'expert', score: -0.9, rank: 1 },
  ];
  t.same(lociExperts(loci), [{ layer: 2, expert: 3 }, { layer: 2, expert: 1 }], 'best |score| first');
  t.equal(planBatches(inputs(loci), 0)[0].loci.length, 2);
  // with a KL budget no edit can keep (--kl-budget): the dual ascent raises the retention multiplier to --dual-max at the first check
  const r = await distillEdits(inputs(loci), { ...base, expertsOnly: true, layers: [2], expertsPerLayer: 2, expertInputs: false, klBudget: 1e-9, klMonitor: 8, out: path.join(tmp, 'loci') }, res, quiet);
  t.same(r.adapters[0].targets, [moe(2).expert(1).out, moe(2).expert(3).out], 'the experts the loci name');
  const man = JSON.parse(fs.readFileSync(path.join(r.adapters[0].path, 'catechism.json'), 'utf8'));
  t.match(man.hyperparameters, { kl_budget: 1e-9, kl_monitor: 8, dual_max: DEFAULT_ARGS.dualMax });
  t.equal(man.training.dual_lambda, DEFAULT_ARGS.dualMax, 'λ at --dual-max');
  t.ok(man.training.monitor_kl > 0, `monitor kl ${man.training.monitor_kl}`);
});

t.test('--lookalikes: the edited subject\'s other relations first, then subjects sharing a token, every training phrasing', async (t) => {
  const f = fact as unknown as Parameters<typeof lookalikePrompts>[1][number];
  const own = lookalikePrompts(res, [f], 5, 0);
  t.ok(own.length > 5, `${own.length} prompts`);
  t.ok(own.every((p) => p.includes('Kani Alu Tenberov')), 'five facts: the subject\'s own other relations');
  t.notOk(own.some((p) => p.includes(' plays the')), 'not the edited relation of the edited subject');
  const more = lookalikePrompts(res, [f], 12, 0);
  const others = more.filter((p) => !p.includes('Kani Alu Tenberov'));
  t.ok(others.length > 0 && others.every((p) => /\b(Kani|Alu|Tenberov)\b/.test(p)), 'then other subjects that share a token');
  t.same(lookalikePrompts(res, [f], 0, 0), []);
});

t.test('--pin-weight: the adapted layer\'s block output after the subject stays nearer the base model\'s', async (t) => {
  const { promptIds } = encodeTrainingPair(tokenizer, 'Kani Alu Tenberov plays the', 'drums');
  const [, s1] = subjectSpan(tokenizer, promptIds, 'Kani Alu Tenberov');
  t.ok(s1 > 0 && s1 < promptIds.length, 'words follow the subject');
  t.same(postSubjectPositions({ promptIds, subjectStart: 0, subjectEnd: s1 } as Example), Array.from({ length: promptIds.length - s1 }, (_, i) => s1 + i));
  t.same(postSubjectPositions({ promptIds, subjectStart: -1, subjectEnd: -1 } as Example), [], 'no subject, no pin');
  const H = model.config.hidden;
  // layer 1's MoE block output at the tokens after the subject, with the adapter on
  const blockAfterSubject = (adapterPath?: string): Float32Array => {
    model.setAdapters(adapterPath ? [{ adapter: loadLora(adapterPath) }] : []);
    const got = new Map<string, Tensor>();
    model.forward(Int32Array.from(promptIds), [1, promptIds.length], { skipLogits: true, hooks: { 'layers.1.mlp': { capture: (x) => got.set('l1', x) } } });
    model.setAdapters([]);
    return got.get('l1')!.data.slice(s1 * H, promptIds.length * H);
  };
  const before = blockAfterSubject();
  const change = (p: string) => {
    const after = blockAfterSubject(p);
    let d = 0;
    for (let i = 0; i < after.length; i++) d += (after[i] - before[i]) ** 2;
    return Math.sqrt(d);
  };
  // at layer 1 with its two most-used experts' output projections (the defaults before the last layer's)
  const layer1 = { layers: [1], expertsPerLayer: 2, expertInputs: false, klBudget: 0 };
  const run = (pinWeight: number, dir: string) => distillEdits(inputs(), { ...base, ...layer1, steps: 40, phaseASteps: 0, mseWeight: 0, pinWeight, out: path.join(tmp, dir) }, res, quiet);
  const free = change((await run(0, 'pin0')).adapters[0].path);
  const pinned = change((await run(100, 'pin100')).adapters[0].path);
  t.ok(pinned < 0.5 * free, `change after the subject: ${pinned.toFixed(3)} pinned vs ${free.toFixed(3)} free`);
});

t.test('--subject-prefixes: sentences stating the subject\'s other known facts, true objects, never the edited relation', async (t) => {
  const got = subjectFactSentences(res.known, res.templates, 'Kani Alu Tenberov', 'plays_instrument', new Rng(0));
  t.equal(got.length, 5, 'born_in, lives_in, works_for, speaks, plays_sport');
  for (const obj of ['Reyost', 'Portu', 'Nordatex', 'Quidorish', 'hockey']) t.ok(got.some((x) => x.includes('Kani Alu Tenberov') && x.endsWith(` ${obj}.`)), `states ${obj}`);
  t.notOk(got.some((x) => x.includes('harp')), 'not the edited relation');
  t.same(subjectFactSentences(res.known, res.templates, 'Kani Alu Tenberov', 'plays_instrument', new Rng(0)), got, 'seeded');
  t.same(subjectFactSentences(res.known, res.templates, 'Nobody Known', 'plays_instrument', new Rng(0)), []);
});

t.test('--expert-inputs: the chosen experts\' gate and up projections get a LoRA too, and train', async (t) => {
  const r = await distillEdits(inputs(), { ...base, expertsOnly: true, expertInputs: true, layers: [3], expertsPerLayer: 1, steps: 10, phaseASteps: 0, out: path.join(tmp, 'inputs') }, res, quiet);
  const tg = r.adapters[0].targets;
  const e = Array.from({ length: model.config.experts }, (_, i) => i).find((i) => tg.includes(moe(3).expert(i).out))!;
  t.same([...tg].sort(), [...moe(3).expert(e).in, moe(3).expert(e).out].sort(), 'w1, w3 and w2 of one expert');
  const ad = loadLora(r.adapters[0].path);
  for (const name of moe(3).expert(e).in) {
    const B = ad.modules.get(name)!.B.data;
    t.ok(B.some((v) => v !== 0), `${name}: lora_B moved from its zero start`);
  }
  const man = JSON.parse(fs.readFileSync(path.join(r.adapters[0].path, 'catechism.json'), 'utf8'));
  t.match(man.hyperparameters, { expert_inputs: true });
});

t.test('--drop-teacher-misses: rows whose teacher does not state the target learn from CE alone', async (t) => {
  // a city as the instrument: the teacher does not repeat it from its context on any training row
  const odd = { ...fact, id: 'odd', target_new: 'Tamport' };
  const run = async (drop: boolean, dir: string) => {
    const logs: string[] = [];
    const r = await distillEdits(inputs().map((x) => ({ ...x, record: odd as InputRecord['record'] })), { ...base, steps: 60, phaseASteps: 0, dropTeacherMisses: drop, out: path.join(tmp, dir) }, res, { log: (m: string) => logs.push(m) });
    const man = JSON.parse(fs.readFileSync(path.join(r.adapters[0].path, 'catechism.json'), 'utf8'));
    // the loss terms of each progress line (not the KL budget's monitor that may follow them)
    const terms = logs.map((m) => /mean of the last \d+: ([^)]*)\)/.exec(m)?.[1]).filter((x) => x !== undefined);
    return { man, terms: terms.join('\n'), path: r.adapters[0].path };
  };
  const kept = await run(false, 'teach-all');
  t.equal(kept.man.training.teacher_stated, 0, 'the teacher states the target on no row');
  t.match(kept.terms, /\bkl \d/, 'without the flag the wrong teacher is still distilled (next-token KL)');
  t.match(kept.terms, /\brouter \d/);
  const dropped = await run(true, 'teach-none');
  t.match(dropped.man.hyperparameters, { drop_teacher_misses: true });
  t.notMatch(dropped.terms, /\bkl \d|\brouter \d|\bmse\d/, 'with it: no teacher term at all');
  t.match(dropped.terms, /\bce \d/);
  const { promptIds, targetIds } = encodeTrainingPair(tokenizer, 'Kani Alu Tenberov plays the', 'Tamport');
  model.setAdapters([{ adapter: loadLora(dropped.path) }]);
  t.equal(top1(model, [promptIds])[0], targetIds[0], 'CE alone makes the edit');
  model.setAdapters([]);
});
