/**
 * Adapter merging methods on in-memory LoRA adapters.
 *
 * Each input contributes ΔWᵢ = wᵢ · fᵢ · Bᵢ Aᵢ per module, where fᵢ is the
 * adapter's own alpha/r and wᵢ the caller's weight (which also carries a
 * manifest `scale`, e.g. −1 for a negated adapter). Every output adapter has
 * alpha = r (factor 1): all scales are folded into B, so the result loads
 * anywhere PEFT's format does.
 *
 *   cat / linear  exact: ranks stacked, rank = Σ rᵢ (zero blocks where an
 *                 input lacks a module, since PEFT has one r per adapter);
 *                 above every module's full rank, re-factored at it by SVD
 *   svd           Σ ΔWᵢ recompressed to `rank` by a truncated SVD computed
 *                 from the stacked factors (never forms ΔW)
 *   ties          Yadav et al. 2023: trim each ΔWᵢ to its top-density
 *                 fraction by magnitude, elect a sign per entry by summed
 *                 mass, average the entries that agree; then SVD to `rank`
 *   dare          Yu et al. 2023: drop each entry of ΔWᵢ with probability p,
 *                 rescale survivors by 1/(1−p), sum; then SVD to `rank`
 *   scale         one adapter, B·s (negate is s = −1)
 */
import { LoraAdapter, type LoraModule } from '../models/lora.js';
import { fromData } from '../tensor/index.js';
import { Rng } from '../util/random.js';
import { denseSvd, factoredSvd, mat, matmul64, type Mat, type Svd } from './linalg.js';

export class MergeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MergeError';
  }
}

export interface MergeInput {
  adapter: LoraAdapter;
  /** Multiplies this adapter's delta (default 1). */
  weight?: number;
}

export interface Block {
  /** First rank row of this input in the merged A (and column of B). */
  offset: number;
  rank: number;
}

export interface MergeResult {
  adapter: LoraAdapter;
  /** cat/linear: where each input's rank block sits (for ablation). */
  blocks?: Block[];
  /** svd/ties/dare: per module, Σ kept σ² / Σ σ² (1 when nothing was dropped). */
  energy?: Record<string, number>;
  /** svd/ties/dare: per module, the Frobenius norm of what truncation dropped (= sqrt(Σ dropped σ²)). */
  residual?: Record<string, number>;
  /** svd/ties/dare: false where a module's SVD was randomized (large dense ΔW), true where exact. */
  exact?: Record<string, boolean>;
  /** cat/linear whose stacked rank exceeded every module's full rank: re-factored from → to (no blocks then). */
  compacted?: { from: number; to: number };
}

interface ModuleDims {
  in: number;
  out: number;
}

/** Union of modules in first-seen order, with dimensions checked across inputs. */
function moduleUnion(inputs: readonly MergeInput[]): Map<string, ModuleDims> {
  const dims = new Map<string, ModuleDims>();
  for (const { adapter } of inputs) {
    for (const [name, m] of adapter.modules) {
      const d = { in: m.A.shape[1], out: m.B.shape[0] };
      const prev = dims.get(name);
      if (prev && (prev.in !== d.in || prev.out !== d.out)) {
        throw new MergeError(`module ${name}: ${adapter.name} maps ${d.in} → ${d.out} but an earlier adapter maps ${prev.in} → ${prev.out} (different base models?)`);
      }
      if (!prev) dims.set(name, d);
    }
  }
  return dims;
}

function fanInFanOut(inputs: readonly MergeInput[]): boolean {
  const f = inputs[0].adapter.fanInFanOut;
  if (inputs.some((i) => i.adapter.fanInFanOut !== f)) throw new MergeError('adapters disagree on fan_in_fan_out (GPT-2 Conv1D vs Linear layout): they were made for different model families');
  return f;
}

function checkInputs(inputs: readonly MergeInput[], what: string): void {
  if (inputs.length === 0) throw new MergeError(`${what}: no adapters to merge`);
  for (const i of inputs) {
    const w = i.weight ?? 1;
    if (!Number.isFinite(w)) throw new MergeError(`${what}: weight of ${i.adapter.name} is not a finite number (${w})`);
  }
}

