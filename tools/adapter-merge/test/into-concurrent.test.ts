/**
 * Two `adapter-merge --into live` processes at once. Both read live's head,
 * merge and validate; a barrier in the validator makes sure both have read
 * the head before either promotes, and the test holds the registry lock while
 * they finish validating, so both are past any check made outside the lock
 * and queue on it (the worst case). The promotion is a compare-and-swap under
 * the registry lock: one wins, the other exits 1 with "moved" and its merged
 * bundle stays stored; running it again consolidates both. Never a silent
 * overwrite. (With the earlier check-then-promote, both promoted here.)
 */
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { FileLock, Registry, writeSyntheticBundle, sha256Hex } from '../src/core.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const MAIN = path.join(here, '..', 'dist', 'main.js');
const tmp = mkdtempSync(path.join(tmpdir(), 'cat-amc-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));
const REG = path.join(tmp, 'reg');
const ENV = { ...process.env, USER: 'tester', PATH: '/usr/bin:/bin' };

interface Run {
  code: number | null;
  stderr: string;
  records: Record<string, unknown>[];
}

const parse = (s: string) => (s.trim().startsWith('{') ? s.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>) : []);

function am(args: string[], input = ''): Run {
  const r = spawnSync(process.execPath, [MAIN, ...args, '--registry', REG], { input, cwd: tmp, env: ENV });
  return { code: r.status, stderr: r.stderr.toString('utf8'), records: parse(r.stdout.toString('utf8')) };
}

function amAsync(args: string[], input: string): Promise<Run> {
  const c = spawn(process.execPath, [MAIN, ...args, '--registry', REG], { cwd: tmp, env: ENV });
  let out = '';
  let err = '';
  c.stdout.on('data', (d: Buffer) => (out += d.toString()));
  c.stderr.on('data', (d: Buffer) => (err += d.toString()));
  c.stdin.end(input);
  return new Promise((resolve) => c.on('close', (code) => resolve({ code, stderr: err, records: parse(out) })));
}

const dirs: Record<string, string> = {};
const shas: Record<string, string> = {};
const rec = (name: string) =>
  JSON.stringify({ kind: 'adapter', id: name, version: 1, path: dirs[name], sha256: shas[name], method: 'lora', base_model: { name: 'synthetic-base', sha256: sha256Hex('synthetic-base') }, targets: ['x'], rank: 2, fact_ids: [`${name}-fact`], created_at: '2026-01-01T00:00:00.000Z' });

/** Every adapter hash a bundle is made of (its parents, recursively, as far as the registry has them). */
const ancestry = (sha: string): Promise<Set<string>> => new Registry(REG).ancestry(sha);

t.before(async () => {
  const targets = { 'transformer.h.1.attn.c_attn': [96, 32] } as Record<string, [number, number]>;
  for (const [name, seed] of [['base', 1], ['x', 2], ['y', 3]] as const) {
    dirs[name] = path.join(tmp, name);
    shas[name] = (await writeSyntheticBundle(dirs[name], { seed, id: name, rank: 2, targets, pass: true })).sha256;
  }
});

t.test('two concurrent --into live runs: one wins, the other fails with "moved", nothing is lost', async (t) => {
  const barrier = path.join(tmp, 'barrier');
  mkdirSync(barrier);
  // Each validator run attaches its report to the merged bundle itself (as catechism's validate does, so
  // adapter-merge goes straight from validating to promoting), registers in the barrier, then waits (at most
  // 20 s) for the test's "go" (a third file), which comes once both have registered.
  const fake = `"${process.execPath}" "${path.join(here, '..', 'test-support', 'fake-validator.mjs')}" pass`;
  const shaOf = `"${process.execPath}" -e 'let s="";process.stdin.on("data",(d)=>(s+=d)).on("end",()=>console.log(JSON.parse(s).sha256))'`;
  const validator =
    `in=$(cat); sha=$(echo "$in" | ${shaOf}); rep=$(echo "$in" | ${fake}); echo "$rep" | "${process.execPath}" "${MAIN}" report "$sha" --registry "${REG}" >/dev/null || exit 1; ` +
    `touch "${barrier}/$$"; i=0; while [ "$(ls "${barrier}" | wc -l)" -lt 3 ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; echo "$rep"`;
  const passing = fake;
  const first = am(['--into', 'live', '--validator', passing], rec('base'));
  t.equal(first.code, 0, first.stderr);
  const live1 = String(first.records[0].sha256);

  const both = Promise.all([amAsync(['--into', 'live', '--validator', validator], rec('x')), amAsync(['--into', 'live', '--validator', validator], rec('y'))]);
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  for (let i = 0; i < 400 && readdirSync(barrier).length < 2; i++) await sleep(50);
  t.equal(readdirSync(barrier).length, 2, 'both validators started');
  // hold the writer lock while both finish validating: both are then past anything done outside the lock,
  // and promote one after the other when it is released
  const lock = await FileLock.acquire(path.join(REG, 'lock'));
  writeFileSync(path.join(barrier, 'go'), '');
  await sleep(1500);
  await lock.release();
  const [rx, ry] = await both;
  const runs = [rx, ry];
  const winners = runs.filter((r) => r.code === 0);
  const losers = runs.filter((r) => r.code !== 0);
  t.equal(winners.length, 1, `exactly one run promotes (exit codes ${rx.code}, ${ry.code}): ${rx.stderr} ${ry.stderr}`);
  t.equal(losers.length, 1, 'the other is refused');
  const loser = losers[0];
  t.equal(loser.code, 1);
  t.match(loser.stderr, new RegExp(`live moved while merging \\(it was ${live1.slice(0, 12)}, now [0-9a-f]{12}\\); [0-9a-f]{12} is stored but NOT promoted; run the merge again`));
  t.notMatch(loser.stderr, /\n\s+at /, 'no stack trace');

  const log = am(['log', 'live']).records;
  t.equal(log.length, 2, 'one promotion besides the first: the loser recorded nothing');
  const winnerBundle = String(winners[0].records.find((r) => r.kind === 'adapter')!.sha256);
  t.equal(log[1].bundle, winnerBundle);
  t.same([...(await ancestry(winnerBundle))].filter((s) => s === shas.base).length, 1, "the winner kept the first consolidation's adapter");
  // nothing lost: the loser's merged bundle is stored and printed, and a rerun consolidates it
  const loserBundle = String(loser.records.find((r) => r.kind === 'adapter')!.sha256);
  t.equal(am(['show', loserBundle]).code, 0, "the loser's merged bundle is in the registry");
  const loserInput = winners[0] === rx ? 'y' : 'x';
  const rerun = am(['--into', 'live', '--validator', passing], rec(loserInput));
  t.equal(rerun.code, 0, rerun.stderr);
  const final = am(['log', 'live']).records;
  t.equal(final.length, 3);
  const held = await ancestry(String(final[2].bundle));
  for (const name of ['base', 'x', 'y']) t.ok(held.has(shas[name]), `live's final bundle holds ${name}`);
  const verify = am(['verify']);
  t.equal(verify.code, 0, verify.stderr);
});
