/**
 * The checks of issue 9 on the fixture knowledge model (fixtures/models/dense,
 * trained on fixtures/world), through the built CLI with its defaults
 * (default model, the world's retain and general sets): a rank-one edit
 * checked good directly passes the default gates, a random large LoRA fails the
 * specificity and retention gates, and the base model alone has efficacy 0
 * on counterfactual edits of facts it knows (probe-gen | validate --baseline).
 * Skipped, with a note, until the fixture model is in the tree.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { probeGenIntoValidate } from './support/pipe.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../../..');
const MAIN = path.resolve(here, '../dist/main.js');
// CATECHISM_FIXTURES (read by core's fixtures module, here and in the CLI) may name another fixtures directory
const { defaultModelDir, worldDir } = await import('@catechism/core/fixtures');
const DENSE = defaultModelDir();
const WORLD = worldDir();

if (!existsSync(path.join(DENSE, 'config.json'))) {
  t.pass(`skipped: no fixture model at ${DENSE} yet (the golden-model checks in cli.test.ts still run)`);
} else {
  const { loadModel } = await import('@catechism/core/models');
  const { noGrad } = await import('@catechism/core/tensor');
  const { encodePair, fillSubject } = await import('@catechism/core/metrics');
  const { rankOneHeadEdit, randomLora, writeAdapterBundle } = await import('./support/edits.js');
  const { modelSha256 } = await import('@catechism/core/edit');
  const BASE = { base_model: { name: DENSE, sha256: modelSha256(DENSE) } };

  const tmp = mkdtempSync(path.join(os.tmpdir(), 'validate-dense-'));
  t.teardown(() => rmSync(tmp, { recursive: true, force: true }));
  const { model, tokenizer } = loadModel(DENSE);
  const tok = tokenizer!;
  const V = model.config.vocabSize;
  const top1 = (prompt: string): number => {
    const ids = tok.encode(prompt);
    const { logits } = noGrad(() => model.forward(Int32Array.from(ids), [1, ids.length], { logitsAt: Int32Array.of(ids.length - 1) }));
    let b = 0;
    for (let i = 1; i < V; i++) if (logits.data[i] > logits.data[b]) b = i;
    return b;
  };
  const lines = (f: string) => readFileSync(f, 'utf8').split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as Record<string, any>);
  const edits = lines(path.join(WORLD, 'edits.ndjson'));
  // counterfactual edits of facts the base model knows (its top-1 is target_true)
  const known = edits.filter((f) => f.op === 'insert' && top1(fillSubject(f.prompt, f.subject)) === encodePair(tok, fillSubject(f.prompt, f.subject), f.target_true).cont[0]);

  t.test('probe-gen | validate --baseline: efficacy 0 on counterfactuals of known facts', async (t) => {
    t.ok(known.length >= 5, `${known.length} of ${edits.length} edits are about facts the model knows`);
    const FACTS = path.join(tmp, 'known.ndjson');
    writeFileSync(FACTS, known.map((f) => JSON.stringify(f)).join('\n') + '\n');
    const { code, out, err } = await probeGenIntoValidate(FACTS, ['--baseline', '--no-fluency'], tmp);
    t.equal(code, 0, err);
    const rep = out.trim().split('\n').map((l) => JSON.parse(l)).pop();
    t.equal(rep.adapter_id, 'base');
    t.equal(rep.metrics.n_edit, known.length);
    t.equal(rep.metrics.efficacy, 0);
    t.ok(rep.metrics.efficacy_prob <= 0.05, `P(new) > P(true) rate ${rep.metrics.efficacy_prob}`);
    t.ok(rep.metrics.n_retain >= 50 && rep.metrics.n_general >= 20, 'the world sets are used by default');
    t.ok(rep.metrics.retain_before > 0, `the model knows some retain facts (${rep.metrics.retain_before})`);
  });

  t.test('a good rank-one edit passes, a random large LoRA fails specificity and retention', async (t) => {
    const trainProbes = lines(path.join(WORLD, 'eval/facts-train.ndjson'));
    const docs = readFileSync(path.join(WORLD, 'train.txt'), 'utf8').split('\n').filter(Boolean);
    const covariance = docs.filter((_, i) => i % Math.max(1, Math.floor(docs.length / 400)) === 0);
    const probesFor = (fact: Record<string, any>) => {
      // neighbours: other subjects, same relation; generation prompts: the subject's other relations (as probe-gen writes them)
      const neighbours = trainProbes
        .filter((p) => p.relation === fact.relation && p.subject !== fact.subject)
        .slice(0, 10)
        .map((p) => ({ kind: 'probe', fact_id: fact.id, role: 'neighborhood', split: 'test', prompt: p.prompt, target: p.target, expect: 'unchanged' }));
      const generation = trainProbes
        .filter((p) => p.subject === fact.subject && p.relation !== fact.relation)
        .map((p) => ({ kind: 'probe', fact_id: fact.id, role: 'generation', split: 'test', prompt: p.prompt, expect: 'new' }));
      return { neighbours, generation };
    };
    // The closed-form head edit is relation-level for some facts (their neighbours flip too, and validate
    // rightly fails them); "good" is decided here, independently of validate, by a direct check: the
    // edit prompt answers target_new and every neighbour keeps the base model's top-1.
    let chosen: { fact: Record<string, any>; lora: any; neighbours: any[]; generation: any[] } | null = null;
    for (const fact of known.slice(0, 20)) {
      const { neighbours, generation } = probesFor(fact);
      const lora = rankOneHeadEdit(model, tok, fact as any, { covarianceTexts: covariance, margin: 2 });
      model.setAdapters([]);
      const base = neighbours.map((n) => top1(n.prompt));
      model.setAdapters([{ adapter: lora }]);
      const prompt = fillSubject(fact.prompt, fact.subject);
      const ok = top1(prompt) === encodePair(tok, prompt, fact.target_new).cont[0] && neighbours.every((n, i) => top1(n.prompt) === base[i]);
      model.setAdapters([]);
      if (ok) {
        chosen = { fact, lora, neighbours, generation };
        break;
      }
    }
    if (!chosen) {
      t.fail('no directly-checked good edit among the first 20 known facts');
      return;
    }
    const { fact, lora: good, neighbours, generation } = chosen;
    const bad = randomLora(model, 'bad-random', 7, { std: 1 });
    const recs = [
      writeAdapterBundle(path.join(tmp, 'good'), good, [fact as any], [...neighbours, ...generation] as any, BASE),
      writeAdapterBundle(path.join(tmp, 'bad'), bad, [fact as any], [...neighbours, ...generation] as any, { id: 'bad-random', ...BASE }),
    ];
    const IN = path.join(tmp, 'adapters.ndjson');
    writeFileSync(IN, recs.map((r) => JSON.stringify(r)).join('\n') + '\n');
    const r = spawnSync(process.execPath, [MAIN, IN, '--no-record', '--strict'], { cwd: tmp, encoding: 'utf8' });
    t.equal(r.status, 3, 'one adapter fails: --strict exits 3');
    const reports = r.stdout.trim().split('\n').map((l) => JSON.parse(l)).filter((x) => x.kind === 'report');
    const [g, b] = reports;
    t.equal(g.pass, true, `good edit: ${JSON.stringify(g.failures)} ${JSON.stringify(g.metrics)}`);
    t.equal(g.metrics.efficacy, 1);
    t.equal(g.metrics.specificity, 1, 'agrees with the direct neighbour check');
    t.equal(b.pass, false);
    const failed = (m: string) => b.failures.some((f: string) => f.startsWith(m + ' '));
    t.ok(failed('kl') || failed('specificity'), `bad: a specificity gate fails (${b.failures.join('; ')})`);
    t.ok(failed('retain_drop') || failed('ppl_delta'), `bad: a retention gate fails (${b.failures.join('; ')})`);
  });
}
