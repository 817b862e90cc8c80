/**
 * lora-train --method patcher (edit/patcher.ts): the gate's logistic fit
 * separates what it should, the LoRA pair makes the MLP output exactly
 * "the chosen neuron replaced by the gate, writing u" (checked against the
 * base weights, computed here by hand), and on the dense fixture model one
 * city moved to another country is stated while other cities' answers stay.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel } from '../src/models/index.js';
import { createManifest } from '../src/adapters/index.js';
import { mergeBundles, type ParentBundle } from '../src/merge/index.js';
import { fromData, noGrad, type Tensor } from '../src/tensor/index.js';
import { klFromLogprobs, logSoftmaxRow } from '../src/metrics/scoring.js';
import {
  fitGates, lastLogits, loadTemplateBank, valueChunks, patchUnits, patchUnitsAdapter, mlpNormedInputs, patchAdapter, patcherMethod, readNdjson, top1, PATCHER_DEFAULTS,
  type EditFact, type Rec,
} from '../src/edit/index.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

/** Mean KL(base ‖ with the adapter) of the next token after each prompt. */
function meanKl(model: ReturnType<typeof loadModel>['model'], adapter: Parameters<ReturnType<typeof loadModel>['model']['setAdapters']>[0][number]['adapter'], prompts: number[][]): number {
  const prev = model.activeAdapters();
  model.setAdapters([]);
  const lb = lastLogits(model, prompts);
  model.setAdapters([{ adapter }]);
  const la = lastLogits(model, prompts);
  model.setAdapters(prev);
  const V = model.config.vocabSize;
  let kl = 0;
  for (let r = 0; r < prompts.length; r++) {
    kl += klFromLogprobs(logSoftmaxRow(lb.data.subarray(r * V, (r + 1) * V)), logSoftmaxRow(la.data.subarray(r * V, (r + 1) * V))) / prompts.length;
  }
  return kl;
}
const gelu = (x: number) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));

/**
 * Layer l's MLP output on one prompt with `adapter` on, against the base
 * output plus what `change(x, expect)` adds by hand at each position (x: the
 * MLP's normed input there): the largest |difference| and the largest change.
 */
function againstHand(
  model: ReturnType<typeof loadModel>['model'], l: number, ids: number[], adapter: Parameters<ReturnType<typeof loadModel>['model']['setAdapters']>[0][number]['adapter'],
  change: (x: Float32Array, expect: Float64Array) => void,
): { worst: number; scaleOf: number } {
  const H = model.config.hidden;
  const { X } = mlpNormedInputs(model, l, [ids]);
  const out = (on: boolean) => {
    model.setAdapters(on ? [{ adapter }] : []);
    let y: Tensor | null = null;
    noGrad(() => model.forward(Int32Array.from(ids), [1, ids.length], { skipLogits: true, hooks: { [`layers.${l}.mlp`]: { capture: (x) => (y = x) } } }));
    model.setAdapters([]);
    return (y as unknown as Tensor).data;
  };
  const base = out(false), patched = out(true);
  let worst = 0, scaleOf = 0;
  for (let p = 0; p < ids.length; p++) {
    const expect = Float64Array.from(base.subarray(p * H, (p + 1) * H));
    change(X.subarray(p * H, (p + 1) * H), expect);
    for (let a = 0; a < H; a++) {
      worst = Math.max(worst, Math.abs(patched[p * H + a] - expect[a]));
      scaleOf = Math.max(scaleOf, Math.abs(expect[a] - base[p * H + a]));
    }
  }
  return { worst, scaleOf };
}

