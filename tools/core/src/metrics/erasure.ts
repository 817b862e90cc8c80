/**
 * The erasure measure of issue 20: how well a linear probe (multinomial
 * logistic regression) trained on held-out activations predicts a concept's
 * label, before and after an eraser. After a LEACE erasure it should sit at
 * chance (the majority class share) ± 3 points.
 *
 * The probe: features standardised on the training rows, full-batch gradient
 * descent on the mean cross-entropy + l2 · ‖W‖², float64, deterministic
 * (zero start, fixed steps). Accuracy is read on the test rows.
 *
 * validate cross-fits it over two halves of the held-out examples and reads a
 * permutation null beside it: on 219 rows one split's accuracy moved by 0.12
 * between the two halves (0.065 one way, 0.18 the other, world relation
 * concept), and a probe given shuffled labels read |acc − chance| 0.041 on
 * average, more than the 0.03 gate (tools/validate/README.md, erasure).
 */
import { lastTokenActivations } from '../edit/model-util.js';
import { Rng } from '../util/random.js';

/** The activation at a hook site at each prompt's last token (edit/model-util.ts), for the erasure probe. */
export { lastTokenActivations };

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

/** A probe fitted on training rows: the predicted class of each row of X (n rows, d wide). */
export interface FittedProbe {
  predict(X: Float64Array, n: number): Int32Array;
  /** Accuracy on its own training rows. */
  trainAccuracy: number;
}

/** Fit the probe on (Xtr, ytr): rows d wide, labels 0..k−1. */
export function fitLinearProbe(Xtr: Float64Array, ytr: ArrayLike<number>, d: number, k: number, o: ProbeOptions = {}): FittedProbe {
  const steps = o.steps ?? 300, lr = o.lr ?? 0.5, l2 = o.l2 ?? 1e-3;
  const ntr = ytr.length;
  if (Xtr.length !== ntr * d) throw new RangeError('linearProbe: activation and label counts disagree');
  const mean = new Float64Array(d), sd = new Float64Array(d);
  for (let i = 0; i < ntr; i++) for (let j = 0; j < d; j++) mean[j] += Xtr[i * d + j] / ntr;
  for (let i = 0; i < ntr; i++) for (let j = 0; j < d; j++) sd[j] += (Xtr[i * d + j] - mean[j]) ** 2 / ntr;
  for (let j = 0; j < d; j++) sd[j] = Math.sqrt(sd[j]) || 1;
  const norm = (X: Float64Array, n: number) => {
    const out = new Float64Array(n * d);
    for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) out[i * d + j] = (X[i * d + j] - mean[j]) / sd[j];
    return out;
  };
  const A = norm(Xtr, ntr);
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
  const classify = (Xn: Float64Array, n: number) => {
    const out = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      logits(Xn, i, z);
      let best = 0;
      for (let c = 1; c < k; c++) if (z[c] > z[best]) best = c;
      out[i] = best;
    }
    return out;
  };
  const own = classify(A, ntr);
  let ok = 0;
  for (let i = 0; i < ntr; i++) if (own[i] === ytr[i]) ok++;
  return {
    predict(X: Float64Array, n: number) {
      if (X.length !== n * d) throw new RangeError('linearProbe: activation and label counts disagree');
      return classify(norm(X, n), n);
    },
    trainAccuracy: ntr ? ok / ntr : 0,
  };
}

/** Fit on (Xtr, ytr), score on (Xte, yte); rows are d wide, labels 0..k−1. */
export function linearProbe(
  Xtr: Float64Array, ytr: ArrayLike<number>, Xte: Float64Array, yte: ArrayLike<number>, d: number, k: number, o: ProbeOptions = {},
): ProbeResult {
  const nte = yte.length;
  if (Xte.length !== nte * d) throw new RangeError('linearProbe: activation and label counts disagree');
  const probe = fitLinearProbe(Xtr, ytr, d, k, o);
  const pred = probe.predict(Xte, nte);
  let ok = 0;
  const counts = new Array<number>(k).fill(0);
  for (let i = 0; i < nte; i++) {
    if (pred[i] === yte[i]) ok++;
    counts[yte[i]]++;
  }
  return { accuracy: nte ? ok / nte : 0, chance: nte ? Math.max(...counts) / nte : 0, trainAccuracy: probe.trainAccuracy };
}

