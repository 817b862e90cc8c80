/**
 * What validate reads beyond teacher forcing: greedy answers
 * (efficacy_gen, generalisation_gen, forget_gen), paraphrases that cannot
 * test generalisation, neighbours of forgotten facts, standard errors.
 * Checked against independent computations (model.generate, direct
 * forwards) on the golden GPT-2 and the fixture knowledge model.
 */
import t from 'tap';
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel } from '../src/models/index.js';
import { noGrad } from '../src/tensor/index.js';
import {
  answerContains, answerBeginsWith, buildSuite, computeMetricsSe, encodePair, encodeSuite, observe, seOfMean, seOfRatio,
} from '../src/metrics/index.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const GOLDEN = path.join(root, 'fixtures/golden/gpt2');
const DENSE = path.join(root, 'fixtures/models/dense');
const WORLD = path.join(root, 'fixtures/world');

t.test('answerBeginsWith / answerContains: whole words only', async (t) => {
  t.ok(answerBeginsWith('Paris is nice', 'Paris'));
  t.ok(answerBeginsWith('Paris.', ' Paris'));
  t.ok(answerBeginsWith('Paris', 'Paris'));
  t.notOk(answerBeginsWith('Parisian food', 'Paris'), 'a longer word is another answer');
  t.notOk(answerBeginsWith('the Paris', 'Paris'));
  t.notOk(answerBeginsWith('anything', ''));
  t.ok(answerContains('maybe football, or tennis.', 'football'));
  t.ok(answerContains('football', 'football'));
  t.notOk(answerContains('footballer of the year', 'football'));
  t.notOk(answerContains('tennis. Later: football', 'football'), 'only up to the first sentence end');
  t.notOk(answerContains('the footballer and football', 'ball'));
  t.ok(answerContains('the footballer and football', 'football'), 'a later whole-word match counts');
});

t.test('standard errors: mean and ratio estimators', async (t) => {
  t.ok(Math.abs(seOfMean([1, 2, 3, 4]) - Math.sqrt(5 / 3) / 2) < 1e-12);
  t.ok(Number.isNaN(seOfMean([1])));
  // R = 3/2; residuals −0.5, 0.5: √(0.5 / 2) / 1
  t.ok(Math.abs(seOfRatio([1, 2], [1, 1]) - 0.5) < 1e-12);
});

t.test('efficacy_gen reads greedy generation: a first token right and the rest wrong is not a success', async (t) => {
  const { model, tokenizer } = loadModel(GOLDEN);
  const tok = tokenizer!;
  const prompts = ['the capital of france is', 'the language of spain is', 'the city of rome is', 'the eiffel tower is in', 'madrid is a city in'];
  // targets whose first token is the greedy one and whose second is not: teacher-forced top-1 says yes, generation no
  const mirage: Array<{ prompt: string; target: string }> = [];
  const greedyTargets: Array<{ prompt: string; target: string }> = [];
  const after = (ids: number[], out: number[]): string =>
    tok.decode(ids.concat(out), { skipSpecialTokens: true }).slice(tok.decode(ids, { skipSpecialTokens: true }).length).trim();
  for (const prompt of prompts) {
    const ids = tok.encode(prompt);
    const gen = model.generate([ids], { maxNewTokens: 3, greedy: true, eosTokenId: null })[0];
    const written = after(ids, gen);
    greedyTargets.push({ prompt, target: after(ids, gen.slice(0, 1)) });
    for (let x = 0; x < model.config.vocabSize; x++) {
      if (x === gen[1]) continue;
      const target = after(ids, [gen[0], x]);
      const cont = encodePair(tok, prompt, target).cont;
      if (cont.length === 2 && cont[0] === gen[0] && cont[1] === x && !answerBeginsWith(written, target)) {
        mirage.push({ prompt, target });
        break;
      }
    }
  }
  t.ok(mirage.length >= 2, `${mirage.length} two-token targets with the greedy first token`);
  const facts = [
    ...mirage.map((m, i) => ({ id: `m${i}`, subject: '', prompt: m.prompt, target_new: m.target })),
    ...greedyTargets.map((g, i) => ({ id: `g${i}`, subject: '', prompt: g.prompt, target_new: g.target })),
  ];
  const enc = encodeSuite(tok, buildSuite(facts, []), { maxLength: model.config.maxPositions });
  const before = observe(model, tok, enc, { noGeneration: true });
  // independent: the greedy continuation of each edit prompt, long enough for its target and one more token
  let genOk = 0;
  let top1 = 0;
  enc.suite.edit.forEach((it, i) => {
    const e = enc.items.edit[i];
    const out = model.generate([e.prompt], { maxNewTokens: e.target.length + 1, greedy: true })[0];
    const p = tok.decode(e.prompt, { skipSpecialTokens: true });
    const text = tok.decode(e.prompt.concat(out), { skipSpecialTokens: true }).slice(p.length).trimStart();
    if (answerBeginsWith(text, it.target)) genOk++;
    const { logits } = noGrad(() => model.forward(Int32Array.from(e.prompt), [1, e.prompt.length], { logitsAt: Int32Array.of(e.prompt.length - 1) }));
    let b = 0;
    for (let v = 1; v < logits.data.length; v++) if (logits.data[v] > logits.data[b]) b = v;
    if (b === e.target[0]) top1++;
  });
  const { metrics } = computeMetricsSe(enc, before, before);
  t.equal(metrics.efficacy, top1 / facts.length);
  t.equal(metrics.efficacy_gen, genOk / facts.length, 'efficacy_gen matches model.generate');
  t.ok(metrics.efficacy_gen < metrics.efficacy, `generation (${metrics.efficacy_gen}) is stricter than teacher-forced top-1 (${metrics.efficacy})`);
  const firstMirage = enc.suite.edit.findIndex((it) => it.fact_id === 'm0');
  t.notOk(answerBeginsWith(before.answers.edit[firstMirage], enc.suite.edit[firstMirage].target), 'the mirage target is not what the model writes');
});

