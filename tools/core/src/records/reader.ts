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
import { isUtf8 } from 'node:buffer';
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
  /** Longest NDJSON record accepted, in bytes (default DEFAULT_MAX_RECORD_BYTES). */
  maxRecordBytes?: number;
  /**
   * Called with each record that is bad on its own (bad JSON line, invalid
   * UTF-8, too long, too deep, fails normalisation or the schema) instead
   * of throwing; reading goes on with the next record. Without it the
   * first bad record ends the read with its InputError. A broken stream
   * (JSON array syntax, truncated Arrow) always throws.
   */
  onBad?: (bad: RejectedRecord) => void;
}

/** A record the reader (or a tool) refused, with why. */
export interface RejectedRecord {
  source: string;
  /** 1-based record number within `source`. */
  index: number;
  error: InputError;
  /** The record as read, when it parsed. */
  record?: unknown;
  /** Else the start of its text, when known. */
  text?: string;
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

/** Default --max-record-bytes: one NDJSON line may be at most this long (128 MiB). */
export const DEFAULT_MAX_RECORD_BYTES = 128 * 1024 * 1024;
/** JSON nested deeper than this is refused (records of every known kind are < 10 deep). */
export const MAX_JSON_DEPTH = 100;

/**
 * A record that could not be read (bad JSON, invalid UTF-8, too long, too
 * deep): kept in the value stream as a marker so the reader can number it
 * and either fail or skip it (--on-bad-record).
 */
export class BadValue {
  constructor(
    readonly error: InputError,
    /** What is known of the record: the line's text (maybe cut short), or nothing. */
    readonly text?: string,
  ) {}
}

/** Options of the byte-level readers. */
export interface ParseLimits {
  /** Longest NDJSON line accepted, in bytes (default DEFAULT_MAX_RECORD_BYTES). */
  maxRecordBytes?: number;
}

/** Whether a parsed JSON value nests deeper than `limit` (iterative: no recursion to overflow). */
export function nestedDeeperThan(value: unknown, limit: number): boolean {
  if (typeof value !== 'object' || value === null) return false;
  const stack: Array<[unknown, number]> = [[value, 1]];
  while (stack.length > 0) {
    const [v, d] = stack.pop()!;
    if (d > limit) return true;
    const children = Array.isArray(v) ? v : Object.values(v as object);
    for (const c of children) if (typeof c === 'object' && c !== null) stack.push([c, d + 1]);
  }
  return false;
}

const PREVIEW = 200;
const preview = (b: Buffer): string => b.subarray(0, PREVIEW).toString('utf8') + (b.length > PREVIEW ? '…' : '');

/**
 * Raw values of one NDJSON input, in order, one batch per input chunk.
 *
 * Lines are split on bytes, not text, so that each line's UTF-8 can be
 * checked (Buffer's isUtf8, simdutf) and its length limited before it is
 * decoded. A line that spans chunks is kept as a list of chunks and joined
 * once when its newline arrives: linear in the line's length (the old
 * string-concatenating splitter was quadratic: a 10 MB line took 4 s).
 * Each line is parsed with JSON.parse, as stream-json's JSONL parser does
 * (see tests/bench/ndjson-reader.bench.mjs for the comparison). Bad lines
 * become BadValue markers in place.
 */
async function* ndjsonValues(bytes: AsyncIterable<Buffer>, limits: ParseLimits = {}): AsyncGenerator<unknown[]> {
  const maxBytes = limits.maxRecordBytes ?? DEFAULT_MAX_RECORD_BYTES;
  // Only a line at least this long can nest past MAX_JSON_DEPTH ("[[[…]]]").
  const depthCheckFrom = 2 * MAX_JSON_DEPTH;
  let pending: Buffer[] = [];
  let pendingLen = 0;
  let skipping = false; // inside an over-long line: drop bytes until its newline
  let first = true;
  let lineNo = 0; // non-blank lines so far (the record number)

  const parseText = (line: string, out: unknown[]): void => {
    if (first) {
      if (line.charCodeAt(0) === 0xfeff) line = line.slice(1); // byte-order mark
      first = false;
    }
    if (line.endsWith('\r')) line = line.slice(0, -1);
    if (line.trim() === '') return;
    lineNo++;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (e) {
      out.push(new BadValue(new InputError(`invalid JSON (NDJSON is one record per line): ${(e as Error).message}`), line.length > PREVIEW ? line.slice(0, PREVIEW) + '…' : line));
      return;
    }
    if (line.length >= depthCheckFrom && nestedDeeperThan(v, MAX_JSON_DEPTH)) {
      out.push(new BadValue(new InputError(`JSON nested deeper than ${MAX_JSON_DEPTH} levels`), line.slice(0, PREVIEW) + '…'));
      return;
    }
    out.push(v);
  };
  const tooLong = (out: unknown[], head: Buffer): void => {
    lineNo++;
    out.push(new BadValue(new InputError(`record longer than --max-record-bytes ${maxBytes} (one NDJSON line per record; raise the limit for larger records)`), preview(head)));
  };
  // Complete lines (no trailing newline inside `block` except as separators).
  const parseBlock = (block: Buffer, out: unknown[]): void => {
    if (block.length <= maxBytes && isUtf8(block)) {
      for (const line of block.toString('utf8').split('\n')) parseText(line, out);
      return;
    }
    // Slow path, line by line: a line too long or with invalid UTF-8 is named on its own.
    let at = 0;
    while (at <= block.length) {
      let nl = block.indexOf(0x0a, at);
      if (nl < 0) nl = block.length;
      const line = block.subarray(at, nl);
      at = nl + 1;
      if (line.length > maxBytes) tooLong(out, line);
      else if (!isUtf8(line)) {
        lineNo++;
        first = false;
        out.push(new BadValue(new InputError('invalid UTF-8 (records must be UTF-8 text)'), preview(line)));
      } else parseText(line.toString('utf8'), out);
    }
  };

  for await (const chunk of bytes) {
    const out: unknown[] = [];
    const lastNl = chunk.lastIndexOf(0x0a);
    if (lastNl < 0) {
      // No line ends in this chunk: it all belongs to the current line.
      if (!skipping) {
        pending.push(chunk);
        pendingLen += chunk.length;
        if (pendingLen > maxBytes) {
          tooLong(out, pending[0]);
          pending = [];
          pendingLen = 0;
          skipping = true;
        }
      }
    } else {
      let start = 0;
      if (skipping) {
        // The over-long line ends at the first newline of this chunk.
        start = chunk.indexOf(0x0a) + 1;
        skipping = false;
      }
      if (start <= lastNl) {
        const head = chunk.subarray(start, lastNl);
        const block = pendingLen > 0 ? Buffer.concat([...pending, head], pendingLen + head.length) : head;
        pending = [];
        pendingLen = 0;
        parseBlock(block, out);
      }
      const tail = chunk.subarray(lastNl + 1);
      if (tail.length > 0) {
        pending.push(tail);
        pendingLen = tail.length;
        if (pendingLen > maxBytes) {
          tooLong(out, tail);
          pending = [];
          pendingLen = 0;
          skipping = true;
        }
      }
    }
    if (out.length > 0) yield out;
  }
  if (pendingLen > 0 && !skipping) {
    const out: unknown[] = [];
    parseBlock(Buffer.concat(pending, pendingLen), out);
    if (out.length > 0) yield out;
  }
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

/**
 * Text of a byte stream, decoded strictly: invalid UTF-8 is an error, not
 * U+FFFD (stream-json's own decoder would replace it silently).
 */
async function* strictUtf8(bytes: AsyncIterable<Buffer>): AsyncGenerator<string> {
  const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: false });
  try {
    for await (const chunk of bytes) {
      const s = decoder.decode(chunk, { stream: true });
      if (s.length > 0) yield s;
    }
    const s = decoder.decode();
    if (s.length > 0) yield s;
  } catch (e) {
    if (e instanceof TypeError) throw new InputError('invalid UTF-8 (records must be UTF-8 text)');
    throw e;
  }
}

