// Typed binding of catechism's native compute package (CPU and CUDA backends).
//
// Every function validates its arguments here (types, lengths against shapes,
// offsets, ids) and throws a TypeError/RangeError naming the op and argument;
// the native side then runs over raw pointers. Results go into caller-provided
// `out` buffers; all float buffers are row-major Float32Array, or DeviceArray
// (GPU memory; see src/device.ts). The wire API and the type checks are
// generated from scripts/ops.mjs (src/gen/native.ts).
//
// Additions beyond the agreed contract (documented at each function):
//   - `rope(..., inverse, rotaryDim)`: optional partial rotary dimension;
//   - `layerNorm`/`rmsNorm` accept `null` gamma/beta/weight (no affine), and
//     their backward functions accept `null` dx/dgamma/dbeta/dweight (skip);
//   - `GemmArgs.lda/ldb/ldc` default to the packed leading dimension;
//   - `setSimd(level)`: cap the ISA level (tests and benchmarks compare paths);
//   - `bestSimd()`: the best level this CPU supports.
import { DeviceArray } from './device.js';
import { check, type F32, type I32, type U8, type U16 } from './gen/native.js';
import { native } from './native.js';

export { DeviceArray, type ElemType, type HostArray } from './device.js';
export type { F32, I32, U8, U16 } from './gen/native.js';

// ---------------------------------------------------------------- validation

function typeErr(op: string, msg: string): never {
  throw new TypeError(`kernels.${op}: ${msg}`);
}
function rangeErr(op: string, msg: string): never {
  throw new RangeError(`kernels.${op}: ${msg}`);
}
/** A non-negative safe integer. */
function size(op: string, name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0)
    rangeErr(op, `${name} must be a non-negative integer, got ${String(v)}`);
  return v;
}
/** A positive safe integer. */
function posSize(op: string, name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0)
    rangeErr(op, `${name} must be a positive integer, got ${String(v)}`);
  return v;
}
function finite(op: string, name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) rangeErr(op, `${name} must be a finite number, got ${String(v)}`);
  return v;
}
function len(op: string, name: string, a: { length: number }, want: number): void {
  if (a.length !== want) rangeErr(op, `${name} has length ${a.length}, expected ${want}`);
}
function lenOpt(op: string, name: string, a: { length: number } | null | undefined, want: number): void {
  if (a != null && a.length !== want) rangeErr(op, `${name} has length ${a.length}, expected ${want}`);
}
function shapeSize(op: string, name: string, shape: unknown): number {
  if (!Array.isArray(shape)) typeErr(op, `${name} must be an array of dimension sizes`);
  let n = 1;
  for (let i = 0; i < shape.length; i++) n *= size(op, `${name}[${i}]`, shape[i]);
  return n;
}

// ---------------------------------------------------------------- GEMM

export interface GemmArgs {
  transA?: boolean; transB?: boolean; // op(A) is m×k, op(B) is k×n
  m: number; n: number; k: number;
  /** lda/ldb/ldc default to the packed row length (k or m for A, n or k for B, n for C). */
  a: F32; lda: number; aOffset?: number; strideA?: number; // stride between batch items
  b: F32; ldb: number; bOffset?: number; strideB?: number;
  c: F32; ldc: number; cOffset?: number; strideC?: number;
  batch?: number; // default 1
  alpha?: number; beta?: number; // C = alpha*op(A)·op(B) + beta*C (defaults 1, 0; beta=0 ignores NaNs in C)
  bias?: F32; // optional length-n vector added to every row of C
}

const gemmParams = new Float64Array(17);

function overlaps(x: F32, y: F32): boolean {
  // device memory is never shared between two DeviceArrays
  if (!(x instanceof Float32Array) || !(y instanceof Float32Array)) return x === y;
  if (x.buffer !== y.buffer) return false;
  return x.byteOffset < y.byteOffset + y.byteLength && y.byteOffset < x.byteOffset + x.byteLength;
}

/** Last index (+1) a batched strided operand touches: rows×cols stored with leading dimension ld. */
function extent(op: string, name: string, off: number, stride: number, batch: number, rows: number, cols: number, ld: number, have: number): void {
  if (rows === 0 || cols === 0) return;
  if (ld < cols) rangeErr(op, `ld${name.toLowerCase()} = ${ld} is smaller than the row length ${cols} of ${name}`);
  const end = off + (batch - 1) * stride + (rows - 1) * ld + cols;
  if (end > have)
    rangeErr(op, `${name} is too short: needs ${end} elements (offset ${off}, batch ${batch}, stride ${stride}, ${rows}×${cols}, ld ${ld}) but has ${have}`);
}

