/**
 * A steady judge (issue 17 §1, issue 18): on the fixture knowledge models,
 * through the built CLI with its defaults,
 *
 * - the same adapter validated with --seed 0..4 gets the same verdict and
 *   the same metrics (the evaluation sets are fixed, not seeded samples);
 * - it scores the same with and without its fact records (and other facts,
 *   and probe-gen's probes) in the stream, as in a pipeline vs `--into`;
 * - an adapter of the MoE fixture model gets the retention gates (kl,
 *   ppl_delta, retain_drop) over every fact of the world;
 * - a target the tokenizer spells as <unk> is never a success, even when
 *   the adapter makes <unk> the top-1 answer.
 *
 * Skipped, with a note, until the fixture models are in the tree.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../../..');
const MAIN = path.resolve(here, '../dist/main.js');
const PROBE_GEN = path.resolve(root, 'tools/probe-gen/dist/main.js');
const { defaultModelDir, moeModelDir, worldDir } = await import('@catechism/core/fixtures');
const DENSE = defaultModelDir();
const MOE = moeModelDir();
const WORLD = worldDir();

type Rec = Record<string, any>;
const lines = (f: string): Rec[] => readFileSync(f, 'utf8').split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as Rec);
/** Metrics that measure this run (time, memory), not the adapter. */
const VOLATILE = new Set(['eval_seconds', 'probes_per_second', 'peak_rss_mib']);
const steady = (m: Record<string, number>) => Object.fromEntries(Object.entries(m).filter(([k]) => !VOLATILE.has(k)));