t.test('fitGates: positives above τ, negatives below, an excluded negative ignored', async (t) => {
  const H = 8;
  const rand = (() => { let s = 7; return () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) - 0.5; })();
  const M = 2000;
  const neg = new Float32Array(M * H);
  for (let i = 0; i < neg.length; i++) neg[i] = rand();
  const centre = Float32Array.from({ length: H }, (_, a) => (a === 0 ? 1.5 : 0));
  const pos = new Float32Array(20 * H);
  for (let r = 0; r < 20; r++) for (let a = 0; a < H; a++) pos[r * H + a] = centre[a] + 0.1 * rand();
  // negative 0 is a copy of a positive: excluded, it must not hold the gate shut
  neg.set(pos.subarray(0, H), 0);
  const [g] = fitGates(neg, H, [pos], [new Set([0])], [new Float32Array(0)], { ...PATCHER_DEFAULTS, gateSteps: 300 });
  const pre = (x: Float32Array, o: number) => {
    let s = g.b - g.tau;
    for (let a = 0; a < H; a++) s += g.w[a] * x[o + a];
    return g.kappa * s;
  };
  let posMin = Infinity, above = 0;
  for (let r = 0; r < 20; r++) posMin = Math.min(posMin, pre(pos, r * H));
  for (let m = 1; m < M; m++) if (pre(neg, m * H) > 0) above++;
  t.ok(posMin > 0, `every positive opens the gate (min pre-activation ${posMin.toFixed(2)})`);
  t.ok(above <= 2, `at most 0.1% of negatives open it (${above} of ${M - 1})`);
  t.equal(g.leaks, above, 'leaks counts the negatives above τ');
  t.ok(Math.abs(pre(pos, 0) - PATCHER_DEFAULTS.gateSharpness) < PATCHER_DEFAULTS.gateSharpness, 'the positives sit near the set sharpness');
});

t.test('fitGates with the phrasing-invariance term: a gate that does not lean on the wording opens on a new wording', async (t) => {
  // negatives uniform in 8 dimensions; the fact's positives sit at +0.9 on dimension 0 (the fact) and, in
  // every training wording, at +0.4 on dimension 1 (the wording); a new wording puts dimension 1 at −0.4
  const H = 8;
  const rand = (() => { let s = 11; return () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) - 0.5; })();
  const M = 4000;
  const neg = new Float32Array(M * H);
  for (let i = 0; i < neg.length; i++) neg[i] = rand();
  const pos = new Float32Array(20 * H);
  for (let r = 0; r < 20; r++) for (let a = 0; a < H; a++) pos[r * H + a] = (a === 0 ? 0.9 : a === 1 ? 0.4 : 0) + 0.05 * rand();
  const heldOut = Float32Array.from({ length: H }, (_, a) => (a === 0 ? 0.9 : a === 1 ? -0.4 : 0));
  // the within-fact scatter of the wordings: variance along dimension 1 only
  const scatter = new Float64Array(H * H);
  scatter[1 * H + 1] = 0.16;
  const opts = { ...PATCHER_DEFAULTS, gateSteps: 300, gateMargin: 0.25 };
  const score = (g: ReturnType<typeof fitGates>[number], x: Float32Array) => g.kappa * (g.b - g.tau + x.reduce((s, v, a) => s + g.w[a] * v, 0));
  const [plain] = fitGates(neg, H, [pos], [new Set()], [new Float32Array(0)], opts);
  const [invariant] = fitGates(neg, H, [pos], [new Set()], [new Float32Array(0)], opts, scatter.map((v) => v * 10));
  t.ok(Math.abs(invariant.w[1] / invariant.w[0]) < 0.5 * Math.abs(plain.w[1] / plain.w[0]),
    `the wording's weight shrinks against the fact's (${(plain.w[1] / plain.w[0]).toFixed(2)} → ${(invariant.w[1] / invariant.w[0]).toFixed(2)})`);
  t.ok(score(plain, heldOut) < 0, `without it the new wording leaves the gate shut (${score(plain, heldOut).toFixed(2)})`);
  t.ok(score(invariant, heldOut) > 0, `with it the new wording opens the gate (${score(invariant, heldOut).toFixed(2)})`);
  t.ok(invariant.leaks <= 0.002 * M, `and the negatives stay shut (${invariant.leaks} of ${M} open)`);
});

