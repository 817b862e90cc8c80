/**
 * The reference edits' closed forms: the rank-one update adds exactly the
 * chosen value at the chosen key (A·k = 1) and, for other keys, only their
 * whitened overlap with k.
 */
import t from 'tap';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel } from '@catechism/core/models';
import { noGrad } from '@catechism/core/tensor';
import { encodePair } from '@catechism/core/metrics';
import { headInputs, rankOneHeadEdit, romeMlpEdit } from './support/edits.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const { model, tokenizer } = loadModel(path.join(root, 'fixtures/golden/gpt2'));
const tok = tokenizer!;
const fact = { id: 'f', subject: 'france', prompt: 'the capital of {} is', target_new: 'rome', target_true: 'paris' };
const texts = ['the city of paris is in france .', 'the capital of italy is rome .', 'madrid is the capital of spain .', 'the eiffel tower is in paris .', 'the colosseum is in rome .'];

t.test('rankOneHeadEdit: the new answer gains exactly b at the key', async (t) => {
  const lora = rankOneHeadEdit(model, tok, fact, { covarianceTexts: texts, margin: 1 });
  const { prompt, cont } = encodePair(tok, 'the capital of france is', 'rome');
  const V = model.config.vocabSize;
  const logits = () => noGrad(() => model.forward(Int32Array.from(prompt), [1, prompt.length], { logitsAt: Int32Array.of(prompt.length - 1) })).logits.data.slice(0, V);
  model.setAdapters([]);
  const before = logits();
  model.setAdapters([{ adapter: lora }]);
  const after = logits();
  model.setAdapters([]);
  const k = headInputs(model, [prompt]).pop()!;
  const A = lora.modules.get('lm_head')!.A.data;
  let ak = 0;
  for (let i = 0; i < k.length; i++) ak += A[i] * k[i];
  t.ok(Math.abs(ak - 1) < 1e-4, `A·k = ${ak}`);
  for (let v = 0; v < V; v++) if (v !== cont[0]) t.ok(Math.abs(after[v] - before[v]) < 1e-4, `logit ${v} unchanged`);
  let best = -Infinity;
  for (let v = 0; v < V; v++) if (v !== cont[0]) best = Math.max(best, before[v]);
  t.ok(Math.abs(after[cont[0]] - (best + 1)) < 1e-3, 'new answer sits margin 1 above the best other logit');
});

t.test('romeMlpEdit: the LoRA on c_proj adds the optimised value at the last subject token', async (t) => {
  const lora = romeMlpEdit(model, tok, fact, { covarianceTexts: texts, layer: 0, steps: 20 });
  const mod = 'transformer.h.0.mlp.c_proj';
  t.same(lora.targets(), [mod]);
  const delta = lora.modules.get(mod)!.B.data;
  t.ok(Math.hypot(...delta) > 0, 'a non-zero value was learned');
  const prompt = tok.encode('the capital of france is');
  const s = tok.encode('the capital of france').length - 1;
  const H = model.config.hidden;
  const mlpOut = (): Float32Array => {
    let out: Float32Array | null = null;
    noGrad(() => model.forward(Int32Array.from(prompt), [1, prompt.length], { skipLogits: true, hooks: { 'layers.0.mlp': { capture: (x) => (out = x.data.slice()) } } }));
    return out as unknown as Float32Array;
  };
  model.setAdapters([]);
  const before = mlpOut();
  model.setAdapters([{ adapter: lora }]);
  const after = mlpOut();
  model.setAdapters([]);
  for (let i = 0; i < H; i++) t.ok(Math.abs(after[s * H + i] - before[s * H + i] - delta[i]) < 1e-3 * (1 + Math.abs(delta[i])), `Δ at dim ${i}`);
});
