/**
 * KL-constrained LoRA training (lora-train --kl-budget, issue 17): the dual
 * ascent step on the retention multiplier, the monitor prompts held aside
 * from the retention rows (training phrasings only, never a retain prompt,
 * the retain prompts unchanged), and trainLora's constraint on the golden
 * gpt2 checkpoint: a budget never reached changes nothing, a budget always
 * exceeded drives the multiplier to its bound and lowers the monitor KL.
 */
import t from 'tap';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel } from '../src/models/index.js';
import {
  LORA_DEFAULTS, buildExamples, buildRetain, checkFact, mlpOutModule, resolveTargets, trainLora, type LoraTrainOptions, type TemplateBank,
} from '../src/edit/index.js';
import { dualStep, monitorKl } from '../src/edit/lora-train.js';
import { knownFactRetainPrompts, knownFactRetainSplit } from '../src/edit/quality.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const GPT2 = path.join(ROOT, 'fixtures/golden/gpt2');

t.test('dualStep: raises λ over the budget, lowers it under, within its bounds', async (t) => {
  const o = { budget: 0.02, rate: 0.1, min: 1, max: 8 };
  t.ok(Math.abs(dualStep(2, 0.04, o) - 2 * Math.exp(0.1)) < 1e-12, 'kl twice the budget: log λ += rate');
  t.ok(Math.abs(dualStep(2, 0.01, o) - 2 * Math.exp(-0.05)) < 1e-12, 'kl half the budget: log λ −= rate/2');
  t.equal(dualStep(3, 0.02, o), 3, 'at the budget: unchanged');
  t.equal(dualStep(1, 0, o), 1, 'never below min');
  t.equal(dualStep(7.9, 1, o), 8, 'never above max');
});

t.test('knownFactRetainSplit: the retain prompts unchanged; the monitor only unused training phrasings', async (t) => {
  const bank: TemplateBank = {
    train: new Map([['r1', ['a {} one', 'a {} two', 'a {} three', 'a {} four']], ['r2', ['b {} one', 'b {} two']]]),
    heldout: new Map([['r1', ['a {} held']], ['r2', ['b {} held']]]),
    contextFrames: [],
  };
  const known = Array.from({ length: 40 }, (_, i) => ({ subject: `s${i}`, relation: i % 2 ? 'r1' : 'r2', prompt: 'x {}', target_true: 'y' }));
  const edited = [{ subject: 's3', relation: 'r1' }];
  for (const phrasings of [1, 2, 3]) {
    for (const n of [40, 10]) {
      const s = knownFactRetainSplit(known, bank, edited, n, 5, phrasings, 12);
      t.same(s.retain, knownFactRetainPrompts(known, bank, edited, n, 5, phrasings), `phrasings ${phrasings}, n ${n}: the same retain prompts`);
      const retain = new Set(s.retain);
      t.ok(s.monitor.length > 0 && s.monitor.length <= 12, `${s.monitor.length} monitor prompts`);
      t.same(s.monitor.filter((m) => retain.has(m)), [], 'no monitor prompt is a retain prompt');
      t.same(s.monitor.filter((m) => m.includes('held')), [], 'no held-out phrasing');
      t.same(s.monitor.filter((m) => m.startsWith('a s3 ')), [], 'never the edited fact');
      // r2 has two phrasings: at phrasings ≥ 2 every r2 fact in the retain set has none left
      if (phrasings >= 2 && n === 40) t.notOk(s.monitor.some((m) => m.startsWith('b')), 'a relation with no phrasing left is skipped');
    }
  }
  t.same(knownFactRetainSplit(known, bank, edited, 40, 5, 3, 0).monitor, [], 'monitor 0: none');
});

t.test('trainLora --kl-budget on golden gpt2: an unreachable budget changes nothing; a tight one lowers the monitor KL', async (t) => {
  const { model, tokenizer } = loadModel(GPT2);
  const tok = tokenizer!;
  const fact = checkFact({ kind: 'fact', id: 'f1', subject: 'france', prompt: 'the capital of {} is', target_new: 'rome', target_true: 'paris', op: 'insert', source: 'test', author: 'tester', confidence: 0.8 });
  const probes = [{ kind: 'probe', fact_id: 'f1', role: 'edit', split: 'train', prompt: 'the capital of france is', target: 'rome', expect: 'new' }];
  const exs = buildExamples(tok, { facts: [fact], probes });
  const retain = buildRetain(tok, { documents: ['the eiffel tower is in paris .', 'madrid is a city in spain .'], prompts: ['the capital of spain is', 'the capital of italy is'] }, { seed: 1 });
  const monitor = buildRetain(tok, { prompts: ['the capital city of spain is', 'the capital city of italy is', 'the colosseum is in', 'the language of spain is'] }, { seed: 2 });
  const o: LoraTrainOptions = {
    ...LORA_DEFAULTS, objective: 'sft', targets: resolveTargets(model, [mlpOutModule(model, 0)], 0), name: 'kl', steps: 40, seed: 3, lr: 3e-2, annealSteps: 0,
  };
  const w = (r: ReturnType<typeof trainLora>) => r.adapter.parameters().map((p) => Array.from(p.data));
  const free = trainLora(model, exs, retain, o);
  const loose = trainLora(model, exs, retain, { ...o, klBudget: 1e6, monitor, dualRate: 0.5 });
  t.same(w(loose), w(free), 'a budget never reached: λ stays 1, the same weights');
  t.equal(loose.dualLambda, 1);
  t.equal(monitorKl(model, [], []), 0, 'no rows: 0');
  const tight = trainLora(model, exs, retain, { ...o, klBudget: 1e-6, monitor, dualRate: 0.5, dualMax: 8 });
  t.equal(tight.dualLambda, 8, 'a budget always exceeded: λ at its bound');
  t.ok(tight.monitorKl! < loose.monitorKl!, `monitor KL ${tight.monitorKl!.toExponential(2)} < ${loose.monitorKl!.toExponential(2)} unconstrained`);
  t.ok(loose.monitorKl! > 0, 'the edit moved the monitor prompts at all');
});
