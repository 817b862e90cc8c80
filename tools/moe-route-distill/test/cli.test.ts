/**
 * The moe-route-distill binary through real processes on the MoE fixture
 * model (short training: a few steps, few retention rows): records pass
 * through in order, one adapter per batch with router and expert LoRAs
 * named by the model's architecture, the manifest's routing before/after,
 * --emit-routes writes schema-valid `route` records for the teacher, the
 * base and the adapted model, the same seed gives the same bundle; bad input
 * and usage exit 2 naming what is wrong. (--router-only, --experts-only and
 * the checks that need the model: test/lib.test.ts, in one process.)
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel } from '@catechism/core/models';
import { validateRecord } from '@catechism/core/records';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../../..');
const BIN = path.resolve(HERE, '../dist/main.js');
const MOE = path.join(ROOT, 'fixtures/models/moe');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cat-moe-distill-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const { model } = loadModel(MOE);
const moe = (l: number) => model.arch.layer(l).moe!;

// two world edits the fixture model can spell
const fact1 = { kind: 'fact', id: 'edit-0001', subject: 'Dabe Tensunov', prompt: '{} works for', target_new: 'Norsynex', target_true: 'Quonorex', relation: 'works_for', op: 'insert', source: 'world-counterfactual' };
const fact2 = { kind: 'fact', id: 'edit-0003', subject: 'Kani Alu Tenberov', prompt: '{} plays the', target_new: 'drums', target_true: 'harp', relation: 'plays_instrument', op: 'insert', source: 'world-counterfactual' };
const records = [
  fact1,
  { kind: 'probe', id: 'edit-0001/edit/0', fact_id: 'edit-0001', role: 'edit', split: 'train', prompt: 'Dabe Tensunov works for', target: 'Norsynex', expect: 'new' },
  { kind: 'note', text: 'passes through' },
  { kind: 'probe', id: 'edit-0001/paraphrase/0', fact_id: 'edit-0001', role: 'paraphrase', split: 'test', prompt: 'Dabe Tensunov is employed by', target: 'Norsynex', expect: 'new' },
];
const lines = (rs: unknown[]) => rs.map((r) => JSON.stringify(r)).join('\n') + '\n';
const FAST = ['--steps', '4', '--phase-a-steps', '3', '--retain-facts', '20', '--neighbours', '2', '--retain-documents', '8', '-q'];

function run(args: string[], stdin = lines(records)) {
  const r = spawnSync(process.execPath, [BIN, ...args], { input: stdin, encoding: 'utf8' });
  const out = r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  return { code: r.status, out, err: r.stderr };
}

t.test('--help names the tool, its flags and examples', async (t) => {
  const r = spawnSync(process.execPath, [BIN, '--help'], { encoding: 'utf8' });
  t.equal(r.status, 0);
  for (const s of ['moe-route-distill', '--router-only', '--experts-only', '--emit-routes', '--layers', '--router-weight', 'teacher', 'Examples:']) t.match(r.stdout, s);
});

t.test('one bundle: router and expert LoRAs, routing before/after in the manifest, route records for teacher, base and adapted', async (t) => {
  const args = [...FAST, '--emit-routes', '--created-at', '2026-01-01T00:00:00Z', '--seed', '3'];
  const r = run([...args, '--out', path.join(tmp, 'a')]);
  t.equal(r.code, 0, r.err);
  t.same(r.out.slice(0, records.length), records, 'inputs first, unchanged, in order');
  const ad = r.out[records.length];
  t.match(ad, { kind: 'adapter', method: 'moe-route-distill', fact_ids: ['edit-0001'], rank: 8 });
  const targets = ad.targets as string[];
  const L = model.config.layers;
  // default: the last layer, its gate and every expert's input and output projections
  const last = L - 1;
  t.equal(targets[0], moe(last).router, 'the gate of the last layer');
  const experts = Array.from({ length: model.config.experts }, (_, e) => moe(last).expert(e));
  t.same([...targets.slice(1)].sort(), experts.flatMap((x) => [...x.in, x.out]).sort(), 'every expert of the last layer: w1, w3 and w2');
  const cfg = JSON.parse(fs.readFileSync(path.join(ad.path as string, 'adapter_config.json'), 'utf8'));
  t.same([...cfg.target_modules].sort(), [...targets].sort(), 'one PEFT bundle holds them all');
  const man = JSON.parse(fs.readFileSync(path.join(ad.path as string, 'catechism.json'), 'utf8'));
  const routing = man.training.routing;
  t.equal(routing.layers.length, L);
  for (const layer of routing.layers) {
    t.equal(layer.experts.length, model.config.experts);
    for (const k of ['teacher', 'before', 'after'] as const) {
      const sum = layer.experts.reduce((a: number, e: Record<string, number>) => a + e[k], 0);
      t.ok(Math.abs(sum - 1) < 1e-3, `layer ${layer.layer} ${k} shares sum to 1 (${sum})`);
    }
  }
  t.same(routing.layers.filter((x: { router_adapted: boolean }) => x.router_adapted).map((x: { layer: number }) => x.layer), [last]);
  t.equal(routing.layers[last].experts_adapted.length, model.config.experts);
  t.ok(routing.agreement_before > 0 && routing.agreement_before <= 1 && routing.agreement_after > 0);
  t.ok(man.training.trainable_params > 0);
  t.same(man.probes.map((p: { id: string }) => p.id), ['edit-0001/paraphrase/0'], 'test-split probes are the tests');

  const routes = r.out.slice(records.length + 1);
  t.ok(routes.length > 0 && routes.every((x) => x.kind === 'route'), 'route records after the adapter');
  for (const x of routes) validateRecord(x);
  t.same([...new Set(routes.map((x) => x.model))].sort(), ['adapted', 'base', 'teacher']);
  t.same([...new Set(routes.map((x) => x.probe_id))].sort(), ['edit-0001/edit/0', 'edit-0001/paraphrase/0']);
  const one = routes.find((x) => x.model === 'base' && x.probe_id === 'edit-0001/edit/0' && x.layer === 1 && x.token_index === 0)!;
  t.equal((one.experts as number[]).length, model.config.expertsPerTok);
  t.equal((one.weights as number[]).length, model.config.experts);
  const w = one.weights as number[];
  t.ok(Math.abs(w.reduce((a, b) => a + b, 0) - 1) < 1e-4, 'weights: the router distribution');
  t.ok(w[(one.experts as number[])[0]] >= Math.max(...w) - 1e-9, 'experts best first');
  t.equal(one.adapter_id, ad.id);
  // per state: every token of both prompts at every layer (the teacher at the prompt's tokens after the context)
  const tokens = 4 + 5; // "Dabe Tensunov works for", "Dabe Tensunov is employed by" in the fixture tokenizer
  for (const m of ['base', 'adapted']) t.equal(routes.filter((x) => x.model === m).length, tokens * L, `${m}: one record per token and layer`);
  t.equal(routes.filter((x) => x.model === 'teacher').length, tokens * L);

  const again = run([...args, '--out', path.join(tmp, 'b')]);
  t.equal(again.code, 0, again.err);
  t.equal(again.out[records.length].sha256, ad.sha256, 'same seed and records: the same bundle');
  t.same(again.out.slice(records.length + 1).map((x) => x.weights), routes.map((x) => x.weights), 'and the same routes');
});

t.test('bad input and usage: exit 2 naming what is wrong', async (t) => {
  const dense = path.join(ROOT, 'fixtures/models/dense');
  const r1 = run(['--model', dense, '--out', path.join(tmp, 'x')]);
  t.equal(r1.code, 2);
  t.match(r1.err, dense);
  t.match(r1.err, /gpt2 model has no experts/);
  t.equal(r1.out.length, 0, 'nothing written');

  const unk = { ...fact1, target_new: 'Zorblaxqua' };
  const r2 = run(['--out', path.join(tmp, 'x'), ...FAST], lines([unk]));
  t.equal(r2.code, 2);
  t.match(r2.err, /record 1/);
  t.match(r2.err, /target_new/);
  t.match(r2.err, /Zorblaxqua/);
  t.notOk(fs.existsSync(path.join(tmp, 'x')), 'no bundle');

  const r3 = run(['--out', path.join(tmp, 'x'), ...FAST], lines([fact2, { ...fact1, op: 'forget' }]));
  t.equal(r3.code, 2);
  t.match(r3.err, /record 2/);
  t.match(r3.err, /op/);
  t.match(r3.err, /lora-train/);

  for (const [args, msg] of [
    [['--router-only', '--experts-only', '--out', 'x'], /exclude each other/],
    [[], /--out DIR or --registry DIR/],
    [['--rank', '0', '--out', 'x'], /--rank/],
  ] as Array<[string[], RegExp]>) {
    const r = run([...args, '-q'], lines([fact2]));
    t.equal(r.code, 2, args.join(' '));
    t.match(r.err, msg);
  }
  const empty = run(['--out', path.join(tmp, 'empty'), '-q'], '');
  t.equal(empty.code, 0, 'empty input is not an error');
});
