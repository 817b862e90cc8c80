/**
 * Serialises record batches to Arrow IPC stream bytes, piece by piece.
 * apache-arrow's writer queues its bytes internally and applies no
 * backpressure to a Node stream; this hands each serialised batch back to
 * the caller, which writes it and waits for 'drain'.
 */
import { RecordBatchStreamWriter } from 'apache-arrow';
import { ArrowEncoder } from './arrow.js';
import type { AnyRecord } from './schema.js';

class CollectingStreamWriter extends RecordBatchStreamWriter {
  pending: Uint8Array[] = [];
  protected override _write(chunk: ArrayBufferView | ArrayBuffer | string): this {
    if (this._started) {
      const bytes =
        typeof chunk === 'string'
          ? Buffer.from(chunk)
          : ArrayBuffer.isView(chunk)
            ? new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength)
            : new Uint8Array(chunk);
      if (bytes.byteLength > 0) {
        this.pending.push(bytes);
        this._position += bytes.byteLength;
      }
    }
    return this;
  }
  take(): Buffer {
    const b = Buffer.concat(this.pending);
    this.pending = [];
    return b;
  }
}

export class ArrowStreamSink {
  private readonly encoder: ArrowEncoder;
  private readonly writer = new CollectingStreamWriter();

  /** `sample`: the first batch's records (they fix the tensor widths). */
  constructor(sample: readonly AnyRecord[]) {
    this.encoder = new ArrowEncoder(sample);
  }

  /** Bytes of one batch (preceded by the schema the first time). */
  encode(rows: readonly AnyRecord[]): Buffer {
    this.writer.write(this.encoder.encode(rows));
    return this.writer.take();
  }

  /** Bytes of the end-of-stream marker. */
  finish(): Buffer {
    this.writer.finish();
    return this.writer.take();
  }
}
