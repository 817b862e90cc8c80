/**
 * The erasure probe's reading (metrics/erasure.ts): cross-fitted over two
 * halves, every row read once, and a permutation null beside it. On data
 * made here: two Gaussian classes that differ along one axis are read far
 * above chance, the same rows with the difference removed are not, and the
 * null reads near chance either way.
 */
import t from 'tap';
import { crossFittedProbe, erasureProbeMetrics, linearProbe, type ProbeRows } from '../src/metrics/erasure.js';
import { Rng } from '../src/util/random.js';

const d = 8, perClass = 60;
const rng = new Rng(3);
// rows alternate halves; class c has mean shift `sep` on axis 0
const make = (sep: number) => {
  const rows: { x: number[]; y: number }[] = [];
  for (let i = 0; i < perClass; i++) for (let c = 0; c < 2; c++) rows.push({ x: Array.from({ length: d }, (_, j) => rng.normal() + (j === 0 ? c * sep : 0)), y: c });
  const half = (h: number) => rows.filter((_, i) => i % 4 === h || i % 4 === h + 1);
  const pack = (rs: typeof rows) => ({ X: Float64Array.from(rs.flatMap((r) => r.x)), y: Int32Array.from(rs, (r) => r.y) });
  return [pack(half(0)), pack(half(2))] as const;
};

t.test('crossFittedProbe: each half read by the probe of the other, weighted by rows', async (t) => {
  const [a, b] = make(3);
  const r = crossFittedProbe(a.X, a.y, b.X, b.y, d, 2);
  const ab = linearProbe(a.X, a.y, b.X, b.y, d, 2), ba = linearProbe(b.X, b.y, a.X, a.y, d, 2);
  t.equal(r.n, a.y.length + b.y.length);
  t.ok(Math.abs(r.accuracy - (ab.accuracy * b.y.length + ba.accuracy * a.y.length) / r.n) < 1e-12, 'the rows-weighted mean of the two readings');
  t.ok(r.accuracy > 0.85, `separated classes read far above chance (${r.accuracy.toFixed(3)})`);
  t.equal(r.chance, 0.5);
});

t.test('erasureProbeMetrics: the concept read before, gone after, and the null near chance', async (t) => {
  const [a, b] = make(3);
  // "the adapter" removes axis 0 (where the classes differ)
  const erase = (X: Float64Array) => X.map((v, i) => (i % d === 0 ? 0 : v));
  const prompts = (n: number, h: string) => Array.from({ length: n }, (_, i) => `${h}${i}`);
  const rows: ProbeRows = {
    train: { prompts: prompts(a.y.length, 'a'), labels: a.y }, test: { prompts: prompts(b.y.length, 'b'), labels: b.y }, classes: ['x', 'y'],
  };
  const capture = (ps: readonly string[], adapted: boolean) => {
    const X = ps[0].startsWith('a') ? a.X : b.X;
    return adapted ? erase(X) : X;
  };
  const m = erasureProbeMetrics(rows, d, capture);
  t.ok(m.erasure_probe_acc_before > 0.85, `before ${m.erasure_probe_acc_before.toFixed(3)}`);
  t.ok(m.erasure_probe_gap < 0.15, `after, near chance (${m.erasure_probe_gap.toFixed(3)})`);
  t.ok(m.erasure_probe_null_gap < 0.15, `the null near chance (${m.erasure_probe_null_gap.toFixed(3)})`);
  t.ok(Math.abs(m.erasure_probe_gap_se - Math.sqrt((m.erasure_probe_acc * (1 - m.erasure_probe_acc)) / 120)) < 1e-12, 'binomial se over the 120 rows');
  t.equal(m.n_erasure_probe, 120);
  t.same(erasureProbeMetrics(rows, d, capture), m, 'deterministic');
  // without the erasure the after-reading is the before-reading, far from chance, and the null is not
  const kept = erasureProbeMetrics(rows, d, (ps) => capture(ps, false));
  t.ok(kept.erasure_probe_gap > 0.35 && kept.erasure_probe_null_gap < 0.15, `kept: gap ${kept.erasure_probe_gap.toFixed(3)}, null ${kept.erasure_probe_null_gap.toFixed(3)}`);
});
