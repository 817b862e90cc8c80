/**
 * hypernet-gen's last-token site on the dense fixture model: a tiny training
 * run lowers the target NLL and saves the gate statistics with H; the
 * generated adapter is exactly what training modelled (the repurposed
 * neuron's gate in place of its own input row, writing u beside its old
 * output row: checked against the MLP's output computed by hand); each fact
 * of a run gets its own neuron; the gate opens on the fact's phrasings and
 * stays shut on most negatives; --refine is refused for this site.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel, type Hooks } from '@catechism/core/models';
import { Tensor } from '@catechism/core/tensor';
import { checkFact, loadTemplateBank, mlpInputHooks, mlpNormedFrom, modelSha256, padBatch, padId, readCorpusLines, readNdjson } from '@catechism/core/edit';
import {
  GATE_DEFAULTS, REFINE_DEFAULTS, TRAIN_DEFAULTS, counterfactuals, factPhrasings, generate, lastUnits, loadHyper, neuronAct, prefixedRows, trainHyper,
  type TrainOptions, type TrainResources,
} from '../src/lib.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const DENSE = path.join(ROOT, 'fixtures/models/dense');
const WORLD = path.join(ROOT, 'fixtures/world');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cat-hypernet-last-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const { model, tokenizer } = loadModel(DENSE);
const templates = loadTemplateBank(path.join(WORLD, 'templates.json'));
const known = readNdjson(path.join(WORLD, 'facts.ndjson'));
const heldOut = readNdjson(path.join(WORLD, 'edits.ndjson')).filter((f) => f.op === 'insert').slice(60).map(checkFact);
const L = model.config.layers - 1;
const H = model.config.hidden;

const res: TrainResources = {
  model, tokenizer, modelName: 'fixtures/models/dense', modelSha: modelSha256(DENSE), templates, corpus: readCorpusLines(path.join(WORLD, 'train.txt'), 400), known,
};
const tiny: TrainOptions = {
  ...TRAIN_DEFAULTS, site: 'last', layer: L, seed: 2, width: 16, steps: 8, factsPerStep: 8, lr: 0.01, warmup: 1, keepSame: 2, keepOther: 1, phrasings: 3,
  gateDocs: 20, gateSample: 512, prefixes: 2, gate: GATE_DEFAULTS,
};
const facts = counterfactuals(known, 8, 4, new Set(heldOut.map((f) => f.subject)));
const dir = path.join(tmp, 'h');

t.test('a tiny training run at the last token lowers the NLL and saves its gate statistics', async (t) => {
  const r = await trainHyper(res, facts, tiny, { checkpointEvery: 100, resume: false, log: () => {}, logEvery: 100, out: dir });
  t.ok(r.history[7].nll < r.history[0].nll - 0.5, `target NLL falls: ${r.history[0].nll.toFixed(3)} → ${r.history[7].nll.toFixed(3)}`);
  const h = loadHyper(dir);
  t.equal(h.config.site, 'last');
  t.same(h.config.targets, [`transformer.h.${L}.mlp.c_proj`]);
  t.equal(h.gate!.sample.length, 512 * H, 'the negative sample is stored');
  t.equal(h.gate!.prefixes.length, 2);
  t.equal(h.gate!.relations.length, h.gate!.relMean.length);
  t.ok(h.gate!.neurons.length >= 16 && new Set(h.gate!.neurons).size === h.gate!.neurons.length, 'a ranking of distinct neurons');
  const again = await trainHyper(res, facts, tiny, { checkpointEvery: 100, resume: false, log: () => {}, logEvery: 100, out: path.join(tmp, 'h2') });
  t.equal(again.config!.sha256, h.config.sha256, 'same seed, same hypernetwork (weights and gate statistics)');
  await t.rejects(trainHyper(res, facts, { ...tiny, layer: 1 }, { checkpointEvery: 100, resume: false, log: () => {}, logEvery: 100 }), /last layer/, 'another layer is refused');
});

t.test('the adapter is the neuron training modelled, one neuron per fact of a run', async (t) => {
  const h = loadHyper(dir);
  const two = heldOut.slice(0, 2);
  const g = generate(h, model, tokenizer, two, [], templates, 3, 'pair');
  const g2 = generate(h, model, tokenizer, two.slice(1), [], templates, 3, 'second', 'lsq', undefined, 1);
  t.equal(g.adapter.r, 2);
  t.same(g.neurons!.map((n) => n.neuron), h.gate!.neurons.slice(0, 2), 'the least-used neurons, in order');
  t.equal(g2.neurons![0].neuron, h.gate!.neurons[1], 'a later group takes the next neuron');
  // the MLP output at every position of the second fact's phrasings, base and patched
  const f = two[1];
  const rows = prefixedRows(tokenizer, f, factPhrasings(f, [], templates, 3), h.gate!.prefixes).rows;
  const { ids, mask, T } = padBatch(rows.map((r) => r.ids), padId(model));
  const run = (on: boolean) => {
    const into: { resid?: Tensor; attn?: Tensor } = {};
    let out: Tensor | null = null;
    const extra: Hooks = { [`layers.${L}.mlp`]: { capture: (x) => (out = x) } };
    model.setAdapters(on ? [{ adapter: g2.adapter }] : []);
    model.forward(ids, [rows.length, T], { attentionMask: mask, skipLogits: true, hooks: mlpInputHooks(L, into, extra) });
    model.setAdapters([]);
    return { x: mlpNormedFrom(model, L, into.resid!, into.attn!).data, m: (out as unknown as Tensor).data };
  };
  const base = run(false);
  const patched = run(true);
  const [u] = lastUnits(model);
  const I = u.I;
  const i = g2.neurons![0].neuron;
  const gate = g2.gates![0];
  const act = neuronAct(model, L);
  const Wout = model.weight(`${u.outMod}.weight`).data; // Conv1D [I, H]
  const B = g2.adapter.modules.get(u.outMod)!.B.data; // [H, 1]: u
  let worst = 0;
  let opened = 0;
  rows.forEach((r, b) => {
    for (let p = 0; p < r.ids.length; p++) {
      const at = (b * T + p) * H;
      let old = u.bg[i];
      let s = gate.b;
      for (let a = 0; a < H; a++) {
        old += u.Wg[a * I + i] * base.x[at + a];
        s += gate.w[a] * base.x[at + a];
      }
      const aOld = act(old);
      const aNew = act(gate.kappa * (s - gate.tau));
      if (p === r.targets[0][0] && aNew > 1) opened++;
      for (let a = 0; a < H; a++) {
        const want = base.m[at + a] + (aNew - aOld) * Wout[i * H + a] + aNew * B[a];
        worst = Math.max(worst, Math.abs(patched.m[at + a] - want));
      }
    }
  });
  t.ok(worst < 2e-3, `patched MLP output = base − old neuron + gate·(old row + u): max error ${worst.toExponential(2)}`);
  t.ok(opened >= 0.8 * rows.length, `the gate opens at the last token of ${opened} of ${rows.length} phrasings × prefixes`);
  t.ok(gate.leaks <= 0.01 * (h.gate!.sample.length / H), `and on ${gate.leaks} of ${h.gate!.sample.length / H} sampled negatives`);
});

t.test('--refine is refused for the last-token site', async (t) => {
  const h = loadHyper(dir);
  t.throws(() => generate(h, model, tokenizer, heldOut.slice(0, 1), [], templates, 3, 'r', 'lsq', REFINE_DEFAULTS), /site "last"/);
});