/** C = alpha·op(A)·op(B) + beta·C (+ bias on every row), for `batch` strided items. */
export function gemm(args: GemmArgs): void {
  const op = 'gemm';
  if (args === null || typeof args !== 'object') typeErr(op, 'expects an argument object');
  const { a, b, c, bias } = args;
  check.gemm(a, b, c, bias);
  const transA = !!args.transA, transB = !!args.transB;
  const m = size(op, 'm', args.m), n = size(op, 'n', args.n), k = size(op, 'k', args.k);
  const batch = args.batch === undefined ? 1 : size(op, 'batch', args.batch);
  const lda = args.lda === undefined ? (transA ? m : k) : size(op, 'lda', args.lda);
  const ldb = args.ldb === undefined ? (transB ? k : n) : size(op, 'ldb', args.ldb);
  const ldc = args.ldc === undefined ? n : size(op, 'ldc', args.ldc);
  const aOff = args.aOffset === undefined ? 0 : size(op, 'aOffset', args.aOffset);
  const bOff = args.bOffset === undefined ? 0 : size(op, 'bOffset', args.bOffset);
  const cOff = args.cOffset === undefined ? 0 : size(op, 'cOffset', args.cOffset);
  const sA = args.strideA === undefined ? 0 : size(op, 'strideA', args.strideA);
  const sB = args.strideB === undefined ? 0 : size(op, 'strideB', args.strideB);
  const sC = args.strideC === undefined ? m * ldc : size(op, 'strideC', args.strideC);
  const alpha = args.alpha === undefined ? 1 : finite(op, 'alpha', args.alpha);
  const beta = args.beta === undefined ? 0 : finite(op, 'beta', args.beta);
  if (bias != null) len(op, 'bias', bias, n);
  if (batch === 0 || m === 0 || n === 0) return;
  if (batch > 1 && args.strideA === undefined && k > 0) rangeErr(op, 'strideA is required when batch > 1 (use 0 to share A)');
  if (batch > 1 && args.strideB === undefined && k > 0) rangeErr(op, 'strideB is required when batch > 1 (use 0 to share B)');
  // Items of C are either stacked (each after the previous one's last row) or
  // side by side within each row (column blocks of one wider matrix, e.g.
  // attention heads written straight into [T, heads·D]); anything else overlaps.
  const stacked = sC >= (m - 1) * ldc + n;
  const sideBySide = m > 0 && sC >= n && (batch - 1) * sC + n <= ldc;
  if (batch > 1 && !stacked && !sideBySide) rangeErr(op, `strideC = ${sC} makes the batch items of C overlap`);
  if (k > 0) {
    extent(op, 'A', aOff, sA, batch, transA ? k : m, transA ? m : k, lda, a.length);
    extent(op, 'B', bOff, sB, batch, transB ? n : k, transB ? k : n, ldb, b.length);
    if (overlaps(c, a) || overlaps(c, b)) rangeErr(op, 'c must not share memory with a or b');
  }
  extent(op, 'C', cOff, sC, batch, m, n, ldc, c.length);
  const p = gemmParams;
  p[0] = transA ? 1 : 0; p[1] = transB ? 1 : 0;
  p[2] = m; p[3] = n; p[4] = k;
  p[5] = lda; p[6] = ldb; p[7] = ldc;
  p[8] = aOff; p[9] = bOff; p[10] = cOff;
  p[11] = sA; p[12] = sB; p[13] = sC;
  p[14] = batch; p[15] = alpha; p[16] = beta;
  native.gemm(a, b, c, bias ?? null, p);
}

// ---------------------------------------------------------------- float64 linear algebra (CPU)
//
// Dense float64 on the host only (Float64Array; never a DeviceArray, never
// staged to a GPU whatever setBackend says): the least-squares solves of
// ROME, MEMIT and AlphaEdit against their key statistics. Row-major, in the
// caller's buffers, multithreaded over the same pool as the float32 ops.

export interface GemmF64Args {
  transA?: boolean; transB?: boolean; // op(A) is m×k, op(B) is k×n
  m: number; n: number; k: number;
  /** lda/ldb/ldc default to the packed row length; pass a subarray to start elsewhere. */
  a: Float64Array; lda?: number;
  b: Float64Array; ldb?: number;
  c: Float64Array; ldc?: number;
  alpha?: number; beta?: number; // C = alpha·op(A)·op(B) + beta·C (defaults 1, 0; beta = 0 ignores NaNs in C)
}

const f64Params = new Float64Array(10);

function f64Array(op: string, name: string, x: unknown): Float64Array {
  if (!(x instanceof Float64Array)) typeErr(op, `${name} must be a Float64Array (float64 linear algebra runs on the CPU only)`);
  return x;
}
function overlaps64(x: Float64Array, y: Float64Array): boolean {
  return x.buffer === y.buffer && x.byteOffset < y.byteOffset + y.byteLength && y.byteOffset < x.byteOffset + x.byteLength;
}

/** C = alpha·op(A)·op(B) + beta·C in float64. */
export function gemmF64(args: GemmF64Args): void {
  const op = 'gemmF64';
  if (args === null || typeof args !== 'object') typeErr(op, 'expects an argument object');
  const a = f64Array(op, 'a', args.a), b = f64Array(op, 'b', args.b), c = f64Array(op, 'c', args.c);
  const transA = !!args.transA, transB = !!args.transB;
  const m = size(op, 'm', args.m), n = size(op, 'n', args.n), k = size(op, 'k', args.k);
  const lda = args.lda === undefined ? (transA ? m : k) : size(op, 'lda', args.lda);
  const ldb = args.ldb === undefined ? (transB ? k : n) : size(op, 'ldb', args.ldb);
  const ldc = args.ldc === undefined ? n : size(op, 'ldc', args.ldc);
  const alpha = args.alpha === undefined ? 1 : finite(op, 'alpha', args.alpha);
  const beta = args.beta === undefined ? 0 : finite(op, 'beta', args.beta);
  if (m === 0 || n === 0) return;
  if (k > 0) {
    extent(op, 'A', 0, 0, 1, transA ? k : m, transA ? m : k, lda, a.length);
    extent(op, 'B', 0, 0, 1, transB ? n : k, transB ? k : n, ldb, b.length);
    if (overlaps64(c, a) || overlaps64(c, b)) rangeErr(op, 'c must not share memory with a or b');
  }
  extent(op, 'C', 0, 0, 1, m, n, ldc, c.length);
  const p = f64Params;
  p[0] = m; p[1] = n; p[2] = k; p[3] = alpha;
  p[4] = transA ? 1 : lda; p[5] = transA ? lda : 1; // A[i][p] at i·p[4] + p·p[5]
  p[6] = transB ? 1 : ldb; p[7] = transB ? ldb : 1;
  p[8] = beta; p[9] = ldc;
  native.gemmF64(a, b, c, p);
}

