/**
 * Scoring and metrics against an independent computation: one unbatched,
 * unpadded model.forward per sequence with full logits, log-softmax and KL
 * recomputed here in float64.
 */
import t from 'tap';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel, type CausalLM } from '../src/models/index.js';
import { noGrad } from '../src/tensor/index.js';
import { buildSuite, computeMetrics, encodePair, encodeSuite, observe, scoreSequences } from '../src/metrics/index.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const golden = (arch: string) => path.join(root, 'fixtures/golden', arch);

/** Full logits [T, V] of one sequence, as float64 log-probs. */
function refLogprobs(model: CausalLM, ids: number[]): Float64Array[] {
  const V = model.config.vocabSize;
  const { logits } = noGrad(() => model.forward(Int32Array.from(ids), [1, ids.length]));
  const out: Float64Array[] = [];
  for (let t = 0; t < ids.length; t++) {
    const row = Array.from(logits.data.subarray(t * V, (t + 1) * V));
    const m = Math.max(...row);
    const lse = m + Math.log(row.reduce((s, x) => s + Math.exp(x - m), 0));
    out.push(Float64Array.from(row, (x) => x - lse));
  }
  return out;
}

const argmax = (a: ArrayLike<number>): number => {
  let b = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[b]) b = i;
  return b;
};

for (const arch of ['gpt2', 'llama']) {
  t.test(`${arch}: scoreSequences = unbatched forward + own log-softmax`, async (t) => {
    const { model, tokenizer } = loadModel(golden(arch));
    const tok = tokenizer!;
    const texts: Array<[string, string]> = [
      ['the capital of france is', 'paris'],
      ['the eiffel tower is in', 'the city of paris'],
      ['rome is', 'a city'],
      ['the language of spain is', 'spain .'],
      ['madrid', ''],
    ];
    const reqs = texts.map(([p, c]) => ({ ...encodePair(tok, p, c), keepDist: true }));
    const scores = scoreSequences(model, reqs, { batchSize: 3 });
    reqs.forEach((r, i) => {
      const ref = refLogprobs(model, r.prompt.concat(r.cont));
      const P = r.prompt.length;
      for (let j = 0; j < r.cont.length; j++) {
        t.ok(Math.abs(scores[i].tokenLogprobs[j] - ref[P - 1 + j][r.cont[j]]) < 1e-4, `${arch} #${i} token ${j} log-prob`);
        t.equal(scores[i].argmax[j], argmax(ref[P - 1 + j]), `${arch} #${i} argmax ${j}`);
      }
      t.equal(scores[i].argmax[0], argmax(ref[P - 1]));
      const d = scores[i].dist!;
      let maxErr = 0;
      for (let v = 0; v < d.length; v++) maxErr = Math.max(maxErr, Math.abs(d[v] - ref[P - 1][v]));
      t.ok(maxErr < 1e-4, `${arch} #${i} next-token distribution (max err ${maxErr})`);
    });
  });
}

t.test('encodePair: target continues the prompt after one space', async (t) => {
  const { tokenizer } = loadModel(golden('gpt2'));
  const tok = tokenizer!;
  const { prompt, cont } = encodePair(tok, 'the capital of france is', 'paris');
  t.same(prompt, tok.encode('the capital of france is'));
  t.same(prompt.concat(cont), tok.encode('the capital of france is paris'));
  t.same(encodePair(tok, 'the capital of france is', ' paris').cont, cont);
  t.same(encodePair(tok, 'x', '').cont, []);
});

