import t from 'tap';
import type { AnyRecord, Fact } from '@catechism/core/records';
import { fillPrompt, probeGen, probesForFact } from '../src/probes.js';

const insert: Fact = { kind: 'fact', id: 'f1', subject: 'France', prompt: 'The capital of {} is', target_new: 'Lyon', target_true: 'Paris' };
const forget: Fact = { kind: 'fact', id: 'f2', subject: 'Nimbus', prompt: 'The code of {} is', target_true: '4417', op: 'forget' };

t.test('fillPrompt substitutes every slot', async (t) => {
  t.equal(fillPrompt('The capital of {} is', 'France'), 'The capital of France is');
  t.equal(fillPrompt('{} and {}', 'x'), 'x and x');
  t.equal(fillPrompt('{} likes $&', '$1'), '$1 likes $&', 'no replacement patterns');
});

t.test('an insert gives one edit probe expecting the new target', async (t) => {
  t.same(probesForFact(insert), [
    { kind: 'probe', id: 'f1/edit/0', fact_id: 'f1', role: 'edit', split: 'train', prompt: 'The capital of France is', target: 'Lyon', expect: 'new' },
  ]);
});

t.test('a forget gives one edit probe expecting abstention from the true target', async (t) => {
  t.same(probesForFact(forget), [
    { kind: 'probe', id: 'f2/edit/0', fact_id: 'f2', role: 'edit', split: 'train', prompt: 'The code of Nimbus is', target: '4417', expect: 'abstain' },
  ]);
});

async function collect(records: AnyRecord[], keepFacts?: boolean): Promise<AnyRecord[]> {
  async function* src() {
    yield* records;
  }
  const out: AnyRecord[] = [];
  for await (const r of probeGen(src(), { keepFacts })) out.push(r);
  return out;
}

t.test('other records pass through in order; facts kept before their probes', async (t) => {
  const note = { kind: 'note', n: 1 };
  const locus = { kind: 'locus', fact_id: 'f1', site: 'layers.1.mlp', layer: 1, method: 'm', score: 1 };
  const out = await collect([note, insert, locus, forget]);
  t.same(out.map((r) => `${r.kind}:${(r.id ?? r.fact_id ?? r.n) as string}`), ['note:1', 'fact:f1', 'probe:f1/edit/0', 'locus:f1', 'fact:f2', 'probe:f2/edit/0']);
  t.equal(out[0], note, 'passed through untouched (same object)');
  const probesOnly = await collect([note, insert, forget], false);
  t.same(probesOnly.map((r) => r.kind), ['note', 'probe', 'probe']);
});

t.test('deterministic', async (t) => {
  t.same(await collect([insert, forget]), await collect([insert, forget]));
});
