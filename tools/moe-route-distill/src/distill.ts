/**
 * Router + expert distillation for sparse mixture-of-experts models.
 *
 * The teacher is the same model with the fact stated in its context; the
 * student sees the prompt alone. At the student positions aligned with the
 * teacher's (the subject onwards) the teacher's routing and experts are
 * recorded, then one LoRA adapter is trained on
 *
 *   (a) the experts the teacher routes to (each expert's output projection),
 *       warm-started alone (phase A): ΔW k_s ≈ y_t − y_s, the teacher's
 *       expert output on its own input minus the student's, at the positions
 *       the teacher routes to that expert (MSE), and ΔW k_r ≈ 0 on general
 *       text routed there;
 *   (b) the router (the gate), warm-started alone on the same positions
 *       (KL from the teacher's router distribution to the student's), then
 *
 *   phase B, end to end: KL of the router distributions (teacher ‖ student)
 *   at the aligned positions of every adapted layer, MSE of the MoE block
 *   output to the teacher's, KL of the next-token distribution, CE on the
 *   target, and retention: KL to the base model's next-token distribution
 *   and router distributions on general text, neighbour prompts and known
 *   facts.
 *
 * The gradient of the router term reaches the gate's LoRA through the
 * router logits CausalLM.forward returns (and the expert LoRAs of earlier
 * layers through the residual stream); test/router-kl.test.ts checks it
 * against finite differences.
 */
import {
  AdamW, Tensor, add, clipGradNorm, crossEntropy, fromData, indexSelect, klDiv, linear, mean, noGrad, reshape, scale, square, sub,
} from '@catechism/core/tensor';
import { argmax, baseOps, type CausalLM, type Hooks, type LoraAdapter } from '@catechism/core/models';
import {
  LORA_DEFAULTS, annealLr, dualStep, lastLogProbs, lrAt, monitorKl, padBatch, planAnneal, padId, solvedFraction, type Example, type RetainRow, type Schedule,
} from '@catechism/core/edit';
import { alignedPositions, topExperts } from '@catechism/core/metrics';
import { Rng } from '@catechism/core/random';

export interface DistillOptions {
  /** Layers whose router and/or experts are adapted. */
  layers: number[];
  /** Adapt the gates (router LoRA + router KL). */
  router: boolean;
  /** Adapt the experts the teacher routes to (expert LoRA + phase A MSE + block MSE). */
  experts: boolean;
  /** Experts per layer given a LoRA (the most teacher routing mass, or the loci's); 0: every expert. */
  expertsPerLayer: number;
  /** Rows whose teacher does not state the target (top-1 at the answer) get no teacher terms (next-token KL, router KL, block MSE): CE only. */
  dropTeacherMisses: boolean;
  /** Also adapt the chosen experts' input projections (gate and up: w1, w3), not only their output projection. */
  expertInputs: boolean;
  /** (layer, expert) pairs preferred by locus records, best first. */
  lociExperts?: Array<{ layer: number; expert: number }>;
  rank: number;
  alpha: number;
  lr: number;
  steps: number;
  phaseASteps: number;
  batchSize: number;
  seed: number;
  ceWeight: number;
  klWeight: number;
  mseWeight: number;
  /**
   * Weight of holding every adapted layer's MoE block output to the base
   * model's at the edit prompts' tokens after the subject (the relation's
   * words and the last token; MSE relative to the base output's mean square).
   * The edit then has to be written at the subject's tokens, as ROME writes
   * it, and reach the answer through attention, for any wording (0: off).
   */
  pinWeight: number;
  routerWeight: number;
  retainShare: number;
  retainWeight: number;
  routeRetainWeight: number;
  /** Phase B learning rate: constant, or lora-train's cosine (linear warmup, decay to 0 at the step cap). */
  schedule: Schedule;
  warmupSteps: number;
  /** Cosine: when training stops early with the rate above 10% of lr, decay it to 0 over this many more steps (lora-train's anneal; 0: stop at once). */
  annealSteps: number;
  evalEvery: number;
  /**
   * KL-constrained training (lora-train's --kl-budget; 0 or no monitor: off):
   * a multiplier λ on retainWeight, updated by dual ascent at every check
   * (core's dualStep) on the mean next-token KL(base ‖ student) over
   * `monitor` (known-fact prompts in training phrasings the retention rows
   * do not use, core's knownFactRetainSplit), clamped to [dualMin, dualMax];
   * no early stop while that KL is over the budget.
   */
  klBudget?: number;
  monitor?: RetainRow[];
  dualRate?: number;
  dualMin?: number;
  dualMax?: number;
  name: string;
  log?: (msg: string) => void;
}

