/**
 * Reading record streams from files or stdin, one input after another.
 *
 * The format of each input is detected from its first bytes:
 *   ff ff ff ff      Arrow IPC stream (apache-arrow RecordBatchReader)
 *   [                a single JSON array of records (stream-json StreamArray)
 *   {                NDJSON (stream-json's JSON Lines parser)
 * Leading whitespace and a UTF-8 byte-order mark are skipped. Everything is
 * streamed: memory stays bounded whatever the input size.
 *
 * Each record is normalised (CounterFact/zsRE → fact) and validated
 * (schema.ts); any problem is an InputError naming the input, the 1-based
 * record number and the field.
 */
import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import { jsonlParser } from 'stream-json/jsonl/parser.js';
import streamArray from 'stream-json/streamers/stream-array.js';
import { InputError, UsageError, describeType } from './errors.js';
import { normaliseRecord } from './normalise.js';
import { validateRecord, type AnyRecord } from './schema.js';

export type InputFormat = 'ndjson' | 'json-array' | 'arrow' | 'empty';

/** A record with where it came from (for error messages further down). */
export interface InputRecord {
  record: AnyRecord;
  /** Input name: the path as given, or "stdin". */
  source: string;
  /** 1-based record number within that input. */
  index: number;
}

export interface ReadOptions {
  /** Turn CounterFact/zsRE records into facts (default true). */
  normalise?: boolean;
  /** Validate known kinds against the schema (default true). */
  validate?: boolean;
  /** stdin stream to use for "-" or no inputs (default process.stdin). */
  stdin?: NodeJS.ReadableStream;
}

const STDIN_NAME = 'stdin';

/** Splits off the first bytes of a byte stream to detect its format. */
async function peek(source: AsyncIterable<Buffer>): Promise<{ head: Buffer; rest: AsyncIterator<Buffer> }> {
  const it = source[Symbol.asyncIterator]();
  const chunks: Buffer[] = [];
  let size = 0;
  // 8 bytes after any leading whitespace are enough to tell the formats apart.
  while (size < 4096) {
    const { value, done } = await it.next();
    if (done) break;
    const b = typeof value === 'string' ? Buffer.from(value) : (value as Buffer);
    chunks.push(b);
    size += b.length;
    if (firstSignificant(Buffer.concat(chunks)) + 8 <= size) break;
  }
  return { head: Buffer.concat(chunks), rest: it };
}

function firstSignificant(b: Buffer): number {
  let i = 0;
  if (b.length >= 3 && b[0] === 0xef && b[1] === 0xbb && b[2] === 0xbf) i = 3;
  while (i < b.length && (b[i] === 0x20 || b[i] === 0x0a || b[i] === 0x0d || b[i] === 0x09)) i++;
  return i;
}

export function detectFormat(head: Buffer): InputFormat | { unknown: string } {
  if (head.length >= 4 && head[0] === 0xff && head[1] === 0xff && head[2] === 0xff && head[3] === 0xff) return 'arrow';
  const i = firstSignificant(head);
  if (i >= head.length) return 'empty';
  if (head[i] === 0x7b /* { */) return 'ndjson';
  if (head[i] === 0x5b /* [ */) return 'json-array';
  if (head.subarray(0, 6).toString('latin1') === 'ARROW1') {
    return { unknown: 'an Arrow IPC file (ARROW1); only the Arrow IPC stream format is read, convert it to a stream' };
  }
  const shown = [...head.subarray(0, 8)].map((x) => x.toString(16).padStart(2, '0')).join(' ');
  return { unknown: `not NDJSON, a JSON array or an Arrow IPC stream (first bytes: ${shown})` };
}

async function* replay(head: Buffer, rest: AsyncIterator<Buffer>): AsyncGenerator<Buffer> {
  if (head.length > 0) yield head;
  for (;;) {
    const { value, done } = await rest.next();
    if (done) return;
    yield typeof value === 'string' ? Buffer.from(value) : value;
  }
}

const BAD_LINE = Symbol('bad-json-line');
interface BadLine {
  [BAD_LINE]: true;
  error: Error;
}

/**
 * Raw values of one NDJSON input, in order, one batch per input chunk.
 * Lines are split here and each is parsed by stream-json's JSON Lines line
 * parser; batching per chunk keeps the per-record async overhead off the
 * hot path, and a chunk is at most the stream's highWaterMark (64 KiB).
 */
async function* ndjsonValues(bytes: AsyncIterable<Buffer>): AsyncGenerator<unknown[]> {
  // Keep bad lines as markers so the record number is known when failing.
  const parseLine = jsonlParser({ errorIndicator: (error: Error): BadLine => ({ [BAD_LINE]: true, error }) }) as (
    line: string,
  ) => { key: number; value: unknown } | symbol;
  const decoder = new StringDecoder('utf8');
  let rest = '';
  let first = true;
  // Records before a bad line are still delivered, then the error is thrown.
  let failure: InputError | null = null;
  const parseLines = (text: string, final: boolean): unknown[] => {
    const lines = (rest + text).split('\n');
    rest = final ? '' : lines.pop()!;
    const out: unknown[] = [];
    for (let line of lines) {
      if (first) {
        if (line.charCodeAt(0) === 0xfeff) line = line.slice(1); // byte-order mark
        first = false;
      }
      if (line.endsWith('\r')) line = line.slice(0, -1);
      if (line.trim() === '') continue;
      const item = parseLine(line);
      if (typeof item !== 'object') continue;
      const v = item.value;
      if (typeof v === 'object' && v !== null && (v as BadLine)[BAD_LINE]) {
        failure = new InputError(`invalid JSON (NDJSON is one record per line): ${(v as BadLine).error.message}`, { record: item.key + 1 });
        break;
      }
      out.push(v);
    }
    return out;
  };
  for await (const chunk of bytes) {
    const batch = parseLines(decoder.write(chunk), false);
    if (batch.length > 0) yield batch;
    if (failure) throw failure;
  }
  const batch = parseLines(decoder.end(), true);
  if (batch.length > 0) yield batch;
  if (failure) throw failure;
}

