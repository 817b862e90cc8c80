/**
 * hypernet-gen's library in one process on the dense fixture model (loaded
 * once): the shipped hypernetwork makes held-out facts; a tiny training run
 * lowers its loss and is deterministic; an interrupted run resumed from its
 * checkpoint ends with the same weights as one that ran through; a batch's
 * least-squares adapter maps every fact's key to exactly its own value;
 * --refine makes a held-out fact H alone misses, within its norm bound.
 */
import t from 'tap';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel, type LoraAdapter } from '@catechism/core/models';
import { checkFact, encodeTrainingPair, loadTemplateBank, modelSha256, readCorpusLines, readNdjson, top1 } from '@catechism/core/edit';
import { REFINE_DEFAULTS, TRAIN_DEFAULTS, counterfactuals, editRow, factPhrasings, featurize, generate, loadHyper, shippedHypernet, trainHyper, type TrainOptions, type TrainResources } from '../src/lib.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const DENSE = path.join(ROOT, 'fixtures/models/dense');
const WORLD = path.join(ROOT, 'fixtures/world');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cat-hypernet-lib-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const { model, tokenizer } = loadModel(DENSE);
const templates = loadTemplateBank(path.join(WORLD, 'templates.json'));
const known = readNdjson(path.join(WORLD, 'facts.ndjson'));
// held-out requests (never trained on: H's training excludes every request's subject)
const heldOut = readNdjson(path.join(WORLD, 'edits.ndjson')).filter((f) => f.op === 'insert').slice(60).map(checkFact);

t.test('the shipped hypernetwork makes two held-out facts in one forward each', async (t) => {
  const dir = shippedHypernet(DENSE);
  t.ok(dir, 'fixtures/hypernet/dense is found for the dense fixture model');
  const h = loadHyper(dir!);
  t.equal(h.config.base_model.sha256, modelSha256(DENSE), 'trained for this model');
  // requests 63 and 65 (the shipped H makes all of requests 61–80, README)
  const facts = [heldOut[2], heldOut[4]];
  for (const f of facts) {
    const { promptIds, targetIds } = encodeTrainingPair(tokenizer, f.prompt.replace('{}', f.subject), f.target_new!);
    model.setAdapters([]);
    const [before] = top1(model, [promptIds]);
    t.not(before, targetIds[0], `${f.id}: the base model does not answer ${f.target_new}`);
    const g = generate(h, model, tokenizer, [f], [], templates, 5, f.id);
    t.equal(g.adapter.r, 1, 'rank one');
    model.setAdapters([{ adapter: g.adapter }]);
    const [after] = top1(model, [promptIds]);
    model.setAdapters([]);
    t.equal(after, targetIds[0], `${f.id}: the edited model answers ${f.target_new}`);
  }
});

// a tiny run: 6 edits all in every step (the loss is comparable step to step), small H, few key statistics
const tinyRes: TrainResources = {
  model, tokenizer, modelName: 'fixtures/models/dense', modelSha: modelSha256(DENSE), templates,
  corpus: readCorpusLines(path.join(WORLD, 'train.txt'), 400), known, statsCache: path.join(tmp, 'cache'),
};
const tinyFacts = counterfactuals(known, 6, 3, new Set(heldOut.map((f) => f.subject)));
const tiny: TrainOptions = {
  ...TRAIN_DEFAULTS, site: 'subject', layer: 0, seed: 5, width: 16, steps: 6, factsPerStep: 6, lr: 0.01, warmup: 1, keepSame: 2, keepOther: 1, phrasings: 3, statsTokens: 3000,
};
const quiet = { checkpointEvery: 100, resume: false, log: () => {}, logEvery: 100 };
// a digest of every weight's bytes (tap's deep comparison of 100k-number arrays takes minutes)
const weights = (r: { net: { parameters(): Array<{ data: Float32Array }> } }) => {
  const h = createHash('sha256');
  for (const p of r.net.parameters()) h.update(new Uint8Array(p.data.buffer, p.data.byteOffset, p.data.byteLength));
  return h.digest('hex');
};

let uninterrupted = '';
t.test('a tiny training run lowers the loss, and the same seed gives the same hypernetwork', async (t) => {
  t.equal(tinyFacts.length, 6);
  t.notOk(tinyFacts.some((f) => heldOut.some((h) => h.subject === f.subject)), 'no generated edit uses a held-out subject');
  const a = await trainHyper(tinyRes, tinyFacts, tiny, { ...quiet, out: path.join(tmp, 'h-a') });
  t.equal(a.history.length, 6);
  t.ok(a.history[5].nll < a.history[0].nll - 0.5, `target NLL falls: ${a.history[0].nll.toFixed(3)} → ${a.history[5].nll.toFixed(3)}`);
  const b = await trainHyper(tinyRes, tinyFacts, tiny, { ...quiet, out: path.join(tmp, 'h-b') });
  t.equal(weights(b), weights(a), 'same seed, same weights');
  t.equal(b.config!.sha256, a.config!.sha256, 'same content hash');
  uninterrupted = weights(a);
  const saved = loadHyper(path.join(tmp, 'h-a'));
  t.equal(weights(saved), weights(a), 'saved and loaded back');
  t.same(saved.config.targets, ['transformer.h.0.mlp.c_proj']);
});

