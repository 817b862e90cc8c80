/** SIGKILL `adapter-merge add/promote` processes at random moments: the registry must still verify. */
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Rng } from '@catechism/core';
import { writeSyntheticBundle, Registry } from '../src/core.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const MAIN = path.join(here, '..', 'dist', 'main.js');
const ITER = Number(process.env.CATECHISM_CLI_CRASH_ITERATIONS ?? 12);
const tmp = mkdtempSync(path.join(tmpdir(), 'cat-am-crash-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));

t.test(`killing adapter-merge ${ITER} times leaves a consistent registry`, async (t) => {
  const dirs: string[] = [];
  for (let i = 0; i < 4; i++) {
    const dir = path.join(tmp, `b${i}`);
    await writeSyntheticBundle(dir, { seed: 500 + i, pass: true, rank: 16, targets: { 'h.0.mlp': [512, 512], 'h.1.mlp': [512, 512] } });
    dirs.push(dir);
  }
  const root = path.join(tmp, 'reg');
  const rng = new Rng(7);
  // Time one undisturbed run, so the kills can be spread over start-up and the write itself.
  const t0 = Date.now();
  const first = spawn(process.execPath, [MAIN, 'add', ...dirs, '--registry', root, '--quiet'], { stdio: 'ignore' });
  t.equal(await new Promise((r) => first.on('exit', r)), 0, 'an undisturbed add succeeds');
  const runMs = Date.now() - t0;
  let completed = 0;
  let midWrite = 0;
  for (let i = 0; i < ITER; i++) {
    const args = rng.int(2) === 0 ? ['promote', 'live', dirs[rng.int(dirs.length)], '-m', `run ${i}`] : ['add', ...dirs];
    const child = spawn(process.execPath, [MAIN, ...args, '--registry', root, '--quiet'], { stdio: 'ignore' });
    const timer = setTimeout(() => child.kill('SIGKILL'), Math.round(runMs * (0.4 + rng.uniform())));
    const { code, signal } = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.on('exit', (code, signal) => r({ code, signal })));
    clearTimeout(timer);
    // one assertion per run either way, so the count does not depend on which runs the timer killed
    t.ok(signal !== null || code === 0, `run ${i} (${args[0]}) was killed or finished by itself with exit 0 (exit ${code}, signal ${signal})`);
    if (signal === null) completed++;
    // the first, undisturbed add wrote registry.json, so it is always there to verify
    const v = await new Registry(root).verify();
    t.ok(v.ok, `the registry verifies after run ${i}: ${JSON.stringify(v.problems)}`);
    if (signal !== null && v.notes.length > 0) midWrite++;
  }
  t.comment(`one run takes ${runMs} ms; ${ITER - completed} killed (${midWrite} inside a write: lock or temporaries left), ${completed} completed`);
  // A clean run afterwards breaks any stale lock and succeeds.
  const last = spawn(process.execPath, [MAIN, 'promote', 'live', dirs[0], '--force', '--registry', root], { stdio: 'ignore' });
  t.equal(await new Promise((r) => last.on('exit', r)), 0);
  const v = await new Registry(root).verify();
  t.equal(v.ok, true);
  t.same(v.notes, []);
});
