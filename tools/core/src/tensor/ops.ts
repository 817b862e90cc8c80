/**
 * Differentiable tensor ops: elementwise (numpy broadcasting), reductions,
 * shape ops and linear algebra. Heavy math goes through the native kernels;
 * the TypeScript here is shape bookkeeping and light glue.
 */
import type { Rng } from '../util/random.js';
import { K, type UnaryOp } from './backend.js';
import {
  Tensor, type Shape, accumulateGrad, existingGrad, gradBuffer, gradTarget, makeResult, recording, releaseBuffer, releaseSaved,
  scalar, shapeSize, shapeStr, takeBuffer,
} from './tensor.js';

// ------------------------------------------------------------------ helpers

/** Normalise a possibly negative axis against `ndim`. */
export function normAxis(axis: number, ndim: number, where: string): number {
  const a = axis < 0 ? axis + ndim : axis;
  if (!Number.isInteger(axis) || a < 0 || a >= ndim) {
    throw new RangeError(`${where}: axis ${axis} out of range for a ${ndim}-d tensor`);
  }
  return a;
}

/** numpy broadcast of two shapes. */
export function broadcastShapes(a: Shape, b: Shape, where = 'broadcast'): number[] {
  const n = Math.max(a.length, b.length);
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) {
    const da = i < n - a.length ? 1 : a[i - (n - a.length)];
    const db = i < n - b.length ? 1 : b[i - (n - b.length)];
    if (da !== db && da !== 1 && db !== 1) {
      throw new RangeError(`${where}: shapes ${shapeStr(a)} and ${shapeStr(b)} cannot be broadcast together`);
    }
    out[i] = da === 1 ? db : da;
  }
  return out;
}

function sameShape(a: Shape, b: Shape): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Sum a gradient of broadcast shape `gShape` down to `target` (the shape an
 * input had before broadcasting). Consecutive reduced dimensions are merged
 * so each group costs one reduce kernel call.
 */
export function sumToShape(g: Float32Array, gShape: Shape, target: Shape): Float32Array {
  const n = gShape.length;
  const t = new Array<number>(n);
  for (let i = 0; i < n; i++) t[i] = i < n - target.length ? 1 : target[i - (n - target.length)];
  let cur = g;
  const curShape = gShape.slice();
  let i = 0;
  while (i < n) {
    if (t[i] === 1 && curShape[i] !== 1) {
      let j = i;
      while (j < n && t[j] === 1) j++;
      let outer = 1, mid = 1, inner = 1;
      for (let d = 0; d < i; d++) outer *= curShape[d];
      for (let d = i; d < j; d++) mid *= curShape[d];
      for (let d = j; d < n; d++) inner *= curShape[d];
      const next = new Float32Array(outer * inner);
      K.reduce('sum', cur, [outer, mid, inner], 1, next);
      cur = next;
      for (let d = i; d < j; d++) curShape[d] = 1;
      i = j;
    } else {
      i++;
    }
  }
  return cur;
}

/** Accumulate a broadcast-shaped gradient into `t`, reducing broadcast dims. */
function accumulateBroadcast(t: Tensor, g: Float32Array, gShape: Shape, donate: boolean): void {
  if (!t.requiresGrad) return;
  if (t.size === g.length) accumulateGrad(t, g, donate);
  else accumulateGrad(t, sumToShape(g, gShape, t.shape), true);
}

function asTensor(x: Tensor | number): Tensor {
  return typeof x === 'number' ? scalar(x) : x;
}

// ------------------------------------------------------------- elementwise

function binaryOp(op: 'add' | 'sub' | 'mul' | 'div', aIn: Tensor | number, bIn: Tensor | number): Tensor {
  const a = asTensor(aIn);
  const b = asTensor(bIn);
  const shape = (sameShape(a.shape, b.shape) ? a.shape : broadcastShapes(a.shape, b.shape, op)) as number[];
  const out = takeBuffer(shapeSize(shape));
  K.binary(op, a.data, a.shape as number[], b.data, b.shape as number[], out);
  return makeResult(op, out, shape, [a, b], (g, donate) => {
    switch (op) {
      case 'add':
        // The first consumer may keep g; a second one copies it.
        accumulateBroadcast(a, g, shape, donate);
        accumulateBroadcast(b, g, shape, donate && !a.requiresGrad);
        break;
      case 'sub': {
        if (b.requiresGrad) {
          const ng = takeBuffer(g.length);
          K.scale(g, -1, ng);
          accumulateBroadcast(b, ng, shape, true);
        }
        accumulateBroadcast(a, g, shape, donate);
        break;
      }
      case 'mul': {
        if (a.requiresGrad) {
          const ga = takeBuffer(g.length);
          K.binary('mul', g, shape, b.data, b.shape as number[], ga);
          accumulateBroadcast(a, ga, shape, true);
        }
        if (b.requiresGrad) {
          const gb = takeBuffer(g.length);
          K.binary('mul', g, shape, a.data, a.shape as number[], gb);
          accumulateBroadcast(b, gb, shape, true);
        }
        break;
      }
      case 'div': {
        // d(a/b)/da = 1/b; d(a/b)/db = -(a/b)/b = -out/b
        const ga = new Float32Array(g.length);
        K.binary('div', g, shape, b.data, b.shape as number[], ga);
        if (b.requiresGrad) {
          const t = new Float32Array(g.length);
          K.binary('mul', ga, shape, out, shape, t);
          const gb = new Float32Array(g.length);
          K.scale(t, -1, gb);
          accumulateBroadcast(b, gb, shape, true);
        }
        accumulateBroadcast(a, ga, shape, true);
        break;
      }
    }
  });
}

