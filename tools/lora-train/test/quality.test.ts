/**
 * Edit quality on a model that knows the fixture world (the dense fixture
 * model; LORA_TRAIN_TEST_MODEL names another, e.g. a smaller one trained
 * with scripts/train-fixture.mjs): forgetting 10 facts, with the issue's
 * gates (ROME single edits: rome-quality.test.ts, a file of its own so the
 * two run side by side). Skipped when no such model is present. The larger
 * measured runs are scripts/bench/lora-train.bench.mjs.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { defaultModelDir, worldDir } from '@catechism/core/fixtures';
import { loadResources, measureWorldEdits } from '../src/index.js';

const dir = process.env.LORA_TRAIN_TEST_MODEL ?? defaultModelDir();
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cat-lora-quality-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
process.env.CATECHISM_CACHE = path.join(tmp, 'cache');

if (!fs.existsSync(path.join(dir, 'config.json'))) {
  t.skip(`no fixture model at ${dir} (train it, or set LORA_TRAIN_TEST_MODEL)`);
} else {
  const res = loadResources({ model: dir });
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