/** The effective multiplier of an input's B·A. */
function coef(i: MergeInput): number {
  return (i.weight ?? 1) * i.adapter.factor;
}

/** Σ coefᵢ · biasᵢ for a module (undefined when no input has a bias there). */
function mergedBias(inputs: readonly MergeInput[], name: string, out: number): Float32Array | undefined {
  let acc: Float64Array | undefined;
  for (const i of inputs) {
    const b = i.adapter.modules.get(name)?.bias;
    if (!b) continue;
    acc ??= new Float64Array(out);
    const c = coef(i);
    for (let k = 0; k < out; k++) acc[k] += c * b.data[k];
  }
  return acc ? Float32Array.from(acc) : undefined;
}

function makeAdapter(name: string, r: number, modules: Map<string, LoraModule>, fifo: boolean): LoraAdapter {
  return new LoraAdapter(name, r, r, modules, fifo);
}

/** Stacked factors of a module in float64: B_cat (out×R), A_cat (R×in), coefficients folded into B. */
export function stackedFactors(inputs: readonly MergeInput[], name: string, dims: ModuleDims): { B: Mat; A: Mat; blocks: Block[] } {
  const R = inputs.reduce((s, i) => s + i.adapter.r, 0);
  const B = mat(dims.out, R), A = mat(R, dims.in);
  const blocks: Block[] = [];
  let off = 0;
  for (const i of inputs) {
    const r = i.adapter.r;
    blocks.push({ offset: off, rank: r });
    const m = i.adapter.modules.get(name);
    if (m) {
      const c = coef(i);
      for (let o = 0; o < dims.out; o++) for (let k = 0; k < r; k++) B.data[o * R + off + k] = c * m.B.data[o * r + k];
      A.data.set(m.A.data, off * dims.in);
    }
    off += r;
  }
  return { B, A, blocks };
}

/** The largest rank any module's ΔW can have: max over modules of min(in, out). */
export function fullRank(dims: ReadonlyMap<string, ModuleDims>): number {
  let r = 0;
  for (const d of dims.values()) r = Math.max(r, Math.min(d.in, d.out));
  return r;
}

/**
 * cat (and linear): exact stacking of ranks. A stack taller than any
 * module's ΔW can be (Σ rᵢ > max min(in, out): a live ref that takes a batch
 * every night) is re-factored at that full rank by an exact SVD of each
 * module's summed ΔW: the delta is the same up to float32 rounding, the
 * rank stops growing, and the rank blocks (exact ablation) are gone.
 */
export function mergeCat(inputs: readonly MergeInput[], name = 'merged'): MergeResult {
  checkInputs(inputs, 'cat');
  const fifo = fanInFanOut(inputs);
  const dims = moduleUnion(inputs);
  const R = inputs.reduce((s, i) => s + i.adapter.r, 0);
  const cap = fullRank(dims);
  if (R > cap) return compactCat(inputs, dims, cap, fifo, R, name);
  const modules = new Map<string, LoraModule>();
  let blocks: Block[] = [];
  for (const [mod, d] of dims) {
    const f = stackedFactors(inputs, mod, d);
    blocks = f.blocks;
    const bias = mergedBias(inputs, mod, d.out);
    modules.set(mod, {
      A: fromData(Float32Array.from(f.A.data), [R, d.in]),
      B: fromData(Float32Array.from(f.B.data), [d.out, R]),
      ...(bias ? { bias: fromData(bias, [d.out]) } : {}),
    });
  }
  return { adapter: makeAdapter(name, R, modules, fifo), blocks };
}

/** cat whose stacked rank R exceeds `rank`, the full rank of every module: Σ ΔWᵢ by an exact SVD at that rank. */
function compactCat(inputs: readonly MergeInput[], dims: ReadonlyMap<string, ModuleDims>, rank: number, fifo: boolean, R: number, name: string): MergeResult {
  // the stack is wider than ΔW (R > min(in, out)), so the SVD is of ΔW itself; at rank ≥ min(in, out)
  // it drops nothing but rounding
  const dense = (B: Mat, A: Mat) => denseSvd(matmul64(B, A), { exactLimit: Infinity });
  return { ...refactored(inputs, dims, rank, fifo, name, dense), compacted: { from: R, to: rank } };
}

