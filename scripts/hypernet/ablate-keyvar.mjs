#!/usr/bin/env node
// Ablation of the key side alone (H's δ kept): A from C over the corpus (base), + the known facts' training-phrasing keys (f1: equal weight, f10: ×10), ridge 1e-2 (r2) / 1e-4 (r4). Env: V=base,f1,... SKIP COUNT.
import { fileURLToPath } from 'node:url';
import * as path from 'node:path';
const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '../..');
const core = (p) => import(path.join(root, 'tools/core/dist', p));
const { loadModel, LoraAdapter } = await core('models/index.js');
const E = await core('edit/index.js');
const { noGrad, fromData, indexSelect, matmul, transpose } = await core('tensor/index.js');
const L = await import(path.join(root, 'tools/hypernet-gen/dist/lib.js'));
const world = path.join(root, 'fixtures/world');
const { model, tokenizer: tok } = loadModel(path.join(root, 'fixtures/models/dense'));
const h = L.loadHyper(path.join(root, 'fixtures/hypernet/dense'));
const templates = E.loadTemplateBank(path.join(world, 'templates.json'));
const known = E.readNdjson(path.join(world, 'facts.ndjson'));
const skip = Number(process.env.SKIP ?? 60), count = Number(process.env.COUNT ?? 10);
const facts = E.readNdjson(path.join(world, 'edits.ndjson')).filter((f) => f.op === 'insert').slice(skip, skip + count).map(E.checkFact);
for (const f of facts.slice(0, 3)) console.log(f.subject, tok.encode(' ' + f.subject, { addSpecialTokens: false }).map((t) => tok.decode([t])));
const readback = E.readNdjson(path.join(world, 'eval/facts-heldout.ndjson')).map((p) => ({ prompt: p.prompt, target: p.target, subject: p.subject, relation: p.relation }));
const D = h.config.keyDim;
// second moment of keys over all positions of the known facts' training phrasings
function moment(prompts, lastOnly) {
  const m = new Float64Array(D * D); let n = 0;
  noGrad(() => {
    for (let s = 0; s < prompts.length; s += 32) {
      const rows = prompts.slice(s, s + 32).map((p) => tok.encode(p));
      const { ids, mask, T, last } = E.padBatch(rows, E.padId(model));
      const got = {};
      model.forward(ids, [rows.length, T], { attentionMask: mask, skipLogits: true, hooks: E.mlpInputHooks(h.config.layer, got) });
      const k = E.mlpInputFrom(model, h.config.layer, got.resid, got.attn);
      const real = []; for (let i = 0; i < mask.length; i++) if (mask[i]) real.push(i);
      const kr = indexSelect(k, 0, Int32Array.from(real));
      const kk = matmul(transpose(kr, 0, 1), kr).data;
      for (let i = 0; i < D * D; i++) m[i] += kk[i];
      n += real.length;
    }
  });
  for (let i = 0; i < m.length; i++) m[i] /= n;
  return { m, n };
}
const trainPrompts = [];
for (const k of known) for (const t of E.trainPhrasings(templates, k.relation).slice(0, 3)) trainPrompts.push(t.replace('{}', k.subject));
console.log('train prompts', trainPrompts.length);
const t0 = Date.now();
const Cf = moment(trainPrompts);
console.log('Cf over', Cf.n, 'tokens', (Date.now() - t0) / 1000, 's');
const res = { model, tokenizer: tok, modelSha: E.modelSha256(path.join(root, 'fixtures/models/dense')), templates, corpus: E.readCorpusLines(path.join(world, 'train.txt'), 50000), known };
const st = E.keyStatsCached(model, tok, { modelSha: res.modelSha, layer: 0, corpus: res.corpus, maxTokens: 20000 });
const Cc = Float64Array.from(Float32Array.from(st.moment));
const phr = 5;
const gens = facts.map((f) => L.generate(h, model, tok, [f], [], templates, phr, f.id));
const feats = facts.map((f) => { const rows = L.factPhrasings(f, [], templates, phr).map((p) => L.editRow(tok, f, p)); return L.featurize(model, 0, h.net.shape, h.chol, f, rows[0].targets[0][1], rows, rows.length, false).feats; });
function variant(name, wc, wf, ridge) {
  const C = new Float64Array(D * D);
  for (let i = 0; i < C.length; i++) C[i] = wc * Cc[i] + wf * Cf.m[i];
  let tr = 0; for (let i = 0; i < D; i++) tr += C[i * D + i];
  const chol = E.cholesky(C, D, ridge * tr / D);
  const groups = facts.map((f, i) => {
    const kS = feats[i].kStar; const ci = E.cholSolve(chol, D, kS);
    let den = 0; for (let d = 0; d < D; d++) den += ci[d] * kS[d];
    const A = Float32Array.from(ci, (v) => v / den);
    const old = gens[i].adapter.modules.get(h.config.targets[0]);
    const ad = new LoraAdapter(f.id, 1, 1, new Map([[h.config.targets[0], { A: fromData(A, [1, D]), B: old.B }]]), model.arch.fanInFanOut);
    return { adapters: [ad], facts: [f] };
  });
  const r = E.editReadback(model, tok, groups, { templates, readback });
  console.log(`${name}: eff ${(100 * r.efficacy).toFixed(0)} para ${(100 * r.paraphrase).toFixed(0)} neigh ${(100 * r.neighbourhood).toFixed(0)} kl ${r.kl.toFixed(3)} drop ${r.retain_drop.toFixed(3)}`);
}
const v = (process.env.V ?? 'base').split(',');
for (const x of v) {
  const [wc, wf, ridge] = { base: [1, 0, 1e-3], f1: [1, 1, 1e-3], f10: [0.1, 1, 1e-3], fonly: [0, 1, 1e-3], r2: [1, 0, 1e-2], r4: [1, 0, 1e-4], f1r2: [1, 1, 1e-2], f1r4: [1, 1, 1e-4], f10r4: [0.1, 1, 1e-4] }[x];
  variant(x, wc, wf, ridge);
}
