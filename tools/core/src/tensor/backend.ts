/**
 * The native kernels as the tensor layer sees them. The interface restates the
 * agreed contract of @catechism/kernels (kernels/src/index.ts), so the tensor
 * code type-checks against exactly the calls it makes.
 */
import * as kernelsModule from '@catechism/kernels';

export interface GemmArgs {
  transA?: boolean; transB?: boolean;
  m: number; n: number; k: number;
  a: Float32Array; lda: number; aOffset?: number; strideA?: number;
  b: Float32Array; ldb: number; bOffset?: number; strideB?: number;
  c: Float32Array; ldc: number; cOffset?: number; strideC?: number;
  batch?: number;
  alpha?: number; beta?: number;
  bias?: Float32Array;
}

export type UnaryOp = 'neg' | 'exp' | 'log' | 'sqrt' | 'rsqrt' | 'tanh' | 'sigmoid' | 'relu' | 'gelu' | 'silu' | 'square' | 'abs';
export type BinaryOp = 'add' | 'sub' | 'mul' | 'div' | 'max' | 'min';
export type ReduceOp = 'sum' | 'mean' | 'max' | 'min';

export interface SoftmaxMask {
  causal?: boolean;
  queryLen?: number;
  keyPad?: Uint8Array;
  rowsPerBatch?: number;
}

export interface AdamWStep { lr: number; beta1: number; beta2: number; eps: number; weightDecay: number; step: number }

export interface KernelsApi {
  gemm(args: GemmArgs): void;
  unary(op: UnaryOp, x: Float32Array, out: Float32Array): void;
  unaryBackward(op: UnaryOp, x: Float32Array, gradOut: Float32Array, gradIn: Float32Array, accumulate?: boolean): void;
  binary(op: BinaryOp, a: Float32Array, aShape: number[], b: Float32Array, bShape: number[], out: Float32Array): void;
  scale(x: Float32Array, alpha: number, out: Float32Array): void;
  axpy(alpha: number, x: Float32Array, y: Float32Array): void;
  fill(x: Float32Array, value: number): void;
  reduce(op: ReduceOp, x: Float32Array, shape: number[], axis: number, out: Float32Array): void;
  permute(x: Float32Array, shape: number[], perm: number[], out: Float32Array): void;
  softmax(x: Float32Array, out: Float32Array, rows: number, cols: number, mask?: SoftmaxMask): void;
  softmaxBackward(y: Float32Array, dy: Float32Array, dx: Float32Array, rows: number, cols: number, accumulate?: boolean): void;
  layerNorm(x: Float32Array, gamma: Float32Array, beta: Float32Array, out: Float32Array, rows: number, cols: number, eps: number, mean: Float32Array, rstd: Float32Array): void;
  /** dx written; dgamma, dbeta accumulated; a null output is skipped (kernels addition). */
  layerNormBackward(x: Float32Array, gamma: Float32Array, mean: Float32Array, rstd: Float32Array, dy: Float32Array, dx: Float32Array | null, dgamma: Float32Array | null, dbeta: Float32Array | null, rows: number, cols: number): void;
  rmsNorm(x: Float32Array, weight: Float32Array, out: Float32Array, rows: number, cols: number, eps: number, rstd: Float32Array): void;
  /** dx written; dweight accumulated; a null output is skipped (kernels addition). */
  rmsNormBackward(x: Float32Array, weight: Float32Array, rstd: Float32Array, dy: Float32Array, dx: Float32Array | null, dweight: Float32Array | null, rows: number, cols: number): void;
  rope(x: Float32Array, out: Float32Array, batch: number, heads: number, seq: number, headDim: number, positions: Int32Array, theta: number, inverse?: boolean): void;
  embedding(table: Float32Array, vocab: number, dim: number, ids: Int32Array, out: Float32Array): void;
  embeddingBackward(gradOut: Float32Array, ids: Int32Array, gradTable: Float32Array, vocab: number, dim: number): void;
  crossEntropy(logits: Float32Array, targets: Int32Array, rows: number, vocab: number, losses: Float32Array, gradLogits?: Float32Array | null, ignoreIndex?: number): void;
  klDiv(pLogits: Float32Array, qLogits: Float32Array, rows: number, vocab: number, out: Float32Array, gradQ?: Float32Array | null): void;
  logSoftmax(x: Float32Array, out: Float32Array, rows: number, cols: number): void;
  topk(x: Float32Array, rows: number, cols: number, k: number, values: Float32Array, indices: Int32Array): void;
  adamw(param: Float32Array, grad: Float32Array, m: Float32Array, v: Float32Array, o: AdamWStep): void;
}

/**
 * The kernels module. Assigning it to `KernelsApi` makes the compiler check
 * that the kernels package still provides every call the tensor layer makes.
 */
export const K: KernelsApi = kernelsModule;
