#!/usr/bin/env node
// Registry benchmark (issue 10): what crash safety and content addressing
// cost, next to standard tools doing the same durable work.
//
//   add        store a bundle (validate, copy, fsync, hash the copy, rename)
//              vs `cp -r` + `sha256sum` + `sync FILES` (coreutils)
//   promote    lock, re-verify the bundle's hash, append a hash-chained event,
//              fsync, rename; vs `git update-ref -m` with core.fsync=all
//              (git's lock + write + rename + reflog append), one process per op
//   verify     recompute every object's hash and check every ref
//              vs `sha256sum` over the same files
//
// Bundles are LoRA adapters shaped like GPT-2 small, r = 8 (c_attn and c_proj
// of 12 layers, 2.6 MB) and r = 64 (21 MB). Ours runs in-process (no Node
// start-up); git and coreutils are spawned, so their rows include ~1–3 ms of
// process start. Ratio = ours / reference (lower is better for us).
// Env: BENCH_REPS (default 5), BENCH_PROMOTES (default 40).
// Prints a Markdown table on stdout; progress on stderr.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const coreDist = join(here, '..', '..', 'tools', 'core', 'dist');
// Until @catechism/core exports ./registry and ./adapters, import the built files by path.
const { Registry } = await import(pathToFileURL(join(coreDist, 'registry', 'index.js')).href);
const { writeSyntheticBundle } = await import(pathToFileURL(join(coreDist, 'adapters', 'index.js')).href);
const { archOf } = await import(pathToFileURL(join(coreDist, 'models', 'index.js')).href);

const REPS = Number(process.env.BENCH_REPS ?? 5);
const PROMOTES = Number(process.env.BENCH_PROMOTES ?? 40);
const tmp = mkdtempSync(join(tmpdir(), 'cat-bench-reg-'));
const log = (m) => process.stderr.write(`registry.bench: ${m}\n`);

function gpt2Targets() {
  const t = {};
  for (let i = 0; i < 12; i++) {
    const L = archOf('gpt2').layer(i);
    t[L.qkv.fused] = [2304, 768];
    t[L.mlp.out] = [768, 3072];
  }
  return t;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const ms = (t0) => Number(process.hrtime.bigint() - t0) / 1e6;
const sh = (cmd, cwd) => {
  const r = spawnSync('bash', ['-c', cmd], { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
  if (r.status !== 0) throw new Error(`${cmd}: ${r.stderr}`);
};

const rows = [];
let seed = 1;
try {
  for (const rank of [8, 64]) {
    log(`add, rank ${rank}`);
    const ours = [];
    const ref = [];
    let mb = 0;
    for (let i = 0; i < REPS; i++) {
      const dir = join(tmp, `add-r${rank}-${i}`);
      const { files } = await writeSyntheticBundle(dir, { seed: seed++, rank, targets: gpt2Targets(), pass: true });
      mb = files.reduce((s, f) => s + f.size, 0) / 1e6;
      const reg = new Registry(join(tmp, `reg-add-r${rank}-${i}`));
      let t0 = process.hrtime.bigint();
      await reg.add(dir);
      ours.push(ms(t0));
      const dst = join(tmp, `cp-r${rank}-${i}`);
      t0 = process.hrtime.bigint();
      sh(`cp -r "${dir}" "${dst}" && sha256sum "${dst}"/* > /dev/null && sync "${dst}"/* "${dst}"`);
      ref.push(ms(t0));
    }
    rows.push({ op: `add (r=${rank})`, size: `${mb.toFixed(1)} MB`, ours: median(ours), refName: 'cp -r + sha256sum + sync', ref: median(ref) });
  }

  log('promote');
  for (const rank of [8]) {
    const reg = new Registry(join(tmp, 'reg-promote'));
    const dirs = [];
    for (let k = 0; k < 2; k++) {
      const dir = join(tmp, `promote-${k}`);
      await writeSyntheticBundle(dir, { seed: seed++, rank, targets: gpt2Targets(), pass: true });
      dirs.push((await reg.add(dir)).bundle.sha256);
    }
    const ours = [];
    for (let i = 0; i < PROMOTES; i++) {
      const t0 = process.hrtime.bigint();
      await reg.promote('live', { id: dirs[i % 2] }, { message: `bench ${i}` });
      ours.push(ms(t0));
    }
    const git = join(tmp, 'git');
    sh(`git init -q "${git}" && cd "${git}" && git config core.fsync all && git config core.logAllRefUpdates always && git -c user.name=b -c user.email=b@x commit -q --allow-empty -m a && git -c user.name=b -c user.email=b@x commit -q --allow-empty -m b`);
    const shas = spawnSync('git', ['rev-list', 'HEAD'], { cwd: git, encoding: 'utf8' }).stdout.trim().split('\n');
    const ref = [];
    for (let i = 0; i < PROMOTES; i++) {
      const t0 = process.hrtime.bigint();
      const r = spawnSync('git', ['-c', 'user.name=b', '-c', 'user.email=b@x', 'update-ref', '-m', `bench ${i}`, 'refs/heads/live', shas[i % 2]], { cwd: git });
      if (r.status !== 0) throw new Error(`git update-ref: ${r.stderr}`);
      ref.push(ms(t0));
    }
    rows.push({ op: `promote (r=${rank}, history ≤ ${PROMOTES})`, size: '2.6 MB re-verified', ours: median(ours), refName: 'git update-ref -m (core.fsync=all)', ref: median(ref) });
  }

  log('verify');
  {
    const reg = new Registry(join(tmp, 'reg-verify'));
    let total = 0;
    for (let k = 0; k < 10; k++) {
      const dir = join(tmp, `verify-${k}`);
      const { files } = await writeSyntheticBundle(dir, { seed: seed++, rank: 8, targets: gpt2Targets(), pass: true });
      total += files.reduce((s, f) => s + f.size, 0);
      await reg.promote('live', { dir });
    }
    const ours = [];
    const ref = [];
    for (let i = 0; i < REPS; i++) {
      let t0 = process.hrtime.bigint();
      const v = await reg.verify();
      if (!v.ok) throw new Error('verify failed');
      ours.push(ms(t0));
      t0 = process.hrtime.bigint();
      sh(`sha256sum objects/*/* > /dev/null`, reg.root);
      ref.push(ms(t0));
    }
    rows.push({ op: 'verify (10 objects, 10 ref events)', size: `${(total / 1e6).toFixed(1)} MB`, ours: median(ours), refName: 'sha256sum objects/*/*', ref: median(ref) });
  }
} finally {
  rmSync(tmp, { recursive: true, force: true });
}

console.log('| operation | data | catechism (ms) | reference | reference (ms) | ratio |');
console.log('|---|---|---:|---|---:|---:|');
for (const r of rows) console.log(`| ${r.op} | ${r.size} | ${r.ours.toFixed(1)} | ${r.refName} | ${r.ref.toFixed(1)} | ${(r.ours / r.ref).toFixed(2)} |`);
console.log(`\nMedians of ${REPS} runs (promote: of ${PROMOTES}). catechism runs in-process; references are spawned processes.`);
