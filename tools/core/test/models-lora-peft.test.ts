/**
 * loadLora against hand-made PEFT adapter directories (adapter_config.json +
 * adapter_model.safetensors written to a temp dir): use_rslora, rank_pattern
 * and alpha_pattern give exactly PEFT's delta, checked on the weights the
 * adapter folds into; any config key the loader cannot honour is refused
 * with a message naming it.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Rng } from '../src/util/random.js';
import { ModelLoadError, loadLora, loadModel, peftPatternKey, saveLora, writeSafetensors, type CausalLM } from '../src/models/index.js';
import { foldAdapters } from '../src/merge/fold.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cat-peft-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

const llama = loadModel(path.join(ROOT, 'fixtures/golden/llama'), { tokenizer: false }).model;
const gpt2 = loadModel(path.join(ROOT, 'fixtures/golden/gpt2'), { tokenizer: false }).model;

interface FileModule {
  rank: number;
  A: Float32Array; // [rank, in]
  B: Float32Array; // [out, rank]
  bias?: Float32Array; // [out]
}

let n = 0;
/** Write a PEFT adapter directory with random A/B of the given ranks on `mods` of `model`. */
function peftDir(model: CausalLM, config: Record<string, unknown>, ranks: Record<string, number>, opts: { bias?: boolean } = {}): { dir: string; file: Map<string, FileModule> } {
  const dir = path.join(tmp, `a${n++}`);
  fs.mkdirSync(dir);
  const rng = new Rng(n);
  const dims = new Map(model.linearModules().map(([m, i, o]) => [m, [i, o] as const]));
  const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
  const file = new Map<string, FileModule>();
  for (const [mod, rank] of Object.entries(ranks)) {
    const [fin, fout] = dims.get(mod)!;
    const A = Float32Array.from({ length: rank * fin }, () => rng.normal() * 0.1);
    const B = Float32Array.from({ length: fout * rank }, () => rng.normal() * 0.1);
    tensors[`base_model.model.${mod}.lora_A.weight`] = { shape: [rank, fin], data: A };
    tensors[`base_model.model.${mod}.lora_B.weight`] = { shape: [fout, rank], data: B };
    const m: FileModule = { rank, A, B };
    if (opts.bias) {
      m.bias = Float32Array.from({ length: fout }, () => rng.normal() * 0.1);
      tensors[`base_model.model.${mod}.lora_B.bias`] = { shape: [fout], data: m.bias };
    }
    file.set(mod, m);
  }
  writeSafetensors(path.join(dir, 'adapter_model.safetensors'), tensors, { format: 'pt' });
  const cfg = { peft_type: 'LORA', task_type: 'CAUSAL_LM', bias: 'none', lora_dropout: 0.05, target_modules: Object.keys(ranks), ...config };
  fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify(cfg));
  return { dir, file };
}

/**
 * Largest |applied − expected| over every module: applied is what folding the
 * loaded adapter adds to the base weight (and bias), expected is
 * scale · B·A (and scale · bias) from the file, in float64.
 */
function deltaError(model: CausalLM, dir: string, file: Map<string, FileModule>, scales: Record<string, number>): number {
  const adapter = loadLora(dir);
  const { weights } = foldAdapters(model, [{ adapter }]);
  let err = 0;
  for (const [mod, m] of file) {
    const s = scales[mod];
    const W0 = model.weight(`${mod}.weight`).data;
    const W1 = weights.get(`${mod}.weight`)!.data;
    const fin = m.A.length / m.rank, fout = m.B.length / m.rank;
    const inOut = model.arch.layout(mod) === 'in_out';
    for (let o = 0; o < fout; o++) {
      for (let i = 0; i < fin; i++) {
        let d = 0;
        for (let k = 0; k < m.rank; k++) d += m.B[o * m.rank + k] * m.A[k * fin + i];
        const at = inOut ? i * fout + o : o * fin + i;
        err = Math.max(err, Math.abs(W1[at] - W0[at] - s * d));
      }
      if (m.bias) {
        const b0 = model.weight(`${mod}.bias`).data, b1 = weights.get(`${mod}.bias`)!.data;
        err = Math.max(err, Math.abs(b1[o] - b0[o] - s * m.bias[o]));
      }
    }
  }
  return err;
}

