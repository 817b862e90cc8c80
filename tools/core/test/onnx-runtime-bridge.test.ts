/**
 * The synchronous bridge to the onnxruntime worker (src/onnx/runtime.ts)
 * under late signals: the worker posts each answer 1.5 s late and
 * signals 1.5 s after that, so the caller's waits time out and it finds
 * the answer before its signal. The stale signal then arrives while the
 * next request waits, before that request's answer; it must not pass for that request's answer (it did:
 * "the worker signalled but sent no answer", then every later call read
 * the previous call's answer, in CI under load).
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel } from '../src/models/index.js';
import { noGrad } from '../src/tensor/index.js';
import { OnnxSession, writeOnnxExport } from '../src/onnx/index.js';

// read by the worker when it starts, which is at the first call below
process.env.CATECHISM_ONNX_TEST_DELAY_MS = '1500';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'onnx-bridge-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

t.test('each call gets its own answer when signals come late', async (t) => {
  const dir = path.join(ROOT, 'fixtures/golden/gpt2');
  const { model } = loadModel(dir, { tokenizer: false });
  writeOnnxExport(dir, model, [], path.join(tmp, 'gpt2'), 'test-gpt2');
  const s = OnnxSession.open(path.join(tmp, 'gpt2', 'model.onnx'), { threads: 1 });
  t.ok(s.outputNames.includes('logits'), 'open answered with the session');
  for (const ids of [[1, 2, 3], [4, 5, 6, 7, 8]]) {
    const want = noGrad(() => model.forward(Int32Array.from(ids), [1, ids.length])).logits.data;
    const got = s.run(ids, ids.map(() => 1), 1, ids.length).logits;
    t.equal(got.length, want.length, `${ids.length} tokens: the answer to this run, not the one before`);
    t.ok(got.every((v, i) => Math.abs(v - want[i]) < 1e-4), `${ids.length} tokens: the engine's logits`);
  }
  s.close();
  t.pass('closed');
});