/** a + b with numpy broadcasting (either side may be a number). */
export function add(a: Tensor | number, b: Tensor | number): Tensor { return binaryOp('add', a, b); }
/** a − b with numpy broadcasting. */
export function sub(a: Tensor | number, b: Tensor | number): Tensor { return binaryOp('sub', a, b); }
/** a · b elementwise with numpy broadcasting. */
export function mul(a: Tensor | number, b: Tensor | number): Tensor { return binaryOp('mul', a, b); }
/** a / b elementwise with numpy broadcasting. */
export function div(a: Tensor | number, b: Tensor | number): Tensor { return binaryOp('div', a, b); }

/** Index of the element of `shape`-shaped `src` that broadcast position `i` of `outShape` reads. */
function broadcastIndexer(src: Shape, outShape: Shape): (i: number) => number {
  if (sameShape(src, outShape)) return (i) => i;
  const nd = outShape.length, pad = nd - src.length;
  const strides = new Array<number>(nd).fill(0);
  let s = 1;
  for (let d = nd - 1; d >= pad; d--) {
    strides[d] = src[d - pad] === 1 ? 0 : s;
    s *= src[d - pad];
  }
  return (i) => {
    let off = 0;
    for (let d = nd - 1; d >= 0; d--) {
      const q = Math.floor(i / outShape[d]);
      off += (i - q * outShape[d]) * strides[d];
      i = q;
    }
    return off;
  };
}

function minMax(op: 'max' | 'min', aIn: Tensor | number, bIn: Tensor | number): Tensor {
  const a = asTensor(aIn);
  const b = asTensor(bIn);
  const shape = (sameShape(a.shape, b.shape) ? a.shape : broadcastShapes(a.shape, b.shape, op)) as number[];
  const out = new Float32Array(shapeSize(shape));
  K.binary(op, a.data, a.shape as number[], b.data, b.shape as number[], out);
  return makeResult(op === 'max' ? 'maximum' : 'minimum', out, shape, [a, b], (g) => {
    // The gradient goes to the operand that was picked; ties go to a.
    const ia = broadcastIndexer(a.shape, shape);
    const ga = new Float32Array(g.length), gb = new Float32Array(g.length);
    for (let i = 0; i < g.length; i++) {
      if (a.data[ia(i)] === out[i]) ga[i] = g[i];
      else gb[i] = g[i];
    }
    accumulateBroadcast(a, ga, shape, true);
    accumulateBroadcast(b, gb, shape, true);
  });
}

/** Elementwise maximum with broadcasting (gradient to the larger; ties to a). */
export function maximum(a: Tensor | number, b: Tensor | number): Tensor { return minMax('max', a, b); }
/** Elementwise minimum with broadcasting (gradient to the smaller; ties to a). */
export function minimum(a: Tensor | number, b: Tensor | number): Tensor { return minMax('min', a, b); }

/**
 * x^p for a constant exponent p (elementwise). Not a kernel: computed in
 * TypeScript, meant for small tensors (norm penalties, schedules).
 */
export function pow(x: Tensor, p: number): Tensor {
  const out = new Float32Array(x.size);
  for (let i = 0; i < out.length; i++) out[i] = Math.pow(x.data[i], p);
  return makeResult('pow', out, x.shape, [x], (g) => {
    const gx = gradBuffer(x);
    for (let i = 0; i < g.length; i++) gx[i] += g[i] * p * Math.pow(x.data[i], p - 1);
  });
}

/**
 * Inverted dropout: zero each element with probability p and scale the rest
 * by 1/(1−p). Identity when p = 0 or when `training` is false.
 */
export function dropout(x: Tensor, p: number, rng: Rng, training = true): Tensor {
  if (!(p >= 0 && p < 1)) throw new RangeError(`dropout: p must be in [0, 1), got ${p}`);
  if (!training || p === 0) return x;
  const mask = new Float32Array(x.size);
  const keep = 1 / (1 - p);
  for (let i = 0; i < mask.length; i++) mask[i] = rng.uniform() < p ? 0 : keep;
  return mul(x, new Tensor(mask, x.shape));
}

function unaryOp(op: UnaryOp, x: Tensor): Tensor {
  const out = takeBuffer(x.size);
  K.unary(op, x.data, out);
  return makeResult(op, out, x.shape, [x], (g) => {
    const { buf, accumulate } = gradTarget(x);
    K.unaryBackward(op, x.data, g, buf, accumulate);
  });
}

export function neg(x: Tensor): Tensor { return unaryOp('neg', x); }
export function exp(x: Tensor): Tensor { return unaryOp('exp', x); }
/** Natural log. */
export function log(x: Tensor): Tensor { return unaryOp('log', x); }
export function sqrt(x: Tensor): Tensor { return unaryOp('sqrt', x); }
export function rsqrt(x: Tensor): Tensor { return unaryOp('rsqrt', x); }
export function tanh(x: Tensor): Tensor { return unaryOp('tanh', x); }
export function sigmoid(x: Tensor): Tensor { return unaryOp('sigmoid', x); }
export function relu(x: Tensor): Tensor { return unaryOp('relu', x); }
/** GELU, tanh approximation (GPT-2's gelu_new). */
export function gelu(x: Tensor): Tensor { return unaryOp('gelu', x); }
/** SiLU / swish: x·sigmoid(x). */
export function silu(x: Tensor): Tensor { return unaryOp('silu', x); }
export function square(x: Tensor): Tensor { return unaryOp('square', x); }
export function abs(x: Tensor): Tensor { return unaryOp('abs', x); }

