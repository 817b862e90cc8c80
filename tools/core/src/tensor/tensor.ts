/**
 * Tensor type and the reverse-mode autograd engine.
 *
 * A tensor is a contiguous row-major float32 buffer plus a shape. An op whose
 * inputs require grad (while grad mode is on) records a graph node: its input
 * tensors and a closure that, given the gradient of the output, accumulates
 * gradients into those inputs. `backward()` walks the recorded graph in reverse
 * topological order. Ops on tensors that don't require grad record nothing, so
 * a frozen base model costs no gradient work at all.
 */
import { DeviceArray, scale as copyScaled } from '@catechism/kernels';
import { Rng } from '../util/random.js';
import { K } from './backend.js';

/** Where a tensor's values live: host memory, or GPU memory (a kernels DeviceArray). */
export type Device = 'cpu' | 'cuda';

export type Shape = readonly number[];

export interface TensorOptions {
  requiresGrad?: boolean;
}

/** A recorded op: its inputs and how to push the output gradient back to them. */
export interface GradNode {
  readonly op: string;
  readonly inputs: readonly Tensor[];
  /**
   * Accumulate into the inputs' gradients. `g` is the gradient of the output
   * (length = output size). `donate` says the callee may keep `g` as an input's
   * gradient buffer instead of copying it (no one else reads it afterwards).
   */
  backward(g: Float32Array, donate: boolean): void;
}

let gradEnabled = true;
/** Set just before an internal `new Tensor` whose shape needs no validation or copy. */
let trustedShape = false;

/** Whether ops currently record gradients (false inside `noGrad`). */
export function isGradEnabled(): boolean {
  return gradEnabled;
}

/**
 * Run `fn` with gradient recording off: ops inside record nothing and their
 * results don't require grad. Synchronous only — an async `fn` would re-enable
 * recording at its first `await`, so a returned promise is rejected.
 */
export function noGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    const r = fn();
    if (r !== null && typeof r === 'object' && typeof (r as { then?: unknown }).then === 'function') {
      throw new TypeError('noGrad: fn must be synchronous (it returned a promise)');
    }
    return r;
  } finally {
    gradEnabled = prev;
  }
}

/** Run `fn` with gradient recording on (e.g. inside a `noGrad` scope). */
export function enableGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = true;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

export function shapeSize(shape: Shape): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function checkShape(shape: Shape, where: string): void {
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) {
      throw new RangeError(`${where}: invalid shape [${shape.join(', ')}] (dimensions must be non-negative integers)`);
    }
  }
}

export function shapeStr(shape: Shape): string {
  return `[${shape.join(', ')}]`;
}

export class Tensor {
  readonly shape: readonly number[];
  /** Number of values (the product of the shape). */
  readonly size: number;
  requiresGrad: boolean;
  /** Accumulated gradient of a leaf (or of a tensor that called `retainGrad`). */
  grad: Tensor | null = null;
  readonly dtype = 'float32' as const;
  /**
   * Row-major float32 values in host memory (`data.length === size`): the
   * tensor's own storage, for tensors on the CPU. A tensor on the GPU has a
   * guard here that throws on any use (index, length, passing it to a kernel)
   * rather than hand out device memory: read it with `host()` (a copy) or
   * move it with `to('cpu')`. Assign only on host tensors. (A plain field, not
   * a getter: host code pays nothing for the check.)
   */
  data: Float32Array;
  /** @internal GPU storage (device 'cuda'); null on the host. */
  _dev: DeviceArray<'f32'> | null;
  /** @internal graph node that produced this tensor (null for leaves). */
  _node: GradNode | null = null;
  /** @internal gradient buffer of a non-leaf during backward. */
  _g: Float32Array | null = null;
  /** @internal keep this non-leaf's gradient in `grad` after backward. */
  _retain = false;

