#!/usr/bin/env node
// Sums tap's closing lines (`# { total: N, pass: N, fail: N, ... }`) from every
// workspace in a test log and prints one plain line `N passed, N failed`, so a
// run that executed no test is visible to CI. Above it, each failed assertion
// with the start of its diagnostics: CI keeps only the log's tail, and a
// failure seen only as a count cannot be found again.
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

// turbo prefixes each line with "<package>:test: "; tap indents subtests by four spaces.
const lines = log.split('\n').map((l) => /^(\S+?):test: ?(.*)$/.exec(l) ?? [l, '', l]);
const failures = [];
for (let i = 0; i < lines.length; i++) {
  const [, pkg, text] = lines[i];
  const m = /^(\s*)not ok \d+ - (.*?)(?: # time=.*)?$/.exec(text);
  if (!m || /# (TODO|SKIP)\b/i.test(text)) continue;
  // the diagnostics block of an assertion: indented YAML between --- and ...
  const diag = [];
  if (/^\s*---\s*$/.test(lines[i + 1]?.[2] ?? '')) {
    for (let j = i + 2; j < lines.length && !/^\s*\.\.\.\s*$/.test(lines[j][2]); j++) diag.push(lines[j][2].trim());
  }
  // an assertion's own diagnostics say what failed; a subtest's or a file's only where it is
  const own = diag.some((d) => /^(stack|diff|found|wanted|expired|message):/.test(d)) && !diag.some((d) => /^externalID:/.test(d));
  failures.push(`${pkg || '?'}: ${'  '.repeat(m[1].length / 4)}not ok - ${m[2].slice(0, 300)}` + (own ? '\n' + diag.slice(0, 6).map((d) => '      | ' + d.slice(0, 160)).join('\n') : ''));
}
if (failures.length) {
  console.log(`\nfailed (${failures.length} lines${failures.length > 25 ? ', the first 25' : ''}; a subtest after its assertions):`);
  console.log(failures.slice(0, 25).join('\n'));
}
if (runs === 0) console.log('0 passed, 0 failed');
else console.log(`${pass} passed, ${fail + Math.max(0, total - pass - fail - skip)} failed, ${skip} skipped`);