/**
 * The lower triangle of C = alpha·op(A)·op(A)ᵀ + beta·C in float64, op(A)
 * n×k (transA: A is stored k×n). The strict upper triangle of C is left as it was.
 */
export function syrkLowerF64(args: { n: number; k: number; a: Float64Array; lda?: number; transA?: boolean; c: Float64Array; ldc?: number; alpha?: number; beta?: number }): void {
  const op = 'syrkLowerF64';
  if (args === null || typeof args !== 'object') typeErr(op, 'expects an argument object');
  const a = f64Array(op, 'a', args.a), c = f64Array(op, 'c', args.c);
  const transA = !!args.transA;
  const n = size(op, 'n', args.n), k = size(op, 'k', args.k);
  const lda = args.lda === undefined ? (transA ? n : k) : size(op, 'lda', args.lda);
  const ldc = args.ldc === undefined ? n : size(op, 'ldc', args.ldc);
  const alpha = args.alpha === undefined ? 1 : finite(op, 'alpha', args.alpha);
  const beta = args.beta === undefined ? 0 : finite(op, 'beta', args.beta);
  if (n === 0) return;
  if (k > 0) {
    extent(op, 'A', 0, 0, 1, transA ? k : n, transA ? n : k, lda, a.length);
    if (overlaps64(c, a)) rangeErr(op, 'c must not share memory with a');
  }
  extent(op, 'C', 0, 0, 1, n, n, ldc, c.length);
  native.syrkLowerF64(a, c, Float64Array.of(n, k, alpha, transA ? 1 : lda, transA ? lda : 1, beta, ldc));
}

/**
 * In-place lower Cholesky factor of the symmetric positive definite n×n
 * matrix `a` (row-major; only its lower triangle is read): afterwards
 * a = L with zeros above the diagonal, A = L·Lᵀ. Returns -1, or the first row
 * whose pivot was not positive (a then holds a partial factor).
 */
export function choleskyF64(a: Float64Array, n: number): number {
  const op = 'choleskyF64';
  f64Array(op, 'a', a);
  size(op, 'n', n);
  len(op, 'a', a, n * n);
  return native.choleskyF64(a, n);
}

/** The rows of `b` solved against the lower triangular n×n `l` (both Float64Array, apart). */
function solveRows(op: string, l: Float64Array, n: number, b: Float64Array, m: number, mode: 0 | 1 | 2): void {
  f64Array(op, 'l', l);
  f64Array(op, 'b', b);
  size(op, 'n', n);
  size(op, 'm', m);
  len(op, 'l', l, n * n);
  len(op, 'b', b, m * n);
  if (overlaps64(l, b)) rangeErr(op, 'b must not share memory with l');
  native.solveRowsF64(l, n, b, m, mode);
}

/**
 * Every row b of `b` (m rows of n) replaced by the x with x·Lᵀ = b
 * (`transposed`) or x·L = b, L lower triangular n×n (e.g. from choleskyF64):
 * b ← b·L⁻ᵀ or b·L⁻¹. Only L's lower triangle is read.
 */
export function triSolveRowsF64(l: Float64Array, n: number, b: Float64Array, m: number, transposed: boolean): void {
  solveRows('triSolveRowsF64', l, n, b, m, transposed ? 1 : 2);
}

/** Every row b of `b` (m rows of n) replaced by x with (L·Lᵀ)·x = b, L from choleskyF64. */
export function cholSolveRowsF64(l: Float64Array, n: number, b: Float64Array, m: number): void {
  solveRows('cholSolveRowsF64', l, n, b, m, 0);
}

// ---------------------------------------------------------------- elementwise

export type UnaryOp = 'neg' | 'exp' | 'log' | 'sqrt' | 'rsqrt' | 'tanh' | 'sigmoid' | 'relu' | 'gelu' | 'silu' | 'square' | 'abs';
const UNARY: Record<string, number> = {
  neg: 0, exp: 1, log: 2, sqrt: 3, rsqrt: 4, tanh: 5, sigmoid: 6, relu: 7, gelu: 8, silu: 9, square: 10, abs: 11,
};
function unaryCode(op: string, name: unknown): number {
  const c = typeof name === 'string' && Object.hasOwn(UNARY, name) ? UNARY[name] : undefined;
  if (c === undefined) typeErr(op, `unknown unary op ${JSON.stringify(name)} (expected one of ${Object.keys(UNARY).join(', ')})`);
  return c;
}

/** out = f(x) elementwise. gelu is the tanh approximation (GPT-2's gelu_new); silu = x·sigmoid(x). */
export function unary(op: UnaryOp, x: F32, out: F32): void {
  const code = unaryCode('unary', op);
  check.unary(x, out);
  len('unary', 'x', x, out.length);
  native.unary(code, x, out);
}

