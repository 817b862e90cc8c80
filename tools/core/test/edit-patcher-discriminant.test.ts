/**
 * The patcher's closed-form gate (discriminantGate, what hypernet-gen's
 * last-token site places per fact) against a float64 computation written
 * here with plain loops: its direction solves (Σ_hard + Σ_all + 3·Σ_own +
 * ridge) w = μ_pos − μ_hard, its threshold and sharpness follow placeGate's
 * rule, and on made-up clusters it opens on the positives and on almost no
 * negatives.
 */
import t from 'tap';
import { discriminantGate, meanCov } from '../src/edit/patcher.js';
import { Rng } from '../src/util/random.js';

const H = 6;
const rng = new Rng(3);
const cluster = (n: number, mean: number[], sd: number) => {
  const X = new Float32Array(n * H);
  for (let r = 0; r < n; r++) for (let a = 0; a < H; a++) X[r * H + a] = mean[a] + sd * rng.normal() * (a === 0 ? 3 : 1);
  return X;
};
const neg = cluster(600, [0, 0, 0, 0, 0, 0], 1);
const hard = cluster(200, [1, 1, 0, 0, 0, 0], 0.5);
const pos = cluster(30, [1, 1, 5, 0, 0, 0], 0.3);

/** Mean and covariance (n − 1) by plain loops in float64. */
function stats(X: Float32Array): { mean: number[]; cov: number[][] } {
  const n = X.length / H;
  const mean = Array.from({ length: H }, (_, a) => { let s = 0; for (let r = 0; r < n; r++) s += X[r * H + a]; return s / n; });
  const cov = mean.map((_, a) => mean.map((__, b) => { let s = 0; for (let r = 0; r < n; r++) s += (X[r * H + a] - mean[a]) * (X[r * H + b] - mean[b]); return s / (n - 1); }));
  return { mean, cov };
}

t.test('the direction solves the ridged scatter against the mean difference; τ and κ follow the placement rule', async (t) => {
  const negScores = (w: Float32Array, b: number) => {
    const out: number[] = [];
    for (let r = 0; r < neg.length / H; r++) { let s = b; for (let a = 0; a < H; a++) s += w[a] * neg[r * H + a]; out.push(s); }
    return out;
  };
  const o = { gateSharpness: 4, gateQuantile: 0.99, hardShare: 0, gateMargin: 0.25, ownWeight: 3, ridge: 1e-3 };
  const g = discriminantGate(pos, H, meanCov(hard, H), meanCov(neg, H), negScores, new Float32Array(0), o);
  const sh = stats(hard), sn = stats(neg), sp = stats(pos);
  const S = sh.cov.map((row, a) => row.map((v, b) => v + sn.cov[a][b] + 3 * sp.cov[a][b]));
  const ridge = (1e-3 * S.reduce((s, row, a) => s + row[a], 0)) / H;
  let worst = 0;
  for (let a = 0; a < H; a++) {
    let lhs = ridge * g.w[a];
    for (let b = 0; b < H; b++) lhs += S[a][b] * g.w[b];
    worst = Math.max(worst, Math.abs(lhs - (sp.mean[a] - sh.mean[a])));
  }
  t.ok(worst < 1e-4, `(Σ + λI) w − (μ_p − μ_h): max ${worst.toExponential(2)}`);
  // b puts the hard negatives' mean at score 0
  let atHard = g.b;
  for (let a = 0; a < H; a++) atHard += g.w[a] * sh.mean[a];
  t.ok(Math.abs(atHard) < 1e-4, 'score 0 at the hard negatives\' mean');
  // placement: τ a quarter of the way from the negatives' 0.99 quantile to the positives' 10th percentile; κ puts the mean positive at 4
  const ns = negScores(g.w, g.b).sort((p, q) => p - q);
  const ps = (() => { const s: number[] = []; for (let r = 0; r < pos.length / H; r++) { let v = g.b; for (let a = 0; a < H; a++) v += g.w[a] * pos[r * H + a]; s.push(v); } return s.sort((p, q) => p - q); })();
  const q = ns[Math.floor(0.99 * ns.length)];
  const low = ps[Math.floor(0.1 * (ps.length - 1))];
  const mean = ps.reduce((s, v) => s + v, 0) / ps.length;
  t.ok(Math.abs(g.tau - (q + 0.25 * (low - q))) < 1e-4, `τ ${g.tau.toFixed(4)}`);
  t.ok(Math.abs(g.kappa * (mean - g.tau) - 4) < 1e-4, `κ(mean positive − τ) = ${(g.kappa * (mean - g.tau)).toFixed(4)}`);
  // the clusters: the positives differ from the hard negatives in one direction only
  t.ok(ps.filter((v) => v > g.tau).length >= 0.9 * ps.length, 'open on the positives');
  t.ok(g.leaks <= 0.01 * ns.length, `open on ${g.leaks} of ${ns.length} negatives`);
  let hardOpen = 0;
  for (let r = 0; r < hard.length / H; r++) { let v = g.b; for (let a = 0; a < H; a++) v += g.w[a] * hard[r * H + a]; if (v > g.tau) hardOpen++; }
  t.ok(hardOpen <= 2, `open on ${hardOpen} of ${hard.length / H} hard negatives`);
});
