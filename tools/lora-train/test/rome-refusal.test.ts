/**
 * ROME refuses an edit that did not take, by default tries later layers, and
 * of the first two where an insert takes keeps the smaller ‖δ‖ (the dense
 * fixture model; LORA_TRAIN_TEST_MODEL names another). Split from
 * rome-quality.test.ts so the two run side by side. Skipped when no such
 * model is present.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { worldDir } from '@catechism/core/fixtures';
import { DEFAULT_ARGS, trainEdits } from '../src/index.js';
import { fixtureModel } from './support/fixture-model.js';

const fx = fixtureModel('cat-lora-rome-refusal-');
if (fx) {
  const { res, tmp } = fx;

  t.test('ROME refuses an edit that did not take; by default it tries later layers and keeps the smaller of two edits that take', async (t) => {
    // edit-0024: a surname four other people share; with ROME's closed-form direction its layer-0 key cannot tell
    // them apart (the refusal is checked there: --rome-key-steps 0); the refitted key can
    const edits = fs.readFileSync(path.join(worldDir(), 'edits.ndjson'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
    const fact = edits.find((f) => f.id === 'edit-0024');
    const inputs = [{ record: fact, source: 'edits', index: 1 }];
    const edit = async (layer: number | undefined, out: string, options: Record<string, unknown> = {}) => {
      const [rec] = await trainEdits(inputs, { ...DEFAULT_ARGS, seed: 0, method: 'rome', layer, out: path.join(tmp, out), options }, res, { log: () => {} });
      return JSON.parse(fs.readFileSync(path.join(rec.path, 'catechism.json'), 'utf8'));
    };
    // (the first layer that takes is kept: --rome-insert-compare 1)
    const closedForm = { 'rome-key-steps': 0, 'rome-insert-compare': 1 };
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
    t.equal(refitted.training.train_prompts_solved, 1, 'with the key refitted (the default) the edit takes');
    const compared: { layer: number; delta_norm: number }[] = refitted.training.layers_compared;
    t.equal(refitted.hyperparameters.rome_insert_compare, 2, 'the manifest names the comparison');
    t.same(compared.map((c) => c.layer), [0, 1], 'layers 0 and 1 both take and are compared');
    const least = compared.reduce((a, c) => (c.delta_norm < a.delta_norm ? c : a));
    t.equal(refitted.hyperparameters.layer, least.layer, `the smaller ‖δ‖ kept (${compared.map((c) => `layer ${c.layer}: ${c.delta_norm.toFixed(1)}`).join(', ')})`);
    t.equal(refitted.training.delta_norm, least.delta_norm, 'its ‖δ‖ is the one written');
    t.ok(refitted.hyperparameters.rome_key_steps > 0 && refitted.hyperparameters.rome_key_pool > 0, `the manifest names the refit (${refitted.hyperparameters.rome_key_steps} steps, ${refitted.hyperparameters.rome_key_pool} facts held)`);
  });
}
