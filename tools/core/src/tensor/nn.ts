/**
 * Neural-network ops with fused kernels and hand-written backward passes:
 * softmax, norms, rotary embedding, embedding lookup, attention and losses.
 */
import { K, type SoftmaxMask } from './backend.js';
import {
  Tensor, accumulateGrad, gradBuffer, gradTarget, makeResult, recording, releaseBuffer, releaseSaved, shapeSize, shapeStr,
  takeBuffer, writeGrad,
} from './tensor.js';
import { mean, square, sub } from './ops.js';

function lastDim(x: Tensor, where: string): number {
  if (x.ndim < 1) throw new RangeError(`${where}: needs at least a 1-d tensor`);
  return x.shape[x.ndim - 1];
}

export interface SoftmaxOptions {
  /** Causal mask: x is [..., T, S]; query row r sees keys j ≤ r + (S − T). */
  causal?: boolean;
  /** Padding mask [batch × S], 1 = real token, 0 = padding; batch = leading dim of x. */
  keyPad?: Uint8Array;
}

function softmaxMask(x: Tensor, rows: number, cols: number, opts: SoftmaxOptions | undefined, where: string): SoftmaxMask | undefined {
  if (!opts || (!opts.causal && !opts.keyPad)) return undefined;
  const mask: SoftmaxMask = {};
  if (opts.causal) {
    if (x.ndim < 2) throw new RangeError(`${where}: a causal mask needs x of shape [..., T, S]`);
    mask.causal = true;
    mask.queryLen = x.shape[x.ndim - 2];
  }
  if (opts.keyPad) {
    if (opts.keyPad.length % cols !== 0 || opts.keyPad.length === 0) {
      throw new RangeError(`${where}: keyPad has ${opts.keyPad.length} entries, not a multiple of ${cols} keys`);
    }
    const batches = opts.keyPad.length / cols;
    if (rows % batches !== 0) throw new RangeError(`${where}: ${rows} rows cannot be split over ${batches} keyPad batches`);
    mask.keyPad = opts.keyPad;
    mask.rowsPerBatch = rows / batches;
  }
  return mask;
}

/** Softmax over the last axis, optionally masked (masked entries get probability 0). */
export function softmax(x: Tensor, opts?: SoftmaxOptions): Tensor {
  const cols = lastDim(x, 'softmax');
  const rows = cols === 0 ? 0 : x.size / cols;
  const out = takeBuffer(x.size);
  if (rows > 0) K.softmax(x.data, out, rows, cols, softmaxMask(x, rows, cols, opts, 'softmax'));
  return makeResult('softmax', out, x.shape, [x], (g) => {
    if (rows === 0) return;
    const { buf, accumulate } = gradTarget(x);
    K.softmaxBackward(out, g, buf, rows, cols, accumulate);
  });
}

/** log(softmax(x)) over the last axis, computed stably. */
export function logSoftmax(x: Tensor): Tensor {
  const cols = lastDim(x, 'logSoftmax');
  const rows = cols === 0 ? 0 : x.size / cols;
  const out = new Float32Array(x.size);
  if (rows > 0) K.logSoftmax(x.data, out, rows, cols);
  return makeResult('logSoftmax', out, x.shape, [x], (g) => {
    if (rows === 0) return;
    // dx = g − softmax(x) · Σ g  (row-wise)
    const p = new Float32Array(x.size);
    K.unary('exp', out, p);
    const gs = new Float32Array(rows);
    K.reduce('sum', g, [rows, cols], 1, gs);
    const t = new Float32Array(x.size);
    K.binary('mul', p, [rows, cols], gs, [rows, 1], t);
    const gx = gradBuffer(x);
    K.axpy(1, g, gx);
    K.axpy(-1, t, gx);
  });
}

/** LayerNorm over the last axis with affine gamma, beta. */
export function layerNorm(x: Tensor, gamma: Tensor, beta: Tensor, eps = 1e-5): Tensor {
  const cols = lastDim(x, 'layerNorm');
  if (gamma.size !== cols || beta.size !== cols) {
    throw new RangeError(`layerNorm: gamma ${shapeStr(gamma.shape)} / beta ${shapeStr(beta.shape)} must have ${cols} values for input ${shapeStr(x.shape)}`);
  }
  const rows = cols === 0 ? 0 : x.size / cols;
  const out = takeBuffer(x.size);
  const mu = new Float32Array(rows);
  const rstd = new Float32Array(rows);
  if (rows > 0) K.layerNorm(x.data, gamma.data, beta.data, out, rows, cols, eps, mu, rstd);
  return makeResult('layerNorm', out, x.shape, [x, gamma, beta], (g) => {
    if (rows === 0) return;
    // Frozen gamma/beta (or input) skip their part of the work.
    const dg = gamma.requiresGrad ? gradBuffer(gamma) : null;
    const db = beta.requiresGrad ? gradBuffer(beta) : null;
    if (x.requiresGrad) writeGrad(x, (dx) => K.layerNormBackward(x.data, gamma.data, mu, rstd, g, dx, dg, db, rows, cols));
    else K.layerNormBackward(x.data, gamma.data, mu, rstd, g, null, dg, db, rows, cols);
  });
}

