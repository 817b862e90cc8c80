/**
 * ROME single edits on a model that knows the fixture world (the dense
 * fixture model; LORA_TRAIN_TEST_MODEL names another): two held-out edits
 * each alone against validate's default gates (issue 17). The refusal of an
 * edit that did not take: rome-refusal.test.ts (a file of its own, so the
 * two run side by side). Skipped when no such model is present.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { worldDir } from '@catechism/core/fixtures';
import { ROME_INSERT_DECAYS, readNdjson } from '@catechism/core/edit';
import { measureWorldEdits, readbackAdapters, readbackFailures } from '../src/index.js';
import { fixtureModel } from './support/fixture-model.js';

const fx = fixtureModel('cat-lora-rome-');
if (fx) {
  const { res, tmp } = fx;
  const pct = (x: number) => `${(100 * x).toFixed(0)}%`;

  t.test('ROME single edits: two held-out requests (64–65), each alone, pass validate\'s default gates, every edit under kl and retain_drop', async (t) => {
    // Read back the strict way (every other fact in its held-out phrasings, eval/facts-heldout.ndjson), each edit
    // alone, as validate judges each bundle: the gates on the means over the edits and kl / retain_drop on every
    // edit. Requests 61–70, per edit, with the defaults since 2026-12-06, night (each insert made at layers 0 and 1,
    // the smaller ‖δ‖ kept: layer 1 for all ten; eval-edits.mjs --method rome --skip 60 --count 10): kl 0.011 on
    // average, the largest request 64's (0.030, ‖δ‖ 28.0); layer 0 alone 0.002–0.030; ROME's closed-form key
    // (--rome-key-steps 0) 0.300 on average. Two edits only, the largest and the next (each is made twice now:
    // 70–120 s of CPU an edit; four made this the longest file of CI).
    const facts = readNdjson(path.join(worldDir(), 'edits.ndjson')).filter((f) => f.op === 'insert').slice(63, 65);
    const m = await measureWorldEdits(res, { method: 'rome', op: 'insert', count: 2, skip: 63, out: path.join(tmp, 'rome') });
    t.equal(m.adapters, 2, 'one adapter per fact');
    const f = readbackAdapters(res, m.records, facts, path.join(worldDir(), 'eval/facts-heldout.ndjson'), 'rome')!;
    t.comment(
      `efficacy ${pct(f.efficacy)}, paraphrase ${pct(f.paraphrase)} (n=${f.n.paraphrase}), neighbourhood ${pct(f.neighbourhood)} (n=${f.n.neighbourhood}), ` +
        `kl ${f.kl.toFixed(3)} ± ${f.kl_se.toFixed(3)}, retain_drop ${f.retain_drop.toFixed(3)} (n=${f.n.retain}), ${m.seconds.toFixed(1)} s`,
    );
    t.ok(f.n.retain >= 2800, `retention over every other fact's held-out phrasings (${f.n.retain})`);
    t.ok(f.kl <= 0.05, `kl ${f.kl.toFixed(3)} ≤ 0.05 (the mean over the edits)`);
    t.ok(f.retain_drop <= 0.05, `retain_drop ${f.retain_drop.toFixed(3)} ≤ 0.05`);
    t.ok(f.kl_max <= 0.05, `every edit alone: largest kl ${f.kl_max.toFixed(3)} ≤ 0.05`);
    t.ok(f.retain_drop_max <= 0.05, `every edit alone: largest retain_drop ${f.retain_drop_max.toFixed(3)} ≤ 0.05`);
    t.same(readbackFailures(f, 'insert'), [], 'validate\'s default gates pass');
    t.ok(m.figures.neighbourhood >= 0.9, `neighbourhood kept ${pct(m.figures.neighbourhood)} ≥ 90%`);
    // each edit names the decay on ‖δ‖ that made it and its key refit
    const read = m.records.map((r) => JSON.parse(fs.readFileSync(path.join(r.path, 'catechism.json'), 'utf8')));
    const manifests = read.map((x) => x.hyperparameters);
    const trained = read.map((x) => x.training);
    t.ok(manifests.every((h) => h.rome_insert_compare === 2) && trained.every((x) => x.layers_compared?.length === 2), 'every edit made at two layers');
    t.ok(trained.every((x) => x.delta_norm === Math.min(...x.layers_compared.map((c: { delta_norm: number }) => c.delta_norm))), `the smaller ‖δ‖ kept each time (layers ${manifests.map((h) => h.layer).join(', ')})`);
    t.ok(manifests.every((h) => ROME_INSERT_DECAYS.includes(h.weightDecay)), `decays ${manifests.map((h) => h.weightDecay).join(', ')} are ROME_INSERT_DECAYS'`);
    t.ok(manifests.every((h) => h.rome_key_steps === 100 && h.rome_key_pool === 256 && h.rome_key_prefixed === 1 && h.rome_key_draw === 4 && h.rome_key_own > 0), 'every edit\'s key refitted: 100 steps, 256 facts held (the least certain of 1,024 drawn) and the subject\'s own, each after a prefix');
  });
}