const dense = existsSync(path.join(DENSE, 'config.json'));
t.test('paraphrases the base model cannot answer are left out of generalisation; forget facts get neighbours and forget_gen', { skip: dense ? false : 'no fixture model' }, async (t) => {
  const { model, tokenizer } = loadModel(DENSE);
  const tok = tokenizer!;
  const heldout = readFileSync(path.join(WORLD, 'eval/facts-heldout.ndjson'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, string>);
  const paras = heldout.filter((p) => p.fact_id === 'located_in:Dunostrey');
  t.ok(paras.length >= 2);
  const top1 = (prompt: string): number => {
    const ids = tok.encode(prompt);
    const { logits } = noGrad(() => model.forward(Int32Array.from(ids), [1, ids.length], { logitsAt: Int32Array.of(ids.length - 1) }));
    let b = 0;
    for (let v = 1; v < logits.data.length; v++) if (logits.data[v] > logits.data[b]) b = v;
    return b;
  };
  // independent: which paraphrases the base model answers with the true answer
  const known = paras.filter((p) => top1(p.prompt) === encodePair(tok, p.prompt, 'Kagoria').cont[0]);
  t.ok(known.length < paras.length, `"can be found in" is not answered (${paras.length - known.length} of ${paras.length})`);
  const fact = { id: 'f', subject: 'Dunostrey', prompt: '{} is a city in', target_new: 'Tenluia', target_true: 'Kagoria', relation: 'located_in' };
  const forget = { id: 'g', subject: 'Tamport', prompt: '{} is located in', target_true: 'Tenluia', relation: 'located_in', op: 'forget' };
  const probes = [
    ...paras.map((p) => ({ fact_id: 'f', role: 'paraphrase', split: 'test', prompt: p.prompt })),
    { fact_id: 'g', role: 'neighborhood', split: 'test', prompt: 'Dunostrey is a city in', target: 'Kagoria' },
    { fact_id: 'g', role: 'neighborhood', split: 'train', prompt: 'Dunostrey is located in', target: 'Kagoria' },
  ];
  const suite = buildSuite([fact, forget], probes);
  t.same(suite.neighborhood.map((n) => [n.fact_id, n.prompt]), [['g', 'Dunostrey is a city in']], 'a forget fact\'s held-out neighbour is scored');
  const enc = encodeSuite(tok, suite, { maxLength: model.config.maxPositions });
  const before = observe(model, tok, enc, { noGeneration: true });
  const { metrics, se } = computeMetricsSe(enc, before, before);
  t.equal(metrics.n_paraphrase, known.length);
  t.equal(metrics.n_paraphrase_excluded, paras.length - known.length);
  t.equal(metrics.generalisation, 0, 'the base model does not give the new answer');
  t.equal(metrics.n_neighborhood, 1);
  t.equal(metrics.specificity, 1);
  // the base model still knows the fact to forget: its greedy answer contains it
  t.equal(top1('Tamport is located in'), encodePair(tok, 'Tamport is located in', 'Tenluia').cont[0]);
  t.equal(metrics.forget_top1, 1);
  t.equal(metrics.forget_gen, 1, 'the old answer is in the greedy answer');
  t.equal(se.forget_gen, 0);
  t.equal(metrics.n_unknown_target, 0);
});
