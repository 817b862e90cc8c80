// Inputs that used to become garbage silently (issue 18): long lines, invalid
// UTF-8, deep nesting, bad rows mid-file, the shapes people bring.
import t from 'tap';
import { Readable } from 'node:stream';
import {
  ACCEPTED_SHAPES, BadValue, InputError, normaliseRecord, readRecordBatches, readValueBatches, type RejectedRecord,
} from '../dist/records/index.js';

const bytes = (...parts: Array<string | number[]>): Buffer => Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p) : Buffer.from(p))));
/** A stream in small chunks, so lines span chunks as they do from a pipe. */
const chunked = (b: Buffer, size = 1000): Readable => {
  const parts: Buffer[] = [];
  for (let i = 0; i < b.length; i += size) parts.push(b.subarray(i, i + size));
  return Readable.from(parts);
};

async function values(b: Buffer, maxRecordBytes?: number, size?: number): Promise<unknown[]> {
  const out: unknown[] = [];
  for await (const batch of readValueBatches(chunked(b, size), { maxRecordBytes })) out.push(...batch);
  return out;
}

async function records(b: Buffer, skip = true): Promise<{ ok: Array<Record<string, unknown>>; bad: RejectedRecord[]; error?: InputError }> {
  const ok: Array<Record<string, unknown>> = [];
  const bad: RejectedRecord[] = [];
  try {
    for await (const batch of readRecordBatches(['-'], { stdin: chunked(b), ...(skip ? { onBad: (r) => bad.push(r) } : {}) })) {
      for (const r of batch) ok.push(r.record);
    }
  } catch (e) {
    return { ok, bad, error: e as InputError };
  }
  return { ok, bad };
}

const fact = (id: string, extra: Record<string, unknown> = {}): string =>
  JSON.stringify({ kind: 'fact', id, subject: 'Dabe Tensunov', prompt: '{} works for', target_new: 'Norsynex', ...extra }) + '\n';

t.test('a long line is read in linear time (50 MB line; the old splitter needed > 90 s)', async (t) => {
  const text = 'x'.repeat(50e6);
  const line = Buffer.from(JSON.stringify({ kind: 'note', text }) + '\n');
  const t0 = Date.now();
  const v = await values(line, undefined, 64 * 1024);
  const s = (Date.now() - t0) / 1000;
  t.equal(v.length, 1);
  t.equal(((v[0] as { text: string }).text).length, 50e6);
  // Generous bound for a shared, loaded machine; measured figure in the report and the bench.
  t.ok(s < 30, `50 MB line in ${s.toFixed(2)} s`);
});

t.test('--max-record-bytes: a longer line is one bad record, the next one is read', async (t) => {
  const b = bytes(fact('a'), JSON.stringify({ kind: 'note', text: 'y'.repeat(5000) }) + '\n', fact('b'));
  const v = await values(b, 1000, 256);
  t.equal(v.length, 3);
  t.ok(v[1] instanceof BadValue);
  t.match((v[1] as BadValue).error.message, /longer than --max-record-bytes 1000/);
  t.equal((v[2] as { id: string }).id, 'b');
  const r = await records(b);
  t.equal(r.ok.length, 3, 'under the default limit all three are read');
  const lim: RejectedRecord[] = [];
  const ok: unknown[] = [];
  for await (const batch of readRecordBatches(['-'], { stdin: chunked(b, 256), maxRecordBytes: 1000, onBad: (x) => lim.push(x) })) ok.push(...batch);
  t.equal(ok.length, 2);
  t.equal(lim.length, 1);
  t.equal(lim[0].index, 2);
});

t.test('invalid UTF-8 is an error naming the record, not U+FFFD', async (t) => {
  const b = bytes(fact('a'), '{"kind":"note","t":"', [0xc3, 0x28], '"}\n', fact('c'));
  const r = await records(b, false);
  t.same(r.ok.map((x) => x.id), ['a']);
  t.ok(r.error instanceof InputError);
  t.match(r.error!.message, /stdin: record 2: invalid UTF-8/);
  const s = await records(b, true);
  t.same(s.ok.map((x) => x.id), ['a', 'c']);
  t.equal(s.bad[0].index, 2);
  // in a JSON array too
  const arr = bytes('[', fact('a'), ',{"kind":"note","t":"', [0xff], '"}]');
  const ra = await records(arr, false);
  t.match(ra.error!.message, /invalid UTF-8/);
  t.notOk(ra.ok.some((x) => JSON.stringify(x).includes('\ufffd')), 'no replacement character let through');
});

