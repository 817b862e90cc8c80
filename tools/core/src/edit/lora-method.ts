/**
 * `lora-train --method lora`: one LoRA adapter per batch of facts, trained by
 * two-phase distillation (objective distill) or on the targets alone (sft);
 * op "forget" facts lower P(old answer) and, where probe-gen wrote the
 * abstain target (--forget-target abstain), also learn the abstention text
 * as an insert of it. A share of general text, neighbour
 * prompts and known facts is held to the base model (KL).
 */
import { UsageError } from '../records/errors.js';
import type { CausalLM } from '../models/causal-lm.js';
import { mlpModules } from '../models/arch/index.js';
import { buildExamples, buildRetain, encodeTrainingPair, statementInContext, subjectSpan, testedPrompts, untested, type EditFact, type Example, type Rec } from './data.js';
import type { Tokenizer } from '../models/loader.js';
import { LORA_DEFAULTS, rejectedFirstTokens, trainLora, type Objective, type Schedule } from './lora-train.js';
import { knownFactRetainAndMonitor, knownFactRetainPrompts, lookalikePhrasings, neighbourPhrasings } from './quality.js';
import { isMlpOut, middleLayer, mlpOutModule, moduleLayer, resolveTargets } from './model-util.js';
import { dominantKeySubspace, mlpKeys, type KeySubspace } from './null-space.js';
import { abstainInsert, forgetTargetOf } from './rank-one-forget.js';
import { pickPrefixes, prefixAvoidNames } from './rome-method.js';
import { Rng } from '../util/random.js';
import type { EditCall, EditMethod, EditResources, MadeEdit } from './method.js';

export interface LoraOptions {
  /** Absent: distill, or sft for a large batch (LARGE_BATCH). */
  objective?: Objective;
  /** LoRA rank. Absent: 32 for a large batch; 16 above 30 facts a batch at the last layer (a hundred edits' kl); else 8. */
  rank?: number;
  alpha: number;
  lr: number;
  /** Step cap. Absent: 400, or 2,000 for a large batch. */
  steps?: number;
  /**
   * A batch of more than this many facts gets a step cap of steps × facts / this
   * (0: --steps for every batch): 30 edits in 400 steps ended at kl 0.062, in
   * 1,200 at 0.043 (tuning requests 1–30). Absent: 10, or 0 for a large batch.
   */
  scaleStepsAbove?: number;
  /** A batch of more insert facts than this, on a dense model with no targets given, trains LARGE_BATCH's recipe (0: never). */
  largeBatchAbove: number;
  /**
   * After training, the adapter's delta is scaled down to the smallest scale at which its training
   * rows' solved share falls by at most this much (shrinkScale; 0: never). Absent:
   * LARGE_BATCH.shrinkDrop for a large batch, else 0.
   */
  shrinkDrop?: number;
  /**
   * Hidden-state retention (trainLora's hiddenRetainWeight; 0: off). Absent:
   * LARGE_BATCH.hiddenRetainWeight for a large batch of more than
   * LARGE_BATCH.hiddenRetainAbove facts, else 0.
   */
  hiddenRetainWeight?: number;
  phaseASteps: number;
  rowsPerStep: number;
  retainShare: number;
  retainWeight: number;
  /** Neighbour prompts per fact (same relation, other subjects). */
  neighbours: number;
  /** Look-alike known facts per fact held to the base model in every training phrasing (lookalikePhrasings: for a forget, the same relation and old answer first; then shared name tokens). */
  lookalikes: number;
  /** Known facts of every relation held to the base model too (KL). */
  retainFacts: number;
  /** Training phrasings per known fact in that retention set (never a held-out phrasing). */
  retainPhrasings: number;
  /** General-text documents (from the retention corpus) held to the base model at every position. */
  retainDocuments: number;
  /** Trained over a folded adapter (lora-train --over): documents that name nothing the world knows, held to the base weights. */
  baseDocuments: number;
  /** Trained over a folded adapter: this many of the facts it carries trained again as edit rows (rehearsal). */
  replay: number;
  /** Phase-B learning-rate schedule and its warmup steps (cosine). */
  schedule: Schedule;
  warmup: number;
  /** Cosine: steps of the anneal to rate 0 when training stops early (0: stop at once). */
  annealSteps: number;
  /** β of --objective dpo. */
  dpoBeta: number;
  /** Retention KL as a mean over prompts plus a mean over document positions. */
  retainPerKind: boolean;
  /** Forget rows learn the base model's distribution without the old answer. */
  forgetToRest: boolean;
  /** Forget rows learn the base model's distribution over the relation's other answers (from the known facts). Absent: decided by loraSiteOptions. */
  forgetToKind?: boolean;
  /**
   * Prefixed copies of each insert training prompt (0: none): each copy puts a
   * short general-text prefix (ROME's: the first words of a corpus document
   * naming no known entity) before the prompt, so the edit has to be carried
   * by the subject whatever precedes it, not by one sentence's tokens.
   * Absent: decided by loraSiteOptions (1 at the last layer for up to 30
   * facts a batch, else 0).
   */
  prefixRows?: number;
  /** Distill: the teacher's MLP outputs matched at the subject's tokens only (not to the end of the prompt). Absent: decided by loraSiteOptions (on at the last layer for up to 30 facts a batch, else off). */
  mseSubjectOnly?: boolean;
  /**
   * Distill: the insert rows' teacher from this many context frames (1: the
   * default frame alone): the mean of the teachers' next-token distributions
   * and MLP outputs, the frames being the default one, then the world's other
   * training frames (templates.json `context.train`; never a held-out frame).
   */
  teacherFrames: number;
  /** Directions of the preserved keys' subspace kept out of lora_A (0: no null-space constraint). */
  nullSpaceRank: number;
  /**
   * Forget facts with probe-gen's abstain target: weight of their abstention
   * rows' cross-entropy (0: the abstain probes are ignored, unlikelihood only).
   */
  abstainWeight: number;
  /** The abstention rows read distill's teacher (the abstention stated in context); false: CE only. */
  abstainDistill: boolean;
  /** Weight of the forget rows' unlikelihood of the old answer (trainLora's forgetWeight). Absent: decided by loraSiteOptions. */
  forgetWeight?: number;
  /** The forget rows stop pushing once P(old answer) is below this (trainLora's forgetFloor). Absent: decided by loraSiteOptions. */
  forgetFloor?: number;
  /** --prefix-rows also makes prefixed copies of the forget rows of facts with the abstain target. */
  abstainPrefixForget: boolean;
  /** The early stop reads a forget row solved only when P(old answer) is also below this (0: top-1 rule only; trainLora's forgetStopP). Absent: decided by loraSiteOptions. */
  forgetStopP?: number;
  /** The forget rows' loss on the old answer (trainLora's forgetLoss). */
  forgetLoss: 'unlikelihood' | 'log';
  /**
   * Copies of each forget row of a subject with a first name and a surname,
   * the surname replaced by a made-up word (nameAblatedForgetRows); 0 adds
   * none. Default 1 since 2026-12-06 (lora-train README, "The first name's
   * reading forgotten too": held-out persons 93 → 98 of 100 on world, 195 →
   * 193 of 200 over two seeds on world-b).
   */
  forgetNameParts: number;
  /**
   * KL-constrained training (0: off): the retention weight is raised by dual
   * ascent while the KL on known-fact prompts held aside from the retention
   * rows (training phrasings the retain rows do not use) is above this budget.
   */
  klBudget: number;
  /** Known-fact prompts the --kl-budget constraint is read on. */
  klMonitor: number;
  /** Dual ascent step on log λ per check (--kl-budget). */
  dualRate: number;
  /** Largest multiplier λ on --retain-weight (--kl-budget); the smallest is 1. */
  dualMax: number;
}

