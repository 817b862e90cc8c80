/**
 * The ROME key refit's held prompts read after context prefixes
 * (rome-method.ts, withPrefixes): which prompts get one, and which; and
 * which of the drawn prompts are held (mostUncertain: the base model's least
 * certain next tokens).
 */
import t from 'tap';
import { mostUncertain, withPrefixes } from '../src/edit/rome-method.js';
import { loadModel } from '../src/models/index.js';
import { defaultModelDir } from '../src/fixtures/index.js';
import { noGrad } from '../src/tensor/index.js';

const prompts = ['a is', 'b is', 'c is', 'd is', 'e is', 'f is'];
const prefixes = ['News:', 'Note that'];

t.test('share 0 or no prefixes leaves the prompts as they are', async (t) => {
  t.same(withPrefixes(prompts, prefixes, 0), prompts);
  t.same(withPrefixes(prompts, [], 1), prompts);
});

t.test('share 1 reads every prompt after the prefixes in turn', async (t) => {
  t.same(withPrefixes(prompts, prefixes, 1), ['News: a is', 'Note that b is', 'News: c is', 'Note that d is', 'News: e is', 'Note that f is']);
});

t.test('a share spreads the prefixed prompts evenly and keeps the order', async (t) => {
  t.same(withPrefixes(prompts, prefixes, 0.5), ['a is', 'News: b is', 'c is', 'Note that d is', 'e is', 'News: f is']);
  const third = withPrefixes(prompts, prefixes, 1 / 3);
  t.equal(third.filter((p, i) => p !== prompts[i]).length, 2, 'a third of six: two prefixed');
  t.same(third.map((p) => p.replace(/^(News:|Note that) /, '')), prompts, 'the same prompts underneath');
});

t.test('mostUncertain keeps the prompts of highest next-token entropy, in their order', async (t) => {
  const { model, tokenizer } = loadModel(defaultModelDir());
  const tok = tokenizer!;
  const texts = [
    'Dabe Tensunov speaks', 'The capital of', 'News: The city where Soto Berorson lives is', 'Alu Tenberov plays the',
    'Note that Kara Nimi Wickber can play the', 'The', 'Ralu Berorson is employed by', 'According to a new report, Vemi Holfelson was born in',
  ];
  // independent reading: each prompt alone (no padding, no batch), its last row's entropy in float64
  const V = model.config.vocabSize;
  const entropy = texts.map((p) => {
    const ids = Int32Array.from(tok.encode(p));
    const l = noGrad(() => model.forward(ids, [1, ids.length]).logits).data.subarray((ids.length - 1) * V, ids.length * V);
    let mx = -Infinity;
    for (const v of l) mx = Math.max(mx, v);
    let z = 0;
    for (const v of l) z += Math.exp(v - mx);
    let h = 0;
    for (const v of l) { const lp = v - mx - Math.log(z); h -= Math.exp(lp) * lp; }
    return h;
  });
  const got = mostUncertain(model, tok, texts, 3);
  t.equal(got.length, 3);
  t.same(got, texts.filter((p) => got.includes(p)), 'the given order kept');
  const kept = Math.min(...got.map((p) => entropy[texts.indexOf(p)]));
  const left = Math.max(...texts.filter((p) => !got.includes(p)).map((p) => entropy[texts.indexOf(p)]));
  t.ok(kept > left, `every kept prompt less certain than every one left (lowest kept ${kept.toFixed(3)} nats, highest left ${left.toFixed(3)})`);
  t.same(mostUncertain(model, tok, texts, 8), texts, 'n at the count keeps them all');
  t.same(model.activeAdapters(), [], 'no adapter left on the model');
});
