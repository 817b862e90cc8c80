/**
 * Targeted forgetting by rank-one and MEMIT edits (`lora-train --method rome`
 * or `memit` with `op: forget` facts). The target is the one probe-gen gave:
 *
 * - `abstain` (probe-gen --forget-target abstain: a train `counterfactual`
 *   probe teaching the abstention text): the fact is edited as an insert of
 *   that text, by the method's own insert machinery;
 * - `any` (the default: any answer but the old one): ROME's value
 *   optimisation with the NLL of the new answer replaced by log P(old) at
 *   the prompt's last token (the old answer's NLL maximised) on the prompts
 *   where P(old) is still above `pStop`, plus a KL to the base model's
 *   distribution with the old answer taken out (so the freed mass goes where
 *   the model already puts it), under the same KL (essence, keep prompts),
 *   weight decay and norm clamp. It stops when P(old) < `pStop` on every
 *   rewriting prompt. (MEMIT's batch fit uses the unlikelihood −log(1 − P),
 *   `unlikelihoodMix`, which its refinement reaches the stop with.)
 *
 * The key side (k*, C⁻¹k*) is ROME's unchanged: the edit is ΔW = δ Aᵀ with
 * A k* = 1, fitted through ΔW itself as edit/rome.ts does.
 */
import {
  AdamW, add, exp, fromData, full, gather, klDiv, log, logSoftmax, mul, noGrad, reshape, scale, square, sub, sum, zeros, type Tensor,
} from '../tensor/index.js';
import type { CausalLM } from '../models/causal-lm.js';
import type { Tokenizer } from '../models/loader.js';
import { LoraAdapter } from '../models/lora.js';
import { encodeTrainingPair, nameSharersFirst, subjectSpan, type EditFact, type Example, type Rec, type TemplateBank } from './data.js';
import { lastLogits, mlpOutModule, mlpStart, padBatch, padId, top1 } from './model-util.js';
import { rankOneDirection, refitKey, subjectKey, type KeyStats, type RomeOptions, type RomeResult } from './rome.js';

export type ForgetTarget = { kind: 'abstain'; text: string } | { kind: 'any' };

/**
 * What a forget fact becomes: the abstention text when probe-gen taught one
 * (a train counterfactual probe of the fact expecting it as `new`), else any
 * answer but the old one.
 */
export function forgetTargetOf(fact: EditFact, probes: readonly Rec[]): ForgetTarget {
  for (const p of probes) {
    if (p.fact_id === fact.id && p.role === 'counterfactual' && p.split === 'train' && p.expect === 'new' && typeof p.target === 'string' && p.target.trim()) {
      return { kind: 'abstain', text: p.target };
    }
  }
  return { kind: 'any' };
}

/** A forget fact edited as an insert of the abstention text (the manifest still states the forget). */
export function abstainInsert(fact: EditFact, text: string): EditFact {
  return { ...fact, op: 'insert', target_new: text };
}

/** How many check prompts no longer give the old answer's first token as top-1. */
export function forgetSolved(model: CausalLM, checks: readonly Example[]): number {
  const got = top1(model, checks.map((c) => c.promptIds));
  return got.filter((t, i) => t !== checks[i].targetIds[0]).length;
}

export interface RomeForgetOptions extends RomeOptions {
  /** Stop once P(old answer) is below this on every rewriting prompt. */
  pStop: number;
  /** Weight of the KL to the base model's distribution without the old answer, on the rewriting prompts. */
  restWeight: number;
}

/**
 * "Any answer but the old one", nearest the base model: each row of `lp`
 * (base log-probabilities, [rows, V]) with its old answer taken out — and,
 * where `kinds[r]` is given, every token outside it — renormalised (log
 * space; a left-out token at −1e4), as a KL teacher.
 */
export function restLogits(lp: Tensor, olds: readonly number[], kinds?: readonly (ReadonlySet<number> | null)[]): Tensor {
  const V = lp.shape[lp.ndim - 1];
  const rows = olds.length;
  const out = new Float32Array(rows * V);
  for (let r = 0; r < rows; r++) {
    const row = lp.data.subarray(r * V, (r + 1) * V);
    const kind = kinds?.[r];
    const inRest = (v: number) => v !== olds[r] && (!kind || kind.has(v));
    let z = 0;
    for (let v = 0; v < V; v++) if (inRest(v)) z += Math.exp(row[v]);
    for (let v = 0; v < V; v++) out[r * V + v] = inRest(v) ? row[v] - Math.log(z) : -1e4;
  }
  return fromData(out, [rows, V]);
}

/** Our default stop: under the forget gate's P(old) ≤ 0.05 with a margin for held-out phrasings. */
export const FORGET_P_STOP = 0.01;

