// Library-level tests of the record readers and writers, through in-memory streams.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { PassThrough, Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { tableFromArrays, tableFromIPC, tableToIPC, RecordBatchReader } from 'apache-arrow';
import {
  InputError,
  createRecordWriter,
  readRecordBatches,
  readRecords,
  type AnyRecord,
  type OutputFormat,
} from '../src/records/index.js';
import { ArrowEncoder, decodeBatch } from '../src/records/arrow.js';

const fixture = (name: string): string => fileURLToPath(new URL(`../../../fixtures/records/${name}`, import.meta.url));
const allKinds = readFileSync(fixture('all-kinds.ndjson'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as AnyRecord);

async function write(records: AnyRecord[], format: OutputFormat, batchRows?: number): Promise<Buffer> {
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (c: Buffer) => chunks.push(c));
  const w = createRecordWriter(out, { format, batchRows });
  for (const r of records) await w.write(r);
  await w.end();
  out.end();
  return Buffer.concat(chunks);
}

async function read(bytes: Buffer | string, options = {}): Promise<AnyRecord[]> {
  const stdin = Readable.from([typeof bytes === 'string' ? Buffer.from(bytes) : bytes]);
  const out: AnyRecord[] = [];
  for await (const { record } of readRecords([], { stdin, ...options })) out.push(record);
  return out;
}

async function readError(bytes: Buffer | string): Promise<InputError> {
  try {
    await read(bytes);
  } catch (e) {
    if (e instanceof InputError) return e;
    throw e;
  }
  throw new Error('expected an InputError');
}

t.test('NDJSON → Arrow → NDJSON is lossless for every kind, in order', async (t) => {
  for (const batchRows of [1024, 3, 1]) {
    const arrow = await write(allKinds, 'arrow', batchRows);
    t.same([...arrow.subarray(0, 4)], [0xff, 0xff, 0xff, 0xff], 'an Arrow IPC stream');
    const back = await read(arrow);
    t.same(back, allKinds, `batchRows=${batchRows}`);
    const ndjson = await write(back, 'ndjson');
    t.same(await read(ndjson), allKinds);
  }
});

t.test('typed columns are used when values fit; the rest goes to extra', async (t) => {
  const enc = new ArrowEncoder(allKinds);
  const batch = enc.encode(allKinds);
  const extra = batch.getChild('extra')!;
  const extras = allKinds.map((_, i) => extra.get(i) as string | null);
  t.equal(extras[0], null, 'a full fact needs no extra column');
  t.equal(extras[6], null, 'adapter with nested base_model is typed');
  t.equal(extras[7], null, 'report metrics map is typed');
  t.equal(extras[9], null, 'route tensor of the stream width is typed');
  t.same(JSON.parse(extras[10]!), { weights: [0.1, 0.2, 0.3, 0.4] }, 'non-float32 tensor values stay exact via extra');
  t.same(JSON.parse(extras[11]!), { weights: [0.5, 0.5] }, 'tensor of another width via extra');
  const union = batch.schema.fields.find((f) => f.name === 'record')!.type;
  t.match(String(union.children.find((f) => f.name === 'route')!.type), /weights:FixedSizeList\[4\]<Float32>/);
  t.same(decodeBatch(batch), allKinds);
});

t.test('apache-arrow reads the stream on its own (independent of our decoder)', async (t) => {
  const table = tableFromIPC(await write(allKinds, 'arrow'));
  t.equal(table.numRows, allKinds.length);
  t.same(table.getChild('kind')!.toArray(), allKinds.map((r) => r.kind));
  // Row 0 is a full fact: its union member holds every field, typed.
  const fact = table.getChild('record')!.get(0).toJSON();
  t.equal(fact.subject, 'Danielle Darrieux');
  t.equal(fact.confidence, 0.9);
  t.same(fact.prompts.toJSON().neighborhood.toArray(), ['The mother tongue of Léon Blum is']);
  const route = table.getChild('record')!.get(9).toJSON();
  t.same([...route.weights.toArray()], [0.5, 0.25, 0.125, 0.125]);
  t.same([...route.experts.toArray()], [2, 0]);
  const report = table.getChild('record')!.get(7).toJSON();
  t.same(Object.fromEntries(report.metrics), { efficacy: 1, paraphrase: 0.875, kl_unrelated: 0.0031 });
  t.equal(table.getChild('extra')!.get(0), null);
});