/** gradIn (+)= f'(x)·gradOut. */
export function unaryBackward(op: UnaryOp, x: F32, gradOut: F32, gradIn: F32, accumulate = false): void {
  const code = unaryCode('unaryBackward', op);
  check.unaryBackward(x, gradOut, gradIn);
  len('unaryBackward', 'x', x, gradIn.length);
  len('unaryBackward', 'gradOut', gradOut, gradIn.length);
  native.unaryBackward(code, x, gradOut, gradIn, !!accumulate);
}

export type BinaryOp = 'add' | 'sub' | 'mul' | 'div' | 'max' | 'min';
const BINARY: Record<string, number> = { add: 0, sub: 1, mul: 2, div: 3, max: 4, min: 5 };
const MAX_DIMS = 16;
const bcastDesc = new Float64Array(1 + 3 * MAX_DIMS);

/** Broadcast shape of two shapes (numpy rules); throws when incompatible. */
export function broadcastShape(aShape: readonly number[], bShape: readonly number[]): number[] {
  const nd = Math.max(aShape.length, bShape.length);
  const out = new Array<number>(nd);
  for (let i = 0; i < nd; i++) {
    const da = i < nd - aShape.length ? 1 : aShape[i - (nd - aShape.length)];
    const db = i < nd - bShape.length ? 1 : bShape[i - (nd - bShape.length)];
    if (da !== db && da !== 1 && db !== 1)
      rangeErr('binary', `shapes [${aShape.join(', ')}] and [${bShape.join(', ')}] do not broadcast (dim ${i}: ${da} vs ${db})`);
    out[i] = da === 1 ? db : da;
  }
  return out;
}

/** out = a ∘ b with numpy broadcasting; out has the broadcast shape. */
export function binary(op: BinaryOp, a: F32, aShape: number[], b: F32, bShape: number[], out: F32): void {
  const code = typeof op === 'string' && Object.hasOwn(BINARY, op) ? BINARY[op] : undefined;
  if (code === undefined) typeErr('binary', `unknown binary op ${JSON.stringify(op)} (expected one of ${Object.keys(BINARY).join(', ')})`);
  check.binarySame(a, b, out);
  len('binary', 'a', a, shapeSize('binary', 'aShape', aShape));
  len('binary', 'b', b, shapeSize('binary', 'bShape', bShape));
  // Fast path: identical shapes.
  let same = aShape.length === bShape.length;
  for (let i = 0; same && i < aShape.length; i++) same = aShape[i] === bShape[i];
  if (same) {
    len('binary', 'out', out, a.length);
    native.binarySame(code, a, b, out);
    return;
  }
  const shape = broadcastShape(aShape, bShape);
  let total = 1;
  for (const d of shape) total *= d;
  len('binary', 'out', out, total);
  if (total === 0) return;
  // Element strides (0 on broadcast dims), dropping size-1 dims and merging
  // dims that are contiguous in both inputs, to keep the inner loop long.
  const nd = shape.length;
  const sa = new Array<number>(nd), sb = new Array<number>(nd);
  let ra = 1, rb = 1;
  for (let i = nd - 1; i >= 0; i--) {
    const da = i < nd - aShape.length ? 1 : aShape[i - (nd - aShape.length)];
    const db = i < nd - bShape.length ? 1 : bShape[i - (nd - bShape.length)];
    sa[i] = da === 1 ? 0 : ra;
    sb[i] = db === 1 ? 0 : rb;
    ra *= da;
    rb *= db;
  }
  const cs: number[] = [], ca: number[] = [], cb: number[] = [];
  for (let i = 0; i < nd; i++) {
    if (shape[i] === 1) continue;
    const last = cs.length - 1;
    if (last >= 0 && ca[last] === sa[i] * shape[i] && cb[last] === sb[i] * shape[i]) {
      cs[last] *= shape[i];
      ca[last] = sa[i];
      cb[last] = sb[i];
    } else {
      cs.push(shape[i]);
      ca.push(sa[i]);
      cb.push(sb[i]);
    }
  }
  const m = cs.length;
  if (m > MAX_DIMS) rangeErr('binary', `at most ${MAX_DIMS} non-mergeable dimensions are supported, got ${m}`);
  const d = bcastDesc;
  d[0] = m;
  for (let i = 0; i < m; i++) {
    d[1 + i] = cs[i];
    d[1 + m + i] = ca[i];
    d[1 + 2 * m + i] = cb[i];
  }
  native.binaryBcast(code, a, b, out, d);
}

/** out = alpha·x. */
export function scale(x: F32, alpha: number, out: F32): void {
  check.scale(x, out);
  if (typeof alpha !== 'number') typeErr('scale', 'alpha must be a number');
  len('scale', 'x', x, out.length);
  native.scale(x, alpha, out);
}

/** y += alpha·x. */
export function axpy(alpha: number, x: F32, y: F32): void {
  check.axpy(x, y);
  if (typeof alpha !== 'number') typeErr('axpy', 'alpha must be a number');
  len('axpy', 'x', x, y.length);
  native.axpy(alpha, x, y);
}

export function fill(x: F32, value: number): void {
  check.fill(x);
  if (typeof value !== 'number') typeErr('fill', 'value must be a number');
  native.fill(x, value);
}

// ---------------------------------------------------------------- reductions, layout

export type ReduceOp = 'sum' | 'mean' | 'max' | 'min';
const REDUCE: Record<string, number> = { sum: 0, mean: 1, max: 2, min: 3 };