/**
 * ROME's value options for forgetting where they differ from its inserts':
 * a smaller step (Adam moves δ by about lr each step, and a forget is met long
 * before an insert's NLL stop would be) and the rest-distribution KL.
 */
export const ROME_FORGET_DEFAULTS = { pStop: FORGET_P_STOP, vLr: 0.25, restWeight: 1 };


/**
 * One rank-one edit that makes `fact.target_true` unlikely after the fact's
 * prompts (see the module comment). `nll` in the result is the mean
 * −log P(old) at the end (larger is more forgotten); `pOld` the largest
 * P(old) over the rewriting prompts.
 */
export function romeForget(model: CausalLM, tok: Tokenizer, fact: EditFact, stats: KeyStats, opts: RomeForgetOptions): RomeResult & { pOld: number } {
  if (fact.op !== 'forget' || fact.target_true === undefined) throw new RangeError(`romeForget: fact ${fact.id} is not a forget fact with target_true`);
  const l = opts.layer;
  if (stats.layer !== l) throw new RangeError(`ROME: statistics are for layer ${stats.layer}, the edit is at layer ${l}`);
  const mod = mlpOutModule(model, l);
  const H = model.config.hidden;
  const prev = model.activeAdapters();
  model.setAdapters([]);
  try {
    const base = fact.prompt.replace('{}', fact.subject);
    const prefixes = [''].concat(opts.prefixes.filter((p) => p.trim()));
    const phrasings = [...new Set([base, ...(opts.prompts ?? [])])];
    const rows = phrasings.flatMap((text) => prefixes.map((pre) => ({ plain: !pre, prompt: pre ? `${pre} ${text}` : text }))).map(({ plain, prompt }) => {
      const { promptIds, targetIds } = encodeTrainingPair(tok, prompt, fact.target_true!);
      const [, s1] = subjectSpan(tok, promptIds, fact.subject);
      if (s1 < 0) throw new RangeError(`ROME: subject ${JSON.stringify(fact.subject)} not found in the tokens of ${JSON.stringify(prompt)}`);
      return { promptIds, old: targetIds[0], subj: s1 - 1, plain };
    });
    const { ids, mask, T } = padBatch(rows.map((r) => r.promptIds), padId(model));
    const B = rows.length;

    // k* and ‖o‖ at the subject, and the rank-one direction, as ROME
    const { kStar, oNorm } = subjectKey(model, l, ids, [B, T], mask, rows.map((r, b) => [b, r.subj] as const));
    const A = rankOneDirection(stats, opts.ridge, kStar);

    const delta = zeros([H, 1], { requiresGrad: true });
    const adapter = new LoraAdapter(opts.name, 1, 1, new Map([[mod, { A: fromData(A, [1, A.length]), B: delta }]]), model.arch.fanInFanOut);
    const essence = Int32Array.from(tok.encode(`${fact.subject} is a`));
    const essAt = Int32Array.from([essence.length - 1]);
    const essBase = noGrad(() => model.forward(essence, [1, essence.length], { logitsAt: essAt }).logits);
    const keepRows = (opts.keep ?? []).map((p) => tok.encode(p)).filter((r) => r.length > 0);
    const keep = keepRows.length ? padBatch(keepRows, padId(model)) : null;
    const keepBase = keep ? noGrad(() => model.forward(keep.ids, [keepRows.length, keep.T], { attentionMask: keep.mask, logitsAt: keep.last }).logits) : null;
    const opt = new AdamW([delta], { lr: opts.vLr * (oNorm / Math.sqrt(H)), weightDecay: 0 });
    const lastAt = Int32Array.from(rows.map((r, b) => b * T + r.promptIds.length - 1));
    const oldIds = Int32Array.from(rows.map((r) => r.old));
    // "any answer but the old one", closest to the base model: its next-token distribution with the old answer
    // taken out and renormalised (KL to it, × restWeight), so the freed mass goes where the model already puts it
    const rest = opts.restWeight > 0
      ? noGrad(() => restLogits(logSoftmax(model.forward(ids, [B, T], { attentionMask: mask, logitsAt: lastAt }).logits), rows.map((r) => r.old)))
      : null;
    // the plain prompts and those with a prefix are two means (ROME's plainWeight)
    const nPlain = rows.filter((r) => r.plain).length;
    const nPre = B - nPlain;
    const pw = nPre > 0 ? opts.plainWeight : 1;
    const rowW = Float32Array.from(rows, (r) => (r.plain ? pw / nPlain : (1 - pw) / nPre));
    // the rank-one update changes nothing before layer l's MLP output projection: every δ step starts there
    const fromRows = mlpStart(model, l, ids, [B, T], mask);
    const fromEss = mlpStart(model, l, essence, [1, essence.length]);
    const fromKeep = keep ? mlpStart(model, l, keep.ids, [keepRows.length, keep.T], keep.mask) : null;
    model.setAdapters([{ adapter }]);
    let step = 0;
    let nll = 0;
    let pOld = 1;
    /** P(old) on every rewriting row, and the edit's loss (the adapter as it stands). */
    const objective = () => {
      const { logits } = model.forward(ids, [B, T], { attentionMask: mask, logitsAt: lastAt, fromMlp: fromRows });
      const p = exp(reshape(gather(logSoftmax(logits), oldIds, 1), [B]));
      // log P(old) on the rows still above the stop (its NLL maximised there), weighted as ROME weights its NLL:
      // the unlikelihood −log(1 − P) fades as P falls and lost to the weight decay at P ≈ 0.07 (dense fixture model)
      const w = fromData(Float32Array.from(rowW, (x, b) => (p.data[b] >= opts.pStop ? x : 0)), [B]);
      let loss = sum(mul(log(add(p, full([B], 1e-12))), w));
      if (rest) loss = add(loss, scale(klDiv(rest, logits), opts.restWeight));
      if (opts.klWeight > 0) {
        const el = model.forward(essence, [1, essence.length], { logitsAt: essAt, fromMlp: fromEss }).logits;
        loss = add(loss, scale(klDiv(essBase, el), opts.klWeight));
      }
      if (keep && opts.keepWeight > 0) {
        const kl = model.forward(keep.ids, [keepRows.length, keep.T], { attentionMask: keep.mask, logitsAt: keep.last, fromMlp: fromKeep! }).logits;
        loss = add(loss, scale(klDiv(keepBase!, kl), opts.keepWeight));
      }
      loss = add(loss, scale(sum(square(delta)), opts.weightDecay / Math.max(oNorm * oNorm, 1e-12)));
      return { p: p.data, loss };
    };
    const readP = (p: Float32Array) => {
      pOld = Math.max(...p);
      nll = 0;
      for (let b = 0; b < B; b++) nll -= rowW[b] * Math.log(Math.max(p[b], 1e-30));
    };
    for (step = 0; step < opts.vSteps; step++) {
      const { p, loss } = objective();
      readP(p);
      if (pOld < opts.pStop) break;
      opt.zeroGrad();
      loss.backward();
      opt.step();
      let s = 0;
      for (const v of delta.data) s += v * v;
      const max = opts.clamp * oNorm;
      if (Math.sqrt(s) > max) for (let i = 0; i < H; i++) delta.data[i] *= max / Math.sqrt(s);
    }
    if ((opts.keySteps ?? 0) > 0) {
      refitKey(model, tok, adapter, mod, l, opts, opt, () => objective().loss);
      readP(noGrad(() => objective().p));
    }
    let dn = 0;
    for (const v of delta.data) dn += v * v;
    // plain tensors in the stored adapter (no autograd leaf)
    const m = adapter.modules.get(mod)!;
    adapter.modules.set(mod, { A: fromData(Float32Array.from(m.A.data), m.A.shape), B: fromData(Float32Array.from(delta.data), [H, 1]) });
    return { adapter, module: mod, nll, deltaNorm: Math.sqrt(dn), steps: step, pOld };
  } finally {
    model.setAdapters(prev);
  }
}

