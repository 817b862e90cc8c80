#!/usr/bin/env node
// `npm run bench`: runs every scripts/bench/*.bench.mjs in name order (each
// prints a Markdown table) and prints the tables one after another.
// `--out FILE` also writes them to FILE, with the machine and date, so
// BENCHMARKS.md can quote a run verbatim. `--only NAME` runs one bench.
import { readdirSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import os from 'node:os';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const flag = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const only = flag('--only');
const out = flag('--out');

const benches = readdirSync(here)
  .filter((f) => f.endsWith('.bench.mjs'))
  .filter((f) => !only || f.startsWith(only))
  .sort();
if (benches.length === 0) {
  console.error(`bench: no benchmark matches ${only ?? '*'}`);
  process.exit(2);
}

const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
const header = `Machine: ${cpu}, ${os.cpus().length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB; node ${process.version}; ${new Date().toISOString()}\n`;
const sections = [header];
let failed = 0;
for (const file of benches) {
  console.error(`bench: running ${file}`);
  const r = spawnSync(process.execPath, [join(here, file)], {
    stdio: ['ignore', 'pipe', 'inherit'],
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  });
  const title = `### ${file.replace('.bench.mjs', '')}\n`;
  if (r.status !== 0) {
    failed++;
    sections.push(`${title}\n(failed with exit ${r.status})\n`);
  } else {
    sections.push(`${title}\n${r.stdout.trim()}\n`);
  }
}
const text = sections.join('\n');
console.log(text);
if (out) writeFileSync(out, text);
process.exit(failed ? 1 : 0);