/** Σ ΔWᵢ per module re-factored at `rank` from the SVD `svdOf` gives of the stacked factors B·A. */
function refactored(inputs: readonly MergeInput[], dims: ReadonlyMap<string, ModuleDims>, rank: number, fifo: boolean, name: string, svdOf: (B: Mat, A: Mat) => Svd): MergeResult {
  const modules = new Map<string, LoraModule>();
  const energy: Record<string, number> = {}, residual: Record<string, number> = {}, exact: Record<string, boolean> = {};
  for (const [mod, d] of dims) {
    const f = stackedFactors(inputs, mod, d);
    const out = factorsFromSvd(svdOf(f.B, f.A), rank, d);
    energy[mod] = out.energy;
    residual[mod] = out.residual;
    exact[mod] = true;
    const bias = mergedBias(inputs, mod, d.out);
    modules.set(mod, { A: fromData(out.A, [rank, d.in]), B: fromData(out.B, [d.out, rank]), ...(bias ? { bias: fromData(bias, [d.out]) } : {}) });
  }
  return { adapter: makeAdapter(name, rank, modules, fifo), energy, residual, exact };
}

/** Split a truncated SVD into LoRA factors: B = U·√σ, A = √σ·Vᵀ, padded with zeros to `rank`. */
function factorsFromSvd(s: Svd, rank: number, dims: ModuleDims): { A: Float32Array; B: Float32Array; energy: number; residual: number } {
  const k = Math.min(rank, s.S.length);
  let kept = 0, total = 0;
  for (let j = 0; j < s.S.length; j++) {
    const e = s.S[j] * s.S[j];
    total += e;
    if (j < k) kept += e;
  }
  const A = new Float32Array(rank * dims.in), B = new Float32Array(dims.out * rank);
  const uc = s.U.cols, vc = s.V.cols;
  for (let j = 0; j < k; j++) {
    const r = Math.sqrt(s.S[j]);
    if (r === 0) continue;
    for (let o = 0; o < dims.out; o++) B[o * rank + j] = s.U.data[o * uc + j] * r;
    for (let i = 0; i < dims.in; i++) A[j * dims.in + i] = s.V.data[i * vc + j] * r;
  }
  return { A, B, energy: total === 0 ? 1 : kept / total, residual: Math.sqrt(Math.max(0, total - kept)) };
}

function checkRank(rank: number | undefined, what: string): number {
  if (rank === undefined || !Number.isInteger(rank) || rank < 1) throw new MergeError(`${what}: --rank must be a positive integer, got ${String(rank)}`);
  return rank;
}

/** svd: Σ ΔWᵢ recompressed to `rank` per module (factored: never forms ΔW). */
export function mergeSvd(inputs: readonly MergeInput[], rank: number, name = 'merged'): MergeResult {
  checkInputs(inputs, 'svd');
  checkRank(rank, 'svd');
  return refactored(inputs, moduleUnion(inputs), rank, fanInFanOut(inputs), name, factoredSvd);
}

/** Dense ΔW (out×in, float64) of one input on one module, coefficient included; zeros when absent. */
export function denseDelta(input: MergeInput, name: string, dims: ModuleDims): Mat {
  const W = mat(dims.out, dims.in);
  const m = input.adapter.modules.get(name);
  if (!m) return W;
  const r = input.adapter.r, c = coef(input);
  for (let o = 0; o < dims.out; o++) {
    const row = o * dims.in;
    for (let k = 0; k < r; k++) {
      const b = c * m.B.data[o * r + k];
      if (b === 0) continue;
      const a = k * dims.in;
      for (let i = 0; i < dims.in; i++) W.data[row + i] += b * m.A.data[a + i];
    }
  }
  return W;
}

/** The k-th smallest value of `a` (0-based), by iterative quickselect; reorders `a`. */
function selectKth(a: Float64Array, k: number): number {
  let lo = 0, hi = a.length - 1;
  while (lo < hi) {
    // median of three as pivot keeps sorted-ish inputs linear
    const mid = (lo + hi) >>> 1;
    const x = a[lo], y = a[mid], z = a[hi];
    const pivot = x < y ? (y < z ? y : x < z ? z : x) : x < z ? x : y < z ? z : y;
    let i = lo, j = hi;
    while (i <= j) {
      while (a[i] < pivot) i++;
      while (a[j] > pivot) j--;
      if (i <= j) {
        const t = a[i];
        a[i] = a[j];
        a[j] = t;
        i++;
        j--;
      }
    }
    if (k <= j) hi = j;
    else if (k >= i) lo = i;
    else return a[k];
  }
  return a[k];
}

