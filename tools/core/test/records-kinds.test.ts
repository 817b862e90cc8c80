/**
 * The one record contract (issue 16 §3): every kind the tools write is in the
 * schema, checked on input and passed through; the edit layer's fact check,
 * the templates reader and the hash are the shared ones.
 */
import t from 'tap';
import { PassThrough, Readable } from 'node:stream';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import {
  InputError, UsageError, KNOWN_KINDS, createRecordWriter, isKind, isRecord, parseRecord, readRecords, readTemplates,
  validateRecord, type AnyRecord, type OutputFormat,
} from '../src/records/index.js';
import { writeSyntheticBundle } from '../src/adapters/index.js';
import { Registry } from '../src/registry/index.js';
import { EditDataError, checkFact, loadTemplateBank } from '../src/edit/index.js';
import { fnv1a32 } from '../src/util/random.js';
import { errorOf } from './support/records.js';

const tmp = mkdtempSync(path.join(tmpdir(), 'cat-kinds-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));

async function roundTrip(records: AnyRecord[], format: OutputFormat): Promise<AnyRecord[]> {
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (c: Buffer) => chunks.push(c));
  const w = createRecordWriter(out, { format });
  for (const r of records) await w.write(r);
  await w.end();
  out.end();
  const back: AnyRecord[] = [];
  for await (const { record } of readRecords([], { stdin: Readable.from([Buffer.concat(chunks)]) })) back.push(record);
  return back;
}

const explain = {
  kind: 'explain', ref: 'live', bundle: 'b'.repeat(64), adapter_id: 'a', adapter_version: 2, method: 'ties', prompt: 'X is', answer: ' Y',
  base: { top1: ' Z', logprob: -3.5 }, adapted: { top1: ' Y', logprob: null },
  contributions: [{
    id: 'p', version: null, sha256: 'c'.repeat(64), method: 'lora', weight: 1, fact_ids: ['f'], facts: [], source: null, author: null,
    data_sha256: null, created_at: null, ablation: 'rank block 0..3 zeroed (exact)', ablated: null, delta_logprob: null, top1_changes: null,
  }],
};
const exported = { kind: 'export', ref: 'live', bundle: 'b'.repeat(64), adapter_id: 'a', adapter_version: 1, base_model: 'fixtures/models/dense', path: '/tmp/m', files: ['config.json'] };
const consolidation = {
  kind: 'consolidation', ref: 'live', inbox: 'inbox.ndjson', pending_files: ['inbox.ndjson.pending-1'], promoted: null,
  accepted: [{ id: 'a', version: 1, sha256: 'd'.repeat(64) }], quarantined: [{ id: 'q', version: 1, sha256: 'e'.repeat(64), reason: 'kl 0.2 > 0.05' }],
  quarantine_file: 'inbox.ndjson.quarantine.ndjson', validations: 3,
};

t.test('the registry\'s own records (ref_event, registry_verify) are schema records', async (t) => {
  const reg = new Registry(path.join(tmp, 'reg'));
  const b = path.join(tmp, 'b1');
  await writeSyntheticBundle(b, { seed: 1, pass: true });
  const { event } = await reg.promote('live', { dir: b });
  t.ok(event);
  t.equal(parseRecord('ref_event', JSON.parse(JSON.stringify(event))).bundle, event!.bundle, 'a real event parses');
  const verify = await reg.verify();
  t.equal(parseRecord('registry_verify', JSON.parse(JSON.stringify(verify))).ok, true);
  for (const k of ['ref_event', 'registry_verify', 'explain', 'export', 'consolidation']) t.ok(KNOWN_KINDS.includes(k as never), `${k} is registered`);

  t.equal(errorOf(() => validateRecord({ ...event, bundle: undefined })).field, 'bundle', 'a missing field is named');
  const bad = errorOf(() => validateRecord({ ...event, previous: 5 }));
  t.equal(bad.field, 'previous');
  t.match(bad.detail, /expected string, got number/);
  t.equal(errorOf(() => validateRecord({ ...event, action: 'undo' })).field, 'action');
  t.equal(errorOf(() => validateRecord({ ...verify, problems: [{ area: 'ref' }] })).field, 'problems[0].target');
  t.notOk(isRecord('ref_event', { ...event, who: 1 }));
});

t.test('explain, export and consolidation records are checked, nulls where the tools write them', async (t) => {
  t.equal(parseRecord('explain', explain).contributions[0].id, 'p');
  validateRecord(exported);
  validateRecord(consolidation);
  validateRecord({ ...consolidation, promoted: { bundle: 'd'.repeat(64), version: 2, id: 'merged' } });
  t.equal(errorOf(() => validateRecord({ ...explain, base: { top1: 1, logprob: 0 } })).field, 'base.top1');
  t.equal(errorOf(() => validateRecord({ ...exported, files: 'config.json' })).field, 'files');
  t.equal(errorOf(() => validateRecord({ ...consolidation, quarantined: [{ id: 'q', version: 1, sha256: 'e' }] })).field, 'quarantined[0].reason');
  t.equal(errorOf(() => parseRecord('export', explain)).field, 'kind');
});

t.test('a stream holding them passes them through unchanged (NDJSON and Arrow); a malformed one names record and field', async (t) => {
  const stream = [explain, exported, consolidation, { kind: 'fact', id: 'f', subject: 'S', prompt: '{} is', target_new: 'x' }] as AnyRecord[];
  for (const format of ['ndjson', 'arrow'] as const) t.same(await roundTrip(stream, format), stream, format);
  const text = JSON.stringify(exported) + '\n' + JSON.stringify({ ...exported, adapter_version: '1' }) + '\n';
  try {
    for await (const _ of readRecords([], { stdin: Readable.from([Buffer.from(text)]) })) void _;
    t.fail('expected an InputError');
  } catch (e) {
    t.ok(e instanceof InputError);
    t.equal((e as InputError).record, 2);
    t.equal((e as InputError).field, 'adapter_version');
  }
});

t.test('isKind narrows a record the reader checked', async (t) => {
  const r: AnyRecord = { kind: 'probe', fact_id: 'f', role: 'edit', split: 'test', prompt: 'p', expect: 'new' };
  t.ok(isKind(r, 'probe') && r.role === 'edit');
  t.notOk(isKind(r, 'fact'));
});

t.test('edit\'s checkFact is the schema\'s definition (plus what training needs)', async (t) => {
  const f = { id: 'x', subject: 's', prompt: '{} is', target_new: 'y' };
  t.equal(checkFact(f).op, 'insert');
  // rules the schema holds and the old copy lacked
  t.throws(() => checkFact({ ...f, confidence: 2 }), { name: 'EditDataError', where: { field: 'confidence' } });
  t.throws(() => checkFact({ ...f, target_new: '  ' }), { where: { field: 'target_new' } });
  t.throws(() => checkFact({ ...f, relation: 7 }), { where: { field: 'relation' } });
  // training's own
  t.throws(() => checkFact({ ...f, subject: ' s' }), { where: { field: 'subject' } });
  t.throws(() => checkFact({ ...f, id: '' }), { where: { field: 'id' } });
  try {
    checkFact({ ...f, op: 'erase' });
  } catch (e) {
    t.ok(e instanceof EditDataError);
    t.match((e as Error).message, /^fact "x": expected one of "insert", "forget", got "erase"/);
  }
});

t.test('one templates.json reader: probe-gen\'s checks, lora-train\'s bank and context frames', async (t) => {
  const world = path.resolve(import.meta.dirname, '../../../fixtures/world/templates.json');
  const bank = loadTemplateBank(world)!;
  const read = readTemplates(world);
  t.same(bank.train.get('located_in'), read.byRelation.get('located_in')!.train);
  t.ok(bank.contextFrames.includes('Note that {fact}.'), 'context frames from the world file');
  const bad = path.join(tmp, 'bad.json');
  writeFileSync(bad, JSON.stringify({ relations: { r: { prompts: { train: ['no slot'] } } } }));
  t.throws(() => loadTemplateBank(bad), UsageError);
  t.throws(() => loadTemplateBank(bad), /--templates .*bad\.json: r\.prompts\.train\[0\]: template "no slot" has no "\{\}"/);
  t.equal(loadTemplateBank(path.join(tmp, 'absent.json')), null);
});

t.test('fnv1a32 is FNV-1a', async (t) => {
  t.equal(fnv1a32(''), 0x811c9dc5);
  t.equal(fnv1a32('a'), 0xe40c292c);
  t.equal(fnv1a32('foobar'), 0xbf9cf968);
  t.not(fnv1a32('a', 1), fnv1a32('a'), 'the seed moves it');
});