/** RMSNorm over the last axis: x / rms(x) · weight. */
export function rmsNorm(x: Tensor, weight: Tensor, eps = 1e-6): Tensor {
  const cols = lastDim(x, 'rmsNorm');
  if (weight.size !== cols) throw new RangeError(`rmsNorm: weight ${shapeStr(weight.shape)} must have ${cols} values for input ${shapeStr(x.shape)}`);
  const rows = cols === 0 ? 0 : x.size / cols;
  const out = takeBuffer(x.size);
  const rstd = new Float32Array(rows);
  if (rows > 0) K.rmsNorm(x.data, weight.data, out, rows, cols, eps, rstd);
  return makeResult('rmsNorm', out, x.shape, [x, weight], (g) => {
    if (rows === 0) return;
    const dw = weight.requiresGrad ? gradBuffer(weight) : null;
    if (x.requiresGrad) writeGrad(x, (dx) => K.rmsNormBackward(x.data, weight.data, rstd, g, dx, dw, rows, cols));
    else K.rmsNormBackward(x.data, weight.data, rstd, g, null, dw, rows, cols);
  });
}

/**
 * Rotary position embedding (Hugging Face Llama convention: rotate_half,
 * first/second half pairing). x: [B, H, T, D]; positions: [B × T] or [T]
 * (shared across the batch).
 */
export function rope(x: Tensor, positions: Int32Array, theta = 10000): Tensor {
  if (x.ndim !== 4) throw new RangeError(`rope: x must be [B, H, T, D], got ${shapeStr(x.shape)}`);
  const [B, H, T, D] = x.shape;
  if (D % 2 !== 0) throw new RangeError(`rope: head dim ${D} must be even`);
  let pos = positions;
  if (positions.length === T && B > 1) {
    pos = new Int32Array(B * T);
    for (let b = 0; b < B; b++) pos.set(positions, b * T);
  } else if (positions.length !== B * T) {
    throw new RangeError(`rope: positions has ${positions.length} entries, expected B·T = ${B * T} or T = ${T}`);
  }
  const out = takeBuffer(x.size);
  if (x.size > 0) K.rope(x.data, out, B, H, T, D, pos, theta);
  return makeResult('rope', out, x.shape, [x], (g) => {
    if (x.size === 0) return;
    // A rotation's transpose is its inverse.
    writeGrad(x, (gx) => K.rope(g, gx, B, H, T, D, pos, theta, true));
  });
}

/**
 * Rows of `table` [V, D] for each id; the result is [...idsShape, D]
 * (idsShape defaults to [ids.length]). The gradient scatter-adds into the table.
 */
export function embedding(table: Tensor, ids: Int32Array, idsShape?: readonly number[]): Tensor {
  if (table.ndim !== 2) throw new RangeError(`embedding: table must be [V, D], got ${shapeStr(table.shape)}`);
  if (!(ids instanceof Int32Array)) throw new TypeError('embedding: ids must be an Int32Array');
  const [V, D] = table.shape;
  const lead = idsShape ? idsShape.slice() : [ids.length];
  if (shapeSize(lead) !== ids.length) throw new RangeError(`embedding: idsShape ${shapeStr(lead)} does not hold ${ids.length} ids`);
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] < 0 || ids[i] >= V) throw new RangeError(`embedding: id ${ids[i]} at position ${i} out of range [0, ${V})`);
  }
  const out = takeBuffer(ids.length * D);
  if (out.length > 0) K.embedding(table.data, V, D, ids, out);
  return makeResult('embedding', out, lead.concat([D]), [table], (g) => {
    if (out.length > 0) K.embeddingBackward(g, ids, gradBuffer(table), V, D);
  });
}

export interface AttentionOptions {
  /** Causal mask; the T queries align with the last T of the S keys (KV cache). */
  causal?: boolean;
  /** [B × S], 1 = real key, 0 = padding. */
  keyPad?: Uint8Array;
  /** Score scale; default 1/√D. */
  scale?: number;
}