export const DISTILL_DEFAULTS: Omit<DistillOptions, 'layers' | 'name' | 'log' | 'lociExperts'> = {
  router: true,
  experts: true,
  // the last layer's every expert (0: all of them), input and output projections, rank 8 and retainWeight 120, no
  // block MSE, teacher terms only on rows the teacher states, the router held by route retention 1000 and the KL
  // budget 0.01: chosen on the tuning requests 1–40 by the rule fixed before (paraphrase ≥ 85% on every set, then
  // the lowest worst-set kl): kl 0.013–0.022, paraphrase 88.5–100% (the layer-1 defaults before: kl 0.028–0.045,
  // paraphrase 85.2–92.3%); held out (world 61–70, 71–80, world-b 1–10, 61–70, 71–80) every set passes
  // (README "The last layer, every expert")
  expertsPerLayer: 0,
  expertInputs: true,
  dropTeacherMisses: true,
  rank: 8,
  alpha: LORA_DEFAULTS.alpha,
  lr: LORA_DEFAULTS.lr,
  // steps, schedule and retainShare: lora-train's (issue 17, held-out read-back), measured again for this tool on
  // the tuning split (requests 1–10, seeds 0–2, README "Defaults"): the previous constant rate, 200 steps and share
  // 0.25 read kl 0.11 there on held-out phrasings, these 0.04
  steps: 400,
  // phase A is off by default: on the MoE fixture (tuning requests 1–10, README) 100 warm-start
  // steps raised kl from 0.094 to 0.186 (experts only: 0.032 to 0.140) at the same efficacy
  phaseASteps: 0,
  batchSize: LORA_DEFAULTS.batchSize,
  seed: 0,
  ceWeight: LORA_DEFAULTS.ceWeight,
  klWeight: LORA_DEFAULTS.klWeight,
  mseWeight: 0,
  pinWeight: 0,
  routerWeight: 1,
  retainShare: 0.4,
  retainWeight: 120,
  routeRetainWeight: 1000,
  schedule: 'cosine',
  warmupSteps: 10,
  annealSteps: 50,
  evalEvery: LORA_DEFAULTS.evalEvery,
};

/** What the teacher (fact in context) does at one example's aligned positions. */
export interface TeacherRec {
  /** Next-token logits at the teacher's last position [V]. */
  logits: Float32Array;
  /** Whether the teacher's top-1 there is the target's first token (it read the fact from its context). */
  states: boolean;
  /** Aligned student and teacher positions. */
  pos: number[];
  tpos: number[];
  /** Per layer: router logits at the aligned positions [n, E]. */
  router: Float32Array[];
  /** Per adapted layer: the MoE block's normalised input [n, H] and output [n, H]. */
  x: Map<number, Float32Array>;
  block: Map<number, Float32Array>;
}

/** Hooks capturing, for each layer in `layers`, the residual entering it, its attention output and its MoE block output. */
function moeCaptureHooks(layers: readonly number[], into: Map<string, Tensor>): Hooks {
  const h: Hooks = {};
  const cap = (site: string) => {
    h[site] = { capture: (x) => into.set(site, x) };
  };
  for (const l of layers) {
    cap(l === 0 ? 'embed' : `layers.${l - 1}.resid_post`);
    cap(`layers.${l}.attn`);
    cap(`layers.${l}.mlp`);
  }
  return h;
}

/** The MoE block input of layer l (normalised residual) from captured activations, base weights, [B·T, H]. */
function moeInput(model: CausalLM, l: number, got: Map<string, Tensor>): Tensor {
  const c = model.config;
  const resid = got.get(l === 0 ? 'embed' : `layers.${l - 1}.resid_post`)!;
  const attn = got.get(`layers.${l}.attn`)!;
  const h = add(resid, attn);
  return model.arch.norm(baseOps(model.arch, model.weights), model.arch.layer(l).mlpNorm, reshape(h, [h.size / c.hidden, c.hidden]), c.normEps);
}

/** Rows `idx` of a flat [N, D] array. */
function rowsOf(data: Float32Array, idx: readonly number[], D: number): Float32Array {
  const out = new Float32Array(idx.length * D);
  idx.forEach((r, i) => out.set(data.subarray(r * D, (r + 1) * D), i * D));
  return out;
}

/** Aligned positions of an example: from the subject's first token (else the last token) to the end. */
export function exampleAlignment(ex: Example): Array<[number, number]> {
  const from = ex.subjectStart >= 0 ? ex.subjectStart : ex.promptIds.length - 1;
  return alignedPositions(ex.promptIds, ex.teacherIds ?? [], from);
}

