/**
 * LEACE concept erasure (issue 20): the closed form against numpy's
 * (scripts/golden/leace_golden.py, same formula inputs), and on the dense
 * fixture model the stored LoRA + lora_B bias makes the MLP output exactly
 * the erased activations (class means equal) at every prompt.
 */
import t from 'tap';
import type { Test } from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel } from '../src/models/index.js';
import { parseRecord, isRecord } from '../src/records/schema.js';
import { applyEraser, classMeanGap, eraserAdapter, fitLeace, readNdjson, siteActivations } from '../src/edit/index.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

t.test('fitLeace equals numpy\'s closed form (singular covariance included)', async (t) => {
  const g = JSON.parse(fs.readFileSync(path.join(ROOT, 'scripts/golden/leace_golden.json'), 'utf8'));
  const { n, d, k } = g;
  const X = new Float64Array(n * d);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < d; j++) X[i * d + j] = Math.sin(0.7 * i + 1.3 * j + 0.11 * i * j) + (j < 5 ? 0.8 * Math.cos((i % k) + 2.0 * j) : 0);
    X[i * d + d - 1] = X[i * d] + X[i * d + 1];
  }
  const labels = Int32Array.from({ length: n }, (_, i) => i % k);
  const e = fitLeace(X, n, d, labels, k);
  t.equal(e.rank, g.rank, 'rank = classes − 1');
  let worst = 0;
  for (let a = 0; a < d; a++) for (let b = 0; b < d; b++) {
    let p = 0;
    for (let j = 0; j < e.rank; j++) p += e.B[a * e.rank + j] * e.A[j * d + b];
    worst = Math.max(worst, Math.abs(p - g.P[a * d + b]));
  }
  t.ok(worst < 1e-8, `P = B·A matches numpy (max |diff| ${worst.toExponential(2)})`);
  const er = applyEraser(e, X, n);
  let w2 = 0;
  for (let i = 0; i < 5 * d; i++) w2 = Math.max(w2, Math.abs(er[i] - g.erased_first_rows[i]));
  t.ok(w2 < 1e-8, `erased rows match (max |diff| ${w2.toExponential(2)})`);
  t.ok(classMeanGap(X, n, d, labels, k) > 0.1, 'the classes differ before');
  t.ok(classMeanGap(er, n, d, labels, k) < 1e-10, 'class means equal after');
  t.throws(() => fitLeace(X, n, d, labels, 1), /two classes/);
});

t.test('fitLeace: the Cholesky whitening gives the eigen whitening\'s eraser; a singular Σ falls back to the eigen path', async (t) => {
  const n = 400, d = 24, k = 4;
  const X = new Float64Array(n * d);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) X[i * d + j] = Math.sin(1.1 * i + 0.7 * j + 0.013 * i * j) + (j < 6 ? 0.9 * Math.cos((i % k) * (j + 1)) : 0);
  const labels = Int32Array.from({ length: n }, (_, i) => i % k);
  const P = (e: ReturnType<typeof fitLeace>) => Float64Array.from({ length: d * d }, (_, ab) => {
    let p = 0;
    for (let j = 0; j < e.rank; j++) p += e.B[Math.floor(ab / d) * e.rank + j] * e.A[j * d + (ab % d)];
    return p;
  });
  const maxDiff = (x: Float64Array, y: Float64Array) => x.reduce((m, v, i) => Math.max(m, Math.abs(v - y[i])), 0);
  const auto = fitLeace(X, n, d, labels, k), eigen = fitLeace(X, n, d, labels, k, 1e-10, 0, 'eigen');
  t.equal(auto.rank, k - 1);
  const diff = maxDiff(P(auto), P(eigen));
  t.ok(diff < 1e-9, `P equal (max |diff| ${diff.toExponential(2)})`);
  t.ok(classMeanGap(applyEraser(auto, X, n), n, d, labels, k) < 1e-10, 'class means equal after');
  // a column that copies another: Σ singular, the Cholesky factor fails, the eigen path (pseudo-inverse) decides
  for (let i = 0; i < n; i++) X[i * d + d - 1] = X[i * d + 2];
  const sing = fitLeace(X, n, d, labels, k), singEigen = fitLeace(X, n, d, labels, k, 1e-10, 0, 'eigen');
  t.equal(maxDiff(P(sing), P(singEigen)), 0, 'singular Σ: exactly the eigen path');
  t.ok(classMeanGap(applyEraser(sing, X, n), n, d, labels, k) < 1e-9, 'class means equal after');
});