/** Zero all but the `density` fraction of largest-magnitude entries (entries tied at the threshold are kept). */
export function trimTopK(d: Float64Array, density: number): void {
  const keep = Math.ceil(density * d.length);
  if (keep >= d.length) return;
  if (keep <= 0) {
    d.fill(0);
    return;
  }
  const mags = new Float64Array(d.length);
  for (let i = 0; i < d.length; i++) mags[i] = Math.abs(d[i]);
  const thr = selectKth(mags, d.length - keep);
  for (let i = 0; i < d.length; i++) if (Math.abs(d[i]) < thr) d[i] = 0;
}

/**
 * The TIES combination of task vectors, streamed: `get(i)` yields input i's
 * dense, weighted ΔW (a fresh array; it is trimmed in place). Two passes, so
 * only one input's ΔW is held at a time: elect the sign from the summed
 * trimmed mass, then average the trimmed entries that agree with it.
 */
export function tiesStream(n: number, size: number, get: (i: number) => Float64Array, density: number): Float64Array {
  const mass = new Float64Array(size);
  for (let i = 0; i < n; i++) {
    const t = get(i);
    trimTopK(t, density);
    for (let e = 0; e < size; e++) mass[e] += t[e];
  }
  const sum = new Float64Array(size);
  const count = new Uint32Array(size);
  for (let i = 0; i < n; i++) {
    const t = get(i);
    trimTopK(t, density);
    for (let e = 0; e < size; e++) {
      const v = t[e];
      if (v !== 0 && mass[e] !== 0 && v > 0 === mass[e] > 0) {
        sum[e] += v;
        count[e]++;
      }
    }
  }
  for (let e = 0; e < size; e++) sum[e] = count[e] > 0 ? sum[e] / count[e] : 0;
  return sum;
}

/** TIES over in-memory task vectors (already weighted): trim, elect sign, disjoint mean. */
export function tiesCombine(deltas: readonly Float64Array[], density: number): Float64Array {
  return tiesStream(deltas.length, deltas[0].length, (i) => Float64Array.from(deltas[i]), density);
}

/** DARE, streamed: drop with probability p, rescale by 1/(1−p), sum. Draws in input order, entry order. */
export function dareStream(n: number, size: number, get: (i: number) => Float64Array, p: number, rng: Rng): Float64Array {
  const out = new Float64Array(size);
  const keepScale = 1 / (1 - p);
  for (let i = 0; i < n; i++) {
    const d = get(i);
    for (let e = 0; e < size; e++) {
      if (rng.uniform() >= p) out[e] += d[e] * keepScale;
    }
  }
  return out;
}

/** DARE over in-memory task vectors. */
export function dareCombine(deltas: readonly Float64Array[], p: number, rng: Rng): Float64Array {
  return dareStream(deltas.length, deltas[0].length, (i) => deltas[i], p, rng);
}

