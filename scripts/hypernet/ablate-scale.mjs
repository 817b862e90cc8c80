#!/usr/bin/env node
// H's δ scaled by each factor in S (e.g. S=0.3,0.6,1,2): efficacy vs kl at the edit site. Env: H (hypernet dir) SKIP COUNT.
import { fileURLToPath } from 'node:url';
import * as path from 'node:path';
const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '../..');
const core = (p) => import(path.join(root, 'tools/core/dist', p));
const { loadModel, LoraAdapter } = await core('models/index.js');
const E = await core('edit/index.js');
const { fromData } = await core('tensor/index.js');
const L = await import(path.join(root, 'tools/hypernet-gen/dist/lib.js'));
const world = path.join(root, 'fixtures/world');
const { model, tokenizer: tok } = loadModel(path.join(root, 'fixtures/models/dense'));
const h = L.loadHyper(process.env.H ?? path.join(root, 'fixtures/hypernet/dense'));
const templates = E.loadTemplateBank(path.join(world, 'templates.json'));
const skip = Number(process.env.SKIP ?? 60), count = Number(process.env.COUNT ?? 10);
const facts = E.readNdjson(path.join(world, 'edits.ndjson')).filter((f) => f.op === 'insert').slice(skip, skip + count).map(E.checkFact);
const readback = E.readNdjson(path.join(world, 'eval/facts-heldout.ndjson')).map((p) => ({ prompt: p.prompt, target: p.target, subject: p.subject, relation: p.relation }));
const gens = facts.map((f) => L.generate(h, model, tok, [f], [], templates, 5, f.id));
for (const a of (process.env.S ?? '0.5,1,1.5').split(',').map(Number)) {
  const groups = facts.map((f, i) => {
    const old = gens[i].adapter.modules.get(h.config.targets[0]);
    const ad = new LoraAdapter(f.id, 1, 1, new Map([[h.config.targets[0], { A: old.A, B: fromData(Float32Array.from(old.B.data, (v) => v * a), old.B.shape) }]]), model.arch.fanInFanOut);
    return { adapters: [ad], facts: [f] };
  });
  const r = E.editReadback(model, tok, groups, { templates, readback });
  console.log(`scale ${a}: eff ${(100 * r.efficacy).toFixed(0)} para ${(100 * r.paraphrase).toFixed(0)} neigh ${(100 * r.neighbourhood).toFixed(0)} kl ${r.kl.toFixed(3)} drop ${r.retain_drop.toFixed(3)}`);
}