/**
 * romeForget at the first of `layers` whose edit leaves no check prompt with
 * the old answer as top-1 (with a monitor: of the first `compare` layers that
 * do, the one that lowers the monitor's answer least); when none does, the
 * one that solves the most (then the lowest P(old)).
 */
export function romeForgetAtBestLayer(
  model: CausalLM, tok: Tokenizer, fact: EditFact, layers: readonly number[], statsAt: (layer: number) => KeyStats,
  o: {
    base: Omit<RomeForgetOptions, 'layer' | 'prefixes' | 'prompts' | 'keep' | 'name'>; prefixes: string[]; prompts: string[]; keep: string[]; checks: readonly Example[];
    /**
     * Prompts whose answer the forget must leave (other subjects with the same answer; never a tested or
     * kept prompt) and that answer's first token: with them, the first `compare` layers are all tried and
     * of those that forget on every check the one that lowers the answer least on them is kept.
     */
    monitor?: { prompts: number[][]; answer: number; compare: number };
  },
): { r: RomeResult & { pOld: number }; layer: number; solved: number; tried: number[]; monitorDrop?: number } {
  let best: { r: RomeResult & { pOld: number }; layer: number; solved: number; drop: number } | null = null;
  const tried: number[] = [];
  const mon = o.monitor && o.monitor.prompts.length > 0 ? o.monitor : null;
  const answerLogP = (): number => {
    if (!mon) return 0;
    const lp = noGrad(() => logSoftmax(lastLogits(model, mon.prompts)));
    const V = lp.shape[lp.ndim - 1];
    let s = 0;
    for (let r = 0; r < mon.prompts.length; r++) s += lp.data[r * V + mon.answer];
    return s / mon.prompts.length;
  };
  const before = answerLogP();
  for (const layer of layers) {
    tried.push(layer);
    const r = romeForget(model, tok, fact, statsAt(layer), { ...o.base, layer, prefixes: o.prefixes, prompts: o.prompts, keep: o.keep, name: fact.id });
    const prev = model.activeAdapters();
    model.setAdapters([{ adapter: r.adapter }]);
    const solved = forgetSolved(model, o.checks);
    const drop = mon && solved === o.checks.length ? before - answerLogP() : Infinity;
    model.setAdapters(prev);
    const better = !best || solved > best.solved || (solved === best.solved && (drop < best.drop || (drop === best.drop && r.pOld < best.r.pOld)));
    if (better) best = { r, layer, solved, drop };
    if (solved === o.checks.length && (!mon || tried.length >= mon.compare)) break;
  }
  const { drop, ...kept } = best!;
  return { ...kept, tried, ...(Number.isFinite(drop) ? { monitorDrop: drop } : {}) };
}