/** Elements of one top-level JSON array, in order, streamed. */
async function* arrayElements(bytes: AsyncIterable<Buffer>): AsyncGenerator<unknown> {
  const pipeline = streamArray.withParserAsStream();
  const input = Readable.from(strictUtf8(bytes), { objectMode: false });
  input.on('error', (e) => pipeline.destroy(e));
  input.pipe(pipeline);
  let count = 0;
  try {
    for await (const item of pipeline as AsyncIterable<{ key: number; value: unknown }>) {
      count++;
      // Nesting is checked per element; a bad element is skippable, the array goes on.
      yield nestedDeeperThan(item.value, MAX_JSON_DEPTH) ? new BadValue(new InputError(`JSON nested deeper than ${MAX_JSON_DEPTH} levels`)) : item.value;
    }
  } catch (e) {
    if (e instanceof InputError) throw e.locate({ record: count + 1 });
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
export async function* readValueBatches(stream: AsyncIterable<Buffer>, limits: ParseLimits = {}): AsyncGenerator<unknown[]> {
  const { head, rest } = await peek(stream);
  const format = detectFormat(head);
  if (format === 'empty') return;
  if (typeof format === 'object') throw new InputError(format.unknown, { record: 1 });
  const bytes = replay(head, rest);
  if (format === 'arrow') yield* arrowValues(bytes);
  else if (format === 'json-array') yield* batched(arrayElements(bytes), 256);
  else yield* ndjsonValues(bytes, limits);
}

/** Values of one input, format detected from its first bytes. */
export async function* readValues(stream: AsyncIterable<Buffer>, limits: ParseLimits = {}): AsyncGenerator<unknown> {
  let n = 0;
  for await (const batch of readValueBatches(stream, limits)) {
    for (const v of batch) {
      n++;
      if (v instanceof BadValue) throw v.error.locate({ record: n });
      yield v;
    }
  }
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
  const onBad = options.onBad;
  const names = inputs.length === 0 ? ['-'] : inputs;
  for (const name of names) {
    const { source, stream } = openInput(name, stdin);
    let index = 0;
    try {
      for await (const raws of readValueBatches(stream, { maxRecordBytes: options.maxRecordBytes })) {
        const batch: InputRecord[] = [];
        let bad: InputError | null = null;
        for (let i = 0; i < raws.length; i++) {
          index++;
          const raw = raws[i];
          try {
            if (raw instanceof BadValue) throw raw.error;
            let v = normalise ? normaliseRecord(raw) : raw;
            if (validate) v = validateRecord(v);
            else if (typeof v !== 'object' || v === null || Array.isArray(v)) {
              throw new InputError(`expected a JSON object, got ${describeType(v)}`);
            }
            batch.push({ record: v as AnyRecord, source, index });
          } catch (e) {
            if (!(e instanceof InputError)) throw e;
            e.locate({ source, record: index });
            if (!onBad) {
              bad = e;
              break;
            }
            onBad(raw instanceof BadValue ? { source, index, error: e, text: raw.text } : { source, index, error: e, record: raw });
          }
        }
        // The records before a bad one are still delivered, in order.
        if (batch.length > 0) yield batch;
        if (bad) throw bad;
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