const Q1 = 'model.layers.1.self_attn.q_proj';
const Q0 = 'model.layers.0.self_attn.q_proj';
const D0 = 'model.layers.0.mlp.down_proj';
const TOL = 1e-5;

t.test('peftPatternKey follows PEFT: whole name or dot-separated suffix, as a regex, first key wins', async (t) => {
  t.equal(peftPatternKey(['q_proj'], Q1), 'q_proj');
  t.equal(peftPatternKey(['proj'], Q1), undefined, 'a partial name part does not match');
  t.equal(peftPatternKey([Q1], Q1), Q1, 'the full name matches');
  t.equal(peftPatternKey(['layers.1.self_attn.q_proj'], Q0), undefined, 'another layer does not');
  t.equal(peftPatternKey(['layers\\.[01]\\..*q_proj'], Q0), 'layers\\.[01]\\..*q_proj', 'regex syntax');
  t.equal(peftPatternKey(['self_attn', 'q_proj'], Q1), 'q_proj', 'must reach the end of the name');
  t.equal(peftPatternKey(['q_proj', 'layers.1.self_attn.q_proj'], Q1), 'q_proj', 'first key in config order wins');
  t.throws(() => peftPatternKey(['(?P<x>q)'], Q1), ModelLoadError, 'a key JS cannot read is refused');
});

t.test('plain config: scale alpha / r', async (t) => {
  const { dir, file } = peftDir(llama, { r: 2, lora_alpha: 6 }, { [Q1]: 2, [D0]: 2 });
  t.ok(deltaError(llama, dir, file, { [Q1]: 3, [D0]: 3 }) < TOL);
  const a = loadLora(dir);
  t.equal(a.r, 2);
  t.equal(a.alpha, 6, 'no normalisation needed: tensors and alpha as saved');
});

t.test('use_rslora: scale alpha / sqrt(r)', async (t) => {
  const { dir, file } = peftDir(llama, { r: 4, lora_alpha: 6, use_rslora: true }, { [Q1]: 4, [D0]: 4 });
  t.ok(deltaError(llama, dir, file, { [Q1]: 3, [D0]: 3 }) < TOL, 'alpha/sqrt(r) = 6/2 = 3, not 6/4');
  // the same files without use_rslora apply half that
  fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', r: 4, lora_alpha: 6 }));
  t.ok(deltaError(llama, dir, file, { [Q1]: 1.5, [D0]: 1.5 }) < TOL);
});

t.test('rank_pattern: per-module rank, padded to one adapter rank without changing the delta', async (t) => {
  const { dir, file } = peftDir(llama, { r: 2, lora_alpha: 8, rank_pattern: { 'layers.1.self_attn.q_proj': 4 } }, { [Q1]: 4, [Q0]: 2, [D0]: 2 });
  t.ok(deltaError(llama, dir, file, { [Q1]: 2, [Q0]: 4, [D0]: 4 }) < TOL, 'q1: 8/4, others 8/2');
  const a = loadLora(dir);
  t.equal(a.r, 4, 'the adapter takes the largest rank');
  t.same(a.modules.get(Q0)!.A.shape, [4, llama.config.hidden]);
  // saved again (one rank, one alpha, no patterns) it means the same
  const again = path.join(tmp, 'resaved');
  saveLora(again, a);
  t.notOk('rank_pattern' in JSON.parse(fs.readFileSync(path.join(again, 'adapter_config.json'), 'utf-8')));
  t.ok(deltaError(llama, again, file, { [Q1]: 2, [Q0]: 4, [D0]: 4 }) < TOL, 'round trip keeps the delta');
  // a rank_pattern the tensors do not have is refused, naming the module and the key
  fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', r: 2, lora_alpha: 8, rank_pattern: { q_proj: 4 } }));
  t.throws(() => loadLora(dir), /module model\.layers\.0\.self_attn\.q_proj has lora_A \[2, \d+\].*rank_pattern "q_proj" → 4/);
});

