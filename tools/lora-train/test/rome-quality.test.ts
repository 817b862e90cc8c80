/**
 * ROME single edits on a model that knows the fixture world (the dense
 * fixture model; LORA_TRAIN_TEST_MODEL names another): five held-out edits
 * each alone against validate's default gates (issue 17), and the refusal
 * of an edit that did not take. Skipped when no such model is present.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { worldDir } from '@catechism/core/fixtures';
import { ROME_INSERT_DECAYS, readNdjson } from '@catechism/core/edit';
import { DEFAULT_ARGS, measureWorldEdits, readbackAdapters, readbackFailures, trainEdits } from '../src/index.js';
import { fixtureModel } from './support/fixture-model.js';

const fx = fixtureModel('cat-lora-rome-');
if (fx) {
  const { res, tmp } = fx;
  const pct = (x: number) => `${(100 * x).toFixed(0)}%`;

  t.test('ROME single edits: five held-out requests (61–65), each alone, pass validate\'s default gates, every edit under kl and retain_drop', async (t) => {
    // Read back the strict way (every other fact in its held-out phrasings, eval/facts-heldout.ndjson), each edit
    // alone, as validate judges each bundle: the gates on the means over the edits and kl / retain_drop on every
    // edit. Requests 61–70, per edit, with the key refitted on held prompts read after a context prefix (the
    // default since 2026-12-06): kl 0.004–0.065 (61–65: 0.006–0.041); refitted on plain prompts 0.006–0.066
    // (61–65: 0.013–0.052, edit 64 over the gate); ROME's closed-form key (--rome-key-steps 0) kl 0.300 on average.
    // The first five only: about 35 s of CPU an edit, and ten made this the longest file of CI.
    const facts = readNdjson(path.join(worldDir(), 'edits.ndjson')).filter((f) => f.op === 'insert').slice(60, 65);
    const m = await measureWorldEdits(res, { method: 'rome', op: 'insert', count: 5, skip: 60, out: path.join(tmp, 'rome') });
    t.equal(m.adapters, 5, 'one adapter per fact');
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
    const manifests = m.records.map((r) => JSON.parse(fs.readFileSync(path.join(r.path, 'catechism.json'), 'utf8')).hyperparameters);
    t.ok(manifests.every((h) => ROME_INSERT_DECAYS.includes(h.weightDecay)), `decays ${manifests.map((h) => h.weightDecay).join(', ')} are ROME_INSERT_DECAYS'`);
    t.ok(manifests.every((h) => h.rome_key_steps === 100 && h.rome_key_pool === 256 && h.rome_key_prefixed === 1), 'every edit\'s key refitted: 100 steps, 256 facts held, each after a prefix');
  });

  t.test('ROME refuses an edit that did not take; by default it tries later layers', async (t) => {
    // edit-0024: a surname four other people share; with ROME's closed-form direction its layer-0 key cannot tell
    // them apart (the refusal is checked there: --rome-key-steps 0); the refitted key can
    const edits = fs.readFileSync(path.join(worldDir(), 'edits.ndjson'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
    const fact = edits.find((f) => f.id === 'edit-0024');
    const inputs = [{ record: fact, source: 'edits', index: 1 }];
    const edit = async (layer: number | undefined, out: string, options: Record<string, unknown> = {}) => {
      const [rec] = await trainEdits(inputs, { ...DEFAULT_ARGS, seed: 0, method: 'rome', layer, out: path.join(tmp, out), options }, res, { log: () => {} });
      return JSON.parse(fs.readFileSync(path.join(rec.path, 'catechism.json'), 'utf8'));
    };
    const closedForm = { 'rome-key-steps': 0 };
    // at layer 0 the fact's own prompt is not solved: ROME refuses rather than write an edit that did not take
    await t.rejects(edit(0, 'layer0', closedForm), { name: 'EditRefusedError', message: /edit-0024: 0 of 1 train prompts .* layer 0/ }, '--layer 0 refuses');
    t.notOk(fs.existsSync(path.join(tmp, 'layer0')) && fs.readdirSync(path.join(tmp, 'layer0')).length > 0, 'no bundle written');
    const chosen = await edit(undefined, 'auto', closedForm);
    t.ok(chosen.hyperparameters.layer > 0, `edited at layer ${chosen.hyperparameters.layer} (tried ${chosen.hyperparameters.layers_tried})`);
    t.same(chosen.hyperparameters.layers_tried.slice(0, 1), [0], 'the default layer first');
    t.equal(chosen.training.train_prompts, 1, 'one train prompt: the fact\'s own');
    t.equal(chosen.training.train_prompts_solved, 1, 'the later layer solves it');
    t.equal(chosen.hyperparameters.rome_key_steps, 0, 'the manifest says the key is the closed form');
    const refitted = await edit(undefined, 'refit');
    t.equal(refitted.hyperparameters.layer, 0, 'with the key refitted (the default) layer 0 states it');
    t.equal(refitted.training.train_prompts_solved, 1, 'solved');
    t.ok(refitted.hyperparameters.rome_key_steps > 0 && refitted.hyperparameters.rome_key_pool > 0, `the manifest names the refit (${refitted.hyperparameters.rome_key_steps} steps, ${refitted.hyperparameters.rome_key_pool} facts held)`);
  });
}