/** Teacher records of examples with teacher prompts (base model, no adapters active). */
export function teacherRecords(model: CausalLM, exs: readonly Example[], layers: readonly number[]): TeacherRec[] {
  const V = model.config.vocabSize;
  const H = model.config.hidden;
  const E = model.config.experts;
  const out: TeacherRec[] = [];
  noGrad(() => {
    for (let s = 0; s < exs.length; s += 32) {
      const chunk = exs.slice(s, s + 32);
      const { ids, mask, T, last } = padBatch(chunk.map((e) => e.teacherIds!), padId(model));
      const got = new Map<string, Tensor>();
      const r = model.forward(ids, [chunk.length, T], { attentionMask: mask, logitsAt: last, hooks: moeCaptureHooks(layers, got) });
      const xs = new Map(layers.map((l) => [l, moeInput(model, l, got).data] as const));
      chunk.forEach((ex, b) => {
        const al = exampleAlignment(ex);
        const flat = al.map(([, tp]) => b * T + tp);
        const rec: TeacherRec = {
          logits: r.logits.data.slice(b * V, (b + 1) * V), states: argmax(r.logits.data.subarray(b * V, (b + 1) * V)) === ex.targetIds[0], pos: al.map(([p]) => p), tpos: al.map(([, tp]) => tp),
          router: r.routerLogits!.map((t) => rowsOf(t.data, flat, E)), x: new Map(), block: new Map(),
        };
        for (const l of layers) {
          rec.x.set(l, rowsOf(xs.get(l)!, flat, H));
          rec.block.set(l, rowsOf(got.get(`layers.${l}.mlp`)!.data, flat, H));
        }
        out.push(rec);
      });
    }
  });
  return out;
}

/** Renormalised top-k routing weights of a logits row (what the MoE block mixes with). */
function topkWeights(logits: Float32Array, off: number, E: number, K: number): Map<number, number> {
  let m = -Infinity;
  for (let e = 0; e < E; e++) m = Math.max(m, logits[off + e]);
  const p = Array.from({ length: E }, (_, e) => Math.exp(logits[off + e] - m));
  const top = topExperts(p, 0, E, K);
  const z = top.reduce((a, e) => a + p[e], 0);
  return new Map(top.map((e) => [e, p[e] / z]));
}

/**
 * The experts to adapt at each layer: those named by locus records first
 * (best score first), then the most teacher routing mass (renormalised top-k
 * weights summed over the aligned positions), `perLayer` of them.
 */
export function chooseExperts(model: CausalLM, teach: readonly TeacherRec[], layers: readonly number[], perLayer: number, loci: ReadonlyArray<{ layer: number; expert: number }> = []): Map<number, number[]> {
  const E = model.config.experts;
  const K = model.config.expertsPerTok;
  const out = new Map<number, number[]>();
  for (const l of layers) {
    if (perLayer <= 0) {
      // 0: every expert of the layer, routed to or not
      out.set(l, Array.from({ length: E }, (_, e) => e));
      continue;
    }
    const mass = new Float64Array(E);
    for (const t of teach) for (let i = 0; i < t.pos.length; i++) for (const [e, w] of topkWeights(t.router[l], i * E, E, K)) mass[e] += w;
    const chosen: number[] = [];
    for (const x of loci) if (x.layer === l && x.expert >= 0 && x.expert < E && !chosen.includes(x.expert)) chosen.push(x.expert);
    const byMass = Array.from({ length: E }, (_, e) => e).filter((e) => mass[e] > 0).sort((a, b) => mass[b] - mass[a] || a - b);
    for (const e of byMass) if (!chosen.includes(e)) chosen.push(e);
    out.set(l, chosen.slice(0, perLayer).sort((a, b) => a - b));
  }
  return out;
}

/** The base model over `rows` in batches of 32, `layers`' activations captured (moeCaptureHooks): fn(captured, first row, T). */
function forEachCaptured(model: CausalLM, rows: readonly number[][], layers: readonly number[], fn: (got: Map<string, Tensor>, first: number, T: number, n: number) => void): void {
  noGrad(() => {
    for (let s = 0; s < rows.length; s += 32) {
      const chunk = rows.slice(s, s + 32);
      const { ids, mask, T } = padBatch(chunk, padId(model));
      const got = new Map<string, Tensor>();
      model.forward(ids, [chunk.length, T], { attentionMask: mask, skipLogits: true, hooks: moeCaptureHooks(layers, got) });
      fn(got, s, T, chunk.length);
    }
  });
}

/** The student's (base model's) MoE inputs at given positions of each row, per layer: [n, H] with the rows in order. */
function studentInputs(model: CausalLM, rows: readonly number[][], positions: readonly number[][], layers: readonly number[]): Map<number, Float32Array> {
  const H = model.config.hidden;
  const parts = new Map<number, Float32Array[]>(layers.map((l) => [l, []]));
  forEachCaptured(model, rows, layers, (got, s, T, n) => {
    const flat = Array.from({ length: n }, (_, b) => positions[s + b].map((p) => b * T + p)).flat();
    for (const l of layers) parts.get(l)!.push(rowsOf(moeInput(model, l, got).data, flat, H));
  });
  const out = new Map<number, Float32Array>();
  for (const [l, ps] of parts) {
    const n = ps.reduce((a, p) => a + p.length, 0);
    const all = new Float32Array(n);
    let o = 0;
    for (const p of ps) {
      all.set(p, o);
      o += p.length;
    }
    out.set(l, all);
  }
  return out;
}

