/**
 * The last-token site: H writes the value of one gated neuron of the last
 * layer's MLP, read at the prompt's last token (lora-train's patcher, whose
 * gate and value this generates instead of fitting).
 *
 * Why: at the subject of an early layer (the subject site, features.ts) a
 * rank-one δA answers every key a little, and the δ a fact needs there is
 * large, so one edit moved other facts (kl 0.43 a fact, README). At the last
 * token of the last layer the MLP's input already holds subject and
 * relation together, a neuron's threshold keeps the edit silent elsewhere,
 * and the value writes straight into the prediction (what the patcher found
 * for lora-train).
 *
 * Per fact, from one batched forward of its phrasings × context prefixes:
 *  - the gate, in closed form (Fisher's discriminant, core's
 *    discriminantGate): w = Σ⁻¹(μ_p − μ_r), μ_p the mean of the MLP input at
 *    the rows' last token, μ_r that of the relation's known facts (stored in
 *    H, per relation), Σ the relation's scatter + every position's + 3 × the
 *    fact's own (its phrasings must all open it); the threshold placed as
 *    the patcher places it, over a sample of negative positions stored in H
 *    (the fact's own subject and relation left out);
 *  - z = [x̄, h̄, e_t] (unit RMS each): the MLP input at the last token, the
 *    residual there after the last layer (what the model is about to say),
 *    the target's first-token embedding; the value u = ‖m‖·H(z), m the MLP
 *    output there;
 *  - the adapter (core's patchUnitsAdapter): the least-used neuron of the
 *    layer repurposed to κ(w·x + b − τ), writing u.
 *
 * Training runs through the same code as the subject site (train.ts): the
 * edit's effect at every position is s·u with s the gate's activation there,
 * added at the last layer's MLP output, which is exactly the adapter (the
 * neuron's input does not depend on its own weights); the repurposed
 * neuron's old output (the least used: ~0.1% of the layer's output energy)
 * is not modelled.
 */
import { Tensor, fromData, matmul, noGrad } from '@catechism/core/tensor';
import type { CausalLM, Hooks, Tokenizer } from '@catechism/core/models';
import {
  discriminantGate, knownEntities, meanCov, mlpInputHooks, mlpNormedFrom, mlpNormedInputs, neuronUse, padBatch, padId, patchUnits, phrasingsOf, pickPrefixes,
  unitWeights, type EditFact, type NeuronGate, type Rec, type TemplateBank,
} from '@catechism/core/edit';
import { Rng } from '@catechism/core/random';
import { editRow, rmsNormed, type Row } from './features.js';

/** Gate settings (the patcher's, for up to 30 facts a batch) and the discriminant's own. */
export interface GateSettings {
  sharpness: number;
  quantile: number;
  margin: number;
  /** Weight of the fact's own scatter (over its phrasings × prefixes) in Σ. */
  ownWeight: number;
  /** ridge × mean(diag Σ). */
  ridge: number;
}

/**
 * margin 0.75 (the patcher's rule above 30 facts): on the tuning requests 1–20 one adapter each, kl 0.019 → 0.005 against 0.25,
 * paraphrase 94.6 → 92.9%, efficacy 100% both; 1–10 in one adapter kl 0.22 → 0.08; at 1 efficacy falls to 55% (README).
 */
export const GATE_DEFAULTS: GateSettings = { sharpness: 4, quantile: 0.999, margin: 0.75, ownWeight: 3, ridge: 1e-3 };

/** What H carries to place a gate without a corpus: statistics of the negatives, per relation and overall. */
export interface GateStats {
  settings: GateSettings;
  negMean: Float64Array;
  negCov: Float64Array;
  relations: string[];
  relMean: Float64Array[];
  relCov: Float64Array[];
  /** A uniform sample of negative positions [n, H], and per row its subject and relation (index; −1: general text). */
  sample: Float32Array;
  sampleSubject: Int32Array;
  sampleRelation: Int32Array;
  subjects: string[];
  /** Context prefixes of the phrasings (the gate's positives: its wording with text before it). */
  prefixes: string[];
  /** The layer's neurons, least used first. */
  neurons: number[];
}

/**
 * The gate statistics at layer `l`: every position of every known fact's
 * phrasings and of `docs` general-text documents are the negatives; the last
 * tokens of each relation's phrasings give its mean and scatter.
 */