/**
 * Scaled dot-product attention with grouped-query support.
 * q: [B, H, T, D]; k, v: [B, Hkv, S, D] with H a multiple of Hkv (query head
 * h reads kv head ⌊h / (H/Hkv)⌋). Returns [B, H, T, D]. Fully masked query
 * rows produce zeros.
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions = {}): Tensor {
  if (q.ndim !== 4 || k.ndim !== 4 || v.ndim !== 4) {
    throw new RangeError(`attention: q, k, v must be 4-d ([B, H, T, D]), got ${shapeStr(q.shape)}, ${shapeStr(k.shape)}, ${shapeStr(v.shape)}`);
  }
  const [B, H, T, D] = q.shape;
  const [Bk, Hkv, S, Dk] = k.shape;
  if (Bk !== B || Dk !== D || v.shape[0] !== B || v.shape[1] !== Hkv || v.shape[2] !== S || v.shape[3] !== D) {
    throw new RangeError(`attention: k ${shapeStr(k.shape)} and v ${shapeStr(v.shape)} must both be [${B}, Hkv, S, ${D}] for q ${shapeStr(q.shape)}`);
  }
  if (Hkv === 0 || H % Hkv !== 0) throw new RangeError(`attention: ${H} query heads are not a multiple of ${Hkv} kv heads`);
  if (opts.causal && T > S) throw new RangeError(`attention: causal needs T ≤ S, got T = ${T}, S = ${S}`);
  if (opts.keyPad && opts.keyPad.length !== B * S) throw new RangeError(`attention: keyPad has ${opts.keyPad.length} entries, expected B·S = ${B * S}`);
  const scale = opts.scale ?? 1 / Math.sqrt(D);
  const grp = H / Hkv;
  // Query heads of one kv group are contiguous, so q reads as [B·Hkv, grp·T, D].
  const nb = B * Hkv, mq = grp * T;
  const sQ = mq * D, sK = S * D, sP = mq * S;
  const out = q.size > 0 && S > 0 ? takeBuffer(q.size) : new Float32Array(q.size);
  const p = takeBuffer(B * H * T * S);
  if (q.size > 0 && S > 0) {
    K.gemm({ transB: true, m: mq, n: S, k: D, a: q.data, lda: D, strideA: sQ, b: k.data, ldb: D, strideB: sK, c: p, ldc: S, strideC: sP, batch: nb, alpha: scale });
    const mask: SoftmaxMask = {};
    if (opts.causal) { mask.causal = true; mask.queryLen = T; }
    if (opts.keyPad) { mask.keyPad = opts.keyPad; mask.rowsPerBatch = H * T; }
    K.softmax(p, p, B * H * T, S, opts.causal || opts.keyPad ? mask : undefined);
    K.gemm({ m: mq, n: D, k: S, a: p, lda: S, strideA: sP, b: v.data, ldb: D, strideB: sK, c: out, ldc: D, strideC: sQ, batch: nb });
  }
  return makeResult('attention', out, q.shape, [q, k, v], (g) => {
    if (q.size === 0 || S === 0) return;
    if (v.requiresGrad) {
      const gv = gradTarget(v);
      K.gemm({ transA: true, m: S, n: D, k: mq, a: p, lda: S, strideA: sP, b: g, ldb: D, strideB: sQ, c: gv.buf, ldc: D, strideC: sK, batch: nb, beta: gv.accumulate ? 1 : 0 });
    }
    if (!q.requiresGrad && !k.requiresGrad) return;
    const dp = takeBuffer(p.length);
    K.gemm({ transB: true, m: mq, n: S, k: D, a: g, lda: D, strideA: sQ, b: v.data, ldb: D, strideB: sK, c: dp, ldc: S, strideC: sP, batch: nb });
    // (in place: dp is read row by row before ds's row is written)
    const ds = dp;
    K.softmaxBackward(p, dp, ds, B * H * T, S, false);
    if (q.requiresGrad) {
      const gq = gradTarget(q);
      K.gemm({ m: mq, n: D, k: S, a: ds, lda: S, strideA: sP, b: k.data, ldb: D, strideB: sK, c: gq.buf, ldc: D, strideC: sQ, batch: nb, alpha: scale, beta: gq.accumulate ? 1 : 0 });
    }
    if (k.requiresGrad) {
      const gk = gradTarget(k);
      K.gemm({ transA: true, m: S, n: D, k: mq, a: ds, lda: S, strideA: sP, b: q.data, ldb: D, strideB: sQ, c: gk.buf, ldc: D, strideC: sK, batch: nb, alpha: scale, beta: gk.accumulate ? 1 : 0 });
    }
    releaseBuffer(ds);
    releaseSaved(p);
  });
}

/**
 * Multi-head self-attention straight from a fused QKV projection, GPT-2's
 * layout: qkv is [B, T, 3·heads·D] holding q, k and v side by side, each
 * [heads, D] per token. Returns [B, T, heads·D] (heads merged, ready for the
 * output projection). The same as splitting q/k/v into [B, heads, T, D],
 * `attention`, and merging the heads back, without materialising any of
 * those copies: the GEMMs read and write the heads in place through their
 * strides.
 */