t.test('JSON nested past the limit is bad input naming the record, not a stack overflow', async (t) => {
  const deep = '['.repeat(100000) + ']'.repeat(100000);
  const b = bytes(fact('a'), `{"kind":"note","x":${deep}}\n`, fact('c'));
  const r = await records(b, false);
  t.ok(r.error instanceof InputError);
  t.match(r.error!.message, /record 2: JSON nested deeper than 100 levels/);
  const arr = bytes(`[${fact('a')},{"kind":"note","x":${'['.repeat(5000)}${']'.repeat(5000)}},${fact('c')}]`);
  const s = await records(arr, true);
  t.same(s.ok.map((x) => x.id), ['a', 'c']);
  t.equal(s.bad[0].index, 2);
});

t.test('zsRE-MEND rows with an empty alt mid-file: named when failing, skipped when asked', async (t) => {
  const row = (i: number, alt: string) => ({ subject: `Person ${i}`, src: `What university did Person ${i} attend?`, alt, answers: ['Yale'], rephrase: `Where did Person ${i} study?`, loc: 'nq question: x', loc_ans: 'y' });
  const rows = Array.from({ length: 600 }, (_, i) => row(i, i === 534 || i === 580 ? '' : `University ${i}`));
  const b = Buffer.from(JSON.stringify(rows));
  const r = await records(b, false);
  t.equal(r.ok.length, 534, 'the records before the bad one are delivered');
  t.match(r.error!.message, /record 535: field "alt": expected a non-empty answer/);
  const s = await records(b, true);
  t.equal(s.ok.length, 598, 'the stream goes on past bad rows');
  t.same(s.bad.map((x) => x.index), [535, 581]);
  t.same(s.bad[0].record, rows[534], 'the rejected record is kept as read');
});

t.test('EasyEdit flat records become facts', async (t) => {
  const f = normaliseRecord({
    prompt: 'The mother tongue of Danielle Darrieux is', subject: 'Danielle Darrieux', target_new: 'English', ground_truth: ['French'],
    rephrase_prompt: 'Danielle Darrieux spoke the language', locality_prompt: 'The mother tongue of Léon Blum is', locality_ground_truth: 'French',
    portability: { Reasoning: [{ prompt: 'The language of Danielle Darrieux\'s films is', ground_truth: ['English'] }] },
  }) as Record<string, unknown>;
  t.equal(f.kind, 'fact');
  t.equal(f.prompt, 'The mother tongue of {} is');
  t.equal(f.subject, 'Danielle Darrieux');
  t.equal(f.target_new, 'English');
  t.equal(f.target_true, 'French');
  t.same(f.prompts, { paraphrase: ['Danielle Darrieux spoke the language'] });
  t.same(f.locality, [{ prompt: 'The mother tongue of Léon Blum is', target: 'French' }]);
  t.ok(f.portability, 'portability kept');
  t.match(String(f.id), /^easyedit-[0-9a-f]{12}$/);
  t.throws(() => normaliseRecord({ prompt: 'The capital of X is', subject: 'Y', target_new: 'Z' }), /field "prompt".*containing the subject/s);
  t.throws(() => normaliseRecord({ prompt: 'The capital of X is', subject: 'X', target_new: [''] }), /target_new\[0\]/);
  // and with the zsRE extras EasyEdit adds (portability)
  const z = normaliseRecord({ subject: 'Watts Humphrey', src: 'What university did Watts Humphrey attend?', alt: 'University of Michigan', answers: ['Illinois Institute of Technology'], loc: 'nq question: a', loc_ans: 'b', portability: { New_Question: 'x', New_Answer: 'y' } }) as Record<string, unknown>;
  t.equal(z.prompt, 'What university did {} attend?');
  t.ok(z.portability);
});

t.test('a record of no known shape: the message lists the accepted shapes', async (t) => {
  const r = await records(Buffer.from('{"question":"who?","answer":"me"}\n'), false);
  t.match(r.error!.message, /record 1: field "kind": missing required field/);
  t.ok(r.error!.message.includes(ACCEPTED_SHAPES));
  for (const s of ['CounterFact', 'zsRE', 'EasyEdit', 'requested_rewrite', 'locality_ground_truth']) t.ok(ACCEPTED_SHAPES.includes(s), s);
});

t.test('bad JSON lines are skippable one by one', async (t) => {
  const b = bytes(fact('a'), '{"kind": oops}\n', '\n', fact('c'), '{"kind":"fact"}\n');
  const s = await records(b, true);
  t.same(s.ok.map((x) => x.id), ['a', 'c']);
  t.same(s.bad.map((x) => x.index), [2, 4]);
  t.equal(s.bad[0].text, '{"kind": oops}');
  t.match(s.bad[1].error.message, /record 4: field "id"/);
});
