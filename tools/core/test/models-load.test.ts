/**
 * safetensors reading/writing and model-directory loading, including every
 * kind of bad input the loader must reject with a clear message.
 */
import t, { type Test } from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  Checkpoint, ModelLoadError, SafetensorsError, SafetensorsFile, loadModel, readSafetensors, serializeSafetensors,
  writeSafetensors, Tokenizer, parseConfig, CausalLM,
} from '../src/models/index.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const GOLDEN = path.join(ROOT, 'fixtures/golden');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cat-models-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** A safetensors file from a raw header object and data bytes (no validation). */
function rawFile(header: unknown, data: Uint8Array = new Uint8Array(0), headerLen?: number): Buffer {
  const h = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const out = Buffer.alloc(8 + h.length + data.length);
  out.writeBigUInt64LE(BigInt(headerLen ?? h.length), 0);
  h.copy(out, 8);
  out.set(data, 8 + h.length);
  return out;
}

function throwsMatching(t: Test, fn: () => unknown, cls: new (...a: never[]) => Error, re: RegExp, what: string): void {
  try {
    fn();
    t.fail(`${what}: no error`);
  } catch (e) {
    t.ok(e instanceof cls && re.test((e as Error).message), `${what}: ${(e as Error).message}`);
  }
}

t.test('safetensors round trip: F32, F16, BF16, metadata, sorted aligned header', async (t) => {
  const a = Float32Array.from([1, -2.5, 3.25, 0, 65504, 1e-3]);
  const b = Float32Array.from([0.1, 0.2, 0.3, -0.4]);
  const file = path.join(tmp, 'rt.safetensors');
  writeSafetensors(file, {
    'z.weight': { shape: [2, 3], data: a },
    'a.half': { shape: [4], data: b, dtype: 'F16' },
    'm.bf': { shape: [2, 2], data: b, dtype: 'BF16' },
    'empty': { shape: [0, 3], data: new Float32Array(0) },
  }, { format: 'pt' });
  t.same(fs.readdirSync(tmp).filter((f) => f.includes('.tmp')), [], 'no temp file left behind');
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  t.equal(n % 8, 0, 'header length is a multiple of 8');
  const header = JSON.parse(buf.subarray(8, 8 + n).toString());
  t.same(Object.keys(header).filter((k) => k !== '__metadata__'), ['a.half', 'empty', 'm.bf', 'z.weight'], 'sorted names');
  t.same(header.__metadata__, { format: 'pt' });
  const f = readSafetensors(file);
  t.same(Array.from(f.float32('z.weight')), Array.from(a));
  t.same(f.info('z.weight').shape, [2, 3]);
  // F16: exact for these values up to half precision
  const h = f.float32('a.half');
  for (let i = 0; i < b.length; i++) t.ok(Math.abs(h[i] - b[i]) <= 1e-3 * Math.abs(b[i]), `f16 ${h[i]} ≈ ${b[i]}`);
  const bf = f.float32('m.bf');
  for (let i = 0; i < b.length; i++) t.ok(Math.abs(bf[i] - b[i]) <= 8e-3 * Math.abs(b[i]), `bf16 ${bf[i]} ≈ ${b[i]}`);
  t.equal(f.float32('empty').length, 0);
  t.same(f.metadata, { format: 'pt' });
});

t.test('F32 tensors are views over the file buffer when aligned', async (t) => {
  const bytes = serializeSafetensors({ w: { shape: [4], data: Float32Array.from([1, 2, 3, 4]) } });
  const f = new SafetensorsFile(bytes, 'mem');
  const w = f.float32('w');
  t.equal(w.buffer, bytes.buffer, 'no copy');
  t.same(Array.from(w), [1, 2, 3, 4]);
});