t.test('alpha_pattern: per-module alpha', async (t) => {
  const { dir, file } = peftDir(llama, { r: 2, lora_alpha: 4, alpha_pattern: { down_proj: 16 } }, { [Q1]: 2, [D0]: 2 });
  t.ok(deltaError(llama, dir, file, { [Q1]: 2, [D0]: 8 }) < TOL, 'down_proj 16/2, q_proj 4/2');
});

t.test('rslora with rank and alpha patterns together', async (t) => {
  const cfg = { r: 4, lora_alpha: 4, use_rslora: true, rank_pattern: { [D0]: 1 }, alpha_pattern: { 'layers.1.self_attn.q_proj': 12 } };
  const { dir, file } = peftDir(llama, cfg, { [Q1]: 4, [Q0]: 4, [D0]: 1 });
  t.ok(deltaError(llama, dir, file, { [Q1]: 6, [Q0]: 2, [D0]: 4 }) < TOL, 'q1 12/√4, q0 4/√4, down 4/√1');
});

t.test('lora_B bias (GPT-2 Conv1D) is scaled with its module', async (t) => {
  const C = 'transformer.h.0.mlp.c_fc', P = 'transformer.h.1.attn.c_proj';
  const { dir, file } = peftDir(gpt2, { r: 2, lora_alpha: 2, fan_in_fan_out: true, lora_bias: true, alpha_pattern: { c_fc: 10 } }, { [C]: 2, [P]: 2 }, { bias: true });
  t.ok(deltaError(gpt2, dir, file, { [C]: 5, [P]: 1 }) < TOL);
});

t.test('config keys that change the delta and are not implemented are refused by name', async (t) => {
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [{ use_dora: true }, /"use_dora" = true: DoRA/],
    [{ modules_to_save: ['lm_head'] }, /"modules_to_save" = \["lm_head"\]/],
    [{ bias: 'all' }, /"bias" = "all"/],
    [{ bias: 'lora_only' }, /"bias" = "lora_only"/],
    [{ layer_replication: [[0, 2]] }, /"layer_replication"/],
    [{ trainable_token_indices: [1, 2] }, /"trainable_token_indices"/],
    [{ target_parameters: ['experts.w1'] }, /"target_parameters"/],
    [{ fancy_new_scaling: 2 }, /unknown key "fancy_new_scaling" = 2/],
    [{ rank_pattern: { q_proj: 1.5 } }, /"rank_pattern" entry "q_proj" must be a positive integer/],
    [{ alpha_pattern: ['x'] }, /"alpha_pattern" must be an object/],
    [{ use_rslora: 'yes' }, /"use_rslora" must be true or false/],
  ];
  for (const [extra, re] of cases) {
    const { dir } = peftDir(llama, { r: 2, lora_alpha: 2, ...extra }, { [Q1]: 2 });
    t.throws(() => loadLora(dir), re, JSON.stringify(extra));
  }
});

t.test('keys that are off, or only describe training, load', async (t) => {
  const off = {
    use_dora: false, modules_to_save: null, layer_replication: null, trainable_token_indices: null, fancy_new_flag: false,
    init_lora_weights: 'gaussian', layers_to_transform: [1], layers_pattern: 'layers', exclude_modules: ['lm_head'],
    revision: null, inference_mode: true, megatron_core: 'megatron.core', loftq_config: {}, peft_version: '0.17.0',
  };
  const { dir, file } = peftDir(llama, { r: 2, lora_alpha: 2, ...off }, { [Q1]: 2 });
  t.ok(deltaError(llama, dir, file, { [Q1]: 1 }) < TOL);
});
