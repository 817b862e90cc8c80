import t from 'tap';
import { validateRecord, normaliseRecord, templateFromQuestion } from '../src/records/index.js';
import { errorOf } from './support/records.js';

const fact = {
  kind: 'fact',
  id: 'f1',
  subject: 'France',
  prompt: 'The capital of {} is',
  target_new: 'Lyon',
};

t.test('valid records of every kind pass, extra fields kept', async (t) => {
  t.same(validateRecord({ ...fact, note: 1 }), { ...fact, note: 1 });
  validateRecord({ kind: 'probe', fact_id: 'f1', role: 'edit', split: 'train', prompt: 'p', expect: 'new' });
  validateRecord({ kind: 'locus', fact_id: 'f1', site: 'layers.1.mlp', layer: 1, method: 'trace', score: 0.5 });
  validateRecord({
    kind: 'adapter', id: 'a', version: 1, path: 'p', method: 'lora', base_model: { name: 'm', sha256: 'x' },
    targets: ['t'], rank: 4, fact_ids: ['f1'], created_at: '2026-01-01T00:00:00Z',
  });
  validateRecord({ kind: 'report', adapter_id: 'a', metrics: { efficacy: 1 }, pass: true, failures: [] });
  validateRecord({ kind: 'route', token_index: 0, layer: 0, experts: [1], weights: [0.5, 0.5] });
});

t.test('unknown kinds pass untouched', async (t) => {
  const r = { kind: 'whatever', x: [1, { y: null }] };
  t.equal(validateRecord(r), r);
});

t.test('errors name the field path and what was expected', async (t) => {
  let e = errorOf(() => validateRecord({ ...fact, prompt: 7 }));
  t.equal(e.field, 'prompt');
  t.equal(e.message, 'field "prompt": expected string, got number');

  e = errorOf(() => validateRecord({ kind: 'fact', id: 'f', prompt: '{} x', target_new: 'y' }));
  t.equal(e.field, 'subject');
  t.match(e.message, /missing required field/);

  e = errorOf(() => validateRecord({ ...fact, prompts: { paraphrase: ['ok', 3] } }));
  t.equal(e.field, 'prompts.paraphrase[1]');

  e = errorOf(() => validateRecord({ kind: 'probe', fact_id: 'f1', role: 'editt', split: 'train', prompt: 'p', expect: 'new' }));
  t.equal(e.field, 'role');
  t.match(e.message, /expected one of "edit", .*got "editt"/);

  e = errorOf(() => validateRecord({ kind: 'adapter', id: 'a', version: 1, path: 'p', method: 'lora', base_model: { name: 'm' }, targets: [], rank: 1, fact_ids: [], created_at: 'x' }));
  t.equal(e.field, 'base_model.sha256');

  e = errorOf(() => validateRecord({ kind: 'report', adapter_id: 'a', metrics: { a: 'high' }, pass: true, failures: [] }));
  t.equal(e.field, 'metrics.a');

  e = errorOf(() => validateRecord([1]));
  t.match(e.message, /expected a JSON object, got array/);

  e = errorOf(() => validateRecord({ x: 1 }));
  t.equal(e.field, 'kind');
});

t.test('fact rules across fields', async (t) => {
  t.equal(errorOf(() => validateRecord({ ...fact, prompt: 'no slot' })).field, 'prompt');
  t.equal(errorOf(() => validateRecord({ ...fact, target_new: undefined })).field, 'target_new');
  t.equal(errorOf(() => validateRecord({ ...fact, op: 'forget' })).field, 'target_true');
  validateRecord({ ...fact, target_new: undefined, op: 'forget', target_true: 'Paris' });
  t.equal(errorOf(() => validateRecord({ ...fact, confidence: 1.5 })).field, 'confidence');
});

t.test('CounterFact records become facts with their extra prompts', async (t) => {
  const cf = {
    case_id: 7,
    pararel_idx: 1,
    requested_rewrite: {
      prompt: 'The mother tongue of {} is',
      relation_id: 'P103',
      target_new: { str: 'English', id: 'Q1860' },
      target_true: { str: 'French', id: 'Q150' },
      subject: 'Danielle Darrieux',
    },
    paraphrase_prompts: ['a'],
    neighborhood_prompts: ['b', 'c'],
    attribute_prompts: ['d'],
    generation_prompts: ['e'],
  };
  const f = normaliseRecord(cf);
  t.same(f, {
    kind: 'fact', id: 'counterfact-7', subject: 'Danielle Darrieux', prompt: 'The mother tongue of {} is',
    target_new: 'English', target_true: 'French', relation: 'P103', op: 'insert', source: 'counterfact',
    prompts: { paraphrase: ['a'], neighborhood: ['b', 'c'], attribute: ['d'], generation: ['e'] },
  });
  validateRecord(f);
  const e = errorOf(() => normaliseRecord({ ...cf, requested_rewrite: { ...cf.requested_rewrite, target_new: { str: 5 } } }));
  t.equal(e.field, 'requested_rewrite.target_new.str');
  t.equal(e.message, 'field "requested_rewrite.target_new.str": expected string, got number');
});

t.test('zsRE questions become {} templates', async (t) => {
  t.equal(templateFromQuestion('What university did Watts Humphrey attend?', 'Watts Humphrey'), 'What university did {} attend?');
  t.equal(templateFromQuestion('Which constellation is eta draconis a part of?', 'Eta Draconis'), 'Which constellation is {} a part of?');
  t.equal(templateFromQuestion('Who made it?', 'Nobody'), null);
  const z = {
    subject: 'Eta Draconis', src: 'Which constellation is eta draconis a part of?', alt: 'Ursa Minor', answers: ['Draco'],
    rephrase: 'What is the constellation that Eta Draconis belongs to?', loc: 'nq question: who sang x', loc_ans: 'Y',
  };
  const f = normaliseRecord(z) as Record<string, unknown>;
  t.same(f, {
    kind: 'fact', id: 'zsre-dc656e4b425d', subject: 'eta draconis', prompt: 'Which constellation is {} a part of?',
    target_new: 'Ursa Minor', target_true: 'Draco', op: 'insert', source: 'zsre',
    prompts: { paraphrase: [z.rephrase] }, locality: [{ prompt: z.loc, target: 'Y' }],
  });
  // The id is sha256("subject\nsrc\nalt"), first 12 hex digits (checked with sha256sum).
  t.equal((normaliseRecord({ ...z, answers: [] }) as Record<string, unknown>).id, 'zsre-dc656e4b425d', 'id ignores the true answers');
  t.not((normaliseRecord({ ...z, alt: 'Draco' }) as Record<string, unknown>).id, f.id);
  // Substituting the subject back gives the question exactly.
  t.equal((f.prompt as string).replace('{}', f.subject as string), z.src);
  t.equal(errorOf(() => normaliseRecord({ ...z, src: 'Which one?' })).field, 'src');
  t.equal(errorOf(() => normaliseRecord({ ...z, alt: ['x'] })).field, 'alt');
});

t.test('records with a kind are not normalised', async (t) => {
  const r = { kind: 'note', requested_rewrite: 1 };
  t.equal(normaliseRecord(r), r);
});