export function gateStats(
  model: CausalLM, tok: Tokenizer, known: readonly Rec[], corpus: readonly string[], templates: TemplateBank | null, l: number,
  o: { docs: number; sample: number; prefixes: number; seed: number; settings: GateSettings }, log: (m: string) => void,
): GateStats {
  const H = model.config.hidden;
  const facts = known.filter((k) => typeof k.prompt === 'string' && typeof k.subject === 'string' && typeof k.relation === 'string');
  const subjects = [...new Set(facts.map((k) => k.subject as string))];
  const relations = [...new Set(facts.map((k) => k.relation as string))];
  const rows: Array<{ ids: number[]; subject: number; relation: number }> = [];
  for (const k of facts) {
    for (const text of phrasingsOf(k, templates)) {
      const ids = tok.encode(text);
      if (ids.length) rows.push({ ids, subject: subjects.indexOf(k.subject as string), relation: relations.indexOf(k.relation as string) });
    }
  }
  const knownRows = rows.length;
  const docs = new Rng(o.seed + 7).shuffle(corpus.slice()).slice(0, o.docs).map((d) => tok.encode(d).slice(0, Math.min(64, model.config.maxPositions))).filter((r) => r.length > 0);
  for (const ids of docs) rows.push({ ids, subject: -1, relation: -1 });
  log(`gate statistics: ${knownRows} known-fact phrasings and ${docs.length} documents at layer ${l}`);
  const { X, offsets } = mlpNormedInputs(model, l, rows.map((r) => r.ids));
  const { mean: negMean, cov: negCov } = meanCov(X, H);
  const relMean: Float64Array[] = [];
  const relCov: Float64Array[] = [];
  relations.forEach((_, ri) => {
    const at = rows.slice(0, knownRows).flatMap((r, i) => (r.relation === ri ? [offsets[i] + r.ids.length - 1] : []));
    const R = new Float32Array(at.length * H);
    at.forEach((p, k) => R.set(X.subarray(p * H, (p + 1) * H), k * H));
    const st = at.length >= 2 ? meanCov(R, H) : { mean: negMean, cov: negCov };
    relMean.push(st.mean);
    relCov.push(st.cov);
  });
  // the threshold's negatives: a uniform sample of every position, each with its row's subject and relation
  const total = X.length / H;
  const rowOf = new Int32Array(total);
  rows.forEach((r, i) => rowOf.fill(i, offsets[i], offsets[i] + r.ids.length));
  const picked = new Rng(o.seed + 11).shuffle(Array.from({ length: total }, (_, i) => i)).slice(0, Math.min(o.sample, total)).sort((a, b) => a - b);
  const sample = new Float32Array(picked.length * H);
  picked.forEach((p, k) => sample.set(X.subarray(p * H, (p + 1) * H), k * H));
  const prefixes = pickPrefixes(corpus, o.prefixes, o.seed, knownEntities(known));
  // neuron use over the known facts' phrasings (as the patcher ranks them)
  const neurons = neuronUse(model, l, X.subarray(0, (offsets[knownRows] ?? total) * H)).slice(0, 256);
  return {
    settings: o.settings, negMean, negCov, relations, relMean, relCov, sample, subjects, prefixes, neurons,
    sampleSubject: Int32Array.from(picked, (p) => rows[rowOf[p]].subject),
    sampleRelation: Int32Array.from(picked, (p) => rows[rowOf[p]].relation),
  };
}

/** The gate of a fact from its positives P [n, H] (the MLP input at its rows' last token). */
export function lastGate(st: GateStats, P: Float32Array, subject: string, relation: string | undefined): NeuronGate {
  const H = st.negMean.length;
  const ri = relation === undefined ? -1 : st.relations.indexOf(relation);
  const si = st.subjects.indexOf(subject);
  const rel = ri >= 0 ? { mean: st.relMean[ri], cov: st.relCov[ri] } : { mean: st.negMean, cov: st.negCov };
  const n = st.sample.length / H;
  const negScoresOf = (w: Float32Array, b: number) => {
    const s = noGrad(() => matmul(fromData(st.sample, [n, H]), fromData(w, [H, 1]))).data;
    const out: number[] = [];
    for (let m = 0; m < n; m++) if (!(si >= 0 && st.sampleSubject[m] === si && st.sampleRelation[m] === ri)) out.push(s[m] + b);
    return out;
  };
  const g = st.settings;
  return discriminantGate(P, H, rel, { mean: st.negMean, cov: st.negCov }, negScoresOf, new Float32Array(0), {
    gateSharpness: g.sharpness, gateQuantile: g.quantile, gateMargin: g.margin, hardShare: 0, ownWeight: g.ownWeight, ridge: g.ridge,
  });
}

