/**
 * MEMIT and AlphaEdit: the per-layer update against its normal equations
 * (float64) and against a PyTorch golden output in the papers' own form
 * (scripts/golden/memit_golden.py), the eigen-decomposition, SVD truncation,
 * bad input, and a real batch edit on the dense fixture model (efficacy; the
 * null-space property; earlier batches' keys protected in sequence).
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel } from '../src/models/index.js';
import { InputError, UsageError } from '../src/records/errors.js';
import { Rng } from '../src/util/random.js';
import {
  MEMIT_DEFAULTS, alphaEditSolve, memitDefaultLayers, memitLayers, alphaeditMethod, checkBatchConflicts, checkFact, keyStatsCached, memitEdit, memitMethod, memitSolve,
  nullSpaceOf, readCorpusLines, readNdjson, keepPromptsFor, loadTemplateBank, symmetricEigen, top1, truncateFactors, encodeTrainingPair, type EditFact, type EditResources,
} from '../src/edit/index.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cat-memit-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

function matmul(a: Float64Array, b: Float64Array, m: number, k: number, n: number): Float64Array {
  const o = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let p = 0; p < k; p++) for (let j = 0; j < n; j++) o[i * n + j] += a[i * k + p] * b[p * n + j];
  return o;
}
const T = (a: Float64Array, m: number, n: number) => {
  const o = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) o[j * m + i] = a[i * n + j];
  return o;
};
const maxAbs = (a: Float64Array) => a.reduce((s, x) => Math.max(s, Math.abs(x)), 0);
const diff = (a: Float64Array, b: ArrayLike<number>) => Float64Array.from(a, (x, i) => x - b[i]);

// the golden script's inputs (same formulas)
const golden = JSON.parse(fs.readFileSync(path.join(ROOT, 'scripts/golden/memit_golden.json'), 'utf8'));
const { D, N, H, NP, S } = golden as { D: number; N: number; H: number; NP: number; S: number };
const f = (i: number, j: number, a: number, b: number, c: number) => Math.sin(a * i + b * j + 0.37 * i * j + c) + 0.5 * Math.cos(0.21 * i * i + b * j * j * 0.1 + c);
const X = new Float64Array(S * D);
for (let i = 0; i < S; i++) for (let j = 0; j < D; j++) X[i * D + j] = f(i, j, 1.3, 0.7, 0.1) + (j < 3 ? 0.3 * f(i, 0, 0.5, 0, 2.0) : 0);
const C = Float64Array.from(matmul(T(X, S, D), X, D, S, D), (x) => x / S);
const K = new Float64Array(N * D); // rows = keys
const R = new Float64Array(N * H);
const Kp = new Float64Array(NP * D);
for (let i = 0; i < N; i++) for (let j = 0; j < D; j++) K[i * D + j] = f(i, j, 0.9, 1.7, 0.4);
for (let i = 0; i < N; i++) for (let j = 0; j < H; j++) R[i * H + j] = f(i, j, 2.1, 0.3, 1.1);
for (let i = 0; i < NP; i++) for (let j = 0; j < D; j++) Kp[i * D + j] = f(i, j, 1.1, 2.3, 0.8);
const Cp = matmul(T(Kp, NP, D), Kp, D, NP, D);
let tr = 0;
for (let i = 0; i < D; i++) tr += C[i * D + i];

t.test('MEMIT update solves its normal equations ΔW(λC + KᵀK) = RᵀK and matches PyTorch', async (t) => {
  const lam = golden.lambda as number;
  const { A, B } = memitSolve(C, D, K, R, N, H, lam);
  const dW = matmul(B, A, H, N, D);
  const M = matmul(T(K, N, D), K, D, N, D);
  for (let i = 0; i < D * D; i++) M[i] += lam * C[i];
  const lhs = matmul(dW, M, H, D, D);
  const rhs = matmul(T(R, N, H), K, H, N, D);
  t.ok(maxAbs(diff(lhs, rhs)) < 1e-9 * maxAbs(rhs), `normal equations residual ${maxAbs(diff(lhs, rhs)).toExponential(2)}`);
  const err = maxAbs(diff(dW, golden.memit));
  t.ok(err < 1e-9 * maxAbs(Float64Array.from(golden.memit)), `vs torch: max |diff| ${err.toExponential(2)}`);
  // without regularisation each key maps exactly to its residual
  const ex = memitSolve(C, D, K, R, N, H, 1e-12);
  const dW0 = matmul(ex.B, ex.A, H, N, D);
  const got = matmul(K, T(dW0, H, D), N, D, H);
  t.ok(maxAbs(diff(got, R)) < 1e-6, 'λ → 0: ΔW kᵢ = rᵢ');
});

t.test('AlphaEdit update: the paper\'s (non-symmetric) solve from PyTorch, and ΔW·k = 0 off the null space', async (t) => {
  const ns = nullSpaceOf({ layer: 0, moment: C, dim: D, count: S }, golden.tau);
  t.equal(ns.r, golden.null_dim, 'same null-space dimension as torch.linalg.eigh');
  const { A, B } = alphaEditSolve(ns.basis, D, ns.r, K, R, N, H, golden.alpha_rel * (tr / D), Cp);
  const dW = matmul(B, A, H, N, D);
  const err = maxAbs(diff(dW, golden.alphaedit));
  t.ok(err < 1e-8 * Math.max(1e-12, maxAbs(Float64Array.from(golden.alphaedit))), `vs torch: max |diff| ${err.toExponential(2)}`);
  // eigenvectors with eigenvalue above the threshold are untouched
  const eig = symmetricEigen(C, D);
  for (let j = ns.r; j < D; j++) {
    const v = Float64Array.from({ length: D }, (_, i) => eig.vectors[i * D + j]);
    const out = matmul(dW, v, H, D, 1);
    t.ok(maxAbs(out) < 1e-10, `eigenvalue ${eig.values[j].toFixed(3)} direction: |ΔW v| ${maxAbs(out).toExponential(1)}`);
  }
});

t.test('symmetricEigen: C V = V Λ, Vᵀ V = I', async (t) => {
  const { values, vectors } = symmetricEigen(C, D);
  const CV = matmul(C, vectors, D, D, D);
  const VL = Float64Array.from(vectors, (x, i) => x * values[i % D]);
  t.ok(maxAbs(diff(CV, VL)) < 1e-10, 'eigen equation');
  const VtV = matmul(T(vectors, D, D), vectors, D, D, D);
  for (let i = 0; i < D; i++) VtV[i * D + i] -= 1;
  t.ok(maxAbs(VtV) < 1e-12, 'orthonormal');
  for (let i = 1; i < D; i++) t.ok(values[i] >= values[i - 1], 'ascending');
});

t.test('truncateFactors: N > H is re-factored exactly at rank H; a lower cap keeps the top energy', async (t) => {
  const rng = new Rng(3);
  const n = 9, h = 4, d = 7;
  const B = Float64Array.from({ length: h * n }, () => rng.normal());
  const A = Float64Array.from({ length: n * d }, () => rng.normal());
  const full = matmul(B, A, h, n, d);
  const r = truncateFactors(B, A, h, n, d, h);
  t.equal(r.rank, h);
  t.ok(Math.abs(r.energy - 1) < 1e-12);
  t.ok(maxAbs(diff(matmul(r.B, r.A, h, r.rank, d), full)) < 1e-9, 'exact at rank min(H, D)');
  const r2 = truncateFactors(B, A, h, n, d, 2);
  t.equal(r2.rank, 2);
  t.ok(r2.energy < 1 && r2.energy > 0.3, `energy kept ${r2.energy.toFixed(3)}`);
});

const fact = (id: string, subject: string, target: string, relation = 'capital') =>
  checkFact({ kind: 'fact', id, subject, prompt: 'The capital of {} is', target_new: target, target_true: 'x', relation, op: 'insert', source: 't' });

t.test('bad input: conflicting targets are refused by fact id; layers out of range are usage errors', async (t) => {
  let err: unknown = null;
  try {
    checkBatchConflicts([fact('a1', 'S', 'X'), fact('a2', 'T', 'X'), fact('a3', 'S', 'Y')]);
  } catch (e) {
    err = e;
  }
  t.ok(err instanceof InputError, 'InputError (exit 2)');
  t.match((err as Error).message, /fact "a3" conflicts with fact "a1": same subject "S" and relation "capital", "X" vs "Y"/, 'names both facts');
  t.doesNotThrow(() => checkBatchConflicts([fact('a1', 'S', 'X'), fact('a2', 'S', 'X'), fact('a3', 'S', 'Y', 'other')]));
  const { model, tokenizer } = loadModel(path.join(ROOT, 'fixtures/models/dense'));
  const res = { model, tokenizer: tokenizer!, modelName: 'dense', modelSha: 'x', templates: null, corpus: [], known: [] } as EditResources;
  for (const m of [memitMethod, alphaeditMethod]) {
    t.throws(() => m.check!(res, { topK: 1 }, m.parseOptions({ layers: ['7'] })), UsageError, `${m.name}: layer 7 of 4`);
    t.throws(() => m.check!(res, { topK: 1 }, m.parseOptions({ layers: ['3'] })), UsageError, `${m.name}: the last layer`);
    t.throws(() => m.check!(res, { topK: 1, layer: 9 }, m.parseOptions({})), UsageError, `${m.name}: --layer 9`);
    t.doesNotThrow(() => m.check!(res, { topK: 1 }, m.parseOptions({ layers: ['0-1'] })));
    t.throws(() => m.parseOptions({ layers: ['x'] }), UsageError);
    t.throws(() => m.parseOptions({ 'mom2-weight': -1 }), UsageError);
  }
  t.same(memitMethod.parseOptions({ layers: ['0-2', '5'] }).layers, [0, 1, 2, 5]);
});

t.test('default layers: five ending at ROME\'s layer; a batch of forgets only, one further, never the last layer', async (t) => {
  t.same(memitDefaultLayers(48), [12, 13, 14, 15, 16], 'GPT-2 XL shape: 12–16 (the paper: 13–17)');
  t.same(memitDefaultLayers(48, true), [13, 14, 15, 16, 17]);
  t.same(memitDefaultLayers(4), [0], 'the fixture model: layer 0');
  t.same(memitDefaultLayers(4, true), [0, 1]);
  t.same(memitDefaultLayers(2, true), [0], 'two layers: the last is never edited');
  const { model } = loadModel(path.join(ROOT, 'fixtures/models/dense'));
  const o = memitMethod.parseOptions({});
  t.same(memitLayers(model, { topK: 1 }, o, [], true), [0, 1], 'forgets: 0–1 on the fixture model');
  t.same(memitLayers(model, { topK: 1 }, memitMethod.parseOptions({ layers: ['0'] }), [], true), [0], '--layers wins');
  t.same(memitLayers(model, { topK: 1 }, o, [{ kind: 'locus', layer: 2, score: 1 }], true), [1, 2], 'attrib\'s loci win');
});

t.test('keep prompts: the edited subjects\' other facts every step, a pool of other subjects, never a read-back (held-out) phrasing', async (t) => {
  const world = path.join(ROOT, 'fixtures/world');
  const facts = readNdjson(path.join(world, 'edits.ndjson')).filter((r) => r.op === 'insert').slice(0, 4).map((r) => checkFact(r)) as EditFact[];
  const known = readNdjson(path.join(world, 'facts.ndjson'));
  const templates = loadTemplateBank(path.join(world, 'templates.json'));
  const op = { keepPerFact: 5, keepOther: 200, keepSameSubject: true, keepPhrasings: 2 };
  const k = keepPromptsFor(facts, known, templates, op, 0);
  const subjects = new Set(facts.map((f) => f.subject));
  const others = known.filter((r) => subjects.has(r.subject as string) && !facts.some((f) => f.subject === r.subject && f.relation === r.relation));
  t.ok(others.length > 0, 'the edited subjects have other known facts');
  t.same(new Set(k.fixed), new Set(others.map((r) => (r.prompt as string).replace('{}', r.subject as string))), 'fixed: exactly their other facts');
  for (const f of facts) t.notOk(k.fixed.includes(f.prompt.replace('{}', f.subject)), `the edited prompt of ${f.id} is not kept`);
  t.notOk(k.pool.some((p) => [...subjects].some((s) => p.includes(s))), 'the pool names no edited subject');
  const held = new Set(readNdjson(path.join(world, 'eval/facts-heldout.ndjson')).map((r) => r.prompt as string));
  t.equal([...k.fixed, ...k.pool].filter((p) => held.has(p)).length, 0, 'no read-back (held-out) phrasing is kept');
  const plain = keepPromptsFor(facts, known, templates, { ...op, keepPhrasings: 0, keepSameSubject: false }, 0);
  t.equal(plain.fixed.length, 0);
  t.ok(k.pool.length > plain.pool.length * 2, `more phrasings: ${k.pool.length} prompts vs ${plain.pool.length}`);
  t.same(keepPromptsFor(facts, known, templates, op, 0), k, 'seeded');
  // prompts the stream tests with (testedPrompts) are never kept: a fixed one and a pooled one
  const tested = new Set([k.fixed[0], k.pool[0], k.pool[k.pool.length - 1]]);
  const avoiding = keepPromptsFor(facts, known, templates, op, 0, tested);
  t.same([...avoiding.fixed, ...avoiding.pool].filter((p) => tested.has(p)), [], 'no tested prompt is kept');
  t.equal(avoiding.fixed.length, k.fixed.length - 1, 'every other fixed prompt stays');
  t.ok(avoiding.pool.length >= k.pool.length - 6, `the pool keeps its size but for the tested facts' phrasings: ${avoiding.pool.length} vs ${k.pool.length}`);
});

t.test('dense fixture model: a MEMIT batch edit states every target (one layer), and spreads over two layers reaching its targets', async (t) => {
  const { model, tokenizer } = loadModel(path.join(ROOT, 'fixtures/models/dense'));
  const tok = tokenizer!;
  const corpus = readCorpusLines(path.join(ROOT, 'fixtures/world/train.txt'), 3000);
  const statsAt = (l: number) => keyStatsCached(model, tok, { modelSha: 'dense-test', layer: l, corpus, maxTokens: 6000, cacheDir: tmp });
  const facts = readNdjson(path.join(ROOT, 'fixtures/world/edits.ndjson')).filter((r) => r.op === 'insert').slice(0, 3).map((r) => checkFact(r)) as EditFact[];
  const base = { ...MEMIT_DEFAULTS, vSteps: 60, refineSteps: 60, statsAt, phrasings: () => [], prefixList: [], name: 't' };
  const rows = facts.map((x) => encodeTrainingPair(tok, x.prompt.replace('{}', x.subject), x.target_new!));
  const m = memitEdit(model, tok, facts, { ...base, algorithm: 'memit', layers: [0], mom2Weight: 10 });
  t.equal(m.adapter.r, facts.length, 'rank N');
  t.same(model.activeAdapters(), [], 'the model is left without adapters');
  model.setAdapters([{ adapter: m.adapter }]);
  const got = top1(model, rows.map((r) => r.promptIds));
  model.setAdapters([]);
  t.same(got, rows.map((r) => r.targetIds[0]), `every fact states its target (residual ${m.residual.toFixed(3)}, NLL ${m.nll.map((x) => x.toFixed(2)).join(' ')})`);
  t.ok(m.nll.every((x) => x < 0.5), `values fitted (NLL ${m.nll.map((x) => x.toFixed(2)).join(' ')})`);
  // a batch with more rewriting rows than refitRows is refitted on a sample of them a step (here 2 of 3)
  const sampled = memitEdit(model, tok, facts, { ...base, algorithm: 'memit', layers: [0], mom2Weight: 10, refitRows: 2, refineSteps: 120, targets: m.targets });
  t.not(Buffer.compare(Buffer.from(sampled.adapter.modules.values().next().value!.B.data.buffer), Buffer.from(m.adapter.modules.values().next().value!.B.data.buffer)), 0, 'the sampled refit is another fit');
  model.setAdapters([{ adapter: sampled.adapter }]);
  const gotSampled = top1(model, rows.map((r) => r.promptIds));
  model.setAdapters([]);
  t.same(gotSampled, rows.map((r) => r.targetIds[0]), `sampled refit: every fact states its target (NLL ${sampled.nll.map((x) => x.toFixed(2)).join(' ')})`);
  t.ok(sampled.nll.every((x) => Number.isFinite(x) && x < 0.5), 'its NLL is read over every row');
  const two = memitEdit(model, tok, facts, { ...base, algorithm: 'memit', layers: [0, 1], mom2Weight: 0.1, vSteps: 5, refineSteps: 0 });
  t.equal(two.adapter.targets().length, 2, 'two layers edited');
  t.ok(two.residual < 0.1, `targets at the last layer reached: ${(100 * (1 - two.residual)).toFixed(1)}%`);
  t.ok(two.perLayer.every((p) => p.norm > 0));
});

t.test('AlphaEdit in sequence (golden GPT-2): batch 2 leaves batch 1\'s keys where they were only with the memory', async (t) => {
  const { model, tokenizer } = loadModel(path.join(ROOT, 'fixtures/golden/gpt2'));
  const tok = tokenizer!;
  const corpus = ['the eiffel tower is in paris .', 'the colosseum is in rome .', 'the language of spain is spanish .', 'madrid is a city in spain .', 'the capital of italy is rome .', 'paris is a city in france .'];
  const statsAt = (l: number) => ({ ...keyStatsCached(model, tok, { modelSha: 'golden-test', layer: l, corpus, maxTokens: 2000, cacheDir: tmp }), file: path.join(tmp, `eig-${l}`) });
  const facts = [['f1', 'france', 'rome'], ['f2', 'spain', 'paris'], ['f3', 'italy', 'madrid'], ['f4', 'madrid', 'spanish']].map(([id, s, o]) => fact(id, s, o, `r-${id}`));
  facts.forEach((x) => (x.prompt = 'the capital of {} is'));
  const base = { ...MEMIT_DEFAULTS, algorithm: 'alphaedit' as const, layers: [0], vSteps: 10, refineSteps: 0, nullSpaceThreshold: 0.5, l2: 1e-3, statsAt, phrasings: () => [], prefixList: [], name: 't' };
  const a1 = memitEdit(model, tok, facts.slice(0, 2), base);
  t.equal(a1.memory!.edits, 2);
  t.ok(a1.perLayer[0].nullDim! > 0, `null space of ${a1.perLayer[0].nullDim} directions`);
  const second = (memory: typeof a1.memory) => memitEdit(model, tok, facts.slice(2), { ...base, memory });
  const withMem = second(a1.memory);
  const without = second(null);
  const K1 = a1.memory!.cov.get(0)!; // Σ k kᵀ of batch 1 at layer 0
  const move = (ad: typeof withMem.adapter) => {
    const { A, B } = [...ad.modules.values()][0];
    const r = ad.r, d = A.shape[1], h = B.shape[0];
    const dW = matmul(Float64Array.from(B.data), Float64Array.from(A.data), h, r, d);
    return matmul(matmul(dW, K1, h, d, d), T(dW, h, d), h, d, h).reduce((s, x, i) => (i % (h + 1) === 0 ? s + x : s), 0); // tr(ΔW Cₚ ΔWᵀ)
  };
  t.ok(move(withMem.adapter) < 0.1 * move(without.adapter), `batch 2 moves batch 1's keys ${move(withMem.adapter).toExponential(2)} with the memory, ${move(without.adapter).toExponential(2)} without`);
  t.equal(withMem.memory!.edits, 4);
  t.ok(fs.existsSync(path.join(tmp, 'eig-0.eig.safetensors')), 'eigen-decomposition cached');
});