/** What a batch gets where objective, steps and their scaling are not given and the batch is not large. */
export const BATCH_DEFAULTS = { objective: LORA_DEFAULTS.objective, steps: LORA_DEFAULTS.steps, scaleStepsAbove: 10 } as const;

/**
 * A large batch (more than `above` insert facts on a dense model, no targets
 * given): the MLPs of the last `layers` layers, sft, rank 32, a fixed
 * 2,000-step cap (lora-train README "A thousand edits in one batch"; chosen
 * on world cf 1–1,000). Counterfactuals 201–500 of world (300 in one batch)
 * read 100 / 93.2 / 98.7 %, kl 0.058 in 219 s with it against the small-batch
 * defaults' 99.3 / 84.0 / 98.0 %, kl 0.081 in 449 s; 1,000 read 99.3 / 93.3
 * / 100 %, kl 0.110 in 251 s against 99.1 / 81.0 / 94.2 %, kl 0.214 in
 * 1,582 s. The threshold was 100 at first; measured between (world cf
 * 201+, kl small-batch → recipe): 120 facts 0.039 → 0.065, 150 0.052 → 0.054,
 * 200 0.059 → 0.047, so up to 150 facts kept the small-batch defaults.
 * Trained, the delta is shrunk (`shrinkDrop`, shrinkScale) to the smallest
 * scale at which the training rows' solved share falls by at most 1 point:
 * world cf 1–1,000 kl 0.121 → 0.097 at 98.8 / 88.9 / 100 %, cf 201–500 0.063
 * → 0.047 (chosen on world; README "Shrinking a large batch"). Shrunk, the
 * recipe reads kl 0.034 at 150 facts against the small-batch defaults'
 * 0.052, and 0.040 against 0.037 at 120, so the threshold is 120 since.
 * Above 300 facts the retention also holds the last two layers' MLP outputs
 * at the retention rows' positions (hiddenRetainWeight 3, chosen on world
 * among 0.1, 1, 3 and 10): world cf 1–1,000 kl 0.097 → 0.071 at 98.3 / 84.5
 * / 98.1 %; held out, world-b's two 1,000-edit draws 0.136 / 0.126 → 0.088 /
 * 0.086, world's other two 0.107 / 0.118 → 0.117 / 0.111; 400 and 500 facts
 * now pass on both worlds (kl 0.030–0.049). At 150–200 it took paraphrase
 * under 80% on three of four runs, so up to 300 it stays off (README
 * "Hidden-state retention"). Since later that day it holds every position
 * of each retention row as well as the scored ones (world cf 1–1,000,
 * `--seed 1`, 500 facts: kl 0.071 / 0.117 / 0.040 → 0.070 / 0.082 / 0.038;
 * held out in README "At every position too").
 */
export const LARGE_BATCH = { above: 120, layers: 2, objective: 'sft', rank: 32, steps: 2000, scaleStepsAbove: 0, shrinkDrop: 0.01, hiddenRetainWeight: 3, hiddenRetainAbove: 300 } as const;

export const LORA_METHOD_DEFAULTS: LoraOptions = {
  alpha: LORA_DEFAULTS.alpha,
  lr: LORA_DEFAULTS.lr,
  largeBatchAbove: LARGE_BATCH.above,
  phaseASteps: LORA_DEFAULTS.phaseASteps,
  rowsPerStep: LORA_DEFAULTS.batchSize,
  retainShare: LORA_DEFAULTS.retainShare,
  retainWeight: LORA_DEFAULTS.retainWeight,
  neighbours: 40,
  lookalikes: 0,
  retainFacts: 2000,
  retainPhrasings: LORA_DEFAULTS.retainPhrasings ?? 1,
  retainDocuments: LORA_DEFAULTS.retainDocuments ?? 32,
  baseDocuments: 256,
  replay: 100,
  schedule: LORA_DEFAULTS.schedule ?? 'constant',
  warmup: LORA_DEFAULTS.warmupSteps ?? 0,
  annealSteps: LORA_DEFAULTS.annealSteps ?? 0,
  dpoBeta: LORA_DEFAULTS.dpoBeta ?? 0.1,
  retainPerKind: false,
  forgetToRest: false,
  // prefixRows, mseSubjectOnly and the forget rows' forgetToKind, forgetWeight, forgetFloor: absent,
  // decided by where the targets are (loraSiteOptions)
  // measured for issue 17's one-relation case (lora-train README "One relation: several teacher frames")
  teacherFrames: 1,
  nullSpaceRank: 0,
  abstainWeight: 1,
  // the abstention rows (only where probe-gen wrote the abstain target): CE only, as the teacher's
  // in-context "X works for not." still carries the old fact and kept it (tuning forget 1–10, seed 0:
  // gone 90.0% with the teacher, 95.0% without); their forget rows take --prefix-rows copies too
  abstainDistill: false,
  abstainPrefixForget: true,
  forgetLoss: 'unlikelihood',
  forgetNameParts: 1,
  klBudget: 0,
  klMonitor: 256,
  dualRate: 0.1,
  dualMax: 8,
};

const d = LORA_METHOD_DEFAULTS;

/**
 * The default LoRA targets: the last layer's MLP, its input and output
 * projections (GPT-2's c_fc and c_proj; Llama's gate, up and down
 * projections; a sparse MoE layer's every expert's w1, w3 and w2, the router
 * untouched), where the prompt's last token already holds subject and
 * relation together and the answer is read out. Measured on the dense
 * fixture model (lora-train README "The last layer's MLP"), held out on both
 * worlds: 30 edits in one adapter kl 0.094 / 0.075 at ROME's layer 0 (the
 * previous default) → 0.020 / 0.040, ten cities moved 40 / 75 → 80 / 80 %
 * of held-out phrasings (with the prefixed rows and subject-only MSE that go
 * with this site, below). On the MoE fixture model (since 2026-12-04; before,
 * layer 0's experts' output projections): tuning requests 1–40, four sets of
 * ten, kl 0.058 / 0.050 / 0.090 / 0.064 → 0.042 / 0.022 / 0.024 / 0.038
 * (lora-train README "The last layer's experts on the MoE model").
 */
export function defaultLoraTargets(model: CausalLM): string[] {
  return mlpModules(model.arch, model.config, model.config.layers - 1).flatMap((m) => [...m.in, m.out]);
}

/** True when every target module is in the model's last layer (the default targets' site). */
export function targetsAtLastLayer(model: CausalLM, targets: readonly string[]): boolean {
  return targets.length > 0 && targets.every((m) => moduleLayer(m) === model.config.layers - 1);
}

/** Up to this many facts a batch the last-layer defaults add prefixed rows; above, a larger rank instead. */
export const LAST_LAYER_FEW_FACTS = 30;

/**
 * The options that depend on where the targets are and on the batch's size,
 * where not given (tuning split, lora-train README "The last layer's MLP"):
 * at the last layer, up to 30 facts a batch, prefixRows 1 and mseSubjectOnly
 * on (cities 1–10 / 21–30: held-out paraphrase 81 / 80 → 90.5 / 90 %, kl
 * 0.010 / 0.012 → 0.017); above 30, both off and rank 16 (counterfactuals
 * 1–100: kl 0.041 at rank 8, 0.026 at 16; 0.047 at 16 with the prefixed
 * rows). Elsewhere rank 8 and both off (at layer 0 the two raised kl:
 * cities 21–30 0.035 → 0.060).
 */
