#!/usr/bin/env node
// Which held-out paraphrases a last-token hypernetwork's adapters miss, and
// whether the fact's gate opened there. For each request (one adapter each),
// every held-out template of its relation that the base model answers with
// the true object: the edited model's answer, and the gate's score at the
// prompt's last token as (s − τ) / (mean positive − τ) (≥ 0: open; 1: as open
// as on the training phrasings on average). Prints the misses, then counts.
//
//   node scripts/hypernet/paraphrase-misses.mjs [--world fixtures/world] [--model fixtures/models/dense] [--hypernet DIR] [--skip 60] [--count 20]
// Build first (npm run build).
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '../..');
const core = (p) => import(path.join(root, 'tools/core/dist', p));
const { loadModel } = await core('models/index.js');
const { readNdjson, loadTemplateBank, checkFact, top1, mlpNormedInputs } = await core('edit/index.js');
const { loadHyper, generate } = await import(path.join(root, 'tools/hypernet-gen/dist/lib.js'));

const { values: a } = parseArgs({
  options: {
    world: { type: 'string', default: 'fixtures/world' },
    model: { type: 'string', default: 'fixtures/models/dense' },
    hypernet: { type: 'string', default: 'fixtures/hypernet/dense' },
    skip: { type: 'string', default: '60' },
    count: { type: 'string', default: '20' },
  },
});
const world = path.resolve(root, a.world);
const { model, tokenizer: tok } = loadModel(path.resolve(root, a.model));
const h = loadHyper(path.resolve(root, a.hypernet));
if (h.config.site !== 'last') throw new Error(`${a.hypernet}: not a last-token hypernetwork`);
const templates = loadTemplateBank(path.join(world, 'templates.json'));
const facts = readNdjson(path.join(world, 'edits.ndjson')).filter((f) => f.op === 'insert').slice(Number(a.skip), Number(a.skip) + Number(a.count)).map(checkFact);
const H = model.config.hidden;
const L = model.config.layers - 1;
let prompts = 0, wrong = 0, shut = 0;
for (const f of facts) {
  const g = generate(h, model, tok, [f], [], templates, 5, f.id);
  const gate = g.gates[0];
  const newId = tok.encode(' ' + f.target_new)[0];
  const trueId = tok.encode(' ' + f.target_true)[0];
  for (const t of templates.heldout.get(f.relation) ?? []) {
    const ids = tok.encode(t.replace('{}', f.subject));
    if (top1(model, [ids])[0] !== trueId) continue;
    prompts++;
    model.setAdapters([{ adapter: g.adapter }]);
    const [got] = top1(model, [ids]);
    model.setAdapters([]);
    if (got === newId) continue;
    wrong++;
    const { X } = mlpNormedInputs(model, L, [ids]);
    let s = gate.b;
    for (let i = 0; i < H; i++) s += gate.w[i] * X[(ids.length - 1) * H + i];
    if (s <= gate.tau) shut++;
    console.log(`${f.id} ${JSON.stringify(t)}: gate ${s > gate.tau ? 'open' : 'shut'} (${((s - gate.tau) / (gate.posMean - gate.tau)).toFixed(2)}), answers ${JSON.stringify(tok.decode([got]))}`);
  }
}
console.log(`${prompts} held-out paraphrases the base model answers; ${wrong} missed, on ${shut} of them the gate shut`);
