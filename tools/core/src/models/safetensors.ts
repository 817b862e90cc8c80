/**
 * safetensors reading and writing.
 *
 * Format: u64 little-endian header length N, N bytes of JSON
 * `{name: {dtype, shape, data_offsets: [begin, end]}, __metadata__?: {..}}`,
 * then the data buffer; offsets are relative to the start of the data buffer.
 * The header is never trusted: every length, offset, shape and dtype is
 * checked against the file before any tensor is touched, and errors name the
 * file and the tensor.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import * as kernelsModule from '@catechism/kernels';

export type Dtype = 'F32' | 'F16' | 'BF16' | 'F64' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

const DTYPE_SIZE: Record<Dtype, number> = {
  F32: 4, F16: 2, BF16: 2, F64: 8, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1,
};

/** Float dtypes a model weight may have (converted to float32 on read). */
const FLOAT_DTYPES = new Set<Dtype>(['F32', 'F16', 'BF16']);

export class SafetensorsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SafetensorsError';
  }
}

/** Half-precision conversions come from the native kernels (one code path). */
interface HalfKernels {
  f16ToF32(src: Uint16Array, out: Float32Array): void;
  bf16ToF32(src: Uint16Array, out: Float32Array): void;
  f32ToF16(src: Float32Array, out: Uint16Array): void;
  f32ToBf16(src: Float32Array, out: Uint16Array): void;
}
const K = kernelsModule as unknown as Partial<HalfKernels>;
function kernel<N extends keyof HalfKernels>(name: N): HalfKernels[N] {
  const f = K[name];
  if (typeof f !== 'function') throw new SafetensorsError(`@catechism/kernels has no ${name}(); rebuild the kernels package`);
  return f as HalfKernels[N];
}

export interface TensorInfo {
  name: string;
  dtype: Dtype;
  shape: number[];
  /** Byte offsets relative to the data buffer. */
  begin: number;
  end: number;
}

/** A fresh copy (Buffer#slice would return a view of the pooled buffer). */
function copyBytes(b: Uint8Array): Uint8Array {
  return new Uint8Array(b);
}

const MAX_HEADER = 100 * 1024 * 1024; // same bound as the reference implementation

/** Where a safetensors file's bytes come from: memory, or a file read by range. */
interface ByteSource {
  readonly size: number;
  /** Bytes [pos, pos + len): a view for memory, a fresh read for files. */
  read(pos: number, len: number): Uint8Array;
  /** Read [pos, pos + len) into `dst` (exactly len bytes). */
  readInto(pos: number, dst: Uint8Array): void;
}

class MemorySource implements ByteSource {
  constructor(private readonly bytes: Uint8Array) {}
  get size(): number {
    return this.bytes.byteLength;
  }
  read(pos: number, len: number): Uint8Array {
    return this.bytes.subarray(pos, pos + len);
  }
  readInto(pos: number, dst: Uint8Array): void {
    dst.set(this.bytes.subarray(pos, pos + dst.byteLength));
  }
}

/**
 * A file read with positioned reads: no size limit (Node cannot read files
 * over 2 GiB whole), and tensors are read straight into their final arrays.
 */
class FileSource implements ByteSource {
  readonly size: number;
  constructor(private readonly file: string) {
    this.size = fs.statSync(file).size;
  }
  read(pos: number, len: number): Uint8Array {
    const out = new Uint8Array(len);
    this.readInto(pos, out);
    return out;
  }
  readInto(pos: number, dst: Uint8Array): void {
    const fd = fs.openSync(this.file, 'r');
    try {
      let done = 0;
      while (done < dst.byteLength) {
        const n = fs.readSync(fd, dst, done, Math.min(dst.byteLength - done, 1 << 30), pos + done);
        if (n === 0) throw new SafetensorsError(`safetensors file ${this.file}: file shrank while reading (at byte ${pos + done})`);
        done += n;
      }
    } finally {
      fs.closeSync(fd);
    }
  }
}