/** Positions of an example's prompt after the subject (to its last token); none when the subject was not found. */
export function postSubjectPositions(ex: Example): number[] {
  if (ex.subjectStart < 0) return [];
  const out: number[] = [];
  for (let p = ex.subjectEnd; p < ex.promptIds.length; p++) out.push(p);
  return out;
}

/** The base model's MoE block outputs at given positions of each row, per layer: one [n_i, H] array per row. */
function baseBlockOutputs(model: CausalLM, rows: readonly number[][], positions: readonly number[][], layers: readonly number[]): Map<number, Float32Array[]> {
  const H = model.config.hidden;
  const out = new Map<number, Float32Array[]>(layers.map((l) => [l, []]));
  forEachCaptured(model, rows, layers, (got, s, T, n) => {
    for (let b = 0; b < n; b++) for (const l of layers) out.get(l)!.push(rowsOf(got.get(`layers.${l}.mlp`)!.data, positions[s + b].map((p) => b * T + p), H));
  });
  return out;
}

function meanSquare(a: Float32Array): number {
  let s = 0;
  for (const v of a) s += v * v;
  return a.length ? s / a.length : 0;
}

/** Expert e's output projection keys and output for inputs x [n, H] (base weights). */
function expertKeys(model: CausalLM, l: number, e: number, x: Tensor): { k: Tensor; y: Tensor } {
  const ops = baseOps(model.arch, model.weights);
  const ex = model.arch.layer(l).moe!.expert(e);
  const k = model.arch.mlpKeys(ops, ex, x);
  return { k, y: ops.lin(ex.out, k) };
}

/** Router logits of the gate at layer l for inputs x [n, H] (base weights). */
function gateLogits(model: CausalLM, l: number, x: Tensor): Tensor {
  return baseOps(model.arch, model.weights).lin(model.arch.layer(l).moe!.router, x);
}

interface PhaseAData {
  /** Per layer: student inputs at every example's aligned positions, and the matching teacher inputs and router logits. */
  xs: Map<number, Float32Array>;
  xt: Map<number, Float32Array>;
  router: Map<number, Float32Array>;
  /** Per layer: student inputs at every position of retention documents. */
  xr: Map<number, Float32Array>;
}

function phaseAData(model: CausalLM, exs: readonly Example[], teach: readonly TeacherRec[], retain: readonly RetainRow[], layers: readonly number[]): PhaseAData {
  const E = model.config.experts;
  const H = model.config.hidden;
  const xs = studentInputs(model, exs.map((e) => e.promptIds), teach.map((t) => t.pos), layers);
  const xt = new Map<number, Float32Array>();
  const router = new Map<number, Float32Array>();
  const n = teach.reduce((a, t) => a + t.pos.length, 0);
  for (const l of layers) {
    const a = new Float32Array(n * H);
    const r = new Float32Array(n * E);
    let o = 0;
    for (const t of teach) {
      a.set(t.x.get(l)!, o * H);
      r.set(t.router[l], o * E);
      o += t.pos.length;
    }
    xt.set(l, a);
    router.set(l, r);
  }
  const docs = retain.filter((r) => !r.lastOnly).slice(0, 16);
  const xr = studentInputs(model, docs.map((r) => r.ids), docs.map((r) => r.ids.map((_, i) => i)), layers);
  return { xs, xt, router, xr };
}

/**
 * Phase A, module by module: each adapted expert's LoRA fits the teacher's
 * expert output on the positions the teacher routes to it; each gate's LoRA
 * fits the teacher's router distribution. Returns the final losses.
 */
