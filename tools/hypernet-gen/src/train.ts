/**
 * Training H end to end through the frozen model: for a minibatch of
 * training edits, H gives each fact's δ; the edited model (MLP output at
 * the edit layer + s·δ at every position, s = A·k per fact — the rank-one
 * LoRA each fact's adapter will be) is run on the facts' training
 * phrasings (target NLL) and on prompts it must keep (KL to the base model's
 * next-token distribution: other subjects of the relation, those sharing a
 * word of the subject first, and known facts of other relations). Gradients
 * flow through the model into H only.
 *
 * Adam with a cosine schedule, state kept in a checkpoint (weights, moments,
 * step), so `--resume` continues exactly where the run stopped: the order
 * of facts is a function of (seed, epoch), never of a running generator.
 */
import * as fs from 'node:fs';
import { Tensor, add, crossEntropy, fromData, klDiv, matmul, mean, noGrad, reshape, scale, slice, square, sum } from '@catechism/core/tensor';
import type { CausalLM, Tokenizer } from '@catechism/core/models';
import { readSafetensors, serializeSafetensors, writeFileAtomic } from '@catechism/core/models';
import {
  cholesky, dataSha256, keyStatsCached, knownFactRetainPrompts, mlpOutModule, padBatch, padId, romeKeepPrompts, type EditFact, type Rec, type TemplateBank,
} from '@catechism/core/edit';
import { Rng } from '@catechism/core/random';
import { UsageError } from '@catechism/core/records';
import { HyperNet, saveHyper, type HyperConfig, type HyperShape, type ZPart } from './hypernet.js';
import { FactError, editRow, factPhrasings, featurize, type Row } from './features.js';
import { GATE_DEFAULTS, featurizeLast, gateStats, prefixedRows, type GateSettings, type GateStats } from './last-site.js';

export interface TrainOptions {
  /** Where the edit is written: the subject (rank-one δA at `layer`) or the prompt's last token (a gated neuron of the last layer). */
  site: 'subject' | 'last';
  layer: number;
  width: number;
  z: ZPart[];
  steps: number;
  /** Facts per step. */
  factsPerStep: number;
  lr: number;
  warmup: number;
  /** Weight of the KL on keep prompts. */
  klWeight: number;
  /** Weight of ‖δ/‖o‖‖² (mean over the step's facts). */
  l2Weight: number;
  /** Keep prompts per fact: the relation's other subjects (shared words first)… */
  keepSame: number;
  /** …and known facts of other subjects, any relation. */
  keepOther: number;
  /** Phrasings per fact for k* and the NLL. */
  phrasings: number;
  /**
   * Known-fact prompts (training phrasings) mixed into the key statistics'
   * text, one for every corpus document, up to this many (0: the corpus
   * alone, as ROME). A = C⁻¹k* ÷ (k*ᵀC⁻¹k*) minimises E[(A·k)²] over the keys C
   * is taken from: over fact prompts, that is the edit's reach into other facts.
   */
  statsFacts: number;
  /** ridge · mean(diag C) added to C. */
  ridge: number;
  /** site 'last': the gates' settings, documents behind their statistics, the stored negative sample's size, context prefixes. */
  gate: GateSettings;
  gateDocs: number;
  gateSample: number;
  prefixes: number;
  statsTokens: number;
  seed: number;
}

export const TRAIN_DEFAULTS: Omit<TrainOptions, 'layer' | 'seed'> = {
  site: 'last',
  gate: GATE_DEFAULTS,
  gateDocs: 300,
  gateSample: 8192,
  prefixes: 5,
  width: 256,
  z: ['key', 'out', 'target'],
  steps: 500,
  factsPerStep: 16,
  lr: 3e-3,
  warmup: 20,
  klWeight: 1,
  l2Weight: 0.01,
  keepSame: 5,
  keepOther: 2,
  phrasings: 5,
  ridge: 1e-3,
  statsTokens: 20000,
  statsFacts: 0,
};

