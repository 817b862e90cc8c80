// The library under the CLI: generateAll, the bank parser, the paraphraser's answer parser.
import t from 'tap';
import { Rng } from '@catechism/core';
import type { Fact, InputRecord, ProbeRole } from '@catechism/core/records';
import { ALL_ROLES, checkFact, generateAll, hash32, type FullOptions } from '../src/generator.js';
import { entryFor, parseBank } from '../src/bank.js';
import { parseAnswers } from '../src/paraphraser.js';

const bank = parseBank(
  {
    capital: { subject_type: 'country', train: ['The capital of {} is', 'The capital city of {} is', '{} has its capital in'], heldout: ['The seat of government of {} is'] },
    language: { subject_type: 'country', train: ['People in {} speak'], heldout: [] },
  },
  'inline',
);

function opts(over: Partial<FullOptions> = {}): FullOptions {
  return {
    roles: new Set<ProbeRole>(ALL_ROLES),
    seed: 0,
    makeRng: (s) => new Rng(s),
    bank,
    kb: [
      { id: 'k1', subject: 'Spain', relation: 'capital', target: 'Paris' },
      { id: 'k2', subject: 'Italy', relation: 'capital', target: 'Paris' },
      { id: 'k3', subject: 'Chile', relation: 'capital', target: 'Lima' },
      { id: 'k4', subject: 'France', relation: 'capital', target: 'Paris' },
    ],
    paraphraseTestFraction: 0.5,
    maxParaphrases: 0,
    contexts: [],
    neighbors: 1,
    trainNeighbors: 1,
    generations: 3,
    forgetTarget: 'any',
    abstainText: 'unknown',
    general: ['one text.', 'two text.', 'three text.', 'one text.'],
    replay: 0.25,
    onConflict: 'last',
    keepFacts: true,
    log: () => {},
    ...over,
  };
}

const at = (record: Fact | Record<string, unknown>, index: number): InputRecord => ({ record: record as InputRecord['record'], source: 'test', index });
const france: Fact = { kind: 'fact', id: 'fr', subject: 'France', prompt: 'The capital of {} is', target_new: 'Lyon', target_true: 'Paris', relation: 'capital' };

t.test('one insert: every role, splits and expectations', async (t) => {
  const out = generateAll([at(france, 1)], opts());
  const ps = out.filter((r) => r.kind === 'probe') as Array<Record<string, any>>;
  const row = (role: string) => ps.filter((p) => p.role === role).map((p) => [p.split, p.prompt, p.target, p.expect]);
  t.same(out[0], france, 'the fact first, untouched');
  t.same(row('edit'), [['train', 'The capital of France is', 'Lyon', 'new']]);
  t.same(row('paraphrase'), [
    ['train', 'The capital city of France is', 'Lyon', 'new'],
    ['train', 'France has its capital in', 'Lyon', 'new'],
    ['test', 'The seat of government of France is', 'Lyon', 'new'],
  ]);
  const nb = ps.filter((p) => p.role === 'neighborhood');
  t.same(nb.map((p) => p.split), ['test', 'train']);
  t.same(nb.map((p) => p.subject).sort(), ['Italy', 'Spain'], 'same relation and answer, never France itself or Chile (Lima)');
  t.ok(nb.every((p) => p.target === 'Paris' && p.expect === 'unchanged' && p.prompt === `The capital of ${p.subject} is`));
  t.same(row('counterfactual'), [['test', 'The capital of France is', 'Paris', 'abstain']]);
  t.same(row('generation'), [['test', 'People in France speak', undefined, 'new']], 'the other relation of the same subject type');
  // 4 train probes of the fact → round(0.25 × 4) = 1 general probe, shared
  const general = ps.filter((p) => p.role === 'general');
  t.equal(general.length, 1);
  t.same([general[0].fact_id, general[0].split, general[0].expect], ['*', 'train', 'unchanged']);
  t.same(out[out.length - 1], general[0], 'general probes last');
});

t.test('a subject edited in the stream is never a neighbour', async (t) => {
  const spain: Fact = { kind: 'fact', id: 'es', subject: 'Spain', prompt: 'The capital of {} is', target_new: 'Rome', target_true: 'Paris', relation: 'capital' };
  const out = generateAll([at(france, 1), at(spain, 2)], opts({ neighbors: 5, trainNeighbors: 0 }));
  const nb = out.filter((r) => r.kind === 'probe' && r.role === 'neighborhood' && r.fact_id === 'fr');
  t.same(nb.map((p) => p.subject), ['Italy']);
});