function phaseA(model: CausalLM, adapter: LoraAdapter, experts: Map<number, number[]>, routers: readonly number[], d: PhaseAData, opts: DistillOptions): Record<string, number> {
  const H = model.config.hidden;
  const E = model.config.experts;
  const K = model.config.expertsPerTok;
  const f = adapter.factor;
  const losses: Record<string, number> = {};
  for (const [l, es] of experts) {
    const xs = d.xs.get(l)!;
    const xt = d.xt.get(l)!;
    const rl = d.router.get(l)!;
    const n = xs.length / H;
    const xr = d.xr.get(l)!;
    const nr = xr.length / H;
    // retention documents' positions the base router sends to each expert
    const rLogits = nr ? gateLogits(model, l, fromData(xr, [nr, H])).data : new Float32Array(0);
    for (const e of es) {
      const idx: number[] = [];
      for (let i = 0; i < n; i++) if (topkWeights(rl, i * E, E, K).has(e)) idx.push(i);
      if (idx.length === 0) continue;
      const mod = model.arch.layer(l).moe!.expert(e).out;
      const m = adapter.modules.get(mod)!;
      const s = expertKeys(model, l, e, fromData(rowsOf(xs, idx, H), [idx.length, H]));
      const t = expertKeys(model, l, e, fromData(rowsOf(xt, idx, H), [idx.length, H]));
      const delta = sub(t.y, s.y);
      const norm = Math.max(meanSquare(delta.data), 1e-8);
      const ridx: number[] = [];
      for (let i = 0; i < nr; i++) if (topkWeights(rLogits, i * E, E, K).has(e)) ridx.push(i);
      const kr = ridx.length ? expertKeys(model, l, e, fromData(rowsOf(xr, ridx, H), [ridx.length, H])).k : null;
      const opt = new AdamW([m.A, m.B], { lr: opts.lr, weightDecay: 0 });
      let last = 0;
      for (let step = 0; step < opts.phaseASteps; step++) {
        let loss = scale(mean(square(sub(scale(linear(linear(s.k, m.A), m.B), f), delta))), 1 / norm);
        if (kr) loss = add(loss, scale(mean(square(scale(linear(linear(kr, m.A), m.B), f))), opts.retainShare / norm));
        opt.zeroGrad();
        loss.backward();
        opt.step();
        last = loss.item();
      }
      losses[mod] = last;
    }
  }
  for (const l of routers) {
    const xs = d.xs.get(l)!;
    const n = xs.length / H;
    if (n === 0) continue;
    const mod = model.arch.layer(l).moe!.router;
    const m = adapter.modules.get(mod)!;
    const x = fromData(xs, [n, H]);
    const base = gateLogits(model, l, x).detach();
    const teacher = fromData(d.router.get(l)!, [n, E]);
    const xr = d.xr.get(l)!;
    const nr = xr.length / H;
    const r = nr ? fromData(xr, [nr, H]) : null;
    const rBase = r ? gateLogits(model, l, r).detach() : null;
    const opt = new AdamW([m.A, m.B], { lr: opts.lr, weightDecay: 0 });
    let last = 0;
    for (let step = 0; step < opts.phaseASteps; step++) {
      let loss = klDiv(teacher, add(base, scale(linear(linear(x, m.A), m.B), f)));
      if (r && rBase && opts.routeRetainWeight > 0) loss = add(loss, scale(klDiv(rBase, add(rBase, scale(linear(linear(r, m.A), m.B), f))), opts.routeRetainWeight * opts.retainShare));
      opt.zeroGrad();
      loss.backward();
      opt.step();
      last = loss.item();
    }
    losses[mod] = last;
  }
  return losses;
}

/** Base-model next-token logits and router logits on retention rows (scored positions; every position for the routers). */
function retainTargets(model: CausalLM, rows: readonly RetainRow[]): Array<{ logits: Float32Array; router: Float32Array[] }> {
  const V = model.config.vocabSize;
  const E = model.config.experts;
  const out: Array<{ logits: Float32Array; router: Float32Array[] }> = [];
  noGrad(() => {
    for (let s = 0; s < rows.length; s += 32) {
      const chunk = rows.slice(s, s + 32);
      const { ids, mask, T } = padBatch(chunk.map((r) => r.ids), padId(model));
      const at: number[] = [];
      chunk.forEach((r, b) => {
        if (r.lastOnly) at.push(b * T + r.ids.length - 1);
        else for (let t = 0; t < r.ids.length; t++) at.push(b * T + t);
      });
      const res = model.forward(ids, [chunk.length, T], { attentionMask: mask, logitsAt: Int32Array.from(at) });
      let o = 0;
      chunk.forEach((r, b) => {
        const n = r.lastOnly ? 1 : r.ids.length;
        const all = r.ids.map((_, t) => b * T + t);
        out.push({ logits: res.logits.data.slice(o * V, (o + n) * V), router: res.routerLogits!.map((t) => rowsOf(t.data, all, E)) });
        o += n;
      });
    }
  });
  return out;
}

/**
 * The router-KL term: mean over `layers` of KL(teacher ‖ student) of the
 * router distributions at the given flat rows (b·T + t) of the student's
 * router logits [B, T, E]; teacher logits per layer [rows, E].
 */
export function routerKl(routerLogits: readonly Tensor[], rows: readonly number[], teacher: ReadonlyMap<number, Float32Array>, layers: readonly number[]): Tensor {
  const idx = Int32Array.from(rows);
  const parts = layers.map((l) => {
    const s = routerLogits[l];
    const E = s.shape[s.shape.length - 1];
    return klDiv(fromData(teacher.get(l)!, [rows.length, E]), indexSelect(reshape(s, [s.size / E, E]), 0, idx));
  });
  return scale(parts.reduce((a, b) => add(a, b)), 1 / layers.length);
}