export interface TrainResources {
  model: CausalLM;
  tokenizer: Tokenizer;
  modelName: string;
  modelSha: string;
  templates: TemplateBank | null;
  corpus: string[];
  known: Rec[];
  statsCache?: string;
}

/** A training edit made ready: z, scale, its rows, s per row, base logits of its keep rows. */
interface Prepared {
  z: Float32Array;
  oRms: number;
  edit: Row[];
  keep: Row[];
  s: Float32Array[];
  keepBase: Float32Array;
}

/** Counterfactual training edits from known facts: another object of the same relation, never a held-out subject. */
export function counterfactuals(known: readonly Rec[], n: number, seed: number, exclude: ReadonlySet<string>): EditFact[] {
  const objects = new Map<string, string[]>();
  const pool: Rec[] = [];
  for (const k of known) {
    if (typeof k.subject !== 'string' || typeof k.prompt !== 'string' || typeof k.relation !== 'string' || typeof k.target_true !== 'string') continue;
    const o = objects.get(k.relation) ?? objects.set(k.relation, []).get(k.relation)!;
    if (!o.includes(k.target_true)) o.push(k.target_true);
    if (!exclude.has(k.subject)) pool.push(k);
  }
  const rng = new Rng(seed + 4242);
  const out: EditFact[] = [];
  for (let round = 0; out.length < n && pool.length > 0; round++) {
    for (const k of rng.shuffle(pool.slice())) {
      if (out.length >= n) break;
      const others = objects.get(k.relation as string)!.filter((o) => o !== k.target_true);
      if (others.length === 0) continue;
      out.push({
        id: `hypernet-cf-${out.length + 1}`, subject: k.subject as string, prompt: k.prompt as string, relation: k.relation as string,
        target_true: k.target_true as string, target_new: others[rng.int(others.length)], op: 'insert',
      });
    }
    if (round > 100) break;
  }
  return out;
}

/** The key covariance's factor at the layer (ROME's cached statistics, ridged as ROME does). */
export function keyFactor(
  res: TrainResources, layer: number, ridge: number, statsTokens: number, statsFacts = 0, seed = 0, log?: (m: string) => void,
): { chol: Float64Array; ridgeAbs: number; tokens: number } {
  if (res.corpus.length === 0) throw new UsageError('hypernet-gen train needs a corpus for the key statistics: give --corpus FILE (one document per line)');
  let corpus = res.corpus;
  if (statsFacts > 0) {
    const prompts = knownFactRetainPrompts(res.known, res.templates, [], statsFacts, seed);
    corpus = [];
    for (let i = 0; i < Math.max(prompts.length, res.corpus.length); i++) {
      if (i < prompts.length) corpus.push(prompts[i]);
      if (i < res.corpus.length) corpus.push(res.corpus[i]);
    }
  }
  const st = keyStatsCached(res.model, res.tokenizer, { modelSha: res.modelSha, layer, corpus, maxTokens: statsTokens, cacheDir: res.statsCache, log });
  const D = st.dim;
  // the cache stores float32: round a fresh computation the same way, so a run gives the same H whether the cache was warm or not
  const moment = Float64Array.from(Float32Array.from(st.moment));
  let tr = 0;
  for (let i = 0; i < D; i++) tr += moment[i * D + i];
  const ridgeAbs = (ridge * tr) / D;
  return { chol: cholesky(moment, D, ridgeAbs), ridgeAbs, tokens: st.count };
}