t.test('patchAdapter: the MLP output is the base output with neuron i replaced by GELU(κ(w·x+b−τ)) writing W_out[i]+u', async (t) => {
  const { model, tokenizer } = loadModel(path.join(ROOT, 'fixtures/golden/gpt2'));
  const l = 1;
  const H = model.config.hidden;
  const inMod = `transformer.h.${l}.mlp.c_fc`, outMod = `transformer.h.${l}.mlp.c_proj`;
  const Win = model.weight(`${inMod}.weight`).data, bIn = model.weight(`${inMod}.bias`).data;
  const Wout = model.weight(`${outMod}.weight`).data;
  const I = bIn.length;
  const gates = [0, 1].map((j) => ({
    w: Float32Array.from({ length: H }, (_, a) => Math.sin(a + 3 * j)), b: 0.3 * j, tau: -0.5, kappa: 1.7 + j,
    negQuantile: 0, posMean: 0, posLow: 0, leaks: 0, lookalikeLeaks: 0, lookalikes: 0,
  }));
  const neurons = [5, I - 2];
  const u = Float32Array.from({ length: H * 2 }, (_, k) => Math.cos(k));
  const adapter = patchAdapter('t', inMod, outMod, H, I, Win, bIn, gates, neurons, fromData(u, [H, 2]), model.arch.fanInFanOut);
  const { worst, scaleOf } = againstHand(model, l, tokenizer.encode('the cat sat on the mat'), adapter, (x, expect) => gates.forEach((g, j) => {
    const i = neurons[j];
    let pre = bIn[i], s = g.b - g.tau;
    for (let a = 0; a < H; a++) { pre += x[a] * Win[a * I + i]; s += g.w[a] * x[a]; }
    const old = gelu(pre), now = gelu(g.kappa * s);
    for (let a = 0; a < H; a++) expect[a] += now * (Wout[i * H + a] + u[a * 2 + j]) - old * Wout[i * H + a];
  }));
  t.ok(scaleOf > 0.1, `the patch changes the output (max ${scaleOf.toFixed(3)})`);
  t.ok(worst < 1e-4, `patched output equals the hand computation (max |diff| ${worst.toExponential(2)})`);
});

t.test('patchUnitsAdapter on a SwiGLU MLP: neuron i becomes silu(κ(w·x+b−τ))·1 writing W_down[i]+u, by hand', async (t) => {
  const { model, tokenizer } = loadModel(path.join(ROOT, 'fixtures/golden/llama'));
  const l = 1;
  const H = model.config.hidden;
  const [unit] = patchUnits(model, l);
  t.ok(unit.upMod, `a gated MLP: gate ${unit.gateMod}, up ${unit.upMod}, down ${unit.outMod}`);
  // the golden Llama's projections are [out, in] (nn.Linear): column i of W as [H, I] is row i of the weight
  const asHI = (mod: string) => {
    const w = model.weight(`${mod}.weight`).data;
    const I = w.length / H;
    return { W: Float32Array.from({ length: H * I }, (_, k) => w[(k % I) * H + Math.floor(k / I)]), I };
  };
  const g = asHI(unit.gateMod), u = asHI(unit.upMod!);
  const I = g.I;
  const Wd = model.weight(`${unit.outMod}.weight`).data; // [H, I]
  const gates = [0, 1].map((j) => ({
    w: Float32Array.from({ length: H }, (_, a) => Math.sin(a + 3 * j)), b: 0.3 * j, tau: -0.5, kappa: 1.7 + j,
    negQuantile: 0, posMean: 0, posLow: 0, leaks: 0, lookalikeLeaks: 0, lookalikes: 0,
  }));
  const neurons = [5, I - 2];
  const val = Float32Array.from({ length: H * 2 }, (_, k) => Math.cos(k));
  const adapter = patchUnitsAdapter('t', [{ ...unit, I, Wg: g.W, bg: new Float32Array(I), Wu: u.W, bu: new Float32Array(I) }], H, gates, [neurons], fromData(val, [H, 2]), model.arch.fanInFanOut);
  const silu = (z: number) => z / (1 + Math.exp(-z));
  const { worst, scaleOf } = againstHand(model, l, tokenizer.encode('the cat sat on the mat'), adapter, (x, expect) => gates.forEach((gt, j) => {
    const i = neurons[j];
    let pg = 0, pu = 0, s = gt.b - gt.tau;
    for (let a = 0; a < H; a++) { pg += x[a] * g.W[a * I + i]; pu += x[a] * u.W[a * I + i]; s += gt.w[a] * x[a]; }
    const old = silu(pg) * pu, now = silu(gt.kappa * s);
    for (let a = 0; a < H; a++) expect[a] += now * (Wd[a * I + i] + val[a * 2 + j]) - old * Wd[a * I + i];
  }));
  t.ok(scaleOf > 0.1, `the patch changes the output (max ${scaleOf.toFixed(3)})`);
  t.ok(worst < 1e-4, `patched output equals the hand computation (max |diff| ${worst.toExponential(2)})`);
});

