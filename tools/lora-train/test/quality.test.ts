/**
 * Edit quality on a model that knows the fixture world (the dense fixture
 * model; LORA_TRAIN_TEST_MODEL names another, e.g. a smaller one trained
 * with scripts/train-fixture.mjs): 10 counterfactual inserts in one
 * distilled LoRA adapter, ROME single edits, and forgetting 10 facts, with
 * the gates. Skipped when no such model is present. The larger
 * measured runs are scripts/bench/lora-train.bench.mjs.
 */
import t, { type Test } from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { defaultModelDir, worldDir } from '@catechism/core/fixtures';
import { readNdjson } from '@catechism/core/edit';
import { DEFAULT_ARGS, counterfactualFacts, editInputs, loadResources, measureWorldEdits, readbackAdapters, readbackFailures, trainEdits } from '../src/index.js';

const dir = process.env.LORA_TRAIN_TEST_MODEL ?? defaultModelDir();
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cat-lora-quality-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
process.env.CATECHISM_CACHE = path.join(tmp, 'cache');

if (!fs.existsSync(path.join(dir, 'config.json'))) {
  t.skip(`no fixture model at ${dir} (train it, or set LORA_TRAIN_TEST_MODEL)`);
} else {
  const res = loadResources({ model: dir });
  const pct = (x: number) => `${(100 * x).toFixed(0)}%`;

  // The strict read-back (issue 17): every fact the model knows, one prompt each, before vs after;
  // validate's default gates. Edits the defaults were never tuned on: requests 61–70 of the world
  // (tuning used 1–60) and ten cities of the world moved to other countries (cities tuning never used).
  const readback = path.join(worldDir(), 'eval/facts-train.ndjson');
  // `todo`: a gate measured to fail today (README "Retention at scale"), reported but not failing the suite
  const gates = async (t: Test, facts: Record<string, unknown>[], out: string, todo: { paraphrase?: string } = {}) => {
    const records = await trainEdits(editInputs(facts), { ...DEFAULT_ARGS, seed: 0, out: path.join(tmp, out) }, res, { log: () => {} });
    const f = readbackAdapters(res, records, facts, readback, 'lora')!;
    t.comment(`efficacy ${pct(f.efficacy)}, paraphrase ${pct(f.paraphrase)} (n=${f.n.paraphrase}), neighbourhood ${pct(f.neighbourhood)} (n=${f.n.neighbourhood}), kl ${f.kl.toFixed(3)}, retain_drop ${f.retain_drop.toFixed(3)} (n=${f.n.retain})`);
    t.ok(f.efficacy >= 0.95, `efficacy ${pct(f.efficacy)} ≥ 95%`);
    t.ok(f.paraphrase >= 0.8, `held-out paraphrases ${pct(f.paraphrase)} ≥ 80%`, todo.paraphrase ? { todo: todo.paraphrase } : {});
    t.ok(f.kl <= 0.05, `kl ${f.kl.toFixed(3)} ≤ 0.05 over every known fact`);
    t.ok(f.retain_drop <= 0.05, `retain_drop ${f.retain_drop.toFixed(3)} ≤ 0.05 over every known fact`);
    t.same(readbackFailures(f, 'insert').filter((g) => !(g in todo)), [], 'validate\'s default gates pass');
  };

  t.test('held-out: 10 unrelated inserts (requests 61–70) in one adapter pass the gates over every known fact', async (t) => {
    const edits = readNdjson(path.join(worldDir(), 'edits.ndjson')).filter((f) => f.op === 'insert').slice(60, 70);
    await gates(t, edits, 'lora-10');
  });

  t.test('held-out: 10 edits of one relation (cities moved to other countries) keep every other fact', async (t) => {
    const known = readNdjson(path.join(worldDir(), 'facts.ndjson'));
    const edits = readNdjson(path.join(worldDir(), 'edits.ndjson'));
    // tuning used this order's cities 1–10; these are 11–20
    const facts = counterfactualFacts(known, { relation: 'located_in', skip: 10, count: 10, exclude: edits });
    t.equal(new Set(facts.map((f) => f.relation)).size, 1, 'one relation');
    // retention holds (kl 0.012, retain_drop 0.000 measured); generalisation does not yet: 15 of 20
    // held-out phrasings (the tuning split's cities: 17 of 21)
    await gates(t, facts, 'lora-rel', { paraphrase: 'one relation: held-out paraphrases 75% (n=20) < 80% (issue 17)' });
  });

  t.test('ROME single edits over 20 facts', async (t) => {
    // The gates. On the dense fixture model: efficacy 100%, paraphrases 88%, neighbourhood 95%
    // (edits 1–20: 100 / 92 / 94; edits 41–60: 100 / 82 / 93.5).
    const m = await measureWorldEdits(res, { method: 'rome', op: 'insert', count: 20, skip: 20, out: path.join(tmp, 'rome') });
    const f = m.figures;
    t.comment(`efficacy ${pct(f.efficacy)}, paraphrase ${pct(f.paraphrase)} (n=${f.n.paraphrase}), neighbourhood ${pct(f.neighbourhood)} (n=${f.n.neighbourhood}), ${m.seconds.toFixed(1)} s`);
    t.equal(m.adapters, 20, 'one adapter per fact');
    t.ok(f.efficacy >= 0.95, `efficacy ${pct(f.efficacy)} ≥ 95%`);
    t.ok(f.paraphrase >= 0.8, `held-out paraphrases ${pct(f.paraphrase)} ≥ 80%`);
    t.ok(f.neighbourhood >= 0.9, `neighbourhood kept ${pct(f.neighbourhood)} ≥ 90%`);
  });

  t.test('ROME refuses an edit that did not take; by default it tries later layers', async (t) => {
    // edit-0024: a surname four other people share; its layer-0 key cannot tell them apart
    const edits = fs.readFileSync(path.join(worldDir(), 'edits.ndjson'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
    const fact = edits.find((f) => f.id === 'edit-0024');
    const inputs = [{ record: fact, source: 'edits', index: 1 }];
    const edit = async (layer: number | undefined, out: string) => {
      const [rec] = await trainEdits(inputs, { ...DEFAULT_ARGS, seed: 0, method: 'rome', layer, out: path.join(tmp, out) }, res, { log: () => {} });
      return JSON.parse(fs.readFileSync(path.join(rec.path, 'catechism.json'), 'utf8'));
    };
    // at layer 0 the fact's own prompt is not solved: ROME refuses rather than write an edit that did not take
    await t.rejects(edit(0, 'layer0'), { name: 'EditRefusedError', message: /edit-0024: 0 of 1 train prompts .* layer 0/ }, '--layer 0 refuses');
    t.notOk(fs.existsSync(path.join(tmp, 'layer0')) && fs.readdirSync(path.join(tmp, 'layer0')).length > 0, 'no bundle written');
    const chosen = await edit(undefined, 'auto');
    t.ok(chosen.hyperparameters.layer > 0, `edited at layer ${chosen.hyperparameters.layer} (tried ${chosen.hyperparameters.layers_tried})`);
    t.same(chosen.hyperparameters.layers_tried.slice(0, 1), [0], 'the default layer first');
    t.equal(chosen.training.train_prompts, 1, 'one train prompt: the fact\'s own');
    t.equal(chosen.training.train_prompts_solved, 1, 'the later layer solves it');
  });

  t.test('forgetting 10 facts', async (t) => {
    const m = await measureWorldEdits(res, { method: 'lora', op: 'forget', count: 10, out: path.join(tmp, 'forget') });
    const f = m.figures;
    t.comment(`old answer gone on ${pct(f.forgotten)} of ${f.n.forgotten} prompts, others kept ${pct(f.neighbourhood)} (n=${f.n.neighbourhood})`);
    t.ok(f.forgotten >= 0.9, `old answer top-1 on at most 10% of the probes (gone on ${pct(f.forgotten)})`);
    t.ok(f.neighbourhood >= 0.9, `other facts kept ${pct(f.neighbourhood)} ≥ 90%`);
  });
}