function prepare(
  res: TrainResources, shape: HyperShape, side: { chol: Float64Array } | { gate: GateStats }, o: TrainOptions, facts: readonly EditFact[], log: (m: string) => void,
): Prepared[] {
  const { model, tokenizer: tok } = res;
  const V = model.config.vocabSize;
  const out: Prepared[] = [];
  const t0 = Date.now();
  facts.forEach((fact, i) => {
    const phr = factPhrasings(fact, [], res.templates, o.phrasings);
    const pr = 'gate' in side ? prefixedRows(tok, fact, phr, side.gate.prefixes) : { rows: phr.map((p) => editRow(tok, fact, p)), plain: [] };
    const edit = pr.rows;
    const keepPrompts = [...romeKeepPrompts(res.known, fact, o.keepSame), ...otherSubjects(res.known, fact, o.keepOther, o.seed + i)];
    const keep: Row[] = keepPrompts.map((p) => ({ ids: tok.encode(p), subj: -1, targets: [] })).filter((r) => r.ids.length > 0);
    const targetId = edit[0].targets[0][1];
    const { feats, s } = 'gate' in side
      ? (() => {
        const f = featurizeLast(model, side.gate, fact.subject, fact.relation, targetId, [...edit, ...keep], edit.length, pr.plain);
        return { feats: { z: f.z, oRms: f.oRms }, s: f.s };
      })()
      : featurize(model, o.layer, shape, side.chol, fact, targetId, [...edit, ...keep], edit.length, true);
    let keepBase = new Float32Array(0);
    if (keep.length) {
      noGrad(() => {
        const { ids, mask, T, last } = padBatch(keep.map((r) => r.ids), padId(model));
        keepBase = Float32Array.from(model.forward(ids, [keep.length, T], { attentionMask: mask, logitsAt: last }).logits.data.subarray(0, keep.length * V));
      });
    }
    out.push({ z: feats.z, oRms: feats.oRms, edit, keep, s, keepBase });
    if ((i + 1) % 500 === 0) log(`prepared ${i + 1} of ${facts.length} training edits (${((Date.now() - t0) / 1000).toFixed(0)} s)`);
  });
  return out;
}

/**
 * n known facts of other subjects, any relation (seeded). Not the subject's
 * own other facts: the edit changes the subject's key, which all its facts
 * read, and holding them to the base model fought the edit (first run: KL
 * stuck at 1.7 on the keep prompts while the NLL fell); ROME keeps only the
 * relation's other subjects by default too.
 */
function otherSubjects(known: readonly Rec[], fact: EditFact, n: number, seed: number): string[] {
  if (n <= 0) return [];
  const pool = known.filter((k) => typeof k.subject === 'string' && typeof k.prompt === 'string' && k.subject !== fact.subject);
  const rng = new Rng(seed + 31);
  const out: string[] = [];
  for (let i = 0; i < n && pool.length; i++) {
    const k = pool[rng.int(pool.length)];
    out.push((k.prompt as string).replace('{}', k.subject as string));
  }
  return out;
}

/** The facts of step `step`: epoch-wise seeded permutations, so any step's batch is known without replaying the run. */
function stepFacts(n: number, per: number, seed: number, step: number): number[] {
  const perEpoch = Math.max(1, Math.floor(n / per));
  const epoch = Math.floor(step / perEpoch);
  const at = (step % perEpoch) * per;
  const order = new Rng(seed * 7919 + epoch * 104729 + 1).shuffle(Array.from({ length: n }, (_, i) => i));
  return order.slice(at, at + Math.min(per, n));
}

export interface StepResult {
  loss: number;
  nll: number;
  kl: number;
  /** Share of the step's target tokens that were top-1 after the edit. */
  acc: number;
}

