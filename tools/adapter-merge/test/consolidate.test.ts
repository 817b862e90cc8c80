/**
 * `adapter-merge consolidate` and scripts/nightly-consolidate.sh: one bad
 * adapter in the inbox is found by bisection and quarantined with its
 * report, the rest is promoted, and later nights are not blocked. The
 * validator here is the fake one (test-support/fake-validator.mjs) failing
 * any candidate that carries the bad adapter's fact; the same with real
 * adapters and the real validate is in tests/nightly-consolidate.test.ts.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, readFileSync, writeFileSync, existsSync, readdirSync, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { FileLock, writeSyntheticBundle } from '../src/core.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const MAIN = path.join(here, '..', 'dist', 'main.js');
const SCRIPT = path.resolve(here, '../../../scripts/nightly-consolidate.sh');
const FAKE = path.join(here, '..', 'test-support', 'fake-validator.mjs');
const tmp = mkdtempSync(path.join(tmpdir(), 'cat-amq-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));
const REG = path.join(tmp, 'reg');
const INBOX = path.join(tmp, 'inbox.ndjson');
const VLOG = path.join(tmp, 'validations.log');
const ENV = { ...process.env, USER: 'tester', PATH: '/usr/bin:/bin' };
const validator = [process.execPath, FAKE, 'pass', '--fail-if-fact', 'bad-fact', '--log', VLOG].map((x) => `'${x}'`).join(' ');

type Rec = Record<string, unknown>;
const parse = (s: string): Rec[] => s.trim().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Rec);

function am(args: string[]) {
  const r = spawnSync(process.execPath, [MAIN, ...args, '--registry', REG], { cwd: tmp, env: ENV });
  return { code: r.status, stdout: r.stdout.toString(), stderr: r.stderr.toString(), records: parse(r.stdout.toString()) };
}

const recs: Record<string, string> = {};
t.before(async () => {
  const targets = { 'transformer.h.1.attn.c_attn': [96, 32] } as Record<string, [number, number]>;
  for (const [i, name] of ['a', 'b', 'bad', 'c', 'd', 'e'].entries()) {
    const dir = path.join(tmp, name);
    const { sha256, manifest } = await writeSyntheticBundle(dir, { seed: 10 + i, id: name, rank: 2, targets, pass: true });
    recs[name] = JSON.stringify({ kind: 'adapter', id: name, version: 1, path: dir, sha256, method: 'lora', base_model: manifest.base_model, targets: manifest.targets, rank: 2, fact_ids: manifest.fact_ids, created_at: manifest.created_at });
  }
});

const inboxFiles = () => readdirSync(tmp).filter((n) => n.startsWith('inbox.ndjson')).sort();
const validations = () => (existsSync(VLOG) ? readFileSync(VLOG, 'utf8').trim().split('\n').length : 0);

t.test('one bad adapter among five: bisected out and quarantined with its report; the other four promoted', async (t) => {
  writeFileSync(INBOX, ['a', 'b', 'bad', 'c', 'd'].map((n) => recs[n]).join('\n') + '\n');
  const r = am(['consolidate', INBOX, '--into', 'live', '--validator', validator]);
  t.equal(r.code, 0, r.stderr);
  const summary = r.records.find((x) => x.kind === 'consolidation') as Rec & { accepted: { id: string }[]; quarantined: { id: string; reason: string }[]; validations: number; promoted: { version: number } };
  t.ok(summary, 'a consolidation record');
  t.same(summary.accepted.map((x) => x.id), ['a', 'b', 'c', 'd']);
  t.same(summary.quarantined.map((x) => x.id), ['bad']);
  t.match(summary.quarantined[0].reason, /latest validation report failed .*kl 0\.9 > 0\.05/);
  // all five fail; [a b bad] fails; [a b] passes; [bad] fails; [c d] passes on top of a, b
  t.equal(summary.validations, 5, 'five validations (about 2·log2 n for one bad adapter)');
  t.equal(validations(), 5, 'the validator ran five times');
  t.match(r.stderr, /trial 4: live \+ 2 accepted \+ \[bad\] → [0-9a-f]{12}: FAIL/);
  // live holds exactly the four good adapters' facts
  const show = am(['show', 'live']);
  t.equal(show.code, 0, show.stderr);
  t.same([...(show.records[0].fact_ids as string[])].sort(), ['a-fact', 'b-fact', 'c-fact', 'd-fact']);
  const log = am(['log', 'live']).records;
  t.equal(log.length, 1, 'one promotion');
  t.match(log[0], { action: 'promote', version: 1, report: /^[0-9a-f]{64}$/ });
  // the quarantine file: the bad adapter's record (with why) and its failing report
  const q = parse(readFileSync(`${INBOX}.quarantine.ndjson`, 'utf8'));
  t.same(q.map((x) => x.kind), ['adapter', 'report']);
  t.match(q[0], { id: 'bad', quarantine: { ref: 'live', reason: /kl 0\.9/, candidate: /^[0-9a-f]{64}$/ } });
  t.match(q[1], { kind: 'report', pass: false, failures: [/bad-fact is in the candidate/] });
  // the inbox was consumed: no pending file is left for the next night
  const files = inboxFiles();
  t.notOk(files.includes('inbox.ndjson'));
  t.notOk(files.some((f) => f.includes('.pending-')), `no pending files: ${files.join(', ')}`);
  t.ok(files.some((f) => f.includes('.done-')));
  t.equal(am(['verify']).code, 0);
});

t.test('the next night is not blocked: a new adapter reaches live with one validation', async (t) => {
  const before = validations();
  writeFileSync(INBOX, recs.e + '\n');
  const r = am(['consolidate', INBOX, '--into', 'live', '--validator', validator, '--text']);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /\nlive: promoted [0-9a-f]{12} \(v2\); 1 adapter\(s\) consolidated, 0 quarantined; 1 validation\(s\)/);
  t.equal(validations() - before, 1);
  t.ok((am(['show', 'live']).records[0].fact_ids as string[]).includes('e-fact'));
  // an empty inbox is nothing to do
  const empty = am(['consolidate', INBOX, '--validator', validator]);
  t.equal(empty.code, 0);
  t.match(empty.stderr, /is empty; nothing to consolidate/);
});

t.test('two patcher bundles on one neuron: the merge refusal is bisected out like a failed validation, not a stop', async (t) => {
  // bundles made apart (no registry to avoid each other's neurons) pick the same least-used neuron;
  // the merge refuses them together, and consolidation must isolate that rather than give up on the night
  const mod = 'transformer.h.3.mlp.c_fc';
  const made: string[] = [];
  for (const [i, [name, neuron]] of ([['pa', 7], ['pb', 7], ['pc', 8]] as const).entries()) {
    const dir = path.join(tmp, name);
    const { sha256, manifest } = await writeSyntheticBundle(dir, {
      seed: 40 + i, id: name, rank: 1, targets: { [mod]: [512, 128], 'transformer.h.3.mlp.c_proj': [128, 512] }, pass: true,
      manifest: { method: 'patcher', training: { neurons: [{ fact_id: `${name}-fact`, module: mod, neuron }] } } as Record<string, unknown>,
    });
    made.push(JSON.stringify({ kind: 'adapter', id: name, version: 1, path: dir, sha256, method: 'patcher', base_model: manifest.base_model, targets: manifest.targets, rank: 1, fact_ids: manifest.fact_ids, created_at: manifest.created_at }));
  }
  const inbox = path.join(tmp, 'patch-inbox.ndjson');
  writeFileSync(inbox, made.join('\n') + '\n');
  const r = am(['consolidate', inbox, '--into', 'patched', '--validator', validator]);
  t.equal(r.code, 0, r.stderr);
  const summary = r.records.find((x) => x.kind === 'consolidation') as Rec & { accepted: { id: string }[]; quarantined: { id: string; reason: string }[]; validations: number };
  t.same(summary.accepted.map((x) => x.id), ['pa', 'pc'], 'the first on neuron 7 and the one on neuron 8 are promoted');
  t.same(summary.quarantined.map((x) => x.id), ['pb'], 'the second on neuron 7 is quarantined');
  t.match(summary.quarantined[0].reason, /merge refused: .*both patch neuron 7 of transformer\.h\.3\.mlp\.c_fc/);
  t.match(r.stderr, /\[pb\]: merge refused/);
  t.equal(summary.validations, 2, 'the validator runs only on candidates that could be merged ([pa], then [pc] on it)');
  const q = parse(readFileSync(`${inbox}.quarantine.ndjson`, 'utf8'));
  t.match(q[0], { id: 'pb', quarantine: { ref: 'patched', reason: /merge refused/, candidate: null } });
  t.same([...(am(['show', 'patched']).records[0].fact_ids as string[])].sort(), ['pa-fact', 'pc-fact']);
});

t.test('a second run while one holds the inbox says so plainly and touches nothing', async (t) => {
  writeFileSync(INBOX, recs.a + '\n');
  const lock = await FileLock.acquire(`${INBOX}.lock`);
  try {
    const r = am(['consolidate', INBOX, '--validator', validator]);
    t.equal(r.code, 1);
    t.match(r.stderr, new RegExp(`^adapter-merge: another consolidation run holds the inbox ${INBOX.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\(pid ${process.pid} on .* since .*; lock file .*inbox\\.ndjson\\.lock\\); this run does nothing`));
    t.ok(existsSync(INBOX), 'the inbox was not renamed');
  } finally {
    await lock.release();
  }
  rmSync(INBOX);
});

t.test('a validator that fails quarantines nothing and keeps the inbox pending', async (t) => {
  writeFileSync(INBOX, recs.a + '\n');
  // `a` is already in live: only new adapters are merged, so add one more that is not
  const dir = path.join(tmp, 'f');
  const { sha256, manifest } = await writeSyntheticBundle(dir, { seed: 99, id: 'f', rank: 2, targets: { 'transformer.h.1.attn.c_attn': [96, 32] }, pass: true });
  appendFileSync(INBOX, JSON.stringify({ kind: 'adapter', id: 'f', version: 1, path: dir, sha256, method: 'lora', base_model: manifest.base_model, targets: manifest.targets, rank: 2, fact_ids: manifest.fact_ids, created_at: manifest.created_at }) + '\n');
  const before = readFileSync(`${INBOX}.quarantine.ndjson`, 'utf8');
  const r = am(['consolidate', INBOX, '--validator', 'cat >/dev/null; exit 3']);
  t.equal(r.code, 1, r.stderr);
  t.match(r.stderr, /validator "cat >\/dev\/null; exit 3" exited with status 3; nothing promoted/);
  t.equal(readFileSync(`${INBOX}.quarantine.ndjson`, 'utf8'), before, 'nothing quarantined');
  t.ok(inboxFiles().some((f) => f.includes('.pending-')), 'the records stay pending for the next night');
  t.equal(am(['log', 'live']).records.length, 2, 'live did not move');
});

t.test('scripts/nightly-consolidate.sh: the pending records of the failed night and a new bad adapter', async (t) => {
  const bad2 = path.join(tmp, 'bad2');
  const { sha256, manifest } = await writeSyntheticBundle(bad2, { seed: 77, id: 'bad', version: 2, rank: 2, targets: { 'transformer.h.1.attn.c_attn': [96, 32] }, pass: true });
  writeFileSync(INBOX, JSON.stringify({ kind: 'adapter', id: 'bad', version: 2, path: bad2, sha256, method: 'lora', base_model: manifest.base_model, targets: manifest.targets, rank: 2, fact_ids: manifest.fact_ids, created_at: manifest.created_at }) + '\n');
  const r = spawnSync('bash', [SCRIPT, INBOX, 'live', '--validator', validator], { env: { ...ENV, CATECHISM_REGISTRY: REG } });
  const out = r.stdout.toString();
  t.equal(r.status, 0, r.stderr.toString());
  t.match(out, /nightly: consolidating .*inbox\.ndjson into live/);
  t.match(out, /live: promoted [0-9a-f]{12} \(v3\); 1 adapter\(s\) consolidated, 1 quarantined/);
  t.match(out, /live@3 /, 'the script shows the end of the history');
  t.ok((am(['show', 'live']).records[0].fact_ids as string[]).includes('f-fact'), 'the pending adapter from the failed night is in live');
  const q = parse(readFileSync(`${INBOX}.quarantine.ndjson`, 'utf8')).filter((x) => x.kind === 'adapter');
  t.same(q.map((x) => [x.id, x.version]), [['bad', 1], ['bad', 2]], 'the new bad adapter joined the quarantine');
  t.notOk(inboxFiles().some((f) => f.includes('.pending-')));
});

t.test('a run in the same second as a failed one keeps both pending files (the inbox is not renamed over the older one)', async (t) => {
  // the failed night's pending file is named by its second; cover every second this run could start in
  const now = Date.now();
  const stamps = Array.from({ length: 90 }, (_, i) => new Date(now - 5000 + i * 1000).toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z'));
  for (const s of stamps) writeFileSync(`${INBOX}.pending-${s}`, recs.e + '\n'); // e is already in live: skipped, no validation
  const dir = path.join(tmp, 'g');
  const { sha256, manifest } = await writeSyntheticBundle(dir, { seed: 123, id: 'g', rank: 2, targets: { 'transformer.h.1.attn.c_attn': [96, 32] }, pass: true });
  writeFileSync(INBOX, JSON.stringify({ kind: 'adapter', id: 'g', version: 1, path: dir, sha256, method: 'lora', base_model: manifest.base_model, targets: manifest.targets, rank: 2, fact_ids: manifest.fact_ids, created_at: manifest.created_at }) + '\n');
  const doneFiles = () => inboxFiles().filter((f) => f.includes('.done-'));
  const before = new Set(doneFiles());
  const r = am(['consolidate', INBOX, '--validator', validator]);
  t.equal(r.code, 0, r.stderr);
  const summary = r.records.find((x) => x.kind === 'consolidation') as Rec & { pending_files: string[]; accepted: { id: string }[] };
  t.equal(summary.pending_files.length, stamps.length + 1, 'every older pending file and the renamed inbox');
  t.same(summary.accepted.map((x) => x.id), ['g']);
  const done = doneFiles().filter((f) => !before.has(f));
  t.equal(done.length, stamps.length + 1, 'all of them end as done files, none overwritten');
  t.equal(done.filter((f) => readFileSync(path.join(tmp, f), 'utf8').includes('"id":"g"')).length, 1, 'the new record kept in its own file');
  t.notOk(inboxFiles().some((f) => f.includes('.pending-')));
});
