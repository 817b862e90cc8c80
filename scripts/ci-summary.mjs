#!/usr/bin/env node
// Sums tap's closing lines (`# { total: N, pass: N, fail: N, ... }`) from every
// workspace in a test log and prints one plain line `N passed, N failed`, so a
// run that executed no test is visible to CI.
import { readFileSync } from 'node:fs';

const log = readFileSync(process.argv[2] ?? 0, 'utf8');
let total = 0, pass = 0, fail = 0, skip = 0, runs = 0;
for (const m of log.matchAll(/#\s*\{\s*total:\s*(\d+)([^}]*)\}/g)) {
  runs++;
  total += Number(m[1]);
  const field = (name) => Number(new RegExp(`${name}:\\s*(\\d+)`).exec(m[2])?.[1] ?? 0);
  pass += field('pass');
  fail += field('fail');
  skip += field('skip') + field('todo');
}
if (runs === 0) console.log('0 passed, 0 failed');
else console.log(`${pass} passed, ${fail + Math.max(0, total - pass - fail - skip)} failed, ${skip} skipped`);