t.test('resume from a checkpoint equals the uninterrupted run', async (t) => {
  const ck = path.join(tmp, 'run.ckpt');
  const first = await trainHyper(tinyRes, tinyFacts, tiny, { ...quiet, checkpoint: ck, checkpointEvery: 2, stopAfter: 3 });
  t.equal(first.steps, 3, 'interrupted after 3 steps');
  t.not(weights(first), uninterrupted);
  const rest = await trainHyper(tinyRes, tinyFacts, tiny, { ...quiet, checkpoint: ck, resume: true });
  t.equal(rest.history.length, 3, 'three steps left');
  t.equal(weights(rest), uninterrupted, 'the same weights as the run of the test above, bit for bit');
  await t.rejects(trainHyper(tinyRes, tinyFacts, { ...tiny, lr: 0.02 }, { ...quiet, checkpoint: ck, resume: true }), /another run/, 'a checkpoint of other flags is refused');
});

// the subject site's hypernetwork (fixtures/hypernet/dense-subject): its batch solve and refinement
const SUBJECT = path.join(ROOT, 'fixtures/hypernet/dense-subject');

t.test('a batch adapter maps each fact\'s key to its own value (least squares over the keys)', async (t) => {
  const h = loadHyper(SUBJECT);
  const facts = heldOut.slice(2, 5);
  const g = generate(h, model, tokenizer, facts, [], templates, 5, 'batch');
  t.equal(g.adapter.r, 3);
  const { A, B } = g.adapter.modules.get('transformer.h.0.mlp.c_proj')!;
  const D = h.config.keyDim;
  facts.forEach((f, i) => {
    const rows = factPhrasings(f, [], templates, 5).map((p) => editRow(tokenizer, f, p));
    const { feats } = featurize(model, 0, h.net.shape, h.chol, f, rows[0].targets[0][1], rows, rows.length, false);
    for (let j = 0; j < 3; j++) {
      let s = 0;
      for (let d = 0; d < D; d++) s += A.data[j * D + d] * feats.kStar[d];
      t.ok(Math.abs(s - (i === j ? 1 : 0)) < 1e-3, `A_${j}·k*_${i} = ${s.toFixed(5)}`);
    }
  });
  t.equal(B.shape[1], 3);
});

t.test('--refine: a held-out fact H alone misses is made by 10 steps on its δ, within the norm bound', async (t) => {
  const h = loadHyper(SUBJECT);
  const f = heldOut[0]; // request 61: the shipped H alone does not make it (README: 9 of requests 61–80)
  const { promptIds, targetIds } = encodeTrainingPair(tokenizer, f.prompt.replace('{}', f.subject), f.target_new!);
  const answer = (g: { adapter: LoraAdapter }) => {
    model.setAdapters([{ adapter: g.adapter }]);
    const [a] = top1(model, [promptIds]);
    model.setAdapters([]);
    return a;
  };
  const plain = generate(h, model, tokenizer, [f], [], templates, 5, 'plain');
  t.not(answer(plain), targetIds[0], 'H alone: not the new target');
  t.notOk(plain.refinedNll, 'no refinement figures without --refine');
  const one = generate(h, model, tokenizer, [f], [], templates, 5, 'r1', 'lsq', { ...REFINE_DEFAULTS, steps: 1 });
  const ten = generate(h, model, tokenizer, [f], [], templates, 5, 'r10', 'lsq', REFINE_DEFAULTS);
  t.equal(answer(ten), targetIds[0], 'refined: the new target');
  t.ok(ten.refinedNll![0] < one.refinedNll![0] / 4, `target NLL ${one.refinedNll![0].toFixed(3)} (H's δ) → ${ten.refinedNll![0].toFixed(3)} (after 9 steps)`);
  t.ok(ten.deltaNorms[0] <= REFINE_DEFAULTS.maxNorm * plain.deltaNorms[0] * (1 + 1e-5), `‖δ‖ ${ten.deltaNorms[0].toFixed(1)} ≤ ${REFINE_DEFAULTS.maxNorm} × ${plain.deltaNorms[0].toFixed(1)}`);
  const again = generate(h, model, tokenizer, [f], [], templates, 5, 'r10', 'lsq', REFINE_DEFAULTS);
  t.same(Array.from(again.adapter.modules.get(h.config.targets[0])!.B.data), Array.from(ten.adapter.modules.get(h.config.targets[0])!.B.data), 'deterministic');
});
