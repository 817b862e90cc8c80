#!/usr/bin/env node
// Generates a synthetic world (facts, edits, corpus, eval sets, templates,
// tokenizer) from a world description file. Deterministic under --seed.
//   node scripts/make-world.mjs --world fixtures/world/world.json --seed 1 --out fixtures/world
// Needs the built generator (fixtures/world-gen, package @catechism/world):
//   npm run build   (or: npx tsc -p tools/core/tsconfig.json && npx tsc -p fixtures/world-gen/tsconfig.json)
import { mkdirSync, readFileSync, writeFileSync, renameSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

function usage(msg) {
  process.stderr.write(`make-world: ${msg}\nusage: node scripts/make-world.mjs --world <world.json> --seed <int> --out <dir> [--check] [--edits N [--tune-share 0.2]]\n`);
  process.exit(2);
}

const args = { seed: '1', check: false };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a === '--check') args.check = true;
  else if (a === '--help' || a === '-h') usage('help');
  else if (['--world', '--seed', '--out', '--edits', '--tune-share'].includes(a)) {
    if (i + 1 >= argv.length) usage(`${a} needs a value`);
    args[a.slice(2)] = argv[++i];
  } else usage(`unknown argument "${a}"`);
}
if (!args.world) usage('--world is required');
if (!args.out && !args.check) usage('--out is required');
const seed = Number(args.seed);
if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) usage(`--seed must be an integer in [0, 2^32), got "${args.seed}"`);

let world;
try {
  ({ makeWorld: world } = await import(join(root, 'fixtures/world-gen/dist/index.js')));
} catch (e) {
  process.stderr.write(`make-world: cannot load fixtures/world-gen/dist (build it: npm run build): ${e.message}\n`);
  process.exit(1);
}

let desc;
try {
  desc = JSON.parse(readFileSync(args.world, 'utf8'));
} catch (e) {
  usage(`cannot read world description ${args.world}: ${e.message}`);
}

// --edits N: also eval/edits-tune.ndjson + eval/edits-heldout.ndjson (counterfactuals of known facts)
const extra = {};
if (args.edits !== undefined) {
  extra.edits = Number(args.edits);
  if (!Number.isInteger(extra.edits) || extra.edits < 0) usage(`--edits must be an integer >= 0, got "${args.edits}"`);
}
if (args['tune-share'] !== undefined) {
  extra.tuneShare = Number(args['tune-share']);
  if (!(extra.tuneShare >= 0 && extra.tuneShare <= 1)) usage(`--tune-share must be in [0, 1], got "${args['tune-share']}"`);
}

const rel = (p) => relative(root, p) || '.';
const command = `node scripts/make-world.mjs --world ${rel(args.world)} --seed ${seed} --out ${rel(args.out ?? '.')}`;
let out;
try {
  out = world(desc, seed, command + (extra.edits !== undefined ? ` --edits ${extra.edits}` : '') + (extra.tuneShare !== undefined ? ` --tune-share ${extra.tuneShare}` : ''), extra);
} catch (e) {
  process.stderr.write(`make-world: ${e.message}\n`);
  process.exit(e.name === 'WorldValidationError' ? 2 : 1);
}

if (args.check) {
  // compare with what is on disk: used to prove committed fixtures are current
  let stale = 0;
  for (const [name, text] of out.files) {
    let old = null;
    try { old = readFileSync(join(args.out, name), 'utf8'); } catch { /* missing */ }
    if (old !== text) { process.stderr.write(`make-world: ${name} differs\n`); stale++; }
  }
  process.stderr.write(stale ? `make-world: ${stale} file(s) out of date\n` : 'make-world: up to date\n');
  process.exit(stale ? 1 : 0);
}

for (const [name, text] of out.files) {
  const path = join(args.out, name);
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path + '.tmp', text);
  renameSync(path + '.tmp', path);
}
const s = out.stats;
process.stderr.write(
  `make-world: ${s.entity_total} entities, ${s.facts} facts, vocab ${s.vocab_size}, ` +
    `corpus ${s.corpus.documents} documents / ${s.corpus.tokens} tokens (max ${s.corpus.max_tokens}), ` +
    `held-out-only words: ${s.heldout_only_words.join(' ') || 'none'} → ${args.out}\n`,
);