  /** Wraps `data` (host) or a DeviceArray (GPU) without copying; prefer the `tensor`/`fromData` helpers. */
  constructor(data: Float32Array | DeviceArray<'f32'>, shape: Shape, requiresGrad = false) {
    if (trustedShape) {
      // Internal results: the op computed shape and size itself and hands over a fresh array.
      trustedShape = false;
      this.shape = Object.freeze(shape as number[]);
    } else {
      checkShape(shape, 'Tensor');
      const size = shapeSize(shape);
      const onDevice = data instanceof DeviceArray && data.type === 'f32';
      if (!(data instanceof Float32Array) && !onDevice) throw new TypeError('Tensor: data must be a Float32Array (or a DeviceArray of f32)');
      if (data.length !== size) {
        throw new RangeError(`Tensor: data has ${data.length} values but shape ${shapeStr(shape)} needs ${size}`);
      }
      this.shape = Object.freeze(shape.slice());
    }
    if (data instanceof Float32Array) {
      this.data = data;
      this._dev = null;
    } else {
      this.data = deviceGuard(this);
      this._dev = data;
    }
    this.size = data.length;
    this.requiresGrad = requiresGrad;
  }

  /** Where the values live. */
  get device(): Device {
    return this._dev === null ? 'cpu' : 'cuda';
  }

  /** The storage itself, host or device, for the kernels (which accept either). */
  get storage(): Float32Array | DeviceArray<'f32'> {
    return this._dev ?? this.data;
  }

  /** The values in host memory: the storage on the CPU (no copy), a fresh copy from the GPU. */
  host(): Float32Array {
    return this._dev === null ? this.data : this._dev.toHost();
  }

  /** This tensor on `device`: itself when already there, else a copy cut from the graph. */
  to(device: Device): Tensor {
    if (device !== 'cpu' && device !== 'cuda') throw new TypeError(`Tensor.to: unknown device ${JSON.stringify(device)} (expected cpu or cuda)`);
    if (device === this.device) return this;
    const moved = device === 'cpu' ? this._dev!.toHost() : (DeviceArray.from(this.data) as DeviceArray<'f32'>);
    return new Tensor(moved, this.shape, false);
  }

  /** The same as `to('cpu')`: a host tensor with these values. */
  toHost(): Tensor {
    return this.to('cpu');
  }

  get ndim(): number {
    return this.shape.length;
  }

  /** True for tensors created by the user (not by a recorded op). */
  get isLeaf(): boolean {
    return this._node === null;
  }

  /** The value of a one-element tensor. */
  item(): number {
    if (this.size !== 1) throw new RangeError(`item: tensor has ${this.size} elements (shape ${shapeStr(this.shape)}), expected 1`);
    return this.host()[0];
  }

  toArray(): number[] {
    return Array.from(this.host());
  }

  /** A tensor sharing this one's storage, cut from the graph (requiresGrad = false). */
  detach(): Tensor {
    return new Tensor(this.storage, this.shape, false);
  }

  /** A copy with its own buffer (on the same device), cut from the graph. */
  clone(): Tensor {
    if (this._dev === null) return new Tensor(this.data.slice(), this.shape, false);
    const copy = new DeviceArray('f32', this.size);
    copyScaled(this._dev!, 1, copy); // a device-to-device copy
    return new Tensor(copy, this.shape, false);
  }

  /** Drop the accumulated gradient. */
  zeroGrad(): void {
    this.grad = null;
  }

  /** Keep this intermediate tensor's gradient in `.grad` after backward (activations). */
  retainGrad(): this {
    if (this._node !== null) this._retain = true;
    return this;
  }

  /**
   * Backpropagate from this tensor. `grad` defaults to 1 for a one-element
   * tensor. Gradients accumulate into `.grad` of leaves that require grad.
   * The graph's saved values are released afterwards (as in PyTorch) unless
   * `retainGraph` is set; a second backward through a released graph throws.
   */
  backward(grad?: Tensor, opts: { retainGraph?: boolean } = {}): void {
    if (!this.requiresGrad) {
      throw new Error('backward: tensor does not require grad (no input requires grad, or it was computed under noGrad)');
    }
    let seed: Float32Array;
    if (grad === undefined) {
      if (this.size !== 1) {
        throw new RangeError(`backward: an implicit gradient needs a one-element tensor, got shape ${shapeStr(this.shape)}; pass grad`);
      }
      seed = new Float32Array([1]);
    } else {
      if (grad.size !== this.size) {
        throw new RangeError(`backward: grad shape ${shapeStr(grad.shape)} does not match tensor shape ${shapeStr(this.shape)}`);
      }
      seed = grad.device === 'cpu' ? grad.data.slice() : grad.host();
    }
    runBackward(this, seed, opts.retainGraph ?? false);
  }

