/**
 * `adapter-merge canary` through real processes on the dense fixture model:
 * a harmless candidate passes and is promoted (--promote); a deliberately
 * broad one (a bias along its target's embedding: every subject now gets the
 * edited answer) is refused for its leaks, its canary record is stored with
 * the bundle, and `promote` refuses it from then on.
 */
import t from 'tap';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { parseRecord } from '@catechism/core/records';
import { Registry } from '../src/core.js';
import { ROOT, amRunner, oneLineError, tempDir, type Rec } from '../test-support/cli.js';
import { writeBiasBundle, type FactIn } from '../test-support/leaky-bundle.js';

const MODEL = path.join(ROOT, 'fixtures', 'models', 'dense');
const tmp = tempDir('cat-canary-');
const am = amRunner(tmp, path.join(tmp, 'reg'));
const reg = new Registry(path.join(tmp, 'reg'));
const fact: FactIn = { id: 'edit-0001', subject: 'Dabe Tensunov', prompt: '{} works for', target_new: 'Norsynex', relation: 'works_for' };
// what a serving system logged: other subjects, other relations, and the edited subject once
const TRAFFIC = ['Soto Berorson works for', 'Kani Alu Tenberov plays the', 'Toel Berorer was born in', 'Nael Kogri speaks', 'Alu Stamgrison works for', 'Dabe Tensunov works for'];

const sha: Record<string, string> = {};
t.before(async () => {
  for (const [name, gain] of [['harmless', 0], ['leaky', 400]] as const) {
    const dir = path.join(tmp, name);
    sha[name] = (await writeBiasBundle(dir, MODEL, fact, gain, name)).sha256;
    // a passing validation report bound to the bundle, so only the canary decides below
    // (set up in-process: each process costs a second on a loaded machine)
    const { bundle } = await reg.add(dir);
    await reg.addReport(name, { kind: 'report', adapter_id: name, pass: true, metrics: { efficacy: 1 }, failures: [], bundle_sha256: sha[name], base_model_sha256: bundle.manifest.base_model.sha256, run: { tool: 'test', id: name } });
  }
  writeFileSync(path.join(tmp, 'traffic.ndjson'), TRAFFIC.map((p, i) => JSON.stringify({ ts: i, prompt: p, user: `u${i}` })).join('\n') + '\n');
});

t.test('a harmless candidate passes the canary and is promoted', async (t) => {
  const r = am(['canary', 'live', 'harmless', '--traffic', 'traffic.ndjson', '--promote', '--model', MODEL]);
  t.equal(r.code, 0, r.stderr);
  t.match(r.records[0], { kind: 'canary', ref: 'live', bundle: sha.harmless, live: null, pass: true, metrics: { disagreement: 0, leak: 0, n_prompts: TRAFFIC.length } });
  t.ok((r.records[0].metrics as { kl: number }).kl < 1e-6, 'no change in distribution');
  t.equal(parseRecord('canary', r.records[0]).pass, true, 'a schema record');
  t.match(r.records[1], { kind: 'ref_event', ref: 'live', action: 'promote', bundle: sha.harmless });
});

t.test('a broad candidate that leaks its edit to other subjects is refused, and promote refuses it afterwards', async (t) => {
  const r = am(['canary', 'live', 'leaky', '--traffic', 'traffic.ndjson', '--promote', '--model', MODEL]);
  t.equal(r.code, 1, r.stderr);
  const c = r.records[0] as Rec & { metrics: Record<string, number>; failures: string[]; leaks: { prompt: string; candidate: string }[] };
  t.match(c, { kind: 'canary', bundle: sha.leaky, live: sha.harmless, pass: false });
  // every prompt not about Dabe Tensunov now answers Norsynex
  t.equal(c.metrics.leak, 5 / 6, 'five of six prompts leak');
  t.ok(c.metrics.disagreement >= 5 / 6);
  t.match(c.failures, [/^disagreement /, /^kl /, /^leak 0\.8333 > 0$/]);
  t.match(c.leaks[0], { prompt: 'Soto Berorson works for', candidate: /^Norsynex/ });
  t.match(r.stderr, /REFUSED/);
  t.equal(am(['log', 'live']).records.length, 1, 'live unchanged');
  oneLineError(t, am(['promote', 'live', 'leaky']), 1, /its latest canary on live refused it \(disagreement/);
  // bad traffic: the record number and field are named, exit 2
  writeFileSync(path.join(tmp, 'bad.ndjson'), '{"prompt":"a b"}\n{"text":"no prompt"}\n');
  oneLineError(t, am(['canary', 'live', 'leaky', '--traffic', 'bad.ndjson', '--model', MODEL]), 2, /bad\.ndjson.*(record|line) 2.*prompt/);
});
