/**
 * ROME pieces on the golden checkpoints: the recomputed MLP keys are the
 * down-projection's real input, the SPD solve against a multiplication
 * check, key statistics against an independent float64 accumulation and
 * the disk cache, and the update's defining properties (ΔW k* = δ; least
 * change in the C-norm among updates that do so).
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel } from '../src/models/index.js';
import { linear, noGrad, type Tensor } from '../src/tensor/index.js';
import { Rng } from '../src/util/random.js';
import {
  ROME_DEFAULTS, applyWeight, checkFact, computeKeyStats, keyStatsCached, lastLogits, mlpInputFrom, mlpInputHooks, mlpOutModule,
  knownFactRetainPrompts, loadTemplateBank, modelSha256, romeEdit, solveSpd,
} from '../src/edit/index.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cat-edit-rome-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const docs = ['the eiffel tower is in paris .', 'the colosseum is in rome .', 'the language of spain is spanish .', 'madrid is a city in spain .', 'the capital of italy is rome .', 'paris is a city in france .'];

for (const arch of ['gpt2', 'llama']) {
  t.test(`${arch}: recomputed keys through W (+ bias) equal the hooked MLP output`, async (t) => {
    const { model, tokenizer } = loadModel(path.join(ROOT, 'fixtures/golden', arch));
    const ids = Int32Array.from(tokenizer!.encode('the capital of france is rome'));
    for (const l of [0, 1]) {
      const got: { resid?: Tensor; attn?: Tensor } = {};
      let out: Tensor | null = null;
      noGrad(() => model.forward(ids, [1, ids.length], { skipLogits: true, hooks: mlpInputHooks(l, got, { [`layers.${l}.mlp`]: { capture: (x) => (out = x) } }) }));
      const k = noGrad(() => mlpInputFrom(model, l, got.resid!, got.attn!));
      const mod = mlpOutModule(model, l);
      let y = noGrad(() => applyWeight(model, mod, k));
      if (arch === 'gpt2') y = noGrad(() => linear(k, model.weight(`${mod}.weight`), model.weight(`${mod}.bias`), 'in_out'));
      const o = (out as unknown as Tensor).data;
      let err = 0;
      for (let i = 0; i < o.length; i++) err = Math.max(err, Math.abs(o[i] - y.data[i]));
      t.ok(err < 1e-5, `layer ${l}: max |diff| ${err.toExponential(2)}`);
    }
  });
}

t.test('solveSpd: M x = b to 1e-9 on a random SPD matrix', async (t) => {
  const rng = new Rng(5);
  const n = 40;
  const X = Array.from({ length: 60 * n }, () => rng.normal());
  const M = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) for (let r = 0; r < 60; r++) M[i * n + j] += X[r * n + i] * X[r * n + j];
  const b = Float64Array.from({ length: n }, () => rng.normal());
  const x = solveSpd(M, n, b, 0);
  let worst = 0;
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let j = 0; j < n; j++) s += M[i * n + j] * x[j];
    worst = Math.max(worst, Math.abs(s - b[i]));
  }
  t.ok(worst < 1e-9, `residual ${worst.toExponential(2)}`);
  t.throws(() => solveSpd(new Float64Array([1, 2, 2, 1]), 2, new Float64Array([1, 1]), 0), /not positive definite/);
});

t.test('key statistics: independent float64 accumulation; cached on disk per model and layer', async (t) => {
  const dir = path.join(ROOT, 'fixtures/golden/gpt2');
  const { model, tokenizer } = loadModel(dir);
  const tok = tokenizer!;
  const s = computeKeyStats(model, tok, docs, 1, 1000);
  // reference: each document alone (no padding), outer products summed in float64
  const D = s.dim;
  const ref = new Float64Array(D * D);
  let n = 0;
  for (const d of docs) {
    const ids = Int32Array.from(tok.encode(d));
    const got: { resid?: Tensor; attn?: Tensor } = {};
    noGrad(() => model.forward(ids, [1, ids.length], { skipLogits: true, hooks: mlpInputHooks(1, got) }));
    const k = noGrad(() => mlpInputFrom(model, 1, got.resid!, got.attn!)).data;
    for (let r = 0; r < ids.length; r++, n++) for (let i = 0; i < D; i++) for (let j = 0; j < D; j++) ref[i * D + j] += k[r * D + i] * k[r * D + j];
  }
  t.equal(s.count, n, 'every real token counted, padding skipped');
  let err = 0;
  let mag = 0;
  for (let i = 0; i < D * D; i++) {
    err = Math.max(err, Math.abs(ref[i] / n - s.moment[i]));
    mag = Math.max(mag, Math.abs(ref[i] / n));
  }
  t.ok(err < 1e-5 * mag, `max |diff| ${err.toExponential(2)} of ${mag.toExponential(2)}`);
  const sha = modelSha256(dir);
  const a = keyStatsCached(model, tok, { modelSha: sha, layer: 1, corpus: docs, maxTokens: 1000, cacheDir: tmp });
  const b = keyStatsCached(model, tok, { modelSha: sha, layer: 1, corpus: docs, maxTokens: 1000, cacheDir: tmp });
  t.equal(a.cached, false);
  t.equal(b.cached, true, 'second call reads the cache');
  t.equal(a.file, b.file);
  t.equal(b.count, a.count);
  t.ok(b.moment.every((v, i) => v === a.moment[i]), 'the miss returns exactly what the hit reads (the cache\'s float32), so the first run edits as later runs do');
  t.ok(a.moment.some((v, i) => v !== s.moment[i]), 'and that is the float32 rounding of the computed moments');
  const c = keyStatsCached(model, tok, { modelSha: sha, layer: 0, corpus: docs, maxTokens: 1000, cacheDir: tmp });
  t.not(c.file, a.file, 'another layer, another cache file');
});

t.test('ROME update: ΔW k* = δ and the least C-weighted change', async (t) => {
  const dir = path.join(ROOT, 'fixtures/golden/gpt2');
  const { model, tokenizer } = loadModel(dir);
  const tok = tokenizer!;
  const stats = computeKeyStats(model, tok, docs.concat(docs.map((d) => d.split(' ').reverse().join(' '))), 0, 1000);
  const fact = checkFact({ kind: 'fact', id: 'r1', subject: 'france', prompt: 'the capital of {} is', target_new: 'rome', op: 'insert' });
  const prompt = tok.encode('the capital of france is');
  const rIdx = tok.encode('the capital of france is rome').slice(prompt.length)[0];
  const lpBase = model.logprobs([prompt], [[rIdx]])[0][0];
  const r = romeEdit(model, tok, fact, stats, { ...ROME_DEFAULTS, layer: 0, prefixes: ['the colosseum is in rome .'], name: 'r1', vSteps: 40 });
  t.same(r.adapter.targets(), ['transformer.h.0.mlp.c_proj']);
  t.equal(r.adapter.r, 1);
  t.equal(r.adapter.alpha, 1);
  const { A, B } = r.adapter.modules.get('transformer.h.0.mlp.c_proj')!;
  t.same(A.shape, [1, 128]);
  t.same(B.shape, [32, 1]);
  model.setAdapters([{ adapter: r.adapter }]);
  const lpEdit = model.logprobs([prompt], [[rIdx]])[0][0];
  // a random 2-layer model moves little within the norm clamp; the trained fixture model's figures are in lora-train's tests
  t.ok(r.deltaNorm > 0 && Number.isFinite(r.nll), `δ moved (‖δ‖ ${r.deltaNorm.toFixed(3)})`);
  t.ok(lpEdit > lpBase + 0.1, `log P(rome) rose from ${lpBase.toFixed(3)} to ${lpEdit.toFixed(3)}`);
  model.setAdapters([]);
  // C-norm optimality: among ΔW' with ΔW' k* = ΔW k*, ΔW minimises tr(ΔW' C ΔW'ᵀ).
  // Perturb A by p with p·k* = 0 (keeps ΔW k*) and check the energy only grows.
  const D = stats.dim;
  const a = Float64Array.from(A.data);
  const energy = (v: Float64Array) => {
    let e = 0;
    for (let i = 0; i < D; i++) for (let j = 0; j < D; j++) e += v[i] * stats.moment[i * D + j] * v[j];
    return e;
  };
  // recover k* direction: A = C⁻¹k*/(k*ᵀC⁻¹k*) ⇒ C·A ∝ k*
  const kdir = new Float64Array(D);
  for (let i = 0; i < D; i++) for (let j = 0; j < D; j++) kdir[i] += stats.moment[i * D + j] * a[j];
  const rng = new Rng(9);
  const e0 = energy(a);
  let worse = 0;
  for (let trial = 0; trial < 5; trial++) {
    const p = Float64Array.from({ length: D }, () => rng.normal() * 1e-2);
    let pk = 0, kk = 0;
    for (let i = 0; i < D; i++) {
      pk += p[i] * kdir[i];
      kk += kdir[i] * kdir[i];
    }
    for (let i = 0; i < D; i++) p[i] -= (pk / kk) * kdir[i];
    const e1 = energy(Float64Array.from(a, (v, i) => v + p[i]));
    if (e1 >= e0 * (1 - 1e-6)) worse++;
  }
  t.equal(worse, 5, 'every constraint-keeping perturbation costs more C-energy (up to the ridge)');
  void lastLogits;
});

