/**
 * Early stop under the cosine schedule (issue 17): when every train row is
 * solved and the loss stalls while the rate is still near its peak, training
 * anneals the rate to 0 over `annealSteps` more steps instead of stopping at
 * the peak (the demo's 3 edits stopped at step 50 of 400 at lr 0.0098, and
 * validate refused the adapter: kl 0.055 > 0.05; with the anneal, kl 0.022).
 * On the tiny golden gpt2 checkpoint, a second or two. And the step cap
 * grows with a batch beyond 10 facts (30 edits: kl 0.062 in 400 steps,
 * 0.043 in 1,200, tuning requests 1–30).
 */
import t from 'tap';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel } from '@catechism/core/models';
import { BATCH_DEFAULTS, LORA_DEFAULTS, annealLr, stepCap, prefixedExamples, buildExamples, buildRetain, checkFact, mlpOutModule, resolveTargets, top1, trainLora } from '@catechism/core/edit';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const { model, tokenizer } = loadModel(path.join(ROOT, 'fixtures/golden/gpt2'));
const tok = tokenizer!;
const fact = checkFact({ kind: 'fact', id: 'f1', subject: 'france', prompt: 'the capital of {} is', target_new: 'rome', target_true: 'paris', op: 'insert', source: 'test', author: 'tester', confidence: 0.8 });
const probes = [{ kind: 'probe', fact_id: 'f1', role: 'edit', split: 'train', prompt: 'the capital of france is', target: 'rome', expect: 'new' }];
const docs = ['the eiffel tower is in paris .', 'the colosseum is in rome .', 'the language of spain is spanish .', 'madrid is a city in spain .'];

t.test('annealLr: cosine from the rate at the stop to 0 at the end, never 0 before it', async (t) => {
  const a = { from: 50, end: 100, lr: 0.01 };
  t.ok(annealLr(50, a) < 0.01 && annealLr(50, a) > 0.0099, 'first anneal step just below the stop rate');
  t.ok(Math.abs(annealLr(74, a) - 0.005) < 1e-3, 'about half-way, half the rate');
  t.ok(annealLr(99, a) > 0 && annealLr(99, a) < 0.01 * 0.002, 'last step near 0, not 0');
  let falls = true;
  for (let s = 51; s < 100; s++) falls &&= annealLr(s, a) < annealLr(s - 1, a);
  t.ok(falls, 'falls at every step');
});

t.test('an early stop at a high cosine rate anneals to 0 first; annealSteps 0 stops at the high rate', async (t) => {
  const exs = buildExamples(tok, { facts: [fact], probes });
  const retain = buildRetain(tok, { documents: docs }, { seed: 1 });
  const o = {
    ...LORA_DEFAULTS, objective: 'sft' as const, targets: resolveTargets(model, [mlpOutModule(model, 0)], 0), name: 'early', seed: 7,
    steps: 400, schedule: 'cosine' as const, warmupSteps: 10,
  };
  const old = trainLora(model, exs, retain, { ...o, annealSteps: 0 });
  t.ok(old.solved && old.steps < 200, `stops early (step ${old.steps} of 400)`);
  t.ok(old.lastLr > 0.5 * o.lr, `without the anneal it stops at a high rate (${old.lastLr.toExponential(2)})`);
  const r = trainLora(model, exs, retain, { ...o, annealSteps: 30 });
  t.equal(r.steps, old.steps + 30, 'the same stop, then 30 anneal steps');
  t.ok(r.lastLr < 0.01 * o.lr, `ends near rate 0 (${r.lastLr.toExponential(2)})`);
  t.ok(r.solved, 'the edit still holds after the anneal');
  model.setAdapters([{ adapter: r.adapter }]);
  t.equal(top1(model, [exs[0].promptIds])[0], exs[0].targetIds[0], 'the edited model answers rome');
  model.setAdapters([]);
  const c = trainLora(model, exs, retain, { ...o, schedule: 'constant', annealSteps: 30 });
  t.ok(c.steps < 400 && c.lastLr === o.lr, `a constant rate has nothing to anneal: stops early at lr (step ${c.steps})`);
});

t.test('stepCap: --steps up to --scale-steps-above facts, in proportion beyond', async (t) => {
  const d = BATCH_DEFAULTS;
  t.equal(d.steps, 400);
  t.equal(stepCap(d, 3), 400, '3 facts: the cap');
  t.equal(stepCap(d, 10), 400, '10 facts: the cap');
  t.equal(stepCap(d, 30), 1200, '30 facts: three times');
  t.equal(stepCap(d, 15), 600);
  t.equal(stepCap({ ...d, scaleStepsAbove: 0 }, 30), 400, '0: no scaling');
});

t.test('prefixedExamples (--prefix-rows): each insert prompt again after a prefix, the teacher reads context + prefixed prompt', async (t) => {
  const exs = buildExamples(tok, { facts: [fact], probes });
  const pre = ['the weather was fine.', 'in the morning.', 'a short note.'];
  const px = prefixedExamples(tok, exs, { facts: [fact], probes }, pre, 2, 0);
  t.equal(px.length, 2 * exs.length, 'two copies per plain row');
  for (const e of px) {
    const p = pre.find((x) => e.prompt.startsWith(`${x} `));
    t.ok(p, `prefixed: ${e.prompt}`);
    t.equal(e.prompt.slice(p!.length + 1), exs[0].prompt, 'then the plain prompt');
    t.same(e.targetIds, exs[0].targetIds, 'the same target');
    t.ok(e.subjectStart > 0 && tok.decode(e.promptIds.slice(e.subjectStart, e.subjectEnd)).trim() === 'france', 'subject found after the prefix');
    t.ok(tok.decode(e.teacherIds!).endsWith(e.prompt) && tok.decode(e.teacherIds!).includes('rome'), 'teacher: the fact in context, then the prefixed prompt');
  }
  t.equal(new Set(px.map((e) => e.prompt)).size, 2, 'no prefix twice for one row');
  t.same(prefixedExamples(tok, exs, { facts: [fact], probes }, pre, 0, 0), [], '0: none');
  const forget = buildExamples(tok, { facts: [{ ...fact, op: 'forget' }], probes });
  t.same(prefixedExamples(tok, forget, { facts: [{ ...fact, op: 'forget' }], probes }, pre, 2, 0), [], 'forget rows are not copied');
});
