/**
 * Targeted forgetting by rank-one and MEMIT edits (issue 20): on the dense
 * fixture model, a ROME forget makes the old answer unlikely and not top-1;
 * a MEMIT batch forgets one fact while inserting another; the abstention
 * target comes from probe-gen's counterfactual train probe; the value fit's
 * per-token loss is −log(1 − P) exactly where a forget token sits; the
 * LoRA method trains the abstention where the probes carry it, and without
 * them (or at --abstain-weight 0) trains the same weights as before; with
 * --forget-name-parts a person's forget rows also train with the surname
 * made up, and that takes the old answer off a wording the forget never
 * trained where the first name alone carried it.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel } from '../src/models/index.js';
import { fromData, logSoftmax, noGrad } from '../src/tensor/index.js';
import {
  MEMIT_DEFAULTS, ROME_DEFAULTS, ROME_FORGET_DEFAULTS, abstainInsert, checkFact, encodeTrainingPair, forgetTargetOf, keyStatsCached, lastLogits,
  editReadback, loadTemplateBank, memitEdit, readCorpusLines, readNdjson, romeForget, romeForgetAtBestLayer, romeForgetMonitor, romeEdit, top1, unlikelihoodMix, type EditFact,
  LORA_METHOD_DEFAULTS, abstainFacts, buildExamples, loraMethod, loraSiteOptions, MADE_UP_SURNAME, nameAblatedForgetRows, type EditResources, type LoraOptions, type Rec,
} from '../src/edit/index.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cat-edit-forget-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

const { model, tokenizer } = loadModel(path.join(ROOT, 'fixtures/models/dense'));
const tok = tokenizer!;
const corpus = readCorpusLines(path.join(ROOT, 'fixtures/world/train.txt'), 3000);
const statsAt = (l: number) => keyStatsCached(model, tok, { modelSha: 'dense-forget-test', layer: l, corpus, maxTokens: 6000, cacheDir: tmp });
const known = readNdjson(path.join(ROOT, 'fixtures/world/facts.ndjson'));
const forgetFact = (i: number): EditFact => checkFact({ ...known.filter((k) => k.relation === 'works_for')[i], op: 'forget' }) as EditFact;

/** P(first token of answer) and the top-1 after each prompt, with the model's active adapters. */
function pOld(prompts: string[], answer: string): { p: number[]; top: number[]; first: number } {
  const pairs = prompts.map((p) => encodeTrainingPair(tok, p, answer));
  const lg = lastLogits(model, pairs.map((x) => x.promptIds));
  const lp = noGrad(() => logSoftmax(lg));
  const V = lg.shape[1];
  const first = pairs[0].targetIds[0];
  return { p: pairs.map((_, b) => Math.exp(lp.data[b * V + first])), top: top1(model, pairs.map((x) => x.promptIds)), first };
}

t.test('ROME forget with a monitor: every compared layer is tried and the one that lowers the shared answer least is kept', async (t) => {
  const fact = forgetFact(1);
  const prompt = fact.prompt.replace('{}', fact.subject);
  const checks = buildExamples(tok, { facts: [fact], probes: [] });
  const monitorText = romeForgetMonitor(known, null, fact, new Set(), 16);
  t.ok(monitorText.length > 0, `other subjects answer ${fact.target_true} too (${monitorText.length} prompts)`);
  const answer = encodeTrainingPair(tok, prompt, fact.target_true!).targetIds[0];
  const monitor = { prompts: monitorText.map((p) => tok.encode(p)), answer, compare: 2 };
  const base = { ...ROME_DEFAULTS, ...ROME_FORGET_DEFAULTS };
  const o = { base, prefixes: [], prompts: [prompt], keep: [], checks };
  // the drop of the answer's mean log P over the monitor, each layer's forget alone (the independent reading)
  const meanLogP = () => {
    const lp = noGrad(() => logSoftmax(lastLogits(model, monitor.prompts)));
    const V = lp.shape[1];
    return monitor.prompts.reduce((s, _, r) => s + lp.data[r * V + answer], 0) / monitor.prompts.length;
  };
  const before = meanLogP();
  const drops = [0, 1].map((layer) => {
    const r = romeForget(model, tok, fact, statsAt(layer), { ...base, layer, prefixes: [], prompts: [prompt], keep: [], name: fact.id });
    model.setAdapters([{ adapter: r.adapter }]);
    const solved = top1(model, checks.map((c) => c.promptIds)).every((tk, i) => tk !== checks[i].targetIds[0]);
    const drop = before - meanLogP();
    model.setAdapters([]);
    return { solved, drop };
  });
  t.ok(drops.every((d) => d.solved), 'both layers forget the fact');
  const chosen = romeForgetAtBestLayer(model, tok, fact, [0, 1, 2], statsAt, { ...o, monitor });
  t.same(chosen.tried, [0, 1], 'two layers compared, the third never tried');
  const want = drops[0].drop <= drops[1].drop ? 0 : 1;
  t.equal(chosen.layer, want, `kept the smaller drop (layer 0: ${drops[0].drop.toFixed(3)}, layer 1: ${drops[1].drop.toFixed(3)})`);
  t.ok(Math.abs(chosen.monitorDrop! - drops[want].drop) < 1e-4, 'its drop is the one read alone');
  const first = romeForgetAtBestLayer(model, tok, fact, [0, 1, 2], statsAt, o);
  t.same(first.tried, [0], 'without a monitor: the first layer that forgets');
  t.same(model.activeAdapters(), [], 'the model is left without adapters');
});

