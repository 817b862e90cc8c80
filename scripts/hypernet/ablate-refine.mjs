#!/usr/bin/env node
// Sweep of --refine: C="steps,lr,maxNorm;..." (same algorithm as hypernet-gen --refine). Env: H SKIP COUNT.
import { fileURLToPath } from 'node:url';
import * as path from 'node:path';
const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '../..');
const core = (p) => import(path.join(root, 'tools/core/dist', p));
const { loadModel, LoraAdapter } = await core('models/index.js');
const E = await core('edit/index.js');
const T_ = await core('tensor/index.js');
const { fromData } = T_;
const L = await import(path.join(root, 'tools/hypernet-gen/dist/lib.js'));
const world = path.join(root, 'fixtures/world');
const { model, tokenizer: tok } = loadModel(path.join(root, 'fixtures/models/dense'));
const h = L.loadHyper(process.env.H ?? path.join(root, 'fixtures/hypernet/dense'));
const templates = E.loadTemplateBank(path.join(world, 'templates.json'));
const skip = Number(process.env.SKIP ?? 60), count = Number(process.env.COUNT ?? 10);
const facts = E.readNdjson(path.join(world, 'edits.ndjson')).filter((f) => f.op === 'insert').slice(skip, skip + count).map(E.checkFact);
const readback = E.readNdjson(path.join(world, 'eval/facts-heldout.ndjson')).map((p) => ({ prompt: p.prompt, target: p.target, subject: p.subject, relation: p.relation }));
const Hd = 128;
const layer = h.config.layer;
function refine(f, steps, lr, clamp) {
  const rows = L.factPhrasings(f, [], templates, 5).map((p) => L.editRow(tok, f, p));
  const { feats, s } = L.featurize(model, layer, h.net.shape, h.chol, f, rows[0].targets[0][1], rows, rows.length, true);
  const d0 = T_.noGrad(() => h.net.forward(fromData(feats.z, [1, feats.z.length]), fromData(new Float32Array([feats.oRms]), [1, 1]))).data;
  const delta = Float32Array.from(d0);
  let n0 = 0; for (const v of d0) n0 += v * v; n0 = Math.sqrt(n0);
  const { ids, mask, T } = E.padBatch(rows.map((r) => r.ids), E.padId(model));
  const S = new Float32Array(rows.length * T);
  rows.forEach((r, b) => S.set(s[b], b * T));
  const at = [], tg = [];
  rows.forEach((r, b) => r.targets.forEach(([p, id]) => { at.push(b * T + p); tg.push(id); }));
  const m = new Float32Array(Hd), v = new Float32Array(Hd);
  for (let k = 0; k < steps; k++) {
    const d = fromData(delta, [1, Hd], { requiresGrad: true });
    const added = T_.reshape(T_.matmul(fromData(S, [rows.length * T, 1]), d), [rows.length, T, Hd]);
    const { logits } = model.forward(ids, [rows.length, T], { attentionMask: mask, logitsAt: Int32Array.from(at), hooks: { [`layers.${layer}.mlp`]: { add: { value: added } } } });
    const ce = T_.crossEntropy(logits, Int32Array.from(tg));
    ce.backward();
    const g = d.grad.data;
    for (let i = 0; i < Hd; i++) { m[i] = 0.9 * m[i] + 0.1 * g[i]; v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i]; delta[i] -= lr * n0 / Math.sqrt(Hd) * (m[i] / (1 - 0.9 ** (k + 1))) / (Math.sqrt(v[i] / (1 - 0.999 ** (k + 1))) + 1e-8); }
    let n = 0; for (const x of delta) n += x * x; n = Math.sqrt(n);
    if (n > clamp * n0) for (let i = 0; i < Hd; i++) delta[i] *= clamp * n0 / n;
  }
  return { A: feats.A, delta };
}
for (const cfg of (process.env.C ?? '0,0.1,1;3,0.1,1;5,0.1,1;5,0.1,1.3').split(';')) {
  const [steps, lr, clamp] = cfg.split(',').map(Number);
  const t0 = performance.now();
  const ed = facts.map((f) => refine(f, steps, lr, clamp));
  const ms = (performance.now() - t0) / facts.length;
  const groups = facts.map((f, i) => ({ adapters: [new LoraAdapter(f.id, 1, 1, new Map([[h.config.targets[0], { A: fromData(ed[i].A, [1, 512]), B: fromData(ed[i].delta, [Hd, 1]) }]]), model.arch.fanInFanOut)], facts: [f] }));
  const r = E.editReadback(model, tok, groups, { templates, readback });
  console.log(`refine steps ${steps} lr ${lr} clamp ${clamp}: ${ms.toFixed(0)} ms/fact; eff ${(100 * r.efficacy).toFixed(0)} para ${(100 * r.paraphrase).toFixed(0)} neigh ${(100 * r.neighbourhood).toFixed(0)} kl ${r.kl.toFixed(3)} drop ${r.retain_drop.toFixed(3)}`);
}