/** s · x for a constant s. */
export function scale(x: Tensor, s: number): Tensor {
  const out = takeBuffer(x.size);
  K.scale(x.data, s, out);
  return makeResult('scale', out, x.shape, [x], (g) => {
    const { buf, accumulate } = gradTarget(x);
    if (accumulate) K.axpy(s, g, buf);
    else K.scale(g, s, buf);
  });
}

// --------------------------------------------------------------- reductions

/** Reduce shape bookkeeping: [outer, n, inner] around `axis`. */
function splitAt(shape: Shape, axis: number): [number, number, number] {
  let outer = 1, inner = 1;
  for (let d = 0; d < axis; d++) outer *= shape[d];
  for (let d = axis + 1; d < shape.length; d++) inner *= shape[d];
  return [outer, shape[axis], inner];
}

function reducedShape(shape: Shape, axis: number | undefined, keepDim: boolean): number[] {
  if (axis === undefined) return keepDim ? shape.map(() => 1) : [];
  const s = shape.slice();
  if (keepDim) s[axis] = 1;
  else s.splice(axis, 1);
  return s;
}

/** dst[o, j, i] += alpha · g[o, i] for j < n (spread a reduced gradient back). */
function spreadAdd(g: Float32Array, dst: Float32Array, outer: number, n: number, inner: number, alpha: number): void {
  for (let o = 0; o < outer; o++) {
    const gBase = o * inner;
    for (let j = 0; j < n; j++) {
      const dBase = (o * n + j) * inner;
      for (let i = 0; i < inner; i++) dst[dBase + i] += alpha * g[gBase + i];
    }
  }
}

function sumOrMean(kind: 'sum' | 'mean', x: Tensor, axisIn: number | undefined, keepDim: boolean): Tensor {
  const axis = axisIn === undefined ? undefined : normAxis(axisIn, x.ndim, kind);
  const [outer, n, inner] = axis === undefined ? [1, x.size, 1] : splitAt(x.shape, axis);
  const shape = reducedShape(x.shape, axis, keepDim);
  const out = new Float32Array(outer * inner);
  if (n === 0) {
    if (kind === 'mean') out.fill(NaN);
  } else {
    K.reduce(kind, x.data, [outer, n, inner], 1, out);
  }
  return makeResult(kind, out, shape, [x], (g) => {
    spreadAdd(g, gradBuffer(x), outer, n, inner, kind === 'mean' ? 1 / n : 1);
  });
}

/** Sum over `axis` (all elements when omitted). */
export function sum(x: Tensor, axis?: number, keepDim = false): Tensor { return sumOrMean('sum', x, axis, keepDim); }
/** Mean over `axis` (all elements when omitted). */
export function mean(x: Tensor, axis?: number, keepDim = false): Tensor { return sumOrMean('mean', x, axis, keepDim); }

/** Max over `axis`; the gradient goes to the first maximal element. */
export function max(x: Tensor, axisIn: number, keepDim = false): Tensor {
  const axis = normAxis(axisIn, x.ndim, 'max');
  const [outer, n, inner] = splitAt(x.shape, axis);
  if (n === 0) throw new RangeError('max: cannot reduce an empty axis');
  const out = new Float32Array(outer * inner);
  K.reduce('max', x.data, [outer, n, inner], 1, out);
  return makeResult('max', out, reducedShape(x.shape, axis, keepDim), [x], (g) => {
    const gx = gradBuffer(x);
    const xd = x.data;
    for (let o = 0; o < outer; o++) {
      for (let i = 0; i < inner; i++) {
        const m = out[o * inner + i];
        for (let j = 0; j < n; j++) {
          const idx = (o * n + j) * inner + i;
          if (xd[idx] === m) { gx[idx] += g[o * inner + i]; break; }
        }
      }
    }
  });
}

// ------------------------------------------------------------------- shapes

/** Same data, new shape (one dimension may be -1). No copy. */
export function reshape(x: Tensor, shapeIn: Shape): Tensor {
  const shape = shapeIn.slice();
  let infer = -1, known = 1;
  for (let i = 0; i < shape.length; i++) {
    if (shape[i] === -1) {
      if (infer >= 0) throw new RangeError(`reshape: more than one -1 in ${shapeStr(shapeIn)}`);
      infer = i;
    } else if (!Number.isInteger(shape[i]) || shape[i] < 0) {
      throw new RangeError(`reshape: invalid dimension ${shape[i]} in ${shapeStr(shapeIn)}`);
    } else known *= shape[i];
  }
  if (infer >= 0) {
    if (known === 0 || x.size % known !== 0) {
      throw new RangeError(`reshape: cannot reshape ${shapeStr(x.shape)} (${x.size} values) into ${shapeStr(shapeIn)}`);
    }
    shape[infer] = x.size / known;
  }
  if (shapeSize(shape) !== x.size) {
    throw new RangeError(`reshape: cannot reshape ${shapeStr(x.shape)} (${x.size} values) into ${shapeStr(shapeIn)}`);
  }
  return makeResult('reshape', x.data, shape, [x], (g, donate) => accumulateGrad(x, g, donate));
}

