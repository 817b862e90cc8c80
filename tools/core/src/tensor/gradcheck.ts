/**
 * Helpers for checking gradients against central finite differences computed
 * on a float64 reference implementation (so the comparison isn't limited by
 * float32 rounding). Used by the test suites; models can use them to check
 * their own blocks.
 */
import { Rng } from '../util/random.js';
import { Tensor, tensor } from './tensor.js';

/**
 * ∂f/∂x_i for every element of `inputs[which]`, by central differences in
 * float64: (f(x + h·e_i) − f(x − h·e_i)) / 2h. `inputs` is restored afterwards.
 */
export function numericGradient(f: (inputs: Float64Array[]) => number, inputs: Float64Array[], which: number, h = 1e-5): Float64Array {
  const x = inputs[which];
  const grad = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const old = x[i];
    const step = h * Math.max(1, Math.abs(old));
    x[i] = old + step;
    const fp = f(inputs);
    x[i] = old - step;
    const fm = f(inputs);
    x[i] = old;
    grad[i] = (fp - fm) / (2 * step);
  }
  return grad;
}

/**
 * Largest absolute difference divided by the largest magnitude in `expected`
 * (floored at `floor`): a scale-aware error for whole arrays.
 */
export function relativeError(actual: ArrayLike<number>, expected: ArrayLike<number>, floor = 1e-3): number {
  if (actual.length !== expected.length) {
    throw new RangeError(`relativeError: lengths differ (${actual.length} vs ${expected.length})`);
  }
  let diff = 0, mag = floor;
  for (let i = 0; i < actual.length; i++) {
    const d = Math.abs(actual[i] - expected[i]);
    if (!(d <= diff)) diff = d; // NaN propagates as the error
    mag = Math.max(mag, Math.abs(expected[i]));
  }
  return diff / mag;
}

export interface GradCheckInput {
  data: ArrayLike<number>;
  shape: readonly number[];
  /** Check (and compute) this input's gradient; default true. */
  requiresGrad?: boolean;
}

export interface GradCheckResult {
  /** relativeError of the float32 forward against the float64 reference. */
  forwardError: number;
  /** Per input: relativeError of the analytic gradient against finite differences (NaN when not checked). */
  gradErrors: number[];
  output: Tensor;
}

/**
 * Check `op` (float32, autograd) against `ref` (float64, plain code) on the
 * given inputs. The scalar loss is Σ w·out with fixed random weights w, so
 * every output element's gradient path is exercised.
 */
export function gradCheck(
  op: (xs: Tensor[]) => Tensor,
  ref: (xs: Float64Array[]) => ArrayLike<number>,
  inputs: readonly GradCheckInput[],
  opts: { seed?: number; h?: number } = {},
): GradCheckResult {
  const ts = inputs.map((inp) => tensor(inp.data, inp.shape, { requiresGrad: inp.requiresGrad ?? true }));
  // The reference sees exactly the float32-rounded values the op sees.
  const xs = ts.map((t) => Float64Array.from(t.data));
  const output = op(ts);
  const expected = ref(xs);
  const forwardError = relativeError(output.data, expected);
  const rng = new Rng(opts.seed ?? 1234);
  const w = new Float64Array(output.size);
  for (let i = 0; i < w.length; i++) w[i] = rng.normal();
  const gradErrors = inputs.map(() => NaN);
  if (output.requiresGrad) {
    output.backward(tensor(w, output.shape));
    const loss = (vals: Float64Array[]): number => {
      const y = ref(vals);
      let s = 0;
      for (let i = 0; i < y.length; i++) s += w[i] * y[i];
      return s;
    };
    inputs.forEach((inp, i) => {
      if (inp.requiresGrad === false) return;
      const num = numericGradient(loss, xs, i, opts.h);
      const ana = ts[i].grad ? ts[i].grad!.data : new Float32Array(ts[i].size);
      gradErrors[i] = relativeError(ana, num);
    });
  }
  return { forwardError, gradErrors, output };
}