t.test('ROME forget ("any"): the old answer leaves top-1 and P(old) falls below the stop', async (t) => {
  const fact = forgetFact(0);
  const prompt = fact.prompt.replace('{}', fact.subject);
  const before = pOld([prompt], fact.target_true!);
  t.ok(before.p[0] > 0.5, `the base model knows it (P ${before.p[0].toFixed(3)})`);
  const r = romeForget(model, tok, fact, statsAt(0), { ...ROME_DEFAULTS, ...ROME_FORGET_DEFAULTS, layer: 0, prefixes: [], name: fact.id });
  t.same(model.activeAdapters(), [], 'the model is left without adapters');
  model.setAdapters([{ adapter: r.adapter }]);
  const after = pOld([prompt], fact.target_true!);
  model.setAdapters([]);
  t.ok(after.p[0] < ROME_FORGET_DEFAULTS.pStop, `P(old) ${before.p[0].toFixed(3)} → ${after.p[0].toExponential(2)} (${r.steps} steps)`);
  t.not(after.top[0], after.first, 'old answer not top-1');
  t.equal(r.adapter.r, 1, 'rank one');
  t.throws(() => romeForget(model, tok, { ...fact, op: 'insert' }, statsAt(0), { ...ROME_DEFAULTS, ...ROME_FORGET_DEFAULTS, layer: 0, prefixes: [], name: 'x' }), /not a forget fact/);
});

t.test('MEMIT: one batch forgets one fact and inserts another', async (t) => {
  const gone = forgetFact(1);
  const ins = checkFact(readNdjson(path.join(ROOT, 'fixtures/world/edits.ndjson')).find((r) => r.op === 'insert')!) as EditFact;
  const m = memitEdit(model, tok, [gone, ins], { ...MEMIT_DEFAULTS, vSteps: 60, refineSteps: 20, statsAt, phrasings: () => [], prefixList: [], name: 't', algorithm: 'memit', layers: [0], mom2Weight: 10 });
  model.setAdapters([{ adapter: m.adapter }]);
  const g = pOld([gone.prompt.replace('{}', gone.subject)], gone.target_true!);
  const i = pOld([ins.prompt.replace('{}', ins.subject)], ins.target_new!);
  model.setAdapters([]);
  t.not(g.top[0], g.first, `forgotten: old answer not top-1 (P ${g.p[0].toExponential(2)})`);
  t.ok(g.p[0] < 0.05, 'P(old) < 0.05');
  t.equal(i.top[0], i.first, 'the insert in the same batch states its target');
});

t.test('forget targets: abstain from probe-gen\'s counterfactual train probe, else any; abstain edits as an insert', async (t) => {
  const f = forgetFact(2);
  t.same(forgetTargetOf(f, [{ kind: 'probe', fact_id: f.id, role: 'counterfactual', split: 'test', prompt: 'x', target: f.target_true, expect: 'abstain' }]), { kind: 'any' });
  const probes = [{ kind: 'probe', fact_id: f.id, role: 'counterfactual', split: 'train', prompt: 'x', target: 'unknown', expect: 'new' }];
  const target = forgetTargetOf(f, probes);
  t.same(target, { kind: 'abstain', text: 'unknown' });
  const asInsert = abstainInsert(f, 'unknown');
  t.match(asInsert, { op: 'insert', target_new: 'unknown', target_true: f.target_true, id: f.id });
  // ROME's own insert machinery then teaches the abstention text
  const r = romeEdit(model, tok, asInsert, statsAt(0), { ...ROME_DEFAULTS, layer: 0, prefixes: [], name: f.id });
  model.setAdapters([{ adapter: r.adapter }]);
  const got = pOld([f.prompt.replace('{}', f.subject)], 'unknown');
  model.setAdapters([]);
  t.equal(got.top[0], got.first, `abstention text is top-1 (NLL ${r.nll.toFixed(3)})`);
});

