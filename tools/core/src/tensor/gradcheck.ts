/**
 * Helpers for checking gradients against central finite differences computed
 * on a float64 reference implementation (so the comparison isn't limited by
 * float32 rounding). Used by the test suites; models can use them to check
 * their own blocks.
 */

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
