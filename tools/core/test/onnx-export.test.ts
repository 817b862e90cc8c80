/**
 * ONNX export and onnxruntime-node (issue 23): for the dense and MoE fixture
 * models and the golden model of every family, with and without an adapter,
 * onnxruntime's logits on the export match our engine's (max |Δ| ≤ 1e-4 on
 * real tokens, right- and left-padded batches; router logits too) and greedy
 * generations are identical (also step by step through a --kv-cache export's
 * past key/values); the bytes are deterministic and carry their
 * provenance in metadata_props; a damaged model.onnx is a ModelLoadError
 * naming the file. `BENCH_PARTS=parity node scripts/bench/onnx.bench.mjs` runs
 * the same check on 50 prompts per model.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CausalLM, loadLora, loadModel, parseConfig, type LoraAdapter } from '../src/models/index.js';
import { noGrad } from '../src/tensor/index.js';
import { Rng } from '../src/util/random.js';
import { decodeModel, OnnxLM, OnnxSession, onnxModel, OPSET, writeOnnxExport } from '../src/onnx/index.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const MODELS: Array<[string, string]> = [
  ['dense', 'fixtures/models/dense'],
  ['moe', 'fixtures/models/moe'],
  ...['gpt2', 'llama', 'llama3', 'qwen2', 'mixtral'].map((f): [string, string] => [f, `fixtures/golden/${f}`]),
];
const TOL = 1e-4;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'onnx-export-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** A random adapter on every linear module (the LM head and MoE routers included), small enough to keep answers sane. */
function everywhere(model: CausalLM, seed: number): LoraAdapter {
  return model.createLora(`every-${seed}`, model.linearModules().map(([n]) => n), { r: 2, seed, initBStd: 0.05 });
}

/** Prompts of 2..maxLen tokens, seeded. */
function prompts(V: number, n: number, maxLen: number, seed: number): number[][] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => Array.from({ length: 2 + rng.int(maxLen - 1) }, () => rng.int(V)));
}

/** ids and mask of a batch, padded on the right (scoring) or on the left (generation). */
function batch(ps: number[][], left: boolean, pad: number): { ids: Int32Array; mask: Uint8Array; T: number } {
  const T = Math.max(...ps.map((p) => p.length));
  const ids = new Int32Array(ps.length * T).fill(pad);
  const mask = new Uint8Array(ps.length * T);
  ps.forEach((p, b) => {
    const o = b * T + (left ? T - p.length : 0);
    ids.set(p, o);
    mask.fill(1, o, o + p.length);
  });
  return { ids, mask, T };
}

