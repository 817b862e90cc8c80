/**
 * Concurrent writers serialise on the registry lock: several child processes
 * promote at the same moment, and every promotion lands in the history
 * exactly once, with a consistent chain. Also: lock timeouts and stale locks.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync, writeFileSync, readFileSync, utimesSync } from 'node:fs';
import { tmpdir, hostname } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { writeSyntheticBundle } from '../src/adapters/index.js';
import { Registry, FileLock, LockTimeoutError } from '../src/registry/index.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.join(here, '..', 'dist');
const tmp = mkdtempSync(path.join(tmpdir(), 'cat-conc-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));

const WRITERS = 4;
const EACH = 5;

t.test(`${WRITERS} writers × ${EACH} promotions at once: each lands exactly once`, { skip: !existsSync(path.join(dist, 'registry', 'index.js')) && 'build @catechism/core first' }, async (t) => {
  const root = path.join(tmp, 'registry');
  const plan: { dir: string; sha256: string }[][] = [];
  for (let w = 0; w < WRITERS; w++) {
    plan.push([]);
    for (let k = 0; k < EACH; k++) {
      const dir = path.join(tmp, `w${w}-b${k}`);
      const { sha256 } = await writeSyntheticBundle(dir, { seed: 1000 + w * 100 + k, pass: true });
      plan[w].push({ dir, sha256 });
    }
  }
  // Children wait for "go" on stdin so that they really start together.
  const src = `
    const { Registry } = await import(${JSON.stringify(pathToFileURL(path.join(dist, 'registry', 'index.js')).href)});
    const [root, dirsJson, who] = process.argv.slice(1);
    const reg = new Registry(root, { timeoutMs: 60000 });
    process.stdout.write('ready\\n');
    await new Promise((r) => process.stdin.once('data', r));
    for (const d of JSON.parse(dirsJson)) await reg.promote('live', { dir: d.dir }, { author: who, message: d.sha256 });
    process.stdin.destroy();
  `;
  const kids = plan.map((dirs, w) => {
    const c = spawn(process.execPath, ['--input-type=module', '-e', src, root, JSON.stringify(dirs), `writer-${w}`], { stdio: ['pipe', 'pipe', 'pipe'] });
    let err = '';
    c.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const ready = new Promise<void>((r) => c.stdout.once('data', () => r()));
    const done = new Promise<{ code: number | null; err: () => string }>((r) => c.on('exit', (code) => r({ code, err: () => err })));
    return { c, ready, done };
  });
  await Promise.all(kids.map((k) => k.ready));
  for (const k of kids) k.c.stdin.write('go\n');
  // Readers take no lock: verifying while the writers run must never see an inconsistent registry.
  let finished = false;
  const all = Promise.all(kids.map((k) => k.done)).finally(() => (finished = true));
  const reader = new Registry(root);
  let reads = 0;
  while (!finished) {
    if (existsSync(path.join(root, 'registry.json'))) {
      const v = await reader.verify();
      if (!v.ok) t.fail(`verify during writes: ${JSON.stringify(v.problems)}`);
      reads++;
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  t.comment(`${reads} verifications ran while the writers wrote`);
  const results = await all;
  results.forEach((r, w) => t.equal(r.code, 0, `writer ${w} exited cleanly ${r.err()}`));

  const reg = new Registry(root);
  const log = await reg.log('live');
  t.equal(log.length, WRITERS * EACH, 'every promotion is in the history');
  t.same(log.map((e) => e.version), Array.from({ length: WRITERS * EACH }, (_, i) => i + 1));
  const bundles = log.map((e) => e.bundle);
  t.equal(new Set(bundles).size, WRITERS * EACH, 'each exactly once');
  t.same([...bundles].sort(), plan.flat().map((d) => d.sha256).sort());
  for (let i = 1; i < log.length; i++) if (log[i].previous !== log[i - 1].bundle) t.fail(`event ${i + 1}: previous does not match`);
  // Each writer's own promotions keep their order.
  for (let w = 0; w < WRITERS; w++) {
    const mine = log.filter((e) => e.who === `writer-${w}`).map((e) => e.bundle);
    t.same(mine, plan[w].map((d) => d.sha256), `writer ${w}'s promotions are in its order`);
  }
  const v = await reg.verify();
  t.equal(v.ok, true);
  t.same(v.notes, []);
});

t.test('a held lock makes a writer wait, then time out naming the holder', async (t) => {
  const root = path.join(tmp, 'held');
  const reg = new Registry(root, { timeoutMs: 300 });
  const { sha256 } = await writeSyntheticBundle(path.join(tmp, 'held-b'), { seed: 5, pass: true });
  await reg.add(path.join(tmp, 'held-b'));
  const lock = await FileLock.acquire(path.join(root, 'lock'));
  const t0 = Date.now();
  await t.rejects(reg.promote('live', { id: sha256 }), LockTimeoutError);
  t.ok(Date.now() - t0 >= 250, 'it waited');
  await t.rejects(reg.promote('live', { id: sha256 }), new RegExp(`locked by pid ${process.pid} on `));
  // Our own live lock is not stale; after release the write goes through.
  await lock.release();
  t.equal((await reg.promote('live', { id: sha256 })).event?.version, 1);
});

t.test('stale locks: dead pid, reused pid, unwritten, other host', async (t) => {
  const file = path.join(tmp, 'stale.lock');
  const me = hostname();
  const ownStart = readFileSync('/proc/self/stat', 'utf8').slice(readFileSync('/proc/self/stat', 'utf8').lastIndexOf(')') + 2).split(' ')[19];
  const cases: [string, string, boolean][] = [
    ['dead pid', JSON.stringify({ pid: 4194999, host: me, start: '1', acquired_at: 'x' }), true],
    ['live pid, different start time (pid reused)', JSON.stringify({ pid: process.ppid, host: me, start: '1', acquired_at: 'x' }), true],
    ['live pid, same start time', JSON.stringify({ pid: process.pid + 0, host: me, start: ownStart, acquired_at: 'x' }), false],
    ['other host, fresh', JSON.stringify({ pid: 1, host: 'elsewhere.example', start: null, acquired_at: 'x' }), false],
  ];
  for (const [name, content, stale] of cases) {
    writeFileSync(file, content);
    if (stale) {
      const l = await FileLock.acquire(file, { timeoutMs: 2000 });
      t.pass(`${name}: broken`);
      await l.release();
      t.notOk(existsSync(file));
    } else {
      await t.rejects(FileLock.acquire(file, { timeoutMs: 100 }), LockTimeoutError, `${name}: respected`);
    }
  }
  // A lock file whose owner never got to write its pid: respected briefly, then broken.
  writeFileSync(file, '');
  await t.rejects(FileLock.acquire(file, { timeoutMs: 100 }), LockTimeoutError, 'unwritten, fresh: respected');
  utimesSync(file, new Date(Date.now() - 10_000), new Date(Date.now() - 10_000));
  await (await FileLock.acquire(file, { timeoutMs: 1000 })).release();
  t.pass('unwritten, old: broken');
  writeFileSync(file, JSON.stringify({ pid: 1, host: 'elsewhere.example', start: null, acquired_at: 'x' }));
  const l = await FileLock.acquire(file, { timeoutMs: 1000, staleMs: 0 });
  t.pass('other host, older than staleMs: broken');
  await l.release();
});
