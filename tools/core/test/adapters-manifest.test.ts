import t from 'tap';
import { createManifest, manifestProblems, validateManifest, ManifestError, normaliseReport, reportProblems, MANIFEST_FORMAT } from '../src/adapters/index.js';

const H = (c: string) => c.repeat(64);

function good(): Record<string, unknown> {
  return {
    format: MANIFEST_FORMAT,
    format_version: 1,
    id: 'fact-eiffel',
    version: 1,
    method: 'rome',
    base_model: { name: 'fixtures/models/tiny', sha256: H('a') },
    targets: ['transformer.h.1.mlp.c_proj'],
    rank: 1,
    fact_ids: ['f1'],
    facts: [{ kind: 'fact', id: 'f1', subject: 'Eiffel Tower', prompt: '{} is in', target_new: 'Rome' }],
    source: 'user-correction',
    author: 'alice',
    confidence: 0.9,
    data_sha256: H('b'),
    parents: [{ id: 'older', sha256: H('c') }],
    probes: [{ kind: 'probe', fact_id: 'f1', role: 'edit', split: 'test', prompt: 'Eiffel Tower is in', target: 'Rome', expect: 'new' }],
    created_at: '2026-11-23T10:00:00Z',
    validation: [{ kind: 'report', adapter_id: 'fact-eiffel', pass: true, metrics: { esr: 1 } }],
  };
}

t.test('a complete manifest validates and keeps its fields', async (t) => {
  const m = validateManifest(good());
  t.equal(m.id, 'fact-eiffel');
  t.equal(m.validation[0].pass, true);
  t.same(manifestProblems(good()), []);
});

t.test('every bad field is reported with its path', async (t) => {
  const m = good();
  m.version = 0;
  (m.base_model as Record<string, unknown>).sha256 = 'xyz';
  m.targets = [];
  m.fact_ids = ['f1', 'f1'];
  m.facts = [{ kind: 'fact', id: 'f9' }];
  m.confidence = 1.5;
  m.parents = [{ id: 'p' }];
  m.probes = [{ kind: 'fact' }];
  m.created_at = 'yesterday';
  m.validation = [{ kind: 'report', adapter_id: 'someone-else', pass: true }, { kind: 'report', adapter_id: 'fact-eiffel' }];
  delete m.data_sha256;
  const paths = manifestProblems(m).map((p) => p.path).sort();
  t.same(paths, [
    '$.base_model.sha256',
    '$.confidence',
    '$.created_at',
    '$.data_sha256',
    '$.fact_ids[1]',
    '$.facts[0].id',
    '$.parents[0].sha256',
    '$.probes[0].kind',
    '$.targets',
    '$.validation[0].adapter_id',
    '$.validation[1].pass',
    '$.version',
  ]);
  let caught: unknown;
  try {
    validateManifest(m, 'x/catechism.json');
  } catch (err) {
    caught = err;
  }
  t.ok(caught instanceof ManifestError, 'throws a ManifestError');
  const e = caught as ManifestError;
  t.match(e.message, /^x\/catechism\.json: invalid manifest: /);
  t.match(e.message, /and 7 more/);
  t.equal(e.problems.length, 12);
});

t.test('non-object, wrong format and version are refused', async (t) => {
  t.match(manifestProblems([])[0], { path: '$', message: /JSON object/ });
  const m = good();
  m.format = 'peft';
  m.format_version = 2;
  t.same(manifestProblems(m).map((p) => p.path), ['$.format', '$.format_version']);
});

t.test('createManifest fills defaults and validates', async (t) => {
  const m = createManifest({ id: 'a', version: 2, method: 'lora', base_model: { name: 'm', sha256: H('d') }, targets: ['x'], rank: 4, fact_ids: [], data_sha256: H('e') });
  t.same([m.parents, m.probes, m.validation, m.facts, m.source, m.confidence], [[], [], [], [], null, null]);
  t.ok(!Number.isNaN(Date.parse(m.created_at)));
  t.throws(() => createManifest({ id: 'a b', version: 1, method: 'LoRA', base_model: { name: 'm', sha256: H('d') }, targets: ['x'], rank: 4, fact_ids: [], data_sha256: H('e') }), /\$\.id.*\$\.method/);
});

t.test('reports: adapter id aliases are normalised, missing fields named', async (t) => {
  t.equal(normaliseReport({ kind: 'report', adapter: 'x', pass: false }).adapter_id, 'x');
  t.equal(normaliseReport({ kind: 'report', adapter: { id: 'y' }, pass: true }).adapter_id, 'y');
  t.same(reportProblems({ kind: 'probe' }).map((p) => p.path), ['$.kind', '$.pass', '$.adapter_id']);
  t.throws(() => normaliseReport({ kind: 'report', pass: true }), /adapter_id/);
});
