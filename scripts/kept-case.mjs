// The case a kept eval-edits bundle was trained on (`eval-edits.mjs --keep DIR`), for the scripts that read
// such a bundle back (lora-read-position.mjs, kl-where.mjs): their shared options, --help from the calling
// script's leading comment, usage errors (exit 2) naming the flag, the world's resources, the facts the
// bundle edits and its LoRA bundles. `extra` adds the script's own parseArgs options.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

export const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');

export async function keptCase(scriptUrl, extra = {}) {
  const name = path.basename(fileURLToPath(scriptUrl), '.mjs');
  const { values: a } = parseArgs({ options: {
    keep: { type: 'string' }, source: { type: 'string', default: 'facts' }, skip: { type: 'string', default: '0' }, count: { type: 'string', default: '1000' },
    seed: { type: 'string', default: '0' }, world: { type: 'string', default: 'fixtures/world' }, model: { type: 'string', default: 'fixtures/models/dense' },
    help: { type: 'boolean', default: false }, ...extra,
  } });
  if (a.help) {
    console.log(fs.readFileSync(fileURLToPath(scriptUrl), 'utf8').split('\n').filter((l) => l.startsWith('//')).map((l) => l.slice(3)).join('\n'));
    process.exit(0);
  }
  if (!a.keep) {
    console.error(`${name}: --keep DIR is required (the directory \`eval-edits.mjs --keep DIR\` wrote); --help for usage`);
    process.exit(2);
  }
  const dirs = fs.existsSync(a.keep) ? fs.readdirSync(a.keep).filter((d) => d.startsWith('lora-')).map((d) => path.join(a.keep, d)) : [];
  if (dirs.length === 0) {
    console.error(`${name}: --keep ${a.keep}: no lora-* bundle there (a LoRA run's \`eval-edits.mjs --keep DIR\`)`);
    process.exit(2);
  }
  const { loadResources, counterfactualFacts } = await import(path.join(root, 'tools/lora-train/dist/index.js'));
  const { readNdjson, checkFact } = await import(path.join(root, 'tools/core/dist/edit/index.js'));
  const { loadLora } = await import(path.join(root, 'tools/core/dist/models/index.js'));
  const world = path.resolve(root, a.world);
  const res = loadResources({
    model: path.resolve(root, a.model), templates: path.join(world, 'templates.json'), retainCorpus: path.join(world, 'train.txt'), knownFacts: path.join(world, 'facts.ndjson'),
  });
  const known = readNdjson(path.join(world, 'facts.ndjson'));
  const edits = readNdjson(path.join(world, 'edits.ndjson'));
  const skip = Number(a.skip);
  const count = Number(a.count);
  const facts = (a.source === 'facts'
    ? counterfactualFacts(known, { skip, count, seed: Number(a.seed), op: 'insert', exclude: edits })
    : edits.filter((f) => f.op === 'insert').slice(skip, skip + count)).map(checkFact);
  // the read-back eval-edits reads: two held-out phrasings of every known fact
  const readback = readNdjson(path.join(world, 'eval/facts-heldout.ndjson')).map((p) => ({
    prompt: p.prompt, target: p.target,
    ...(typeof p.subject === 'string' ? { subject: p.subject } : {}), ...(typeof p.relation === 'string' ? { relation: p.relation } : {}),
  }));
  // the facts the bundle did not edit, and a fact's training phrasings (templates.json's `train`, which
  // the retention draws from; never a held-out one)
  const key = (subject, relation) => `${subject}\u0000${relation}`;
  const edited = new Set(facts.map((f) => key(f.subject, f.relation)));
  const notEdited = known.filter((f) => f.kind === 'fact' && !edited.has(key(f.subject, f.relation)));
  const bank = JSON.parse(fs.readFileSync(path.join(world, 'templates.json'), 'utf8')).relations;
  const trainPhrasings = (f) => (bank[f.relation]?.templates?.train ?? []).map((t) => t.replace('{}', f.subject));
  return { a, world, res, known, facts, readback, adapters: dirs.map((d) => loadLora(d)), key, edited, notEdited, trainPhrasings };
}
