/**
 * Writing record streams: NDJSON (default) or an Arrow IPC stream. Both
 * buffer a little (64 KiB of text, or one batch of rows) and then wait for
 * the output's 'drain' when it is full, so a slow reader downstream bounds
 * the memory of the whole pipeline.
 */
import type { ArrowStreamSink as ArrowSink } from './arrow-sink.js';
import type { AnyRecord } from './schema.js';

export type OutputFormat = 'ndjson' | 'arrow';
export const OUTPUT_FORMATS: readonly OutputFormat[] = ['ndjson', 'arrow'];

export interface WriterOptions {
  format?: OutputFormat;
  /** Rows per Arrow record batch (default 1024). */
  batchRows?: number;
}

export interface RecordWriter {
  /** Queues one record; resolves once the output can take more. */
  write(record: AnyRecord): Promise<void>;
  /** Queues records in order; resolves once the output can take more. */
  writeBatch(records: readonly AnyRecord[]): Promise<void>;
  /** Flushes what is buffered (and ends the Arrow stream); does not close `out`. */
  end(): Promise<void>;
  /**
   * Hands what is buffered to the output now (a slow tool, between records,
   * so the next tool, or `head`, sees them at once). Arrow: a batch per call.
   */
  flush(): Promise<void>;
  /** Records written so far. */
  readonly count: number;
}

/** Writes a chunk and waits for 'drain' if the stream's buffer is full. */
export function writeChunk(out: NodeJS.WritableStream, chunk: string | Uint8Array): Promise<void> {
  if (out.write(chunk)) return Promise.resolve();
  return new Promise<void>((resolve, reject) => {
    const onDrain = (): void => {
      out.off('error', onError);
      resolve();
    };
    const onError = (e: Error): void => {
      out.off('drain', onDrain);
      reject(e);
    };
    out.once('drain', onDrain);
    out.once('error', onError);
  });
}

const NDJSON_FLUSH = 64 * 1024;

class NdjsonWriter implements RecordWriter {
  private buf = '';
  count = 0;
  constructor(private readonly out: NodeJS.WritableStream) {}

  write(record: AnyRecord): Promise<void> {
    this.buf += JSON.stringify(record) + '\n';
    this.count++;
    if (this.buf.length < NDJSON_FLUSH) return Promise.resolve();
    const chunk = this.buf;
    this.buf = '';
    return writeChunk(this.out, chunk);
  }

  async writeBatch(records: readonly AnyRecord[]): Promise<void> {
    for (const r of records) {
      this.buf += JSON.stringify(r) + '\n';
      if (this.buf.length >= NDJSON_FLUSH) {
        const chunk = this.buf;
        this.buf = '';
        await writeChunk(this.out, chunk);
      }
    }
    this.count += records.length;
  }

  async end(): Promise<void> {
    await this.flush();
  }

  async flush(): Promise<void> {
    if (this.buf.length > 0) {
      const chunk = this.buf;
      this.buf = '';
      await writeChunk(this.out, chunk);
    }
  }
}

/**
 * Buffers rows and hands batches to the Arrow stream sink (arrow-sink.ts),
 * which is loaded on first use so that NDJSON-only runs never load
 * apache-arrow (a large module: startup time and memory).
 */
class ArrowWriter implements RecordWriter {
  private rows: AnyRecord[] = [];
  private sink: ArrowSink | null = null;
  count = 0;
  constructor(
    private readonly out: NodeJS.WritableStream,
    private readonly batchRows: number,
  ) {}

  write(record: AnyRecord): Promise<void> {
    this.rows.push(record);
    this.count++;
    return this.rows.length >= this.batchRows ? this.flush() : Promise.resolve();
  }

  async writeBatch(records: readonly AnyRecord[]): Promise<void> {
    for (const r of records) {
      this.rows.push(r);
      if (this.rows.length >= this.batchRows) await this.flush();
    }
    this.count += records.length;
  }

  async flush(): Promise<void> {
    if (this.rows.length === 0) return;
    const rows = this.rows;
    this.rows = [];
    if (this.sink === null) {
      const { ArrowStreamSink } = await import('./arrow-sink.js');
      this.sink = new ArrowStreamSink(rows);
    }
    await writeChunk(this.out, this.sink.encode(rows));
  }

  async end(): Promise<void> {
    await this.flush();
    // An empty input gives an empty output, not a schema-only stream.
    if (this.sink === null) return;
    const tail = this.sink.finish();
    if (tail.byteLength > 0) await writeChunk(this.out, tail);
  }
}

export function createRecordWriter(out: NodeJS.WritableStream, options: WriterOptions = {}): RecordWriter {
  const format = options.format ?? 'ndjson';
  if (format === 'arrow') return new ArrowWriter(out, options.batchRows ?? 1024);
  return new NdjsonWriter(out);
}