/** Collects single values into batches of up to `size`. */
async function* batched(values: AsyncIterable<unknown>, size: number): AsyncGenerator<unknown[]> {
  let batch: unknown[] = [];
  for await (const v of values) {
    batch.push(v);
    if (batch.length >= size) {
      yield batch;
      batch = [];
    }
  }
  if (batch.length > 0) yield batch;
}

/** Elements of one top-level JSON array, in order, streamed. */
async function* arrayElements(bytes: AsyncIterable<Buffer>): AsyncGenerator<unknown> {
  const pipeline = streamArray.withParserAsStream();
  const input = Readable.from(bytes, { objectMode: false });
  input.on('error', (e) => pipeline.destroy(e));
  input.pipe(pipeline);
  let count = 0;
  try {
    for await (const item of pipeline as AsyncIterable<{ key: number; value: unknown }>) {
      count++;
      yield item.value;
    }
  } catch (e) {
    if (e instanceof InputError) throw e;
    throw new InputError(`invalid JSON array: ${(e as Error).message}`, { record: count + 1 });
  } finally {
    input.destroy();
    pipeline.destroy();
  }
}

/** Records of one Arrow IPC stream, in order, batch by batch. */
async function* arrowValues(bytes: AsyncIterable<Buffer>): AsyncGenerator<unknown[]> {
  let count = 0;
  try {
    // Loaded on demand: NDJSON-only runs never load apache-arrow.
    const [{ RecordBatchReader }, { decodeBatch }] = await Promise.all([import('apache-arrow'), import('./arrow.js')]);
    const reader = await RecordBatchReader.from(Readable.from(bytes, { objectMode: false }));
    for await (const batch of reader) {
      const rows = decodeBatch(batch);
      count += rows.length;
      yield rows;
    }
  } catch (e) {
    if (e instanceof InputError) throw e;
    throw new InputError(`invalid or truncated Arrow IPC stream: ${(e as Error).message}`, { record: count + 1 });
  }
}

function openInput(name: string, stdin: NodeJS.ReadableStream): { source: string; stream: AsyncIterable<Buffer> } {
  if (name === '-') return { source: STDIN_NAME, stream: stdin as AsyncIterable<Buffer> };
  const stream = createReadStream(name);
  return { source: name, stream };
}

/** Values of one input in batches, format detected from its first bytes. */
export async function* readValueBatches(stream: AsyncIterable<Buffer>): AsyncGenerator<unknown[]> {
  const { head, rest } = await peek(stream);
  const format = detectFormat(head);
  if (format === 'empty') return;
  if (typeof format === 'object') throw new InputError(format.unknown, { record: 1 });
  const bytes = replay(head, rest);
  if (format === 'arrow') yield* arrowValues(bytes);
  else if (format === 'json-array') yield* batched(arrayElements(bytes), 256);
  else yield* ndjsonValues(bytes);
}

/** Values of one input, format detected from its first bytes. */
export async function* readValues(stream: AsyncIterable<Buffer>): AsyncGenerator<unknown> {
  for await (const batch of readValueBatches(stream)) yield* batch;
}

/**
 * Records from each named input in turn ("-" or no names: stdin), normalised
 * and validated, a batch at a time (a few hundred records; consumers that
 * go record by record use readRecords). Errors are InputError (bad data,
 * naming input, record and field) or UsageError (cannot open an input).
 */
export async function* readRecordBatches(inputs: readonly string[], options: ReadOptions = {}): AsyncGenerator<InputRecord[]> {
  const normalise = options.normalise ?? true;
  const validate = options.validate ?? true;
  const stdin = options.stdin ?? process.stdin;
  const names = inputs.length === 0 ? ['-'] : inputs;
  for (const name of names) {
    const { source, stream } = openInput(name, stdin);
    let index = 0;
    try {
      for await (const raws of readValueBatches(stream)) {
        const batch: InputRecord[] = [];
        let bad: unknown = null;
        for (let i = 0; i < raws.length; i++) {
          try {
            let v = normalise ? normaliseRecord(raws[i]) : raws[i];
            if (validate) v = validateRecord(v);
            else if (typeof v !== 'object' || v === null || Array.isArray(v)) {
              throw new InputError(`expected a JSON object, got ${describeType(v)}`);
            }
            batch.push({ record: v as AnyRecord, source, index: index + 1 });
          } catch (e) {
            bad = e;
            break;
          }
          index++;
        }
        // The records before a bad one are still delivered, in order.
        if (batch.length > 0) yield batch;
        if (bad) {
          index++;
          throw bad;
        }
      }
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      // Errors from the parsers carry their own record number; others are about record `index`.
      if (e instanceof InputError) throw e.locate({ source, record: index });
      if (err.code === 'ENOENT') throw new UsageError(`${name}: no such file`);
      if (err.code === 'EISDIR') throw new UsageError(`${name}: is a directory`);
      if (err.code === 'EACCES') throw new UsageError(`${name}: permission denied`);
      throw e;
    } finally {
      if (name !== '-') (stream as unknown as { destroy(): void }).destroy();
    }
  }
}

/** Records one at a time; see readRecordBatches. */
export async function* readRecords(inputs: readonly string[], options: ReadOptions = {}): AsyncGenerator<InputRecord> {
  for await (const batch of readRecordBatches(inputs, options)) yield* batch;
}
