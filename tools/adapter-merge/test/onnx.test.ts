/**
 * export --format onnx and explain --runtime onnx (issue 23) through the
 * built CLI on the golden GPT-2: the export's logits (onnxruntime-node)
 * equal the engine running the ref's adapter, the bytes are deterministic,
 * the metadata names the base model and the bundle, a model whose hash
 * differs from the adapter's base model is refused as with --format hf,
 * explain gives the engine's answer, and a damaged export is exit 2 naming
 * the file.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeSyntheticBundle, sha256Hex } from '../src/core.js';
import { loadLora, loadModel } from '@catechism/core/models';
import { modelSha256 } from '@catechism/core/edit';
import { decodeModel, OnnxSession } from '@catechism/core/onnx';

const here = path.dirname(fileURLToPath(import.meta.url));
const MAIN = path.join(here, '..', 'dist', 'main.js');
const GPT2 = path.resolve(here, '../../../fixtures/golden/gpt2');
const tmp = mkdtempSync(path.join(tmpdir(), 'cat-am-onnx-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));
const REG = path.join(tmp, 'reg');

function am(args: string[]) {
  const r = spawnSync(process.execPath, [MAIN, ...args, '--registry', REG], { cwd: tmp, encoding: 'utf8', env: { ...process.env, USER: 'tester' } });
  const records = r.stdout.trim().startsWith('{') ? r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, any>) : [];
  return { code: r.status, stdout: r.stdout, stderr: r.stderr, records };
}

const gpt2Sha = modelSha256(GPT2);
const targets = { 'transformer.h.1.attn.c_attn': [96, 32], 'transformer.h.0.mlp.c_proj': [32, 128] } as Record<string, [number, number]>;
const g = path.join(tmp, 'g');
const gSha = (await writeSyntheticBundle(g, { seed: 7, id: 'g', rank: 2, targets, pass: true, manifest: { base_model: { name: GPT2, sha256: gpt2Sha } } })).sha256;
const other = path.join(tmp, 'other');
await writeSyntheticBundle(other, { seed: 8, id: 'other', rank: 2, targets, pass: true });
t.equal(am(['promote', 'live', g]).code, 0);
t.equal(am(['promote', 'other-ref', other]).code, 0);

t.test('export --format onnx: the adapted model, deterministic, with its provenance', async (t) => {
  const out = path.join(tmp, 'onnx1');
  const r = am(['export', '--ref', 'live', '--format', 'onnx', out, '--model', GPT2]);
  t.equal(r.code, 0, r.stderr);
  t.match(r.records[0], { kind: 'export', format: 'onnx', bundle: gSha, base_model_sha256: gpt2Sha });
  for (const f of ['model.onnx', 'tokenizer.json', 'config.json', 'export.json']) t.ok(existsSync(path.join(out, f)), f);
  const again = path.join(tmp, 'onnx2');
  t.equal(am(['export', '--ref', 'live', '--format=onnx', again, '--model', GPT2]).code, 0);
  t.ok(readFileSync(path.join(out, 'model.onnx')).equals(readFileSync(path.join(again, 'model.onnx'))), 'byte-identical model.onnx');
  const props = Object.fromEntries(decodeModel(readFileSync(path.join(out, 'model.onnx'))).metadata_props.map((p) => [p.key, p.value]));
  t.equal(props['catechism.base_model_sha256'], gpt2Sha);
  t.match(JSON.parse(props['catechism.adapters']), [{ id: 'g', version: 1, sha256: gSha, scale: 1 }]);

  // onnxruntime on the export = the engine with live's adapter
  const { model } = loadModel(GPT2, { tokenizer: false });
  model.setAdapters([{ adapter: loadLora(g) }]);
  const ids = Int32Array.from([3, 14, 15, 9, 26, 5]);
  const want = model.forward(ids, [1, 6]).logits.data;
  const s = OnnxSession.open(path.join(out, 'model.onnx'));
  const got = s.run(ids, new Uint8Array(6).fill(1), 1, 6).logits;
  s.close();
  let d = 0;
  for (let i = 0; i < want.length; i++) d = Math.max(d, Math.abs(got[i] - want[i]));
  t.ok(d <= 1e-4, `max |Δ logits| ${d.toExponential(2)}`);

  const hf = path.join(tmp, 'hf');
  t.equal(am(['export', '--ref', 'live', '--format', 'hf', hf, '--model', GPT2]).code, 0);
  t.ok(existsSync(path.join(hf, 'model.safetensors')), '--format hf is the Hugging Face directory');
});

t.test('export --format onnx refuses a model other than the adapter\'s base model', async (t) => {
  const out = path.join(tmp, 'onnx-other');
  const r = am(['export', '--ref', 'other-ref', '--format', 'onnx', out, '--model', GPT2]);
  t.equal(r.code, 2, r.stderr);
  t.match(r.stderr, new RegExp(`was made for base model synthetic-base \\(sha256 ${sha256Hex('synthetic-base')}\\), but the model .* has sha256 ${gpt2Sha}`));
  t.notOk(existsSync(out), 'nothing exported');
  const kv = am(['export', '--ref', 'live', '--format', 'onnx', '--kv-cache', path.join(tmp, 'kv'), '--model', GPT2]);
  t.equal(kv.code, 0, kv.stderr);
  const m = decodeModel(readFileSync(path.join(tmp, 'kv', 'model.onnx')));
  t.ok(m.graph.input.some((i) => i.name === 'past_key_values.0.key') && m.graph.output.some((o) => o.name === 'present.1.value'), '--kv-cache: past key/values in, present out');
});

t.test('explain --runtime onnx gives the engine\'s answer; a damaged export is exit 2 naming it', async (t) => {
  const engine = am(['explain', '--ref', 'live', 'hello world', '--model', GPT2]);
  t.equal(engine.code, 0, engine.stderr);
  // the export made above is found by its state and reused; the base model state is exported beside it
  const dir = path.join(tmp, 'exports');
  cpSync(path.join(tmp, 'onnx1'), path.join(dir, 'live'), { recursive: true });
  const onnx = am(['explain', '--ref', 'live', 'hello world', '--model', GPT2, '--runtime', 'onnx', '--onnx-dir', dir]);
  t.equal(onnx.code, 0, onnx.stderr);
  t.equal(readdirSync(dir).length, 2, 'live\'s export reused, the base model exported');
  const a = engine.records[0], b = onnx.records[0];
  t.equal(b.answer, a.answer);
  t.equal(b.adapted.top1, a.adapted.top1);
  t.ok(Math.abs(b.adapted.logprob - a.adapted.logprob) <= 1e-4, `adapted log P ${b.adapted.logprob} vs ${a.adapted.logprob}`);
  t.ok(Math.abs(b.base.logprob - a.base.logprob) <= 1e-4, `base log P ${b.base.logprob} vs ${a.base.logprob}`);
  const victim = path.join(dir, 'live', 'model.onnx');
  writeFileSync(victim, readFileSync(victim).subarray(0, 500));
  const bad = am(['explain', '--ref', 'live', 'hello world', '--model', GPT2, '--runtime', 'onnx', '--onnx-dir', dir]);
  t.equal(bad.code, 2, bad.stderr);
  t.match(bad.stderr, victim);
  t.notMatch(bad.stderr, /\n\s+at /, 'no stack trace');
});