/** A parsed, validated safetensors file (in memory or read lazily from disk). */
export class SafetensorsFile {
  readonly tensors = new Map<string, TensorInfo>();
  readonly metadata: Record<string, string> = {};
  private readonly dataStart: number;
  private readonly src: ByteSource;

  constructor(source: Uint8Array | { file: string }, readonly label: string) {
    this.src = source instanceof Uint8Array ? new MemorySource(source) : new FileSource(source.file);
    const where = `safetensors file ${label}`;
    const size = this.src.size;
    if (size < 8) throw new SafetensorsError(`${where}: ${size} bytes is too short for a header length`);
    const head = this.src.read(0, 8);
    const n = new DataView(head.buffer, head.byteOffset, 8).getBigUint64(0, true);
    if (n > BigInt(size - 8)) {
      throw new SafetensorsError(`${where}: header length ${n} runs past the end of the file (${size} bytes)`);
    }
    const hlen = Number(n);
    if (hlen > MAX_HEADER) throw new SafetensorsError(`${where}: header length ${hlen} exceeds ${MAX_HEADER} bytes`);
    let header: unknown;
    try {
      header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(this.src.read(8, hlen)));
    } catch (e) {
      throw new SafetensorsError(`${where}: header is not valid JSON (${(e as Error).message})`);
    }
    if (header === null || typeof header !== 'object' || Array.isArray(header)) {
      throw new SafetensorsError(`${where}: header must be a JSON object`);
    }
    this.dataStart = 8 + hlen;
    const dataLen = size - this.dataStart;
    for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
      if (name === '__metadata__') {
        if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
          throw new SafetensorsError(`${where}: __metadata__ must be an object of strings`);
        }
        for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
          if (typeof v !== 'string') throw new SafetensorsError(`${where}: __metadata__.${k} must be a string`);
          this.metadata[k] = v;
        }
        continue;
      }
      const t = `${where}, tensor '${name}'`;
      if (raw === null || typeof raw !== 'object') throw new SafetensorsError(`${t}: entry must be an object`);
      const { dtype, shape, data_offsets: offs } = raw as Record<string, unknown>;
      if (typeof dtype !== 'string' || !(dtype in DTYPE_SIZE)) throw new SafetensorsError(`${t}: unknown dtype ${JSON.stringify(dtype)}`);
      if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
        throw new SafetensorsError(`${t}: shape must be a list of non-negative integers, got ${JSON.stringify(shape)}`);
      }
      if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isSafeInteger(o) && o >= 0)) {
        throw new SafetensorsError(`${t}: data_offsets must be [begin, end], got ${JSON.stringify(offs)}`);
      }
      const [begin, end] = offs as [number, number];
      if (begin > end) throw new SafetensorsError(`${t}: data_offsets [${begin}, ${end}] are reversed`);
      if (end > dataLen) {
        throw new SafetensorsError(`${t}: data_offsets [${begin}, ${end}] point past the end of the data (${dataLen} bytes)`);
      }
      const numel = (shape as number[]).reduce((a, b) => a * b, 1);
      const want = numel * DTYPE_SIZE[dtype as Dtype];
      if (want !== end - begin) {
        throw new SafetensorsError(`${t}: shape [${shape.join(', ')}] of ${dtype} needs ${want} bytes but data_offsets span ${end - begin}`);
      }
      this.tensors.set(name, { name, dtype: dtype as Dtype, shape: shape as number[], begin, end });
    }
    // Tensors must not share bytes: a header that aliases data is corrupt.
    const sorted = [...this.tensors.values()].filter((i) => i.end > i.begin).sort((a, b) => a.begin - b.begin);
    for (let i = 1; i < sorted.length; i++) {
      if (sorted[i].begin < sorted[i - 1].end) {
        throw new SafetensorsError(`${where}: tensors '${sorted[i - 1].name}' and '${sorted[i].name}' overlap`);
      }
    }
  }

  names(): string[] {
    return [...this.tensors.keys()];
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const i = this.tensors.get(name);
    if (!i) throw new SafetensorsError(`safetensors file ${this.label}: no tensor '${name}'`);
    return i;
  }

  /** Raw bytes of a tensor (a view for in-memory files, a fresh read for files on disk). */
  raw(name: string): Uint8Array {
    const i = this.info(name);
    return this.src.read(this.dataStart + i.begin, i.end - i.begin);
  }

  /**
   * A float tensor as float32. In-memory F32 data is returned as a view over
   * the buffer when 4-byte aligned (no copy); F32 on disk is read straight
   * into the returned array; F16/BF16 are converted by the native kernels.
   */
  float32(name: string): Float32Array {
    const i = this.info(name);
    if (!FLOAT_DTYPES.has(i.dtype)) {
      throw new SafetensorsError(`safetensors file ${this.label}, tensor '${name}': dtype ${i.dtype} is not a float type (F32, F16, BF16)`);
    }
    const pos = this.dataStart + i.begin;
    const nbytes = i.end - i.begin;
    const n = nbytes / DTYPE_SIZE[i.dtype];
    if (i.dtype === 'F32') {
      if (this.src instanceof MemorySource) {
        const raw = this.src.read(pos, nbytes);
        if (raw.byteOffset % 4 === 0) return new Float32Array(raw.buffer, raw.byteOffset, n);
      }
      const out = new Float32Array(n);
      this.src.readInto(pos, new Uint8Array(out.buffer));
      return out;
    }
    const half = new Uint16Array(n);
    this.src.readInto(pos, new Uint8Array(half.buffer));
    const out = new Float32Array(n);
    if (n > 0) kernel(i.dtype === 'F16' ? 'f16ToF32' : 'bf16ToF32')(half, out);
    return out;
  }

  /** An integer tensor (I32 or I64 within the safe range) as Int32Array. */
  int32(name: string): Int32Array {
    const i = this.info(name);
    const raw = copyBytes(this.raw(name));
    if (i.dtype === 'I32') return new Int32Array(raw.buffer);
    if (i.dtype === 'I64') {
      const big = new BigInt64Array(raw.buffer);
      const out = new Int32Array(big.length);
      for (let k = 0; k < big.length; k++) out[k] = Number(big[k]);
      return out;
    }
    throw new SafetensorsError(`safetensors file ${this.label}, tensor '${name}': dtype ${i.dtype} is not I32/I64`);
  }
}

