/**
 * Training recipes of trainLora (issue 17 §5): the DPO loss against finite
 * differences (through log-softmax of the logits, as trainLora applies it),
 * its value at known points, and the cosine learning-rate schedule.
 */
import t from 'tap';
import { gather, gradCheck, logSoftmax, sub } from '../src/tensor/index.js';
import { Rng } from '../src/util/random.js';
import { dpoLoss, lrAt } from '../src/edit/lora-train.js';

/** float64 reference: mean over rows of −log σ(β·((ls[c] − ls[r]) − ref)). */
function refDpo(x: Float64Array, rows: number, V: number, ch: number[], rj: number[], ref: number[], beta: number): number[] {
  let s = 0;
  for (let i = 0; i < rows; i++) {
    const row = x.subarray(i * V, (i + 1) * V);
    const mx = Math.max(...row);
    const lz = mx + Math.log(row.reduce((a, v) => a + Math.exp(v - mx), 0));
    const m = row[ch[i]] - lz - (row[rj[i]] - lz);
    const z = beta * (m - ref[i]);
    s += Math.log1p(Math.exp(-z));
  }
  return [s / rows];
}

t.test('DPO loss: autograd gradient matches central finite differences', async (t) => {
  const rng = new Rng(5);
  for (const [rows, V, beta, spread] of [[3, 7, 0.1, 1], [5, 11, 1, 3], [4, 6, 5, 2]] as const) {
    const data = Array.from({ length: rows * V }, () => spread * rng.normal());
    const ch = Array.from({ length: rows }, () => rng.int(V));
    const rj = ch.map((c) => (c + 1 + rng.int(V - 1)) % V);
    const ref = Array.from({ length: rows }, () => rng.normal());
    const r = gradCheck(
      ([x]) => {
        const ls = logSoftmax(x);
        return dpoLoss(sub(gather(ls, Int32Array.from(ch), 1), gather(ls, Int32Array.from(rj), 1)), Float32Array.from(ref), beta);
      },
      ([x]) => refDpo(x, rows, V, ch, rj, ref, beta),
      [{ data, shape: [rows, V] }],
    );
    t.ok(r.forwardError < 1e-5, `forward ${rows}×${V} β=${beta}: rel. error ${r.forwardError.toExponential(2)}`);
    t.ok(r.gradErrors[0] < 1e-3, `gradient ${rows}×${V} β=${beta}: rel. error ${r.gradErrors[0].toExponential(2)}`);
  }
});

t.test('DPO loss: log 2 at the reference, falls as the margin grows, never overflows', async (t) => {
  const { fromData } = await import('../src/tensor/index.js');
  const at = (m: number, ref: number, beta: number) => dpoLoss(fromData(Float32Array.of(m), [1]), Float32Array.of(ref), beta).item();
  t.ok(Math.abs(at(2, 2, 0.1) - Math.LN2) < 1e-6, 'margin = reference margin: −log σ(0) = log 2');
  t.ok(at(5, 0, 1) < at(1, 0, 1), 'a larger margin over the reference gives a smaller loss');
  t.ok(Math.abs(at(-200, 0, 1) - 200) < 1e-3, `a margin far below the reference: ≈ β·gap (got ${at(-200, 0, 1)})`);
  t.ok(at(200, 0, 1) >= 0 && at(200, 0, 1) < 1e-6, 'a margin far above: ≈ 0, finite');
});

t.test('lrAt: constant, and cosine with linear warmup', async (t) => {
  const o = { lr: 0.01, steps: 110, schedule: 'cosine' as const, warmupSteps: 10 };
  t.equal(lrAt(57, { lr: 0.01, steps: 110 }), 0.01, 'constant by default');
  t.ok(Math.abs(lrAt(0, o) - 0.001) < 1e-12, 'warmup starts at lr/warmup');
  t.ok(Math.abs(lrAt(9, o) - 0.01) < 1e-12, 'warmup reaches lr');
  t.ok(Math.abs(lrAt(10, o) - 0.01) < 1e-12, 'cosine starts at lr');
  t.ok(Math.abs(lrAt(60, o) - 0.005) < 1e-12, 'half the lr half-way through the decay');
  t.ok(lrAt(109, o) < 0.01 * 0.001, 'near 0 at the step cap');
  let prev = Infinity;
  for (let s = 10; s < 110; s++) {
    const v = lrAt(s, o);
    if (v > prev) t.fail(`not decreasing at step ${s}`);
    prev = v;
  }
  t.equal(lrAt(0, { ...o, warmupSteps: 0 }), 0.01, 'no warmup: cosine from lr');
});