export function loraSiteOptions(
  model: CausalLM, targets: readonly string[], facts: number, o: LoraOptions, forgets = 0, large = false,
): LoraOptions & { objective: Objective; steps: number; scaleStepsAbove: number; rank: number; prefixRows: number; mseSubjectOnly: boolean; forgetToKind: boolean; forgetWeight: number; forgetFloor: number; forgetStopP: number } {
  const last = targetsAtLastLayer(model, targets);
  const few = facts <= LAST_LAYER_FEW_FACTS;
  const batch = large ? LARGE_BATCH : BATCH_DEFAULTS;
  // forget rows at the last layer: the replacement over the relation's answers, a stronger push on the
  // old answer, down to a lower floor; only where the batch has `forgets` (forget facts without probe-gen's
  // abstain target, whose replacement is the abstention), so an insert's bundle is unchanged
  const forgetLast = last && forgets > 0;
  const ff = model.config.experts ? LAST_LAYER_FORGET_MOE : LAST_LAYER_FORGET;
  return {
    ...o,
    objective: o.objective ?? batch.objective,
    steps: o.steps ?? batch.steps,
    scaleStepsAbove: o.scaleStepsAbove ?? batch.scaleStepsAbove,
    rank: o.rank ?? (large ? LARGE_BATCH.rank : last && !few ? 16 : LORA_DEFAULTS.rank),
    prefixRows: o.prefixRows ?? (last && few ? 1 : 0),
    mseSubjectOnly: o.mseSubjectOnly ?? (last && few),
    forgetToKind: o.forgetToKind ?? forgetLast,
    forgetWeight: o.forgetWeight ?? (forgetLast ? ff.forgetWeight : LORA_DEFAULTS.forgetWeight),
    forgetFloor: o.forgetFloor ?? (forgetLast ? ff.forgetFloor : LORA_DEFAULTS.forgetFloor),
    forgetStopP: o.forgetStopP ?? (forgetLast ? ff.forgetStopP : 0),
  };
}

/**
 * The forget rows' weight, floor and early stop when every target is in the
 * last layer (with forgetToKind) of a dense model. Weight and floor were
 * chosen on the tuning forget facts 1–10, seeds 0 / 1 / 2 (gone / of the kind
 * on the prompts the base model answers 100 / 97.4, 100 / 87.2, 97.4 / 94.9 %
 * with trainLora's 1 and 0.02 → 100 / 97.4, 100 / 100, 100 / 100 %, kl ≤
 * 0.020 at weight 5); then weight 10 with the early stop also waiting for
 * P(old) < 0.01 (tuning facts 1–30 seed 0, 1–10 seeds 1 / 2: every old answer
 * gone, worst kl 0.020 → 0.012, largest P(old) lower in four of five sets);
 * then the stop at P(old) < 0.002, chosen on forgetting all six facts of a
 * person (16 persons of both worlds: kl lower for every one, 0.005–0.017 →
 * 0.003–0.012; 16 more held out: 0.004–0.012 → 0.003–0.006; the tuning
 * sets' worst kl 0.012 either way; Nami Wickkoov's old answer survived on a
 * prompt at 0.01, not at 0.002); lora-train
 * README "Forgetting at the last layer".
 */
export const LAST_LAYER_FORGET = { forgetWeight: 10, forgetFloor: 0.002, forgetStopP: 0.002 } as const;

/**
 * The same on a sparse MoE model (the last layer's experts): weight 5, the
 * top-1 stop. Weight 10 with the P(old) stop lowered the tuning sets' kl
 * there too (worst 0.051 → 0.030) but raised the largest P(old) left on a
 * prompt in three of five sets (0.130 → 0.202, 0.046 → 0.105, 0.039 →
 * 0.086); README, same section.
 */
export const LAST_LAYER_FORGET_MOE = { forgetWeight: 5, forgetFloor: 0.002, forgetStopP: 0 } as const;

/** A large batch: more insert facts than --large-batch-above on a dense model, and no --targets, --top-k or --layer. */
export function isLargeBatch(model: CausalLM, common: EditCall<unknown>['common'], o: Pick<LoraOptions, 'largeBatchAbove'>, facts: readonly { op?: string }[]): boolean {
  return o.largeBatchAbove > 0 && facts.length > o.largeBatchAbove && facts.every((f) => f.op !== 'forget')
    && !model.config.experts && !common.targets?.length && common.topK === undefined && common.layer === undefined;
}

/** A large batch's targets: the MLPs (input and output projections) of the last LARGE_BATCH.layers layers. */
export function largeBatchTargets(model: CausalLM): string[] {
  const L = model.config.layers, n = Math.min(LARGE_BATCH.layers, L);
  return Array.from({ length: n }, (_, i) => L - n + i).flatMap((l) => mlpModules(model.arch, model.config, l).flatMap((m) => [...m.in, m.out]));
}

/**
 * Target modules for a batch: --targets, else with --top-k the top-k loci's
 * modules, else --layer's MLP output, else the last layer's MLP
 * (defaultLoraTargets). Loci choose only when asked: attrib's causal trace
 * finds the subject's early layers, and trained there 30 edits read kl 0.078
 * through validate where the default targets read 0.020 (README "The last
 * layer's MLP"; as Hase et al. 2023 found, where a fact is traced does not
 * say where an edit of it works best).
 */
export function chooseTargets(model: CausalLM, common: EditCall<unknown>['common'], loci: readonly Rec[]): string[] {
  const layer = common.layer ?? middleLayer(model);
  if (common.targets && common.targets.length > 0) {
    try {
      return resolveTargets(model, common.targets, layer);
    } catch (e) {
      throw new UsageError(`--targets: ${(e as Error).message}`);
    }
  }
  if (loci.length > 0 && common.topK !== undefined) {
    const score = new Map<string, number>();
    for (const l of loci) {
      const mod = typeof l.module === 'string' && l.module ? l.module : mlpOutModule(model, l.layer as number);
      score.set(mod, (score.get(mod) ?? 0) + Math.abs(l.score as number));
    }
    const top = [...score.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).slice(0, common.topK).map(([m]) => m);
    return resolveTargets(model, top, layer);
  }
  if (common.layer !== undefined) return resolveTargets(model, [mlpOutModule(model, layer)], layer);
  return resolveTargets(model, defaultLoraTargets(model), layer);
}

/**
 * Known facts of every relation (other than the batch's own subject and
 * relation pairs), each in `phrasings` seeded training phrasings of its
 * relation (never a held-out one: validate reads retention on those): the
 * knowledge the edit must leave alone, beyond the edited relations.
 */
export function knownFactPrompts(res: Pick<EditResources, 'known' | 'templates'>, batch: readonly EditFact[], n: number, seed: number, phrasings = 1): string[] {
  return knownFactRetainPrompts(res.known, res.templates, batch, n, seed, phrasings);
}

/**
 * The preserved keys' dominant subspace at each MLP-output target: the
 * projection's inputs at every position of the known facts' prompts (one per
 * fact, the batch's own facts left out) and of general text documents.
 */
