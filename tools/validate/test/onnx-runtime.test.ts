/**
 * validate --runtime onnx (issue 23): the same adapter on the dense and MoE
 * fixture models, scored by our engine and by onnxruntime-node on the ONNX
 * exports of each model state, gives the same report; a damaged export in
 * --onnx-dir is bad input (exit 2 naming the file).
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const MAIN = path.resolve(here, '../dist/main.js');
const { defaultModelDir, worldDir, modelsDir } = await import('@catechism/core/fixtures');
const DENSE = defaultModelDir();
const MOE = path.join(modelsDir(), 'moe');

if (!existsSync(path.join(DENSE, 'config.json')) || !existsSync(path.join(MOE, 'config.json'))) {
  t.pass('skipped: no fixture models');
} else {
  const { loadModel } = await import('@catechism/core/models');
  const { modelSha256 } = await import('@catechism/core/edit');
  const { randomLora, writeAdapterBundle } = await import('./support/edits.js');
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'validate-onnx-'));
  t.teardown(() => rmSync(tmp, { recursive: true, force: true }));
  const edits = readFileSync(path.join(worldDir(), 'edits.ndjson'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, any>);
  const fact = edits.find((f) => f.op === 'insert')!;
  const probes = [
    { kind: 'probe', fact_id: fact.id, role: 'paraphrase', split: 'test', prompt: fact.prompt.replace('{}', fact.subject), target: fact.target_new, expect: 'new' },
  ];
  // time and memory differ between runs, not between runtimes' answers
  const VOLATILE = /seconds|per_second|rss|bytes/;
  const COMMON = ['--no-record', '--retain-n', '24', '--general-n', '6', '--gen-tokens', '4'];

  const run = (model: string, input: string, extra: string[]) => {
    const r = spawnSync(process.execPath, [MAIN, input, '--model', model, ...COMMON, ...extra], { cwd: tmp, encoding: 'utf8' });
    const reports = r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l)).filter((x) => x.kind === 'report');
    return { code: r.status, stderr: r.stderr, report: reports[0] };
  };

  for (const [name, dir] of [['dense', DENSE], ['moe', MOE]] as const) {
    t.test(`${name}: --runtime onnx gives the engine's report`, async (t) => {
      const { model } = loadModel(dir, { tokenizer: false });
      const lora = randomLora(model, `rand-${name}`, 3, { std: 0.05, r: 2 });
      const rec = writeAdapterBundle(path.join(tmp, `b-${name}`), lora, [fact as any], probes as any, { base_model: { name: dir, sha256: modelSha256(dir) } });
      const input = path.join(tmp, `${name}.ndjson`);
      writeFileSync(input, JSON.stringify(rec) + '\n');
      const engine = run(dir, input, []);
      t.equal(engine.code, 0, engine.stderr);
      const onnxDir = path.join(tmp, `onnx-${name}`);
      const onnx = run(dir, input, ['--runtime', 'onnx', '--onnx-dir', onnxDir]);
      t.equal(onnx.code, 0, onnx.stderr);
      t.equal(readdirSync(onnxDir).length, 2, 'two model states exported: the base model, and base + adapter');
      const a = engine.report.metrics as Record<string, number>;
      const b = onnx.report.metrics as Record<string, number>;
      t.same(Object.keys(b).sort(), Object.keys(a).sort(), 'the same metrics');
      const off = Object.keys(a).filter((k) => !VOLATILE.test(k) && !(Math.abs(a[k] - b[k]) <= 1e-4 * Math.max(1, Math.abs(a[k]))));
      t.same(off, [], `metrics agree within 1e-4 (${off.map((k) => `${k}: ${a[k]} vs ${b[k]}`).join('; ')})`);
      t.equal(onnx.report.pass, engine.report.pass);
      if (name === 'moe') t.ok(b.n_route_prompts > 0 && 'route_tv' in b, 'routing metrics come from the export\'s router logits');
      if (name !== 'dense') return;

      // a damaged export is bad input, named (once: the check does not depend on the family)
      const bad = path.join(tmp, `onnx-bad-${name}`);
      cpSync(onnxDir, bad, { recursive: true });
      const victim = path.join(bad, readdirSync(bad).sort()[0], 'model.onnx');
      writeFileSync(victim, 'not an onnx model');
      const broken = run(dir, input, ['--runtime', 'onnx', '--onnx-dir', bad]);
      t.equal(broken.code, 2, broken.stderr);
      t.match(broken.stderr, victim);
      t.notMatch(broken.stderr, /\n\s+at /, 'no stack trace');
    });
  }
}