t.test('unlikelihoodMix: −log(1 − P) where masked, the NLL elsewhere, and its gradient', async (t) => {
  const nll = [0.1, 2, 0.5];
  const per = fromData(Float32Array.from(nll), [3], { requiresGrad: true });
  const out = unlikelihoodMix(per, Float32Array.from([1, 0, 1]));
  const want = [-Math.log(1 - Math.exp(-0.1) + 1e-6), 2, -Math.log(1 - Math.exp(-0.5) + 1e-6)];
  for (let i = 0; i < 3; i++) t.ok(Math.abs(out.data[i] - want[i]) < 1e-5, `entry ${i}: ${out.data[i]} vs ${want[i]}`);
  let s = out.data[0] + out.data[1] + out.data[2];
  t.ok(Number.isFinite(s));
  // d/dx −log(1 − e^{−x}) = −e^{−x} / (1 − e^{−x}): the unlikelihood falls as the NLL rises
  const { sum } = await import('../src/tensor/index.js');
  sum(out).backward();
  const g0 = -Math.exp(-0.1) / (1 - Math.exp(-0.1) + 1e-6);
  t.ok(Math.abs(per.grad!.data[0] - g0) < 1e-2 * Math.abs(g0), `grad ${per.grad!.data[0]} vs ${g0}`);
  t.equal(per.grad!.data[1], 1);
  s = 0;
});

t.test('LoRA forget with the abstain target: the abstention becomes top-1, the old answer leaves; without it the weights are unchanged', async (t) => {
  const f = forgetFact(3);
  const prompt = f.prompt.replace('{}', f.subject);
  // "not": a word the fixture tokenizer knows ("unknown" is not in its vocabulary)
  const abstainProbe: Rec = { kind: 'probe', id: `${f.id}/counterfactual/0`, fact_id: f.id, role: 'counterfactual', split: 'train', prompt, target: 'not', expect: 'new', target_true: f.target_true };
  const editProbe: Rec = { kind: 'probe', id: `${f.id}/edit/0`, fact_id: f.id, role: 'edit', split: 'train', prompt, target: f.target_true, expect: 'abstain' };
  t.same(abstainFacts({ facts: [f], probes: [editProbe] }), [], 'no abstain probe: no abstention rows');
  t.match(abstainFacts({ facts: [f], probes: [editProbe, abstainProbe] }), [{ id: f.id, op: 'insert', target_new: 'not' }]);
  const res: EditResources = { model, tokenizer: tok, modelName: 'dense', modelSha: 'dense-forget-test', templates: null, corpus: corpus.slice(0, 64), known };
  // small and quick: the train prompt only, few retention rows, a short step cap
  const options: LoraOptions = { ...LORA_METHOD_DEFAULTS, steps: 80, neighbours: 4, retainFacts: 32, retainDocuments: 4, klMonitor: 8 };
  const edit = (probes: Rec[], o: Partial<LoraOptions> = {}) => loraMethod.edit({
    res, batch: { facts: [f], records: [], probes, loci: [] }, index: 0, count: 1, seed: 0, common: { topK: 1 }, options: { ...options, ...o }, log: () => {},
  })[0];
  const withAbstain = edit([editProbe, abstainProbe]);
  t.match(withAbstain.hyperparameters, { forget_target: 'abstain', abstain_facts: 1 });
  // its replacement is the abstention: the last layer's forget options (the relation's kind, weight 5) stay off
  t.notOk('forget_to_kind' in withAbstain.hyperparameters, 'no replacement of the relation\'s kind beside the abstention');
  t.notOk('forget_weight' in withAbstain.hyperparameters);
  model.setAdapters([{ adapter: withAbstain.adapter }]);
  const ab = pOld([prompt], 'not');
  const old = pOld([prompt], f.target_true!);
  model.setAdapters([]);
  t.equal(ab.top[0], ab.first, `the abstention is top-1 (P ${ab.p[0].toFixed(3)})`);
  // the early stop reads top-1: once the abstention leads, P(old) may stay well above 0.05
  t.not(old.top[0], old.first, `old answer not top-1 (P ${old.p[0].toFixed(3)})`);
  // the probe ignored (--abstain-weight 0) trains exactly what no probe does: the plain forget path
  const plain = edit([editProbe]);
  const ignored = edit([editProbe, abstainProbe], { abstainWeight: 0 });
  t.same(ignored.hyperparameters, plain.hyperparameters, 'same hyperparameters (no abstain keys)');
  t.notOk('forget_target' in plain.hyperparameters);
  t.match(plain.hyperparameters, { forget_to_kind: true, forget_weight: 10, forget_floor: 0.002, forget_stop_p: 0.002 }, 'a plain forget at a dense model\'s last layer: its forget options');
  t.match(plain.hyperparameters, { forget_name_parts: 1 }, 'a person\'s forget: one copy of each row with the surname made up, by default');
  for (const [m, w] of plain.adapter.modules) {
    const v = ignored.adapter.modules.get(m)!;
    t.ok(Buffer.from(w.A.data.buffer).equals(Buffer.from(v.A.data.buffer)) && Buffer.from(w.B.data.buffer).equals(Buffer.from(v.B.data.buffer)), `${m}: bit-identical`);
  }
});