function maxDiffReal(a: Float32Array, b: Float32Array, mask: Uint8Array): number {
  const D = a.length / mask.length;
  let d = 0;
  for (let i = 0; i < a.length; i++) if (mask[Math.floor(i / D)]) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

for (const [name, rel] of MODELS) {
  const dir = path.join(ROOT, rel);
  t.test(`${name}: onnxruntime on the export = our engine`, async (t) => {
    const { model } = loadModel(dir, { tokenizer: false });
    const c = model.config;
    const adapterDir = path.join(dir, 'adapter');
    const adapter = fs.existsSync(adapterDir) ? loadLora(adapterDir) : everywhere(model, 11);
    const onnx = new OnnxLM(model, { modelDir: dir, baseSha256: `test-${name}`, dir: path.join(tmp, name), threads: 1 });
    const maxLen = Math.min(12, c.maxPositions || 12);
    const ps = prompts(c.vocabSize, 8, maxLen, 5);
    const pad = c.padTokenId ?? 0;
    let baseLogits: Float32Array | null = null;
    for (const active of [[], [{ adapter }]]) {
      const what = active.length ? `with ${adapter.name}` : 'base';
      model.setAdapters(active);
      onnx.setAdapters(active);
      for (const left of [false, true]) {
        const { ids, mask, T } = batch(ps, left, pad);
        const want = noGrad(() => model.forward(ids, [ps.length, T], { attentionMask: mask }));
        const got = onnx.forward(ids, [ps.length, T], { attentionMask: mask });
        const d = maxDiffReal(got.logits.data, want.logits.data, mask);
        t.ok(d <= TOL, `${what}, ${left ? 'left' : 'right'}-padded: max |Δ logits| ${d.toExponential(2)} ≤ ${TOL}`);
        if (!left && !baseLogits) baseLogits = want.logits.data;
        // the adapter must matter, or "with an adapter" would check nothing
        else if (!left) t.ok(maxDiffReal(want.logits.data, baseLogits!, mask) > 1e-3, `${what} changes the logits`);
        if (want.routerLogits) {
          const dr = Math.max(...want.routerLogits.map((r, l) => maxDiffReal(got.routerLogits![l].data, r.data, mask)));
          t.ok(dr <= TOL, `${what}: router logits max |Δ| ${dr.toExponential(2)}`);
        }
      }
      const gen = { maxNewTokens: 4, greedy: true, eosTokenId: null };
      const g0 = noGrad(() => model.generate(ps.slice(0, 4), gen));
      t.same(onnx.generate(ps.slice(0, 4), gen), g0, `${what}: greedy generations identical`);
    }
    model.setAdapters([]);
    onnx.close();
  });
}

t.test('the export is deterministic and records its provenance', async (t) => {
  const dir = path.join(ROOT, 'fixtures/golden/mixtral');
  const { model } = loadModel(dir, { tokenizer: false });
  const adapter = loadLora(path.join(dir, 'adapter'));
  const active = [{ adapter, scale: -1 }];
  const a = onnxModel(model, active, 'f'.repeat(64), { described: [{ id: 'x', version: 2, sha256: 'a'.repeat(64) }] });
  const b = onnxModel(model, active, 'f'.repeat(64), { described: [{ id: 'x', version: 2, sha256: 'a'.repeat(64) }] });
  t.ok(Buffer.from(a.bytes).equals(Buffer.from(b.bytes)), `byte-identical (${a.bytes.length} bytes)`);
  const m = decodeModel(a.bytes);
  t.equal(m.opset_import[0].version, OPSET);
  t.ok(OPSET >= 17);
  const props = Object.fromEntries(m.metadata_props.map((p) => [p.key, p.value]));
  t.equal(props['catechism.base_model_sha256'], 'f'.repeat(64));
  const recorded = JSON.parse(props['catechism.adapters']);
  t.match(recorded, [{ id: 'x', version: 2, sha256: 'a'.repeat(64), scale: -1 }]);
  t.match(recorded[0].lora_sha256, /^[0-9a-f]{64}$/);
  t.same(JSON.parse(props['catechism.export_options']), { opset: OPSET, kv_cache: false, router_logits: true });
  t.same(m.graph.input.map((i) => i.name), ['input_ids', 'attention_mask']);
  t.equal(m.graph.output[0].name, 'logits');
  // another scale is another model
  const c = onnxModel(model, [{ adapter, scale: 1 }], 'f'.repeat(64));
  t.notOk(Buffer.from(c.bytes).equals(Buffer.from(a.bytes)));
});

t.test('large models: weights in model.onnx.data (external data), same logits', async (t) => {
  const dir = path.join(ROOT, 'fixtures/golden/llama');
  const { model } = loadModel(dir, { tokenizer: false });
  const out = path.join(tmp, 'external');
  // a threshold of 1 byte stands in for a model over 2 GiB
  const { files, info } = writeOnnxExport(dir, model, [], out, 'x'.repeat(64), { externalDataBytes: 1 });
  t.same(files.slice(0, 2), ['model.onnx', 'model.onnx.data']);
  t.match(info.external_data, { file: 'model.onnx.data', sha256: /^[0-9a-f]{64}$/ });
  t.ok(fs.statSync(path.join(out, 'model.onnx')).size < 64 * 1024, 'model.onnx holds the graph, not the weights');
  const ids = Int32Array.from([1, 5, 9, 13, 2]);
  const want = noGrad(() => model.forward(ids, [1, 5])).logits.data;
  const s = OnnxSession.open(path.join(out, 'model.onnx'));
  const got = s.run(ids, new Uint8Array(5).fill(1), 1, 5).logits;
  s.close();
  t.ok(maxDiffReal(got, want, new Uint8Array(5).fill(1)) <= TOL, 'logits match');
});

t.test('--kv-cache export: step-by-step greedy decoding with past key/values = our engine', async (t) => {
  for (const fam of ['gpt2', 'llama', 'mixtral']) {
    const dir = path.join(ROOT, 'fixtures/golden', fam);
    const { model } = loadModel(dir, { tokenizer: false });
    const c = model.config;
    const adapter = loadLora(path.join(dir, 'adapter'));
    model.setAdapters([{ adapter }]);
    const out = path.join(tmp, `kv-${fam}`);
    const { info } = writeOnnxExport(dir, model, [{ adapter }], out, 'k'.repeat(64), { kvCache: true });
    t.equal(info.options.kv_cache, true);
    const s = OnnxSession.open(path.join(out, 'model.onnx'));
    const ps = prompts(c.vocabSize, 3, 8, 9);
    const want = noGrad(() => model.generate(ps, { maxNewTokens: 4, greedy: true, eosTokenId: null }));
    // left-padded prompt, then one token per step with the cache, as generate does
    const B = ps.length;
    let { ids, mask, T } = batch(ps, true, c.padTokenId ?? 0);
    let past: Record<string, { data: Float32Array; dims: number[] }> = {};
    for (let l = 0; l < c.layers; l++) {
      for (const kv of ['key', 'value']) past[`past_key_values.${l}.${kv}`] = { data: new Float32Array(0), dims: [B, c.kvHeads, 0, c.headDim] };
    }
    let fullMask = Array.from(mask);
    const got: number[][] = ps.map(() => []);
    for (let step = 0; step < 4; step++) {
      const o = s.run(ids, Uint8Array.from(fullMask), B, T, past);
      const next: number[] = [];
      for (let b = 0; b < B; b++) {
        const row = o.logits.subarray((b * T + T - 1) * c.vocabSize, (b * T + T) * c.vocabSize);
        let best = 0;
        for (let v = 1; v < row.length; v++) if (row[v] > row[best]) best = v;
        next.push(best);
        got[b].push(best);
      }
      past = {};
      for (let l = 0; l < c.layers; l++) for (const kv of ['key', 'value']) past[`past_key_values.${l}.${kv}`] = o.all[`present.${l}.${kv}`];
      const S = fullMask.length / B;
      fullMask = Array.from({ length: B * (S + 1) }, (_, i) => (i % (S + 1) === S ? 1 : fullMask[Math.floor(i / (S + 1)) * S + (i % (S + 1))]));
      ids = Int32Array.from(next);
      T = 1;
    }
    s.close();
    t.same(got, want, `${fam}: greedy with the cache = our engine (${JSON.stringify(got)})`);
  }
});

t.test('sliding window (mistral): the engine within the window, masked beyond it', async (t) => {
  const cfg = { model_type: 'mistral', vocab_size: 64, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 64 };
  const windowed = CausalLM.random(parseConfig({ ...cfg, sliding_window: 4 }), 3);
  const full = new CausalLM(parseConfig(cfg), windowed.weights);
  const run = (m: CausalLM, T: number) => {
    const file = path.join(tmp, `sw-${m.config.slidingWindow}-${T}.onnx`);
    fs.writeFileSync(file, onnxModel(m, [], 'sw').bytes);
    const s = OnnxSession.open(file);
    const o = s.run(Int32Array.from({ length: T }, (_, i) => (i * 7) % 64), new Uint8Array(T).fill(1), 1, T).logits;
    s.close();
    return o;
  };
  const ids = Int32Array.from({ length: 4 }, (_, i) => (i * 7) % 64);
  const want = noGrad(() => windowed.forward(ids, [1, 4])).logits.data;
  t.ok(maxDiffReal(run(windowed, 4), want, new Uint8Array(4).fill(1)) <= TOL, 'within the window: the engine\'s logits');
  const a = run(windowed, 8), b = run(full, 8);
  const V = 64;
  t.ok(maxDiffReal(a.subarray(0, 4 * V), b.subarray(0, 4 * V), new Uint8Array(4).fill(1)) <= 1e-6, 'the first window-many positions see no difference');
  t.ok(maxDiffReal(a.subarray(7 * V), b.subarray(7 * V), new Uint8Array(1).fill(1)) > 1e-4, 'position 7 no longer sees the first tokens');
});

t.test('a damaged model.onnx is a ModelLoadError naming the file', async (t) => {
  const file = path.join(tmp, 'bad.onnx');
  fs.writeFileSync(file, 'this is not a protobuf');
  t.throws(() => OnnxSession.open(file), { name: 'ModelLoadError', message: new RegExp(`${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: onnxruntime cannot load`) });
  t.throws(() => OnnxSession.open(path.join(tmp, 'missing.onnx')), { name: 'ModelLoadError', message: /missing\.onnx: no such ONNX model file/ });
});