export interface DistillResult {
  adapter: LoraAdapter;
  /** The adapted experts per layer and the gates adapted. */
  experts: Map<number, number[]>;
  routers: number[];
  phaseA: Record<string, number>;
  phaseASteps: number;
  steps: number;
  solved: boolean;
  finalLoss: number;
  trainAccuracy: number;
  trainableParams: number;
  /** Training rows whose teacher states the target (top-1 at the answer with the fact in context). */
  teacherStated: number;
  /** The learning rate of the last phase-B step. */
  lastLr: number;
  /** With klBudget: the monitor KL at the end and the multiplier λ reached (retention weight = retainWeight × λ). */
  monitorKl?: number;
  dualLambda?: number;
}

/** Train one adapter on a batch's examples (insert rows with teacher prompts). The model's active adapters are restored afterwards. */
export function distill(model: CausalLM, examples: Example[], retain: RetainRow[], opts: DistillOptions): DistillResult {
  if (examples.length === 0) throw new RangeError('distill: no training examples');
  if (!opts.router && !opts.experts) throw new RangeError('distill: neither the router nor the experts are adapted');
  const say = opts.log ?? (() => {});
  const prev = model.activeAdapters();
  const rng = new Rng(opts.seed);
  const V = model.config.vocabSize;
  const H = model.config.hidden;
  const layers = [...opts.layers].sort((a, b) => a - b);
  try {
    model.setAdapters([]);
    const teachArr = teacherRecords(model, examples, layers);
    const teach = new Map<Example, TeacherRec>(examples.map((e, i) => [e, teachArr[i]]));
    const experts = opts.experts ? chooseExperts(model, teachArr, layers, opts.expertsPerLayer, opts.lociExperts) : new Map<number, number[]>();
    const routers = opts.router ? layers : [];
    const targets = [
      ...routers.map((l) => model.arch.layer(l).moe!.router),
      ...[...experts].flatMap(([l, es]) => es.flatMap((e) => {
        const ex = model.arch.layer(l).moe!.expert(e);
        return opts.expertInputs ? [...ex.in, ex.out] : [ex.out];
      })),
    ];
    if (targets.length === 0) throw new RangeError('distill: the teacher routes to no expert at the adapted layers');
    const adapter = model.createLora(opts.name, targets, { r: opts.rank, alpha: opts.alpha, seed: rng.nextUint32() });
    const retainBase = opts.retainShare > 0 ? retainTargets(model, retain) : [];
    // the pin's targets: the base block outputs after the subject, per example, and their mean square (the scale)
    const pinPos = opts.pinWeight > 0 ? examples.map(postSubjectPositions) : [];
    const pinBase = opts.pinWeight > 0 ? baseBlockOutputs(model, examples.map((e) => e.promptIds), pinPos, layers) : new Map<number, Float32Array[]>();
    const pinScale = new Map([...pinBase].map(([l, xs]) => {
      let s = 0;
      let n = 0;
      for (const x of xs) {
        for (const v of x) s += v * v;
        n += x.length;
      }
      return [l, Math.max(n ? s / n : 0, 1e-8)] as const;
    }));
    const exIndex = new Map(examples.map((e, i) => [e, i] as const));
    // KL constraint (as lora-train): the monitor rows' base distributions, once
    const constrained = (opts.klBudget ?? 0) > 0 && (opts.monitor?.length ?? 0) > 0 && opts.retainShare > 0;
    const monitorBase = constrained ? lastLogProbs(model, opts.monitor!) : [];
    const dual = { budget: opts.klBudget ?? 0, rate: opts.dualRate ?? 0.1, min: opts.dualMin ?? 1, max: opts.dualMax ?? 8 };
    let lambda = 1;
    let lastMonitor: number | undefined;

    let phaseALoss: Record<string, number> = {};
    let aSteps = 0;
    if (opts.phaseASteps > 0) {
      const d = phaseAData(model, examples, teachArr, retain, layers);
      phaseALoss = phaseA(model, adapter, experts, routers, d, opts);
      aSteps = opts.phaseASteps * Object.keys(phaseALoss).length;
      for (const [m, v] of Object.entries(phaseALoss)) say(`phase A ${m}: loss ${v.toFixed(4)} after ${opts.phaseASteps} steps`);
    }

    model.setAdapters([{ adapter }]);
    const params = adapter.parameters();
    const opt = new AdamW(params, { lr: opts.lr, weightDecay: 0 });
    const expertLayers = [...experts.keys()];
    const order: number[] = [];
    const retainOrder: number[] = [];
    let lossVal = NaN;
    let prevCheckLoss = Infinity;
    let windowLoss = 0;
    let solvedChecks = 0;
    const termSum = new Map<string, number>();
    let step = 0;
    let acc = solvedFraction(model, examples);
    // early stop under the cosine schedule: the anneal's first step, its end and the rate it decays from (as lora-train)
    let anneal: { from: number; end: number; lr: number } | null = null;
    let stepCap = opts.steps;
    const sched = { lr: opts.lr, steps: opts.steps, schedule: opts.schedule, warmupSteps: opts.warmupSteps };
    for (step = 0; step < stepCap; step++) {
      opt.lr = anneal ? annealLr(step, anneal) : lrAt(step, sched);
      if (order.length < opts.batchSize) order.push(...rng.shuffle(examples.map((_, i) => i)));
      const rows = order.splice(0, Math.min(opts.batchSize, examples.length)).map((i) => examples[i]);
      const parts: Tensor[] = [];
      const names: string[] = [];
      const seqs = rows.map((e) => e.promptIds.concat(e.targetIds.slice(0, -1)));
      const { ids, mask, T } = padBatch(seqs, padId(model));
      const at: number[] = [];
      const tgt: number[] = [];
      const firstTok: number[] = [];
      rows.forEach((e, b) => {
        e.targetIds.forEach((t, j) => {
          if (j === 0) firstTok.push(at.length);
          at.push(b * T + e.promptIds.length - 1 + j);
          tgt.push(t);
        });
      });
      const got = new Map<string, Tensor>();
      const hooks: Hooks = {};
      for (const l of new Set([...expertLayers, ...pinBase.keys()])) hooks[`layers.${l}.mlp`] = { capture: (x) => got.set(`layers.${l}.mlp`, x) };
      const res = model.forward(ids, [rows.length, T], { attentionMask: mask, logitsAt: Int32Array.from(at), hooks });
      parts.push(scale(crossEntropy(res.logits, Int32Array.from(tgt)), opts.ceWeight));
      names.push('ce');
      // next-token KL to the teacher at the first target token
      // with dropTeacherMisses, rows whose teacher did not state the target learn from CE alone
      const taught = rows.map((e) => !opts.dropTeacherMisses || teach.get(e)!.states);
      const klRows = rows.flatMap((_, b) => (taught[b] ? [b] : []));
      if (opts.klWeight > 0 && klRows.length > 0) {
        const tl = new Float32Array(klRows.length * V);
        klRows.forEach((b, i) => tl.set(teach.get(rows[b])!.logits, i * V));
        parts.push(scale(klDiv(fromData(tl, [klRows.length, V]), indexSelect(res.logits, 0, Int32Array.from(klRows.map((b) => firstTok[b])))), opts.klWeight));
        names.push('kl');
      }
      // aligned positions of the batch, with the teacher's router logits and block outputs there
      const flat: number[] = [];
      const tRouter = new Map<number, Float32Array>();
      const tBlock = new Map<number, Float32Array>();
      const n = rows.reduce((a, e, b) => a + (taught[b] ? teach.get(e)!.pos.length : 0), 0);
      const E = model.config.experts;
      for (const l of routers) tRouter.set(l, new Float32Array(n * E));
      for (const l of expertLayers) tBlock.set(l, new Float32Array(n * H));
      let o = 0;
      rows.forEach((e, b) => {
        if (!taught[b]) return;
        const tr = teach.get(e)!;
        for (const l of routers) tRouter.get(l)!.set(tr.router[l], o * E);
        for (const l of expertLayers) tBlock.get(l)!.set(tr.block.get(l)!, o * H);
        for (const p of tr.pos) flat.push(b * T + p);
        o += tr.pos.length;
      });
      if (n > 0 && routers.length && opts.routerWeight > 0) {
        parts.push(scale(routerKl(res.routerLogits!, flat, tRouter, routers), opts.routerWeight));
        names.push('router');
      }
      if (n > 0 && opts.mseWeight > 0) {
        for (const l of expertLayers) {
          const w = tBlock.get(l)!;
          const act = got.get(`layers.${l}.mlp`)!;
          const mine = indexSelect(reshape(act, [act.size / H, H]), 0, Int32Array.from(flat));
          parts.push(scale(mean(square(sub(mine, fromData(w, [n, H])))), opts.mseWeight / Math.max(meanSquare(w), 1e-8)));
          names.push(`mse${l}`);
        }
      }
      if (pinBase.size > 0) {
        const pflat: number[] = [];
        rows.forEach((e, b) => {
          for (const p of pinPos[exIndex.get(e)!]) pflat.push(b * T + p);
        });
        if (pflat.length > 0) {
          for (const [l, xs] of pinBase) {
            const w = new Float32Array(pflat.length * H);
            let q = 0;
            for (const e of rows) {
              const x = xs[exIndex.get(e)!];
              w.set(x, q);
              q += x.length;
            }
            const act = got.get(`layers.${l}.mlp`)!;
            const mine = indexSelect(reshape(act, [act.size / H, H]), 0, Int32Array.from(pflat));
            parts.push(scale(mean(square(sub(mine, fromData(w, [pflat.length, H])))), opts.pinWeight / pinScale.get(l)!));
            names.push(`pin${l}`);
          }
        }
      }
      // retention: the base model's next-token and router distributions on general text, neighbours, known facts
      const nRet = opts.retainShare > 0 && retain.length ? Math.max(1, Math.round((rows.length * opts.retainShare) / (1 - opts.retainShare))) : 0;
      if (nRet > 0) {
        if (retainOrder.length < nRet) retainOrder.push(...rng.shuffle(retain.map((_, i) => i)));
        const rr = retainOrder.splice(0, Math.min(nRet, retain.length));
        const rb = padBatch(rr.map((i) => retain[i].ids), padId(model));
        const pos: number[] = [];
        const all: number[] = [];
        const bl: Float32Array[] = [];
        rr.forEach((ri, b) => {
          const r = retain[ri];
          if (r.lastOnly) pos.push(b * rb.T + r.ids.length - 1);
          else for (let t = 0; t < r.ids.length; t++) pos.push(b * rb.T + t);
          for (let t = 0; t < r.ids.length; t++) all.push(b * rb.T + t);
          bl.push(retainBase[ri].logits);
        });
        const base = new Float32Array(pos.length * V);
        let off = 0;
        for (const x of bl) {
          base.set(x, off);
          off += x.length;
        }
        const rres = model.forward(rb.ids, [rr.length, rb.T], { attentionMask: rb.mask, logitsAt: Int32Array.from(pos) });
        parts.push(scale(klDiv(fromData(base, [pos.length, V]), rres.logits), opts.retainWeight * lambda));
        names.push('retain');
        if (routers.length && opts.routeRetainWeight > 0) {
          const tr = new Map<number, Float32Array>();
          for (const l of routers) {
            const a = new Float32Array(all.length * E);
            let q = 0;
            for (const ri of rr) {
              a.set(retainBase[ri].router[l], q);
              q += retainBase[ri].router[l].length;
            }
            tr.set(l, a);
          }
          parts.push(scale(routerKl(rres.routerLogits!, all, tr, routers), opts.routeRetainWeight));
          names.push('route_retain');
        }
      }
      const loss = parts.reduce((a, b) => add(a, b));
      opt.zeroGrad();
      loss.backward();
      clipGradNorm(params, 1);
      opt.step();
      lossVal = loss.item();
      windowLoss += lossVal / opts.evalEvery;
      parts.forEach((p, i) => termSum.set(names[i], (termSum.get(names[i]) ?? 0) + p.item() / opts.evalEvery));
      if ((step + 1) % opts.evalEvery === 0) {
        acc = solvedFraction(model, examples);
        if (constrained) {
          lastMonitor = monitorKl(model, opts.monitor!, monitorBase);
          lambda = dualStep(lambda, lastMonitor, dual);
        }
        if (acc === 1) {
          solvedChecks++;
          // as lora-train: solved twice in a row and the windowed loss no longer falls by 2%
          const stalled = windowLoss > 0.98 * prevCheckLoss && windowLoss <= prevCheckLoss * 1.05;
          // under the KL constraint, no early stop while the monitor KL is over its budget
          const within = !constrained || lastMonitor! <= dual.budget;
          if (!anneal && solvedChecks >= 2 && stalled && within) {
            // stopping at a high rate leaves retention without the low-rate tail that settles it: anneal to 0 first
            anneal = planAnneal(step, { ...sched, annealSteps: opts.annealSteps });
            if (!anneal) {
              step++;
              break;
            }
            stepCap = anneal.end;
            say(`step ${step + 1}: solved and stalled at lr ${anneal.lr.toExponential(2)}; annealing to 0 over ${anneal.end - anneal.from} steps`);
          }
        } else solvedChecks = 0;
        prevCheckLoss = windowLoss;
        say(`step ${step + 1}: loss ${windowLoss.toFixed(4)} (mean of the last ${opts.evalEvery}: ${[...termSum].map(([k, v]) => `${k} ${v.toFixed(3)}`).join(', ')}), train solved ${(acc * 100).toFixed(0)}%${constrained ? `, monitor kl ${lastMonitor!.toFixed(4)}, λ ${lambda.toFixed(2)}` : ''}`);
        windowLoss = 0;
        termSum.clear();
      }
    }
    acc = solvedFraction(model, examples);
    const trainableParams = params.reduce((a, p) => a + p.size, 0);
    const out: DistillResult = { adapter, experts, routers, phaseA: phaseALoss, phaseASteps: aSteps, steps: step, solved: acc === 1, finalLoss: lossVal, trainAccuracy: acc, trainableParams, lastLr: opt.lr,
      teacherStated: teachArr.filter((t) => t.states).length };
    if (constrained) {
      out.monitorKl = monitorKl(model, opts.monitor!, monitorBase);
      out.dualLambda = lambda;
    }
    return out;
  } finally {
    model.setAdapters(prev);
  }
}