/** Reduces `axis` of x (shape `shape`); out has the shape with that axis removed. Negative axes count from the end. */
export function reduce(op: ReduceOp, x: F32, shape: number[], axis: number, out: F32): void {
  const code = typeof op === 'string' && Object.hasOwn(REDUCE, op) ? REDUCE[op] : undefined;
  if (code === undefined) typeErr('reduce', `unknown reduce op ${JSON.stringify(op)} (expected one of ${Object.keys(REDUCE).join(', ')})`);
  check.reduce(x, out);
  const total = shapeSize('reduce', 'shape', shape);
  len('reduce', 'x', x, total);
  const nd = shape.length;
  if (!Number.isInteger(axis) || axis < -nd || axis >= nd) rangeErr('reduce', `axis ${axis} is out of range for a ${nd}-d shape`);
  const ax = axis < 0 ? axis + nd : axis;
  let outer = 1, inner = 1;
  for (let i = 0; i < ax; i++) outer *= shape[i];
  for (let i = ax + 1; i < nd; i++) inner *= shape[i];
  const n = shape[ax];
  len('reduce', 'out', out, outer * inner);
  if (n === 0 && (op === 'max' || op === 'min') && outer * inner > 0) rangeErr('reduce', `${op} over an empty axis`);
  if (outer * inner === 0) return;
  native.reduce(code, x, out, outer, n, inner);
}

const permDesc = new Float64Array(1 + 2 * MAX_DIMS);

/** out = x transposed by `perm`: out shape = perm.map(i => shape[i]). */
export function permute(x: F32, shape: number[], perm: number[], out: F32): void {
  check.permute(x, out);
  const total = shapeSize('permute', 'shape', shape);
  len('permute', 'x', x, total);
  len('permute', 'out', out, total);
  const nd = shape.length;
  if (!Array.isArray(perm) || perm.length !== nd) rangeErr('permute', `perm must list ${nd} axes`);
  if (nd > MAX_DIMS) rangeErr('permute', `at most ${MAX_DIMS} dimensions are supported`);
  const seen = new Uint8Array(nd);
  for (const p of perm) {
    if (!Number.isInteger(p) || p < 0 || p >= nd || seen[p]) rangeErr('permute', `perm [${perm.join(', ')}] is not a permutation of 0..${nd - 1}`);
    seen[p] = 1;
  }
  if (total === 0) return;
  if (overlaps(x, out)) rangeErr('permute', 'out must not share memory with x');
  const strides = new Array<number>(nd);
  let s = 1;
  for (let i = nd - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i];
  }
  const d = permDesc;
  d[0] = nd;
  for (let i = 0; i < nd; i++) {
    d[1 + i] = shape[perm[i]];
    d[1 + nd + i] = strides[perm[i]];
  }
  native.permute(x, out, d);
}

// ---------------------------------------------------------------- softmax family

export interface SoftmaxMask {
  causal?: boolean; // rows come in blocks of `queryLen`; query row r of a block (0-based) sees key j iff j <= r + (cols - queryLen)
  queryLen?: number; // required when causal
  keyPad?: U8; // [numBatches × cols], 1 = real token, 0 = padding (masked); batch of row i = floor(i / rowsPerBatch)
  rowsPerBatch?: number; // required with keyPad (e.g. heads × queryLen)
}

function rowsCols(op: string, rows: number, cols: number): void {
  size(op, 'rows', rows);
  size(op, 'cols', cols);
}

/** Row softmax with optional causal/padding masks; masked entries are 0 and a fully masked row is all zeros. */
export function softmax(x: F32, out: F32, rows: number, cols: number, mask?: SoftmaxMask): void {
  const op = 'softmax';
  check.softmax(x, out, mask?.keyPad);
  rowsCols(op, rows, cols);
  len(op, 'x', x, rows * cols);
  len(op, 'out', out, rows * cols);
  let causal = false, queryLen = 0, rowsPerBatch = 0;
  let keyPad: U8 | null = null;
  if (mask != null) {
    if (mask.causal) {
      causal = true;
      queryLen = posSize(op, 'mask.queryLen', mask.queryLen);
      if (rows % queryLen !== 0) rangeErr(op, `rows (${rows}) is not a multiple of mask.queryLen (${queryLen})`);
    }
    if (mask.keyPad != null) {
      keyPad = mask.keyPad;
      rowsPerBatch = posSize(op, 'mask.rowsPerBatch', mask.rowsPerBatch);
      if (rows % rowsPerBatch !== 0) rangeErr(op, `rows (${rows}) is not a multiple of mask.rowsPerBatch (${rowsPerBatch})`);
      len(op, 'mask.keyPad', keyPad, (rows / rowsPerBatch) * cols);
    }
  }
  if (rows * cols === 0) return;
  native.softmax(x, out, rows, cols, causal, queryLen, keyPad, rowsPerBatch);
}

/** dx (+)= y ⊙ (dy − Σ_j dy_j y_j) per row, y = softmax output. dx may be dy (in place, without accumulate). */
export function softmaxBackward(y: F32, dy: F32, dx: F32, rows: number, cols: number, accumulate = false): void {
  const op = 'softmaxBackward';
  check.softmaxBackward(y, dy, dx);
  rowsCols(op, rows, cols);
  len(op, 'y', y, rows * cols);
  len(op, 'dy', dy, rows * cols);
  len(op, 'dx', dx, rows * cols);
  native.softmaxBackward(y, dy, dx, rows, cols, !!accumulate);
}

export function logSoftmax(x: F32, out: F32, rows: number, cols: number): void {
  const op = 'logSoftmax';
  check.logSoftmax(x, out);
  rowsCols(op, rows, cols);
  len(op, 'x', x, rows * cols);
  len(op, 'out', out, rows * cols);
  native.logSoftmax(x, out, rows, cols);
}