/** One forward + backward of the step's facts; gradients land on H's parameters. */
function stepLoss(model: CausalLM, layer: number, net: HyperNet, facts: readonly Prepared[], o: TrainOptions): StepResult & { loss_t: Tensor } {
  const H = net.shape.hidden;
  const F = facts.length;
  const Z = facts[0].z.length;
  const zData = new Float32Array(F * Z);
  const sc = new Float32Array(F);
  facts.forEach((f, i) => {
    zData.set(f.z, i * Z);
    sc[i] = f.oRms;
  });
  const delta = net.forward(fromData(zData, [F, Z]), fromData(sc, [F, 1]));
  const rows: Array<{ row: Row; fact: number; s: Float32Array; keep: number }> = [];
  facts.forEach((f, i) => {
    f.edit.forEach((row, j) => rows.push({ row, fact: i, s: f.s[j], keep: -1 }));
    f.keep.forEach((row, j) => rows.push({ row, fact: i, s: f.s[f.edit.length + j], keep: j }));
  });
  const { ids, mask, T } = padBatch(rows.map((r) => r.row.ids), padId(model));
  const R = rows.length;
  const S = new Float32Array(R * T * F);
  const at: number[] = [];
  const tg: number[] = [];
  const keepAt: number[] = [];
  const V = model.config.vocabSize;
  const base: Float32Array[] = [];
  rows.forEach((r, b) => {
    for (let t = 0; t < r.row.ids.length; t++) S[(b * T + t) * F + r.fact] = r.s[t];
    if (r.keep < 0) for (const [p, id] of r.row.targets) {
      at.push(b * T + p);
      tg.push(id);
    }
    else {
      keepAt.push(b * T + r.row.ids.length - 1);
      base.push(facts[r.fact].keepBase.subarray(r.keep * V, (r.keep + 1) * V));
    }
  });
  const added = reshape(matmul(fromData(S, [R * T, F]), delta), [R, T, H]);
  const { logits } = model.forward(ids, [R, T], {
    attentionMask: mask, logitsAt: Int32Array.from([...at, ...keepAt]), hooks: { [`layers.${layer}.mlp`]: { add: { value: added } } },
  });
  const nE = at.length;
  const editLogits = slice(logits, 0, 0, nE);
  const ce = crossEntropy(editLogits, Int32Array.from(tg));
  let loss = ce;
  let klv = 0;
  if (keepAt.length && o.klWeight > 0) {
    const teacher = new Float32Array(keepAt.length * V);
    base.forEach((b, i) => teacher.set(b, i * V));
    const kl = klDiv(fromData(teacher, [keepAt.length, V]), slice(logits, 0, nE, nE + keepAt.length));
    klv = kl.item();
    loss = add(loss, scale(kl, o.klWeight));
  }
  if (o.l2Weight > 0) {
    const unit = new Float32Array(F);
    sc.forEach((v, i) => (unit[i] = 1 / Math.max(v, 1e-12)));
    const d = matmul(fromData(diag(unit), [F, F]), delta);
    loss = add(loss, scale(mean(sum(square(d), 1)), o.l2Weight));
  }
  let right = 0;
  const ld = editLogits.data;
  tg.forEach((t, i) => {
    let best = 0;
    for (let v = 1; v < V; v++) if (ld[i * V + v] > ld[i * V + best]) best = v;
    if (best === t) right++;
  });
  return { loss_t: loss, loss: loss.item(), nll: ce.item(), kl: klv, acc: nE ? right / nE : 0 };
}

function diag(v: Float32Array): Float32Array {
  const n = v.length;
  const m = new Float32Array(n * n);
  for (let i = 0; i < n; i++) m[i * n + i] = v[i];
  return m;
}

/** Adam whose state can be written and read back (resume). */
class Adam {
  m: Float32Array[];
  v: Float32Array[];
  t = 0;
  constructor(readonly params: Tensor[]) {
    this.m = params.map((p) => new Float32Array(p.size));
    this.v = params.map((p) => new Float32Array(p.size));
  }
  step(lr: number, b1 = 0.9, b2 = 0.999, eps = 1e-8): void {
    this.t++;
    const c1 = 1 - b1 ** this.t;
    const c2 = 1 - b2 ** this.t;
    this.params.forEach((p, k) => {
      if (!p.grad) return;
      const g = p.grad.data;
      const m = this.m[k];
      const v = this.v[k];
      const w = p.data;
      for (let i = 0; i < w.length; i++) {
        m[i] = b1 * m[i] + (1 - b1) * g[i];
        v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
        w[i] -= (lr * (m[i] / c1)) / (Math.sqrt(v[i] / c2) + eps);
      }
    });
  }
}

function lrAt(o: TrainOptions, step: number): number {
  if (step < o.warmup) return (o.lr * (step + 1)) / o.warmup;
  const p = (step - o.warmup) / Math.max(1, o.steps - o.warmup);
  return o.lr * 0.5 * (1 + Math.cos(Math.PI * Math.min(1, p)));
}