t.test('half-precision conversion agrees with an independent decoder', async (t) => {
  // bits → value by the IEEE 754 formula (independent of the kernels)
  const f16 = (h: number) => {
    const s = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 0x1f;
    const m = h & 0x3ff;
    if (e === 0) return s * m * 2 ** -24;
    if (e === 31) return m ? NaN : s * Infinity;
    return s * (1 + m / 1024) * 2 ** (e - 15);
  };
  const bits = Uint16Array.from([0x0000, 0x3c00, 0xc000, 0x7bff, 0x0001, 0x03ff, 0x3555, 0xfc00, 0x8000, 0x2e66]);
  const hdr = { x: { dtype: 'F16', shape: [bits.length], data_offsets: [0, bits.byteLength] }, y: { dtype: 'BF16', shape: [bits.length], data_offsets: [bits.byteLength, 2 * bits.byteLength] } };
  const data = new Uint8Array(2 * bits.byteLength);
  data.set(new Uint8Array(bits.buffer), 0);
  data.set(new Uint8Array(bits.buffer), bits.byteLength);
  const f = new SafetensorsFile(rawFile(hdr, data), 'mem');
  const x = f.float32('x');
  const y = f.float32('y');
  const u32 = new Uint32Array(1);
  const f32 = new Float32Array(u32.buffer);
  for (let i = 0; i < bits.length; i++) {
    t.equal(x[i], f16(bits[i]), `f16 0x${bits[i].toString(16)}`);
    u32[0] = bits[i] << 16; // bf16 is the top half of a float32
    t.equal(y[i], f32[0], `bf16 0x${bits[i].toString(16)}`);
  }
});