t.test('observe + computeMetrics agree with a direct computation, and greedy full match with generate()', async (t) => {
  const { model, tokenizer } = loadModel(golden('gpt2'));
  const tok = tokenizer!;
  const facts = [
    { id: 'f1', subject: 'france', prompt: 'the capital of {} is', target_new: 'rome', target_true: 'paris' },
    { id: 'f2', subject: 'spain', prompt: 'the language of {} is', target_new: 'the city', target_true: 'spain' },
    { id: 'f3', subject: 'italy', prompt: 'the capital of {} is', target_true: 'rome', op: 'forget' },
  ];
  const probes = [
    { fact_id: 'f1', role: 'paraphrase', split: 'test', prompt: 'the city of france is', expect: 'new' },
    { fact_id: 'f1', role: 'paraphrase', split: 'train', prompt: 'france is', expect: 'new' },
    { fact_id: 'f1', role: 'neighborhood', split: 'test', prompt: 'the capital of spain is', target: 'madrid', expect: 'unchanged' },
  ];
  const retain = [{ role: 'edit', prompt: 'the eiffel tower is in', target: 'paris' }, { role: 'edit', prompt: 'the colosseum is in', target: 'rome' }];
  const general = [{ role: 'general', prompt: 'the city of paris is in france .' }, { role: 'general', prompt: 'madrid is a city in spain .' }];
  const suite = buildSuite(facts, probes, { retain, general });
  t.equal(suite.edit.length, 2);
  t.equal(suite.paraphrase.length, 1, 'train-split paraphrases are not held out');
  t.equal(suite.forget.length, 1);
  const enc = encodeSuite(tok, suite, { maxLength: model.config.maxPositions });
  const before = observe(model, tok, enc, { batchSize: 4 });
  const lora = model.createLora('rand', ['c_fc'], { r: 2, seed: 5, initBStd: 0.5 });
  model.setAdapters([{ adapter: lora }]);
  const after = observe(model, tok, enc, { batchSize: 4 });
  const m = computeMetrics(enc, before, after);

  // direct: per edit item, full logits of prompt+target and of prompt+alt
  let top1 = 0, prob = 0, full = 0;
  for (const it of suite.edit) {
    const a = encodePair(tok, it.prompt, it.target);
    const b = encodePair(tok, it.prompt, it.alt!);
    const ra = refLogprobs(model, a.prompt.concat(a.cont));
    const rb = refLogprobs(model, b.prompt.concat(b.cont));
    const P = a.prompt.length;
    const lpA = a.cont.reduce((s, id, j) => s + ra[P - 1 + j][id], 0);
    const lpB = b.cont.reduce((s, id, j) => s + rb[P - 1 + j][id], 0);
    if (argmax(ra[P - 1]) === a.cont[0]) top1++;
    if (lpA > lpB) prob++;
    const gen = model.generate([a.prompt], { maxNewTokens: a.cont.length, greedy: true, eosTokenId: null })[0];
    if (gen.every((x, j) => x === a.cont[j])) full++;
  }
  t.equal(m.efficacy, top1 / suite.edit.length);
  t.equal(m.efficacy_prob, prob / suite.edit.length);
  t.equal(m.efficacy_full, full / suite.edit.length);

  // KL on unrelated prompts (the retain prompts)
  let kl = 0;
  for (const r of retain) {
    const ids = tok.encode(r.prompt);
    model.setAdapters([]);
    const p = refLogprobs(model, ids)[ids.length - 1];
    model.setAdapters([{ adapter: lora }]);
    const q = refLogprobs(model, ids)[ids.length - 1];
    for (let v = 0; v < p.length; v++) kl += Math.exp(p[v]) * (p[v] - q[v]);
  }
  t.ok(Math.abs(m.kl - kl / retain.length) < 1e-5, `kl ${m.kl} vs ${kl / retain.length}`);
  t.ok(m.kl > 0);

  // perplexity: mean NLL of tokens 2..n of each text
  const pplOf = () => {
    let nll = 0, n = 0;
    for (const g of general) {
      const ids = tok.encode(g.prompt);
      const r = refLogprobs(model, ids);
      for (let j = 1; j < ids.length; j++) {
        nll -= r[j - 1][ids[j]];
        n++;
      }
    }
    return Math.exp(nll / n);
  };
  const pa = pplOf();
  model.setAdapters([]);
  const pb = pplOf();
  t.ok(Math.abs(m.ppl_before - pb) / pb < 1e-5);
  t.ok(Math.abs(m.ppl_after - pa) / pa < 1e-5);
  t.ok(Math.abs(m.ppl_delta - (pa / pb - 1)) < 1e-5);

  // forget: P(target_true) of the forget fact's edit prompt
  const fz = encodePair(tok, 'the capital of italy is', 'rome');
  const rf = refLogprobs(model, fz.prompt.concat(fz.cont));
  t.ok(Math.abs(m.forget_p_true_before - Math.exp(fz.cont.reduce((s, id, j) => s + rf[fz.prompt.length - 1 + j][id], 0))) < 1e-6);
  t.equal(m.n_edit, 2);
  t.equal(m.n_forget, 1);
  t.equal(m.n_neighborhood, 1);

  // the base model against itself: nothing moves
  const same = computeMetrics(enc, before, before);
  t.equal(same.kl, 0);
  t.equal(same.ppl_delta, 0);
  t.equal(same.specificity, 1);
  t.equal(same.retain_drop, 0);
});