  toString(): string {
    const head = Array.from(this.host().subarray(0, 8), (v) => v.toPrecision(4)).join(', ');
    const where = this.device === 'cpu' ? '' : `, device ${this.device}`;
    return `Tensor(${shapeStr(this.shape)}, [${head}${this.size > 8 ? ', …' : ''}]${this.requiresGrad ? ', requiresGrad' : ''}${where})`;
  }
}

function onDeviceError(t: Tensor): Error {
  return new Error(
    `Tensor.data: this tensor (shape ${shapeStr(t.shape)}) lives on ${t.device}; read its values with .host() (a copy) ` +
      "or move it with .to('cpu'). Tensor ops compute on host tensors; --device cuda runs their kernels on the GPU.",
  );
}

/** The `data` of a tensor on the GPU: any use of it throws onDeviceError (never a silent device read). */
function deviceGuard(t: Tensor): Float32Array {
  const fail = (): never => {
    throw onDeviceError(t);
  };
  return new Proxy(new Float32Array(0), {
    get: fail, set: fail, has: fail, ownKeys: fail, getOwnPropertyDescriptor: fail, defineProperty: fail, deleteProperty: fail,
  });
}

/** Nodes reachable from `root` through tensors that require grad, inputs before outputs. */
function topoOrder(root: Tensor): Tensor[] {
  const order: Tensor[] = [];
  const seen = new Set<Tensor>();
  // Iterative DFS (deep graphs would overflow recursion): [tensor, next input index].
  const stack: Array<[Tensor, number]> = [[root, 0]];
  seen.add(root);
  while (stack.length > 0) {
    const top = stack[stack.length - 1];
    const [t, i] = top;
    const inputs = t._node ? t._node.inputs : [];
    if (i < inputs.length) {
      top[1] = i + 1;
      const inp = inputs[i];
      if (inp.requiresGrad && !seen.has(inp)) {
        seen.add(inp);
        stack.push([inp, 0]);
      }
    } else {
      stack.pop();
      order.push(t);
    }
  }
  return order;
}

function freedBackward(op: string): () => never {
  return () => {
    throw new Error(`backward: the graph through '${op}' was already used by an earlier backward and its saved values were freed; pass { retainGraph: true } to that earlier backward`);
  };
}

/** True while backward runs a node whose graph is freed right after (see `releaseSaved`). */
let savedDying = false;

/**
 * Called by a backward closure on a buffer it saved in forward and that no
 * one else can see (attention probabilities, a loss's cached gradient): it is
 * recycled when this backward frees the graph, kept when the graph is
 * retained for another backward.
 */
export function releaseSaved(b: Float32Array): void {
  if (savedDying) releaseBuffer(b);
}

function runBackward(root: Tensor, seed: Float32Array, retainGraph: boolean): void {
  const order = topoOrder(root);
  accumulateGrad(root, seed, true);
  for (let i = order.length - 1; i >= 0; i--) {
    const t = order[i];
    const node = t._node;
    if (node === null) continue; // leaf: gradient already in t.grad
    const g = t._g;
    t._g = null;
    if (g === null) continue; // no path carried gradient here
    if (t._retain) {
      if (t.grad === null) t.grad = new Tensor(g.slice(), t.shape);
      else K.axpy(1, g, t.grad.data);
    }
    savedDying = !retainGraph;
    try {
      node.backward(g, true);
    } finally {
      savedDying = false;
    }
    // g is dead now unless the node handed it on as an input's gradient (an
    // op only ever passes its gradient to its own inputs): recycle it.
    let adopted = false;
    for (const inp of node.inputs) if (inp._g === g || inp.grad?.data === g) adopted = true;
    if (!adopted) releaseBuffer(g);
    // Drop the closure (and the activations it holds) so memory is freed now.
    if (!retainGraph) t._node = { op: node.op, inputs: [], backward: freedBackward(node.op) };
  }
}

// ------------------------------------------------------------ buffer reuse
//
// Gradient buffers are dead once backward has pushed them through their op.
// Handing them back to the next ops that need a buffer of the same length
// saves the allocation and zero-fill and, at small shapes more importantly,
// the garbage collections V8 starts for every few tens of MB of new
// ArrayBuffer memory. Only whole-buffer arrays that backward owns enter the
// pool; nothing a caller can see is ever recycled.