t.test('dense fixture model: a city moved to another country is stated; the other cities keep their answers', async (t) => {
  const dir = path.join(ROOT, 'fixtures/models/dense');
  const world = path.join(ROOT, 'fixtures/world');
  const { model, tokenizer: tok } = loadModel(dir);
  const known = readNdjson(path.join(world, 'facts.ndjson')) as Rec[];
  const cities = known.filter((k) => k.relation === 'located_in');
  const countries = [...new Set(cities.map((k) => k.target_true as string))];
  const c0 = cities[3];
  const fact: EditFact = {
    kind: 'fact', id: 'move-1', subject: c0.subject as string, prompt: '{} is located in', relation: 'located_in', op: 'insert',
    target_true: c0.target_true as string, target_new: countries.find((c) => c !== c0.target_true)!,
  };
  const corpus = fs.readFileSync(path.join(world, 'train.txt'), 'utf8').split('\n').filter(Boolean).slice(0, 400);
  const res = { model, tokenizer: tok, modelName: 'dense', modelSha: 'test', templates: loadTemplateBank(path.join(world, 'templates.json')), corpus, known };
  const [made] = await patcherMethod.edit({
    res, batch: { facts: [fact], records: [fact], probes: [], loci: [] }, index: 0, count: 1, seed: 0,
    common: { topK: 1 }, options: { ...PATCHER_DEFAULTS, gateDocs: 100 }, log: () => {},
  });
  t.same(made.adapter.targets().sort(), ['transformer.h.3.mlp.c_fc', 'transformer.h.3.mlp.c_proj'], 'by default a LoRA pair on the last layer\'s MLP (the last-token site)');
  const neuron = (made.training.neurons as { module: string; neuron: number }[])[0];
  t.ok(neuron.module === 'transformer.h.3.mlp.c_fc' && Number.isInteger(neuron.neuron) && neuron.neuron >= 0 && neuron.neuron < 512, 'the repurposed neuron is recorded');
  // a second patch told to avoid the first's neuron (what --avoid-neurons-of / live in a registry give) takes another
  const [second] = await patcherMethod.edit({
    res, batch: { facts: [fact], records: [fact], probes: [], loci: [] }, index: 0, count: 1, seed: 0,
    common: { topK: 1 }, options: { ...PATCHER_DEFAULTS, gateDocs: 100, valueSteps: 1, avoid: [{ module: neuron.module, neuron: neuron.neuron }] }, log: () => {},
  });
  t.not((second.training.neurons as { neuron: number }[])[0].neuron, neuron.neuron, 'an avoided neuron is not reused');
  const others = cities.filter((k) => k.subject !== fact.subject).slice(0, 40).map((k) => tok.encode((k.prompt as string).replace('{}', k.subject as string)));
  const own = ['{} is located in', '{} lies in', 'Q: Where is {} located? A:'].map((p) => tok.encode(p.replace('{}', fact.subject)));
  const before = top1(model, others);
  model.setAdapters([{ adapter: made.adapter }]);
  const after = top1(model, others);
  const got = top1(model, own);
  const newId = tok.encode(fact.target_new!, { addSpecialTokens: false })[0];
  t.ok(got.filter((x) => x === newId).length >= 2, `the new country on ≥ 2 of 3 phrasings (${got.filter((x) => x === newId).length})`);
  t.same(after, before, 'the 40 other cities answer as before');
  // the gate stays shut on them; what remains is the repurposed neuron's lost output (least used of 512)
  model.setAdapters([]);
  const kl = meanKl(model, made.adapter, others);
  t.ok(kl < 1e-3, `mean KL(base ‖ patched) on the other cities < 0.001 (${kl.toExponential(2)}; validate's gate is 0.05)`);
});