t.test('corrupt safetensors are rejected with the file and tensor named', async (t) => {
  const good = { w: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };
  const eight = new Uint8Array(8);
  const cases: Array<[string, Buffer, RegExp]> = [
    ['too short', Buffer.from([1, 2, 3]), /too short/],
    ['header past EOF', rawFile(good, eight, 10_000), /runs past the end of the file/],
    ['non-JSON header', rawFile('{"w": nope', eight), /not valid JSON/],
    ['header not an object', rawFile('[1,2]', eight), /must be a JSON object/],
    ['unknown dtype', rawFile({ w: { dtype: 'F8', shape: [2], data_offsets: [0, 8] } }, eight), /tensor 'w': unknown dtype "F8"/],
    ['offsets past end', rawFile({ w: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, eight), /tensor 'w'.*past the end of the data/],
    ['size mismatch', rawFile({ w: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, eight), /tensor 'w'.*needs 12 bytes but data_offsets span 8/],
    ['reversed offsets', rawFile({ w: { dtype: 'F32', shape: [0], data_offsets: [8, 0] } }, eight), /reversed/],
    ['bad shape', rawFile({ w: { dtype: 'F32', shape: [-2], data_offsets: [0, 8] } }, eight), /shape must be/],
    ['overlap', rawFile({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, eight), /'a' and 'b' overlap/],
    ['bad metadata', rawFile({ ...good, __metadata__: { k: 1 } }, eight), /__metadata__/],
  ];
  for (const [what, bytes, re] of cases) {
    const file = path.join(tmp, `bad-${what.replace(/\W+/g, '_')}.safetensors`);
    fs.writeFileSync(file, bytes);
    throwsMatching(t, () => readSafetensors(file), SafetensorsError, new RegExp(`${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}|too short`), `${what} names the file`);
    throwsMatching(t, () => readSafetensors(file), SafetensorsError, re, what);
  }
  throwsMatching(t, () => readSafetensors(path.join(tmp, 'nope.safetensors')), SafetensorsError, /cannot read.*ENOENT/, 'missing file');
  const ok = new SafetensorsFile(rawFile(good, eight), 'mem');
  throwsMatching(t, () => ok.float32('x'), SafetensorsError, /no tensor 'x'/, 'absent tensor');
});

/** A copy of a golden model directory to break. */
function copyModel(arch: string, name: string): string {
  const dst = path.join(tmp, name);
  fs.cpSync(path.join(GOLDEN, arch), dst, { recursive: true });
  return dst;
}

t.test('bad model directories fail with clear messages', async (t) => {
  throwsMatching(t, () => loadModel(path.join(tmp, 'absent')), ModelLoadError, /does not exist/, 'missing directory');

  let d = copyModel('gpt2', 'noconfig');
  fs.rmSync(path.join(d, 'config.json'));
  throwsMatching(t, () => loadModel(d), ModelLoadError, /has no config\.json/, 'missing config.json');

  d = copyModel('gpt2', 'badjson');
  fs.writeFileSync(path.join(d, 'config.json'), '{"model_type": ');
  throwsMatching(t, () => loadModel(d), ModelLoadError, /config\.json: not valid JSON/, 'corrupt config.json');

  d = copyModel('gpt2', 'unknowntype');
  const cfg = JSON.parse(fs.readFileSync(path.join(d, 'config.json'), 'utf-8'));
  fs.writeFileSync(path.join(d, 'config.json'), JSON.stringify({ ...cfg, model_type: 'bert' }));
  throwsMatching(t, () => loadModel(d), ModelLoadError, /unknown model_type "bert"/, 'unknown model_type');

  d = copyModel('gpt2', 'noweights');
  fs.rmSync(path.join(d, 'model.safetensors'));
  throwsMatching(t, () => loadModel(d), ModelLoadError, /neither model\.safetensors nor model\.safetensors\.index\.json/, 'missing weights');

  d = copyModel('gpt2', 'notok');
  fs.rmSync(path.join(d, 'tokenizer.json'));
  throwsMatching(t, () => loadModel(d), ModelLoadError, /has no tokenizer\.json/, 'missing tokenizer.json');

  // a tensor missing: rewrite the checkpoint without one
  d = copyModel('gpt2', 'missingtensor');
  const ck = readSafetensors(path.join(d, 'model.safetensors'));
  const keep: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const n of ck.names()) if (n !== 'transformer.h.1.mlp.c_fc.bias') keep[n] = { shape: ck.info(n).shape, data: ck.float32(n).slice() };
  writeSafetensors(path.join(d, 'model.safetensors'), keep);
  throwsMatching(t, () => loadModel(d), ModelLoadError, /tensor 'transformer\.h\.1\.mlp\.c_fc\.bias' is missing/, 'missing tensor');

  // wrong shape: config says wider than the weights
  d = copyModel('gpt2', 'wrongshape');
  fs.writeFileSync(path.join(d, 'config.json'), JSON.stringify({ ...cfg, n_positions: 64 }));
  throwsMatching(t, () => loadModel(d), ModelLoadError, /'transformer\.wpe\.weight' has shape \[32, 32\] but config\.json implies \[64, 32\]/, 'wrong shape');

  // corrupt: truncated weight file
  d = copyModel('gpt2', 'truncated');
  const w = fs.readFileSync(path.join(d, 'model.safetensors'));
  fs.writeFileSync(path.join(d, 'model.safetensors'), w.subarray(0, w.length - 100));
  throwsMatching(t, () => loadModel(d), ModelLoadError, /model\.safetensors.*past the end of the data/, 'truncated safetensors');

  // sharded: a shard named by the index is missing
  d = copyModel('mixtral', 'missingshard');
  fs.rmSync(path.join(d, 'model-00002-of-00003.safetensors'));
  throwsMatching(t, () => loadModel(d), ModelLoadError, /names shard model-00002-of-00003\.safetensors, which is missing/, 'missing shard');

  // sharded: index points a tensor at the wrong shard
  d = copyModel('mixtral', 'wrongshard');
  const idx = JSON.parse(fs.readFileSync(path.join(d, 'model.safetensors.index.json'), 'utf-8'));
  const first = Object.keys(idx.weight_map)[0];
  idx.weight_map[first] = idx.weight_map[first] === 'model-00001-of-00003.safetensors' ? 'model-00002-of-00003.safetensors' : 'model-00001-of-00003.safetensors';
  fs.writeFileSync(path.join(d, 'model.safetensors.index.json'), JSON.stringify(idx));
  throwsMatching(t, () => loadModel(d), ModelLoadError, /is not in shard/, 'index disagrees with shards');

  d = copyModel('mixtral', 'pathshard');
  idx.weight_map[first] = '../../etc/passwd';
  fs.writeFileSync(path.join(d, 'model.safetensors.index.json'), JSON.stringify(idx));
  throwsMatching(t, () => loadModel(d), ModelLoadError, /bad file name/, 'shard path escaping the directory');
});

t.test('GPT-2 checkpoints saved without the transformer. prefix (and with attn.bias buffers) load the same', async (t) => {
  const d = copyModel('gpt2', 'noprefix');
  const ck = readSafetensors(path.join(d, 'model.safetensors'));
  const out: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const n of ck.names()) out[n.replace(/^transformer\./, '')] = { shape: ck.info(n).shape, data: ck.float32(n).slice() };
  out['h.0.attn.bias'] = { shape: [1, 1, 2, 2], data: Float32Array.from([1, 0, 1, 1]) };
  writeSafetensors(path.join(d, 'model.safetensors'), out);
  const a = loadModel(d).model;
  const b = loadModel(path.join(GOLDEN, 'gpt2')).model;
  const ids = Int32Array.from([5, 9, 13, 40]);
  t.same(Array.from(a.forward(ids, [1, 4]).logits.data), Array.from(b.forward(ids, [1, 4]).logits.data));
});

t.test('loads every golden model: dtypes, shards, tied embeddings', async (t) => {
  for (const arch of ['gpt2', 'llama', 'qwen2', 'mixtral']) {
    const dir = path.join(GOLDEN, arch);
    const { model, tokenizer } = loadModel(dir);
    t.ok(tokenizer, `${arch} tokenizer`);
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf-8'));
    t.equal(model.config.vocabSize, cfg.vocab_size);
    t.equal(model.config.modelType, arch);
  }
  const q = loadModel(path.join(GOLDEN, 'qwen2')).model;
  t.equal(q.config.qkvBias, true, 'qwen2 has q/k/v bias');
  t.equal(q.config.tieEmbeddings, true);
  t.equal(q.config.kvHeads, 1);
  t.equal(Checkpoint.open(path.join(GOLDEN, 'qwen2')).files.length, 2, 'qwen2 is sharded');
  const l = loadModel(path.join(GOLDEN, 'llama')).model;
  t.equal(l.config.qkvBias, false);
  // bf16 weights equal the bf16-rounded values: every value's low 16 bits are zero
  const u = new Uint32Array(l.weight('model.layers.0.self_attn.q_proj.weight').data.slice().buffer);
  t.ok(u.every((x) => (x & 0xffff) === 0), 'bf16 weights widened exactly');
});

t.test('tokenizer.json through @huggingface/tokenizers', async (t) => {
  const tok = Tokenizer.load(path.join(GOLDEN, 'gpt2'));
  const ids = tok.encode('the capital of france is paris');
  t.ok(ids.length > 0 && ids.length < 20, `encoded to ${ids.length} ids`);
  t.equal(tok.decode(ids), 'the capital of france is paris');
  t.equal(tok.tokenToId('<eos>'), 2);
  t.equal(tok.idToToken(0), '<pad>');
});

t.test('config parsing: families, defaults and refusals', async (t) => {
  const base = { hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1, num_attention_heads: 4, vocab_size: 50 };
  const m = parseConfig({ ...base, model_type: 'mistral', num_key_value_heads: 2, sliding_window: 4 });
  t.equal(m.family, 'llama');
  t.equal(m.kvHeads, 2);
  t.equal(m.slidingWindow, 4);
  t.equal(m.ropeTheta, 10000, 'default rope_theta');
  t.same(parseConfig({ ...base, model_type: 'llama', eos_token_id: [7, 9] }).eosTokenIds, [7, 9]);
  const model = CausalLM.random(m, 1);
  t.equal(model.forward(Int32Array.from([1, 2, 3, 4]), [1, 4]).logits.shape[1], 4, 'within the window');
  t.throws(() => model.forward(Int32Array.from([1, 2, 3, 4, 5]), [1, 5]), /sliding_window of 4, which is not supported/);
  t.equal(parseConfig({ ...base, model_type: 'qwen2', sliding_window: 4, use_sliding_window: false }).slidingWindow, null);
  t.equal(parseConfig({ ...base, model_type: 'llama', attention_bias: true }).oBias, true);
  t.throws(() => parseConfig({ ...base, model_type: 'llama', num_key_value_heads: 3 }), /not a multiple/);
  t.throws(() => parseConfig({ ...base, model_type: 'llama', rope_scaling: { type: 'dynamic', factor: 2 } }), /rope_scaling of type "dynamic" is not supported/);
  t.throws(() => parseConfig({ ...base, model_type: 'llama', rope_scaling: { rope_type: 'llama3', factor: 8 } }), /rope_scaling/);
  t.throws(() => parseConfig({ ...base, model_type: 'llama', hidden_size: 'x' }), /"hidden_size" must be a positive integer/);
  t.throws(() => parseConfig({ ...base, model_type: 'mixtral', num_local_experts: 2, num_experts_per_tok: 3 }), /exceeds/);
  t.throws(() => parseConfig({ ...base, model_type: 'mixtral' }), /missing "num_local_experts"/);
  t.throws(() => parseConfig({ model_type: 'gpt2', n_embd: 10, n_head: 3, n_layer: 1, vocab_size: 5, n_positions: 8 }), /not divisible/);
  const g = parseConfig({ model_type: 'gpt2', n_embd: 8, n_head: 2, n_layer: 1, vocab_size: 5, n_positions: 8 });
  t.equal(g.tieEmbeddings, true, 'GPT-2 ties embeddings by default');
  t.equal(g.intermediate, 32);
});