/** Alias of `reshape` (tensors are always contiguous, so a view is a reshape). */
export const view = reshape;

/** Insert a size-1 dimension at `axis`. */
export function unsqueeze(x: Tensor, axis: number): Tensor {
  const a = normAxis(axis, x.ndim + 1, 'unsqueeze');
  const s = x.shape.slice();
  s.splice(a, 0, 1);
  return reshape(x, s);
}

/** Remove a size-1 dimension at `axis`. */
export function squeeze(x: Tensor, axis: number): Tensor {
  const a = normAxis(axis, x.ndim, 'squeeze');
  if (x.shape[a] !== 1) throw new RangeError(`squeeze: dimension ${axis} of ${shapeStr(x.shape)} is not 1`);
  const s = x.shape.slice();
  s.splice(a, 1);
  return reshape(x, s);
}

/** Reorder dimensions: out.shape[i] = x.shape[perm[i]] (copies into a new contiguous buffer). */
export function permute(x: Tensor, perm: readonly number[]): Tensor {
  if (perm.length !== x.ndim) throw new RangeError(`permute: perm [${perm.join(', ')}] has ${perm.length} entries for a ${x.ndim}-d tensor`);
  const p = perm.map((d) => normAxis(d, x.ndim, 'permute'));
  if (new Set(p).size !== p.length) throw new RangeError(`permute: perm [${perm.join(', ')}] repeats a dimension`);
  const shape = p.map((d) => x.shape[d]);
  const out = takeBuffer(x.size);
  K.permute(x.data, x.shape as number[], p, out);
  return makeResult('permute', out, shape, [x], (g) => {
    const inv = new Array<number>(p.length);
    for (let i = 0; i < p.length; i++) inv[p[i]] = i;
    const gx = takeBuffer(x.size);
    K.permute(g, shape, inv, gx);
    accumulateGrad(x, gx, true);
  });
}

/** Swap two dimensions. */
export function transpose(x: Tensor, d0: number, d1: number): Tensor {
  const a = normAxis(d0, x.ndim, 'transpose');
  const b = normAxis(d1, x.ndim, 'transpose');
  const perm = x.shape.map((_, i) => i);
  perm[a] = b;
  perm[b] = a;
  return permute(x, perm);
}

/** Elements start ≤ i < end along `axis` (negative indices count from the end). */
export function slice(x: Tensor, axisIn: number, startIn: number, endIn?: number): Tensor {
  const axis = normAxis(axisIn, x.ndim, 'slice');
  const len = x.shape[axis];
  const start = startIn < 0 ? startIn + len : startIn;
  const end = endIn === undefined ? len : endIn < 0 ? endIn + len : endIn;
  if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end > len || start > end) {
    throw new RangeError(`slice: range ${startIn}:${endIn ?? ''} invalid for axis ${axisIn} of size ${len}`);
  }
  const [outer, , inner] = splitAt(x.shape, axis);
  const w = (end - start) * inner;
  const shape = x.shape.slice();
  shape[axis] = end - start;
  const out = takeBuffer(outer * w);
  for (let o = 0; o < outer; o++) {
    const src = (o * len + start) * inner;
    out.set(x.data.subarray(src, src + w), o * w);
  }
  return makeResult('slice', out, shape, [x], (g) => {
    if (w === 0) return;
    const prev = existingGrad(x);
    if (prev === null) {
      // First gradient for x: copy the slice's rows in, zero only the rest.
      const { buf } = gradTarget(x);
      const rowLen = len * inner;
      for (let o = 0; o < outer; o++) {
        const base = o * rowLen, dst = base + start * inner;
        buf.fill(0, base, dst);
        buf.set(g.subarray(o * w, (o + 1) * w), dst);
        buf.fill(0, dst + w, base + rowLen);
      }
      return;
    }
    for (let o = 0; o < outer; o++) {
      const dst = (o * len + start) * inner;
      K.axpy(1, g.subarray(o * w, (o + 1) * w), prev.subarray(dst, dst + w));
    }
  });
}

/** Join tensors along `axis`; all other dimensions must agree. */
export function concat(xs: readonly Tensor[], axisIn: number): Tensor {
  if (xs.length === 0) throw new RangeError('concat: needs at least one tensor');
  const nd = xs[0].ndim;
  const axis = normAxis(axisIn, nd, 'concat');
  let total = 0;
  for (const t of xs) {
    if (t.ndim !== nd || t.shape.some((d, i) => i !== axis && d !== xs[0].shape[i])) {
      throw new RangeError(`concat: shape ${shapeStr(t.shape)} does not match ${shapeStr(xs[0].shape)} outside axis ${axisIn}`);
    }
    total += t.shape[axis];
  }
  const [outer, , inner] = splitAt(xs[0].shape, axis);
  const shape = xs[0].shape.slice();
  shape[axis] = total;
  const rowW = total * inner;
  const out = new Float32Array(outer * rowW);
  let off = 0;
  const offsets: number[] = [];
  for (const t of xs) {
    offsets.push(off);
    const w = t.shape[axis] * inner;
    for (let o = 0; o < outer; o++) out.set(t.data.subarray(o * w, (o + 1) * w), o * rowW + off);
    off += w;
  }
  return makeResult('concat', out, shape, xs, (g) => {
    xs.forEach((t, k) => {
      if (!t.requiresGrad) return;
      const w = t.shape[axis] * inner;
      const gt = new Float32Array(t.size);
      for (let o = 0; o < outer; o++) gt.set(g.subarray(o * rowW + offsets[k], o * rowW + offsets[k] + w), o * w);
      accumulateGrad(t, gt, true);
    });
  });
}