t.test('a stream of one kind carries no columns for the others', async (t) => {
  const facts = Array.from({ length: 500 }, (_, i) => ({ kind: 'fact', id: `f${i}`, subject: `S${i}`, prompt: '{} is', target_new: 'x' }));
  const arrow = await write(facts, 'arrow');
  const ndjson = await write(facts, 'ndjson');
  t.ok(arrow.length < ndjson.length * 1.5, `arrow ${arrow.length} B vs ndjson ${ndjson.length} B`);
  t.same(await read(arrow), facts);
});

t.test('Arrow streams from other producers are read generically', async (t) => {
  const table = tableFromArrays({
    kind: ['note', 'note'],
    n: new BigInt64Array([1n, 2n ** 60n]),
    x: new Float32Array([0.5, 1.5]),
    s: ['a', 'b'],
  });
  const recs = await read(Buffer.from(tableToIPC(table, 'stream')));
  t.same(recs, [
    { kind: 'note', n: 1, x: 0.5, s: 'a' },
    { kind: 'note', n: '1152921504606846976', x: 1.5, s: 'b' },
  ]);
});

t.test('a JSON array is streamed element by element', async (t) => {
  const recs = await read(`  [\n${allKinds.map((r) => JSON.stringify(r)).join(',\n')}\n]\n`);
  t.same(recs, allKinds);
  t.same(await read('[]'), []);
});

t.test('CounterFact and zsRE files are normalised to facts', async (t) => {
  const out: AnyRecord[] = [];
  for await (const { record, source, index } of readRecords([fixture('counterfact-sample.json'), fixture('zsre-sample.json')])) {
    out.push(record);
    t.ok(source.endsWith('.json'));
    t.ok(index >= 1 && index <= 3);
  }
  t.equal(out.length, 6);
  t.same(out.map((r) => r.id), ['counterfact-0', 'counterfact-1', 'counterfact-2', 'zsre-84a9e9e96147', 'zsre-dc656e4b425d', 'zsre-333bd669b605']);
  t.same(out[0].prompts, {
    paraphrase: [
      'Shayna does this and Yossel goes still and dies. Danielle Darrieux, a native',
      'An album was recorded for Capitol Nashville but never released. Danielle Darrieux spoke the language',
    ],
    neighborhood: ['The mother tongue of Léon Blum is', 'The native language of Montesquieu is'],
    attribute: ['J. R. R. Tolkien is a native speaker of'],
    generation: ['Danielle Darrieux\'s mother tongue is', 'Where Danielle Darrieux is from, people speak the language of'],
  });
  t.equal(out[3].prompt, 'What university did {} attend?');
  t.same(out[3].locality, [{ prompt: 'nq question: who played desmond doss father in hacksaw ridge', target: 'Hugo Weaving' }]);
});

t.test('empty input and blank lines', async (t) => {
  t.same(await read(''), []);
  t.same(await read('\n \n'), []);
  t.same(await read('{"kind":"a"}\n\n{"kind":"b"}\r\n'), [{ kind: 'a' }, { kind: 'b' }]);
  t.equal((await write([], 'arrow')).length, 0, 'no records, no bytes');
});