t.test('--forget-name-parts: a person\'s forget rows with the surname made up, for persons only; they reach the first-name reading', async (t) => {
  const speaks = checkFact({ ...known.find((k) => k.subject === 'Dajo Holfel' && k.relation === 'speaks')!, op: 'forget' }) as EditFact;
  const city = checkFact({ ...known.find((k) => k.relation === 'located_in')!, op: 'forget' }) as EditFact;
  const insert = checkFact({ ...known.find((k) => k.subject === 'Dajo Holfel' && k.relation === 'works_for')!, target_new: 'Corvextron' }) as EditFact;
  const rows = buildExamples(tok, { facts: [speaks, city, insert], probes: [] });
  const abl = nameAblatedForgetRows(tok, rows, [speaks, city, insert], 2);
  const personRows = rows.filter((e) => e.factId === speaks.id);
  t.equal(abl.length, 2 * personRows.length, 'two copies of each of the person\'s forget rows; none for a one-word subject or an insert');
  for (const e of abl) {
    t.equal(e.factId, speaks.id);
    t.equal(e.mode, 'forget');
    t.equal(e.target, speaks.target_true);
    t.ok(e.prompt.includes(`Dajo ${MADE_UP_SURNAME}`) && !e.prompt.includes('Holfel'), e.prompt);
    // the subject span covers the made-up name (the fixture tokenizer reads the surname as <unk>)
    t.same(e.promptIds.slice(e.subjectStart, e.subjectEnd), tok.encode(`Dajo ${MADE_UP_SURNAME}`));
  }
  t.same(nameAblatedForgetRows(tok, rows, [speaks], 0), []);
  t.equal(LORA_METHOD_DEFAULTS.forgetNameParts, 1, 'one copy by default');
  t.equal(loraSiteOptions(model, ['transformer.h.3.mlp.c_fc', 'transformer.h.3.mlp.c_proj'], 1, LORA_METHOD_DEFAULTS, 1).forgetNameParts, 1, 'at a dense last layer too');

  // "Dajo Holfel can speak" (a wording the forget does not train): the base model answers Quipelic from
  // "Dajo" alone (the other Dajo speaks it too); the forget trained on "{} speaks" reaches it only with the copies
  const res: EditResources = { model, tokenizer: tok, modelName: 'dense', modelSha: 'dense-forget-test', templates: null, corpus: corpus.slice(0, 64), known };
  const options: LoraOptions = { ...LORA_METHOD_DEFAULTS, steps: 120, neighbours: 4, retainFacts: 64, retainDocuments: 4, klMonitor: 8 };
  const edit = (o: Partial<LoraOptions>) => loraMethod.edit({
    res, batch: { facts: [speaks], records: [], probes: [], loci: [] }, index: 0, count: 1, seed: 0, common: {}, options: { ...options, ...o }, log: () => {},
  })[0];
  const heldOut = ['Dajo Holfel can speak'];
  const before = pOld(heldOut, speaks.target_true!);
  t.ok(before.p[0] > 0.9, `the base model: P ${before.p[0].toFixed(3)}`);
  const readAfter = (o: Partial<LoraOptions>) => {
    const m = edit(o);
    model.setAdapters([{ adapter: m.adapter }]);
    const r = pOld(heldOut, speaks.target_true!);
    model.setAdapters([]);
    return { m, p: r.p[0] };
  };
  const off = readAfter({ forgetNameParts: 0 });
  const on = readAfter({});
  t.match(on.m.hyperparameters, { forget_name_parts: 1 });
  t.notOk('forget_name_parts' in off.m.hyperparameters);
  t.ok(on.p < off.p / 2, `P(old) on the held-out wording: ${on.p.toFixed(3)} with the copies, ${off.p.toFixed(3)} without`);
});