/**
 * The monitor of a ROME forget (romeForgetAtBestLayer): the relation's other
 * subjects whose answer is the forgotten one, by their prompt and the
 * relation's training phrasings, none a prompt in `avoid` (the stream's test
 * probes and the keep prompts). The edit is never fitted on them; they show
 * how far the forget reaches to facts that share the answer.
 */
export function romeForgetMonitor(known: readonly Rec[], templates: TemplateBank | null, fact: EditFact, avoid: ReadonlySet<string>, n = 32): string[] {
  const same = known.filter((k) => k.relation === fact.relation && typeof k.subject === 'string' && k.subject !== fact.subject &&
    typeof k.prompt === 'string' && k.target_true === fact.target_true);
  // subjects sharing a word of the fact's first (the forget reaches them first), each by its prompt, then the phrasings
  const subjects = nameSharersFirst(same, fact.subject);
  const bank = templates?.train.get(fact.relation ?? '') ?? [];
  const out = new Set<string>();
  for (const k of subjects) out.add((k.prompt as string).replace('{}', k.subject as string));
  for (const t of bank) for (const k of subjects) out.add(t.replace('{}', k.subject as string));
  return [...out].filter((p) => !avoid.has(p)).slice(0, n);
}

/**
 * The answer's other holders (romeForgetMonitor's list) split in two: every other prompt, up to `hold`,
 * held in the key refit (the forget must leave them), and the rest, up to `monitorN`, the monitor that
 * picks the layer, so the layer is never chosen on a prompt the fit held. hold 0: all of them monitor.
 */
export function romeForgetHeldAndMonitor(
  known: readonly Rec[], templates: TemplateBank | null, fact: EditFact, avoid: ReadonlySet<string>, hold: number, monitorN = 32,
): { held: string[]; monitor: string[] } {
  const all = romeForgetMonitor(known, templates, fact, avoid, monitorN + hold);
  const held = all.filter((_, i) => i % 2 === 0).slice(0, hold);
  const heldSet = new Set(held);
  return { held, monitor: all.filter((p) => !heldSet.has(p)).slice(0, monitorN) };
}

/** −log(1 − P) from a token's NLL −log P (the unlikelihood a forget token's loss is). */
export function unlikelihoodOf(nll: number): number {
  return -Math.log(1 - Math.exp(-nll) + 1e-6);
}

/** The per-fact stop of a forget fact in MEMIT's value fit: unlikelihood below that of P(old) = FORGET_P_STOP. */
export const FORGET_UL_STOP = -Math.log(1 - FORGET_P_STOP);

/**
 * Per-token losses of a value fit over inserts and forgets: `per` is the
 * cross-entropy (−log P of each row's target token); where `forgetMask` is 1
 * (a forget fact's old answer) it becomes the unlikelihood −log(1 − P).
 */
export function unlikelihoodMix(per: Tensor, forgetMask: Float32Array): Tensor {
  if (!forgetMask.some((x) => x > 0)) return per;
  const n = forgetMask.length;
  const ul = scale(log(add(sub(full([n], 1), exp(scale(per, -1))), full([n], 1e-6))), -1);
  return add(mul(per, fromData(forgetMask.map((x) => 1 - x), [n])), mul(ul, fromData(forgetMask, [n])));
}
