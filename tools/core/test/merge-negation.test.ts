/**
 * Negation is forgetting: `negate` of an insert adapter states `op: forget`
 * of the inserted answer (so validate's forget gates apply), a merge with it
 * takes the insert back, and negating twice gives the original back (weights
 * bit for bit, facts and probes as they were).
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { writeSyntheticBundle } from '../src/adapters/index.js';
import { loadParent, mergeBundles, writeMergedBundle, negateFact } from '../src/merge/index.js';
import { buildSuite } from '../src/metrics/suite.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cat-negate-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

const TARGETS = { 'transformer.h.0.mlp.c_proj': [32, 128], 'transformer.h.1.attn.c_attn': [96, 32] } as Record<string, [number, number]>;
const FACT = { kind: 'fact', id: 'f1', subject: 'Ada', prompt: '{} lives in', relation: 'city', target_new: 'Paris', target_true: 'Rome', op: 'insert', source: 'test' };
const PROBES = [
  { kind: 'probe', id: 'f1/edit/0', fact_id: 'f1', role: 'edit', split: 'train', prompt: 'Ada lives in', target: 'Paris', expect: 'new' },
  { kind: 'probe', id: 'f1/paraphrase/0', fact_id: 'f1', role: 'paraphrase', split: 'test', prompt: 'The home of Ada is', target: 'Paris', expect: 'new' },
  { kind: 'probe', id: 'f1/neighborhood/0', fact_id: 'f1', role: 'neighborhood', split: 'test', prompt: 'Bob lives in', target: 'Rome', expect: 'unchanged' },
  { kind: 'probe', id: 'f1/counterfactual/0', fact_id: 'f1', role: 'counterfactual', split: 'test', prompt: 'Ada lives in', target: 'Rome', expect: 'abstain', target_new: 'Paris' },
];

async function insertBundle(name: string) {
  const dir = path.join(tmp, name);
  await writeSyntheticBundle(dir, { seed: 3, id: name, rank: 2, targets: TARGETS, pass: true, manifest: { fact_ids: ['f1'], facts: [FACT], probes: PROBES } });
  return { dir, parent: await loadParent(dir) };
}

t.test('negate of an insert states forget of the inserted answer; validate scores it as a forget', async (t) => {
  const { parent } = await insertBundle('ins');
  const neg = mergeBundles([parent], { method: 'negate', created_at: '2026-01-02T00:00:00.000Z' });
  t.equal(neg.manifest.facts.length, 1);
  const f = neg.manifest.facts[0];
  t.equal(f.op, 'forget');
  t.equal(f.target_true, 'Paris', 'the answer to forget is the one the insert taught');
  t.notOk('target_new' in f);
  t.equal(f.source, 'test', 'other fields kept');
  const byId = new Map(neg.manifest.probes.map((p) => [p.id, p]));
  t.match(byId.get('f1/edit/0'), { expect: 'abstain', target: 'Paris' });
  t.match(byId.get('f1/paraphrase/0'), { expect: 'abstain', target: 'Paris' });
  t.match(byId.get('f1/neighborhood/0'), { expect: 'unchanged', target: 'Rome' }, 'neighbours keep their answers');
  // validate's suite: the fact's edit and held-out paraphrase probes are forget items scoring "Paris"
  const suite = buildSuite(neg.manifest.facts as never, neg.manifest.probes as never);
  t.same(suite.forget.map((i) => [i.prompt, i.target]), [['Ada lives in', 'Paris'], ['The home of Ada is', 'Paris']]);
  t.equal(suite.edit.length, 0, 'no efficacy items: the insert is not claimed any more');
  // the weights: B negated, A as is
  for (const [mod, m] of neg.adapter.modules) {
    const o = parent.adapter.modules.get(mod)!;
    t.same([...m.A.data], [...o.A.data]);
    t.same([...m.B.data], [...o.B.data].map((v) => -v));
  }
});

t.test('negating twice is identity: weights byte for byte, facts and probes as the original', async (t) => {
  const { dir, parent } = await insertBundle('ins2');
  const n1Dir = path.join(tmp, 'n1');
  await writeMergedBundle(n1Dir, mergeBundles([parent], { method: 'negate' }));
  const n1 = await loadParent(n1Dir);
  t.equal(n1.manifest.facts[0].op, 'forget');
  const n2Dir = path.join(tmp, 'n2');
  await writeMergedBundle(n2Dir, mergeBundles([n1], { method: 'negate' }));
  const n2 = await loadParent(n2Dir);
  t.same(n2.manifest.facts, parent.manifest.facts);
  t.same(n2.manifest.probes, parent.manifest.probes);
  const w0 = fs.readFileSync(path.join(dir, 'adapter_model.safetensors'));
  const w2 = fs.readFileSync(path.join(n2Dir, 'adapter_model.safetensors'));
  t.ok(w0.equals(w2), 'adapter_model.safetensors identical bytes');
  const w1 = fs.readFileSync(path.join(n1Dir, 'adapter_model.safetensors'));
  t.notOk(w0.equals(w1), 'the single negation differs');
  // a third negation is the first again
  const n3 = mergeBundles([n2], { method: 'negate' });
  t.same(n3.manifest.facts, n1.manifest.facts);
});

t.test('a merge with the negation takes the insert back: the forget replaces it, with its own probes', async (t) => {
  const { parent } = await insertBundle('ins3');
  const nDir = path.join(tmp, 'n3');
  await writeMergedBundle(nDir, mergeBundles([parent], { method: 'negate' }));
  const neg = await loadParent(nDir);
  const both = mergeBundles([parent, neg], { method: 'cat' });
  t.equal(both.manifest.facts.length, 1);
  t.equal(both.manifest.facts[0].op, 'forget');
  t.ok(both.manifest.probes.every((p) => p.expect !== 'new'), 'the insert\'s probes left with its fact');
  // the other order (an insert after a forget of the same id) re-teaches
  const again = mergeBundles([neg, parent], { method: 'cat' });
  t.equal(again.manifest.facts[0].op, 'insert');
  // same op twice: the first is kept, as before
  t.equal(mergeBundles([parent, parent], { method: 'cat' }).manifest.facts.length, 1);
});

t.test('negateFact: a forget without a stash becomes an insert restoring its answer', async (t) => {
  t.same(negateFact({ id: 'x', op: 'forget', target_true: 'Rome', subject: 'A', prompt: '{} in' }), { id: 'x', op: 'insert', target_new: 'Rome', subject: 'A', prompt: '{} in' });
  t.same(negateFact({ id: 'y', target_true: 'Oslo' }), { id: 'y', op: 'forget', target_true: 'Oslo' }, 'an as-is insert forgets its answer');
});