/** Stack same-shaped tensors along a new dimension `axis`. */
export function stack(xs: readonly Tensor[], axis = 0): Tensor {
  if (xs.length === 0) throw new RangeError('stack: needs at least one tensor');
  const a = normAxis(axis, xs[0].ndim + 1, 'stack');
  return concat(xs.map((t) => unsqueeze(t, a)), a);
}

/** Split `x` along `axis` into pieces of the given sizes. */
export function split(x: Tensor, sizes: readonly number[], axis: number): Tensor[] {
  const a = normAxis(axis, x.ndim, 'split');
  const total = sizes.reduce((s, v) => s + v, 0);
  if (total !== x.shape[a]) throw new RangeError(`split: sizes sum to ${total}, axis ${axis} has ${x.shape[a]}`);
  const parts: Tensor[] = [];
  let start = 0;
  for (const s of sizes) {
    parts.push(slice(x, a, start, start + s));
    start += s;
  }
  return parts;
}

function checkIds(ids: Int32Array, n: number, where: string): void {
  if (!(ids instanceof Int32Array)) throw new TypeError(`${where}: ids must be an Int32Array`);
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (id < 0 || id >= n) throw new RangeError(`${where}: id ${id} at position ${i} out of range [0, ${n})`);
  }
}

/** Pick entries `ids` along `axis` (a gather); the gradient is a scatter-add. */
export function indexSelect(x: Tensor, axisIn: number, ids: Int32Array): Tensor {
  const axis = normAxis(axisIn, x.ndim, 'indexSelect');
  const [outer, n, inner] = splitAt(x.shape, axis);
  checkIds(ids, n, 'indexSelect');
  const shape = x.shape.slice();
  shape[axis] = ids.length;
  const out = new Float32Array(outer * ids.length * inner);
  if (outer === 1 && inner > 0) K.embedding(x.data, n, inner, ids, out);
  else {
    for (let o = 0; o < outer; o++) {
      for (let j = 0; j < ids.length; j++) {
        const src = (o * n + ids[j]) * inner;
        out.set(x.data.subarray(src, src + inner), (o * ids.length + j) * inner);
      }
    }
  }
  return makeResult('indexSelect', out, shape, [x], (g) => {
    const gx = gradBuffer(x);
    if (outer === 1 && inner > 0) { K.embeddingBackward(g, ids, gx, n, inner); return; }
    for (let o = 0; o < outer; o++) {
      for (let j = 0; j < ids.length; j++) {
        const dst = (o * n + ids[j]) * inner;
        const src = (o * ids.length + j) * inner;
        for (let i = 0; i < inner; i++) gx[dst + i] += g[src + i];
      }
    }
  });
}

/**
 * out = x, then out[.., ids[j], ..] += src[.., j, ..] along `axis` (repeated
 * ids add up). Used to put MoE expert outputs back at their tokens.
 */
export function indexAdd(x: Tensor, axisIn: number, ids: Int32Array, src: Tensor): Tensor {
  const axis = normAxis(axisIn, x.ndim, 'indexAdd');
  const [outer, n, inner] = splitAt(x.shape, axis);
  checkIds(ids, n, 'indexAdd');
  const expect = x.shape.slice();
  expect[axis] = ids.length;
  if (!sameShape(expect, src.shape)) {
    throw new RangeError(`indexAdd: src shape ${shapeStr(src.shape)} should be ${shapeStr(expect)}`);
  }
  const out = x.data.slice();
  if (outer === 1 && inner > 0) K.embeddingBackward(src.data, ids, out, n, inner);
  else {
    for (let o = 0; o < outer; o++) {
      for (let j = 0; j < ids.length; j++) {
        const dst = (o * n + ids[j]) * inner;
        const s = (o * ids.length + j) * inner;
        for (let i = 0; i < inner; i++) out[dst + i] += src.data[s + i];
      }
    }
  }
  return makeResult('indexAdd', out, x.shape, [x, src], (g, donate) => {
    if (src.requiresGrad) {
      const gs = new Float32Array(src.size);
      if (outer === 1 && inner > 0) K.embedding(g, n, inner, ids, gs);
      else {
        for (let o = 0; o < outer; o++) {
          for (let j = 0; j < ids.length; j++) {
            const s = (o * n + ids[j]) * inner;
            gs.set(g.subarray(s, s + inner), (o * ids.length + j) * inner);
          }
        }
      }
      accumulateGrad(src, gs, true);
    }
    accumulateGrad(x, g, donate);
  });
}

/**
 * Per row of the last axis, the entries at `indices` ([rows × k], row-major):
 * out shape = [...x.shape[:-1], k]. Differentiable in x.
 */
export function gather(x: Tensor, indices: Int32Array, k: number): Tensor {
  const cols = x.shape[x.ndim - 1];
  const rows = x.size / cols;
  if (indices.length !== rows * k) {
    throw new RangeError(`gather: indices has ${indices.length} entries, expected rows·k = ${rows}·${k}`);
  }
  checkIds(indices, cols, 'gather');
  const out = new Float32Array(rows * k);
  for (let r = 0; r < rows; r++) for (let j = 0; j < k; j++) out[r * k + j] = x.data[r * cols + indices[r * k + j]];
  const shape = x.shape.slice(0, -1).concat([k]);
  return makeResult('gather', out, shape, [x], (g) => {
    const gx = gradBuffer(x);
    for (let r = 0; r < rows; r++) for (let j = 0; j < k; j++) gx[r * cols + indices[r * k + j]] += g[r * k + j];
  });
}