// ---------------------------------------------------------------- norms

/** out = (x − mean)·rstd·gamma + beta per row; rstd = 1/sqrt(var + eps) (biased variance). gamma/beta may be null. */
export function layerNorm(
  x: F32, gamma: F32 | null, beta: F32 | null, out: F32,
  rows: number, cols: number, eps: number, mean: F32, rstd: F32,
): void {
  const op = 'layerNorm';
  check.layerNorm(x, gamma, beta, out, mean, rstd);
  rowsCols(op, rows, cols);
  if (cols === 0 && rows > 0) rangeErr(op, 'cols must be positive');
  finite(op, 'eps', eps);
  if (eps < 0) rangeErr(op, 'eps must be >= 0');
  len(op, 'x', x, rows * cols);
  len(op, 'out', out, rows * cols);
  lenOpt(op, 'gamma', gamma, cols);
  lenOpt(op, 'beta', beta, cols);
  len(op, 'mean', mean, rows);
  len(op, 'rstd', rstd, rows);
  native.layerNorm(x, gamma ?? null, beta ?? null, out, rows, cols, eps, mean, rstd);
}

/** dx written (if non-null); dgamma, dbeta ACCUMULATED (each may be null). */
export function layerNormBackward(
  x: F32, gamma: F32 | null, mean: F32, rstd: F32, dy: F32,
  dx: F32 | null, dgamma: F32 | null, dbeta: F32 | null, rows: number, cols: number,
): void {
  const op = 'layerNormBackward';
  check.layerNormBackward(x, gamma, mean, rstd, dy, dx, dgamma, dbeta);
  rowsCols(op, rows, cols);
  len(op, 'x', x, rows * cols);
  len(op, 'dy', dy, rows * cols);
  lenOpt(op, 'dx', dx, rows * cols);
  lenOpt(op, 'gamma', gamma, cols);
  lenOpt(op, 'dgamma', dgamma, cols);
  lenOpt(op, 'dbeta', dbeta, cols);
  len(op, 'mean', mean, rows);
  len(op, 'rstd', rstd, rows);
  if (rows * cols === 0) return;
  native.layerNormBackward(x, gamma ?? null, mean, rstd, dy, dx ?? null, dgamma ?? null, dbeta ?? null, rows, cols);
}

/** out = x·rstd·weight per row; rstd = 1/sqrt(mean(x²) + eps). weight may be null. */
export function rmsNorm(
  x: F32, weight: F32 | null, out: F32, rows: number, cols: number, eps: number, rstd: F32,
): void {
  const op = 'rmsNorm';
  check.rmsNorm(x, weight, out, rstd);
  rowsCols(op, rows, cols);
  if (cols === 0 && rows > 0) rangeErr(op, 'cols must be positive');
  finite(op, 'eps', eps);
  if (eps < 0) rangeErr(op, 'eps must be >= 0');
  len(op, 'x', x, rows * cols);
  len(op, 'out', out, rows * cols);
  lenOpt(op, 'weight', weight, cols);
  len(op, 'rstd', rstd, rows);
  native.rmsNorm(x, weight ?? null, out, rows, cols, eps, rstd);
}

/** dx written (if non-null); dweight ACCUMULATED (may be null). */
export function rmsNormBackward(
  x: F32, weight: F32 | null, rstd: F32, dy: F32,
  dx: F32 | null, dweight: F32 | null, rows: number, cols: number,
): void {
  const op = 'rmsNormBackward';
  check.rmsNormBackward(x, weight, rstd, dy, dx, dweight);
  rowsCols(op, rows, cols);
  len(op, 'x', x, rows * cols);
  len(op, 'dy', dy, rows * cols);
  lenOpt(op, 'dx', dx, rows * cols);
  lenOpt(op, 'weight', weight, cols);
  lenOpt(op, 'dweight', dweight, cols);
  len(op, 'rstd', rstd, rows);
  if (rows * cols === 0) return;
  native.rmsNormBackward(x, weight ?? null, rstd, dy, dx ?? null, dweight ?? null, rows, cols);
}

// ---------------------------------------------------------------- rotary, embedding

/**
 * Rotary embedding, Hugging Face Llama convention (rotate_half: dim i pairs with
 * i + rotaryDim/2). x: [batch, heads, seq, headDim]; positions: [batch × seq].
 * inverse=true applies the inverse rotation (= the backward pass). Addition:
 * `rotaryDim` (default headDim, even) rotates only the first rotaryDim dims of
 * each head and copies the rest.
 */
export function rope(
  x: F32, out: F32, batch: number, heads: number, seq: number, headDim: number,
  positions: I32, theta: number, inverse = false, rotaryDim?: number,
): void {
  const op = 'rope';
  check.rope(x, out, positions);
  size(op, 'batch', batch);
  size(op, 'heads', heads);
  size(op, 'seq', seq);
  size(op, 'headDim', headDim);
  const rot = rotaryDim === undefined ? headDim : size(op, 'rotaryDim', rotaryDim);
  if (rot % 2 !== 0 || rot > headDim) rangeErr(op, `rotaryDim (${rot}) must be even and at most headDim (${headDim})`);
  finite(op, 'theta', theta);
  if (theta <= 0) rangeErr(op, 'theta must be positive');
  const n = batch * heads * seq * headDim;
  len(op, 'x', x, n);
  len(op, 'out', out, n);
  len(op, 'positions', positions, batch * seq);
  if (n === 0) return;
  native.rope(x, out, batch, heads, seq, headDim, rot, positions, theta, !!inverse);
}