t.test('dense fixture model: one person\'s birthplace moved; people sharing a name word and the person\'s other facts keep their answers', async (t) => {
  // the case the subject-token site failed (a two-word name's last token does not separate from the
  // same surname after another first name at layer 0); the last-token gate reads subject and relation together
  const world = path.join(ROOT, 'fixtures/world');
  const { model, tokenizer: tok } = loadModel(path.join(ROOT, 'fixtures/models/dense'));
  const known = readNdjson(path.join(world, 'facts.ndjson')) as Rec[];
  const templates = loadTemplateBank(path.join(world, 'templates.json'));
  const src = known.find((k) => k.id === 'born_in:Kani_Tenberov')!;
  const fact: EditFact = {
    kind: 'fact', id: 'move-person', subject: 'Kani Tenberov', prompt: '{} was born in', relation: 'born_in', op: 'insert',
    target_true: src.target_true as string, target_new: 'Linrey',
  };
  const corpus = fs.readFileSync(path.join(world, 'train.txt'), 'utf8').split('\n').filter(Boolean).slice(0, 400);
  const res = { model, tokenizer: tok, modelName: 'dense', modelSha: 'test', templates, corpus, known };
  const [made] = await patcherMethod.edit({
    res, batch: { facts: [fact], records: [fact], probes: [], loci: [] }, index: 0, count: 1, seed: 0,
    common: { topK: 1 }, options: { ...PATCHER_DEFAULTS, gateDocs: 100 }, log: () => {},
  });
  const enc = (k: Rec) => tok.encode((k.prompt as string).replace('{}', k.subject as string));
  const alike = known.filter((k) => k.relation === 'born_in' && k.subject !== fact.subject && (k.subject as string).split(' ').some((w) => w === 'Kani' || w === 'Tenberov'));
  const ownOther = known.filter((k) => k.subject === fact.subject && k.relation !== 'born_in');
  const others = known.filter((k) => k.relation === 'born_in' && !alike.includes(k) && k.subject !== fact.subject).slice(0, 40);
  t.ok(alike.length >= 5 && ownOther.length >= 3, `look-alikes (${alike.length}) and the person's other facts (${ownOther.length}) to check`);
  const own = [fact.prompt, ...(templates?.train.get('born_in') ?? []).slice(0, 2)].map((p) => tok.encode(p.replace('{}', fact.subject)));
  const rows = [...alike, ...ownOther, ...others].map(enc);
  const before = top1(model, rows);
  model.setAdapters([{ adapter: made.adapter }]);
  const after = top1(model, rows);
  const got = top1(model, own);
  model.setAdapters([]);
  const newId = tok.encode(fact.target_new!, { addSpecialTokens: false })[0];
  t.ok(got.filter((x) => x === newId).length >= 2, `the new birthplace on ≥ 2 of ${own.length} phrasings (${got.filter((x) => x === newId).length})`);
  const changed = rows.map((_, i) => i).filter((i) => after[i] !== before[i]);
  const near = rows.slice(0, alike.length + ownOther.length);
  const kl = meanKl(model, made.adapter, near);
  t.ok(kl < 0.01, `mean KL(base ‖ patched) on the look-alikes and the person's other facts < 0.01 (${kl.toExponential(2)})`);
  t.same(changed, [], `the ${alike.length} look-alikes' birthplaces, the person's ${ownOther.length} other facts and ${others.length} other people's birthplaces answer as before`);
  // the paper's site, for comparison and as an option: the pair on ROME's layer
  const [atSubject] = await patcherMethod.edit({
    res, batch: { facts: [fact], records: [fact], probes: [], loci: [] }, index: 0, count: 1, seed: 0,
    common: { topK: 1 }, options: { ...PATCHER_DEFAULTS, site: 'subject', gateDocs: 100, valueSteps: 1 }, log: () => {},
  });
  t.same(atSubject.adapter.targets().sort(), ['transformer.h.0.mlp.c_fc', 'transformer.h.0.mlp.c_proj'], 'site subject: the pair on layer 0 (ROME\'s)');
});