/** Top-k along the last axis (descending, ties by lower index); values are differentiable. */
export function topk(x: Tensor, k: number): { values: Tensor; indices: Int32Array } {
  const cols = x.shape[x.ndim - 1];
  if (!Number.isInteger(k) || k < 1 || k > cols) throw new RangeError(`topk: k = ${k} must be in [1, ${cols}]`);
  const rows = x.size / cols;
  const values = new Float32Array(rows * k);
  const indices = new Int32Array(rows * k);
  K.topk(x.data, rows, cols, k, values, indices);
  if (!recording([x])) return { values: new Tensor(values, x.shape.slice(0, -1).concat([k])), indices };
  return { values: gather(x, indices, k), indices };
}

// ----------------------------------------------------------- linear algebra

/**
 * Matrix product over the last two dimensions; leading (batch) dimensions
 * broadcast. a: [..., m, k], b: [..., k, n] → [..., m, n].
 */
export function matmul(a: Tensor, b: Tensor): Tensor {
  if (a.ndim < 2 || b.ndim < 2) {
    throw new RangeError(`matmul: needs at least 2-d operands, got ${shapeStr(a.shape)} and ${shapeStr(b.shape)}`);
  }
  const m = a.shape[a.ndim - 2], k = a.shape[a.ndim - 1];
  const k2 = b.shape[b.ndim - 2], n = b.shape[b.ndim - 1];
  if (k !== k2) throw new RangeError(`matmul: inner dimensions differ: ${shapeStr(a.shape)} @ ${shapeStr(b.shape)}`);

  const batchA = a.shape.slice(0, -2), batchB = b.shape.slice(0, -2);
  const batch = broadcastShapes(batchA, batchB, 'matmul');
  if (shapeSize(batchB) === 1 && sameShape(batchA, batch)) {
    // b is one matrix shared by every item: a's batch dims fold into rows, one GEMM.
    const M = shapeSize(batchA) * m;
    const shape = batch.concat([m, n]);
    const out = takeBuffer(M * n);
    // (ld ≥ 1 is required even when k = 0, where the product is all zeros)
    if (M > 0 && n > 0) K.gemm({ m: M, n, k, a: a.data, lda: Math.max(1, k), b: b.data, ldb: n, c: out, ldc: n });
    return makeResult('matmul', out, shape, [a, b], (g) => {
      if (M === 0 || n === 0 || k === 0) return;
      if (a.requiresGrad) {
        const ga = gradTarget(a);
        K.gemm({ transB: true, m: M, n: k, k: n, a: g, lda: n, b: b.data, ldb: n, c: ga.buf, ldc: k, beta: ga.accumulate ? 1 : 0 });
      }
      if (b.requiresGrad) {
        const gb = gradTarget(b);
        K.gemm({ transA: true, m: k, n, k: M, a: a.data, lda: k, b: g, ldb: n, c: gb.buf, ldc: n, beta: gb.accumulate ? 1 : 0 });
      }
    });
  }

  const nb = shapeSize(batch);
  const shape = batch.concat([m, n]);
  const out = new Float32Array(nb * m * n);
  const sA = m * k, sB = k * n, sC = m * n;
  const full = sameShape(batchA, batch) && sameShape(batchB, batch);
  // a is one matrix shared by every item of b: batched GEMM reading it with stride 0.
  const sharedA = !full && shapeSize(batchA) === 1 && sameShape(batchB, batch);
  // Offsets of batch item i in a and b under broadcasting.
  const offA = broadcastOffsets(batchA, batch, sA);
  const offB = broadcastOffsets(batchB, batch, sB);
  if (nb > 0 && m > 0 && n > 0) {
    if (full || sharedA) {
      K.gemm({ m, n, k, a: a.data, lda: Math.max(1, k), strideA: sharedA ? 0 : sA, b: b.data, ldb: n, strideB: sB, c: out, ldc: n, strideC: sC, batch: nb });
    } else {
      for (let i = 0; i < nb; i++) {
        K.gemm({ m, n, k, a: a.data, lda: Math.max(1, k), aOffset: offA[i], b: b.data, ldb: n, bOffset: offB[i], c: out, ldc: n, cOffset: i * sC });
      }
    }
  }
  return makeResult('matmul', out, shape, [a, b], (g) => {
    if (nb === 0 || m === 0 || n === 0 || k === 0) return;
    if (full) {
      if (a.requiresGrad) K.gemm({ transB: true, m, n: k, k: n, a: g, lda: n, strideA: sC, b: b.data, ldb: n, strideB: sB, c: gradBuffer(a), ldc: k, strideC: sA, batch: nb, beta: 1 });
      if (b.requiresGrad) K.gemm({ transA: true, m: k, n, k: m, a: a.data, lda: k, strideA: sA, b: g, ldb: n, strideB: sC, c: gradBuffer(b), ldc: n, strideC: sB, batch: nb, beta: 1 });
      return;
    }
    if (sharedA && b.requiresGrad) {
      K.gemm({ transA: true, m: k, n, k: m, a: a.data, lda: k, strideA: 0, b: g, ldb: n, strideB: sC, c: gradBuffer(b), ldc: n, strideC: sB, batch: nb, beta: 1 });
    }
    // Broadcast operands receive the sum over the items that shared them;
    // items run one after another so accumulation into a shared block is safe.
    const ga = a.requiresGrad ? gradBuffer(a) : null;
    const gb = b.requiresGrad && !sharedA ? gradBuffer(b) : null;
    for (let i = 0; i < nb; i++) {
      if (ga) K.gemm({ transB: true, m, n: k, k: n, a: g, lda: n, aOffset: i * sC, b: b.data, ldb: n, bOffset: offB[i], c: ga, ldc: k, cOffset: offA[i], beta: 1 });
      if (gb) K.gemm({ transA: true, m: k, n, k: m, a: a.data, lda: k, aOffset: offA[i], b: g, ldb: n, bOffset: i * sC, c: gb, ldc: n, cOffset: offB[i], beta: 1 });
    }
  });
}