const PARAM_NAMES = ['W1', 'b1', 'W2', 'b2', 'W3'];

function saveCheckpoint(file: string, net: HyperNet, opt: Adam, step: number, key: string): void {
  const t: Record<string, { shape: number[]; data: Float32Array }> = {};
  net.parameters().forEach((p, i) => {
    t[PARAM_NAMES[i]] = { shape: p.shape.slice(), data: Float32Array.from(p.data) };
    t[`${PARAM_NAMES[i]}.m`] = { shape: [p.size], data: opt.m[i] };
    t[`${PARAM_NAMES[i]}.v`] = { shape: [p.size], data: opt.v[i] };
  });
  writeFileAtomic(file, serializeSafetensors(t, { step: String(step), adam_t: String(opt.t), run: key }));
}

function loadCheckpoint(file: string, net: HyperNet, opt: Adam, key: string): number {
  const st = readSafetensors(file);
  if (st.metadata.run !== key) {
    throw new UsageError(`--resume ${file}: the checkpoint is of another run (other data, model or options); start without --resume or give the same flags`);
  }
  net.parameters().forEach((p, i) => {
    p.data.set(st.float32(PARAM_NAMES[i]));
    opt.m[i].set(st.float32(`${PARAM_NAMES[i]}.m`));
    opt.v[i].set(st.float32(`${PARAM_NAMES[i]}.v`));
  });
  opt.t = Number(st.metadata.adam_t);
  return Number(st.metadata.step);
}

export interface TrainRun {
  /** Where H goes (a directory); omitted: nothing saved (tests). */
  out?: string;
  checkpoint?: string;
  checkpointEvery: number;
  resume: boolean;
  /** Stop after this many steps of this invocation (an interrupted run, for tests). */
  stopAfter?: number;
  log: (m: string) => void;
  /** Progress line every this many steps. */
  logEvery: number;
}

export interface Trained {
  net: HyperNet;
  chol: Float64Array;
  config?: HyperConfig;
  history: StepResult[];
  seconds: number;
  steps: number;
}

