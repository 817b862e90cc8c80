/**
 * Architecture descriptions (src/models/arch): every name a description
 * gives is a weight its own expectedWeights lists, and the code that asks
 * the descriptions (module lookup, MLP keys, roles, layouts) answers for
 * every family the golden fixtures cover.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  ARCHS, archForModelType, archOf, attentionModules, loadModel, mlpModules, mlpOutput, parseConfig, weightRoles,
  type ModelConfig,
} from '../src/models/index.js';
import { isMlpOut, mlpInputFrom, mlpInputHooks, mlpOutModule } from '../src/edit/model-util.js';
import { moduleOf } from '../src/attrib/index.js';
import { foldAdapters } from '../src/merge/fold.js';
import { noGrad } from '../src/tensor/index.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const GOLDEN = path.join(ROOT, 'fixtures/golden');
const families = fs.readdirSync(GOLDEN).filter((d) => fs.existsSync(path.join(GOLDEN, d, 'config.json')));

function configOf(dir: string): ModelConfig {
  return parseConfig(JSON.parse(fs.readFileSync(path.join(GOLDEN, dir, 'config.json'), 'utf-8')));
}

t.test('model_types map to one family each; unknown ones are refused with the list', async (t) => {
  const seen = new Map<string, string>();
  for (const a of ARCHS) for (const m of a.modelTypes) {
    t.notOk(seen.has(m), `${m} claimed once`);
    seen.set(m, a.family);
  }
  t.equal(archForModelType('qwen2')?.family, 'llama');
  t.equal(archForModelType('mistral')?.family, 'llama');
  t.equal(archForModelType('mixtral')?.family, 'mixtral');
  t.equal(archForModelType('bert'), undefined);
  t.throws(() => parseConfig({ model_type: 'bert', vocab_size: 3 }), /unknown model_type "bert" \(supported: gpt2, llama, qwen2, mistral, mixtral\)/);
  t.throws(() => archOf('bert'), /unknown model family 'bert'/);
});

for (const dir of families) {
  t.test(`${dir}: every described module is an expected weight`, async (t) => {
    const c = configOf(dir);
    const a = archOf(c);
    const w = a.expectedWeights(c);
    const has = (mod: string) => w.has(`${mod}.weight`);
    t.ok(has(a.tokenEmbedding), 'token embedding');
    if (a.positionEmbedding) t.ok(has(a.positionEmbedding), 'position embedding');
    t.ok(has(a.finalNorm), 'final norm');
    t.equal(has(a.lmHead), !c.tieEmbeddings, 'lm_head stored unless tied');
    const described = new Set<string>();
    for (let l = 0; l < c.layers; l++) {
      const L = a.layer(l);
      for (const m of [L.attnNorm, L.mlpNorm, ...attentionModules(L)]) described.add(m);
      if (L.moe) described.add(L.moe.router);
      for (const m of mlpModules(a, c, l)) for (const x of [...m.in, m.out]) described.add(x);
      t.equal(mlpOutput(a, l).includes('*'), L.moe !== null, 'MoE output is a glob over experts');
    }
    for (const m of described) t.ok(has(m), `${m} is a weight`);
    // and conversely every matrix or norm weight is described (no name the description forgets)
    for (const name of w.keys()) {
      if (!name.endsWith('.weight')) continue;
      const mod = name.slice(0, -'.weight'.length);
      const top = [a.tokenEmbedding, a.positionEmbedding, a.finalNorm, a.lmHead];
      t.ok(described.has(mod) || top.includes(mod), `${name} is described`);
    }
    const roles = weightRoles(a, c);
    t.equal(roles.get(`${a.finalNorm}.weight`), 'norm');
    t.equal(roles.get(`${a.tokenEmbedding}.weight`), 'embedding');
    t.equal(roles.get(`${a.layer(0).attnOut}.weight`), 'residual-out');
    t.equal(a.layout(a.layer(0).attnOut), c.family === 'gpt2' ? 'in_out' : 'out_in', 'Conv1D layout only for GPT-2');
    t.equal(a.layout(a.lmHead), 'out_in', 'lm_head is a Linear everywhere');
  });

  t.test(`${dir}: tools' lookups answer through the description`, async (t) => {
    const { model } = loadModel(path.join(GOLDEN, dir), { tokenizer: false });
    const a = model.arch;
    const L = a.layer(1);
    t.equal(moduleOf(model, 'attn', 1), L.attnOut);
    t.equal(moduleOf(model, 'mlp', 1), L.mlp?.out);
    t.equal(mlpOutModule(model, 1), mlpOutput(a, 1));
    t.equal(isMlpOut(model, mlpOutModule(model, 1)), L.mlp !== null);
    t.equal(isMlpOut(model, L.attnOut), false);
    if (L.moe) {
      t.equal(moduleOf(model, 'mlp', 1, 2), L.moe.expert(2).out);
      return;
    }
    // MLP keys from the description = the input the forward pass feeds the MLP output projection
    const ids = Int32Array.from([1, 2, 3, 4, 5]);
    const into: { resid?: import('../src/tensor/index.js').Tensor; attn?: import('../src/tensor/index.js').Tensor } = {};
    noGrad(() => model.forward(ids, [1, 5], { hooks: mlpInputHooks(1, into), skipLogits: true }));
    const k = noGrad(() => mlpInputFrom(model, 1, into.resid!, into.attn!));
    t.same(k.shape, [5, model.config.intermediate]);
    // W·k (+ bias) reproduces the MLP block output at the hook site
    let mlpOut: Float32Array | null = null;
    noGrad(() => model.forward(ids, [1, 5], { hooks: { 'layers.1.mlp': { capture: (x) => (mlpOut = x.data.slice()) } }, skipLogits: true }));
    const W = model.weight(`${L.mlp!.out}.weight`);
    const b = model.weights.get(`${L.mlp!.out}.bias`);
    const H = model.config.hidden, F = model.config.intermediate;
    const inOut = a.layout(L.mlp!.out) === 'in_out';
    let err = 0;
    for (let tok = 0; tok < 5; tok++) {
      for (let o = 0; o < H; o++) {
        let s = b ? b.data[o] : 0;
        for (let i = 0; i < F; i++) s += k.data[tok * F + i] * W.data[inOut ? i * H + o : o * F + i];
        err = Math.max(err, Math.abs(s - mlpOut![tok * H + o]));
      }
    }
    t.ok(err < 1e-4, `W·k matches the MLP output (max err ${err.toExponential(2)})`);
    // folding an adapter writes the delta in the module's own layout: W[o, i] (or W[i, o]) += f·(B·A)[o, i]
    const lora = model.createLora('probe', [L.mlp!.out], { r: 1, seed: 1, initBStd: 0.5 });
    const folded = foldAdapters(model, [{ adapter: lora }]).weights.get(`${L.mlp!.out}.weight`)!;
    const { A, B } = lora.modules.get(L.mlp!.out)!;
    const [o, i] = [H - 1, 2];
    const at = inOut ? i * H + o : o * F + i;
    t.ok(Math.abs(folded.data[at] - W.data[at] - lora.factor * B.data[o] * A.data[i]) < 1e-6, 'fold respects the layout');
  });
}