export function preservedSubspaces(
  res: EditResources, targets: readonly string[], batch: readonly EditFact[], rank: number, seed: number, log: (m: string) => void,
): Map<string, KeySubspace> {
  const tok = res.tokenizer;
  const rows = [
    ...knownFactPrompts(res, batch, res.known.length, seed).map((p) => tok.encode(p)),
    ...res.corpus.slice(0, 256).map((doc) => tok.encode(doc).slice(0, 48)),
  ];
  const out = new Map<string, KeySubspace>();
  for (const m of targets) {
    if (!isMlpOut(res.model, m)) {
      log(`null space: ${m} is not an MLP output projection; left unconstrained`);
      continue;
    }
    const keys = mlpKeys(res.model, moduleLayer(m), rows);
    const sub = dominantKeySubspace(keys, Math.min(rank, keys.shape[1] - 1), { seed });
    log(`null space ${m}: ${sub.k} of ${sub.dim} directions protected (${(100 * sub.energy).toFixed(1)}% of the key energy, ${sub.count} keys)`);
    out.set(m, sub);
  }
  return out;
}

/**
 * Per forget example: the first tokens of every answer its relation has among
 * the known facts (the fact's own old answer left out): the answers of the
 * relation's kind a forgotten fact may be replaced by.
 */
export function forgetKinds(tok: Tokenizer, examples: readonly Example[], facts: readonly EditFact[], known: readonly Rec[]): Map<Example, number[]> {
  const rel = new Map(facts.map((f) => [f.id, f.relation]));
  const objects = new Map<string, Set<string>>();
  for (const k of known) {
    if (typeof k.relation !== 'string' || typeof k.target_true !== 'string') continue;
    (objects.get(k.relation) ?? objects.set(k.relation, new Set()).get(k.relation)!).add(k.target_true);
  }
  const out = new Map<Example, number[]>();
  for (const e of examples) {
    const r = rel.get(e.factId);
    if (e.mode !== 'forget' || !r || !objects.has(r)) continue;
    const ids = new Set<number>();
    for (const o of objects.get(r)!) {
      const id = encodeTrainingPair(tok, e.prompt, o).targetIds[0];
      if (id !== e.targetIds[0]) ids.add(id);
    }
    out.set(e, [...ids]);
  }
  return out;
}

/**
 * The forget facts of a batch whose probes carry probe-gen's abstain target
 * (forgetTargetOf), each as an insert of its abstention text (abstainInsert).
 */
export function abstainFacts(batch: { facts: readonly EditFact[]; probes: readonly Rec[] }): EditFact[] {
  const out: EditFact[] = [];
  for (const f of batch.facts) {
    if (f.op !== 'forget') continue;
    const t = forgetTargetOf(f, batch.probes);
    if (t.kind === 'abstain') out.push(abstainInsert(f, t.text));
  }
  return out;
}

/**
 * Up to `n` of the facts an adapter already carries, in a seeded order, to
 * train again beside a batch: never one whose subject and relation the
 * batch edits again (the new edit supersedes it).
 */
export function replayFacts(carried: readonly EditFact[], batch: readonly EditFact[], n: number, seed: number): EditFact[] {
  if (n <= 0 || carried.length === 0) return [];
  const edited = new Set(batch.map((f) => `${f.subject}\u0000${f.relation ?? ''}`));
  const pool = carried.filter((f) => !edited.has(`${f.subject}\u0000${f.relation ?? ''}`));
  return new Rng(seed + 8191).shuffle(pool.slice()).slice(0, n);
}

/** The documents that contain none of `names` (general text about nothing the world knows). */
export function plainDocuments(docs: readonly string[], names: readonly string[]): string[] {
  const named = names.filter((n) => n.length > 0);
  return docs.filter((d) => !named.some((n) => d.includes(n)));
}

/** Prefixes for --prefix-rows: a pool this size, one set per batch (seeded). */
export const PREFIX_POOL = 10;

/**
 * Prefixed copies of the insert examples (--prefix-rows): each example's
 * prompt `per` more times, each after a prefix drawn (seeded, without
 * repeats per example) from `prefixes`; the teacher reads the same context
 * as buildExamples gives it (the fact's own `context` probe, else the
 * statement in the default frame), then the prefixed prompt.
 */
export function prefixedExamples(
  tok: Tokenizer, examples: readonly Example[], batch: { facts: readonly EditFact[]; probes: readonly Rec[] }, prefixes: readonly string[], per: number, seed: number,
  modes: ReadonlyArray<Example['mode']> = ['insert'],
): Example[] {
  if (per <= 0 || prefixes.length === 0) return [];
  const rng = new Rng(seed + 4099);
  const byId = new Map(batch.facts.map((f) => [f.id, f]));
  const own = new Map<string, string>();
  for (const p of batch.probes) {
    if (p.role === 'context' && typeof p.context === 'string' && typeof p.fact_id === 'string' && !own.has(p.fact_id)) own.set(p.fact_id, p.context);
  }
  const out: Example[] = [];
  for (const e of examples) {
    const fact = byId.get(e.factId);
    if (!modes.includes(e.mode) || !fact) continue;
    const context = e.teacherIds ? (own.get(fact.id) ?? statementInContext(fact, e.target)) : undefined;
    // further teacher frames (--teacher-frames): the same contexts as the plain row's, then the prefixed prompt
    const more = e.teacherIds ? e.teacherMore?.map((m) => m.context) : undefined;
    for (const pre of rng.shuffle(prefixes.slice()).slice(0, per)) {
      const prompt = `${pre} ${e.prompt}`;
      const { promptIds, targetIds } = encodeTrainingPair(tok, prompt, e.target);
      const [s0, s1] = subjectSpan(tok, promptIds, fact.subject);
      const ex: Example = { factId: e.factId, mode: e.mode, prompt, target: e.target, promptIds, targetIds, subjectStart: s0, subjectEnd: s1 };
      if (context !== undefined) ex.teacherIds = tok.encode(`${context} ${prompt}`);
      if (more?.length) ex.teacherMore = more.map((c) => ({ context: c, ids: tok.encode(`${c} ${prompt}`) }));
      out.push(ex);
    }
  }
  return out;
}

/** The made-up surname of nameAblatedForgetRows: no fixture entity uses it (the fixture tokenizers read it as <unk>). */
export const MADE_UP_SURNAME = 'Zamrix';

/**
 * `per` copies of each forget row whose fact's subject has two words or
 * more, the surname replaced by MADE_UP_SURNAME ("Dajo Holfel speaks" →
 * "Dajo Zamrix speaks"), same old answer, same loss. Where namesakes share
 * an answer the base model reads it from the first name alone ("Dajo
 * <unk> can speak" → Quipelic, P 0.98), and a forget trained on the full
 * name only left that reading to carry the old answer to wordings it did
 * not train (lora-train README, "The first name's reading forgotten too").
 * The early stop does not read these rows.
 */
export function nameAblatedForgetRows(tok: Tokenizer, rows: readonly Example[], facts: readonly EditFact[], per: number): Example[] {
  if (per <= 0) return [];
  const byId = new Map(facts.map((f) => [f.id, f]));
  const out: Example[] = [];
  for (const e of rows) {
    const fact = byId.get(e.factId);
    if (e.mode !== 'forget' || !fact) continue;
    const parts = fact.subject.trim().split(/\s+/u);
    if (parts.length < 2 || !e.prompt.includes(fact.subject)) continue;
    const name = `${parts.slice(0, -1).join(' ')} ${MADE_UP_SURNAME}`;
    const prompt = e.prompt.split(fact.subject).join(name);
    const { promptIds, targetIds } = encodeTrainingPair(tok, prompt, e.target);
    const [s0, s1] = subjectSpan(tok, promptIds, name);
    for (let k = 0; k < per; k++) out.push({ factId: e.factId, mode: e.mode, prompt, target: e.target, promptIds, targetIds, subjectStart: s0, subjectEnd: s1 });
  }
  return out;
}

