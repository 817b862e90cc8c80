#!/usr/bin/env node
// A stand-in validator for adapter-merge's tests: reads the adapter record on
// stdin and writes one report bound to it (bundle_sha256, base_model_sha256,
// run), as catechism's validate does.
//   fake-validator.mjs pass|fail [--unbound] [--other-bundle] [--hang [--pidfile F]] [--fail-if-fact ID] [--max-parents N] [--log FILE]
// --fail-if-fact ID: fail when the bundle's manifest carries that fact (a bad adapter in a merge).
// --max-parents N: fail a merge of more than N adapters (summed drift, as a real validator reads it).
import { appendFileSync, readFileSync, statSync } from 'node:fs';
import * as path from 'node:path';
const args = process.argv.slice(2);
const flag = (f) => args.includes(f);
const opt = (f) => (args.includes(f) ? args[args.indexOf(f) + 1] : undefined);
if (opt('--pidfile')) appendFileSync(opt('--pidfile'), `${process.pid}\n`);
let input = '';
process.stdin.on('data', (d) => (input += d)).on('end', () => {
  const r = JSON.parse(input.trim().split('\n')[0]);
  statSync(path.join(r.path, 'adapter_model.safetensors')); // the bundle is there to inspect
  if (flag('--hang')) {
    setInterval(() => undefined, 1000); // never ends by itself
    return;
  }
  let pass = args[0] === 'pass';
  const failures = [];
  const bad = opt('--fail-if-fact');
  if (bad !== undefined) {
    const m = JSON.parse(readFileSync(path.join(r.path, 'catechism.json'), 'utf8'));
    if (m.fact_ids.includes(bad)) {
      pass = false;
      failures.push(`kl 0.9 > 0.05 (gate kl<=0.05): ${bad} is in the candidate`);
    }
  }
  const most = opt('--max-parents');
  if (most !== undefined) {
    const m = JSON.parse(readFileSync(path.join(r.path, 'catechism.json'), 'utf8'));
    const n = m.merge?.parents?.length ?? 1;
    if (n > Number(most)) {
      pass = false;
      failures.push(`kl 0.07 > 0.05 (gate kl<=0.05): ${n} adapters summed`);
    }
  }
  if (!pass && failures.length === 0) failures.push('efficacy 0.1 < 0.9');
  const log = opt('--log');
  if (log) appendFileSync(log, `${r.sha256} ${pass ? 'pass' : 'fail'}\n`);
  const rep = { kind: 'report', adapter_id: r.id, pass, metrics: { efficacy: pass ? 1 : 0.1 }, failures, run: { tool: 'fake-validator', id: String(process.pid) } };
  if (!flag('--unbound')) Object.assign(rep, { bundle_sha256: flag('--other-bundle') ? '0'.repeat(64) : r.sha256, base_model_sha256: r.base_model.sha256 });
  console.log(JSON.stringify(rep));
});