/** Open and validate a safetensors file; tensors are read on demand. */
export function readSafetensors(file: string): SafetensorsFile {
  try {
    return new SafetensorsFile({ file }, file);
  } catch (e) {
    if (e instanceof SafetensorsError) throw e;
    throw new SafetensorsError(`cannot read safetensors file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

export interface TensorToWrite {
  shape: number[];
  data: Float32Array;
  /** Stored dtype; float32 data is converted. Default F32. */
  dtype?: 'F32' | 'F16' | 'BF16';
}

/** Serialise tensors (sorted by name, header padded with spaces to 8 bytes). */
export function serializeSafetensors(tensors: Record<string, TensorToWrite>, metadata?: Record<string, string>): Buffer {
  const names = Object.keys(tensors).sort();
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  const blobs: Uint8Array[] = [];
  let off = 0;
  for (const name of names) {
    if (name === '__metadata__') throw new SafetensorsError(`tensor name '__metadata__' is reserved`);
    const t = tensors[name];
    const numel = t.shape.reduce((a, b) => a * b, 1);
    if (numel !== t.data.length) {
      throw new SafetensorsError(`tensor '${name}': shape [${t.shape.join(', ')}] has ${numel} elements but data has ${t.data.length}`);
    }
    const dtype = t.dtype ?? 'F32';
    let blob: Uint8Array;
    if (dtype === 'F32') {
      blob = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    } else {
      const h = new Uint16Array(numel);
      if (numel > 0) kernel(dtype === 'F16' ? 'f32ToF16' : 'f32ToBf16')(t.data, h);
      blob = new Uint8Array(h.buffer);
    }
    header[name] = { dtype, shape: t.shape, data_offsets: [off, off + blob.byteLength] };
    blobs.push(blob);
    off += blob.byteLength;
  }
  let json = JSON.stringify(header);
  const pad = (8 - (Buffer.byteLength(json) % 8)) % 8;
  json += ' '.repeat(pad);
  const hbytes = Buffer.from(json, 'utf-8');
  const out = Buffer.allocUnsafe(8 + hbytes.length + off);
  out.writeBigUInt64LE(BigInt(hbytes.length), 0);
  hbytes.copy(out, 8);
  let p = 8 + hbytes.length;
  for (const b of blobs) {
    out.set(b, p);
    p += b.byteLength;
  }
  return out;
}

/** Write bytes atomically: temp file in the same directory, fsync, rename, fsync the directory. */
export function writeFileAtomic(file: string, data: Uint8Array | string): void {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const fd = fs.openSync(tmp, 'w', 0o644);
  try {
    fs.writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
    fs.fsyncSync(fd);
  } catch (e) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  fs.closeSync(fd);
  fs.renameSync(tmp, file);
  try {
    const dfd = fs.openSync(dir, 'r');
    fs.fsyncSync(dfd);
    fs.closeSync(dfd);
  } catch {
    // some filesystems refuse fsync on directories; the rename is still atomic
  }
}

/** Write a safetensors file atomically. */
export function writeSafetensors(file: string, tensors: Record<string, TensorToWrite>, metadata?: Record<string, string>): void {
  writeFileAtomic(file, serializeSafetensors(tensors, metadata));
}

/**
 * The weights of a model directory: `model.safetensors`, or the shards named
 * by `model.safetensors.index.json`.
 */
export class Checkpoint {
  private readonly where = new Map<string, SafetensorsFile>();

  private constructor(readonly dir: string, readonly files: SafetensorsFile[]) {
    for (const f of files) {
      for (const n of f.names()) {
        if (this.where.has(n)) throw new SafetensorsError(`checkpoint ${dir}: tensor '${n}' appears in two files`);
        this.where.set(n, f);
      }
    }
  }

  static open(dir: string): Checkpoint {
    const index = path.join(dir, 'model.safetensors.index.json');
    const single = path.join(dir, 'model.safetensors');
    if (fs.existsSync(index)) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(fs.readFileSync(index, 'utf-8'));
      } catch (e) {
        throw new SafetensorsError(`${index}: not valid JSON (${(e as Error).message})`);
      }
      const wmap = (parsed as { weight_map?: unknown })?.weight_map;
      if (!wmap || typeof wmap !== 'object') throw new SafetensorsError(`${index}: missing "weight_map"`);
      const shardNames = new Set<string>();
      for (const [t, f] of Object.entries(wmap as Record<string, unknown>)) {
        if (typeof f !== 'string' || f.includes('/') || f.includes('\\') || f.startsWith('.')) {
          throw new SafetensorsError(`${index}: tensor '${t}' maps to a bad file name ${JSON.stringify(f)}`);
        }
        shardNames.add(f);
      }
      const files = [...shardNames].sort().map((f) => {
        const p = path.join(dir, f);
        if (!fs.existsSync(p)) throw new SafetensorsError(`${index} names shard ${f}, which is missing from ${dir}`);
        return readSafetensors(p);
      });
      const ck = new Checkpoint(dir, files);
      for (const [t, f] of Object.entries(wmap as Record<string, string>)) {
        if (ck.where.get(t)?.label !== path.join(dir, f)) {
          throw new SafetensorsError(`${index}: tensor '${t}' is not in shard ${f}`);
        }
      }
      return ck;
    }
    if (fs.existsSync(single)) return new Checkpoint(dir, [readSafetensors(single)]);
    throw new SafetensorsError(`model directory ${dir} has neither model.safetensors nor model.safetensors.index.json`);
  }

  names(): string[] {
    return [...this.where.keys()];
  }

  has(name: string): boolean {
    return this.where.has(name);
  }

  info(name: string): TensorInfo | undefined {
    return this.where.get(name)?.tensors.get(name);
  }

  float32(name: string): Float32Array {
    const f = this.where.get(name);
    if (!f) throw new SafetensorsError(`checkpoint ${this.dir}: tensor '${name}' is missing`);
    return f.float32(name);
  }
}
