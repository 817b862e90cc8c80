/**
 * The test side and the train side of retention never share a prompt
 * (issue 17): validate's default retention set (and scripts/eval-edits.mjs's
 * read-back, the same file) holds a world's held-out phrasings; lora-train's
 * retention rows (known facts and neighbours, knownFactRetainPrompts and
 * trainPhrasings in core) come from the relations' training phrasings. Checked
 * over every prompt training could draw (every known fact in every training
 * phrasing), on both fixture worlds.
 */
import t from 'tap';
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { knownFactRetainPrompts, loadTemplateBank, readNdjson, trainPhrasings } from '@catechism/core/edit';
import { resolveEvalSets } from '../src/sets.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const models = path.join(root, 'fixtures/models');

for (const [name, model] of [['world', 'dense'], ['world-b', 'dense-b']] as const) {
  const world = path.join(root, 'fixtures', name);
  t.test(`${name}: validate's default retention set shares no prompt with lora-train's retention rows`, async (t) => {
    if (!existsSync(path.join(world, 'templates.json'))) return t.skip(`no ${world}`);
    const sets = resolveEvalSets({
      modelDir: path.join(models, model), fixtureModels: models, fixtureWorld: path.join(root, 'fixtures/world'),
      ...(name === 'world' ? {} : { world }), retainN: 1e9, generalN: 0,
    });
    t.equal(path.relative(world, sets.retainSource!), path.join('eval', 'facts-heldout.ndjson'), 'default retention set: the held-out phrasings');
    const known = readNdjson(path.join(world, 'facts.ndjson'));
    const templates = loadTemplateBank(path.join(world, 'templates.json'));
    t.equal(sets.retain.length, 2 * known.length, 'every fact, two held-out phrasings each, used whole');
    // every prompt retention training could draw: each known fact in every training phrasing (and its own prompt)
    const train = new Set(knownFactRetainPrompts(known, templates, [], known.length, 0, 1000));
    for (const k of known) train.add(String(k.prompt).replace('{}', String(k.subject)));
    for (const rel of templates.train.keys()) t.ok(trainPhrasings(templates, rel).length > 0, `${rel}: has training phrasings`);
    const shared = sets.retain.filter((p) => train.has(p.prompt));
    t.same(shared.map((p) => p.prompt).slice(0, 5), [], `none of ${sets.retain.length} retention prompts is among ${train.size} training prompts`);
    // the check can fail: the old default (training phrasings) is inside the training side
    const old = readNdjson(path.join(world, 'eval/facts-train.ndjson'));
    t.equal(old.filter((p) => train.has(String(p.prompt))).length, old.length, 'control: every facts-train.ndjson prompt is a training prompt');
  });
}

t.test('trainPhrasings drops a held-out phrasing that a template bank also lists for training', async (t) => {
  const bank = { train: new Map([['r', ['{} a', '{} b', '{} c']]]), heldout: new Map([['r', ['{} b']]]), contextFrames: [] };
  t.same(trainPhrasings(bank, 'r'), ['{} a', '{} c']);
  const prompts = knownFactRetainPrompts([{ subject: 'X', prompt: '{} a', relation: 'r' }], bank, [], 1, 0, 10);
  t.same(prompts.sort(), ['X a', 'X c'], 'every training phrasing but the held-out one');
  t.same(knownFactRetainPrompts([{ subject: 'X', prompt: '{} a', relation: 'r' }], bank, [{ subject: 'X', relation: 'r' }], 1, 0, 10), [], 'the edited fact is left out');
});
