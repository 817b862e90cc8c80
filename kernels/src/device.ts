// Device memory: a DeviceArray is a buffer in GPU memory, accepted by every op
// wherever a typed array of its element type is (an op runs on the GPU when
// its buffers are DeviceArrays; host and device buffers may not be mixed).
// Reading it from JavaScript is always an explicit copy (`toHost`).
import { native } from './native.js';

export type ElemType = 'f32' | 'i32' | 'u8' | 'u16';
export type HostArray<T extends ElemType> = T extends 'f32' ? Float32Array : T extends 'i32' ? Int32Array : T extends 'u8' ? Uint8Array : Uint16Array;

const CODE: Record<ElemType, number> = { f32: 0, i32: 1, u8: 2, u16: 3 };
const CTOR = { f32: Float32Array, i32: Int32Array, u8: Uint8Array, u16: Uint16Array } as const;

function typeOf(a: ArrayBufferView): ElemType {
  if (a instanceof Float32Array) return 'f32';
  if (a instanceof Int32Array) return 'i32';
  if (a instanceof Uint8Array) return 'u8';
  if (a instanceof Uint16Array) return 'u16';
  throw new TypeError('DeviceArray.from: expected a Float32Array, Int32Array, Uint8Array or Uint16Array');
}

export class DeviceArray<T extends ElemType = ElemType> {
  readonly device = 'cuda' as const;
  readonly type: T;
  readonly length: number;

  /** Zero-filled device memory of `length` elements; throws (naming what is missing) without a usable GPU. */
  constructor(type: T, length: number) {
    if (!Object.hasOwn(CODE, type)) throw new TypeError(`DeviceArray: unknown element type ${JSON.stringify(type)}`);
    if (!Number.isSafeInteger(length) || length < 0) throw new RangeError(`DeviceArray: length must be a non-negative integer, got ${length}`);
    this.type = type;
    this.length = length;
    native.deviceAlloc(this, length, CODE[type]);
    if (length > 0) native.deviceCopy(this, new CTOR[type](length), true);
  }

  /** A device copy of a host typed array. */
  static from<A extends Float32Array | Int32Array | Uint8Array | Uint16Array>(host: A): DeviceArray {
    const d = new DeviceArray(typeOf(host), host.length);
    native.deviceCopy(d, host, true);
    return d;
  }

  /** A new host typed array with this buffer's contents (waits for queued kernels). */
  toHost(): HostArray<T> {
    const out = new CTOR[this.type](this.length) as HostArray<T>;
    native.deviceCopy(this, out, false);
    return out;
  }

  /** Overwrite this buffer with `host` (same type and length). */
  copyFrom(host: HostArray<T>): this {
    native.deviceCopy(this, host, true);
    return this;
  }

  /** Release the device memory now instead of at garbage collection; the array is unusable afterwards. */
  free(): void {
    native.deviceFree(this);
  }
}