export function attentionQKV(qkv: Tensor, heads: number, opts: AttentionOptions = {}): Tensor {
  if (qkv.ndim !== 3) throw new RangeError(`attentionQKV: qkv must be [B, T, 3·heads·D], got ${shapeStr(qkv.shape)}`);
  const [B, T, W] = qkv.shape;
  if (!Number.isInteger(heads) || heads <= 0 || W % (3 * heads) !== 0) {
    throw new RangeError(`attentionQKV: last dimension ${W} of qkv is not 3 × ${heads} heads × a head size`);
  }
  const D = W / (3 * heads);
  const HD = heads * D;
  if (opts.keyPad && opts.keyPad.length !== B * T) throw new RangeError(`attentionQKV: keyPad has ${opts.keyPad.length} entries, expected B·T = ${B * T}`);
  const scale = opts.scale ?? 1 / Math.sqrt(D);
  const sP = T * T; // one head's scores
  const out = takeBuffer(B * T * HD);
  const p = takeBuffer(B * heads * sP);
  const empty = B * T * D === 0;
  if (!empty) {
    // Per sequence, one batched GEMM over the heads; head h of token t sits
    // at column h·D of row t (leading dimension 3·HD in qkv, HD in out).
    for (let b = 0; b < B; b++) {
      const base = b * T * W;
      K.gemm({ transB: true, m: T, n: T, k: D, a: qkv.data, aOffset: base, lda: W, strideA: D, b: qkv.data, bOffset: base + HD, ldb: W, strideB: D,
        c: p, cOffset: b * heads * sP, ldc: T, strideC: sP, batch: heads, alpha: scale });
    }
    const mask: SoftmaxMask = {};
    if (opts.causal) { mask.causal = true; mask.queryLen = T; }
    if (opts.keyPad) { mask.keyPad = opts.keyPad; mask.rowsPerBatch = heads * T; }
    K.softmax(p, p, B * heads * T, T, opts.causal || opts.keyPad ? mask : undefined);
    for (let b = 0; b < B; b++) {
      K.gemm({ m: T, n: D, k: T, a: p, aOffset: b * heads * sP, lda: T, strideA: sP, b: qkv.data, bOffset: b * T * W + 2 * HD, ldb: W, strideB: D,
        c: out, cOffset: b * T * HD, ldc: HD, strideC: D, batch: heads });
    }
  } else {
    out.fill(0);
  }
  return makeResult('attentionQKV', out, [B, T, HD], [qkv], (g) => {
    if (empty) return;
    const gqkv = gradTarget(qkv);
    // Every element of q, k and v gets exactly one write: beta 0 on a fresh buffer.
    const beta = gqkv.accumulate ? 1 : 0;
    const dp = takeBuffer(p.length);
    for (let b = 0; b < B; b++) {
      const base = b * T * W, gOff = b * T * HD, pOff = b * heads * sP;
      // dV = Pᵀ·dO ; dP = dO·Vᵀ
      K.gemm({ transA: true, m: T, n: D, k: T, a: p, aOffset: pOff, lda: T, strideA: sP, b: g, bOffset: gOff, ldb: HD, strideB: D,
        c: gqkv.buf, cOffset: base + 2 * HD, ldc: W, strideC: D, batch: heads, beta });
      K.gemm({ transB: true, m: T, n: T, k: D, a: g, aOffset: gOff, lda: HD, strideA: D, b: qkv.data, bOffset: base + 2 * HD, ldb: W, strideB: D,
        c: dp, cOffset: pOff, ldc: T, strideC: sP, batch: heads });
    }
    K.softmaxBackward(p, dp, dp, B * heads * T, T, false);
    for (let b = 0; b < B; b++) {
      const base = b * T * W, pOff = b * heads * sP;
      // dQ = scale·dS·K ; dK = scale·dSᵀ·Q
      K.gemm({ m: T, n: D, k: T, a: dp, aOffset: pOff, lda: T, strideA: sP, b: qkv.data, bOffset: base + HD, ldb: W, strideB: D,
        c: gqkv.buf, cOffset: base, ldc: W, strideC: D, batch: heads, alpha: scale, beta });
      K.gemm({ transA: true, m: T, n: D, k: T, a: dp, aOffset: pOff, lda: T, strideA: sP, b: qkv.data, bOffset: base, ldb: W, strideB: D,
        c: gqkv.buf, cOffset: base + HD, ldc: W, strideC: D, batch: heads, alpha: scale, beta });
    }
    releaseBuffer(dp);
    releaseSaved(p);
  });
}