/** The dense fixture model, its world's records and layer-0 key statistics (20,000 tokens of train.txt), loaded once. */
let dense: { model: ReturnType<typeof loadModel>['model']; tok: NonNullable<ReturnType<typeof loadModel>['tokenizer']>; stats: ReturnType<typeof computeKeyStats>; world: string; read: (f: string) => any[] } | null = null;
function denseFixture() {
  if (dense) return dense;
  const world = path.join(ROOT, 'fixtures/world');
  const { model, tokenizer } = loadModel(path.join(ROOT, 'fixtures/models/dense'));
  const tok = tokenizer!;
  const corpus = fs.readFileSync(path.join(world, 'train.txt'), 'utf8').split('\n').filter(Boolean).slice(0, 3000);
  const read = (f: string) => fs.readFileSync(path.join(world, f), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
  dense = { model, tok, stats: computeKeyStats(model, tok, corpus, 0, 20000), world, read };
  return dense;
}

/** KL(base ‖ got) of each row's next token, in float64, summed over the rows ([rows, V] logits). */
function klSum(base: Tensor, got: Tensor): number {
  const V = base.shape[1];
  const logSoftmaxRow = (x: Float32Array, b: number) => {
    const row = x.subarray(b * V, (b + 1) * V);
    const m = Math.max(...row);
    const z = Math.log(row.reduce((a, v) => a + Math.exp(v - m), 0)) + m;
    return Array.from(row, (v) => v - z);
  };
  let kl = 0;
  for (let b = 0; b < base.shape[0]; b++) {
    const p = logSoftmaxRow(base.data, b);
    const q = logSoftmaxRow(got.data, b);
    for (let i = 0; i < V; i++) kl += Math.exp(p[i]) * (p[i] - q[i]);
  }
  return kl;
}

t.test('ROME keep prompts: their next-token distribution moves less than without the term (dense fixture model)', async (t) => {
  const { model, tok, stats, read } = denseFixture();
  const fact = checkFact(read('edits.ndjson').find((f) => f.id === 'edit-0024'));
  // other employees sharing a word of the subject (the surname): the early-layer key at it is shared
  const words = new Set(fact.subject.split(' '));
  const keep = read('facts.ndjson')
    .filter((k) => k.relation === fact.relation && k.subject !== fact.subject && k.subject.split(' ').some((w: string) => words.has(w)))
    .slice(0, 6)
    .map((k) => k.prompt.replace('{}', k.subject));
  t.ok(keep.length >= 3, `${keep.length} keep prompts`);
  const keepIds = keep.map((p) => tok.encode(p));
  const base = lastLogits(model, keepIds);
  // KL(base ‖ edited) summed over the keep prompts, in float64
  const drift = (keepWeight: number) => {
    // no early stop: at lr 0.5 the target is reached in a few steps, before the term has acted
    const r = romeEdit(model, tok, fact, stats, { ...ROME_DEFAULTS, layer: 0, prefixes: [], keep, keepWeight, name: fact.id, vSteps: 100, nllStop: 0 });
    model.setAdapters([{ adapter: r.adapter }]);
    const got = lastLogits(model, keepIds);
    model.setAdapters([]);
    return klSum(base, got);
  };
  const free = drift(0);
  const kept = drift(1);
  t.ok(free > 1e-2, `without the term the edit moves them (KL ${free.toExponential(2)})`);
  t.ok(kept < 0.9 * free, `with it they move less (KL ${kept.toExponential(2)} vs ${free.toExponential(2)})`);
});

t.test('ROME key refit: other facts\' held-out prompts move far less than with the closed-form direction; the edit still takes (dense fixture model)', async (t) => {
  const { model, tok, stats, world, read } = denseFixture();
  const fact = checkFact(read('edits.ndjson').find((f) => f.id === 'edit-0001'));
  // held to the base model while A is refitted: training phrasings of other facts only
  const pool = knownFactRetainPrompts(read('facts.ndjson'), loadTemplateBank(path.join(world, 'templates.json')), [fact], 128, 0);
  // read back on phrasings no training draws (the world's held-out file), other subjects only
  const heldOut = read('eval/facts-heldout.ndjson').filter((p) => p.subject !== fact.subject);
  const readPrompts: string[] = new Rng(3).shuffle(heldOut).slice(0, 200).map((p) => p.prompt);
  t.notOk(readPrompts.some((p) => pool.includes(p)), 'no read-back prompt is in the pool');
  const readIds = readPrompts.map((p) => tok.encode(p));
  const base = lastLogits(model, readIds);
  const target = tok.encode(` ${fact.target_new}`)[0];
  const editIds = tok.encode(fact.prompt.replace('{}', fact.subject));
  // mean KL(base ‖ edited) over the read-back prompts, and whether the edit's prompt gives the target
  const edit = (keySteps: number) => {
    const r = romeEdit(model, tok, fact, stats, { ...ROME_DEFAULTS, weightDecay: 0.2, layer: 0, prefixes: [], name: fact.id, keySteps, keyKeep: pool, keyWeight: 5 });
    model.setAdapters([{ adapter: r.adapter }]);
    const got = lastLogits(model, readIds);
    const top = lastLogits(model, [editIds]).data;
    model.setAdapters([]);
    let best = 0;
    for (let i = 1; i < top.length; i++) if (top[i] > top[best]) best = i;
    return { kl: klSum(base, got) / readIds.length, takes: best === target };
  };
  const closed = edit(0);
  const refit = edit(100);
  t.ok(closed.takes && refit.takes, 'the edit states the new answer both ways');
  t.ok(closed.kl > 0.02, `the closed-form direction moves other facts (KL ${closed.kl.toFixed(4)})`);
  t.ok(refit.kl < 0.5 * closed.kl, `the refitted key moves them less than half as much (KL ${refit.kl.toFixed(4)} vs ${closed.kl.toFixed(4)})`);
});