/** Buffers below this many floats are cheap to allocate; not worth pooling. */
const POOL_MIN = 1024;
const POOL_MAX_BYTES = 64 * 1024 * 1024;
const POOL_MAX_PER_SIZE = 64;
const pool = new Map<number, Float32Array[]>();
let poolBytes = 0;

/**
 * A float32 buffer of length n with unspecified contents (possibly a recycled
 * gradient): for kernels that overwrite every element.
 */
export function takeBuffer(n: number): Float32Array {
  if (n >= POOL_MIN) {
    const list = pool.get(n);
    if (list !== undefined && list.length > 0) {
      poolBytes -= n * 4;
      return list.pop()!;
    }
  }
  return new Float32Array(n);
}

/** A zero-filled float32 buffer of length n (recycled when one is free). */
export function takeZeroed(n: number): Float32Array {
  if (n >= POOL_MIN) {
    const list = pool.get(n);
    if (list !== undefined && list.length > 0) {
      poolBytes -= n * 4;
      return list.pop()!.fill(0);
    }
  }
  return new Float32Array(n);
}

/** Give a buffer nobody references any more back for reuse (ignored when not poolable). */
export function releaseBuffer(b: Float32Array): void {
  const n = b.length;
  // A view into a larger buffer (or a shared one) could still be read through its parent.
  if (n < POOL_MIN || b.byteOffset !== 0 || b.buffer.byteLength !== n * 4) return;
  if (poolBytes + n * 4 > POOL_MAX_BYTES) return;
  let list = pool.get(n);
  if (list === undefined) pool.set(n, (list = []));
  // (a buffer listed twice would be handed out twice)
  if (list.length >= POOL_MAX_PER_SIZE || list.includes(b)) return;
  list.push(b);
  poolBytes += n * 4;
}

/**
 * Add `g` into t's gradient. With `owned`, `g` may become t's gradient buffer
 * (no copy); otherwise it is copied first. Tensors that don't require grad are
 * skipped.
 */
export function accumulateGrad(t: Tensor, g: Float32Array, owned: boolean): void {
  if (!t.requiresGrad) return;
  if (g.length !== t.size) {
    throw new RangeError(`autograd: gradient has ${g.length} values for a tensor of shape ${shapeStr(t.shape)}`);
  }
  if (t._node === null) {
    if (t.grad === null) t.grad = new Tensor(owned ? g : g.slice(), t.shape);
    else K.axpy(1, g, t.grad.data);
  } else {
    if (t._g === null) t._g = owned ? g : g.slice();
    else K.axpy(1, g, t._g);
  }
}

/**
 * The gradient buffer of `t`, allocated (zeros) if absent, for kernels that
 * accumulate into it directly (gemm with beta = 1, scatter-add, …).
 */
export function gradBuffer(t: Tensor): Float32Array {
  if (t._node === null) {
    if (t.grad === null) t.grad = new Tensor(takeZeroed(t.size), t.shape);
    return t.grad.data;
  }
  if (t._g === null) t._g = takeZeroed(t.size);
  return t._g;
}

/**
 * Add a gradient that a kernel writes (rather than accumulates) into t:
 * straight into t's buffer when t has none yet, else through a scratch
 * buffer that is added in and recycled.
 */
export function writeGrad(t: Tensor, write: (out: Float32Array) => void): void {
  const prev = existingGrad(t);
  if (prev === null) {
    write(gradTarget(t).buf);
    return;
  }
  const tmp = takeBuffer(t.size);
  write(tmp);
  K.axpy(1, tmp, prev);
  releaseBuffer(tmp);
}

/** t's gradient buffer if it has one yet, else null (see `gradTarget`). */
export function existingGrad(t: Tensor): Float32Array | null {
  return t._node === null ? (t.grad === null ? null : t.grad.data) : t._g;
}

/**
 * Where a kernel should write t's gradient. When t has none yet, a fresh
 * buffer with unspecified contents is installed and `accumulate` is false:
 * the kernel must overwrite every element (gemm beta = 0). Otherwise the
 * existing buffer comes back with `accumulate` true (gemm beta = 1). Saves
 * zero-filling a buffer only to add into it.
 */