t.test('fitLeace shrink: the class means are still equal; shrink 1 is the orthogonal projection off the class-mean differences', async (t) => {
  const n = 60, d = 8, k = 3;
  const X = new Float64Array(n * d);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) X[i * d + j] = Math.sin(0.7 * i + 1.3 * j + 0.11 * i * j) * (1 + j) + (j < 3 ? (i % k) * (j + 1) : 0);
  const labels = Int32Array.from({ length: n }, (_, i) => i % k);
  const P = (e: ReturnType<typeof fitLeace>) => Float64Array.from({ length: d * d }, (_, ab) => {
    let s = 0;
    for (let j = 0; j < e.rank; j++) s += e.B[Math.floor(ab / d) * e.rank + j] * e.A[j * d + (ab % d)];
    return s;
  });
  const exact = P(fitLeace(X, n, d, labels, k));
  let asym = 0;
  for (let a = 0; a < d; a++) for (let b = 0; b < d; b++) asym = Math.max(asym, Math.abs(exact[a * d + b] - exact[b * d + a]));
  t.ok(asym > 1e-3, 'exact LEACE: an oblique projection here');
  for (const s of [0.5, 1]) {
    const e = fitLeace(X, n, d, labels, k, 1e-10, s);
    t.ok(classMeanGap(applyEraser(e, X, n), n, d, labels, k) < 1e-9, `shrink ${s}: class means equal`);
  }
  const o = P(fitLeace(X, n, d, labels, k, 1e-10, 1));
  let worst = 0;
  for (let a = 0; a < d; a++) for (let b = 0; b < d; b++) {
    let pp = 0;
    for (let c = 0; c < d; c++) pp += o[a * d + c] * o[c * d + b];
    worst = Math.max(worst, Math.abs(o[a * d + b] - o[b * d + a]), Math.abs(pp - o[a * d + b]));
  }
  t.ok(worst < 1e-9, `shrink 1: P symmetric and idempotent (${worst.toExponential(1)})`);
  t.throws(() => fitLeace(X, n, d, labels, k, 1e-10, 2), /shrink/);
});

/** Fit at layer 2 of a fixture model, apply as the adapter, read the site back: it must be r(x). */
async function erasesAtSite(t: Test, modelDir: string, modules: number) {
  const { model, tokenizer } = loadModel(path.join(ROOT, modelDir));
  const tok = tokenizer!;
  const rels = ['works_for', 'located_in', 'plays_instrument'];
  const facts = readNdjson(path.join(ROOT, 'fixtures/world/facts.ndjson')).filter((f) => rels.includes(f.relation as string));
  const pick = rels.flatMap((r) => facts.filter((f) => f.relation === r).slice(0, 40));
  const prompts = pick.map((f) => (f.prompt as string).replace('{}', f.subject as string));
  const labels = Int32Array.from(pick, (f) => rels.indexOf(f.relation as string));
  const H = model.config.hidden;
  const layer = 2;
  const X = siteActivations(model, tok, prompts, layer);
  const e = fitLeace(X, prompts.length, H, labels, rels.length);
  t.equal(e.rank, 2);
  const adapter = eraserAdapter(model, e, layer, 'leace-test');
  t.equal(adapter.modules.size, modules, `${modules} module${modules > 1 ? 's' : ''} written`);
  for (const m of adapter.modules.values()) t.ok(m.bias !== undefined, 'a lora_B bias');
  model.setAdapters([{ adapter }]);
  const Y = siteActivations(model, tok, prompts, layer);
  model.setAdapters([]);
  const want = applyEraser(e, X, prompts.length);
  let worst = 0, scale = 0;
  for (let i = 0; i < Y.length; i++) {
    worst = Math.max(worst, Math.abs(Y[i] - want[i]));
    scale = Math.max(scale, Math.abs(want[i]));
  }
  t.ok(worst < 1e-3 * scale, `MLP output with the adapter = r(x) (max |diff| ${worst.toExponential(2)} of ${scale.toFixed(2)})`);
  const before = classMeanGap(X, prompts.length, H, labels, rels.length);
  const after = classMeanGap(Y, prompts.length, H, labels, rels.length);
  t.ok(after < 1e-3 * before, `class-mean gap ${before.toFixed(3)} → ${after.toExponential(2)}`);
}