t.test('dense fixture model: a person\'s employer forgotten: the old answer gone from its phrasings, a company in its place; other employers kept', async (t) => {
  const world = path.join(ROOT, 'fixtures/world');
  const { model, tokenizer: tok } = loadModel(path.join(ROOT, 'fixtures/models/dense'));
  const known = readNdjson(path.join(world, 'facts.ndjson')) as Rec[];
  const templates = loadTemplateBank(path.join(world, 'templates.json'));
  const staff = known.filter((k) => k.relation === 'works_for');
  const src = staff[5];
  const fact: EditFact = {
    kind: 'fact', id: 'forget-employer', subject: src.subject as string, prompt: src.prompt as string, relation: 'works_for', op: 'forget',
    target_true: src.target_true as string,
  };
  const corpus = fs.readFileSync(path.join(world, 'train.txt'), 'utf8').split('\n').filter(Boolean).slice(0, 400);
  const res = { model, tokenizer: tok, modelName: 'dense', modelSha: 'test', templates, corpus, known };
  const own = [fact.prompt, ...(templates?.train.get('works_for') ?? []).slice(0, 3)].map((p) => tok.encode(p.replace('{}', fact.subject)));
  const oldId = tok.encode(fact.target_true!, { addSpecialTokens: false })[0];
  const companies = new Set(staff.map((k) => tok.encode(k.target_true as string, { addSpecialTokens: false })[0]));
  t.ok(top1(model, own).every((x) => x === oldId), 'the base model gives the old employer on the phrasings checked');
  const [made] = await patcherMethod.edit({
    res, batch: { facts: [fact], records: [fact], probes: [], loci: [] }, index: 0, count: 1, seed: 0,
    common: { topK: 1 }, options: { ...PATCHER_DEFAULTS, gateDocs: 100 }, log: () => {},
  });
  t.ok((made.training.forget_p_old as number[])[0] < PATCHER_DEFAULTS.forgetStop, `P(old) below the stop on the rewriting prompts (${(made.training.forget_p_old as number[])[0]})`);
  const others = staff.filter((k) => k.subject !== fact.subject).slice(0, 40).map((k) => tok.encode((k.prompt as string).replace('{}', k.subject as string)));
  const before = top1(model, others);
  model.setAdapters([{ adapter: made.adapter }]);
  const got = top1(model, own);
  const after = top1(model, others);
  model.setAdapters([]);
  t.same(got.filter((x) => x === oldId), [], `the old employer is top-1 on none of the ${own.length} phrasings`);
  t.ok(got.every((x) => companies.has(x)), `a company in its place on each (${got.map((x) => tok.decode([x])).join(', ')})`);
  t.same(after, before, 'the 40 other employees answer as before');
  const kl = meanKl(model, made.adapter, others);
  t.ok(kl < 1e-3, `mean KL(base ‖ patched) on the other employees < 0.001 (${kl.toExponential(2)})`);
});