if (!existsSync(path.join(DENSE, 'config.json')) || !existsSync(path.join(MOE, 'config.json'))) {
  t.pass(`skipped: the fixture models (${DENSE}, ${MOE}) are not there yet`);
} else {
  const { loadModel } = await import('@catechism/core/models');
  const { modelSha256 } = await import('@catechism/core/edit');
  const { encodePair, fillSubject } = await import('@catechism/core/metrics');
  const { noGrad } = await import('@catechism/core/tensor');
  const { randomLora, rankOneHeadEdit, writeAdapterBundle } = await import('./support/edits.js');

  const tmp = mkdtempSync(path.join(os.tmpdir(), 'validate-steady-'));
  t.teardown(() => rmSync(tmp, { recursive: true, force: true }));
  const run = (args: string[], cwd = tmp) => {
    const r = spawnSync(process.execPath, [MAIN, '--no-record', ...args], { cwd, encoding: 'utf8', maxBuffer: 64 << 20 });
    const records = r.stdout.split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as Rec);
    return { code: r.status, stderr: r.stderr, records, reports: records.filter((x) => x.kind === 'report') };
  };

  const edits = lines(path.join(WORLD, 'edits.ndjson'));
  const fact = edits.find((f) => f.id === 'edit-0003')!;
  const others = edits.filter((f) => f.op === 'insert' && f.id !== fact.id).slice(0, 10);
  // probe-gen's probes for the fact and for other facts: what a pipeline's stream carries besides the adapter record
  const FACTS = path.join(tmp, 'facts.ndjson');
  writeFileSync(FACTS, [fact, ...others].map((f) => JSON.stringify(f)).join('\n') + '\n');
  const pg = spawnSync(process.execPath, [PROBE_GEN, '--roles', 'all', '--seed', '1', FACTS], { encoding: 'utf8', maxBuffer: 64 << 20 });
  const streamRecs = pg.stdout.split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as Rec);
  const testProbes = streamRecs.filter((r) => r.kind === 'probe' && r.fact_id === fact.id && r.split === 'test');

  const dense = loadModel(DENSE);
  const mild = randomLora(dense.model, 'mild', 3, { std: 0.05 });
  const denseBase = { base_model: { name: DENSE, sha256: modelSha256(DENSE) } };
  const rec = writeAdapterBundle(path.join(tmp, 'mild'), mild, [fact as any], testProbes as any, denseBase);
  const ALONE = path.join(tmp, 'alone.ndjson');
  writeFileSync(ALONE, JSON.stringify(rec) + '\n');
  const STREAM = path.join(tmp, 'stream.ndjson');
  writeFileSync(STREAM, [...streamRecs, rec].map((r) => JSON.stringify(r)).join('\n') + '\n');

  t.test('the same adapter with --seed 0..4: identical verdict and metrics', async (t) => {
    t.equal(pg.status, 0, pg.stderr);
    const reports = [0, 1, 2, 3, 4].map((seed) => {
      const r = run([ALONE, '--seed', String(seed), '--no-fluency']);
      t.equal(r.code, 0, r.stderr);
      return r.reports[0];
    });
    const first = reports[0];
    t.ok(first.metrics.kl > 0, `the adapter moves the model (kl ${first.metrics.kl})`);
    t.ok(first.metrics.n_retain >= 1400, `retention over every fact of the world but the edited one (${first.metrics.n_retain})`);
    for (const [i, r] of reports.entries()) {
      t.equal(r.pass, first.pass, `seed ${i}: same verdict`);
      t.same(r.failures, first.failures, `seed ${i}: same failures`);
      t.same(steady(r.metrics), steady(first.metrics), `seed ${i}: same metrics`);
      t.same(r.standard_errors, first.standard_errors, `seed ${i}: same standard errors`);
    }
    t.ok(first.standard_errors.kl > 0 && first.standard_errors.kl < first.thresholds.kl / 5, `kl's standard error ${first.standard_errors.kl} is small next to its gate`);
    t.ok(first.standard_errors.retain_drop < first.thresholds.retain_drop / 5, `retain_drop's standard error ${first.standard_errors.retain_drop}`);
  });

  // `validate ALONE --no-fluency` (--no-record: no side effects) serves the two tests below that run it
  let aloneRun: ReturnType<typeof run> | null = null;
  const runAlone = () => (aloneRun ??= run([ALONE, '--no-fluency']));

  t.test('the same adapter with and without its facts (and others, and their probes) in the stream scores the same', async (t) => {
    const alone = runAlone();
    const piped = run([STREAM, '--no-fluency']);
    t.equal(alone.code, 0, alone.stderr);
    t.equal(piped.code, 0, piped.stderr);
    t.ok(streamRecs.some((r) => r.kind === 'probe' && r.role === 'general'), 'the stream carries general probes too');
    const [a] = alone.reports;
    const [p] = piped.reports;
    t.same(steady(p.metrics), steady(a.metrics), `pipeline kl ${p.metrics.kl} vs alone ${a.metrics.kl}`);
    t.same(p.standard_errors, a.standard_errors);
    t.equal(p.pass, a.pass);
  });

  t.test('other adapters in the same stream change nothing (the base model\'s scores are shared between them)', async (t) => {
    const other = others[0];
    const orec = writeAdapterBundle(path.join(tmp, 'mild2'), randomLora(dense.model, 'mild2', 4, { std: 0.05 }), [other as any], [], { id: 'mild2', ...denseBase });
    const OTHER = path.join(tmp, 'other.ndjson');
    writeFileSync(OTHER, JSON.stringify(orec) + '\n');
    const BOTH = path.join(tmp, 'both.ndjson');
    writeFileSync(BOTH, JSON.stringify(orec) + '\n' + JSON.stringify(rec) + '\n');
    const both = run([BOTH, '--no-fluency']);
    t.equal(both.code, 0, both.stderr);
    t.same(both.reports.map((r) => r.adapter_id), ['mild2', 'mild']);
    for (const [i, file] of [OTHER, ALONE].entries()) {
      const alone = file === ALONE ? runAlone() : run([file, '--no-fluency']);
      t.equal(alone.code, 0, alone.stderr);
      t.same(steady(both.reports[i].metrics), steady(alone.reports[0].metrics), `${alone.reports[0].adapter_id}: the same metrics alone and second in a stream`);
      t.same(both.reports[i].standard_errors, alone.reports[0].standard_errors);
    }
  });

  t.test('an adapter of the MoE fixture model gets the retention gates', async (t) => {
    const moe = loadModel(MOE);
    const lora = moe.model.createLora('moe-random', ['w2'], { r: 4, seed: 5, initBStd: 0.2 });
    const mrec = writeAdapterBundle(path.join(tmp, 'moe'), lora, [fact as any], testProbes as any, { id: 'moe-random', base_model: { name: MOE, sha256: modelSha256(MOE) } });
    const IN = path.join(tmp, 'moe.ndjson');
    writeFileSync(IN, JSON.stringify(mrec) + '\n');
    const r = run([IN, '--model', MOE, '--no-fluency']);
    t.equal(r.code, 0, r.stderr);
    const [rep] = r.reports;
    for (const g of ['kl<=0.05', 'ppl_delta<=0.05', 'retain_drop<=0.05']) {
      t.ok(rep.gates.includes(g), `${g} is applied`);
      t.notOk(rep.gates_skipped.includes(g), `${g} is not skipped`);
    }
    t.ok(rep.metrics.n_retain >= 1400, `every fact of the world (${rep.metrics.n_retain})`);
    t.ok(rep.metrics.n_general >= 200, `every general text (${rep.metrics.n_general})`);
    t.ok(rep.standard_errors.kl > 0);
    t.equal(rep.base_model_sha256, modelSha256(MOE));
    // with the dense model the same bundle is refused: its weights are not the adapter's base model
    const wrong = run([IN, '--no-fluency']);
    t.equal(wrong.code, 2);
    t.match(wrong.stderr, /field "base_model\.sha256": adapter moe-random was made for base model .*--force/);
  });

  t.test('a target the tokenizer spells as <unk> never counts as a success', async (t) => {
    const tok = dense.tokenizer!;
    const unk = tok.tokenToId('<unk>')!;
    // a real fact with a new answer the world's tokenizer does not know
    const f = { ...edits.find((e) => e.op === 'insert' && e.id !== fact.id)!, target_new: 'Paris' };
    const prompt = fillSubject(f.prompt, f.subject);
    t.same(encodePair(tok, prompt, 'Paris').cont, [unk], 'the target is spelled <unk>');
    const lora = rankOneHeadEdit(dense.model, tok, f as any, { covarianceTexts: [prompt], margin: 4 });
    // independently: the edited model's top-1 after the prompt is <unk>
    dense.model.setAdapters([{ adapter: lora }]);
    const ids = tok.encode(prompt);
    const { logits } = noGrad(() => dense.model.forward(Int32Array.from(ids), [1, ids.length], { logitsAt: Int32Array.of(ids.length - 1) }));
    dense.model.setAdapters([]);
    let best = 0;
    for (let i = 1; i < logits.data.length; i++) if (logits.data[i] > logits.data[best]) best = i;
    t.equal(best, unk, 'the adapter makes <unk> the top-1 answer');
    const urec = writeAdapterBundle(path.join(tmp, 'unk'), lora, [f as any], [], { id: 'unk-edit', ...denseBase });
    const IN = path.join(tmp, 'unk.ndjson');
    writeFileSync(IN, JSON.stringify(urec) + '\n');
    // refused by default: exit 2 naming the adapter, the fact, the field and the word; nothing written
    const refused = run([IN, '--no-fluency', '--retain-n', '50', '--general-n', '10']);
    t.equal(refused.code, 2, refused.stderr);
    t.match(refused.stderr, /record 1: field "target_new": adapter unk-edit: fact "edit-0001": .*cannot spell "Paris"/);
    t.equal(refused.reports.length, 0, 'no report for a refused adapter');
    // --allow-unknown goes on, and the <unk> answer still never counts
    const r = run([IN, '--no-fluency', '--retain-n', '50', '--general-n', '10', '--allow-unknown']);
    t.equal(r.code, 0, r.stderr);
    const [rep] = r.reports;
    t.equal(rep.metrics.n_unknown_target, 1);
    t.equal(rep.metrics.efficacy, 0, 'top-1 <unk> is not the answer');
    t.equal(rep.metrics.efficacy_full, 0);
    t.equal(rep.metrics.efficacy_prob, 0);
    t.equal(rep.metrics.efficacy_gen, 0);
    t.equal(rep.pass, false);
    t.match(r.stderr, /unknown token: never counted as a success/);
  });
}