export function gradTarget(t: Tensor): { buf: Float32Array; accumulate: boolean } {
  const prev = existingGrad(t);
  if (prev !== null) return { buf: prev, accumulate: true };
  const buf = takeBuffer(t.size);
  if (t._node === null) t.grad = new Tensor(buf, t.shape);
  else t._g = buf;
  return { buf, accumulate: false };
}

/** True when an op with these inputs must record a graph node. */
export function recording(inputs: readonly Tensor[]): boolean {
  if (!gradEnabled) return false;
  for (const t of inputs) if (t.requiresGrad) return true;
  return false;
}

/**
 * Wrap an op's output; records `backward` when any input requires grad.
 * Callers that need extra forward work only for the gradient check
 * `recording(inputs)` themselves first.
 */
export function makeResult(
  op: string,
  data: Float32Array,
  shape: Shape,
  inputs: readonly Tensor[],
  backward: (g: Float32Array, donate: boolean) => void,
): Tensor {
  // Ops pass either another tensor's (frozen) shape or a fresh array: adopt it without copying.
  trustedShape = data.length === shapeSize(shape);
  const out = new Tensor(data, shape);
  if (recording(inputs)) {
    out.requiresGrad = true;
    out._node = { op, inputs, backward };
  }
  return out;
}

// ---------------------------------------------------------------- constructors

function toShape(shape: Shape | number, where: string): number[] {
  const s = typeof shape === 'number' ? [shape] : shape.slice();
  checkShape(s, where);
  return s;
}

/** A tensor holding a copy of `data`. */
export function tensor(data: ArrayLike<number> | Float32Array, shape?: Shape, opts: TensorOptions = {}): Tensor {
  const s = shape === undefined ? [data.length] : toShape(shape, 'tensor');
  const buf = Float32Array.from(data as ArrayLike<number>);
  if (buf.length !== shapeSize(s)) {
    throw new RangeError(`tensor: ${buf.length} values do not fit shape ${shapeStr(s)}`);
  }
  return new Tensor(buf, s, opts.requiresGrad ?? false);
}

/** A tensor that wraps `data` without copying (e.g. weights mapped from safetensors). */
export function fromData(data: Float32Array, shape: Shape, opts: TensorOptions = {}): Tensor {
  if (!(data instanceof Float32Array)) throw new TypeError('fromData: data must be a Float32Array');
  return new Tensor(data, toShape(shape, 'fromData'), opts.requiresGrad ?? false);
}

/** A one-element, zero-dimensional tensor. */
export function scalar(value: number, opts: TensorOptions = {}): Tensor {
  return new Tensor(new Float32Array([value]), [], opts.requiresGrad ?? false);
}

export function zeros(shape: Shape | number, opts: TensorOptions = {}): Tensor {
  const s = toShape(shape, 'zeros');
  return new Tensor(new Float32Array(shapeSize(s)), s, opts.requiresGrad ?? false);
}

export function full(shape: Shape | number, value: number, opts: TensorOptions = {}): Tensor {
  const s = toShape(shape, 'full');
  const data = new Float32Array(shapeSize(s));
  data.fill(value);
  return new Tensor(data, s, opts.requiresGrad ?? false);
}

export function ones(shape: Shape | number, opts: TensorOptions = {}): Tensor {
  return full(shape, 1, opts);
}

/** Normal(0, std²) samples drawn from `rng` (reproducible for a given seed). */
export function randn(shape: Shape | number, rng: Rng, std = 1, opts: TensorOptions = {}): Tensor {
  const s = toShape(shape, 'randn');
  const data = new Float32Array(shapeSize(s));
  for (let i = 0; i < data.length; i++) data[i] = rng.normal() * std;
  return new Tensor(data, s, opts.requiresGrad ?? false);
}

/** Uniform samples in [low, high) drawn from `rng`. */
export function rand(shape: Shape | number, rng: Rng, low = 0, high = 1, opts: TensorOptions = {}): Tensor {
  const s = toShape(shape, 'rand');
  const data = new Float32Array(shapeSize(s));
  for (let i = 0; i < data.length; i++) data[i] = low + (high - low) * rng.uniform();
  return new Tensor(data, s, opts.requiresGrad ?? false);
}