export async function trainHyper(res: TrainResources, facts: readonly EditFact[], o: TrainOptions, run: TrainRun): Promise<Trained> {
  const t0 = Date.now();
  const { model } = res;
  if (facts.length === 0) throw new UsageError('no training edits: give --facts FILE or --counterfactuals N');
  const mod = mlpOutModule(model, o.layer);
  let side: { chol: Float64Array } | { gate: GateStats };
  let shape: HyperShape;
  let ridgeAbs = 0;
  let tokens = 0;
  if (o.site === 'last') {
    if (o.layer !== model.config.layers - 1) throw new UsageError(`--site last edits the last layer (${model.config.layers - 1}), not --layer ${o.layer}`);
    if (!model.arch.layer(o.layer).mlp) throw new UsageError(`--site last: layer ${o.layer} is a sparse MoE layer; a hypernetwork writes one dense MLP's neuron (for experts use lora-train --method patcher)`);
    if (res.corpus.length === 0) throw new UsageError('hypernet-gen train --site last needs a corpus for the gate statistics and prefixes: give --corpus FILE (one document per line)');
    side = { gate: gateStats(model, res.tokenizer, res.known, res.corpus, res.templates, o.layer, { docs: o.gateDocs, sample: o.gateSample, prefixes: o.prefixes, seed: o.seed, settings: o.gate }, run.log) };
    // z = [x̄ (the MLP input at the last token), h̄ (the residual after the last layer there), e_t]
    shape = { keyDim: model.config.hidden, hidden: model.config.hidden, width: o.width, z: ['key', 'rel', 'target'] };
  } else {
    const kf = keyFactor(res, o.layer, o.ridge, o.statsTokens, o.statsFacts, o.seed, run.log);
    ({ ridgeAbs, tokens } = kf);
    side = { chol: kf.chol };
    shape = { keyDim: Math.round(Math.sqrt(kf.chol.length)), hidden: model.config.hidden, width: o.width, z: o.z };
  }
  const chol = 'chol' in side ? side.chol : new Float64Array(0);
  let prepared: Prepared[];
  try {
    prepared = prepare(res, shape, side, o, facts, run.log);
  } catch (e) {
    if (e instanceof FactError) throw new UsageError(e.message);
    throw e;
  }
  run.log(`prepared ${prepared.length} training edits in ${((Date.now() - t0) / 1000).toFixed(1)} s; training ${o.steps} steps of ${o.factsPerStep} facts`);
  const net = HyperNet.init(shape, o.seed);
  const opt = new Adam(net.parameters());
  const dataSha = dataSha256(facts);
  const runKey = dataSha256([{ data: dataSha, model: res.modelSha, o: { ...o } as Rec }]).slice(0, 32);
  let start = 0;
  if (run.resume) {
    if (!run.checkpoint) throw new UsageError('--resume needs --checkpoint FILE');
    if (fs.existsSync(run.checkpoint)) {
      start = loadCheckpoint(run.checkpoint, net, opt, runKey);
      run.log(`resumed from ${run.checkpoint} at step ${start}`);
    } else run.log(`--resume: no checkpoint at ${run.checkpoint} yet, starting at step 0`);
  }
  const history: StepResult[] = [];
  const tTrain = Date.now();
  let avg: StepResult | null = null;
  let step = start;
  const end = run.stopAfter !== undefined ? Math.min(o.steps, start + run.stopAfter) : o.steps;
  for (; step < end; step++) {
    const batch = stepFacts(prepared.length, o.factsPerStep, o.seed, step).map((i) => prepared[i]);
    for (const p of net.parameters()) p.grad = null;
    const r = stepLoss(model, o.layer, net, batch, o);
    r.loss_t.backward();
    opt.step(lrAt(o, step));
    const { loss_t: _, ...fig } = r;
    history.push(fig);
    avg = avg ? { loss: 0.9 * avg.loss + 0.1 * fig.loss, nll: 0.9 * avg.nll + 0.1 * fig.nll, kl: 0.9 * avg.kl + 0.1 * fig.kl, acc: 0.9 * avg.acc + 0.1 * fig.acc } : fig;
    const done = step + 1 - start;
    if ((step + 1) % run.logEvery === 0 || step + 1 === end) {
      const per = (Date.now() - tTrain) / 1000 / done;
      run.log(`step ${step + 1}/${o.steps}: loss ${avg.loss.toFixed(3)} (nll ${avg.nll.toFixed(3)}, kl ${avg.kl.toFixed(4)}, target top-1 ${(100 * avg.acc).toFixed(0)}%), ${per.toFixed(2)} s/step, ETA ${fmt(per * (end - step - 1))}`);
    }
    if (run.checkpoint && ((step + 1) % run.checkpointEvery === 0 || step + 1 === end)) saveCheckpoint(run.checkpoint, net, opt, step + 1, runKey);
  }
  const seconds = (Date.now() - t0) / 1000;
  let config: HyperConfig | undefined;
  if (run.out && step >= o.steps) {
    const last = history.slice(-50);
    const m = (k: keyof StepResult) => (last.length ? last.reduce((s, x) => s + x[k], 0) / last.length : NaN);
    config = saveHyper(run.out, net, side, {
      site: o.site, base_model: { name: res.modelName, sha256: res.modelSha }, targets: [mod], layer: o.layer, ridge: ridgeAbs, stats_tokens: tokens,
      templates: res.templates !== null,
      training: {
        hyperparameters: { ...o }, edits: facts.length, data_sha256: dataSha, seconds: Math.round(seconds),
        final: { loss: m('loss'), nll: m('nll'), kl: m('kl'), target_top1: m('acc') },
      },
    });
    run.log(`saved ${config.id} to ${run.out} (${((Date.now() - t0) / 1000).toFixed(0)} s in all)`);
  }
  return { net, chol, config, history, seconds, steps: step };
}

function fmt(s: number): string {
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}
