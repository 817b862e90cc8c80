// The sigmoid family far into its tails: values and derivatives must stay
// finite and match float64 (a sigmoid built from exp(−x) overflows to inf for
// x ≲ −88 and turns 1 − s into inf·0 = NaN — seen as NaN GELU gradients for
// pre-activations below about −12, where 2u ≈ −142).
import t from 'tap';
import { k, close, simdLevels } from './helpers.js';

const xs: number[] = [];
for (let x = -300; x <= 300; x += 0.75) xs.push(x);
xs.push(-12.01, -11.99, -88.7, -88.8, 88.7, 88.8, 0, -0);
// Pad to a length that exercises full vectors and a masked tail.
while (xs.length % 16 !== 5) xs.push(-20 - xs.length);
const x = Float32Array.from(xs);

const sig = (v: number) => (v >= 0 ? 1 / (1 + Math.exp(-v)) : Math.exp(v) / (1 + Math.exp(v)));
const C = Math.sqrt(2 / Math.PI), A = 0.044715;
const ref = {
  sigmoid: { f: sig, df: (v: number) => sig(v) * sig(-v) },
  silu: { f: (v: number) => v * sig(v), df: (v: number) => sig(v) * (1 + v * sig(-v)) },
  gelu: {
    f: (v: number) => v * sig(2 * C * (v + A * v ** 3)),
    df: (v: number) => {
      const s = sig(2 * C * (v + A * v ** 3));
      return s + 2 * v * s * (1 - s) * C * (1 + 3 * A * v * v);
    },
  },
} as const;

for (const level of simdLevels()) {
  t.test(`sigmoid family tails (${level})`, async (t) => {
    k.setSimd(level);
    t.teardown(() => k.setSimd('auto'));
    for (const op of ['sigmoid', 'silu', 'gelu'] as const) {
      const y = new Float32Array(x.length);
      k.unary(op, x, y);
      const g = new Float32Array(x.length);
      k.unaryBackward(op, x, new Float32Array(x.length).fill(1), g);
      t.ok(y.every(Number.isFinite), `${op}: values finite`);
      t.ok(g.every(Number.isFinite), `${op}: derivatives finite`);
      const want = Float64Array.from(x, (v) => ref[op].f(v));
      const dwant = Float64Array.from(x, (v) => {
        const d = ref[op].df(v);
        return Number.isFinite(d) ? d : 0;
      });
      close(t, y, want, `${op}: values match float64`, 1e-6, 1e-5);
      close(t, g, dwant, `${op}: derivatives match float64`, 1e-6, 1e-4);
    }
  });
}