t.test('bad input names the record and field', async (t) => {
  let e = await readError('{"kind":"a"}\n{"kind":"b"}\n{"kind":"fact","id":');
  t.equal(e.record, 3);
  t.match(e.message, /^stdin: record 3: invalid JSON/);

  e = await readError('{"kind":"a"}\n{"kind":"fact","id":"x","subject":"s","prompt":5,"target_new":"y"}\n');
  t.equal(e.message, 'stdin: record 2: field "prompt": expected string, got number');

  e = await readError('{"kind":"probe","fact_id":"f","split":"train","prompt":"p","expect":"new"}\n');
  t.equal(e.field, 'role');
  t.equal(e.record, 1);

  e = await readError(Buffer.from([0x00, 0x13, 0x88, 0xfe, 0x41, 0x42, 0x43, 0x44, 0x45]));
  t.match(e.message, /^stdin: record 1: not NDJSON, a JSON array or an Arrow IPC stream \(first bytes: 00 13 88 fe/);

  e = await readError('[{"kind":"a"}, {"kind":"b"}, {"kind": ');
  t.equal(e.record, 3);
  t.match(e.message, /invalid JSON array/);

  e = await readError('[{"kind":"a"}, 5]');
  t.match(e.message, /record 2: expected a JSON object, got number/);

  const arrow = await write(allKinds, 'arrow', 4);
  e = await readError(arrow.subarray(0, arrow.length - 300));
  t.match(e.message, /invalid or truncated Arrow IPC stream/);
  t.ok(e.record! >= 1);

  e = await readError(Buffer.from('ARROW1\0\0'));
  t.match(e.message, /Arrow IPC file/);
});

t.test('missing files are a usage error', async (t) => {
  await t.rejects(async () => {
    for await (const _ of readRecords(['/nonexistent/x.ndjson'])) void _;
  }, { name: 'UsageError', message: '/nonexistent/x.ndjson: no such file' });
});

t.test('the Arrow writer waits for drain (bounded buffering)', async (t) => {
  const out = new PassThrough({ highWaterMark: 1024 });
  const w = createRecordWriter(out, { format: 'arrow', batchRows: 8 });
  let settled = false;
  const p = (async () => {
    for (let i = 0; i < 64; i++) await w.write({ kind: 'note', i });
    settled = true;
  })();
  await new Promise((r) => setTimeout(r, 50));
  t.notOk(settled, 'writes block while nobody reads');
  const chunks: Buffer[] = [];
  out.on('data', (c: Buffer) => chunks.push(c));
  await p;
  await w.end();
  out.end();
  await new Promise((r) => out.once('end', r));
  const reader = await RecordBatchReader.from(Buffer.concat(chunks));
  let rows = 0;
  for await (const b of reader) rows += b.numRows;
  t.equal(rows, 64);
});

t.test('records before a bad one are delivered, in order, before the error', async (t) => {
  for (const bad of ['{"kind":"fact","id":1}\n', '{"kind":\n']) {
    const stdin = Readable.from([Buffer.from('{"kind":"a"}\n{"kind":"b"}\n' + bad + '{"kind":"c"}\n')]);
    const seen: string[] = [];
    let error: InputError | null = null;
    try {
      for await (const { record, index } of readRecords([], { stdin })) seen.push(`${index}:${record.kind}`);
    } catch (e) {
      error = e as InputError;
    }
    t.same(seen, ['1:a', '2:b']);
    t.equal(error?.record, 3);
  }
});

t.test('readRecordBatches and writeBatch carry the same records as the one-at-a-time forms', async (t) => {
  const many = Array.from({ length: 5000 }, (_, i) => ({ kind: i % 2 ? 'note' : 'probe', fact_id: `f${i}`, role: 'edit', split: 'test', prompt: `p${i}`, expect: 'true', i }));
  const text = many.map((r) => JSON.stringify(r)).join('\n') + '\n';
  const batches: number[] = [];
  const out: AnyRecord[] = [];
  for await (const b of readRecordBatches([], { stdin: Readable.from([Buffer.from(text)]) })) {
    batches.push(b.length);
    t.same(b.map((x) => x.index), b.map((_, k) => out.length + k + 1));
    out.push(...b.map((x) => x.record));
  }
  t.same(out, many);
  for (const format of ['ndjson', 'arrow'] as const) {
    const sink = new PassThrough();
    const chunks: Buffer[] = [];
    sink.on('data', (c: Buffer) => chunks.push(c));
    const w = createRecordWriter(sink, { format });
    await w.writeBatch(many.slice(0, 1234));
    await w.writeBatch(many.slice(1234));
    await w.end();
    t.equal(w.count, many.length);
    t.same(await read(Buffer.concat(chunks)), many, format);
  }
});
