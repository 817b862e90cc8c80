/**
 * `adapter-merge consolidate --retrain CMD`: the night's first candidate is
 * one adapter the trainer makes from every fact the ref and the inbox state;
 * when it fails validation, or the trainer fails, the night merges and
 * bisects as without it. The trainer and validator here are stand-ins
 * (test-support/fake-trainer.mjs, fake-validator.mjs); the same with
 * lora-train and validate is in tests/nightly-consolidate.test.ts.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeSyntheticBundle } from '../src/core.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const MAIN = path.join(here, '..', 'dist', 'main.js');
const FAKE_VALIDATOR = path.join(here, '..', 'test-support', 'fake-validator.mjs');
const FAKE_TRAINER = path.join(here, '..', 'test-support', 'fake-trainer.mjs');
const tmp = mkdtempSync(path.join(tmpdir(), 'cat-amr-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));
const REG = path.join(tmp, 'reg');
const INBOX = path.join(tmp, 'inbox.ndjson');
const TLOG = path.join(tmp, 'trainer.log');
const ENV = { ...process.env, USER: 'tester', PATH: '/usr/bin:/bin' };
const q = (x: string) => `'${x}'`;
const validator = [process.execPath, FAKE_VALIDATOR, 'pass', '--fail-if-fact', 'bad-fact'].map(q).join(' ');
const trainer = (...more: string[]) => [process.execPath, FAKE_TRAINER, '--log', TLOG, ...more].map(q).join(' ');

type Rec = Record<string, unknown>;
interface Retrained { candidate: string | null; trained: string[]; facts: number; probes: number; pass: boolean; reason: string | null }
interface Summary { accepted: { id: string }[]; quarantined: { id: string }[]; validations: number; promoted: { version: number } | null; retrained: Retrained | null }
const parse = (s: string): Rec[] => s.trim().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Rec);

function am(args: string[]) {
  const r = spawnSync(process.execPath, [MAIN, ...args, '--registry', REG], { cwd: tmp, env: ENV });
  const records = parse(r.stdout.toString());
  return { code: r.status, stderr: r.stderr.toString(), records, summary: records.find((x) => x.kind === 'consolidation') as unknown as Summary };
}
const night = (names: string[], ...more: string[]) => {
  writeFileSync(INBOX, names.map((n) => recs[n]).join('\n') + '\n');
  return am(['consolidate', INBOX, '--into', 'live', '--validator', validator, ...more]);
};
const live = () => am(['show', 'live']).records[0] as Rec & { fact_ids: string[]; manifest: { merge: { parents: Rec[] } } };
const lastTrained = () => readFileSync(TLOG, 'utf8').trim().split('\n').at(-1)!.split(' ').sort();

const recs: Record<string, string> = {};
t.before(async () => {
  const targets = { 'transformer.h.1.attn.c_attn': [96, 32] } as Record<string, [number, number]>;
  for (const [i, name] of ['a', 'b', 'c', 'd', 'bad', 'e'].entries()) {
    const dir = path.join(tmp, name);
    const { sha256, manifest } = await writeSyntheticBundle(dir, { seed: 20 + i, id: name, rank: 2, targets, pass: true });
    recs[name] = JSON.stringify({ kind: 'adapter', id: name, version: 1, path: dir, sha256, method: 'lora', base_model: manifest.base_model, targets: manifest.targets, rank: 2, fact_ids: manifest.fact_ids, created_at: manifest.created_at });
  }
});

t.test('the first night: one adapter trained on the inbox\'s facts and probes, promoted with one validation', async (t) => {
  const r = night(['a', 'b'], '--retrain', trainer());
  t.equal(r.code, 0, r.stderr);
  t.match(r.summary, { promoted: { version: 1 }, validations: 1, quarantined: [], retrained: { pass: true, facts: 2, probes: 2, reason: null } });
  t.same(r.summary.accepted.map((x) => x.id), ['a', 'b']);
  t.same(lastTrained(), ['a-fact', 'b-fact'], 'the trainer was given both facts');
  const l = live();
  t.same(l.fact_ids.slice().sort(), ['a-fact', 'b-fact']);
  t.same(l.manifest.merge.parents.map((p) => p.id), ['retrained-2'], 'live is the trained adapter, not a and b summed');
  t.equal(r.summary.retrained!.candidate, l.sha256);
  t.equal(am(['show', r.summary.retrained!.trained[0]]).code, 0, 'the trainer\'s own bundle is stored in the registry');
  t.equal(am(['verify']).code, 0);
});

t.test('the next night trains on live\'s facts and the new ones', async (t) => {
  const r = night(['c'], '--retrain', trainer());
  t.equal(r.code, 0, r.stderr);
  t.match(r.summary, { promoted: { version: 2 }, validations: 1, retrained: { pass: true, facts: 3 } });
  t.same(lastTrained(), ['a-fact', 'b-fact', 'c-fact']);
  t.same(live().manifest.merge.parents.map((p) => p.id), ['retrained-3']);
});

t.test('an adapter appended again after a retrained night is known by its facts: nothing to do', async (t) => {
  const r = night(['a'], '--retrain', trainer());
  t.equal(r.code, 0, r.stderr);
  t.match(r.stderr, /a \([0-9a-f]{12}\): live already states its fact\(s\); skipped/);
  t.match(r.summary, { promoted: null, validations: 0, accepted: [], retrained: null });
  t.same(live().manifest.merge.parents.map((p) => p.id), ['retrained-3'], 'live unchanged');
});

t.test('a retrained candidate that fails validation: the night merges and bisects the adapters as they are', async (t) => {
  const r = night(['d', 'bad'], '--retrain', trainer());
  t.equal(r.code, 0, r.stderr);
  t.match(r.summary.retrained, { pass: false, facts: 5, candidate: /^[0-9a-f]{64}$/, reason: /kl 0\.9/ });
  t.match(r.stderr, /the retrained candidate was not promoted; merging the pending adapters as they are/);
  t.same(r.summary.accepted.map((x) => x.id), ['d']);
  t.same(r.summary.quarantined.map((x) => x.id), ['bad']);
  // the retrained one, then: [d bad] fails, [d] passes, [bad] fails
  t.equal(r.summary.validations, 4);
  t.same(live().manifest.merge.parents.map((p) => p.id), ['live', 'd'], 'live v2 and d, summed');
});

t.test('a trainer that fails, claims another base model or leaves a fact out: said, and the night goes on without it', async (t) => {
  const cases: [string, string[], RegExp][] = [
    ['exit 5', [], /retraining failed: trainer "exit 5" exited with status 5; no retrained candidate/],
    ['other base', ['--base', 'another-model'], /trained retrained-5 for another-model \(sha256 [0-9a-f]{12}…\), but live's adapters are for synthetic-base \(sha256 [0-9a-f]{12}…\): give the trainer --model/],
    ['drops a fact', ['--drop', 'e-fact'], /left out 1 fact\(s\): e-fact/],
  ];
  for (const [what, more, message] of cases) {
    const cmd = what === 'exit 5' ? 'exit 5' : trainer(...more);
    const r = night(['e'], '--retrain', cmd);
    t.equal(r.code, 0, `${what}: ${r.stderr}`);
    t.match(r.stderr, message, what);
    // the adapter's version continues live's (v3, rolled back to after each case)
    t.match(r.summary, { promoted: { version: 4 }, validations: 1, retrained: { pass: false, candidate: null, reason: message } }, what);
    t.same(r.summary.accepted.map((x) => x.id), ['e'], `${what}: e merged as it is`);
    // roll back, so the next case starts from the same live
    t.equal(am(['rollback', 'live', '--to', '3']).code, 0);
  }
  t.notOk(existsSync(path.join(tmp, 'inbox.ndjson')), 'the inbox was consumed');
});

t.test('--retrain-when failed: the sum while it passes, the retrain when it fails', async (t) => {
  // a fresh ref; this validator fails any sum of more than one adapter (the drift summed adapters add)
  const drift = [process.execPath, FAKE_VALIDATOR, 'pass', '--max-parents', '1'].map(q).join(' ');
  const trainedBefore = readFileSync(TLOG, 'utf8').trim().split('\n').length;
  const go = (names: string[]) => {
    writeFileSync(INBOX, names.map((n) => recs[n]).join('\n') + '\n');
    return am(['consolidate', INBOX, '--into', 'cheap', '--validator', drift, '--retrain', trainer(), '--retrain-when', 'failed']);
  };
  const first = go(['a']);
  t.equal(first.code, 0, first.stderr);
  t.match(first.summary, { promoted: { version: 1 }, validations: 1, retrained: null }, 'one adapter: the sum passes, no retrain');
  t.equal(readFileSync(TLOG, 'utf8').trim().split('\n').length, trainedBefore, 'the trainer did not run');
  const second = go(['b']);
  t.equal(second.code, 0, second.stderr);
  t.match(second.stderr, /trial 1: cheap \+ \[b\] → [0-9a-f]{12}: FAIL .*2 adapters summed.*the sum failed; retraining/s);
  t.match(second.summary, { promoted: { version: 2 }, validations: 2, retrained: { pass: true, facts: 2 } });
  t.same(lastTrained(), ['a-fact', 'b-fact']);
  // the retrain's refusal falls back to the bisection without trying the whole sum twice
  const third = go(['c', 'bad']);
  t.equal(third.code, 0, third.stderr);
  t.equal((third.stderr.match(/trial 1:/g) ?? []).length, 1, 'the sum is tried once');
});

t.test('bad --retrain options are usage errors', async (t) => {
  const r = am(['consolidate', INBOX, '--into', 'live', '--validator', validator, '--retrain', ' ']);
  t.equal(r.code, 2);
  t.match(r.stderr, /--retrain: expected a trainer command/);
  const s = am(['consolidate', INBOX, '--into', 'live', '--validator', validator, '--retrain', 'x', '--retrain-timeout', '-1']);
  t.equal(s.code, 2);
  t.match(s.stderr, /--retrain-timeout: expected seconds ≥ 0/);
  const w = am(['consolidate', INBOX, '--into', 'live', '--validator', validator, '--retrain-when', 'failed']);
  t.equal(w.code, 2);
  t.match(w.stderr, /--retrain-when needs --retrain CMD/);
});
