/** Optimisers and gradient utilities. */
import { K } from './backend.js';
import { Tensor } from './tensor.js';

export interface AdamWOptions {
  lr: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  /** Decoupled weight decay (applied as param −= lr·wd·param). */
  weightDecay?: number;
}

/**
 * AdamW (Loshchilov & Hutter), bias-corrected, with decoupled weight decay.
 * Parameters without a gradient at `step()` are left untouched and their
 * moments don't advance. `lr` may be changed between steps (schedules).
 */
export class AdamW {
  readonly params: readonly Tensor[];
  lr: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  weightDecay: number;
  /** Number of `step()` calls so far. */
  stepCount = 0;
  private readonly m: Float32Array[];
  private readonly v: Float32Array[];
  private readonly steps: number[];

  constructor(params: readonly Tensor[], opts: AdamWOptions) {
    if (!(opts.lr >= 0) || !Number.isFinite(opts.lr)) throw new RangeError(`AdamW: lr must be a finite number ≥ 0, got ${opts.lr}`);
    this.params = params.slice();
    this.lr = opts.lr;
    this.beta1 = opts.beta1 ?? 0.9;
    this.beta2 = opts.beta2 ?? 0.999;
    this.eps = opts.eps ?? 1e-8;
    this.weightDecay = opts.weightDecay ?? 0.01;
    if (!(this.beta1 >= 0 && this.beta1 < 1) || !(this.beta2 >= 0 && this.beta2 < 1)) {
      throw new RangeError(`AdamW: betas must be in [0, 1), got ${this.beta1}, ${this.beta2}`);
    }
    if (new Set(this.params).size !== this.params.length) throw new RangeError('AdamW: a parameter is listed twice');
    this.m = this.params.map((p) => new Float32Array(p.size));
    this.v = this.params.map((p) => new Float32Array(p.size));
    this.steps = this.params.map(() => 0);
  }

  step(): void {
    this.stepCount++;
    this.params.forEach((p, i) => {
      if (p.grad === null) return;
      this.steps[i]++;
      K.adamw(p.data, p.grad.data, this.m[i], this.v[i], {
        lr: this.lr, beta1: this.beta1, beta2: this.beta2, eps: this.eps, weightDecay: this.weightDecay, step: this.steps[i],
      });
    });
  }

  zeroGrad(): void {
    for (const p of this.params) p.grad = null;
  }
}

/**
 * Scale all gradients so their global L2 norm is at most `maxNorm`. Returns
 * the norm before clipping (Infinity/NaN is returned as is and nothing is
 * scaled, so the caller can skip the step).
 */
export function clipGradNorm(params: readonly Tensor[], maxNorm: number): number {
  let sq = 0;
  for (const p of params) {
    if (p.grad === null) continue;
    const g = p.grad.data;
    for (let i = 0; i < g.length; i++) sq += g[i] * g[i];
  }
  const norm = Math.sqrt(sq);
  if (!Number.isFinite(norm)) return norm;
  if (norm > maxNorm) {
    const c = maxNorm / (norm + 1e-6);
    for (const p of params) {
      if (p.grad === null) continue;
      const scaled = new Float32Array(p.grad.size);
      K.scale(p.grad.data, c, scaled);
      p.grad.data = scaled;
    }
  }
  return norm;
}
