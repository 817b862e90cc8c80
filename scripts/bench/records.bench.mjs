#!/usr/bin/env node
// Records per second through a pass-through tool (`probe-gen --passthrough`:
// read, detect, normalise, validate, write), for NDJSON in/out and Arrow
// in/out, side by side with `jq -c .` on the same NDJSON file. Each figure
// is the median wall time of several runs of a whole process (startup
// included), output to /dev/null, with each tool's peak resident memory
// (the largest VmHWM of its runs, from CATECHISM_REPORT_MAXRSS). Prints a
// Markdown table.
//
// CATECHISM_BENCH_RECORDS sets the number of records (default 200000),
// CATECHISM_BENCH_RUNS the runs per row (default 3).
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const PROBE_GEN = join(root, 'tools/probe-gen/dist/main.js');
const N = Number(process.env.CATECHISM_BENCH_RECORDS ?? 200000);
const RUNS = Number(process.env.CATECHISM_BENCH_RUNS ?? 3);

if (!existsSync(PROBE_GEN)) {
  console.error('records.bench: build first (npm run build): tools/probe-gen/dist/main.js is missing');
  process.exit(1);
}

const dir = mkdtempSync(join(tmpdir(), 'catechism-bench-records-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

// A realistic mix of kinds: a fact, its probe, and a locus, over and over.
function makeNdjson(path) {
  const lines = [];
  for (let i = 0; i < N; i++) {
    const f = `f${Math.floor(i / 3)}`;
    switch (i % 3) {
      case 0:
        lines.push(JSON.stringify({ kind: 'fact', id: f, subject: `Subject ${i}`, prompt: 'The capital of {} is', target_new: `City ${i % 97}`, target_true: `Town ${i % 89}`, relation: 'capital_of', op: 'insert', confidence: 0.75 }));
        break;
      case 1:
        lines.push(JSON.stringify({ kind: 'probe', id: `${f}/edit/0`, fact_id: f, role: 'edit', split: 'train', prompt: `The capital of Subject ${i - 1} is`, target: `City ${(i - 1) % 97}`, expect: 'new' }));
        break;
      default:
        lines.push(JSON.stringify({ kind: 'locus', fact_id: f, site: `layers.${i % 12}.mlp`, layer: i % 12, module: `transformer.h.${i % 12}.mlp.c_proj`, method: 'causal-trace', score: (i % 1000) / 1000, rank: 1 }));
    }
  }
  writeFileSync(path, lines.join('\n') + '\n');
}

/** Wall seconds of one run, and the tool's peak RSS in KiB when it reports it. */
function timeRun(cmd, args, input) {
  const fdIn = openSync(input, 'r');
  const fdOut = openSync('/dev/null', 'w');
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { stdio: [fdIn, fdOut, 'pipe'], env: { ...process.env, CATECHISM_REPORT_MAXRSS: '1' } });
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  closeSync(fdIn);
  closeSync(fdOut);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  const m = /maxrss_kib=(\d+)/.exec(r.stderr.toString());
  return { s, rssKib: m ? Number(m[1]) : null };
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Median seconds and the largest peak RSS (KiB, or null) over RUNS runs. */
function measure(cmd, args, input) {
  const times = [];
  let rssKib = null;
  for (let i = 0; i < RUNS; i++) {
    const r = timeRun(cmd, args, input);
    times.push(r.s);
    if (r.rssKib !== null) rssKib = Math.max(rssKib ?? 0, r.rssKib);
  }
  return { s: median(times), rssKib };
}

const ndjson = join(dir, 'records.ndjson');
const arrow = join(dir, 'records.arrow');
makeNdjson(ndjson);
{
  const fdOut = openSync(arrow, 'w');
  const r = spawnSync(process.execPath, [PROBE_GEN, '--passthrough', '--format', 'arrow', ndjson], { stdio: ['ignore', fdOut, 'inherit'] });
  closeSync(fdOut);
  if (r.status !== 0) process.exit(1);
}

const jq = ['/usr/bin/jq', 'jq'].find((p) => spawnSync(p, ['--version']).status === 0);
const rows = [];
let jqRate = null;
if (jq) {
  const m = measure(jq, ['-c', '.'], ndjson);
  jqRate = N / m.s;
  rows.push(['`jq -c .` (reference)', 'NDJSON', 'NDJSON', m]);
} else {
  rows.push(['`jq -c .` (reference)', 'NDJSON', 'NDJSON', null]);
}
const node = process.execPath;
rows.push(['probe-gen --passthrough', 'NDJSON', 'NDJSON', measure(node, [PROBE_GEN, '--passthrough'], ndjson)]);
rows.push(['probe-gen --passthrough --format arrow', 'Arrow', 'Arrow', measure(node, [PROBE_GEN, '--passthrough', '--format', 'arrow'], arrow)]);
rows.push(['probe-gen --passthrough --format arrow', 'NDJSON', 'Arrow', measure(node, [PROBE_GEN, '--passthrough', '--format', 'arrow'], ndjson)]);
rows.push(['probe-gen --passthrough', 'Arrow', 'NDJSON', measure(node, [PROBE_GEN, '--passthrough'], arrow)]);

const mb = (p) => (statSync(p).size / 2 ** 20).toFixed(1);
console.log(`${N} records (fact/probe/locus mix); NDJSON ${mb(ndjson)} MiB, Arrow ${mb(arrow)} MiB; median of ${RUNS} runs, whole process, output to /dev/null.\n`);
console.log('| command | in | out | seconds | records/s | vs jq | peak RSS MiB |');
console.log('|---|---|---|---:|---:|---:|---:|');
for (const [name, fin, fout, m] of rows) {
  if (m === null) {
    console.log(`| ${name} | ${fin} | ${fout} | – | – | skipped: jq not found | – |`);
    continue;
  }
  const rate = N / m.s;
  const ratio = jqRate ? `${(rate / jqRate).toFixed(2)}×` : 'n/a (no jq)';
  const rss = m.rssKib === null ? '–' : (m.rssKib / 1024).toFixed(0);
  console.log(`| ${name} | ${fin} | ${fout} | ${m.s.toFixed(2)} | ${Math.round(rate).toLocaleString('en-US')} | ${ratio} | ${rss} |`);
}