/** validate's erasure metrics (spread into METRICS, gates.ts). */
export const ERASURE_METRICS = {
  erasure_probe_acc: { describe: 'held-out `concept` records (split test), cross-fitted: a linear probe trained on one half reads the other and the other way round, every row read once; accuracy at the erased site, with the adapter' },
  erasure_probe_acc_before: { describe: 'the same probe on the base model\'s activations' },
  erasure_probe_chance: { describe: 'the majority label\'s share of the probe\'s rows (a constant guess)' },
  erasure_probe_gap: { describe: '|erasure_probe_acc − erasure_probe_chance|: how far the probe is from chance after erasure', gate: { op: '<=' as const, value: 0.03 } },
  erasure_probe_gap_se: { describe: 'standard error of erasure_probe_acc (binomial over the rows read)' },
  erasure_probe_null_gap: { describe: 'the mean |accuracy − chance| of the same cross-fitted probe on the adapted activations with the labels permuted (8 seeded permutations): what a probe reads where nothing is left to read, the floor of erasure_probe_gap on this many rows' },
  n_erasure_probe: { describe: 'concept records the erasure probe used (both halves)' },
};

/**
 * The probe cross-fitted on two halves: fitted on the first and read on the
 * second, and the other way round, so every row is read once, by a probe
 * that never saw it. Half the variance of one split, and no dependence on
 * which half happened to train.
 */
export function crossFittedProbe(
  X1: Float64Array, y1: ArrayLike<number>, X2: Float64Array, y2: ArrayLike<number>, d: number, k: number, o: ProbeOptions = {},
): { accuracy: number; chance: number; n: number } {
  const a = linearProbe(X1, y1, X2, y2, d, k, o), b = linearProbe(X2, y2, X1, y1, d, k, o);
  const n1 = y1.length, n2 = y2.length, n = n1 + n2;
  const counts = new Array<number>(k).fill(0);
  for (let i = 0; i < n1; i++) counts[y1[i]]++;
  for (let i = 0; i < n2; i++) counts[y2[i]]++;
  return { accuracy: n ? (a.accuracy * n2 + b.accuracy * n1) / n : 0, chance: n ? Math.max(...counts) / n : 0, n };
}

/** How many label permutations the null reading averages (erasure_probe_null_gap). */
export const ERASURE_NULL_PERMUTATIONS = 8;
/**
 * validate's steering metrics (issue 20, CAA): a steering adapter should move
 * the held-out prompts of the other side toward its side, as the model reads
 * them downstream. A probe trained on the base model's activations (the train
 * half of the held-out `concept` records) reads the test half before and with
 * the adapter; the share of the other side's prompts it calls the steered-to
 * side is the behaviour measure.
 */
export const STEER_METRICS = {
  steer_toward: { describe: 'steering adapters: share of held-out prompts of the other label that a probe trained on base activations (read downstream, default the last layer\'s residual stream) assigns to the steered-to label, with the adapter' },
  steer_toward_before: { describe: 'the same share on the base model' },
  steer_shift: { describe: 'steer_toward − steer_toward_before: how far the adapter moves the other side toward the steered-to one', gate: { op: '>=' as const, value: 0.5 } },
  steer_kept: { describe: 'share of held-out prompts of the steered-to label the probe still assigns to it with the adapter' },
  n_steer_probe: { describe: 'concept records the steering probe used (train + test halves)' },
};

/** One labelled example of a concept, as validate reads it (records/schema.ts `concept`). */
export interface ConceptLike {
  concept: string;
  prompt: string;
  label: string;
  split?: string;
}

export interface ProbeRows {
  /** The probe's train and test prompts, with labels 0..k−1. */
  train: { prompts: string[]; labels: Int32Array };
  test: { prompts: string[]; labels: Int32Array };
  classes: string[];
}

/**
 * The probe's rows from a concept's held-out (`split: test`) examples: per
 * label, alternately to the probe's train and test halves (deterministic, in
 * input order). Null when a label has fewer than 2 examples or there are
 * fewer than 2 labels.
 */