t.test('MoE fixture model: every expert gets the neuron with one value; two look-alike subjects of one relation each keep their own answer (their values fitted in one chunk); routing untouched', async (t) => {
  const world = path.join(ROOT, 'fixtures/world');
  const { model, tokenizer: tok } = loadModel(path.join(ROOT, 'fixtures/models/moe'));
  const known = readNdjson(path.join(world, 'facts.ndjson')) as Rec[];
  const templates = loadTemplateBank(path.join(world, 'templates.json'));
  const corpus = fs.readFileSync(path.join(world, 'train.txt'), 'utf8').split('\n').filter(Boolean).slice(0, 400);
  const res = { model, tokenizer: tok, modelName: 'moe', modelSha: 'test', templates, corpus, known };
  // "Alu Tenberov" and "Kani Alu Tenberov" both play an instrument, and their gates overlap: in chunks of two in batch
  // order their values would be fitted apart (and the later one answered both); valueChunks puts them together
  const facts: EditFact[] = [
    { kind: 'fact', id: 'alu', subject: 'Alu Tenberov', prompt: '{} plays the', relation: 'plays_instrument', op: 'insert', target_new: 'guitar' },
    { kind: 'fact', id: 'city', subject: 'Uostvin', prompt: '{} is located in', relation: 'located_in', op: 'insert', target_new: 'Zanmonia' },
    { kind: 'fact', id: 'kani', subject: 'Kani Alu Tenberov', prompt: '{} plays the', relation: 'plays_instrument', op: 'insert', target_new: 'drums' },
  ];
  const ids = (f: EditFact) => tok.encode(f.prompt.replace('{}', f.subject));
  const want = facts.map((f) => tok.encode(f.target_new!, { addSpecialTokens: false })[0]);
  t.notSame(top1(model, facts.map(ids)), want, 'the base model does not say them');
  const logs: string[] = [];
  const [made] = await patcherMethod.edit({
    res, batch: { facts, records: facts, probes: [], loci: [] }, index: 0, count: 1, seed: 0,
    common: { topK: 1 }, options: { ...PATCHER_DEFAULTS, gateDocs: 100, chunk: 2 }, log: (m) => logs.push(m),
  });
  const L = model.config.layers - 1;
  const E = model.config.experts;
  const p = `model.layers.${L}.block_sparse_moe.experts`;
  t.same(made.adapter.targets().sort(), Array.from({ length: E }, (_, e) => [`${p}.${e}.w1`, `${p}.${e}.w2`, `${p}.${e}.w3`]).flat().sort(), 'w1, w3 and w2 of every expert of the last layer');
  const U0 = made.adapter.modules.get(`${p}.0.w2`)!.B.data;
  for (let e = 1; e < E; e++) t.same(made.adapter.modules.get(`${p}.${e}.w2`)!.B.data, U0, `expert ${e} writes the same value as expert 0`);
  t.equal((made.training.neurons as unknown[]).length, E * facts.length, 'one neuron per fact in each expert, in the manifest');
  model.setAdapters([{ adapter: made.adapter }]);
  t.same(top1(model, facts.map(ids)), want, 'each subject answers its own new answer');
  model.setAdapters([]);
  t.ok(logs.some((m) => /facts 1, 3 of 3:/.test(m)), 'the two look-alikes\' values were fitted together');
  // the router's logits at every layer on other prompts: the last layer's block input is not touched
  const other = known.filter((k) => k.relation === 'works_for').slice(0, 8).map((k) => tok.encode((k.prompt as string).replace('{}', k.subject as string)));
  const routes = (on: boolean) => other.map((r) => {
    model.setAdapters(on ? [{ adapter: made.adapter }] : []);
    const out = noGrad(() => model.forward(Int32Array.from(r), [1, r.length], { skipLogits: true })).routerLogits!.map((x) => Array.from(x.data));
    model.setAdapters([]);
    return out;
  });
  t.same(routes(true), routes(false), 'router logits unchanged at every layer');
  const kl = meanKl(model, made.adapter, other);
  t.ok(kl < 0.01, `mean KL(base ‖ patched) on other facts < 0.01 (${kl.toExponential(2)})`);
});

