/**
 * Edit quality on a model that knows the fixture world (the dense fixture
 * model; LORA_TRAIN_TEST_MODEL names another, e.g. a smaller one trained
 * with scripts/train-fixture.mjs): forgetting 10 facts, with the issue's
 * gates (ROME single edits: rome-quality.test.ts, a file of its own so the
 * two run side by side). Skipped when no such model is present. The larger
 * measured runs are scripts/bench/lora-train.bench.mjs.
 */
import t from 'tap';
import * as path from 'node:path';
import { measureWorldEdits } from '../src/index.js';
import { fixtureModel } from './support/fixture-model.js';

const fx = fixtureModel('cat-lora-quality-');
if (fx) {
  const { res, tmp } = fx;
  const pct = (x: number) => `${(100 * x).toFixed(0)}%`;

  // validate's default gates over every known fact (held-out phrasings) on held-out edits: test/retention-heldout.test.ts

  t.test('forgetting 10 facts', async (t) => {
    const m = await measureWorldEdits(res, { method: 'lora', op: 'forget', count: 10, out: path.join(tmp, 'forget') });
    const f = m.figures;
    t.comment(`old answer gone on ${pct(f.forgotten)} of ${f.n.forgotten} prompts, others kept ${pct(f.neighbourhood)} (n=${f.n.neighbourhood})`);
    t.ok(f.forgotten >= 0.9, `old answer top-1 on at most 10% of the probes (gone on ${pct(f.forgotten)})`);
    t.ok(f.neighbourhood >= 0.9, `other facts kept ${pct(f.neighbourhood)} ≥ 90%`);
  });
}
