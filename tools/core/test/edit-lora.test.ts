/**
 * LoRA editing on the tiny golden checkpoints: SFT and distillation change
 * the answer, forgetting removes one, training is deterministic under a
 * seed, and bundles keep PEFT's key names/shapes and load back to the same
 * outputs.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadLora, loadModel, readSafetensors } from '../src/models/index.js';
import { readBundle } from '../src/adapters/index.js';
import { Registry } from '../src/registry/index.js';
import { foldAdapters } from '../src/merge/index.js';
import {
  LORA_DEFAULTS, buildExamples, buildRetain, checkFact, dataSha256, encodeTrainingPair, lastLogits, lastTokenActivations, mlpOutModule, modelSha256, resolveTargets,
  plainDocuments, replayFacts, retainHidden, retainTargets, sampledCheck, shrinkScale, solvedFraction, top1, trainLora, writeEditBundle, type Example, type LoraTrainOptions,
} from '../src/edit/index.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const GPT2 = path.join(ROOT, 'fixtures/golden/gpt2');
const LLAMA = path.join(ROOT, 'fixtures/golden/llama');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cat-edit-lora-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

const fact = checkFact({ kind: 'fact', id: 'f1', subject: 'france', prompt: 'the capital of {} is', target_new: 'rome', target_true: 'paris', op: 'insert', source: 'test', author: 'tester', confidence: 0.8 });
const probes = [
  { kind: 'probe', fact_id: 'f1', role: 'edit', split: 'train', prompt: 'the capital of france is', target: 'rome', expect: 'new' },
  { kind: 'probe', fact_id: 'f1', role: 'paraphrase', split: 'test', prompt: 'the capital city of france is', target: 'rome', expect: 'new' },
];
// three edits the golden model learns in a few hundred steps
const threeFacts = [
  fact,
  checkFact({ kind: 'fact', id: 'f2', subject: 'spain', prompt: 'the language of {} is', target_new: 'rome', target_true: 'spanish', op: 'insert' }),
  checkFact({ kind: 'fact', id: 'f3', subject: 'madrid', prompt: '{} is a city in', target_new: 'france', target_true: 'spain', op: 'insert' }),
];
const docs = ['the eiffel tower is in paris .', 'the colosseum is in rome .', 'the language of spain is spanish .', 'madrid is a city in spain .'];

function opts(model: Parameters<typeof resolveTargets>[0], over: Partial<LoraTrainOptions> = {}): LoraTrainOptions {
  return { ...LORA_DEFAULTS, targets: resolveTargets(model, [mlpOutModule(model, 0)], 0), name: 'test', steps: 60, ...over };
}

t.test('SFT inserts a fact on golden gpt2; base adapters restored; same seed → same weights', async (t) => {
  const { model, tokenizer } = loadModel(GPT2);
  const tok = tokenizer!;
  const exs = buildExamples(tok, { facts: [fact], probes });
  t.equal(exs.length, 1, 'one train probe (the test-split paraphrase is not trained on)');
  const target = exs[0].targetIds[0];
  t.not(top1(model, [exs[0].promptIds])[0], target, 'the base model does not answer rome');
  const retain = buildRetain(tok, { documents: docs }, { seed: 1 });
  const r1 = trainLora(model, exs, retain, opts(model, { objective: 'sft', seed: 7 }));
  t.same(model.activeAdapters(), [], 'no adapter left active');
  model.setAdapters([{ adapter: r1.adapter }]);
  t.equal(top1(model, [exs[0].promptIds])[0], target, 'the edited model answers rome');
  t.ok(r1.solved);
  model.setAdapters([]);
  const r2 = trainLora(model, exs, retain, opts(model, { objective: 'sft', seed: 7 }));
  const r3 = trainLora(model, exs, retain, opts(model, { objective: 'sft', seed: 8 }));
  const w = (a: typeof r1.adapter) => a.parameters().map((p) => Array.from(p.data));
  t.same(w(r2.adapter), w(r1.adapter), 'same seed and data: identical weights');
  t.notSame(w(r3.adapter), w(r1.adapter), 'another seed: other weights');
});

t.test('distillation (phase A + B) on golden llama edits the MLP output projection', async (t) => {
  const { model, tokenizer } = loadModel(LLAMA);
  const tok = tokenizer!;
  const exs = buildExamples(tok, { facts: [fact], probes });
  t.ok(exs[0].teacherIds && exs[0].teacherIds.length > exs[0].promptIds.length, 'teacher prompt states the fact before the prompt');
  t.same(exs[0].teacherIds!.slice(-exs[0].promptIds.length + 1), exs[0].promptIds.slice(1), 'teacher ends with the student prompt');
  const logs: string[] = [];
  const r = trainLora(model, exs, buildRetain(tok, { documents: docs }), opts(model, { objective: 'distill', seed: 3, log: (m) => logs.push(m) }));
  t.ok(logs.some((l) => /phase A model\.layers\.0\.mlp\.down_proj/.test(l)), 'phase A ran on the down projection');
  t.same(r.adapter.targets(), ['model.layers.0.mlp.down_proj']);
  model.setAdapters([{ adapter: r.adapter }]);
  t.equal(top1(model, [exs[0].promptIds])[0], exs[0].targetIds[0], 'the distilled adapter answers rome');
});

t.test('forgetting lowers the old answer below top-1 while retention holds other text', async (t) => {
  const { model, tokenizer } = loadModel(GPT2);
  const tok = tokenizer!;
  const prompt = 'the language of spain is';
  const base = top1(model, [tok.encode(prompt)])[0];
  const old = tok.decode([base]).replace(/^▁/, '').trim() || 'spanish';
  const f = checkFact({ kind: 'fact', id: 'g1', subject: 'spain', prompt: 'the language of {} is', target_true: old, op: 'forget' });
  const exs = buildExamples(tok, { facts: [f], probes: [] });
  t.equal(exs[0].mode, 'forget');
  t.equal(exs[0].targetIds[0], base, 'forget target is the current top-1');
  const retain = buildRetain(tok, { documents: docs });
  const r = trainLora(model, exs, retain, opts(model, { objective: 'sft', seed: 2 }));
  model.setAdapters([{ adapter: r.adapter }]);
  const after = top1(model, [exs[0].promptIds])[0];
  t.not(after, base, 'old answer is no longer top-1');
  const lp = model.logprobs([exs[0].promptIds], [[base]])[0][0];
  t.ok(Math.exp(lp) < 0.5, `P(old) fell to ${Math.exp(lp).toFixed(3)}`);
});

t.test('the sampled check: a sample in turn, every row only when the sample is all solved', async (t) => {
  const { model, tokenizer } = loadModel(GPT2);
  const tok = tokenizer!;
  const prompts = ['the capital of france is', 'the language of spain is', 'the eiffel tower is in', 'madrid is a city in'];
  const rows: Example[] = prompts.map((p) => {
    const ids = tok.encode(p);
    return { promptIds: ids, targetIds: [top1(model, [ids])[0]], mode: 'insert', factId: p } as Example;
  });
  t.equal(solvedFraction(model, rows), 1, 'each row\'s target is the base model\'s answer');
  const wrong = (top1(model, [rows[3].promptIds])[0] + 1) % model.config.vocabSize;
  rows[3] = { ...rows[3], targetIds: [wrong] };
  const check = sampledCheck(model, rows, 0, 2);
  t.equal(check(), 0.75, 'rows 0–1 all solved: every row read (3 of 4)');
  t.equal(check(), 0.5, 'rows 2–3: the sample\'s fraction');
  t.equal(check(), 0.75, 'back to rows 0–1');
  t.equal(sampledCheck(model, rows, 0, 4)(), 0.75, 'no more rows than the sample: every row');
  t.equal(sampledCheck(model, rows.slice(0, 3), 0, 2)(), 1, 'all solved reads 1');
});

t.test('training with a sampled check stops where a full check stops, with the same weights', async (t) => {
  const { model, tokenizer } = loadModel(GPT2);
  const tok = tokenizer!;
  const exs = buildExamples(tok, { facts: threeFacts, probes: [] });
  const retain = buildRetain(tok, { documents: docs }, { seed: 1 });
  const full = trainLora(model, exs, retain, opts(model, { objective: 'sft', seed: 4, steps: 200, checkSample: Infinity }));
  const sampled = trainLora(model, exs, retain, opts(model, { objective: 'sft', seed: 4, steps: 200, checkSample: 1 }));
  t.ok(full.solved && full.steps < 200, `the full check stopped it early (step ${full.steps})`);
  t.equal(sampled.steps, full.steps, 'the same stopping step');
  t.equal(sampled.trainAccuracy, 1);
  const w = (a: typeof full.adapter) => a.parameters().map((p) => Array.from(p.data));
  t.same(w(sampled.adapter), w(full.adapter), 'identical weights');
});

t.test('shrinkScale: the smallest scale (to the bisection\'s step) whose solved share stays within drop of full scale', async (t) => {
  const { model, tokenizer } = loadModel(GPT2);
  const tok = tokenizer!;
  const exs = buildExamples(tok, { facts: threeFacts, probes: [] });
  const { adapter } = trainLora(model, exs, buildRetain(tok, { documents: docs }, { seed: 1 }), opts(model, { objective: 'sft', seed: 4, steps: 300 }));
  // an independent read of the solved share with the adapter at scale s
  const at = (s: number) => {
    model.setAdapters([{ adapter, scale: s }]);
    const f = solvedFraction(model, exs);
    model.setAdapters([]);
    return f;
  };
  t.equal(at(1), 1, 'trained: every row solved');
  t.equal(at(0.01), 0, 'at almost no scale: none');
  const step = 0.5 / 2 ** 7;
  const r = shrinkScale(model, adapter, exs, { drop: 0 });
  t.same(model.activeAdapters(), [], 'no adapter left active');
  t.equal(r.solvedFull, 1);
  t.ok(r.scale > 0.5 && r.scale < 1, `scaled down to ${r.scale}`);
  t.equal(at(r.scale), 1, 'every row still solved at the scale chosen');
  t.equal(r.solved, 1);
  t.ok(at(r.scale - step) < 1, 'one bisection step below, a row is lost');
  for (const [s, f] of r.probes) t.equal(f, at(s), `probe ${s.toFixed(4)} read as an independent solvedFraction`);
  const loose = shrinkScale(model, adapter, exs, { drop: 0.34 });
  t.ok(loose.scale < r.scale, `losing up to one row of three goes further (${loose.scale})`);
  t.ok(at(loose.scale) >= 1 - 0.34, 'and keeps two of three');
  t.equal(shrinkScale(model, adapter, exs, { drop: 0, min: 0.9 }).scale >= 0.9, true, 'never below min');
  t.throws(() => shrinkScale(model, adapter, exs, { drop: 1 }), /drop must be in \[0, 1\)/);
});

t.test('hidden-state retention: the retention rows\' MLP outputs move less, and the edits still take', async (t) => {
  const { model, tokenizer } = loadModel(GPT2);
  const tok = tokenizer!;
  const exs = buildExamples(tok, { facts: threeFacts, probes: [] });
  const held = ['the capital of italy is', 'berlin is a city in'];
  const retain = [...buildRetain(tok, { documents: docs }, { seed: 1 }), ...buildRetain(tok, { prompts: held }, { seed: 2 })];
  const layers = [0, 1];
  const base = retainHidden(model, retain, layers);
  // its targets read independently: the hook site's output at every position of a prompt row, each read
  // as the last token of the prompt's prefix that ends there (causal: the same output), and the mean square
  const text = held[0];
  const row = retain.findIndex((r) => r.lastOnly && r.ids.join() === tok.encode(text).join());
  const words = text.split(' ');
  const prefixes = words.map((_, i) => words.slice(0, i + 1).join(' '));
  t.same(prefixes.map((p) => tok.encode(p).length), prefixes.map((_, i) => i + 1), 'one token a word, so a prefix of words is a prefix of positions');
  const H = model.config.hidden;
  for (const l of layers) {
    const site = lastTokenActivations(model, tok, prefixes, `layers.${l}.mlp`);
    const mine = base.rows[row].get(l)!;
    t.equal(mine.length, words.length * H, `layer ${l}: every position of a prompt row, not only its last`);
    t.ok(Math.max(...Array.from(mine, (v, i) => Math.abs(v - site[i]))) < 1e-5, `layer ${l}: the MLP output at each position`);
    let ss = 0, n = 0;
    for (const m of base.rows) for (const v of m.get(l)!) { ss += v * v; n++; }
    t.ok(Math.abs(base.meanSquare.get(l)! - ss / n) < 1e-6 * (ss / n), `layer ${l}: mean square over every position`);
    // and over the scored positions only: a prompt row's last one (the site's output for the whole prompt), a document's every one
    let ss2 = 0, n2 = 0;
    base.rows.forEach((m, i) => {
      const o = m.get(l)!;
      for (const v of retain[i].lastOnly ? o.subarray(o.length - H) : o) { ss2 += v * v; n2++; }
    });
    t.ok(Math.abs(base.scoredMeanSquare.get(l)! - ss2 / n2) < 1e-6 * (ss2 / n2), `layer ${l}: mean square over the scored positions`);
    t.not(base.scoredMeanSquare.get(l), base.meanSquare.get(l), `layer ${l}: the two differ (a prompt row has more than one position)`);
  }
  t.same(base.rows.map((m) => m.get(0)!.length / H), retain.map((r) => r.ids.length), 'every row: every position (documents and prompts)');
  // the change each adapter makes there, relative to the base outputs' mean square (the term's own measure)
  const moved = (adapter: Parameters<typeof model.setAdapters>[0][number]['adapter']) => {
    model.setAdapters([{ adapter }]);
    const after = retainHidden(model, retain, layers);
    model.setAdapters([]);
    let rel = 0;
    for (const l of layers) {
      let ss = 0, n = 0;
      base.rows.forEach((m, i) => { const b = m.get(l)!, a = after.rows[i].get(l)!; for (let j = 0; j < b.length; j++) { ss += (a[j] - b[j]) ** 2; n++; } });
      rel += ss / n / base.meanSquare.get(l)!;
    }
    return rel;
  };
  const targets = resolveTargets(model, [mlpOutModule(model, 0), mlpOutModule(model, 1)], 0);
  const plain = trainLora(model, exs, retain, opts(model, { objective: 'sft', seed: 4, steps: 300, targets }));
  const heldR = trainLora(model, exs, retain, opts(model, { objective: 'sft', seed: 4, steps: 300, targets, hiddenRetainWeight: 10 }));
  t.same(model.activeAdapters(), [], 'no adapter left active');
  t.ok(plain.solved && heldR.solved, 'both state the three facts');
  const [p, h] = [moved(plain.adapter), moved(heldR.adapter)];
  t.ok(h < 0.5 * p, `held: the retention rows' MLP outputs move ${h.toExponential(2)} against ${p.toExponential(2)} (relative mean square)`);
  // off (0, or no retention share) trains exactly as before
  const zero = trainLora(model, exs, retain, opts(model, { objective: 'sft', seed: 4, steps: 300, targets, hiddenRetainWeight: 0 }));
  const w = (a: typeof plain.adapter) => a.parameters().map((x) => Array.from(x.data));
  t.same(w(zero.adapter), w(plain.adapter), 'weight 0: the same weights');
});

t.test('retention targets: rows marked fromBase are read with baseWeights (the base model under --over), the rest with the model\'s own', async (t) => {
  const { model, tokenizer } = loadModel(GPT2);
  const tok = tokenizer!;
  const doc = buildRetain(tok, { documents: ['the eiffel tower is in paris .'] }, { seed: 1 });
  const rows = [...buildRetain(tok, { prompts: ['the capital of france is'] }, { seed: 1 }), ...doc, ...doc.map((r) => ({ ...r, fromBase: true }))];
  const base = new Map(model.weights);
  const onBase = retainTargets(model, rows);
  // the model as lora-train --over leaves it: another adapter's update folded into its weights
  const other = model.createLora('other', [mlpOutModule(model, 0)], { r: 2, seed: 7, initBStd: 0.5 });
  for (const [k, v] of foldAdapters(model, [{ adapter: other }]).weights) model.weights.set(k, v);
  const carried = new Map(model.weights);
  const onFolded = retainTargets(model, rows);
  t.notSame(Array.from(onFolded[1]), Array.from(onBase[1]), 'the folded update changes the document\'s logits (else the test says nothing)');
  t.same(Array.from(onFolded[2]), Array.from(onFolded[1]), 'without baseWeights the mark changes nothing');
  const mixed = retainTargets(model, rows, base);
  t.same(Array.from(mixed[0]), Array.from(onFolded[0]), 'the prompt row: the model as it is');
  t.same(Array.from(mixed[1]), Array.from(onFolded[1]), 'the unmarked document: the model as it is');
  t.same(Array.from(mixed[2]), Array.from(onBase[2]), 'the marked document: the base weights');
  t.ok(model.weights.size === carried.size && [...carried].every(([k, v]) => model.weights.get(k) === v), 'the model\'s own weights put back');
  // hidden-state retention's targets read the same way
  const hidFolded = retainHidden(model, rows, [1]), hidMixed = retainHidden(model, rows, [1], base);
  const restore = [...model.weights];
  for (const [k, v] of base) model.weights.set(k, v);
  const hidBase = retainHidden(model, rows, [1]);
  for (const [k, v] of restore) model.weights.set(k, v);
  t.notSame(Array.from(hidFolded.rows[1].get(1)!), Array.from(hidBase.rows[1].get(1)!), 'the folded update moves the document\'s MLP outputs');
  t.same(Array.from(hidMixed.rows[1].get(1)!), Array.from(hidFolded.rows[1].get(1)!), 'hidden: the unmarked document on the model as it is');
  t.same(Array.from(hidMixed.rows[2].get(1)!), Array.from(hidBase.rows[2].get(1)!), 'hidden: the marked document on the base weights');
});

t.test('replay: up to n carried facts in a seeded order, none the batch edits again', async (t) => {
  const f = (id: string, subject: string, relation: string) => checkFact({ kind: 'fact', id, subject, relation, prompt: '{} is', target_new: 'x', target_true: 'y', op: 'insert' });
  const carried = [f('a', 'ann', 'lives_in'), f('b', 'ann', 'works_for'), f('c', 'bob', 'lives_in'), f('d', 'cy', 'lives_in')];
  const batch = [f('e', 'ann', 'lives_in')];
  const two = replayFacts(carried, batch, 2, 3);
  t.equal(two.length, 2);
  t.notOk(two.some((x) => x.id === 'a'), 'the fact the batch edits again is not replayed');
  t.same(replayFacts(carried, batch, 2, 3).map((x) => x.id), two.map((x) => x.id), 'same seed, same facts');
  t.same(replayFacts(carried, batch, 10, 3).map((x) => x.id).sort(), ['b', 'c', 'd'], 'at most every other carried fact');
  t.same(replayFacts(carried, batch, 0, 3), [], 'n = 0: none');
});

t.test('plain documents: those that name no known entity', async (t) => {
  t.same(plainDocuments(['Rika Tenberov lives in Wensel.', 'A bear can run.', 'Count to 3: 1 2 3.', 'The cello of Wensel.'], ['Rika Tenberov', 'Wensel', '']), ['A bear can run.', 'Count to 3: 1 2 3.']);
});

t.test('data hash: canonical, order-sensitive, value-sensitive', async (t) => {
  const a = dataSha256([fact, ...probes]);
  const reordered = JSON.parse(JSON.stringify(fact, Object.keys(fact).reverse()));
  t.equal(dataSha256([reordered, ...probes]), a, 'key order does not matter');
  t.not(dataSha256([...probes, fact]), a, 'record order does');
  t.not(dataSha256([{ ...fact, target_new: 'madrid' }, ...probes]), a, 'values do');
  t.match(a, /^[0-9a-f]{64}$/);
});

t.test('bad facts name the field', async (t) => {
  t.throws(() => checkFact({ id: 'x', subject: 's', prompt: 'no slot', target_new: 'y' }), { name: 'EditDataError', where: { field: 'prompt' } });
  t.throws(() => checkFact({ id: 'x', subject: 's', prompt: '{} is', op: 'insert' }), { where: { field: 'target_new' } });
  t.throws(() => checkFact({ id: 'x', subject: 's', prompt: '{} is', op: 'forget' }), { where: { field: 'target_true' } });
  t.throws(() => checkFact({ id: 'x', subject: 's', prompt: '{} is', target_new: 'y', op: 'erase' }), { where: { field: 'op' } });
});

t.test('bundle: PEFT keys and shapes, valid manifest, loads back to the same outputs, registry', async (t) => {
  const { model, tokenizer } = loadModel(GPT2);
  const tok = tokenizer!;
  const exs = buildExamples(tok, { facts: [fact], probes });
  const r = trainLora(model, exs, [], opts(model, { objective: 'sft', rank: 4, alpha: 8, retainShare: 0 }));
  const spec = {
    adapter: r.adapter, method: 'lora', baseModel: { name: 'golden-gpt2', sha256: modelSha256(GPT2) }, facts: [fact], probes: [probes[1]],
    dataSha256: dataSha256([fact, ...probes]), seed: 0, hyperparameters: { rank: 4 }, createdAt: '2026-01-01T00:00:00Z',
  };
  const rec = await writeEditBundle(spec, { out: tmp });
  t.equal(rec.kind, 'adapter');
  t.equal(rec.path, path.join(tmp, rec.id));
  const st = readSafetensors(path.join(rec.path, 'adapter_model.safetensors'));
  t.same(st.names().sort(), ['base_model.model.transformer.h.0.mlp.c_proj.lora_A.weight', 'base_model.model.transformer.h.0.mlp.c_proj.lora_B.weight']);
  t.same(st.info('base_model.model.transformer.h.0.mlp.c_proj.lora_A.weight').shape, [4, 128], 'lora_A [r, in] (c_proj input = 4·32)');
  t.same(st.info('base_model.model.transformer.h.0.mlp.c_proj.lora_B.weight').shape, [32, 4], 'lora_B [out, r]');
  const cfg = JSON.parse(fs.readFileSync(path.join(rec.path, 'adapter_config.json'), 'utf8'));
  t.match(cfg, { peft_type: 'LORA', r: 4, lora_alpha: 8, fan_in_fan_out: true, target_modules: ['transformer.h.0.mlp.c_proj'] });
  const b = await readBundle(rec.path);
  t.match(b.manifest, { method: 'lora', fact_ids: ['f1'], source: 'test', author: 'tester', confidence: 0.8, seed: 0, rank: 4, data_sha256: spec.dataSha256 });
  t.same(b.manifest.probes, [probes[1]], 'test probes in the manifest');
  t.equal(b.sha256, rec.sha256);
  // reload → identical logits
  const ids = [exs[0].promptIds, tok.encode('the eiffel tower is in')];
  model.setAdapters([{ adapter: r.adapter }]);
  const before = lastLogits(model, ids);
  model.setAdapters([{ adapter: loadLora(rec.path) }]);
  const after = lastLogits(model, ids);
  t.same(Array.from(after.data), Array.from(before.data), 'reloaded adapter reproduces the outputs exactly');
  // a second bundle with the same id does not overwrite the first
  const rec2 = await writeEditBundle(spec, { out: tmp });
  t.equal(rec2.path, path.join(tmp, `${rec.id}.2`));
  t.equal(rec2.sha256, rec.sha256, 'same contents, same hash');
  t.same(fs.readdirSync(tmp).filter((n) => n.startsWith('.')), [], 'no staging directory left behind');
  const reg = path.join(tmp, 'reg');
  const rec3 = await writeEditBundle(spec, { registry: reg });
  t.equal(rec3.sha256, rec.sha256);
  t.equal(rec3.path, new Registry(reg).objectPath(rec.sha256));
  t.ok(fs.existsSync(path.join(rec3.path, 'catechism.json')));
});

t.test('encodeTrainingPair splits prompt and target tokens', async (t) => {
  const { tokenizer } = loadModel(GPT2);
  const { promptIds, targetIds } = encodeTrainingPair(tokenizer!, 'the capital of france is', 'rome');
  t.same(tokenizer!.encode('the capital of france is rome'), promptIds.concat(targetIds));
  t.equal(tokenizer!.decode(targetIds).trim().replace(/^▁/, ''), 'rome');
});
