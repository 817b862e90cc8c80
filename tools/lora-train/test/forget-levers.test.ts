/**
 * The two forgetting levers tried for issue 17 (README "Forgetting with the
 * abstain target"), both off by default: --forget-stop-p (the early stop
 * reads a forget row solved only when P(old) is also below it) and
 * --forget-loss log (log P(old) pushed down to --forget-floor instead of the
 * unlikelihood −log(1 − P(old)), whose push fades as P(old) gets small).
 * On the tiny golden gpt2 checkpoint, a few seconds.
 */
import t from 'tap';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel } from '@catechism/core/models';
import { LORA_DEFAULTS, LORA_METHOD_DEFAULTS, buildExamples, buildRetain, checkFact, editMethod, mlpOutModule, resolveTargets, solvedFraction, top1, trainLora } from '@catechism/core/edit';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const { model, tokenizer } = loadModel(path.join(ROOT, 'fixtures/golden/gpt2'));
const tok = tokenizer!;
const docs = ['the eiffel tower is in paris .', 'the colosseum is in rome .', 'the language of spain is spanish .', 'madrid is a city in spain .'];

function forgetExamples() {
  const prompt = 'the language of spain is';
  const base = top1(model, [tok.encode(prompt)])[0];
  const old = tok.decode([base]).replace(/^▁/, '').trim() || 'spanish';
  const f = checkFact({ kind: 'fact', id: 'g1', subject: 'spain', prompt: 'the language of {} is', target_true: old, op: 'forget' });
  return { exs: buildExamples(tok, { facts: [f], probes: [] }), base };
}

const pOld = (ids: number[], tokId: number) => Math.exp(model.logprobs([ids], [[tokId]])[0][0]);

t.test('--forget-stop-p is decided by the site unless given; --forget-loss defaults to unlikelihood', async (t) => {
  t.equal(LORA_METHOD_DEFAULTS.forgetStopP, undefined);
  t.equal(LORA_METHOD_DEFAULTS.forgetLoss, 'unlikelihood');
  const m = editMethod('lora')!;
  const flags = Object.fromEntries(Object.entries(m.options).map(([k, v]) => [k, v.default]));
  const o = m.parseOptions(flags) as typeof LORA_METHOD_DEFAULTS;
  t.equal(o.forgetStopP, undefined, 'not given: absent, so loraSiteOptions decides');
  t.equal((m.parseOptions({ ...flags, 'forget-stop-p': 0 }) as typeof LORA_METHOD_DEFAULTS).forgetStopP, 0, 'given: kept, 0 too');
  t.equal(o.forgetLoss, 'unlikelihood', '--forget-loss defaults to unlikelihood');
  t.equal((m.parseOptions({ ...flags, 'forget-loss': 'log', 'forget-stop-p': 0.01 }) as typeof LORA_METHOD_DEFAULTS).forgetLoss, 'log');
  t.throws(() => m.parseOptions({ ...flags, 'forget-loss': 'hinge' }), /--forget-loss: expected unlikelihood or log/);
});

t.test('--forget-stop-p: a forget row below top-1 but above the threshold is not solved', async (t) => {
  const { exs, base } = forgetExamples();
  model.setAdapters([]);
  const p = pOld(exs[0].promptIds, base);
  t.equal(solvedFraction(model, exs), 0, 'the base model still answers the old answer: unsolved');
  const o = {
    ...LORA_DEFAULTS, objective: 'sft' as const, targets: resolveTargets(model, [mlpOutModule(model, 0)], 0), name: 'stop-p', seed: 2,
    steps: 60, forgetFloor: 0.002, forgetWeight: 5,
  };
  const retain = buildRetain(tok, { documents: docs }, { seed: 1 });
  const r = trainLora(model, exs, retain, o);
  model.setAdapters([{ adapter: r.adapter }]);
  const after = pOld(exs[0].promptIds, base);
  t.ok(r.solved, 'trained: the old answer is no longer top-1');
  t.equal(solvedFraction(model, exs, 0), 1, 'solved by the top-1 rule');
  t.equal(solvedFraction(model, exs, after / 2), 0, `not solved under a threshold below its P(old) (${after.toFixed(4)}, base ${p.toFixed(3)})`);
  t.equal(solvedFraction(model, exs, Math.min(1, after * 2)), 1, 'solved under a threshold above it');
  model.setAdapters([]);
});

t.test('--forget-loss log pushes P(old) lower than the unlikelihood in the same steps', async (t) => {
  const { exs, base } = forgetExamples();
  const retain = buildRetain(tok, { documents: docs }, { seed: 1 });
  // a fixed number of steps (the stop threshold 1e-9 is never reached), the same seed and rows
  const o = {
    ...LORA_DEFAULTS, objective: 'sft' as const, targets: resolveTargets(model, [mlpOutModule(model, 0)], 0), name: 'loss', seed: 2,
    steps: 40, forgetFloor: 1e-6, forgetWeight: 1, forgetStopP: 1e-9, annealSteps: 0,
  };
  const ul = trainLora(model, exs, retain, { ...o, forgetLoss: 'unlikelihood' });
  const lg = trainLora(model, exs, retain, { ...o, forgetLoss: 'log' });
  t.equal(ul.steps, 40);
  t.equal(lg.steps, 40);
  model.setAdapters([{ adapter: ul.adapter }]);
  const pu = pOld(exs[0].promptIds, base);
  model.setAdapters([{ adapter: lg.adapter }]);
  const pl = pOld(exs[0].promptIds, base);
  model.setAdapters([]);
  t.ok(pl < pu, `P(old) ${pl.toExponential(2)} (log) < ${pu.toExponential(2)} (unlikelihood)`);
});
