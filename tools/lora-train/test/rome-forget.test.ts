/**
 * A ROME forget holds other subjects with the forgotten answer while its key
 * is refitted (--rome-forget-hold), so a neighbour validate reads keeps the
 * answer (the dense fixture model; LORA_TRAIN_TEST_MODEL names another).
 * Skipped when no such model is present.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { lastLogits, readNdjson } from '@catechism/core/edit';
import { worldDir } from '@catechism/core/fixtures';
import { logSoftmaxRow } from '@catechism/core/metrics';
import { loadLora } from '@catechism/core/models';
import { DEFAULT_ARGS, counterfactualFacts, trainEdits } from '../src/index.js';
import { fixtureModel } from './support/fixture-model.js';

const fx = fixtureModel('cat-lora-rome-forget-');
if (fx) {
  const { res, tmp } = fx;

  t.test('a ROME forget keeps the forgotten answer of a test neighbour that holds it too', async (t) => {
    // forget 63 of the seeded order (scripts/unlearn/forget-eval.mjs --skip 62 --count 1): "The favorite sport of
    // Bejo Holmor is" cycling. Without the holders held (--rome-forget-hold 0) the forget took "Nami Soel
    // Estener"'s cycling down too (P 0.99 → 0.22 at layer 0; 0.15 at the layer the monitor chose), and validate
    // failed it on specificity; with them, 0.75 (lora-train README, "ROME forget: tuning the kl").
    const world = worldDir();
    const [fact] = counterfactualFacts(readNdjson(path.join(world, 'facts.ndjson')), {
      skip: 62, count: 1, seed: 0, op: 'forget', exclude: readNdjson(path.join(world, 'edits.ndjson')),
    });
    t.equal(fact.subject, 'Bejo Holmor', 'the seeded order gives the fact the comment names');
    // the neighbour as a test probe of the stream, so the fit never holds that prompt
    const neighbour = { kind: 'probe', id: `${fact.id}/neighborhood/0`, fact_id: fact.id, role: 'neighborhood', split: 'test', prompt: fact.prompt.replace('{}', 'Nami Soel Estener'), target: fact.target_true, expect: 'unchanged' };
    const inputs = [fact, neighbour].map((record, i) => ({ record, source: 'test', index: i + 1 }));
    // (the first layer that forgets: --rome-forget-compare 1 halves the time)
    const [rec] = await trainEdits(inputs, { ...DEFAULT_ARGS, seed: 0, method: 'rome', out: path.join(tmp, 'forget'), options: { 'rome-forget-compare': 1 } }, res, { log: () => {} });
    const man = JSON.parse(fs.readFileSync(path.join(rec.path, 'catechism.json'), 'utf8'));
    t.equal(man.hyperparameters.rome_forget_hold, 32, 'the manifest names the holders held (the default 32)');
    t.equal(man.training.train_prompts_solved, man.training.train_prompts, 'the forget took on every train prompt');
    const tok = res.tokenizer;
    const model = res.model;
    const answer = tok.encode(` ${fact.target_true}`)[0];
    const read = () => {
      const row = logSoftmaxRow(lastLogits(model, [tok.encode(neighbour.prompt)]).data);
      return { p: Math.exp(row[answer]), top1: row.every((v) => v <= row[answer]) };
    };
    const before = read();
    model.setAdapters([{ adapter: loadLora(rec.path) }]);
    const after = read();
    model.setAdapters([]);
    t.ok(before.top1 && before.p > 0.9, `the base model answers the neighbour with ${fact.target_true} (P ${before.p.toFixed(3)})`);
    t.ok(after.top1 && after.p > 0.5, `with the forget it still does (P ${after.p.toFixed(3)})`);
  });
}
