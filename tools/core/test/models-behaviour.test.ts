/**
 * Model behaviour beyond the golden numbers: hooks, KV-cache generation,
 * padding, logprobs, LoRA stacking/negation and the PEFT adapter format.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Rng } from '../src/util/random.js';
import { logSoftmax, randn, reshape, sum, mul, tensor, type Tensor } from '../src/tensor/index.js';
import { createLora, loadLora, loadModel, saveLora, type CausalLM, type Hooks } from '../src/models/index.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const GOLDEN = path.join(ROOT, 'fixtures/golden');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cat-models-b-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

const models: Record<string, CausalLM> = {};
for (const arch of ['gpt2', 'llama', 'qwen2', 'mixtral']) models[arch] = loadModel(path.join(GOLDEN, arch)).model;

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return a.length === b.length ? d : Infinity;
}

function randomIds(n: number, vocab: number, seed: number): Int32Array {
  const rng = new Rng(seed);
  return Int32Array.from({ length: n }, () => 3 + rng.int(vocab - 3));
}

/** logits rows [b, t] as a flat array */
function row(logits: Tensor, b: number, tt: number): Float32Array {
  const [, T, V] = logits.shape;
  return logits.data.slice((b * T + tt) * V, (b * T + tt + 1) * V);
}

for (const [arch, model] of Object.entries(models)) {
  t.test(`${arch}: hooks`, async (t) => {
    const B = 2;
    const T = 6;
    const H = model.config.hidden;
    const ids = randomIds(B * T, model.config.vocabSize, 1);
    const base = model.forward(ids, [B, T]).logits;
    const site = 'layers.0.resid_post';
    let cap: Tensor | null = null;
    model.forward(ids, [B, T], { hooks: { [site]: { capture: (x) => { cap = x; } } } });
    t.same((cap as Tensor | null)?.shape, [B, T, H]);

    // patching a site with its own captured value changes nothing
    const same = model.forward(ids, [B, T], { hooks: { [site]: { patch: { value: cap! } } } }).logits;
    t.ok(maxAbsDiff(same.data, base.data) === 0, 'full patch with own value is a no-op');
    const rows = reshape(cap!, [B * T, H]);
    const r = (b: number, tt: number) => Array.from(rows.data.subarray((b * T + tt) * H, (b * T + tt + 1) * H));
    const samePos = model.forward(ids, [B, T], {
      hooks: { [site]: { patch: { value: tensor([...r(0, 2), ...r(1, 4)], [2, H]), positions: [[0, 2], [1, 4]] } } },
    }).logits;
    t.ok(maxAbsDiff(samePos.data, base.data) < 1e-6, 'per-position patch with own values is a no-op');

    // adding at one position changes that position and later ones only (causality), in that row only
    const delta = randn([1, H], new Rng(3), 1);
    const added = model.forward(ids, [B, T], { hooks: { 'layers.0.attn': { add: { value: delta, positions: [[1, 3]] } } } }).logits;
    for (let tt = 0; tt < T; tt++) {
      const d0 = maxAbsDiff(row(added, 0, tt), row(base, 0, tt));
      const d1 = maxAbsDiff(row(added, 1, tt), row(base, 1, tt));
      t.ok(d0 < 1e-6, `row 0 position ${tt} unchanged`);
      if (tt < 3) t.ok(d1 < 1e-6, `row 1 position ${tt} (before the edit) unchanged`);
      else t.ok(d1 > 1e-4, `row 1 position ${tt} changed by ${d1.toExponential(2)}`);
    }

    // patching another row's activation into a position = activation patching; differs from base there
    const swapped = model.forward(ids, [B, T], {
      hooks: { [site]: { patch: { value: tensor(r(1, 5), [1, H]), positions: [[0, 5]] } } },
    }).logits;
    t.ok(maxAbsDiff(row(swapped, 0, 5), row(base, 0, 5)) > 1e-4, 'patch with another activation changes the output');

    // gradient flows into a hook value: d(sum of logits)/d(added vector) by finite differences
    const v = randn([H], new Rng(9), 0.1, { requiresGrad: true });
    const hooks: Hooks = { 'embed': { add: { value: v } } };
    const f = (hk: Hooks) => sum(mul(model.forward(ids, [B, T], { hooks: hk }).logits, model.forward(ids, [B, T]).logits));
    const y = f(hooks);
    y.backward();
    const g = v.grad!.data;
    const eps = 1e-2;
    for (const j of [0, Math.floor(H / 2), H - 1]) {
      const vp = v.detach().clone();
      vp.data[j] += eps;
      const vm = v.detach().clone();
      vm.data[j] -= eps;
      const num = (f({ embed: { add: { value: vp } } }).item() - f({ embed: { add: { value: vm } } }).item()) / (2 * eps);
      t.ok(Math.abs(num - g[j]) <= 2e-2 * Math.max(1, Math.abs(num)), `grad[${j}] ${g[j].toFixed(4)} vs finite difference ${num.toFixed(4)}`);
    }
    // a leaf site gives d(out)/d(activation) on the frozen model; equal to the gradient of a zero add
    const weightsL = model.forward(ids, [B, T]).logits;
    let leafX: Tensor | null = null;
    sum(mul(model.forward(ids, [B, T], { hooks: { 'layers.0.resid_post': { leaf: true, capture: (x) => { leafX = x; } } } }).logits, weightsL)).backward();
    const z = randn([B, T, H], new Rng(1), 0, { requiresGrad: true });
    sum(mul(model.forward(ids, [B, T], { hooks: { 'layers.0.resid_post': { add: { value: z } } } }).logits, weightsL)).backward();
    t.ok((leafX as Tensor | null)?.grad, 'leaf activation has a gradient');
    t.ok(maxAbsDiff((leafX as unknown as Tensor).grad!.data, z.grad!.data) < 1e-5, 'leaf gradient = gradient of an added zero');

    t.throws(() => model.forward(ids, [B, T], { hooks: { [site]: { patch: { value: tensor([1, 2], [1, 2]), positions: [[0, 0]] } } } }), /expected \[1, /);
    t.throws(() => model.forward(ids, [B, T], { hooks: { [site]: { add: { value: tensor(new Array(H).fill(0), [1, H]), positions: [[2, 0]] } } } }), /outside the batch/);
  });

  t.test(`${arch}: padding, logprobs and KV-cache generation`, async (t) => {
    const V = model.config.vocabSize;
    const p1 = Array.from(randomIds(5, V, 11));
    const p2 = Array.from(randomIds(3, V, 12));
    // a left-padded row gives the same logits as the row alone
    const alone = model.forward(Int32Array.from(p2), [1, 3]).logits;
    const ids = Int32Array.from([...p1, 0, 0, ...p2]);
    const mask = Uint8Array.from([1, 1, 1, 1, 1, 0, 0, 1, 1, 1]);
    const padded = model.forward(ids, [2, 5], { attentionMask: mask }).logits;
    for (let tt = 0; tt < 3; tt++) t.ok(maxAbsDiff(row(padded, 1, 2 + tt), row(alone, 0, tt)) < 1e-4, `left-padded position ${tt}`);

    // logits at chosen rows equal those rows of the full logits
    const some = model.forward(ids, [2, 5], { attentionMask: mask, logitsAt: Int32Array.from([9, 0, 4]) }).logits;
    t.same(some.shape, [3, V]);
    t.ok(maxAbsDiff(some.data.subarray(0, V), row(padded, 1, 4)) < 1e-6 && maxAbsDiff(some.data.subarray(V, 2 * V), row(padded, 0, 0)) < 1e-6 && maxAbsDiff(some.data.subarray(2 * V), row(padded, 0, 4)) < 1e-6, 'logitsAt rows');

    // logprobs of a continuation = log-softmax of the full forward at the right rows
    const cont = [7, 9, 4];
    const [lp1, lp2] = model.logprobs([p1, p2], [cont, cont.slice(0, 2)]);
    t.equal(lp1.length, 3);
    t.equal(lp2.length, 2);
    const full = model.forward(Int32Array.from([...p1, ...cont]), [1, 8]).logits;
    const ls = logSoftmax(reshape(full, [8, V]));
    for (let j = 0; j < 3; j++) t.ok(Math.abs(lp1[j] - ls.data[(4 + j) * V + cont[j]]) < 1e-4, `logprob ${j}`);
    t.same(model.logprobs([p1, p2], [[], []]).map((x) => x.length), [0, 0], 'empty continuations');
    t.same(model.logprobs([p1, p2], [[], [5]]).map((x) => x.length), [0, 1]);
    const solo = model.logprobs([p2], [cont.slice(0, 2)])[0];
    t.ok(maxAbsDiff(solo, lp2) < 1e-4, 'batched logprobs equal unbatched');

    // KV-cache generation equals full recomputation, for a ragged batch
    const opts = { maxNewTokens: 6, eosTokenId: null };
    const cached = model.generate([p1, p2], opts);
    const recomputed = model.generate([p1, p2], { ...opts, useCache: false });
    t.same(cached, recomputed, 'greedy with cache = without');
    t.same(model.generate([p2], opts)[0], cached[1], 'a padded row generates as it does alone');
    // greedy = argmax of the full forward at each step
    let seq = p1.slice();
    for (let s = 0; s < 6; s++) {
      const lg = model.forward(Int32Array.from(seq), [1, seq.length]).logits;
      const last = row(lg, 0, seq.length - 1);
      let best = 0;
      for (let i = 1; i < V; i++) if (last[i] > last[best]) best = i;
      seq = seq.concat([best]);
    }
    t.same(cached[0], seq.slice(p1.length), 'greedy equals step-by-step argmax');

    // sampling: reproducible for a seed, cache-independent, differs across seeds
    const s1 = model.generate([p1, p2], { maxNewTokens: 8, temperature: 1.5, topP: 0.95, seed: 5, eosTokenId: null });
    const s2 = model.generate([p1, p2], { maxNewTokens: 8, temperature: 1.5, topP: 0.95, seed: 5, eosTokenId: null, useCache: false });
    const s3 = model.generate([p1, p2], { maxNewTokens: 8, temperature: 1.5, topP: 0.95, seed: 6, eosTokenId: null });
    t.same(s1, s2, 'same seed, same samples (with or without cache)');
    t.notSame(s1, s3, 'another seed, other samples');
    // stop at eos
    const eos = cached[0][1];
    const stopped = model.generate([p1], { maxNewTokens: 6, eosTokenId: eos })[0];
    t.same(stopped, cached[0].slice(0, cached[0].indexOf(eos) + 1), 'stops after eos');
    const eos2 = cached[0][3];
    const stopped2 = model.generate([p1], { maxNewTokens: 6, eosTokenId: [V - 1, eos2] })[0];
    t.same(stopped2, cached[0].slice(0, cached[0].indexOf(eos2) + 1), 'stops at any of several eos ids');
  });

  t.test(`${arch}: LoRA stacking, negation, save/load`, async (t) => {
    const B = 2;
    const T = 5;
    const ids = randomIds(B * T, model.config.vocabSize, 21);
    const base = model.forward(ids, [B, T]).logits;
    const mods = model.linearModules();
    const targets = mods.filter(([n]) => /(c_attn|q_proj|v_proj|down_proj|mlp\.c_proj|experts\.1\.w2|gate)$/.test(n));
    t.ok(targets.length >= 2, `targets ${targets.map((x) => x[0]).join(', ')}`);
    const a = createLora('a', targets, { r: 4, alpha: 8, seed: 1, initBStd: 0.3, fanInFanOut: arch === 'gpt2' });
    const b = createLora('b', targets.slice(0, 1), { r: 2, alpha: 2, seed: 2, initBStd: 0.3 });
    model.setAdapters([{ adapter: a }]);
    const withA = model.forward(ids, [B, T]).logits;
    t.ok(maxAbsDiff(withA.data, base.data) > 1e-3, 'adapter changes outputs');
    model.setAdapters([{ adapter: a, scale: 1 }, { adapter: a, scale: -1 }]);
    t.ok(maxAbsDiff(model.forward(ids, [B, T]).logits.data, base.data) < 1e-5, '+1 and −1 of the same adapter cancel');
    model.setAdapters([{ adapter: a, scale: 0.5 }, { adapter: a, scale: 0.5 }]);
    t.ok(maxAbsDiff(model.forward(ids, [B, T]).logits.data, withA.data) < 1e-5, 'two halves make one');
    model.setAdapters([{ adapter: a }, { adapter: b, scale: -2 }]);
    const ab = model.forward(ids, [B, T]).logits;
    t.ok(maxAbsDiff(ab.data, withA.data) > 1e-4, 'a second adapter adds its own delta');

    // save → load round trip gives the same outputs
    const dir = path.join(tmp, `${arch}-a`);
    saveLora(dir, a, { baseModel: arch });
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf-8'));
    t.equal(cfg.peft_type, 'LORA');
    t.equal(cfg.r, 4);
    t.equal(cfg.lora_alpha, 8);
    t.equal(cfg.fan_in_fan_out, arch === 'gpt2');
    t.same(cfg.target_modules, targets.map((x) => x[0]).sort());
    const a2 = loadLora(dir);
    model.setAdapters([{ adapter: a2 }]);
    t.ok(maxAbsDiff(model.forward(ids, [B, T]).logits.data, withA.data) === 0, 'reloaded adapter gives identical logits');

    // training signal reaches A and B only
    model.setAdapters([{ adapter: a }]);
    const loss = sum(model.forward(ids, [B, T]).logits);
    loss.backward();
    for (const p of a.parameters()) t.ok(p.grad && p.grad.data.some((x) => x !== 0), 'LoRA parameter has a gradient');
    t.ok([...model.weights.values()].every((w) => w.grad === null), 'base weights get no gradient');

    // PEFT-style short target names select that projection in every layer
    const short = arch === 'gpt2' ? ['c_attn', 'mlp.c_proj'] : arch === 'mixtral' ? ['q_proj', 'w2'] : ['q_proj', 'down_proj'];
    const viaName = model.createLora('s', short, { r: 2, seed: 4 });
    const expect = model.config.layers * (arch === 'mixtral' ? 1 + model.config.experts : 2);
    t.equal(viaName.modules.size, expect, `${short.join(', ')} → ${viaName.targets().join(', ')}`);
    t.equal(viaName.fanInFanOut, arch === 'gpt2');
    model.setAdapters([{ adapter: viaName }]);
    t.ok(maxAbsDiff(model.forward(ids, [B, T]).logits.data, base.data) === 0, 'a fresh adapter (B = 0) is the identity edit');
    t.throws(() => model.createLora('x', ['nonexistent_proj'], { r: 1 }), /matches no linear module/);

    // lora_B bias (PEFT lora_bias, LEACE-style): with B = 0 the edit adds factor·bias to the module output,
    // the same as adding it at the matching site with a hook
    const [mod, site] = arch === 'gpt2' ? ['transformer.h.0.mlp.c_proj', 'layers.0.mlp']
      : arch === 'mixtral' ? ['model.layers.0.self_attn.o_proj', 'layers.0.attn'] : ['model.layers.0.mlp.down_proj', 'layers.0.mlp'];
    const withBias = model.createLora('bias', [mod], { r: 2, alpha: 4, seed: 5 });
    const H = model.config.hidden;
    const bvec = randn([H], new Rng(17), 0.5, { requiresGrad: true });
    withBias.modules.get(mod)!.bias = bvec;
    model.setAdapters([{ adapter: withBias, scale: -1.5 }]);
    const viaLora = model.forward(ids, [B, T]).logits;
    model.setAdapters([]);
    const viaHook = model.forward(ids, [B, T], { hooks: { [site]: { add: { value: mul(bvec.detach(), -1.5 * 2) } } } }).logits;
    t.ok(maxAbsDiff(viaLora.data, viaHook.data) < 1e-5, 'bias edit = hook add of factor·bias');
    const bdir = path.join(tmp, `${arch}-bias`);
    saveLora(bdir, withBias);
    t.equal(JSON.parse(fs.readFileSync(path.join(bdir, 'adapter_config.json'), 'utf-8')).lora_bias, true);
    const reb = loadLora(bdir);
    t.same(Array.from(reb.modules.get(mod)!.bias!.data), Array.from(bvec.data), 'bias survives save/load');
    t.equal(reb.parameters().length, 3);

    // lm_head is a LoRA target whether or not it is tied to the embeddings
    const headLora = model.createLora('head', ['lm_head'], { r: 2, seed: 8, initBStd: 0.5 });
    t.same(headLora.targets(), ['lm_head']);
    model.setAdapters([{ adapter: headLora }]);
    t.ok(maxAbsDiff(model.forward(ids, [B, T]).logits.data, base.data) > 1e-4, 'LoRA on lm_head changes logits');

    // a target that is not a module is refused
    const bad = createLora('bad', [['model.layers.99.mlp.down_proj', 4, 4]], { r: 1 });
    t.throws(() => model.setAdapters([{ adapter: bad }]), /not a linear module/);
    model.setAdapters([]);
    t.ok(maxAbsDiff(model.forward(ids, [B, T]).logits.data, base.data) === 0, 'clearing adapters restores the base');
  });
}

t.test('mixtral: expert sites sum to the MoE output; router patch changes routing', async (t) => {
  const model = models.mixtral;
  const ids = randomIds(8, model.config.vocabSize, 31);
  const E = model.config.experts;
  const caps = new Map<string, Tensor>();
  const hooks: Hooks = { 'layers.1.mlp': { capture: (x) => void caps.set('mlp', x) } };
  for (let e = 0; e < E; e++) hooks[`layers.1.experts.${e}`] = { capture: (x) => void caps.set(`e${e}`, x) };
  const out = model.forward(ids, [1, 8], { hooks });
  const total = new Float32Array(caps.get('mlp')!.size);
  for (let e = 0; e < E; e++) caps.get(`e${e}`)!.data.forEach((v, i) => { total[i] += v; });
  t.ok(maxAbsDiff(total, caps.get('mlp')!.data) < 1e-5, 'Σ experts = mlp');
  // each token uses exactly top-k experts
  const H = model.config.hidden;
  for (let tok = 0; tok < 8; tok++) {
    let used = 0;
    for (let e = 0; e < E; e++) if (caps.get(`e${e}`)!.data.subarray(tok * H, (tok + 1) * H).some((v) => v !== 0)) used++;
    t.equal(used, model.config.expertsPerTok, `token ${tok} routed to ${used} experts`);
  }
  t.equal(out.routerLogits!.length, model.config.layers);
  // zeroing an expert's contribution changes the output
  const zeroed = model.forward(ids, [1, 8], { hooks: { 'layers.1.experts.0': { fn: (x) => mul(x, 0) } } });
  const used0 = caps.get('e0')!.data.some((v) => v !== 0);
  t.equal(maxAbsDiff(zeroed.logits.data, out.logits.data) > 1e-5, used0, 'removing expert 0 matters iff it was used');
});