/** The neuron's activation function at pre-activation p (GPT-2's tanh GELU; SwiGLU's SiLU with the up row held at 1). */
export function neuronAct(model: CausalLM, l: number): (p: number) => number {
  if (patchUnits(model, l)[0].upMod) return (p) => p / (1 + Math.exp(-p));
  return (p) => 0.5 * p * (1 + Math.tanh(0.7978845608028654 * (p + 0.044715 * p * p * p)));
}

/** A fact's phrasings, each also after every context prefix (the gate must open whatever came before). */
export function prefixedRows(tok: Tokenizer, fact: EditFact, phrasings: readonly string[], prefixes: readonly string[]): { rows: Row[]; plain: boolean[] } {
  const rows: Row[] = [];
  const plain: boolean[] = [];
  for (const p of phrasings) {
    for (const pre of ['', ...prefixes]) {
      rows.push(editRow(tok, fact, pre ? `${pre} ${p}` : p));
      plain.push(!pre);
    }
  }
  return { rows, plain };
}

export interface LastFeatures {
  z: Float32Array;
  /** ‖m‖: the MLP output's norm at the last token (mean over the plain phrasings): u's scale. */
  oRms: number;
  gate: NeuronGate;
  /** Per row, the gate's activation at every position (training: the edit there is s·u). */
  s: Float32Array[];
}

/**
 * One forward of the fact's rows (the first `nKey` are its phrasings × prefixes,
 * `plain[i]` for those without a prefix; the rest, e.g. keep prompts, only
 * get s): the gate from the phrasings' last tokens, z, and s per position.
 */
export function featurizeLast(
  model: CausalLM, st: GateStats, subject: string, relation: string | undefined, targetId: number, rows: readonly Row[], nKey: number, plain: readonly boolean[],
): LastFeatures {
  const H = model.config.hidden;
  const l = model.config.layers - 1;
  const lastOf = (r: Row) => (r.targets.length ? r.targets[0][0] : r.ids.length - 1);
  const xBar = new Float64Array(H);
  const hBar = new Float64Array(H);
  const mBar = new Float64Array(H);
  let x: Float32Array = new Float32Array(0);
  let T = 0;
  const P = new Float32Array(nKey * H);
  noGrad(() => {
    const b = padBatch(rows.map((r) => r.ids), padId(model));
    T = b.T;
    const into: { resid?: Tensor; attn?: Tensor } = {};
    let mlp: Tensor | null = null;
    let post: Tensor | null = null;
    const extra: Hooks = { [`layers.${l}.mlp`]: { capture: (t) => (mlp = t) }, [`layers.${l}.resid_post`]: { capture: (t) => (post = t) } };
    model.forward(b.ids, [rows.length, T], { attentionMask: b.mask, skipLogits: true, hooks: mlpInputHooks(l, into, extra) });
    x = mlpNormedFrom(model, l, into.resid!, into.attn!).data;
    const md = (mlp as unknown as Tensor).data;
    const hd = (post as unknown as Tensor).data;
    const nPlain = plain.slice(0, nKey).filter(Boolean).length || nKey;
    for (let r = 0; r < nKey; r++) {
      const p = r * T + lastOf(rows[r]);
      P.set(x.subarray(p * H, (p + 1) * H), r * H);
      if (!(plain[r] || nPlain === nKey)) continue;
      for (let a = 0; a < H; a++) {
        xBar[a] += x[p * H + a] / nPlain;
        hBar[a] += hd[p * H + a] / nPlain;
        mBar[a] += md[p * H + a] / nPlain;
      }
    }
  });
  const gate = lastGate(st, P, subject, relation);
  const act = neuronAct(model, l);
  const s = rows.map((r, i) => {
    const out = new Float32Array(r.ids.length);
    for (let t = 0; t < r.ids.length; t++) {
      let sc = gate.b;
      const p = (i * T + t) * H;
      for (let a = 0; a < H; a++) sc += gate.w[a] * x[p + a];
      out[t] = act(gate.kappa * (sc - gate.tau));
    }
    return out;
  });
  let m2 = 0;
  for (const v of mBar) m2 += v * v;
  const emb = model.weight(`${model.arch.tokenEmbedding}.weight`).data.subarray(targetId * H, (targetId + 1) * H);
  const z = new Float32Array(3 * H);
  rmsNormed(xBar, z, 0);
  rmsNormed(hBar, z, H);
  rmsNormed(emb, z, 2 * H);
  return { z, oRms: Math.sqrt(m2), gate, s };
}

/** The layer's unit (input/output projections) for the adapter. */
export function lastUnits(model: CausalLM): ReturnType<typeof unitWeights>[] {
  const l = model.config.layers - 1;
  return patchUnits(model, l).map((u) => unitWeights(model, u));
}
