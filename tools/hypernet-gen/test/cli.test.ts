/**
 * The hypernet-gen binary through real processes with the shipped
 * hypernetwork on the dense fixture model: records pass through in order,
 * then one `adapter` record per fact (or per --batch) whose bundle names the
 * hypernetwork; a hypernetwork for another base model or other target
 * modules is refused naming both hashes (exit 2); an answer the tokenizer
 * cannot spell is refused by fact id and field (exit 2).
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { modelSha256 } from '@catechism/core/edit';
import { validateRecord } from '@catechism/core/records';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../../..');
const BIN = path.resolve(HERE, '../dist/main.js');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cat-hypernet-cli-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

// held-out world requests (H never trained on their subjects)
const edits = fs.readFileSync(path.join(ROOT, 'fixtures/world/edits.ndjson'), 'utf8').split('\n').filter((l) => l.includes('"op":"insert"')).map((l) => JSON.parse(l));
const [f1, f2] = [edits[60], edits[61]];
const note = { kind: 'note', text: 'passes through' };
const lines = (rs: unknown[]) => rs.map((r) => JSON.stringify(r)).join('\n') + '\n';
const run = (args: string[], input: string) => spawnSync(process.execPath, [BIN, ...args], { input, encoding: 'utf8', cwd: tmp });

t.test('one adapter per fact, records passed through, the hypernetwork named in the bundle', async (t) => {
  const r = run(['--out', 'a', '-q', '--created-at', '2026-01-01T00:00:00Z'], lines([f1, note, f2]));
  t.equal(r.status, 0, r.stderr);
  const out = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
  t.same(out.slice(0, 3), [f1, note, f2], 'input first, in order');
  const ads = out.slice(3);
  t.equal(ads.length, 2);
  const hj = JSON.parse(fs.readFileSync(path.join(ROOT, 'fixtures/hypernet/dense/hypernet.json'), 'utf8'));
  for (const [i, a] of ads.entries()) {
    t.doesNotThrow(() => validateRecord(a), 'a valid adapter record');
    t.equal(a.method, 'hypernet');
    t.same(a.fact_ids, [[f1, f2][i].id]);
    t.equal(a.rank, 1);
    const m = JSON.parse(fs.readFileSync(path.join(a.path, 'catechism.json'), 'utf8'));
    t.equal(m.hyperparameters.hypernet_sha256, hj.sha256, 'the hypernetwork\'s hash in the manifest');
    t.equal(m.base_model.sha256, modelSha256(path.join(ROOT, 'fixtures/models/dense')));
    t.ok(fs.existsSync(path.join(a.path, 'adapter_model.safetensors')) && fs.existsSync(path.join(a.path, 'adapter_config.json')), 'PEFT files');
  }
  // the shipped H writes gated neurons: each adapter of a run its own, recorded so that merges can check
  const neurons = ads.map((a) => JSON.parse(fs.readFileSync(path.join(a.path, 'catechism.json'), 'utf8')).training.neurons.map((n: { neuron: number }) => n.neuron));
  t.equal(neurons.flat().length, 2);
  t.not(neurons[0][0], neurons[1][0], 'two facts of one run: two neurons');
  const b = run(['--out', 'b', '-q', '--batch', '2'], lines([f1, f2]));
  t.equal(b.status, 0, b.stderr);
  const bads = b.stdout.trim().split('\n').map((l) => JSON.parse(l)).filter((x) => x.kind === 'adapter');
  t.equal(bads.length, 1, '--batch 2: one adapter');
  t.equal(bads[0].rank, 2);
  t.same(bads[0].fact_ids, [f1.id, f2.id]);
});

t.test('a hypernetwork for another base model or other targets is refused, both hashes named', async (t) => {
  const hj = JSON.parse(fs.readFileSync(path.join(ROOT, 'fixtures/hypernet/dense/hypernet.json'), 'utf8'));
  const denseB = path.join(ROOT, 'fixtures/models/dense-b');
  const r = run(['--out', 'x', '--model', denseB, '--hypernet', path.join(ROOT, 'fixtures/hypernet/dense')], lines([f1]));
  t.equal(r.status, 2, r.stderr);
  t.match(r.stderr, hj.base_model.sha256, 'the hypernetwork\'s base model hash');
  t.match(r.stderr, modelSha256(denseB), 'the given model\'s hash');
  t.notOk(fs.existsSync(path.join(tmp, 'x')), 'nothing written');
  const g = run(['--out', 'x', '--targets', 'transformer.h.1.mlp.c_proj'], lines([f1]));
  t.equal(g.status, 2, g.stderr);
  t.match(g.stderr, /transformer\.h\.3\.mlp\.c_proj \(targets hash [0-9a-f]{12}\).*transformer\.h\.1\.mlp\.c_proj \(targets hash [0-9a-f]{12}\)/);
});

t.test('an answer the tokenizer cannot spell is refused by name', async (t) => {
  const bad = { ...f1, id: 'bad-1', target_new: 'Qxzzyv' };
  const r = run(['--out', 'y'], lines([bad]));
  t.equal(r.status, 2, r.stderr);
  t.match(r.stderr, /bad-1/);
  t.match(r.stderr, /target_new/);
  t.notOk(fs.existsSync(path.join(tmp, 'y')), 'nothing written');
});

t.test('train --site last on a sparse MoE model is refused, naming the layer', async (t) => {
  const r = spawnSync(process.execPath, [BIN, 'train', '--model', path.join(ROOT, 'fixtures/models/moe'), '--counterfactuals', '4', '--steps', '1', '--out', 'moe-h'], { encoding: 'utf8', cwd: tmp });
  t.equal(r.status, 2, r.stderr);
  t.match(r.stderr, /layer 3 is a sparse MoE layer/);
  t.notOk(fs.existsSync(path.join(tmp, 'moe-h')), 'nothing written');
});

t.test('--avoid-neurons-of: a second run takes other neurons than an earlier bundle\'s, so the two merge', async (t) => {
  const first = run(['--out', 'n1', '-q'], lines([f1]));
  t.equal(first.status, 0, first.stderr);
  const a1 = JSON.parse(first.stdout.trim().split('\n').pop()!);
  const used = (p: string) => JSON.parse(fs.readFileSync(path.join(p, 'catechism.json'), 'utf8')).training.neurons.map((n: { neuron: number }) => n.neuron);
  const plain = run(['--out', 'n2', '-q'], lines([f2]));
  const again = JSON.parse(plain.stdout.trim().split('\n').pop()!);
  t.same(used(again.path), used(a1.path), 'without it, a second run starts from the same neuron');
  const second = run(['--out', 'n3', '-q', '--avoid-neurons-of', a1.path], lines([f2]));
  t.equal(second.status, 0, second.stderr);
  const a2 = JSON.parse(second.stdout.trim().split('\n').pop()!);
  t.not(used(a2.path)[0], used(a1.path)[0], 'with it, another neuron');
  // adapter-merge sums the two that avoid each other, and refuses the two on one neuron
  const MERGE = path.resolve(HERE, '../../adapter-merge/dist/main.js');
  const merge = (recs: unknown[], out: string) => spawnSync(process.execPath, [MERGE, '--out', out, '-q'], { input: lines(recs), encoding: 'utf8', cwd: tmp });
  t.equal(merge([a1, a2], 'merged').status, 0, 'merged');
  const clash = merge([a1, again], 'clash');
  t.equal(clash.status, 2);
  t.match(clash.stderr, /both patch neuron .* make it again with hypernet-gen --avoid-neurons-of/);
  const bad = run(['--out', 'n4', '--avoid-neurons-of', 'nowhere'], lines([f2]));
  t.equal(bad.status, 2);
  t.match(bad.stderr, /--avoid-neurons-of nowhere: no catechism.json/);
});

t.test('into a registry, the neurons of the live ref are avoided by default', async (t) => {
  const MERGE = path.resolve(HERE, '../../adapter-merge/dist/main.js');
  const reg = path.join(tmp, 'reg');
  const first = run(['--registry', reg, '-q'], lines([f1]));
  t.equal(first.status, 0, first.stderr);
  const a1 = JSON.parse(first.stdout.trim().split('\n').pop()!);
  const promote = spawnSync(process.execPath, [MERGE, 'promote', 'live', a1.path, '--force', '-m', 'test'], { encoding: 'utf8', cwd: tmp, env: { ...process.env, CATECHISM_REGISTRY: reg } });
  t.equal(promote.status, 0, promote.stderr);
  const second = run(['--registry', reg], lines([f2]));
  t.equal(second.status, 0, second.stderr);
  t.match(second.stderr, /avoiding the neurons patched in ref live/);
  const a2 = JSON.parse(second.stdout.trim().split('\n').pop()!);
  const used = (p: string) => JSON.parse(fs.readFileSync(path.join(p, 'catechism.json'), 'utf8')).training.neurons.map((n: { neuron: number }) => n.neuron);
  t.not(used(a2.path)[0], used(a1.path)[0], 'not live\'s neuron');
});