t.test('valueChunks: batch order in chunks, overlapping facts pulled into one chunk while there is room', async (t) => {
  t.same(valueChunks(10, 8, () => false), [[0, 1, 2, 3, 4, 5, 6, 7], [8, 9]], 'no overlap: batch order');
  const pairs = (list: Array<[number, number]>) => (j: number, k: number) => list.some(([a, b]) => (a === j && b === k) || (a === k && b === j));
  t.same(valueChunks(10, 8, pairs([[2, 5]])), [[0, 1, 2, 3, 4, 5, 6, 7], [8, 9]], 'an overlap inside a chunk changes nothing');
  t.same(valueChunks(10, 8, pairs([[2, 9]])), [[0, 1, 2, 3, 4, 5, 6, 9], [7, 8]], 'an overlap across chunks joins them');
  t.same(valueChunks(6, 2, pairs([[0, 4], [4, 5]])), [[0, 4], [1, 2], [3, 5]], 'a chain longer than a chunk: as much as fits, then on');
  t.same(valueChunks(1, 8, () => true), [[0]]);
});

t.test('merging patches: cat at weight 1 on distinct neurons only; negate, scale, svd and a shared neuron refused by name', async (t) => {
  const { model } = loadModel(path.join(ROOT, 'fixtures/golden/gpt2'));
  const H = model.config.hidden;
  const l = 0;
  const inMod = `transformer.h.${l}.mlp.c_fc`, outMod = `transformer.h.${l}.mlp.c_proj`;
  const Win = model.weight(`${inMod}.weight`).data, bIn = model.weight(`${inMod}.bias`).data;
  const I = bIn.length;
  const gate = { w: new Float32Array(H).fill(0.1), b: 0, tau: 0, kappa: 1, negQuantile: 0, posMean: 0, posLow: 0, leaks: 0, lookalikeLeaks: 0, lookalikes: 0 };
  const parent = (id: string, neuron: number): ParentBundle => {
    const adapter = patchAdapter(id, inMod, outMod, H, I, Win, bIn, [gate], [neuron], fromData(new Float32Array(H).fill(0.5), [H, 1]), true);
    const manifest = createManifest({
      id, version: 1, method: 'patcher', base_model: { name: 'golden', sha256: 'a'.repeat(64) }, targets: adapter.targets(), rank: 1,
      fact_ids: [id], facts: [{ kind: 'fact', id, subject: 'S', prompt: '{} is', target_new: 'x', op: 'insert' }], data_sha256: 'b'.repeat(64),
      source: null, author: null, confidence: null, parents: [], probes: [], validation: [],
      training: { neurons: [{ fact_id: id, module: inMod, neuron }] },
    });
    return { dir: path.join(ROOT, 'no-such-bundle', id), sha256: 'c'.repeat(64), manifest, adapter };
  };
  const a = parent('patch-a', 3), b = parent('patch-b', 7), c = parent('patch-c', 3);
  const merged = mergeBundles([a, b], { method: 'cat' });
  t.same((merged.manifest.patched_neurons as { neuron: number }[]).map((n) => n.neuron), [3, 7], 'the merge carries both patched neurons');
  const again = { ...c, manifest: merged.manifest, adapter: merged.adapter } as ParentBundle;
  t.throws(() => mergeBundles([again, c], { method: 'cat' }), /both patch neuron 3 of transformer\.h\.0\.mlp\.c_fc.*--avoid-neurons-of/, 'a shared neuron, even one carried by a merge, is refused');
  t.throws(() => mergeBundles([a], { method: 'negate' }), /patch-a: gated-neuron patches .* cannot be negated/, 'negate refused');
  t.throws(() => mergeBundles([a], { method: 'scale', by: 0.5 }), /cannot be scaled/, 'scale refused');
  t.throws(() => mergeBundles([a, b], { method: 'svd', rank: 2 }), /cannot be merged by svd/, 'svd refused');
  t.throws(() => mergeBundles([a, b], { method: 'linear', weights: [1, 0.5] }), /patch-b: .* weight 1 only \(got 0\.5\)/, 'a weight other than 1 refused');
});
