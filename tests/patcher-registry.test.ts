/**
 * Gated-neuron patches (lora-train --method patcher) through the registry,
 * through real pipes: a second batch into a registry whose live ref holds a
 * patch avoids that patch's neuron by itself, so `adapter-merge --into live`
 * sums the two and live states both moved cities; merging two patches made
 * apart on one neuron (--avoid-neurons-of not given, no registry) is
 * refused, naming both. A stand-in validator passes (the held-out quality
 * is tools/lora-train/test/retention-heldout.test.ts's).
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadLora, loadModel } from '@catechism/core/models';
import { top1 } from '@catechism/core/edit';

const root = fileURLToPath(new URL('..', import.meta.url));
const tmp = mkdtempSync(join(tmpdir(), 'cat-patcher-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));
const env = { ...process.env, PATH: `${join(root, 'node_modules', '.bin')}:${process.env.PATH}`, CATECHISM_CACHE: join(tmp, 'cache') };
const VALIDATOR = `'${process.execPath}' '${join(root, 'tools/adapter-merge/test-support/fake-validator.mjs')}' pass`;
const sh = (cmd: string, extra: Record<string, string> = {}) => spawnSync('bash', ['-c', cmd], { cwd: tmp, env: { ...env, V: VALIDATOR, ...extra }, encoding: 'utf8', maxBuffer: 64 << 20 });
const lastAdapter = (s: string) => s.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>).filter((r) => r.kind === 'adapter').at(-1)!;
const manifestOf = (rec: Record<string, unknown>) => JSON.parse(readFileSync(join(String(rec.path), 'catechism.json'), 'utf8'));
const neuronsOf = (m: Record<string, { neuron: number }[]> & { training?: { neurons: { neuron: number }[] } }) => (m.patched_neurons ?? m.training!.neurons).map((n) => n.neuron);

const cities = readFileSync(join(root, 'fixtures/records/cities-moved.ndjson'), 'utf8').split('\n').filter(Boolean);
writeFileSync(join(tmp, 'c1.ndjson'), cities[0] + '\n');
writeFileSync(join(tmp, 'c2.ndjson'), cities[1] + '\n');
const facts = cities.slice(0, 2).map((l) => JSON.parse(l) as { subject: string; target_new: string });

t.test('into a registry, the second patch avoids live\'s neuron and the two merge into live', async (t) => {
  const reg = { CATECHISM_REGISTRY: join(tmp, 'registry') };
  const b1 = sh('lora-train --method patcher --seed 0 c1.ndjson', reg);
  t.equal(b1.status, 0, b1.stderr);
  writeFileSync(join(tmp, 'a1.ndjson'), b1.stdout);
  const p1 = sh('adapter-merge merge --into live --validator "$V" < a1.ndjson', reg);
  t.equal(p1.status, 0, p1.stderr);
  const b2 = sh('lora-train --method patcher --seed 0 c2.ndjson', reg);
  t.equal(b2.status, 0, b2.stderr);
  t.match(b2.stderr, /patcher: avoiding the neurons patched in ref live/);
  const n1 = neuronsOf(manifestOf(lastAdapter(b1.stdout))), n2 = neuronsOf(manifestOf(lastAdapter(b2.stdout)));
  t.not(n2[0], n1[0], `batch 2 took another neuron (${n1[0]}, then ${n2[0]})`);
  writeFileSync(join(tmp, 'a2.ndjson'), b2.stdout);
  const p2 = sh('adapter-merge merge --into live --validator "$V" < a2.ndjson', reg);
  t.equal(p2.status, 0, p2.stderr);
  const live = lastAdapter(p2.stdout);
  t.same(neuronsOf(manifestOf(live)).sort(), [...n1, ...n2].sort(), 'live carries both patched neurons');
  const { model, tokenizer } = loadModel(join(root, 'fixtures/models/dense'));
  model.setAdapters([{ adapter: loadLora(String(live.path)) }]);
  const got = top1(model, facts.map((f) => tokenizer.encode(`${f.subject} is located in`)));
  t.same(got, facts.map((f) => tokenizer.encode(f.target_new, { addSpecialTokens: false })[0]), 'live states both moves');
});

t.test('two patches made apart on one neuron are refused by adapter-merge, naming both', async (t) => {
  const a = sh('lora-train --method patcher --seed 0 --value-steps 1 --out outA c1.ndjson > a.ndjson && lora-train --method patcher --seed 0 --value-steps 1 --out outB c2.ndjson > b.ndjson');
  t.equal(a.status, 0, a.stderr);
  const r = sh('cat a.ndjson b.ndjson | adapter-merge merge --out merged');
  t.not(r.status, 0, 'refused');
  t.match(r.stderr, /both patch neuron \d+ of transformer\.h\.\d+\.mlp\.c_fc/);
  t.match(r.stderr, /--avoid-neurons-of/);
});