function checkIds(op: string, name: string, idsArg: I32, limit: number, ignore?: number): void {
  // device ids are copied to the host to be checked: out-of-range ids must never reach a kernel
  const ids: Int32Array = idsArg instanceof Int32Array ? idsArg : (idsArg as DeviceArray<'i32'>).toHost();
  for (let i = 0; i < ids.length; i++) {
    const t = ids[i];
    if ((t < 0 || t >= limit) && t !== ignore) rangeErr(op, `${name}[${i}] = ${t} is out of range [0, ${limit})`);
  }
}

/** out[t] = table[ids[t]] (table: [vocab, dim], out: [ids.length, dim]). */
export function embedding(table: F32, vocab: number, dim: number, ids: I32, out: F32): void {
  const op = 'embedding';
  check.embedding(table, ids, out);
  size(op, 'vocab', vocab);
  size(op, 'dim', dim);
  len(op, 'table', table, vocab * dim);
  len(op, 'out', out, ids.length * dim);
  checkIds(op, 'ids', ids, vocab);
  if (out.length === 0) return;
  native.embedding(table, dim, ids, out);
}

/** gradTable[ids[t]] += gradOut[t] (scatter-add; repeated ids add up). */
export function embeddingBackward(gradOut: F32, ids: I32, gradTable: F32, vocab: number, dim: number): void {
  const op = 'embeddingBackward';
  check.embeddingBackward(gradOut, ids, gradTable);
  size(op, 'vocab', vocab);
  size(op, 'dim', dim);
  len(op, 'gradTable', gradTable, vocab * dim);
  len(op, 'gradOut', gradOut, ids.length * dim);
  checkIds(op, 'ids', ids, vocab);
  if (gradOut.length === 0) return;
  native.embeddingBackward(gradOut, ids, gradTable, dim);
}

// ---------------------------------------------------------------- losses

/**
 * Fused log-softmax + NLL per row: losses[i] = logsumexp(logits_i) − logits_i[target_i].
 * Rows whose target === ignoreIndex (default −100) get loss 0 and zero gradient.
 * gradLogits (if given) = softmax(logits) − onehot(target), unscaled.
 */
export function crossEntropy(
  logits: F32, targets: I32, rows: number, vocab: number, losses: F32,
  gradLogits?: F32 | null, ignoreIndex = -100,
): void {
  const op = 'crossEntropy';
  check.crossEntropy(logits, targets, losses, gradLogits);
  size(op, 'rows', rows);
  posSize(op, 'vocab', vocab);
  if (!Number.isInteger(ignoreIndex)) rangeErr(op, 'ignoreIndex must be an integer');
  len(op, 'logits', logits, rows * vocab);
  len(op, 'targets', targets, rows);
  len(op, 'losses', losses, rows);
  lenOpt(op, 'gradLogits', gradLogits, rows * vocab);
  checkIds(op, 'targets', targets, vocab, ignoreIndex);
  if (rows === 0) return;
  native.crossEntropy(logits, targets, rows, vocab, losses, gradLogits ?? null, ignoreIndex);
}

/** out[i] = KL(P‖Q) with P = softmax(pLogits_i) (teacher), Q = softmax(qLogits_i); gradQ (if given) = Q − P, unscaled. */
export function klDiv(pLogits: F32, qLogits: F32, rows: number, vocab: number, out: F32, gradQ?: F32 | null): void {
  const op = 'klDiv';
  check.klDiv(pLogits, qLogits, out, gradQ);
  size(op, 'rows', rows);
  posSize(op, 'vocab', vocab);
  len(op, 'pLogits', pLogits, rows * vocab);
  len(op, 'qLogits', qLogits, rows * vocab);
  len(op, 'out', out, rows);
  lenOpt(op, 'gradQ', gradQ, rows * vocab);
  if (rows === 0) return;
  native.klDiv(pLogits, qLogits, rows, vocab, out, gradQ ?? null);
}

// ---------------------------------------------------------------- selection, optimiser

/** Per row: the k largest values, descending, ties by lower index (NaN counts as largest). */
export function topk(x: F32, rows: number, cols: number, k: number, values: F32, indices: I32): void {
  const op = 'topk';
  check.topk(x, values, indices);
  rowsCols(op, rows, cols);
  size(op, 'k', k);
  if (k > cols) rangeErr(op, `k (${k}) is larger than cols (${cols})`);
  len(op, 'x', x, rows * cols);
  len(op, 'values', values, rows * k);
  len(op, 'indices', indices, rows * k);
  if (rows * k === 0) return;
  native.topk(x, rows, cols, k, values, indices);
}

/** One AdamW step in place (decoupled weight decay; step is 1-based; bias-corrected), torch.optim.AdamW arithmetic. */
export function adamw(
  param: F32, grad: F32, m: F32, v: F32,
  o: { lr: number; beta1: number; beta2: number; eps: number; weightDecay: number; step: number },
): void {
  const op = 'adamw';
  check.adamw(param, grad, m, v);
  if (o === null || typeof o !== 'object') typeErr(op, 'options object required');
  finite(op, 'lr', o.lr);
  finite(op, 'beta1', o.beta1);
  finite(op, 'beta2', o.beta2);
  finite(op, 'eps', o.eps);
  finite(op, 'weightDecay', o.weightDecay);
  posSize(op, 'step', o.step);
  if (o.beta1 < 0 || o.beta1 >= 1) rangeErr(op, `beta1 must be in [0, 1), got ${o.beta1}`);
  if (o.beta2 < 0 || o.beta2 >= 1) rangeErr(op, `beta2 must be in [0, 1), got ${o.beta2}`);
  len(op, 'grad', grad, param.length);
  len(op, 'm', m, param.length);
  len(op, 'v', v, param.length);
  native.adamw(param, grad, m, v, o.lr, o.beta1, o.beta2, o.eps, o.weightDecay, o.step);
}