t.test('dense fixture model: the adapter (LoRA + lora_B bias on the MLP output projection) erases at the site', async (t) => {
  await erasesAtSite(t, 'fixtures/models/dense', 1);
});

t.test('MoE fixture model: every expert\'s output projection gets the factors; the gate-weighted block output is erased', async (t) => {
  await erasesAtSite(t, 'fixtures/models/moe', 4);
});

t.test('concept records: parsed like the other kinds, errors name the field', async (t) => {
  const ok = { kind: 'concept', concept: 'relation', prompt: 'Ada works for', label: 'works_for', split: 'test' };
  t.same(parseRecord('concept', ok), ok);
  t.notOk(isRecord('concept', { ...ok, label: undefined }));
  t.throws(() => parseRecord('concept', { ...ok, label: 3 }), /label/);
  t.throws(() => parseRecord('concept', { ...ok, split: 'dev' }), /split/);
});

t.test('erasure measure: a linear probe on held-out activations reads the relation before, about chance after', async (t) => {
  const { linearProbe } = await import('../src/metrics/erasure.js');
  const { model, tokenizer } = loadModel(path.join(ROOT, 'fixtures/models/dense'));
  const tok = tokenizer!;
  const rels = ['works_for', 'lives_in', 'plays_sport'];
  const facts = readNdjson(path.join(ROOT, 'fixtures/world/facts.ndjson')).filter((f) => rels.includes(f.relation as string));
  const rows = rels.flatMap((r) => facts.filter((f) => f.relation === r).slice(0, 220));
  const test = rows.filter((_, i) => i % 4 === 3);
  const prompts = (rs: typeof rows) => rs.map((f) => (f.prompt as string).replace('{}', f.subject as string));
  const lab = (rs: typeof rows) => Int32Array.from(rs, (f) => rels.indexOf(f.relation as string));
  const H = model.config.hidden, layer = 2;
  // the eraser is fitted on one half of the train rows; the probe trains on the other half and reads the test rows
  const fitRows = rows.filter((_, i) => i % 4 < 2), probeRows = rows.filter((_, i) => i % 4 === 2);
  const e = fitLeace(siteActivations(model, tok, prompts(fitRows), layer), fitRows.length, H, lab(fitRows), 3);
  const read = () => ({ tr: siteActivations(model, tok, prompts(probeRows), layer), te: siteActivations(model, tok, prompts(test), layer) });
  const b = read();
  const before = linearProbe(b.tr, lab(probeRows), b.te, lab(test), H, 3);
  model.setAdapters([{ adapter: eraserAdapter(model, e, layer, 'leace-probe') }]);
  const a = read();
  model.setAdapters([]);
  const after = linearProbe(a.tr, lab(probeRows), a.te, lab(test), H, 3);
  t.ok(before.accuracy > 0.9, `before: probe accuracy ${before.accuracy.toFixed(3)} (chance ${before.chance.toFixed(3)})`);
  t.ok(after.accuracy < before.chance + 0.15, `after: ${after.accuracy.toFixed(3)} (chance ${after.chance.toFixed(3)}; train ${after.trainAccuracy.toFixed(3)})`);
});