t.test('the strict read-back judges a forget on its own prompt and on the held-out phrasings the base model answers with the old answer', async (t) => {
  // a city's forget: the base model answers "{} can be found in" with "the" for nearly every city, so that
  // phrasing has no old answer to remove and no replacement to judge (validate keeps a forget paraphrase alike)
  const templates = loadTemplateBank(path.join(ROOT, 'fixtures/world/templates.json'));
  const readback = readNdjson(path.join(ROOT, 'fixtures/world/eval/facts-heldout.ndjson')) as unknown as Array<{ prompt: string; target: string; subject?: string; relation?: string }>;
  const city = checkFact({ ...known.find((k) => k.relation === 'located_in')!, op: 'forget' }) as EditFact;
  const held = templates!.heldout.get('located_in')!.map((h) => h.replace('{}', city.subject));
  const answered = pOld(held, city.target_true!);
  const expected = 1 + answered.top.filter((x) => x === answered.first).length;
  t.ok(expected < 1 + held.length, `the base model leaves ${1 + held.length - expected} of ${held.length} held-out phrasings unanswered`);
  // no adapter: nothing forgotten, on every prompt that is read
  const f = editReadback(model, tok, [{ adapters: [], facts: [city] }], { templates, readback });
  t.equal(f.n.forgotten, expected, 'the own prompt and the answered held-out phrasings');
  t.equal(f.forgotten, 0);
  t.equal(f.forget_kind, 0);
});

t.test('the strict read-back splits kl by whether the base model answers a prompt rightly', async (t) => {
  const readback = (readNdjson(path.join(ROOT, 'fixtures/world/eval/facts-heldout.ndjson')) as unknown as Array<{ prompt: string; target: string; subject?: string; relation?: string }>)
    .filter((_, i) => i % 12 === 0);
  const fact = checkFact({ ...known[0], op: 'forget' }) as EditFact;
  // some change to every prompt's next token: a small random LoRA on the last layer's MLP
  const adapter = model.createLora('noise', ['transformer.h.3.mlp.c_proj'], { r: 2, alpha: 4, seed: 1, initBStd: 0.05 });
  const f = editReadback(model, tok, [{ adapters: [adapter], facts: [fact] }], { readback });
  // the base model's top-1 on each prompt read, counted here on its own
  const kept = readback.filter((p) => !(p.subject === fact.subject && p.relation === fact.relation));
  const pairs = kept.map((p) => encodeTrainingPair(tok, p.prompt, p.target));
  const top = top1(model, pairs.map((x) => x.promptIds));
  const right = pairs.filter((x, i) => top[i] === x.targetIds[0]).length;
  t.equal(f.n.retain, kept.length, 'every prompt of the facts not edited');
  t.equal(f.n.base_right, right, `${right} of ${kept.length} answered rightly by the base model`);
  t.ok(right > 0 && right < kept.length, 'both kinds read');
  const whole = (f.kl_base_right * right + f.kl_base_wrong * (kept.length - right)) / kept.length;
  t.ok(Math.abs(whole - f.kl) <= 1e-9 * Math.max(1, f.kl), `the two parts make the whole: ${whole.toFixed(6)} = ${f.kl.toFixed(6)}`);
  t.ok(f.kl_base_right > 0 && f.kl_base_wrong > 0 && f.kl_base_right !== f.kl_base_wrong, `right ${f.kl_base_right.toFixed(4)}, wrong ${f.kl_base_wrong.toFixed(4)}`);
});
