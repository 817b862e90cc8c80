#!/usr/bin/env node
// H's δ split over the MLP output projections of layers 0–3 (weights W, e.g. W="0.25,0.25,0.25,0.25"), each with its own ROME key. Env: SKIP COUNT.
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
const h = L.loadHyper(path.join(root, 'fixtures/hypernet/dense'));
const templates = E.loadTemplateBank(path.join(world, 'templates.json'));
const skip = Number(process.env.SKIP ?? 60), count = Number(process.env.COUNT ?? 10);
const facts = E.readNdjson(path.join(world, 'edits.ndjson')).filter((f) => f.op === 'insert').slice(skip, skip + count).map(E.checkFact);
const readback = E.readNdjson(path.join(world, 'eval/facts-heldout.ndjson')).map((p) => ({ prompt: p.prompt, target: p.target, subject: p.subject, relation: p.relation }));
const corpus = E.readCorpusLines(path.join(world, 'train.txt'), 50000);
const sha = E.modelSha256(path.join(root, 'fixtures/models/dense'));
const D = 512;
const chols = [0, 1, 2, 3].map((l) => {
  const st = E.keyStatsCached(model, tok, { modelSha: sha, layer: l, corpus, maxTokens: 20000 });
  const m = Float64Array.from(Float32Array.from(st.moment)); let tr = 0; for (let i = 0; i < D; i++) tr += m[i * D + i];
  return E.cholesky(m, D, 1e-3 * tr / D);
});
const gens = facts.map((f) => L.generate(h, model, tok, [f], [], templates, 5, f.id));
const As = facts.map((f) => [0, 1, 2, 3].map((l) => { const rows = L.factPhrasings(f, [], templates, 5).map((p) => L.editRow(tok, f, p)); return L.featurize(model, l, h.net.shape, chols[l], f, rows[0].targets[0][1], rows, rows.length, false).feats.A; }));
for (const ws of (process.env.W ?? '1,0,0,0;0.25,0.25,0.25,0.25').split(';')) {
  const w = ws.split(',').map(Number);
  const groups = facts.map((f, i) => {
    const B = gens[i].adapter.modules.get(h.config.targets[0]).B;
    const mods = new Map();
    w.forEach((wl, l) => { if (wl) mods.set(`transformer.h.${l}.mlp.c_proj`, { A: fromData(As[i][l], [1, D]), B: fromData(Float32Array.from(B.data, (v) => v * wl), B.shape) }); });
    return { adapters: [new LoraAdapter(f.id, 1, 1, mods, model.arch.fanInFanOut)], facts: [f] };
  });
  const r = E.editReadback(model, tok, groups, { templates, readback });
  console.log(`w ${ws}: eff ${(100 * r.efficacy).toFixed(0)} para ${(100 * r.paraphrase).toFixed(0)} neigh ${(100 * r.neighbourhood).toFixed(0)} kl ${r.kl.toFixed(3)} drop ${r.retain_drop.toFixed(3)}`);
}
