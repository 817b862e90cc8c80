#!/usr/bin/env node
/**
 * The NDJSON reader against stream-json's maintained JSON Lines parser
 * (stream-json/jsonl/parser, as a Node stream), on one long line and on many
 * short records. Run from the repository root after `npm run build`:
 *
 *   node tests/bench/ndjson-reader.bench.mjs            # 50 MB line, 1,000,000 records
 *   BENCH_LINE_MB=10 BENCH_RECORDS=200000 node tests/bench/ndjson-reader.bench.mjs
 *
 * Prints seconds per input for each reader (best of BENCH_REPEAT runs, 3).
 */
import { createReadStream, mkdtempSync, rmSync, writeFileSync, openSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readValueBatches } from '@catechism/core/records';
import jsonl from 'stream-json/jsonl/parser.js';

const lineMb = Number(process.env.BENCH_LINE_MB ?? 50);
const nRecords = Number(process.env.BENCH_RECORDS ?? 1_000_000);
const repeat = Number(process.env.BENCH_REPEAT ?? 3);
const dir = mkdtempSync(join(tmpdir(), 'ndjson-bench-'));
const long = join(dir, 'long.ndjson');
const many = join(dir, 'many.ndjson');
writeFileSync(long, JSON.stringify({ kind: 'note', text: 'x'.repeat(lineMb * 1e6) }) + '\n');
const fd = openSync(many, 'w');
let buf = '';
for (let i = 0; i < nRecords; i++) {
  buf += JSON.stringify({ kind: 'probe', fact_id: `f${i}`, role: 'edit', split: 'train', prompt: `The capital of X${i} is`, target: 'Y', expect: 'new' }) + '\n';
  if (buf.length > 1 << 20) { writeSync(fd, buf); buf = ''; }
}
writeSync(fd, buf);
closeSync(fd);

async function ours(file) {
  let n = 0;
  for await (const batch of readValueBatches(createReadStream(file))) n += batch.length;
  return n;
}
async function streamJson(file) {
  let n = 0;
  const p = createReadStream(file).pipe(jsonl.asStream());
  for await (const _ of p) n++;
  return n;
}
async function time(fn, file) {
  let best = Infinity, n = 0;
  for (let r = 0; r < repeat; r++) {
    const t0 = performance.now();
    n = await fn(file);
    best = Math.min(best, (performance.now() - t0) / 1000);
  }
  return { n, s: best };
}
console.log('| input | records | catechism reader (s) | stream-json jsonl (s) |');
console.log('|---|---|---|---|');
for (const [name, file] of [[`one ${lineMb} MB line`, long], [`${nRecords} short records`, many]]) {
  const a = await time(ours, file);
  const b = await time(streamJson, file);
  console.log(`| ${name} | ${a.n} | ${a.s.toFixed(2)} | ${b.s.toFixed(2)} |`);
}
rmSync(dir, { recursive: true, force: true });