/** Element offsets (in units of `block`) of each item of `full` inside a broadcast `part`. */
function broadcastOffsets(part: Shape, full: Shape, block: number): Int32Array | number[] {
  const nb = shapeSize(full);
  const offs = new Array<number>(nb);
  const nd = full.length;
  const pad = nd - part.length;
  // Row-major strides of `part` with 0 for broadcast dimensions.
  const strides = new Array<number>(nd).fill(0);
  let s = 1;
  for (let d = nd - 1; d >= pad; d--) {
    const pd = part[d - pad];
    strides[d] = pd === 1 ? 0 : s;
    s *= pd;
  }
  const idx = new Array<number>(nd).fill(0);
  for (let i = 0; i < nb; i++) {
    let o = 0;
    for (let d = 0; d < nd; d++) o += idx[d] * strides[d];
    offs[i] = o * block;
    for (let d = nd - 1; d >= 0; d--) {
      if (++idx[d] < full[d]) break;
      idx[d] = 0;
    }
  }
  return offs;
}

/**
 * Affine map over the last axis: y = x·Wᵀ + bias with weight [out, in]
 * ('out_in', nn.Linear), or y = x·W + bias with weight [in, out] ('in_out',
 * GPT-2 Conv1D). x: [..., in] → [..., out].
 */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor | null, layout: 'out_in' | 'in_out' = 'out_in'): Tensor {
  return loraLinear(x, weight, bias ?? null, layout, []);
}

/** One low-rank term of `loraLinear`: adds factor · (x·Aᵀ)·Bᵀ (+ factor · bias). */
export interface LowRankTerm {
  /** [r, in] */
  A: Tensor;
  /** [out, r] */
  B: Tensor;
  /** [out], optional */
  bias?: Tensor | null;
  factor: number;
}

/**
 * A linear layer plus low-rank (LoRA) terms in one op:
 * y = act(linear(x, weight, bias, layout) + Σ factor·((x·Aᵀ)·Bᵀ + bias_t)),
 * act the identity or `activation` (GPT-2's MLP: gelu straight on the
 * projection, its pre-activation kept privately and recycled after backward).
 * One graph node instead of five per adapter (two linears, a scale, an add),
 * no full-width intermediate, and in backward the gradient reaches x, A, B
 * and the biases straight from g: ∂B = f·gᵀ(xAᵀ), ∂(xAᵀ) = f·g·B,
 * ∂A = ∂(xAᵀ)ᵀx, ∂x = g·W(ᵀ) + Σ ∂(xAᵀ)·A. Frozen inputs get no work.
 */