export function erasureProbeRows(records: readonly ConceptLike[], concept: string): ProbeRows | null {
  // one row per (prompt, label): a pipe can carry the same records twice (lora-train passes them through)
  const seen0 = new Set<string>();
  const rows = records.filter((r) => {
    if (r.concept !== concept || r.split !== 'test') return false;
    const key = `${r.prompt}\u0000${r.label}`;
    if (seen0.has(key)) return false;
    seen0.add(key);
    return true;
  });
  const classes = [...new Set(rows.map((r) => String(r.label)))].sort();
  if (classes.length < 2) return null;
  const seen = new Map<string, number>();
  const tr: { p: string; y: number }[] = [], te: { p: string; y: number }[] = [];
  for (const r of rows) {
    const n = seen.get(r.label) ?? 0;
    seen.set(r.label, n + 1);
    (n % 2 === 0 ? tr : te).push({ p: r.prompt, y: classes.indexOf(String(r.label)) });
  }
  if ([...seen.values()].some((n) => n < 2)) return null;
  return {
    train: { prompts: tr.map((x) => x.p), labels: Int32Array.from(tr, (x) => x.y) },
    test: { prompts: te.map((x) => x.p), labels: Int32Array.from(te, (x) => x.y) },
    classes,
  };
}

/**
 * The erasure measure: the probe trained and read on `capture`'s activations
 * (d wide) of the rows, once on the base model and once with the adapter;
 * `capture(prompts, adapted)` reads the site. Returns ERASURE_METRICS.
 */
export function erasureProbeMetrics(
  rows: ProbeRows, d: number, capture: (prompts: readonly string[], adapted: boolean) => Float64Array, o: ProbeOptions = {},
): Record<string, number> {
  const k = rows.classes.length;
  const y1 = rows.train.labels, y2 = rows.test.labels;
  const read = (adapted: boolean) => [capture(rows.train.prompts, adapted), capture(rows.test.prompts, adapted)] as const;
  const base = read(false), adapted = read(true);
  const before = crossFittedProbe(base[0], y1, base[1], y2, d, k, o);
  const after = crossFittedProbe(adapted[0], y1, adapted[1], y2, d, k, o);
  // the null: the same probe on the same activations, labels shuffled across both halves (seeded, fixed)
  const rng = new Rng(0x5eed);
  const all = Int32Array.from([...y1, ...y2]);
  let nullGap = 0;
  for (let p = 0; p < ERASURE_NULL_PERMUTATIONS; p++) {
    const perm = Int32Array.from(rng.shuffle([...all]));
    const r = crossFittedProbe(adapted[0], perm.subarray(0, y1.length), adapted[1], perm.subarray(y1.length), d, k, o);
    nullGap += Math.abs(r.accuracy - r.chance) / ERASURE_NULL_PERMUTATIONS;
  }
  return {
    erasure_probe_acc: after.accuracy,
    erasure_probe_acc_before: before.accuracy,
    erasure_probe_chance: after.chance,
    erasure_probe_gap: Math.abs(after.accuracy - after.chance),
    erasure_probe_gap_se: Math.sqrt((after.accuracy * (1 - after.accuracy)) / Math.max(1, after.n)),
    erasure_probe_null_gap: nullGap,
    n_erasure_probe: after.n,
  };
}

/**
 * The steering measure (STEER_METRICS): the probe is fitted on the base
 * model's activations of the train half only, so it reads the adapted test
 * half as the unsteered model would; `toward` is the steered-to class index.
 */
export function steerProbeMetrics(
  rows: ProbeRows, d: number, capture: (prompts: readonly string[], adapted: boolean) => Float64Array, toward: number, o: ProbeOptions = {},
): Record<string, number> {
  const probe = fitLinearProbe(capture(rows.train.prompts, false), rows.train.labels, d, rows.classes.length, o);
  const n = rows.test.prompts.length;
  const before = probe.predict(capture(rows.test.prompts, false), n);
  const after = probe.predict(capture(rows.test.prompts, true), n);
  let away = 0, movedBefore = 0, movedAfter = 0, own = 0, kept = 0;
  for (let i = 0; i < n; i++) {
    if (rows.test.labels[i] === toward) {
      own++;
      if (after[i] === toward) kept++;
    } else {
      away++;
      if (before[i] === toward) movedBefore++;
      if (after[i] === toward) movedAfter++;
    }
  }
  const share = (a: number, b: number) => (b ? a / b : NaN);
  return {
    steer_toward: share(movedAfter, away),
    steer_toward_before: share(movedBefore, away),
    steer_shift: share(movedAfter, away) - share(movedBefore, away),
    steer_kept: share(kept, own),
    n_steer_probe: rows.train.prompts.length + n,
  };
}