export type Reduction = 'mean' | 'sum' | 'none';

/**
 * Cross-entropy of logits [..., V] against integer targets (one per row).
 * Rows whose target is `ignoreIndex` contribute nothing. 'mean' (default)
 * divides by the number of non-ignored rows (0 when there are none); 'none'
 * returns the per-row losses with the rows' leading shape.
 */
export function crossEntropy(logits: Tensor, targets: Int32Array, ignoreIndex = -100, reduction: Reduction = 'mean'): Tensor {
  const V = lastDim(logits, 'crossEntropy');
  const rows = V === 0 ? 0 : logits.size / V;
  if (!(targets instanceof Int32Array)) throw new TypeError('crossEntropy: targets must be an Int32Array');
  if (targets.length !== rows) throw new RangeError(`crossEntropy: ${targets.length} targets for ${rows} rows of logits ${shapeStr(logits.shape)}`);
  let count = 0;
  for (let i = 0; i < rows; i++) {
    const t = targets[i];
    if (t === ignoreIndex) continue;
    if (t < 0 || t >= V) throw new RangeError(`crossEntropy: target ${t} at row ${i} out of range [0, ${V})`);
    count++;
  }
  const losses = new Float32Array(rows);
  const grad = recording([logits]) ? takeBuffer(logits.size) : null;
  if (rows > 0) K.crossEntropy(logits.data, targets, rows, V, losses, grad, ignoreIndex);
  if (reduction === 'none') {
    return makeResult('crossEntropy', losses, logits.shape.slice(0, -1), [logits], (g) => {
      // d loss_r / d logits_r = softmax − onehot; weight each row by g_r.
      const gl = takeBuffer(logits.size);
      K.binary('mul', grad!, [rows, V], g, [rows, 1], gl);
      accumulateGrad(logits, gl, true);
      releaseSaved(grad!);
    });
  }
  let total = 0;
  for (let i = 0; i < rows; i++) total += losses[i];
  const div = reduction === 'mean' ? count : 1;
  const value = div === 0 ? 0 : total / div;
  return makeResult('crossEntropy', new Float32Array([value]), [], [logits], (g) => {
    if (div === 0) return;
    const { buf, accumulate } = gradTarget(logits);
    if (accumulate) K.axpy(g[0] / div, grad!, buf);
    else K.scale(grad!, g[0] / div, buf);
    releaseSaved(grad!);
  });
}

/**
 * Mean over rows of KL(P‖Q), P = softmax(teacherLogits), Q =
 * softmax(studentLogits), over the last axis. The teacher is a constant: only
 * the student receives a gradient.
 */
export function klDiv(teacherLogits: Tensor, studentLogits: Tensor): Tensor {
  if (teacherLogits.size !== studentLogits.size || lastDim(teacherLogits, 'klDiv') !== lastDim(studentLogits, 'klDiv')) {
    throw new RangeError(`klDiv: teacher ${shapeStr(teacherLogits.shape)} and student ${shapeStr(studentLogits.shape)} logits differ in shape`);
  }
  const V = studentLogits.shape[studentLogits.ndim - 1];
  const rows = V === 0 ? 0 : studentLogits.size / V;
  const per = new Float32Array(rows);
  const grad = recording([studentLogits]) ? new Float32Array(studentLogits.size) : null;
  if (rows > 0) K.klDiv(teacherLogits.data, studentLogits.data, rows, V, per, grad);
  let total = 0;
  for (let i = 0; i < rows; i++) total += per[i];
  const value = rows === 0 ? 0 : total / rows;
  return makeResult('klDiv', new Float32Array([value]), [], [studentLogits], (g) => {
    if (rows > 0) K.axpy(g[0] / rows, grad!, gradBuffer(studentLogits));
  });
}

/** Mean squared error, averaged over all elements (shapes broadcast). */
export function mse(a: Tensor, b: Tensor): Tensor {
  return mean(square(sub(a, b)));
}