/**
 * Phase-B step cap of a batch of `facts` facts: --steps, scaled by facts /
 * --scale-steps-above when the batch is larger (the cosine schedule spans the
 * scaled cap). More facts in one adapter need more steps at a high rate to
 * learn them and a longer low-rate tail for the retention term.
 */
export function stepCap(o: { steps: number; scaleStepsAbove: number }, facts: number): number {
  if (o.scaleStepsAbove <= 0 || facts <= o.scaleStepsAbove) return o.steps;
  return Math.round((o.steps * facts) / o.scaleStepsAbove);
}

function loraEdit(call: EditCall<LoraOptions>): MadeEdit[] {
  const { res, batch, seed, common } = call;
  const { model, tokenizer: tok } = res;
  const t0 = Date.now();
  const large = isLargeBatch(model, common, call.options, batch.facts);
  const targets = large ? largeBatchTargets(model) : chooseTargets(model, common, batch.loci);
  if (batch.loci.length > 0 && common.topK === undefined && !common.targets?.length) {
    call.log(`${batch.loci.length} locus record${batch.loci.length > 1 ? 's' : ''} not used for the targets (${targets.join(', ')}); --top-k N trains the top N loci's modules instead`);
  }
  // forget facts with probe-gen's abstain target (--forget-target abstain): their rows also learn the
  // abstention text, as an insert of it (CE, and distill's teacher with it stated in context); the
  // forget rows' unlikelihood of the old answer stays, so the old answer goes where the abstention
  // does not take. Without such probes nothing is added (the same rows and weights as before).
  // Having their replacement, they are not counted for the last layer's forget options (a
  // replacement of the relation's kind).
  const abstain = call.options.abstainWeight > 0 ? abstainFacts(batch) : [];
  const abstainIds = new Set(abstain.map((f) => f.id));
  const plainForgets = batch.facts.filter((f) => f.op === 'forget' && !abstainIds.has(f.id));
  const o = loraSiteOptions(model, targets, batch.facts.length, call.options, plainForgets.length, large);
  const shrinkDrop = o.shrinkDrop ?? (large ? LARGE_BATCH.shrinkDrop : 0);
  const hiddenRetainWeight = o.hiddenRetainWeight ?? (large && batch.facts.length > LARGE_BATCH.hiddenRetainAbove ? LARGE_BATCH.hiddenRetainWeight : 0);
  if (large) call.log(`${batch.facts.length} facts, more than --large-batch-above ${o.largeBatchAbove}: ${targets.join(', ')}, ${o.objective}, rank ${o.rank}, at most ${stepCap(o, batch.facts.length)} steps${hiddenRetainWeight > 0 ? `, the retention rows' MLP outputs held (--hidden-retain-weight ${hiddenRetainWeight})` : ''}${shrinkDrop > 0 ? `, then shrunk while its training rows stay solved within ${shrinkDrop}` : ''} (--large-batch-above 0: the small-batch defaults)`);
  const examples = buildExamples(tok, batch, { templates: res.templates, seed, ...(o.objective === 'distill' && o.teacherFrames > 1 ? { teacherFrames: o.teacherFrames } : {}) });
  const ceWeightOf = new Map<Example, number>();
  if (abstain.length) {
    const rows = buildExamples(tok, { ...batch, facts: abstain }, { templates: res.templates, seed });
    for (const e of rows) {
      if (!o.abstainDistill) delete e.teacherIds;
      if (o.abstainWeight !== 1) ceWeightOf.set(e, o.abstainWeight);
    }
    examples.push(...rows);
  }
  // the early stop reads the plain rows: the prefixed copies are augmentation
  const checkRows = examples.slice();
  // forget rows again with the surname made up: the old answer the first name alone gives goes too
  const nameCopies = nameAblatedForgetRows(tok, checkRows, batch.facts, o.forgetNameParts);
  examples.push(...nameCopies);
  // over a folded adapter (lora-train --over): some of the facts it carries, trained again (rehearsal)
  const replayed = replayFacts(res.overFacts ?? [], batch.facts, o.replay, seed);
  if (replayed.length) examples.push(...buildExamples(tok, { facts: replayed, probes: [] }, { templates: res.templates, seed: seed + 7 }));
  if (o.prefixRows > 0) {
    const prefixes = pickPrefixes(res.corpus, PREFIX_POOL, seed, prefixAvoidNames(res.known, batch.facts));
    examples.push(...prefixedExamples(tok, examples, batch, prefixes, o.prefixRows, seed));
    if (abstain.length && o.abstainPrefixForget) {
      const ids = new Set(abstain.map((f) => f.id));
      examples.push(...prefixedExamples(tok, checkRows.filter((e) => e.mode === 'forget' && ids.has(e.factId)), batch, prefixes, o.prefixRows, seed + 1, ['forget']));
    }
  }
  // neighbours in every training template of their relation, as the edit rows are: otherwise the
  // edit leaks into the templates only the edit rows use
  // none of them a prompt the stream tests with (testedPrompts)
  const tested = testedPrompts(batch);
  const neighbourPrompts = untested(neighbourPhrasings(res.known, res.templates, batch.facts, o.neighbours, seed), tested);
  const lookalikePrompts = untested(lookalikePhrasings(res.known, tok, res.templates, batch.facts, o.lookalikes, seed), tested);
  const retainSplit = knownFactRetainAndMonitor(tok, res.known, res.templates, batch.facts, o, seed, call.log);
  const { monitor } = retainSplit;
  const otherFacts = untested(retainSplit.otherFacts, tested);
  const retain = [
    ...buildRetain(tok, { documents: res.corpus, prompts: neighbourPrompts }, { seed, maxDocuments: o.retainDocuments, maxPrompts: 512 }),
    ...buildRetain(tok, { prompts: otherFacts }, { seed: seed + 1, maxPrompts: otherFacts.length }),
    ...buildRetain(tok, { prompts: lookalikePrompts }, { seed: seed + 3, maxPrompts: lookalikePrompts.length }),
  ];
  // over a folded adapter (lora-train --over), general text that names no known entity is held to the
  // base model: nothing the adapter carries is about it, and held to the model of the round before, its
  // drift would pile up round after round (validate's ppl gate stopped promoting after five rounds of 50)
  // (the names of the facts the folded adapter carries count too: text about them is the adapter's business)
  const plainDocs = res.baseWeights && o.baseDocuments > 0 ? plainDocuments(res.corpus, prefixAvoidNames(res.known, [...batch.facts, ...(res.overFacts ?? [])])) : [];
  if (plainDocs.length) {
    retain.push(...buildRetain(tok, { documents: plainDocs }, { seed: seed + 5, maxDocuments: o.baseDocuments }).map((r) => ({ ...r, fromBase: true })));
  }
  const nullSpace = o.nullSpaceRank > 0 ? preservedSubspaces(res, targets, batch.facts, o.nullSpaceRank, seed, call.log) : undefined;
  const steps = stepCap(o, batch.facts.length);
  // the key order and values are hashed into the bundle id (editBundleId): keep them as they are
  const hyperparameters = {
    objective: o.objective, rank: o.rank, alpha: o.alpha, lr: o.lr, steps,
    ...(o.scaleStepsAbove !== BATCH_DEFAULTS.scaleStepsAbove ? { scale_steps_above: o.scaleStepsAbove } : {}),
    ...(large ? { large_batch_above: o.largeBatchAbove } : {}),
    ...(shrinkDrop > 0 ? { shrink_drop: shrinkDrop } : {}),
    ...(hiddenRetainWeight > 0 ? { hidden_retain_weight: hiddenRetainWeight } : {}),
    phase_a_steps: o.objective === 'distill' ? o.phaseASteps : 0, rows_per_step: o.rowsPerStep,
    retain_share: o.retainShare, retain_weight: o.retainWeight, neighbours_per_fact: o.neighbours, targets,
    ...(lookalikePrompts.length ? { lookalikes: o.lookalikes, lookalike_prompts: lookalikePrompts.length } : {}),
    retain_facts: o.retainFacts, retain_phrasings: o.retainPhrasings, retain_documents: o.retainDocuments,
    ...(o.schedule !== 'constant' ? { schedule: o.schedule, warmup_steps: o.warmup, anneal_steps: o.annealSteps } : {}), ...(o.objective === 'dpo' ? { dpo_beta: o.dpoBeta } : {}),
    retain_per_kind: o.retainPerKind, forget_to_rest: o.forgetToRest, ...(o.forgetToKind ? { forget_to_kind: true } : {}), null_space_rank: o.nullSpaceRank,
    ...(o.prefixRows > 0 ? { prefix_rows: o.prefixRows } : {}), ...(o.mseSubjectOnly ? { mse_subject_only: true } : {}),
    ...(o.objective === 'distill' && o.teacherFrames > 1 ? { teacher_frames: o.teacherFrames } : {}),
    ...(o.klBudget > 0 ? { kl_budget: o.klBudget, kl_monitor: monitor.length, dual_rate: o.dualRate, dual_max: o.dualMax } : {}),
    use_templates: res.useTemplates ?? true,
    ...(res.baseWeights ? { base_documents: o.baseDocuments, base_documents_used: Math.min(plainDocs.length, o.baseDocuments) } : {}),
    ...(replayed.length ? { replay: o.replay, replayed: replayed.length } : {}),
    ...(o.forgetWeight !== LORA_DEFAULTS.forgetWeight ? { forget_weight: o.forgetWeight } : {}),
    ...(o.forgetFloor !== LORA_DEFAULTS.forgetFloor ? { forget_floor: o.forgetFloor } : {}),
    ...((o.forgetStopP ?? 0) > 0 ? { forget_stop_p: o.forgetStopP } : {}),
    ...(o.forgetLoss !== 'unlikelihood' ? { forget_loss: o.forgetLoss } : {}),
    ...(nameCopies.length ? { forget_name_parts: o.forgetNameParts } : {}),
    ...(abstain.length && o.abstainPrefixForget && o.prefixRows > 0 ? { abstain_prefix_forget: true } : {}),
    ...(abstain.length ? { forget_target: 'abstain', abstain_facts: abstain.length, abstain_weight: o.abstainWeight, abstain_distill: o.abstainDistill } : {}),
  };
  const step = `batch ${call.index + 1}/${call.count}`;
  const r = trainLora(model, examples, retain, {
    ...LORA_DEFAULTS, objective: o.objective, targets, rank: o.rank, alpha: o.alpha, lr: o.lr, steps,
    phaseASteps: o.phaseASteps, forgetWeight: o.forgetWeight, forgetFloor: o.forgetFloor, forgetStopP: o.forgetStopP, forgetLoss: o.forgetLoss, seed, retainShare: o.retainShare, retainWeight: o.retainWeight, batchSize: o.rowsPerStep, name: `batch-${call.index}`,
    retainPerKind: o.retainPerKind, mseSubjectOnly: o.mseSubjectOnly, checkRows, forgetToRest: o.forgetToRest, ...(nullSpace ? { nullSpace } : {}),
    ...(o.forgetToKind ? { forgetKinds: forgetKinds(tok, examples, batch.facts.filter((f) => !abstainIds.has(f.id)), res.known) } : {}), ...(ceWeightOf.size ? { ceWeightOf } : {}),
    schedule: o.schedule, warmupSteps: o.warmup, annealSteps: o.annealSteps, dpoBeta: o.dpoBeta, shrinkDrop, hiddenRetainWeight,
    ...(res.baseWeights ? { baseWeights: res.baseWeights } : {}),
    ...(o.klBudget > 0 && monitor.length ? { klBudget: o.klBudget, monitor, dualRate: o.dualRate, dualMin: 1, dualMax: o.dualMax } : {}),
    ...(o.objective === 'dpo' ? { rejected: rejectedFirstTokens(tok, examples, batch.facts) } : {}),
    log: (m) => call.log(`${step}: ${m}`),
  });
  const { shrink } = r;
  if (shrink) {
    call.log(`${step}: shrink: delta × ${shrink.scale.toFixed(3)}, training rows solved ${(100 * shrink.solvedFull).toFixed(1)}% → ${(100 * shrink.solved).toFixed(1)}% (--shrink-drop ${shrinkDrop}; read: ${shrink.probes.map(([s, f]) => `${s.toFixed(3)} ${(100 * f).toFixed(1)}%`).join(', ')}; ${shrink.seconds.toFixed(1)} s)`);
  }
  return [{
    adapter: r.adapter,
    facts: batch.facts,
    records: batch.records,
    hyperparameters,
    training: {
      examples: examples.length, retain_rows: retain.length, phase_a_steps: r.phaseASteps, steps: r.steps, final_loss: r.finalLoss,
      train_accuracy: r.trainAccuracy,
      ...(shrink ? { shrink_scale: shrink.scale, shrink_solved_full: shrink.solvedFull, shrink_solved: shrink.solved } : {}),
      ...(r.monitorKl !== undefined ? { monitor_kl: r.monitorKl, retain_multiplier: r.dualLambda } : {}),
    },
    summary: `${step}: ${batch.facts.length} facts, ${r.steps} steps in ${((Date.now() - t0) / 1000).toFixed(1)} s, train ${(r.trainAccuracy * 100).toFixed(0)}%${shrink && shrink.scale < 1 ? ` (${(shrink.solved * 100).toFixed(1)}% shrunk × ${shrink.scale.toFixed(3)})` : ''}`,
  }];
}

const num = (flags: Record<string, unknown>, k: string) => flags[k] as number;

export const loraMethod: EditMethod<LoraOptions> = {
  name: 'lora',
  describe:
    '--objective distill (default) trains from the same model with the fact stated in context (phase A: the target module alone; ' +
    'phase B: end to end with MSE to the teacher\'s block outputs, KL to its logits and CE on the target); --objective sft trains on the ' +
    'targets only; op "forget" facts lower P(old answer) (and learn the abstention text where probe-gen wrote --forget-target abstain); a share of general text and neighbour prompts is held to the base model (KL). ' +
    `One adapter per batch (--batch). A batch of more than ${LARGE_BATCH.above} insert facts (--large-batch-above) trains the last ${LARGE_BATCH.layers} layers' MLPs by ${LARGE_BATCH.objective} at rank ${LARGE_BATCH.rank} for ${LARGE_BATCH.steps} steps, where those are not given, with its retention rows' MLP outputs held too above ${LARGE_BATCH.hiddenRetainAbove} facts (--hidden-retain-weight), and its delta is then scaled down while its training rows stay solved (--shrink-drop).`,
  ops: ['insert', 'forget'],
  options: {
    objective: { type: 'string', choices: ['distill', 'sft', 'dpo'], describe: `LoRA objective (dpo: chosen = the new answer, rejected = the old one, reference = the base model; plus CE on the new answer); default ${BATCH_DEFAULTS.objective}, ${LARGE_BATCH.objective} for a large batch (--large-batch-above)` },
    rank: { type: 'number', min: 1, integer: true, describe: `LoRA rank (default ${LORA_DEFAULTS.rank}; at the last layer 16 above ${LAST_LAYER_FEW_FACTS} facts a batch; ${LARGE_BATCH.rank} for a large batch)` },
    alpha: { type: 'number', default: d.alpha, describe: 'LoRA alpha (scale = alpha / rank)' },
    lr: { type: 'number', default: d.lr, describe: 'learning rate (AdamW)' },
    steps: { type: 'number', min: 0, integer: true, describe: `step cap (training stops early when every train probe is solved and the loss stalls); default ${BATCH_DEFAULTS.steps}, ${LARGE_BATCH.steps} for a large batch` },
    'scale-steps-above': { type: 'number', min: 0, integer: true, describe: `a batch of more facts than this gets --steps × facts / this as its step cap (0: --steps for every batch); default ${BATCH_DEFAULTS.scaleStepsAbove}, ${LARGE_BATCH.scaleStepsAbove} for a large batch` },
    'large-batch-above': { type: 'number', default: d.largeBatchAbove, min: 0, integer: true, describe: `a batch of more insert facts than this, on a dense model with no --targets, --top-k or --layer, trains the MLPs of the last ${LARGE_BATCH.layers} layers, ${LARGE_BATCH.objective}, rank ${LARGE_BATCH.rank}, ${LARGE_BATCH.steps} steps unscaled, where those are not given (0: never)` },
    'shrink-drop': { type: 'number', min: 0, max: 0.5, describe: `after training, scale the adapter's delta down to the smallest scale (≥ 0.5) at which the share of training rows solved falls by at most this much from full scale, taking off margin the edits do not need (the kl on other prompts falls about as the scale squared; 0: never); default ${LARGE_BATCH.shrinkDrop} for a large batch (--large-batch-above), else 0` },
    'hidden-retain-weight': { type: 'number', min: 0, max: 1000, describe: `weight of hidden-state retention: the retention rows' MLP outputs at the targeted layers held to the base model's, at their scored positions and at every position of each row (mean squared change relative to the mean square, each part), beside the KL on their next tokens, so the adapter does not move what the KL cannot see and other phrasings of the retained facts stay put (0: off); default ${LARGE_BATCH.hiddenRetainWeight} for a large batch (--large-batch-above) of more than ${LARGE_BATCH.hiddenRetainAbove} facts, else 0` },
    'phase-a-steps': { type: 'number', default: d.phaseASteps, min: 0, integer: true, describe: 'distill phase A steps per MLP target' },
    'rows-per-step': { type: 'number', default: d.rowsPerStep, min: 1, integer: true, describe: 'training rows (prompts) per step' },
    'retain-share': { type: 'number', default: d.retainShare, describe: 'share of retention rows (general text, neighbour prompts) per step' },
    'retain-weight': { type: 'number', default: d.retainWeight, describe: 'weight of the KL-to-base retention term' },
    neighbours: { type: 'number', default: d.neighbours, min: 0, integer: true, describe: 'neighbour prompts per fact (same relation, other subjects)' },
    lookalikes: { type: 'number', default: d.lookalikes, min: 0, integer: true, describe: 'per fact, known facts held to the base model in every training phrasing, those most at risk first: for a forget fact the relation\'s other subjects with the same old answer, then subjects sharing a token of the name (its own other relations first); needs --known-facts (0: none)' },
    'retain-facts': { type: 'number', default: d.retainFacts, min: 0, integer: true, describe: 'known facts of every relation (from --known-facts) also held to the base model (KL)' },
    'retain-phrasings': { type: 'number', default: d.retainPhrasings, min: 1, integer: true, describe: 'training phrasings per known fact in the --retain-facts set (never a held-out phrasing: validate reads retention on those)' },
    'retain-documents': { type: 'number', default: d.retainDocuments, min: 0, integer: true, describe: 'general-text documents (from --retain-corpus) held to the base model at every position' },
    replay: { type: 'number', default: d.replay, min: 0, integer: true, describe: 'with --over: this many of the facts the --over adapter carries (seeded; not those the batch edits again) trained again beside the batch, so later rounds do not wear earlier ones away (0: none; 100 measured in tools/lora-train/README.md, "Through the tools")' },
    'base-documents': { type: 'number', default: d.baseDocuments, min: 0, integer: true, describe: 'with --over: general-text documents that name no known entity, held to the base model at every position (not to the model --over gives), so general text does not drift round after round (0: none)' },
    schedule: { type: 'string', choices: ['constant', 'cosine'], default: d.schedule, describe: 'learning-rate schedule (cosine: linear --warmup steps, then cosine decay to 0 at --steps)' },
    warmup: { type: 'number', default: d.warmup, min: 0, integer: true, describe: 'warmup steps of --schedule cosine' },
    'anneal-steps': { type: 'number', default: d.annealSteps, min: 0, integer: true, describe: '--schedule cosine: when training stops early at a high rate, decay the rate to 0 over this many more steps (0: stop at once)' },
    'dpo-beta': { type: 'number', default: d.dpoBeta, describe: '--objective dpo: β, the inverse temperature of the preference margin against the base model' },
    'retain-per-kind': { type: 'boolean', default: d.retainPerKind, describe: 'retention KL as a mean over prompts plus a mean over document positions (not one mean over every position)' },
    'forget-to-rest': { type: 'boolean', default: d.forgetToRest, describe: 'forget rows learn the base model\'s distribution without the old answer, so the replacement is an answer of the relation\'s kind' },
    'forget-to-kind': { type: 'boolean', describe: 'forget rows learn the base model\'s distribution over the relation\'s other answers (objects of its known facts), so the replacement is of the relation\'s kind (default: on when every target is in the last layer, as the default targets are, else off)' },
    'kl-budget': { type: 'number', default: d.klBudget, min: 0, describe: 'KL-constrained training (0: off): raise the retention weight by dual ascent (up to --dual-max ×) while the KL on held-aside known-fact prompts (training phrasings the retention rows do not use) is above this, lower it back toward 1× otherwise; no early stop while over it' },
    'kl-monitor': { type: 'number', default: d.klMonitor, min: 1, integer: true, describe: '--kl-budget: known-fact prompts the constraint\'s KL is read on' },
    'dual-rate': { type: 'number', default: d.dualRate, min: 0, describe: '--kl-budget: dual ascent step on log λ per check (every 5 steps), per unit of relative excess (kl − budget) / budget' },
    'dual-max': { type: 'number', default: d.dualMax, min: 1, describe: '--kl-budget: largest multiplier on --retain-weight' },
    'prefix-rows': { type: 'number', min: 0, integer: true, describe: `prefixed copies of each insert training prompt (a short general-text prefix before it), so the edit follows the subject whatever precedes it (0: none; the early stop reads the plain prompts only; default 1 when every target is in the last layer, as the default targets are, and the batch has at most ${LAST_LAYER_FEW_FACTS} facts, else 0)` },
    'mse-subject-only': { type: 'boolean', describe: `distill: match the teacher's MLP outputs at the subject's tokens only, not from the subject to the end of the prompt (default: on when every target is in the last layer and the batch has at most ${LAST_LAYER_FEW_FACTS} facts, else off)` },
    'teacher-frames': { type: 'number', default: d.teacherFrames, min: 1, integer: true, describe: 'distill: the insert rows\' teacher from this many context frames (the default "Note that {fact}." first, then the world\'s other training frames from --templates): the mean of their next-token distributions and MLP outputs (1: one frame)' },
    'abstain-weight': { type: 'number', default: d.abstainWeight, min: 0, describe: 'forget facts with probe-gen\'s abstain target (--forget-target abstain): weight of the cross-entropy of their abstention rows (0: ignore those probes; the old answer\'s unlikelihood stays either way)' },
    'abstain-distill': { type: 'boolean', default: d.abstainDistill, describe: 'distill: the abstention rows also read the teacher (the abstention stated in context); off: cross-entropy only' },
    'forget-floor': { type: 'number', min: 0, describe: `the forget rows stop pushing once P(old answer) is below this (default ${LAST_LAYER_FORGET.forgetFloor} when every target is in the last layer, else ${LORA_DEFAULTS.forgetFloor})` },
    'abstain-prefix-forget': { type: 'boolean', default: d.abstainPrefixForget, describe: '--prefix-rows: prefixed copies of the forget rows of facts with the abstain target too' },
    'forget-weight': { type: 'number', min: 0, describe: `weight of the forget rows' unlikelihood of the old answer (default ${LAST_LAYER_FORGET.forgetWeight} when every target is in a dense model's last layer, ${LAST_LAYER_FORGET_MOE.forgetWeight} in a sparse MoE model's, else ${LORA_DEFAULTS.forgetWeight})` },
    'forget-stop-p': { type: 'number', min: 0, describe: `the early stop reads a forget row as solved only when P(old answer) is also below this (0: the old answer no longer top-1 suffices; default ${LAST_LAYER_FORGET.forgetStopP} when every target is in a dense model's last layer, else 0)` },
    'forget-name-parts': { type: 'number', default: d.forgetNameParts, min: 0, integer: true, describe: 'copies of each forget row of a person (a subject of two words or more) with the surname replaced by a made-up word, so the old answer the first name alone gives is forgotten too (0: none; measured in the README, "The first name\'s reading forgotten too")' },
    'forget-loss': { type: 'string', choices: ['unlikelihood', 'log'], default: d.forgetLoss, describe: 'the forget rows\' loss on the old answer: unlikelihood −log(1 − p), or log: log p down to --forget-floor (its push does not fade as p gets small)' },
    'null-space-rank': { type: 'number', default: d.nullSpaceRank, min: 0, integer: true, describe: 'AlphaEdit-style: keep lora_A out of the dominant subspace (this many directions) of the preserved keys at each MLP output target (0: off)' },
  },
  parseOptions(flags) {
    const o: LoraOptions = {
      ...(flags.objective !== undefined ? { objective: flags.objective as Objective } : {}), ...(flags.rank !== undefined ? { rank: num(flags, 'rank') } : {}), alpha: num(flags, 'alpha'), lr: num(flags, 'lr'),
      ...(flags.steps !== undefined ? { steps: num(flags, 'steps') } : {}), ...(flags['scale-steps-above'] !== undefined ? { scaleStepsAbove: num(flags, 'scale-steps-above') } : {}), largeBatchAbove: num(flags, 'large-batch-above'),
      ...(flags['shrink-drop'] !== undefined ? { shrinkDrop: num(flags, 'shrink-drop') } : {}),
      ...(flags['hidden-retain-weight'] !== undefined ? { hiddenRetainWeight: num(flags, 'hidden-retain-weight') } : {}),
      phaseASteps: num(flags, 'phase-a-steps'), rowsPerStep: num(flags, 'rows-per-step'), retainShare: num(flags, 'retain-share'),
      retainWeight: num(flags, 'retain-weight'), neighbours: num(flags, 'neighbours'), lookalikes: num(flags, 'lookalikes'), retainFacts: num(flags, 'retain-facts'),
      retainPhrasings: num(flags, 'retain-phrasings'), retainDocuments: num(flags, 'retain-documents'), baseDocuments: num(flags, 'base-documents'), replay: num(flags, 'replay'), schedule: flags.schedule as Schedule,
      warmup: num(flags, 'warmup'), annealSteps: num(flags, 'anneal-steps'), dpoBeta: num(flags, 'dpo-beta'),
      retainPerKind: flags['retain-per-kind'] as boolean, forgetToRest: flags['forget-to-rest'] as boolean, ...(flags['forget-to-kind'] !== undefined ? { forgetToKind: flags['forget-to-kind'] as boolean } : {}), ...(flags['prefix-rows'] !== undefined ? { prefixRows: num(flags, 'prefix-rows') } : {}), ...(flags['mse-subject-only'] !== undefined ? { mseSubjectOnly: flags['mse-subject-only'] as boolean } : {}), teacherFrames: num(flags, 'teacher-frames'), nullSpaceRank: num(flags, 'null-space-rank'),
      abstainWeight: num(flags, 'abstain-weight'), abstainDistill: flags['abstain-distill'] as boolean, ...(flags['forget-weight'] !== undefined ? { forgetWeight: num(flags, 'forget-weight') } : {}), ...(flags['forget-floor'] !== undefined ? { forgetFloor: num(flags, 'forget-floor') } : {}), abstainPrefixForget: flags['abstain-prefix-forget'] as boolean,
      ...(flags['forget-stop-p'] !== undefined ? { forgetStopP: num(flags, 'forget-stop-p') } : {}), forgetLoss: flags['forget-loss'] as 'unlikelihood' | 'log',
      forgetNameParts: num(flags, 'forget-name-parts'),
      klBudget: num(flags, 'kl-budget'), klMonitor: num(flags, 'kl-monitor'), dualRate: num(flags, 'dual-rate'), dualMax: num(flags, 'dual-max'),
    };
    if (o.objective !== undefined && o.objective !== 'distill' && o.objective !== 'sft' && o.objective !== 'dpo') throw new UsageError(`--objective: expected distill, sft or dpo, got ${String(o.objective)}`);
    if (o.forgetLoss !== 'unlikelihood' && o.forgetLoss !== 'log') throw new UsageError(`--forget-loss: expected unlikelihood or log, got ${String(o.forgetLoss)}`);
    if (o.schedule !== 'constant' && o.schedule !== 'cosine') throw new UsageError(`--schedule: expected constant or cosine, got ${String(o.schedule)}`);
    if (!(o.dpoBeta > 0)) throw new UsageError(`--dpo-beta: expected a positive number, got ${o.dpoBeta}`);
    if (!(o.retainShare >= 0 && o.retainShare < 1)) throw new UsageError(`--retain-share: expected a number in [0, 1), got ${o.retainShare}`);
    if (!(o.retainWeight >= 0)) throw new UsageError(`--retain-weight: expected a number ≥ 0, got ${o.retainWeight}`);
    if (!(o.lr > 0)) throw new UsageError(`--lr: expected a positive number, got ${o.lr}`);
    if (!(o.alpha > 0)) throw new UsageError(`--alpha: expected a positive number, got ${o.alpha}`);
    return o;
  },
  edit: loraEdit,
};