t.test('the stream\'s own facts are knowledge too', async (t) => {
  const known: Fact = { kind: 'fact', id: 'de', subject: 'Germany', prompt: 'The capital of {} is', target_true: 'Paris', relation: 'capital', op: 'insert' };
  const nbOf = (out: Array<Record<string, unknown>>) => out.filter((r) => r.kind === 'probe' && r.role === 'neighborhood' && r.fact_id === 'fr').map((p) => p.subject);
  const roles = new Set<ProbeRole>(['neighborhood']);
  t.same(nbOf(generateAll([at(france, 1), at(known, 2)], opts({ kb: [], roles, neighbors: 5, trainNeighbors: 0 }))), ['Germany']);
  // with edit probes, Germany's own prompt is trained on, so it cannot be a test neighbour
  const out = generateAll([at(france, 1), at(known, 2)], opts({ kb: [], neighbors: 5, trainNeighbors: 0 }));
  t.same(nbOf(out), []);
  const own = out.filter((r) => r.kind === 'probe' && r.fact_id === 'de' && r.role === 'edit');
  t.same(own.map((p) => [p.target, p.expect]), [['Paris', 'true']], 'a plain fact is taught as it is');
});

t.test('already_known facts are flagged with their probes; a seed picks neighbours', async (t) => {
  const out = generateAll([at(france, 1)], opts({ known: new Set(['fr']), roles: new Set<ProbeRole>(['edit']) }));
  t.same(out.map((r) => r.already_known), [true, true]);
  const pick = (seed: number) => generateAll([at(france, 1)], opts({ seed, neighbors: 1, trainNeighbors: 0 })).filter((r) => r.role === 'neighborhood').map((r) => r.subject)[0];
  const seen = new Set(Array.from({ length: 12 }, (_, s) => pick(s)));
  t.same([...seen].sort(), ['Italy', 'Spain'], 'different seeds reach both neighbours');
  t.equal(pick(3), pick(3));
});

t.test('checkFact', async (t) => {
  t.throws(() => checkFact({ ...france, prompt: 'The capital is' }), { field: 'prompt' });
  t.throws(() => checkFact({ ...france, target_new: '' }), { field: 'target_new', detail: 'expected a non-empty answer, got an empty string' });
  t.throws(() => checkFact({ kind: 'fact', id: 'x', subject: 'S', prompt: '{} is', op: 'forget' }), { field: 'target_true' });
  t.doesNotThrow(() => checkFact(france));
});

t.test('bank: both shapes, bad templates refused, lookup by relation or template', async (t) => {
  const world = parseBank({ world: 'w', question_format: 'Q: {q} A:', relations: { r: { subject_type: 'x', prompts: { train: ['{} a'], heldout: ['{} b'] } } } }, 'f');
  t.same(world.byRelation.get('r'), { relation: 'r', subjectType: 'x', train: ['{} a'], heldout: ['{} b'] });
  t.throws(() => parseBank({ r: { train: ['no slot'] } }, 'f.json'), /--templates f\.json: r\.train\[0\]: template "no slot" has no "\{\}"/);
  t.equal(entryFor(bank, undefined, 'People in {} speak')?.relation, 'language');
  t.equal(entryFor(bank, 'capital', 'whatever {}')?.relation, 'capital');
});

t.test('paraphraser answers: parsed, filled, subject-less dropped, errors named', async (t) => {
  const req = [{ id: 'a', prompt: 'S is', template: '{} is', subject: 'S', n: 2 }];
  t.same([...parseAnswers('{"id":"a","paraphrases":["{} was","S has been","nothing"]}\n\n', req)], [['a', ['S was', 'S has been']]]);
  t.throws(() => parseAnswers('{"id":"b","paraphrases":[]}', req), /output line 1: unknown id "b"/);
  t.throws(() => parseAnswers('ok\n', req), /output line 1 is not JSON/);
});

t.test('hash32 is FNV-1a', async (t) => {
  t.equal(hash32(''), 0x811c9dc5);
  t.equal(hash32('a'), 0xe40c292c);
  t.equal(hash32('foobar'), 0xbf9cf968);
});