// ---------------------------------------------------------------- conversions

export function f16ToF32(src: U16, out: F32): void {
  check.f16ToF32(src, out);
  len('f16ToF32', 'out', out, src.length);
  native.f16ToF32(src, out);
}
export function bf16ToF32(src: U16, out: F32): void {
  check.bf16ToF32(src, out);
  len('bf16ToF32', 'out', out, src.length);
  native.bf16ToF32(src, out);
}
/** Round to nearest even; overflow → ±inf; NaN stays NaN. */
export function f32ToF16(src: F32, out: U16): void {
  check.f32ToF16(src, out);
  len('f32ToF16', 'out', out, src.length);
  native.f32ToF16(src, out);
}
/** Round to nearest even; NaN stays NaN. */
export function f32ToBf16(src: F32, out: U16): void {
  check.f32ToBf16(src, out);
  len('f32ToBf16', 'out', out, src.length);
  native.f32ToBf16(src, out);
}

// ---------------------------------------------------------------- runtime

export type SimdLevel = 'avx512' | 'avx2' | 'scalar';
const SIMD_NAMES: SimdLevel[] = ['scalar', 'avx2', 'avx512'];

/** Number of threads parallel kernels use (the caller's thread included). */
export function setThreads(n: number): void {
  if (!Number.isInteger(n) || n < 1 || n > 1024) rangeErr('setThreads', `n must be an integer in [1, 1024], got ${n}`);
  native.setThreads(n);
}

export type Backend = 'cpu' | 'cuda' | 'cuda-sim';
const BACKENDS: Backend[] = ['cpu', 'cuda-sim', 'cuda'];

export interface KernelsInfo {
  simd: SimdLevel;
  threads: number;
  /** Where ops on host buffers (typed arrays) run; ops on DeviceArrays always run on the GPU. */
  backend: Backend;
  /** 'cuda' when ops on host buffers run on the GPU, else 'cpu'. */
  device: 'cpu' | 'cuda';
  /** Whether this build has the CUDA backend (nvcc was found at build time). */
  cudaBuilt: boolean;
  /** The GPU (name, compute capability, memory, GEMM path), or why none is usable. */
  cuda: string;
}

export function info(): KernelsInfo {
  const backend = BACKENDS[native.hostBackend()];
  const built = native.cudaBuilt();
  return {
    simd: SIMD_NAMES[native.simdLevel()], threads: native.threads(), backend,
    device: backend === 'cuda' ? 'cuda' : 'cpu',
    cudaBuilt: built,
    cuda: built ? native.cudaDescribe() : 'not built (no nvcc at build time, or CATECHISM_CUDA=0)',
  };
}

/** Null when the CUDA backend can run here, else what is missing (no CUDA build, no driver, no device, wrong arch). */
export function cudaUnavailable(): string | null {
  return native.cudaMissing();
}

/**
 * Chooses where ops on host buffers run: 'cpu' (default); 'cuda' (each call
 * copies its buffers to the GPU, runs there and copies outputs back: what
 * `--device cuda` selects, correct for every caller that holds typed arrays);
 * 'cuda-sim' (the CUDA kernel bodies run on the CPU: tests of a CUDA build
 * without a GPU). Throws an Error naming what is missing when the choice
 * cannot run here. Returns the previous backend.
 */
export function setBackend(backend: Backend): Backend {
  const i = BACKENDS.indexOf(backend);
  if (i < 0) typeErr('setBackend', `unknown backend ${JSON.stringify(backend)} (expected cpu, cuda or cuda-sim)`);
  const prev = BACKENDS[native.hostBackend()];
  native.setHostBackend(i);
  return prev;
}

/** Waits for queued GPU work (no-op without CUDA); surfaces an asynchronous CUDA error. */
export function synchronize(): void {
  native.deviceSync();
}

/** Best ISA level this CPU supports. */
export function bestSimd(): SimdLevel {
  return SIMD_NAMES[native.bestSimdLevel()];
}

/** Caps the ISA level kernels dispatch to ('auto' = best available); returns the level now in effect. */
export function setSimd(level: SimdLevel | 'auto'): SimdLevel {
  if (level === 'auto') native.limitSimd(-1);
  else {
    const i = SIMD_NAMES.indexOf(level);
    if (i < 0) typeErr('setSimd', `unknown level ${JSON.stringify(level)} (expected scalar, avx2, avx512 or auto)`);
    native.limitSimd(i);
  }
  return info().simd;
}

// CATECHISM_SIMD=avx2|scalar|avx512 caps the ISA level for the whole process, as setSimd does: the
// AVX-512 and AVX2 kernels round differently, so a run pinned to one level reads the same numbers on
// every machine that has it (CATECHISM_THREADS, read by the native pool, is its companion)
if (process.env.CATECHISM_SIMD) setSimd(process.env.CATECHISM_SIMD as SimdLevel | 'auto');

/** Cost floor of one native call (for the overhead benchmark). */
export function nativeNoop(): void {
  native.noop();
}
