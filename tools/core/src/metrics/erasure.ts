/**
 * The erasure measure of issue 20: how well a linear probe (multinomial
 * logistic regression) trained on held-out activations predicts a concept's
 * label, before and after an eraser. After a LEACE erasure it should sit at
 * chance (the majority class share) ± 3 points.
 *
 * The probe: features standardised on the training rows, full-batch gradient
 * descent on the mean cross-entropy + l2 · ‖W‖², float64, deterministic
 * (zero start, fixed steps). Accuracy is read on the test rows.
 */

export interface ProbeResult {
  /** Accuracy on the test rows. */
  accuracy: number;
  /** The majority class's share of the test rows (what a constant guess scores). */
  chance: number;
  /** Training accuracy (a probe that cannot fit its own rows says little). */
  trainAccuracy: number;
}

export interface ProbeOptions {
  steps?: number;
  lr?: number;
  l2?: number;
}

/** Fit on (Xtr, ytr), score on (Xte, yte); rows are d wide, labels 0..k−1. */
export function linearProbe(
  Xtr: Float64Array, ytr: ArrayLike<number>, Xte: Float64Array, yte: ArrayLike<number>, d: number, k: number, o: ProbeOptions = {},
): ProbeResult {
  const steps = o.steps ?? 300, lr = o.lr ?? 0.5, l2 = o.l2 ?? 1e-3;
  const ntr = ytr.length, nte = yte.length;
  if (Xtr.length !== ntr * d || Xte.length !== nte * d) throw new RangeError('linearProbe: activation and label counts disagree');
  const mean = new Float64Array(d), sd = new Float64Array(d);
  for (let i = 0; i < ntr; i++) for (let j = 0; j < d; j++) mean[j] += Xtr[i * d + j] / ntr;
  for (let i = 0; i < ntr; i++) for (let j = 0; j < d; j++) sd[j] += (Xtr[i * d + j] - mean[j]) ** 2 / ntr;
  for (let j = 0; j < d; j++) sd[j] = Math.sqrt(sd[j]) || 1;
  const norm = (X: Float64Array, n: number) => {
    const out = new Float64Array(n * d);
    for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) out[i * d + j] = (X[i * d + j] - mean[j]) / sd[j];
    return out;
  };
  const A = norm(Xtr, ntr), T = norm(Xte, nte);
  const W = new Float64Array(k * d), b = new Float64Array(k);
  const logits = (X: Float64Array, i: number, out: Float64Array) => {
    for (let c = 0; c < k; c++) {
      let s = b[c];
      for (let j = 0; j < d; j++) s += W[c * d + j] * X[i * d + j];
      out[c] = s;
    }
  };
  const z = new Float64Array(k), p = new Float64Array(k);
  const gW = new Float64Array(k * d), gb = new Float64Array(k);
  for (let step = 0; step < steps; step++) {
    gW.fill(0);
    gb.fill(0);
    for (let i = 0; i < ntr; i++) {
      logits(A, i, z);
      const m = Math.max(...z);
      let s = 0;
      for (let c = 0; c < k; c++) s += (p[c] = Math.exp(z[c] - m));
      for (let c = 0; c < k; c++) {
        const g = (p[c] / s - (ytr[i] === c ? 1 : 0)) / ntr;
        gb[c] += g;
        for (let j = 0; j < d; j++) gW[c * d + j] += g * A[i * d + j];
      }
    }
    for (let e = 0; e < k * d; e++) W[e] -= lr * (gW[e] + 2 * l2 * W[e]);
    for (let c = 0; c < k; c++) b[c] -= lr * gb[c];
  }
  const acc = (X: Float64Array, y: ArrayLike<number>, n: number) => {
    let ok = 0;
    for (let i = 0; i < n; i++) {
      logits(X, i, z);
      let best = 0;
      for (let c = 1; c < k; c++) if (z[c] > z[best]) best = c;
      if (best === y[i]) ok++;
    }
    return n ? ok / n : 0;
  };
  const counts = new Array<number>(k).fill(0);
  for (let i = 0; i < nte; i++) counts[yte[i]]++;
  return { accuracy: acc(T, yte, nte), chance: nte ? Math.max(...counts) / nte : 0, trainAccuracy: acc(A, ytr, ntr) };
}
