import t, { type Test } from 'tap';
import { readFileSync, writeFileSync, chmodSync, existsSync, readdirSync, mkdirSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { createRequire, syncBuiltinESMExports } from 'node:module';
import { sha256Hex, writeSyntheticBundle } from '../src/adapters/index.js';
import { Registry, RegistryError, CorruptObjectError, defaultRegistryDir, type RefEvent } from '../src/registry/index.js';
import { bundleWriter, rejection, tempDir } from './support/registry.js';

const tmp = tempDir('cat-reg-');
const bundle = bundleWriter(tmp);

/** A report that counts for bundle `sha256` (synthetic bundles' base model is sha256("synthetic-base")). */
function bound(sha256: string, rep: Record<string, unknown>): Record<string, unknown> {
  return { bundle_sha256: sha256, base_model_sha256: sha256Hex('synthetic-base'), run: { tool: 'test', id: 'run-1' }, ...rep };
}

function corrupt(file: string): void {
  chmodSync(file, 0o644);
  const b = readFileSync(file);
  b[b.length - 1] ^= 0xff;
  writeFileSync(file, b);
}

t.test('default location', async (t) => {
  t.equal(defaultRegistryDir({ CATECHISM_REGISTRY: '/x/y' }), '/x/y');
  t.match(defaultRegistryDir({}), /\.catechism\/registry$/);
});

t.test('add is content-addressed and idempotent', async (t) => {
  const reg = new Registry(path.join(tmp, 'r-add'));
  await t.rejects(reg.requireExists(), /no registry at/);
  const a = await bundle({ seed: 1, pass: true });
  const r1 = await reg.add(a.dir);
  t.equal(r1.added, true);
  t.equal(r1.bundle.sha256, a.sha256);
  t.equal(r1.bundle.path, path.join(reg.root, 'objects', a.sha256));
  const r2 = await reg.add(a.dir);
  t.equal(r2.added, false, 'second add stores nothing new');
  t.same(await reg.objects(), [a.sha256]);
  // The same content under another directory name is the same object.
  const copy = path.join(tmp, 'copy-of-a');
  await writeSyntheticBundle(copy, { seed: 1, pass: true });
  t.equal((await reg.add(copy)).added, false);
  t.same(readdirSync(path.join(reg.root, 'tmp')), [], 'no staging left');
  t.equal((await reg.verify()).ok, true);
});

t.test('promotion gate, force, no-op, log and chain', async (t) => {
  const reg = new Registry(path.join(tmp, 'r-promote'), { now: () => new Date('2026-11-23T12:00:00Z') });
  const pass = await bundle({ seed: 2, pass: true });
  const fail = await bundle({ seed: 3, pass: false });
  const none = await bundle({ seed: 4, pass: null });
  const e1 = (await reg.promote('live', { dir: pass.dir }, { message: 'first', author: 'alice' })).event as RefEvent;
  t.match(e1, { kind: 'ref_event', ref: 'live', version: 1, action: 'promote', bundle: pass.sha256, previous: null, why: 'first', who: 'alice', when: '2026-11-23T12:00:00.000Z', adapter_id: 'synthetic-2' });
  const refused = await rejection(reg.promote('live', { dir: fail.dir }));
  t.equal(refused.exitCode, 1);
  t.match(refused.message, /refusing to promote synthetic-3 v1 .* to live: its latest validation report failed/);
  const refused2 = await rejection(reg.promote('live', { dir: none.dir }));
  t.match(refused2.message, /has no validation report/);
  t.equal((await reg.log('live')).length, 1, 'refusals leave no history');
  t.ok(existsSync(path.join(reg.root, 'objects', fail.sha256)), 'the refused bundle was still stored (add is independent of the gate)');
  const e2 = (await reg.promote('live', { id: fail.sha256.slice(0, 10) }, { force: true, message: 'hotfix' })).event as RefEvent;
  t.match(e2, { version: 2, action: 'force', previous: pass.sha256, bundle: fail.sha256, forced_over: 'its latest validation report failed', why: 'hotfix' });
  const again = await reg.promote('live', { id: fail.sha256 }, { force: true });
  t.equal(again.event, null, 'promoting the current bundle is a no-op');
  t.equal((await reg.log('live')).length, 2);
  t.equal((await reg.head('live'))?.bundle, fail.sha256);
  t.same(await reg.log('canary'), [], 'unknown ref has empty history');
  // one namespace level is a ref name (acme/live, issue 25); two are not
  await t.rejects(reg.promote('bad/name/deeper', { id: pass.sha256 }), /invalid ref name/);
  await t.rejects(reg.promote('/live', { id: pass.sha256 }), /invalid ref name/);
  await t.rejects(reg.promote('..', { id: pass.sha256 }), /invalid ref name/);
  t.equal((await reg.verify()).ok, true);
});

t.test('attached reports change what the gate sees, and must match the adapter', async (t) => {
  const reg = new Registry(path.join(tmp, 'r-reports'));
  const b = await bundle({ seed: 5, pass: false });
  await reg.add(b.dir);
  await t.rejects(reg.promote('live', { id: 'synthetic-5' }), /latest validation report failed/);
  const { report } = await reg.addReport('synthetic-5', bound(b.sha256, { kind: 'report', adapter_id: 'synthetic-5', pass: true, metrics: { esr: 1 } }), { author: 'ci' });
  t.match(report, { pass: true, recorded_by: 'ci' });
  const hist = (await reg.show(b.sha256)).validation;
  t.same(hist.map((r) => r.pass), [false, true], 'manifest history first, then attached reports');
  t.equal((await reg.promote('live', { id: 'synthetic-5' })).event?.action, 'promote');
  const mismatch = await rejection(reg.addReport(b.sha256, bound(b.sha256, { kind: 'report', adapter_id: 'other', pass: true })));
  t.equal(mismatch.exitCode, 2);
  t.match(mismatch.message, /report is about adapter "other"/);
  await t.rejects(reg.addReport(b.sha256, { kind: 'report', adapter_id: 'synthetic-5' }), /\$\.pass/);
  // A later failing report closes the gate again.
  await reg.addReport(b.sha256, bound(b.sha256, { kind: 'report', adapter_id: 'synthetic-5', pass: false, failures: ['kl too high'] }));
  const c = await bundle({ seed: 6, pass: true });
  await reg.promote('live', { dir: c.dir });
  const back = await rejection(reg.promote('live', { id: b.sha256 }));
  t.match(back.message, /failed \(failures: kl too high\)/);
  t.equal((await reg.verify()).ok, true);
  // The object's bytes (and hash) never changed.
  t.equal((await reg.get(b.sha256)).sha256, b.sha256);
});

t.test('rollback: undo stack by default, --to any version', async (t) => {
  const reg = new Registry(path.join(tmp, 'r-rollback'));
  const [A, B, C] = [await bundle({ seed: 11, pass: true }), await bundle({ seed: 12, pass: true }), await bundle({ seed: 13, pass: true })];
  await t.rejects(reg.rollback('live'), /no history/);
  for (const x of [A, B, C]) await reg.promote('live', { dir: x.dir });
  const r1 = await reg.rollback('live', { message: 'C broke search', author: 'bob' });
  t.match(r1.event, { version: 4, action: 'rollback', bundle: B.sha256, previous: C.sha256, to_version: 2, why: 'C broke search', who: 'bob' });
  const r2 = await reg.rollback('live');
  t.match(r2.event, { version: 5, bundle: A.sha256, to_version: 1 }, 'a second rollback keeps walking back');
  const e = await rejection(reg.rollback('live'));
  t.equal(e.exitCode, 2);
  t.match(e.message, /live@5 restored version 1, the earliest; nothing to roll back to/);
  const r3 = await reg.rollback('live', { to: 3 });
  t.match(r3.event, { version: 6, bundle: C.sha256, to_version: 3 });
  await t.rejects(reg.rollback('live', { to: 3 }), /already points to/);
  await t.rejects(reg.rollback('live', { to: 9 }), /versions 1\.\.6/);
  t.equal(await reg.resolve('live'), C.sha256);
  t.equal(await reg.resolve('live@2'), B.sha256);
  t.equal(await reg.resolve('synthetic-11'), A.sha256);
  t.equal(await reg.resolve('synthetic-11@1'), A.sha256);
  await t.rejects(reg.resolve('live@0'), /versions 1\.\.6/);
  await t.rejects(reg.resolve('nothing-like-this'), /nothing in .* matches/);
  const shown = await reg.show('synthetic-12');
  t.same(shown.refs, [{ ref: 'live', versions: [2, 4], current: false }]);
  t.equal(shown.record.sha256, B.sha256);
  t.equal((await reg.verify()).ok, true);
});

t.test('resolve: highest version of an adapter id; ambiguous prefixes refused', async (t) => {
  const reg = new Registry(path.join(tmp, 'r-resolve'));
  const v1 = await bundle({ seed: 40, id: 'fact-x', version: 1, pass: true });
  const v2 = await bundle({ seed: 41, id: 'fact-x', version: 2, pass: true });
  await reg.add(v1.dir);
  await reg.add(v2.dir);
  t.equal(await reg.resolve('fact-x'), v2.sha256);
  t.equal(await reg.resolve('fact-x@1'), v1.sha256);
  await t.rejects(reg.resolve('abc'), /nothing in/, 'short hex is not a prefix lookup');
  const at = await bundle({ seed: 42, id: 'alice@example', pass: true });
  await reg.add(at.dir);
  t.equal(await reg.resolve('alice@example'), at.sha256, "'@' followed by a non-number is part of the id");
});

t.test('a ref naming a missing object fails verify', async (t) => {
  const reg = new Registry(path.join(tmp, 'r-missing'));
  const A = await bundle({ seed: 71, pass: true });
  await reg.promote('live', { dir: A.dir });
  rmSync(path.join(reg.root, 'objects', A.sha256), { recursive: true, force: true });
  const v = await reg.verify();
  t.equal(v.ok, false);
  t.match(v.problems, [{ area: 'ref', target: 'live@1', problem: /points to missing object/ }]);
  const e = await rejection(reg.show('live'));
  t.equal(e.exitCode, 1);
  t.match(e.message, /is missing, but live@1 names it/);
  t.equal((await reg.add(A.dir)).added, true, 're-adding restores it');
  t.equal((await reg.verify()).ok, true);
});

t.test('corruption is detected on read, never used, reported by verify, repaired by re-adding', async (t) => {
  const reg = new Registry(path.join(tmp, 'r-corrupt'));
  const A = await bundle({ seed: 21, pass: true });
  const B = await bundle({ seed: 22, pass: true });
  await reg.promote('live', { dir: A.dir });
  await reg.promote('live', { dir: B.dir });
  const aWeights = path.join(reg.root, 'objects', A.sha256, 'adapter_model.safetensors');
  corrupt(aWeights);
  const e = await rejection(reg.get(A.sha256));
  t.ok(e instanceof CorruptObjectError);
  t.match(e.message, new RegExp(`object ${A.sha256} is corrupted`));
  await t.rejects(reg.rollback('live'), CorruptObjectError, 'rollback refuses a corrupted target');
  t.equal((await reg.log('live')).length, 2, 'and writes nothing');
  await t.rejects(reg.show(A.sha256), CorruptObjectError);
  const v = await reg.verify();
  t.equal(v.ok, false);
  t.same(v.problems.map((p) => [p.area, p.target]), [
    ['object', A.sha256],
    ['ref', 'live@1'],
  ]);
  t.match(v.problems[1].problem, /points to corrupted object/);
  // An extra file slipped into an object is corruption too.
  writeFileSync(path.join(reg.root, 'objects', B.sha256, 'extra.txt'), 'x');
  t.equal((await reg.verify()).problems.filter((p) => p.target === B.sha256).length, 1);
  rmSync(path.join(reg.root, 'objects', B.sha256, 'extra.txt'));
  // Re-adding the original bytes repairs the object.
  const fixed = await reg.add(A.dir);
  t.equal(fixed.repaired, true);
  t.equal((await reg.verify()).ok, true);
  t.equal((await reg.rollback('live')).event.bundle, A.sha256);
});

t.test('an edited history is detected (hash chain)', async (t) => {
  const reg = new Registry(path.join(tmp, 'r-chain'));
  const A = await bundle({ seed: 31, pass: true });
  const B = await bundle({ seed: 32, pass: true });
  await reg.promote('live', { dir: A.dir }, { message: 'ok' });
  await reg.promote('live', { dir: B.dir });
  const file = path.join(reg.root, 'refs', 'live.ndjson');
  const lines = readFileSync(file, 'utf8').trim().split('\n');
  const ev = JSON.parse(lines[0]);
  ev.who = 'mallory';
  lines[0] = JSON.stringify(ev);
  writeFileSync(file, lines.join('\n') + '\n');
  const v = await reg.verify();
  t.equal(v.ok, false);
  t.match(v.problems[0], { area: 'ref', target: 'live@1', problem: /hash chain broken/ });
  writeFileSync(file, lines.slice(1).join('\n') + '\n');
  t.ok((await reg.verify()).problems.some((p) => /has 1 line\(s\), but its head record says 2: it was cut/.test(p.problem)), 'a deleted line is detected');
  writeFileSync(file, '{"kind":');
  t.match((await reg.verify()).problems[0].problem, /line 1 is not valid JSON/);
  await t.rejects(reg.log('live'), /not valid JSON/);
});

t.test('leftovers of killed writers are harmless and cleaned by the next writer', async (t) => {
  const reg = new Registry(path.join(tmp, 'r-leftovers'));
  const A = await bundle({ seed: 51, pass: true });
  await reg.add(A.dir);
  mkdirSync(path.join(reg.root, 'tmp', 'add.tmp-1-abc'));
  writeFileSync(path.join(reg.root, 'tmp', 'live.ndjson.tmp-1-abc'), '{"partial');
  // A stale lock left by a dead process (this pid is above the kernel's pid limit, 2^22, so it cannot be alive).
  writeFileSync(path.join(reg.root, 'lock'), JSON.stringify({ pid: 4194999, host: (await import('node:os')).hostname(), start: '1', acquired_at: 'then' }));
  const v = await reg.verify();
  t.equal(v.ok, true);
  t.equal(v.notes.length, 2);
  await reg.promote('live', { id: A.sha256 });
  t.same(readdirSync(path.join(reg.root, 'tmp')), []);
  t.notOk(existsSync(path.join(reg.root, 'lock')), 'stale lock broken, then released');
});

t.test('not a registry', async (t) => {
  const dir = path.join(tmp, 'r-foreign');
  mkdirSync(dir);
  writeFileSync(path.join(dir, 'registry.json'), '{"format":"something-else"}');
  const e = await rejection(new Registry(dir).verify());
  t.equal(e.exitCode, 2);
  t.match(e.message, /is not a catechism registry/);
  const A = await bundle({ seed: 61, pass: true });
  await t.rejects(new Registry(dir).add(A.dir), /not a catechism registry/, 'writers refuse it too');
  const home = path.join(tmp, 'r-somebodys-home');
  mkdirSync(home);
  writeFileSync(path.join(home, 'notes.txt'), 'mine');
  const e2 = await rejection(new Registry(home).add(A.dir));
  t.equal(e2.exitCode, 2);
  t.match(e2.message, /is not empty and not a registry \(found notes\.txt\)/);
  t.same(readdirSync(home), ['notes.txt'], 'nothing created there');
  // A registry whose first write was interrupted (layout made, no registry.json yet) is completed.
  const half = path.join(tmp, 'r-half');
  mkdirSync(path.join(half, 'objects'), { recursive: true });
  mkdirSync(path.join(half, 'tmp'));
  t.equal((await new Registry(half).add(A.dir)).added, true);
});

/**
 * Runs `fn` as if its writer were killed between a chained log's rename and its head's: the
 * rename onto `head` that follows the rename onto `log` fails (node:fs/promises' rename is
 * wrapped for the call; syncBuiltinESMExports carries the wrapper into the registry's import).
 */
async function killedBeforeHead(log: string, head: string, fn: () => Promise<unknown>): Promise<{ logWritten: boolean; headWrites: number }> {
  const fsp = createRequire(import.meta.url)('node:fs/promises') as typeof import('node:fs/promises');
  const original = fsp.rename;
  const seen = { logWritten: false, headWrites: 0 };
  fsp.rename = (async (from: string, to: string) => {
    if (path.resolve(String(to)) === head) {
      if (seen.logWritten) throw new Error('killed between the log and its head');
      seen.headWrites++;
    }
    await original(from, to);
    if (path.resolve(String(to)) === log) seen.logWritten = true;
  }) as typeof fsp.rename;
  syncBuiltinESMExports();
  try {
    await fn().then(
      () => {
        throw new Error('the write was expected to be interrupted');
      },
      (e: Error) => {
        if (!/killed between the log and its head/.test(e.message)) throw e;
      },
    );
  } finally {
    fsp.rename = original;
    syncBuiltinESMExports();
  }
  return seen;
}

interface ChainedLog {
  what: string;
  log: string;
  head: string;
  first: () => Promise<unknown>;
  next: () => Promise<unknown>;
  read: () => Promise<unknown[]>;
}

/**
 * The state a writer killed between a first write's log and its head leaves: one line, no head
 * (readers accept it). The next append must write the head of what is there before appending,
 * or a second kill in the same window leaves two lines and no head, which verify refuses.
 */
async function headlessThenKilled(t: Test, reg: Registry, l: ChainedLog): Promise<void> {
  await l.first();
  t.ok(existsSync(l.head), `${l.what}: a normal write leaves a head`);
  rmSync(l.head);
  t.equal((await l.read()).length, 1, `${l.what}: one line and no head reads`);
  const seen = await killedBeforeHead(l.log, l.head, l.next);
  t.ok(seen.logWritten, `${l.what}: the second write reached its log`);
  t.equal(readFileSync(l.log, 'utf8').trim().split('\n').length, 2, `${l.what}: two lines after the interrupted write`);
  const v = await reg.verify();
  t.equal(v.ok, true, `${l.what}: verify accepts a log one line ahead of its caught-up head: ${JSON.stringify(v.problems)}`);
  t.same(existsSync(l.head) ? JSON.parse(readFileSync(l.head, 'utf8')) : null, { count: 1, chain: JSON.parse(readFileSync(l.log, 'utf8').split('\n')[0]).chain }, `${l.what}: the head was caught up (line 1) before the log grew`);
  t.equal((await l.read()).length, 2, `${l.what}: both lines read`);
}

t.test('a chained log whose head is missing gets its head caught up on the next append', async (t) => {
  const reg = new Registry(path.join(tmp, 'r-headless'));
  const A = await bundle({ seed: 61, pass: true });
  const B = await bundle({ seed: 62, pass: true });
  const C = await bundle({ seed: 63, pass: true });
  await headlessThenKilled(t, reg, {
    what: 'ref history',
    log: path.join(reg.root, 'refs', 'live.ndjson'),
    head: path.join(reg.root, 'refs', 'live.head'),
    first: () => reg.promote('live', { dir: A.dir }),
    next: () => reg.promote('live', { dir: B.dir }),
    read: () => reg.log('live'),
  });
  // an appendChained log (approvals, canaries and the watch log share it)
  await headlessThenKilled(t, reg, {
    what: 'watch log',
    log: path.join(reg.root, 'watch', 'live.ndjson'),
    head: path.join(reg.root, 'watch', 'live.head'),
    first: () => reg.watch('live', { metrics: { kl: 0.01 }, pass: true, failures: [] }),
    next: () => reg.watch('live', { metrics: { kl: 0.02 }, pass: true, failures: [] }),
    read: () => reg.watchLog('live'),
  });
  // and the next write completes normally on top of it
  await reg.promote('live', { dir: C.dir });
  t.same(JSON.parse(readFileSync(path.join(reg.root, 'refs', 'live.head'), 'utf8')).count, 3);
  t.equal((await reg.verify()).ok, true);
});

t.test('a report log whose head is missing gets its head caught up on the next append', async (t) => {
  const reg = new Registry(path.join(tmp, 'r-headless-reports'));
  const A = await bundle({ seed: 64, pass: true });
  await reg.add(A.dir);
  await headlessThenKilled(t, reg, {
    what: 'report log',
    log: path.join(reg.root, 'reports', `${A.sha256}.ndjson`),
    head: path.join(reg.root, 'reports', `${A.sha256}.head`),
    first: () => reg.addReport(A.sha256, bound(A.sha256, { kind: 'report', adapter_id: A.id, pass: true })),
    next: () => reg.addReport(A.sha256, bound(A.sha256, { kind: 'report', adapter_id: A.id, pass: true, metrics: { esr: 1 } })),
    read: () => reg.attachedReports(A.sha256),
  });
});