function denseMerge(
  inputs: readonly MergeInput[],
  rank: number,
  name: string,
  /** Combine the inputs' dense ΔW (fetched one at a time by `get`) into one. */
  combine: (n: number, size: number, get: (i: number) => Float64Array) => Float64Array,
): MergeResult {
  const fifo = fanInFanOut(inputs);
  const modules = new Map<string, LoraModule>();
  const energy: Record<string, number> = {}, residual: Record<string, number> = {}, exact: Record<string, boolean> = {};
  // sorted so seeded draws do not depend on the inputs' module order
  const dims = [...moduleUnion(inputs)].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  for (const [mod, d] of dims) {
    const merged = combine(inputs.length, d.out * d.in, (i) => denseDelta(inputs[i], mod, d).data);
    const s = denseSvd({ rows: d.out, cols: d.in, data: merged }, { rank });
    const out = factorsFromSvd(s, rank, d);
    if (!s.exact) {
      // randomized SVD: the reported energy must be against the true total, not the sketch's
      let total = 0;
      for (const v of merged) total += v * v;
      let kept = 0;
      for (let j = 0; j < Math.min(rank, s.S.length); j++) kept += s.S[j] * s.S[j];
      out.energy = total === 0 ? 1 : Math.min(1, kept / total);
      out.residual = Math.sqrt(Math.max(0, total - kept));
    }
    energy[mod] = out.energy;
    residual[mod] = out.residual;
    exact[mod] = s.exact;
    const bias = mergedBias(inputs, mod, d.out);
    modules.set(mod, { A: fromData(out.A, [rank, d.in]), B: fromData(out.B, [d.out, rank]), ...(bias ? { bias: fromData(bias, [d.out]) } : {}) });
  }
  return { adapter: makeAdapter(name, rank, modules, fifo), energy, residual, exact };
}

export function mergeTies(inputs: readonly MergeInput[], opts: { rank: number; density: number }, name = 'merged'): MergeResult {
  checkInputs(inputs, 'ties');
  checkRank(opts.rank, 'ties');
  if (!(opts.density > 0 && opts.density <= 1)) throw new MergeError(`ties: --density must be in (0, 1], got ${opts.density}`);
  return denseMerge(inputs, opts.rank, name, (n, size, get) => tiesStream(n, size, get, opts.density));
}

export function mergeDare(inputs: readonly MergeInput[], opts: { rank: number; drop: number; seed: number }, name = 'merged'): MergeResult {
  checkInputs(inputs, 'dare');
  checkRank(opts.rank, 'dare');
  if (!(opts.drop >= 0 && opts.drop < 1)) throw new MergeError(`dare: --drop must be in [0, 1), got ${opts.drop}`);
  const rng = new Rng(opts.seed);
  return denseMerge(inputs, opts.rank, name, (n, size, get) => dareStream(n, size, get, opts.drop, rng));
}

/** One adapter with its delta multiplied by `s` (folded into B and the bias; alpha/r kept). */
export function scaleAdapter(adapter: LoraAdapter, s: number, name = adapter.name): LoraAdapter {
  if (!Number.isFinite(s)) throw new MergeError(`scale: --by must be a finite number, got ${s}`);
  const modules = new Map<string, LoraModule>();
  for (const [mod, m] of adapter.modules) {
    modules.set(mod, {
      A: fromData(m.A.data.slice(), [...m.A.shape]),
      B: fromData(m.B.data.map((v) => v * s), [...m.B.shape]),
      ...(m.bias ? { bias: fromData(m.bias.data.map((v) => v * s), [...m.bias.shape]) } : {}),
    });
  }
  return new LoraAdapter(name, adapter.r, adapter.alpha, modules, adapter.fanInFanOut);
}

/** A cat-merged adapter with some inputs' rank blocks zeroed (their contribution removed exactly). */
export function ablateBlocks(adapter: LoraAdapter, drop: readonly Block[]): LoraAdapter {
  const modules = new Map<string, LoraModule>();
  const r = adapter.r;
  for (const [mod, m] of adapter.modules) {
    const B = m.B.data.slice();
    const out = m.B.shape[0];
    for (const b of drop) {
      if (b.offset + b.rank > r) throw new MergeError(`ablate: block ${b.offset}+${b.rank} exceeds the adapter's rank ${r}`);
      for (let o = 0; o < out; o++) B.fill(0, o * r + b.offset, o * r + b.offset + b.rank);
    }
    modules.set(mod, { A: m.A, B: fromData(B, [...m.B.shape]), ...(m.bias ? { bias: m.bias } : {}) });
  }
  return new LoraAdapter(adapter.name, r, adapter.alpha, modules, adapter.fanInFanOut);
}

/** Dense ΔW (out×in, float64) of a whole adapter on one module (factor included). */
export function adapterDelta(adapter: LoraAdapter, name: string, weight = 1): Mat {
  const m = adapter.modules.get(name);
  if (!m) throw new MergeError(`${adapter.name} has no module ${name}`);
  return denseDelta({ adapter, weight }, name, { in: m.A.shape[1], out: m.B.shape[0] });
}
