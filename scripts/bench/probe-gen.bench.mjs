#!/usr/bin/env node
// probe-gen throughput: facts per second for the streaming edit-only form and
// the full generator, against `--passthrough` (the record layer alone) as the
// reference. Input: the fixture world's facts turned into counterfactual
// inserts, copied with renamed subjects to reach --facts N (default 14340).
// Prints a Markdown table on stdout.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = join(root, 'tools/probe-gen/dist/main.js');
if (!existsSync(BIN)) {
  console.error('probe-gen.bench: build first (npm run build): tools/probe-gen/dist/main.js is missing');
  process.exit(1);
}
const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const N = arg('--facts', 14340);
const REPEAT = arg('--repeat', 3);

const world = readFileSync(join(root, 'fixtures/world/facts.ndjson'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
const answers = new Map();
for (const f of world) answers.set(f.relation, [...new Set([...(answers.get(f.relation) ?? []), f.target_true])]);
const lines = [];
for (let i = 0; lines.length < N; i++) {
  const f = world[i % world.length];
  const copy = Math.floor(i / world.length);
  const pool = answers.get(f.relation).filter((a) => a !== f.target_true);
  if (pool.length === 0) continue;
  const subject = copy === 0 ? f.subject : `${f.subject} ${'I'.repeat(copy)}`;
  lines.push(JSON.stringify({ kind: 'fact', id: `b${i}`, subject, prompt: f.prompt, target_new: pool[i % pool.length], target_true: f.target_true, relation: f.relation, op: 'insert' }));
}
const dir = mkdtempSync(join(tmpdir(), 'probe-gen-bench-'));
const input = join(dir, 'facts.ndjson');
writeFileSync(input, lines.join('\n') + '\n');

function measure(args) {
  let best = Infinity;
  let out = 0;
  for (let r = 0; r < REPEAT; r++) {
    const t0 = process.hrtime.bigint();
    const res = spawnSync(process.execPath, [BIN, ...args, input], { maxBuffer: 1 << 30, encoding: 'utf8' });
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    if (res.status !== 0) throw new Error(`probe-gen ${args.join(' ')} failed: ${res.stderr}`);
    out = res.stdout.split('\n').filter((l) => l.includes('"kind":"probe"')).length;
    best = Math.min(best, s);
  }
  return { s: best, probes: out };
}

const rows = [
  ['--passthrough (reference)', ['--passthrough']],
  ['--roles edit (streaming)', ['--roles', 'edit']],
  ['--roles all', ['--roles', 'all', '--quiet']],
  ['--roles all --max-paraphrases 2 --neighbors 2', ['--roles', 'all', '--max-paraphrases', '2', '--neighbors', '2', '--quiet']],
];
const ref = measure(rows[0][1]);
console.log(`probe-gen throughput, ${N} facts, best of ${REPEAT} (process start included)\n`);
console.log('| mode | probes out | seconds | facts/s | time vs --passthrough |');
console.log('| --- | ---: | ---: | ---: | ---: |');
for (const [name, args] of rows) {
  const m = name.startsWith('--passthrough') ? ref : measure(args);
  console.log(`| ${name} | ${m.probes} | ${m.s.toFixed(2)} | ${Math.round(N / m.s)} | ${(m.s / ref.s).toFixed(2)}× |`);
}
rmSync(dir, { recursive: true, force: true });
