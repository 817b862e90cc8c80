/**
 * Crash safety: child processes add, promote, roll back and attach reports
 * in a loop and are killed with SIGKILL at random moments, many times. After
 * every kill the registry must read and verify, and every ref must point to a
 * complete object. Children import the built library (dist/), as the CLI does.
 */
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { writeSyntheticBundle } from '../src/adapters/index.js';
import { Registry } from '../src/registry/index.js';
import { Rng } from '../src/util/random.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.join(here, '..', 'dist');
const ITER = Number(process.env.CATECHISM_CRASH_ITERATIONS ?? 60);

if (!existsSync(path.join(dist, 'registry', 'index.js'))) {
  t.fail(`build @catechism/core first (${dist} is missing): npx tsc -p tools/core/tsconfig.json`);
} else {
  const tmp = mkdtempSync(path.join(tmpdir(), 'cat-crash-'));
  t.teardown(() => rmSync(tmp, { recursive: true, force: true }));

  // The child: endless random writes; prints "ready" once loaded, then a line per completed op.
  const childSrc = `
    const { Registry } = await import(${JSON.stringify(pathToFileURL(path.join(dist, 'registry', 'index.js')).href)});
    const [root, dirsJson, seedStr] = process.argv.slice(1);
    const dirs = JSON.parse(dirsJson);
    let s = Number(seedStr) >>> 0;
    const rnd = (n) => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return s % n; };
    const reg = new Registry(root, { timeoutMs: 30000 });
    const base = (await import('node:crypto')).createHash('sha256').update('synthetic-base').digest('hex');
    process.stdout.write('ready\\n');
    for (;;) {
      const op = rnd(5);
      const d = dirs[rnd(dirs.length)];
      try {
        if (op === 0) await reg.add(d.dir);
        else if (op === 1) await reg.promote('live', { dir: d.dir }, { message: 'crash test' });
        else if (op === 2) await reg.promote('canary', { dir: d.dir }, { force: true });
        else if (op === 3) await reg.rollback('live');
        else await reg.addReport(d.sha256, { kind: 'report', adapter_id: d.id, pass: true, bundle_sha256: d.sha256, base_model_sha256: base, run: { tool: 'crash-test', id: String(process.pid) } });
      } catch (err) {
        // Refusals (nothing to roll back, a failing report at the gate) are expected; anything else is a bug.
        if (!(err && (err.exitCode === 2 || err.code === 'E_GATE'))) { process.stderr.write('child error: ' + err.stack + '\\n'); process.exit(3); }
      }
      process.stdout.write('op\\n');
    }
  `;

  function startChild(root: string, dirs: unknown, seed: number): { child: ChildProcess; ready: Promise<void>; ops: () => number; stderr: () => string } {
    const child = spawn(process.execPath, ['--input-type=module', '-e', childSrc, root, JSON.stringify(dirs), String(seed)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let resolveReady: () => void;
    const ready = new Promise<void>((r) => (resolveReady = r));
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.startsWith('ready\n')) resolveReady();
    });
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.on('exit', () => resolveReady());
    return { child, ready, ops: () => out.split('\n').filter((l) => l === 'op').length, stderr: () => err };
  }

  const exited = (c: ChildProcess) => new Promise<{ code: number | null; signal: string | null }>((r) => {
    if (c.exitCode !== null || c.signalCode !== null) r({ code: c.exitCode, signal: c.signalCode });
    else c.on('exit', (code, signal) => r({ code, signal }));
  });
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  t.test(`SIGKILL at random points, ${ITER} times: the registry stays consistent`, async (t) => {
    const dirs: { dir: string; sha256: string; id: string }[] = [];
    for (let i = 0; i < 6; i++) {
      const dir = path.join(tmp, `bundle-${i}`);
      // ~200 KB of weights so copies take long enough to be interrupted mid-way.
      const { sha256, manifest } = await writeSyntheticBundle(dir, { seed: 100 + i, pass: i % 3 !== 0, rank: 8, targets: { 'h.0.mlp': [384, 384], 'h.1.mlp': [384, 384], 'h.2.mlp': [384, 384], 'h.3.mlp': [384, 384] } });
      dirs.push({ dir, sha256, id: manifest.id });
    }
    const root = path.join(tmp, 'registry');
    const reg = new Registry(root);
    const rng = new Rng(2026);
    let totalOps = 0;
    let killedMidway = 0;
    const seen = new Map<string, string[]>();
    for (let i = 0; i < ITER; i++) {
      const c = startChild(root, dirs, rng.int(1 << 30));
      await c.ready;
      await sleep(rng.int(60));
      c.child.kill('SIGKILL');
      const { signal } = await exited(c.child);
      if (signal !== 'SIGKILL') {
        t.fail(`child ${i} ended by itself (${signal ?? 'exit'}): ${c.stderr()}`);
        break;
      }
      totalOps += c.ops();
      if (!existsSync(path.join(root, 'registry.json'))) continue; // killed before the first write created it
      const v = await reg.verify();
      if (!v.ok) {
        t.fail(`after kill ${i}: ${JSON.stringify(v.problems)}`);
        break;
      }
      if (v.notes.length > 0) killedMidway++;
      for (const ref of await reg.refs()) {
        const log = await reg.log(ref);
        const head = log[log.length - 1];
        if (head) await reg.get(head.bundle); // throws if not a complete, intact object
        // Append-only: what was there after the last kill is still there, unchanged.
        const before = seen.get(ref) ?? [];
        if (log.length < before.length || before.some((c, k) => log[k].chain !== c)) {
          t.fail(`after kill ${i}: history of ${ref} was rewritten or shortened`);
        }
        seen.set(ref, log.map((e) => e.chain));
      }
    }
    t.ok(totalOps > 0, `children completed ${totalOps} operations between kills`);
    t.comment(`${ITER} kills, ${totalOps} completed operations, ${killedMidway} kills left a lock or temporaries behind`);
    // Still writable afterwards: a stale lock is broken, leftovers are cleaned.
    const ev = await reg.promote('live', { dir: dirs[1].dir }, { force: true, message: 'after the storm' });
    t.ok(ev.bundle.sha256 === dirs[1].sha256);
    const v = await reg.verify();
    t.equal(v.ok, true);
    // A ref the clean write did not touch may still have a head record one event behind (a kill
    // between the history's and the head's rename): verify notes it, and that ref's next write catches up.
    t.same(v.notes.filter((n) => !/head record lags/.test(n)), [], 'no lock or temporaries left after a clean write');
    t.ok((await reg.log('live')).length > 0);
  });
}
