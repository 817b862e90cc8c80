/**
 * Compare-and-swap promotion (`expectHead`): a read-merge-promote cycle
 * promotes only if the ref still points where it was read, checked under the
 * writer lock, so two concurrent consolidations cannot silently overwrite
 * each other.
 */
import t from 'tap';
import * as path from 'node:path';
import { Registry, RefMovedError, type RegistryError } from '../src/registry/index.js';
import { bundleWriter, rejection, tempDir } from './support/registry.js';

const tmp = tempDir('cat-cas-');
const write = bundleWriter(tmp);
const bundle = (seed: number) => write({ seed, pass: true });

t.test('expectHead: null means "the ref must not exist yet"; a hash means "the ref must point there"', async (t) => {
  const reg = new Registry(path.join(tmp, 'r1'));
  const a = await bundle(1);
  const b = await bundle(2);
  const c = await bundle(3);
  const first = await reg.promote('live', { dir: a.dir }, { expectHead: null });
  t.equal(first.event?.bundle, a.sha256, 'an empty ref with expectHead null is promoted');

  const again = await rejection(reg.promote('live', { dir: b.dir }, { expectHead: null }));
  t.ok(again instanceof RefMovedError);
  t.equal(again.code, 'E_MOVED');
  t.equal(again.exitCode, 1);
  t.match(again.message, `live moved: expected it at empty, it is at ${a.sha256.slice(0, 12)}; nothing promoted`);
  t.same((await reg.log('live')).map((e) => e.bundle), [a.sha256], 'nothing appended');

  const second = await reg.promote('live', { dir: b.dir }, { expectHead: a.sha256 });
  t.equal(second.event?.version, 2);
  // a writer that read the head before `second` and promotes after it is refused
  const stale = await rejection(reg.promote('live', { dir: c.dir }, { expectHead: a.sha256 }));
  t.equal(stale.code, 'E_MOVED');
  t.match(stale.message, `expected it at ${a.sha256.slice(0, 12)}, it is at ${b.sha256.slice(0, 12)}`);
  t.same((await reg.log('live')).map((e) => e.bundle), [a.sha256, b.sha256], 'the stale promotion left no trace in the history');
  // the refused bundle was still stored (nothing lost): it can be promoted knowingly
  t.equal((await reg.get(c.sha256)).sha256, c.sha256);

  // without expectHead, promote behaves as before (last writer wins)
  t.equal((await reg.promote('live', { id: c.sha256 })).event?.version, 3);
  // even the no-op case (the head is already the bundle) is refused when the head is not the expected one
  t.equal((await rejection(reg.promote('live', { id: c.sha256 }, { expectHead: b.sha256 }))).code, 'E_MOVED');
  t.equal((await reg.promote('live', { id: c.sha256 }, { expectHead: c.sha256 })).event, null, 'expected head and same bundle: no-op');
  t.equal((await reg.verify()).ok, true);
});

t.test('expectHead must be a full hash or null', async (t) => {
  const reg = new Registry(path.join(tmp, 'r2'));
  const a = await bundle(4);
  const e = await rejection(reg.promote('live', { dir: a.dir }, { expectHead: a.sha256.slice(0, 12) }));
  t.equal(e.code, 'E_USAGE');
  t.equal(e.exitCode, 2);
  t.match(e.message, /expected head of live must be a full sha256 or null/);
});

t.test('two writers that read the same head: exactly one promotion lands', async (t) => {
  const reg = new Registry(path.join(tmp, 'r3'));
  const base = await bundle(5);
  await reg.promote('live', { dir: base.dir });
  const x = await bundle(6);
  const y = await bundle(7);
  // Two Registry objects, as two processes would have; both read the same head, then race.
  const head = (await reg.head('live'))!.bundle;
  const results = await Promise.allSettled([
    new Registry(reg.root).promote('live', { dir: x.dir }, { expectHead: head }),
    new Registry(reg.root).promote('live', { dir: y.dir }, { expectHead: head }),
  ]);
  const won = results.filter((r) => r.status === 'fulfilled');
  const lost = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  t.equal(won.length, 1, 'one winner');
  t.equal(lost.length, 1, 'one loser');
  t.equal((lost[0].reason as RegistryError).code, 'E_MOVED');
  const log = await reg.log('live');
  t.equal(log.length, 2, 'exactly one event after the base');
  t.ok([x.sha256, y.sha256].includes(log[1].bundle));
  t.same((await reg.objects()).sort(), [base.sha256, x.sha256, y.sha256].sort(), "the loser's bundle is stored, not lost");
});
