import t from 'tap';
import { METRICS, checkGates, parseGate, resolveGates } from '../src/metrics/index.js';
import { fluency, nGramEntropy, ngramEntropyBits, words } from '../src/metrics/index.js';
import { UsageError } from '../src/records/errors.js';

t.test('parseGate: strict syntax and known metrics only', async (t) => {
  t.same(parseGate('efficacy>=0.95'), { metric: 'efficacy', op: '>=', value: 0.95 });
  t.same(parseGate(' ppl_delta <= 2e-2 '), { metric: 'ppl_delta', op: '<=', value: 0.02 });
  t.same(parseGate('kl<.5'), { metric: 'kl', op: '<', value: 0.5 });
  t.same(parseGate('suite_drop>-1'), { metric: 'suite_drop', op: '>', value: -1 });
  for (const bad of ['efficacy', 'efficacy=0.9', 'efficacy>=', 'efficacy>=abc', '>=0.9', 'efficacy>=0.9x', 'efficacy=>0.9', 'efficacy>=1..2']) {
    t.throws(() => parseGate(bad), UsageError, bad);
  }
  t.throws(() => parseGate('efficiency>=0.9'), /unknown metric "efficiency" \(known: efficacy/);
});

t.test('resolveGates: defaults, overrides replace the same metric', async (t) => {
  const d = resolveGates();
  const withDefault = Object.entries(METRICS).filter(([, m]) => m.gate).map(([k]) => k);
  t.same(d.map((g) => g.metric).sort(), withDefault.sort());
  const o = resolveGates([parseGate('efficacy>=0.5'), parseGate('efficacy_full>=0.8')]);
  t.same(o.find((g) => g.metric === 'efficacy'), { metric: 'efficacy', op: '>=', value: 0.5 });
  t.same(o.find((g) => g.metric === 'efficacy_full'), { metric: 'efficacy_full', op: '>=', value: 0.8 });
  t.equal(o.filter((g) => g.metric === 'efficacy').length, 1);
});

t.test('checkGates: every failing gate listed, unmeasured metrics skipped', async (t) => {
  const gates = [parseGate('efficacy>=0.9'), parseGate('kl<=0.05'), parseGate('ppl_delta<0.02'), parseGate('forget_top1<=0')];
  const r = checkGates({ efficacy: 0.4, kl: 0.3, ppl_delta: 0.02 }, gates);
  t.equal(r.pass, false);
  t.equal(r.failures.length, 3);
  t.match(r.failures[0], /^efficacy 0\.4 < 0\.9 \(gate efficacy>=0\.9\)$/);
  t.match(r.failures[1], /^kl 0\.3 > 0\.05/);
  t.match(r.failures[2], /^ppl_delta 0\.02 >= 0\.02/);
  t.same(r.skipped, ['forget_top1<=0']);
  t.same(r.thresholds, { efficacy: 0.9, kl: 0.05, ppl_delta: 0.02 });
  const ok = checkGates({ efficacy: 0.9, kl: 0.05, ppl_delta: 0.01, forget_top1: 0 }, gates);
  t.equal(ok.pass, true);
  t.same(ok.failures, []);
  t.equal(checkGates({ efficacy: NaN }, [parseGate('efficacy>=0.9')]).skipped.length, 1);
});

t.test('n-gram entropy matches hand computation (ROME weights 2/3, 4/3)', async (t) => {
  t.same(words('The cat, the Cat.'), ['the', 'cat', ',', 'the', 'cat', '.']);
  // a b a b: bigrams ab, ba, ab → H = −(2/3 log2 2/3 + 1/3 log2 1/3); trigrams aba, bab → 1 bit
  const h2 = -((2 / 3) * Math.log2(2 / 3) + (1 / 3) * Math.log2(1 / 3));
  t.ok(Math.abs(ngramEntropyBits(['a', 'b', 'a', 'b'], 2) - h2) < 1e-12);
  t.equal(ngramEntropyBits(['a', 'b', 'a', 'b'], 3), 1);
  t.ok(Math.abs(nGramEntropy('a b a b') - ((2 / 3) * h2 + (4 / 3) * 1) / 2) < 1e-12);
  // all-distinct n-grams: log2(count)
  t.ok(Math.abs(nGramEntropy('one two three four five') - ((2 / 3) * 2 + (4 / 3) * Math.log2(3)) / 2) < 1e-12);
  t.equal(nGramEntropy('word'), 0);
  t.ok(nGramEntropy('rome rome rome rome rome rome') < nGramEntropy('the capital of france is paris .'), 'repetition scores lower');
  t.ok(Number.isNaN(fluency([])));
  t.equal(fluency(['a b a b', 'word']), nGramEntropy('a b a b') / 2);
});