export function loraLinear(
  x: Tensor, weight: Tensor, bias: Tensor | null, layout: 'out_in' | 'in_out', terms: readonly LowRankTerm[],
  activation?: UnaryOp,
): Tensor {
  if (weight.ndim !== 2) throw new RangeError(`linear: weight must be 2-d, got ${shapeStr(weight.shape)}`);
  const outIn = layout === 'out_in';
  if (!outIn && layout !== 'in_out') throw new RangeError(`linear: unknown layout '${String(layout)}'`);
  const nIn = outIn ? weight.shape[1] : weight.shape[0];
  const nOut = outIn ? weight.shape[0] : weight.shape[1];
  if (x.ndim < 1 || x.shape[x.ndim - 1] !== nIn) {
    throw new RangeError(`linear: input ${shapeStr(x.shape)} does not end in ${nIn} (weight ${shapeStr(weight.shape)}, layout ${layout})`);
  }
  if (bias && bias.size !== nOut) throw new RangeError(`linear: bias has ${bias.size} values, expected ${nOut}`);
  for (const t of terms) {
    if (t.A.ndim !== 2 || t.B.ndim !== 2 || t.A.shape[1] !== nIn || t.B.shape[0] !== nOut || t.B.shape[1] !== t.A.shape[0]) {
      throw new RangeError(`loraLinear: A ${shapeStr(t.A.shape)} and B ${shapeStr(t.B.shape)} must be [r, ${nIn}] and [${nOut}, r]`);
    }
    if (t.bias && t.bias.size !== nOut) throw new RangeError(`loraLinear: term bias has ${t.bias.size} values, expected ${nOut}`);
    if (!Number.isFinite(t.factor)) throw new RangeError(`loraLinear: factor must be finite, got ${t.factor}`);
  }
  const lead = x.shape.slice(0, -1);
  const M = shapeSize(lead);
  const shape = lead.concat([nOut]);
  const out = takeBuffer(M * nOut);
  const ldw = Math.max(1, outIn ? nIn : nOut);
  // x·Aᵀ per term: [M, r], kept for the gradients of B.
  const xa: Float32Array[] = [];
  if (M > 0 && nOut > 0) {
    K.gemm({
      transB: outIn, m: M, n: nOut, k: nIn, a: x.data, lda: Math.max(1, nIn), b: weight.data, ldb: ldw,
      c: out, ldc: nOut, ...(bias ? { bias: bias.data } : {}),
    });
    for (const t of terms) {
      const r = t.A.shape[0];
      const h = nIn > 0 && r > 0 ? takeBuffer(M * r) : new Float32Array(M * r);
      if (r === 0) { xa.push(h); continue; }
      if (nIn > 0) K.gemm({ transB: true, m: M, n: r, k: nIn, a: x.data, lda: nIn, b: t.A.data, ldb: nIn, c: h, ldc: r });
      // out += f·h·Bᵀ (+ f·bias on every row)
      K.gemm({ transB: true, m: M, n: nOut, k: r, a: h, lda: r, b: t.B.data, ldb: r, c: out, ldc: nOut, alpha: t.factor, beta: 1 });
      if (t.bias) {
        const fb = new Float32Array(nOut);
        K.scale(t.bias.data, t.factor, fb);
        K.binary('add', out, [M, nOut], fb, [nOut], out);
      }
      xa.push(h);
    }
  }
  const inputs: Tensor[] = [x, weight];
  if (bias) inputs.push(bias);
  for (const t of terms) {
    inputs.push(t.A, t.B);
    if (t.bias) inputs.push(t.bias);
  }
  // With an activation, `out` above is the pre-activation: keep it, return act(out).
  let pre: Float32Array | null = null;
  let y = out;
  if (activation !== undefined) {
    pre = out;
    y = takeBuffer(M * nOut);
    K.unary(activation, pre, y);
  }
  const op = (terms.length > 0 ? 'loraLinear' : 'linear') + (activation ? `+${activation}` : '');
  const node = makeResult(op, y, shape, inputs, (gOut) => {
    if (M === 0 || nOut === 0) return;
    let g = gOut;
    if (pre !== null) {
      g = takeBuffer(gOut.length);
      K.unaryBackward(activation!, pre, gOut, g, false);
    }
    // ∂(x·Aᵀ) per term, when x or A needs it.
    const gh: Array<Float32Array | null> = terms.map((t, i) => {
      const r = t.A.shape[0];
      if (t.B.requiresGrad) {
        const gB = gradTarget(t.B);
        K.gemm({ transA: true, m: nOut, n: r, k: M, a: g, lda: nOut, b: xa[i], ldb: Math.max(1, r), c: gB.buf, ldc: Math.max(1, r), alpha: t.factor, beta: gB.accumulate ? 1 : 0 });
      }
      if (t.bias && t.bias.requiresGrad) {
        const gb = new Float32Array(nOut);
        K.reduce('sum', g, [M, nOut], 0, gb);
        K.axpy(t.factor, gb, gradBuffer(t.bias));
      }
      if (r === 0 || nIn === 0 || (!x.requiresGrad && !t.A.requiresGrad)) return null;
      const d = takeBuffer(M * r);
      K.gemm({ m: M, n: r, k: nOut, a: g, lda: nOut, b: t.B.data, ldb: r, c: d, ldc: r, alpha: t.factor });
      if (t.A.requiresGrad) {
        const gA = gradTarget(t.A);
        K.gemm({ transA: true, m: r, n: nIn, k: M, a: d, lda: r, b: x.data, ldb: nIn, c: gA.buf, ldc: nIn, beta: gA.accumulate ? 1 : 0 });
      }
      return d;
    });
    if (x.requiresGrad && nIn > 0) {
      const gx = gradTarget(x);
      K.gemm({ transB: !outIn, m: M, n: nIn, k: nOut, a: g, lda: nOut, b: weight.data, ldb: ldw, c: gx.buf, ldc: nIn, beta: gx.accumulate ? 1 : 0 });
      terms.forEach((t, i) => {
        const d = gh[i];
        if (d) K.gemm({ m: M, n: nIn, k: t.A.shape[0], a: d, lda: t.A.shape[0], b: t.A.data, ldb: nIn, c: gx.buf, ldc: nIn, beta: 1 });
      });
    }
    if (weight.requiresGrad && nIn > 0) {
      const gw = gradTarget(weight);
      const beta = gw.accumulate ? 1 : 0;
      if (outIn) K.gemm({ transA: true, m: nOut, n: nIn, k: M, a: g, lda: nOut, b: x.data, ldb: nIn, c: gw.buf, ldc: nIn, beta });
      else K.gemm({ transA: true, m: nIn, n: nOut, k: M, a: x.data, lda: nIn, b: g, ldb: nOut, c: gw.buf, ldc: nOut, beta });
    }
    if (bias && bias.requiresGrad) {
      const gb = new Float32Array(nOut);
      K.reduce('sum', g, [M, nOut], 0, gb);
      accumulateGrad(bias, gb, true);
    }
    for (const d of gh) if (d) releaseBuffer(d);
    for (const h of xa) releaseSaved(h);
    if (pre !== null) {
      releaseBuffer(g);
      releaseSaved(pre);
    }
  });
  // Without a recorded graph the pre-activation is garbage right away.
  if (pre !== null && !node.requiresGrad) releaseBuffer(pre);
  return node;
}
