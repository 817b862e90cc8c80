/**
 * validate's fixed evaluation sets: which files, how large, sampled how
 * (stratified by relation, fixed seed), and the notes for a model without
 * them.
 */
import t from 'tap';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { resolveEvalSets, stratifiedSample, stratumOf } from '../src/sets.js';

t.test('stratifiedSample: all when small, else proportional per stratum, fixed and in order', async (t) => {
  const xs = Array.from({ length: 100 }, (_, i) => ({ i, r: i < 70 ? 'a' : i < 95 ? 'b' : 'c' }));
  t.same(stratifiedSample(xs, 100, (x) => x.r), xs);
  t.same(stratifiedSample(xs, 500, (x) => x.r), xs);
  const s = stratifiedSample(xs, 20, (x) => x.r);
  t.equal(s.length, 20);
  const count = (r: string) => s.filter((x) => x.r === r).length;
  t.same([count('a'), count('b'), count('c')], [14, 5, 1], 'quotas 14, 5, 1 of 70, 25, 5');
  t.same(s.map((x) => x.i), [...s.map((x) => x.i)].sort((a, b) => a - b), 'original order');
  t.same(stratifiedSample(xs, 20, (x) => x.r), s, 'the same every time');
  t.not(JSON.stringify(stratifiedSample(xs, 20, (x) => x.r, 7)), JSON.stringify(s), 'the seed is what fixes it');
  t.same(stratifiedSample(xs, 0, (x) => x.r), []);
  t.equal(stratumOf({ role: 'edit', prompt: 'p', relation: 'born_in' }), 'born_in');
  t.equal(stratumOf({ role: 'edit', prompt: 'p', fact_id: 'works_for:Ann' }), 'works_for');
});

t.test('resolveEvalSets: flags, --world, the fixture world for bundled models, notes otherwise', async (t) => {
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'validate-sets-'));
  t.teardown(() => rmSync(tmp, { recursive: true, force: true }));
  const world = path.join(tmp, 'world');
  mkdirSync(path.join(world, 'eval'), { recursive: true });
  const probe = (i: number, relation: string) => JSON.stringify({ kind: 'probe', fact_id: `${relation}:s${i}`, role: 'edit', relation, prompt: `s${i} ${relation}`, target: 'x' });
  writeFileSync(path.join(world, 'eval', 'facts-heldout.ndjson'), Array.from({ length: 30 }, (_, i) => probe(i, i % 3 === 0 ? 'r1' : 'r2')).join('\n') + '\n');
  writeFileSync(path.join(world, 'eval', 'general.ndjson'), JSON.stringify({ kind: 'probe', role: 'general', prompt: 'some text here.' }) + '\n');
  const models = path.join(tmp, 'models');
  const base = { fixtureModels: models, fixtureWorld: world, retainN: 2000, generalN: 500 };
  const fx = resolveEvalSets({ ...base, modelDir: path.join(models, 'moe') });
  t.equal(fx.retain.length, 30, 'a bundled model (the MoE one too) gets the fixture world');
  t.equal(fx.general.length, 1);
  t.same(fx.notes, []);
  const own = resolveEvalSets({ ...base, modelDir: path.join(tmp, 'mine') });
  t.same([own.retain.length, own.general.length], [0, 0]);
  t.match(own.notes.join('\n'), /no retention set for model .*mine.*--retain FILE/);
  t.match(own.notes.join('\n'), /no general text .*--general FILE/);
  const viaWorld = resolveEvalSets({ ...base, modelDir: path.join(tmp, 'mine'), world, retainN: 9 });
  t.equal(viaWorld.retain.length, 9);
  t.same(viaWorld.retain.map((p) => p.relation).filter((r) => r === 'r1').length, 3, 'stratified: 10 of 30 are r1, so 3 of 9');
  t.equal(viaWorld.retainTotal, 30);
  t.equal(path.basename(viaWorld.retainSource!), 'facts-heldout.ndjson', 'the held-out phrasings are the default retention set');
  // a world without held-out phrasings: its training phrasings, with a note saying what that costs
  const old = path.join(tmp, 'old');
  mkdirSync(path.join(old, 'eval'), { recursive: true });
  writeFileSync(path.join(old, 'eval', 'facts-train.ndjson'), Array.from({ length: 5 }, (_, i) => probe(i, 'r1')).join('\n') + '\n');
  const fallback = resolveEvalSets({ ...base, modelDir: path.join(tmp, 'mine'), world: old });
  t.equal(path.basename(fallback.retainSource!), 'facts-train.ndjson');
  t.equal(fallback.retain.length, 5);
  t.match(fallback.notes.join('\n'), /no eval\/facts-heldout\.ndjson.*training phrasings/);
});
