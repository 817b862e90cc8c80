/**
 * `lora-train --method rome`: one rank-one edit per fact (ROME, edit/rome.ts)
 * at ROME's default layer, or the next two layers for a fact the default
 * leaves unsolved (an insert: of the first two layers where it takes, the
 * smaller ‖δ‖); an edit that does not take is refused, never written.
 */
import * as fs from 'node:fs';
import { UsageError } from '../records/errors.js';
import type { CausalLM } from '../models/causal-lm.js';
import type { Tokenizer } from '../models/loader.js';
import { Rng } from '../util/random.js';
import { buildExamples, encodeTrainingPair, nameSharersFirst, readCorpusLines, subjectsOtherFacts, testedPrompts, untested, type EditFact, type Example, type Rec } from './data.js';
import { lastLogits, top1 } from './model-util.js';
import { knownFactRetainPrompts } from './quality.js';
import { logSoftmaxRow } from '../metrics/scoring.js';
import { ROME_DEFAULTS, ROME_INSERT_DECAYS, keyStatsCached, romeEdit, romeLayerCandidates, type KeyStats, type RomeOptions, type RomeResult } from './rome.js';
import { ROME_FORGET_DEFAULTS, abstainInsert, forgetTargetOf, romeForgetAtBestLayer, romeForgetHeldAndMonitor } from './rank-one-forget.js';
import { EditRefusedError, type EditCall, type EditMethod, type MadeEdit } from './method.js';

export interface RomeMethodOptions {
  /** Text for the key statistics (default: the retention corpus). */
  statsCorpus?: string;
  statsTokens: number;
  /** Statistics cache directory (default: $CATECHISM_CACHE or ~/.cache/catechism). */
  statsCache?: string;
  /** Context prefixes averaged for the key. */
  romePrefixes: number;
  /** The subject's other facts and this many known facts of any relation kept too (KL), beyond the relation's ten. */
  romeKeepFacts: number;
  /** Adam steps refitting the key direction with δ (0: ROME's closed-form direction). */
  romeKeySteps: number;
  /** Known facts (training phrasings, other subjects) held while the key is refitted. */
  romeKeyPool: number;
  /** Weight of their KL. */
  romeKeyWeight: number;
  /**
   * romeKeyDraw × romeKeyPool known-fact prompts are drawn, and the romeKeyPool of them whose next token
   * the base model is least sure of (highest entropy) are held: a small change to the residual stream
   * moves an uncertain prediction most (KL ≈ ½ Δzᵀ(diag p − ppᵀ)Δz), and the read-back's kl sits on the
   * phrasings the model is weakest on. 1: the seeded draw as it comes.
   */
  romeKeyDraw: number;
  /**
   * Also hold the edited subject's other facts, every training phrasing of each (subjectsOtherFacts): the key
   * ROME changes is the subject's, so its other facts are the prompts the edit reaches first (tuning requests
   * 7, 16, 19: 13–31% of the read-back kl was the subject's own other facts). The patcher's value keeps them too.
   */
  romeKeyOwn: boolean;
  /** Share of the held prompts given one of the edit's context prefixes (mid-sentence subjects). */
  romeKeyPrefixed: number;
  /**
   * A forget ("any"): how many candidate layers are tried even when the first forgets on every check; of
   * those that do, the one that lowers the forgotten answer least for other subjects with that answer
   * (romeForgetMonitor) is kept. 1: the first that forgets. 2 (2026-12-06): tuning forgets 1–10 pass 6 → 8
   * of 10 (specificity 0.930 → 1.000); held out 61–70, world 8 → 9, world-b 6 → 7; twice the time a forget.
   */
  romeForgetCompare: number;
  /**
   * A forget ("any"): this many prompts of other subjects with the forgotten answer (romeForgetMonitor's
   * list, every other one; the monitor reads the rest) held in the key refit beside its pool. 0: none.
   * Those subjects are the ones a lower P(old) harms (a subject with another answer barely has it); the pool
   * of 256 held them only by chance. 32 (2026-12-06, set once, not tuned): forgets 71–80, held out, pass
   * 8 → 9 of 10 (world) and 9 → 10 (world-b); lora-train README, "ROME forget: tuning the kl".
   */
  romeForgetHold: number;
  /**
   * An insert: how many candidate layers are made even when the first takes; of those that take, the one
   * with the smallest ‖δ‖ is kept. 1: the first that takes. 2 (2026-12-06, night): chosen on tuning edits
   * each alone (lora-train README, "ROME single edits"); twice the time an insert.
   */
  romeInsertCompare: number;
}

/**
 * The key refit (rome.ts, refitKey): chosen on tuning requests 1–10, each edit alone, read over every
 * known fact's held-out phrasings (kl per edit, paraphrase %): closed form 0.138, 85.2; 100 steps at
 * weight 5 with 64 / 128 / 256 / 1,024 held facts 0.038 / 0.032 / 0.023 / 0.019, 92.6 / 92.6 / 92.6 /
 * 88.9 (1,024: three times the time); weight 2: 0.032; 50 steps: 0.032. The held prompts read after a
 * context prefix (2026-12-06; requests 1–40, kl per edit): plain 0.032, 7 of 40 over 0.05; all prefixed
 * 0.020, 3 over; the six hardest 0.062 at weight 5, 0.040 at 10, 0.035 with 512 held (twice the time)
 * (lora-train README, "ROME single edits").
 */
export const ROME_METHOD_DEFAULTS: RomeMethodOptions = { statsTokens: 20000, romePrefixes: 5, romeKeepFacts: 0, romeKeySteps: 100, romeKeyPool: 256, romeKeyWeight: 10, romeKeyPrefixed: 1, romeKeyDraw: 4, romeKeyOwn: true, romeForgetCompare: 2, romeForgetHold: 32, romeInsertCompare: 2 };

/**
 * Up to n short prefixes (the first 3–6 words) of seeded corpus documents, as
 * ROME's short generated contexts. Documents naming any of `avoid` (the known
 * facts' entities) are skipped: a prefix that states or half-states another
 * fact ("News: The language spoken by.") pulls a model trained to follow its
 * context away from the edit (measured on the dense fixture model, 20 edits:
 * efficacy 85% with such prefixes, 100% with general-text ones).
 */
export function pickPrefixes(docs: readonly string[], n: number, seed: number, avoid: readonly string[] = []): string[] {
  if (docs.length === 0 || n <= 0) return [];
  const rng = new Rng(seed);
  const names = avoid.filter((a) => a.length > 0);
  const out: string[] = [];
  for (const doc of rng.shuffle(docs.slice())) {
    if (out.length >= n) break;
    if (names.some((a) => doc.includes(a))) continue;
    const words = doc.split(' ');
    const w = words.slice(0, 3 + rng.int(4)).join(' ').replace(/[.,;:!?]$/, '');
    out.push(`${w}.`);
  }
  return out;
}

/**
 * ROME at the first of `layers` whose edit makes target_new top-1 on every
 * check prompt, trying each of ROME_INSERT_DECAYS (strongest first) at a layer
 * before the next layer; with `compare` n > 1, the first n layers that do are
 * made and the one with the smallest ‖δ‖ is kept (the least change that states
 * the fact). When none does, the one that solves the most (then the lowest NLL).
 */
export function romeAtBestLayer(
  model: CausalLM, tok: Tokenizer, fact: EditFact, layers: readonly number[], statsAt: (layer: number) => KeyStats,
  o: { prefixes: string[]; prompts: string[]; keep: string[]; checks: readonly Example[]; key?: Pick<RomeOptions, 'keySteps' | 'keyKeep' | 'keyWeight'>; compare?: number },
): { r: RomeResult; layer: number; solved: number; tried: number[]; weightDecay: number; compared: { layer: number; deltaNorm: number }[] } {
  const { checks } = o;
  type Made = { r: RomeResult; layer: number; solved: number; weightDecay: number };
  let best: Made | null = null;
  const solving: Made[] = [];
  const tried: number[] = [];
  for (const layer of layers) {
    if (solving.length >= (o.compare ?? 1)) break;
    tried.push(layer);
    for (const weightDecay of ROME_INSERT_DECAYS) {
      const r = romeEdit(model, tok, fact, statsAt(layer), { ...ROME_DEFAULTS, ...o.key, weightDecay, layer, prefixes: o.prefixes, prompts: o.prompts, keep: o.keep, name: fact.id });
      const prev = model.activeAdapters();
      model.setAdapters([{ adapter: r.adapter }]);
      const got = top1(model, checks.map((c) => c.promptIds));
      model.setAdapters(prev);
      const solved = got.filter((t, i) => t === checks[i].targetIds[0]).length;
      if (!best || solved > best.solved || (solved === best.solved && r.nll < best.r.nll)) best = { r, layer, solved, weightDecay };
      if (solved === checks.length) {
        solving.push({ r, layer, solved, weightDecay });
        break;
      }
    }
  }
  const compared = solving.map((m) => ({ layer: m.layer, deltaNorm: m.r.deltaNorm }));
  const kept = solving.reduce<Made | null>((a, m) => (!a || m.r.deltaNorm < a.r.deltaNorm ? m : a), null);
  return { ...(kept ?? best!), tried, compared };
}

/**
 * Known facts ROME must keep (KL to the unedited model): other subjects of the
 * fact's relation, those sharing a word of its subject (a surname) first.
 * Measured on the dense fixture model (20 edits, edits 21–40): neighbourhood
 * kept 89% → 95%, efficacy 90% → 85%, paraphrases 83% → 85%.
 */
export const ROME_KEEP_PROMPTS = 10;

/**
 * `avoid`: prompts never held, the stream's test probes: a prompt validate
 * reads must not be one the edit was fitted on. (Held, one forget's
 * neighbour that shares the subject's first name read as kept: "ROME forget:
 * tuning the kl".)
 */
export function romeKeepPrompts(known: readonly Rec[], fact: EditFact, n: number, avoid?: ReadonlySet<string>): string[] {
  const filled = (k: Rec) => (k.prompt as string).replace('{}', k.subject as string);
  const same = known.filter(
    (k) => k.relation === fact.relation && typeof k.subject === 'string' && k.subject !== fact.subject && typeof k.prompt === 'string' && !avoid?.has(filled(k)),
  );
  return nameSharersFirst(same, fact.subject).slice(0, n).map(filled);
}

/**
 * More prompts ROME must keep: the edited subject's facts of other relations
 * (its key at the subject's last token is the one ROME changes) and n seeded
 * known facts of any relation and subject.
 */
export function romeKeepOther(known: readonly Rec[], fact: EditFact, n: number, seed: number): string[] {
  if (n <= 0) return [];
  const ok = (k: Rec) => typeof k.subject === 'string' && typeof k.prompt === 'string';
  const own = known.filter((k) => ok(k) && k.subject === fact.subject && k.relation !== fact.relation);
  const rest = new Rng(seed + 31).shuffle(known.filter((k) => ok(k) && k.subject !== fact.subject)).slice(0, n);
  return [...own, ...rest].map((k) => (k.prompt as string).replace('{}', k.subject as string));
}

/** The entity names of known facts (subjects and true answers), for pickPrefixes' `avoid`. */
export function knownEntities(known: readonly Rec[]): string[] {
  const names = new Set<string>();
  for (const k of known) for (const v of [k.subject, k.target_true]) if (typeof v === 'string' && v.trim()) names.add(v.trim());
  return [...names];
}

/** Names a context prefix must not mention: the known facts' entities and the batch's own. */
export function prefixAvoidNames(known: readonly Rec[], facts: readonly EditFact[]): string[] {
  return [...knownEntities(known), ...facts.flatMap((f) => [f.subject, f.target_new ?? '', f.target_true ?? ''])];
}

/**
 * `share` of the prompts, evenly spread, each read after the next of `prefixes` in turn: the key refit's
 * held prompts. Plain, every held subject sits at position 0, where its layer-0 key is its token's alone;
 * read-back phrasings put subjects after other words ("The city in which {} lives is"), whose keys the
 * plain pool never held (lora-train README, "ROME single edits").
 */
export function withPrefixes(prompts: string[], prefixes: readonly string[], share: number): string[] {
  if (share <= 0 || prefixes.length === 0) return prompts;
  let carry = 0;
  let next = 0;
  return prompts.map((p) => {
    carry += share;
    if (carry < 1 - 1e-9) return p;
    carry -= 1;
    return `${prefixes[next++ % prefixes.length]} ${p}`;
  });
}

function romeBatch(call: EditCall<RomeMethodOptions>): MadeEdit[] {
  const { res, batch, seed, options: o, common } = call;
  const { model, tokenizer: tok } = res;
  const t0 = Date.now();
  // --layer fixes the layer; by default later layers are tried when the default leaves the fact unsolved
  const layers = common.layer !== undefined ? [common.layer] : romeLayerCandidates(model.config.layers);
  const statsCorpus = o.statsCorpus ? readCorpusLines(o.statsCorpus) : res.corpus;
  if (statsCorpus.length === 0) throw new UsageError('ROME needs a statistics corpus: give --stats-corpus FILE (one document per line)');
  const statsByLayer = new Map<number, KeyStats>();
  const statsAt = (layer: number) => {
    let st = statsByLayer.get(layer);
    if (!st) {
      st = keyStatsCached(model, tok, { modelSha: res.modelSha, layer, corpus: statsCorpus, maxTokens: o.statsTokens, cacheDir: o.statsCache, log: call.log });
      statsByLayer.set(layer, st);
    }
    return st;
  };
  // prefixes (one set per batch: same seed, same names to avoid): the first words of seeded
  // corpus documents, as ROME's short generated contexts
  const avoidNames = prefixAvoidNames(res.known, batch.facts);
  const prefixes = pickPrefixes(res.corpus, o.romePrefixes, seed, avoidNames);
  // every edit first, nothing returned until all took: a fact no layer could edit stops the run before anything is written
  const tested = testedPrompts(batch);
  // a forget's other subjects with the forgotten answer, never a tested or kept prompt: some held in the key
  // refit, the rest the monitor that picks the layer (romeForgetHeldAndMonitor)
  const answerHolders = (fact: EditFact, keep: readonly string[]) =>
    romeForgetHeldAndMonitor(res.known, res.templates, fact, new Set([...tested, ...keep]), fact.op === 'forget' ? o.romeForgetHold : 0);
  const forgetMonitor = (fact: EditFact, monitor: readonly string[]) => ({
    prompts: monitor.map((p) => tok.encode(p)),
    answer: encodeTrainingPair(tok, fact.prompt.replace('{}', fact.subject), fact.target_true ?? '').targetIds[0],
    compare: o.romeForgetCompare,
  });
  const made: MadeEdit[] = [];
  const refused: string[] = [];
  let saidNoPool = false;
  for (const fact of batch.facts) {
    // a forget fact: an insert of probe-gen's abstention text, or (any) the old answer made unlikely (rank-one-forget.ts)
    const forget = fact.op === 'forget' ? forgetTargetOf(fact, batch.probes) : null;
    const edited = forget?.kind === 'abstain' ? abstainInsert(fact, forget.text) : fact;
    // rewriting prompts: the fact's train probes and its relation's training templates (as LoRA's rows)
    const prompts = buildExamples(tok, { facts: [edited], probes: batch.probes }, { templates: res.templates }).map((e) => e.prompt);
    // the relation's other facts, never a prompt the stream tests with
    const keep = [...romeKeepPrompts(res.known, fact, ROME_KEEP_PROMPTS, tested), ...untested(romeKeepOther(res.known, fact, o.romeKeepFacts, seed), tested)];
    // what the edit must answer: the fact's train probes (its own prompt when it has none)
    const checks = buildExamples(tok, { facts: [edited], probes: batch.probes });
    // the key direction refitted with other facts held (training phrasings; never the fact itself nor a tested prompt)
    // (romeKeyDraw times the pool drawn, the pool's size of them the base model is least sure of held; and the
    // subject's own other facts, whose key is the one the edit changes)
    const drawn = o.romeKeyDraw * o.romeKeyPool;
    const pool = o.romeKeySteps > 0
      ? mostUncertain(model, tok, withPrefixes(untested(knownFactRetainPrompts(res.known, res.templates, [fact], drawn + tested.size, seed), tested).slice(0, drawn), prefixes, o.romeKeyPrefixed), o.romeKeyPool)
      : [];
    const own = o.romeKeySteps > 0 && o.romeKeyOwn ? withPrefixes(untested(subjectsOtherFacts(res.known, res.templates, fact), tested), prefixes, o.romeKeyPrefixed) : [];
    const split = forget?.kind === 'any' ? answerHolders(fact, keep) : null;
    const holders = split && o.romeKeySteps > 0 ? split.held : [];
    const keyKeep = [...own, ...holders, ...pool];
    const key = keyKeep.length > 0 ? { keySteps: o.romeKeySteps, keyWeight: o.romeKeyWeight, keyKeep } : undefined;
    if (o.romeKeySteps > 0 && !key && !saidNoPool) {
      saidNoPool = true;
      call.log('rome: no known facts to hold while refitting the key (--known-facts); the edits keep ROME\'s closed-form direction');
    }
    const { r, layer, solved, tried, weightDecay, compared } = forget?.kind === 'any'
      ? { ...romeForgetAtBestLayer(model, tok, fact, layers, statsAt, { base: { ...ROME_DEFAULTS, ...ROME_FORGET_DEFAULTS, ...key }, prefixes, prompts, keep, checks, ...(o.romeForgetCompare > 1 ? { monitor: forgetMonitor(fact, split?.monitor ?? []) } : {}) }), weightDecay: ROME_DEFAULTS.weightDecay, compared: [] }
      : romeAtBestLayer(model, tok, edited, layers, statsAt, { prefixes, prompts, keep, checks, key, compare: fact.op === 'forget' ? 1 : o.romeInsertCompare });
    if (solved < checks.length) {
      // the edit did not take: writing it would ship a change to the model that does not state the fact
      const what = forget?.kind === 'any' ? `no longer give ${JSON.stringify(fact.target_true)}` : `give ${JSON.stringify(edited.target_new)}`;
      refused.push(`${fact.id}: ${solved} of ${checks.length} train prompts ${what} at the best of layer${tried.length > 1 ? 's' : ''} ${tried.join(', ')} (layer ${layer}, NLL ${r.nll.toFixed(3)})`);
      call.log(`rome ${fact.id}: refused, ${refused.at(-1)}`);
      continue;
    }
    const stats = statsAt(layer);
    made.push({
      adapter: r.adapter,
      facts: [fact],
      records: batch.records.filter((x) => x.id === fact.id || x.fact_id === fact.id),
      // the key order and values are hashed into the bundle id (editBundleId): keep them as they are
      hyperparameters: {
        ...ROME_DEFAULTS, weightDecay, layer, layers_tried: tried, prefixes, rewriting_prompts: prompts.length, keep_prompts: keep.length,
        rome_keep_facts: o.romeKeepFacts, rome_key_steps: key ? o.romeKeySteps : 0, ...(key ? { rome_key_pool: pool.length, rome_key_weight: o.romeKeyWeight, rome_key_prefixed: o.romeKeyPrefixed, ...(o.romeKeyDraw > 1 ? { rome_key_draw: o.romeKeyDraw } : {}), ...(own.length > 0 ? { rome_key_own: own.length } : {}), ...(holders.length > 0 ? { rome_forget_hold: holders.length } : {}) } : {}), stats_tokens: stats.count, stats_corpus: o.statsCorpus ?? 'world train.txt',
        ...(fact.op !== 'forget' && o.romeInsertCompare > 1 && common.layer === undefined ? { rome_insert_compare: o.romeInsertCompare } : {}),
        ...(forget ? { forget_target: forget.kind, ...(forget.kind === 'abstain' ? { abstain_text: forget.text } : { forget_v_lr: ROME_FORGET_DEFAULTS.vLr, p_stop: ROME_FORGET_DEFAULTS.pStop, rest_weight: ROME_FORGET_DEFAULTS.restWeight, ...(o.romeForgetCompare > 1 ? { rome_forget_compare: o.romeForgetCompare } : {}) }) } : {}),
      },
      training: {
        nll: r.nll, delta_norm: r.deltaNorm, v_steps: r.steps, train_prompts: checks.length, train_prompts_solved: solved,
        ...(compared.length > 1 ? { layers_compared: compared.map((c) => ({ layer: c.layer, delta_norm: c.deltaNorm })) } : {}),
      },
      summary: `rome ${fact.id}: layer ${layer}${tried.length > 1 ? ` (tried ${tried.join(', ')})` : ''}, ${((Date.now() - t0) / 1000).toFixed(1)} s, NLL ${r.nll.toFixed(3)}, ‖δ‖ ${r.deltaNorm.toFixed(3)}`,
    });
  }
  if (refused.length) {
    throw new EditRefusedError(
      `ROME could not make ${refused.length} of ${batch.facts.length} edit${batch.facts.length > 1 ? 's' : ''}; no bundle written: ${refused.join('; ')}` +
      (common.layer !== undefined ? ' (drop --layer to let ROME try later layers, or use --method lora)' : ' (try --method lora)'),
    );
  }
  return made;
}

/** The n prompts whose next token the base model is least sure of (highest entropy), in their given order. */
export function mostUncertain(model: CausalLM, tok: Tokenizer, prompts: readonly string[], n: number): string[] {
  if (prompts.length <= n) return prompts.slice();
  const prev = model.activeAdapters();
  model.setAdapters([]);
  const V = model.config.vocabSize;
  const ent: number[] = [];
  try {
    for (let s = 0; s < prompts.length; s += 64) {
      const rows = prompts.slice(s, s + 64).map((p) => tok.encode(p));
      const l = lastLogits(model, rows).data;
      for (let b = 0; b < rows.length; b++) {
        const lp = logSoftmaxRow(l.subarray(b * V, (b + 1) * V));
        let h = 0;
        for (const v of lp) h -= Math.exp(v) * v;
        ent.push(h);
      }
    }
  } finally {
    model.setAdapters(prev);
  }
  const keep = new Set(ent.map((e, i) => [e, i] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]).slice(0, n).map(([, i]) => i));
  return prompts.filter((_, i) => keep.has(i));
}

const d = ROME_METHOD_DEFAULTS;

export const romeMethod: EditMethod<RomeMethodOptions> = {
  name: 'rome',
  describe:
    'one rank-one edit per fact (one bundle each) at about 35% of the depth (--layer fixes it); a fact that layer leaves unsolved is tried at ' +
    'the next two layers, and an edit that still does not take is refused (exit 1, nothing written); an insert is made at the first two layers ' +
    'where it takes and the smaller ‖δ‖ kept (--rome-insert-compare). Key statistics are cached on disk. ' +
    'op "forget": probe-gen\'s abstention text is inserted (--forget-target abstain), else the old answer is made unlikely (unlikelihood, same KL and norm limits).',
  ops: ['insert', 'forget'],
  perFact: true,
  options: {
    'stats-corpus': { type: 'string', describe: 'text for the key statistics, one document per line (default: the retention corpus)' },
    'stats-tokens': { type: 'number', default: d.statsTokens, min: 1, integer: true, describe: 'tokens for the key statistics' },
    'stats-cache': { type: 'string', describe: 'statistics cache directory (default: $CATECHISM_CACHE or ~/.cache/catechism)' },
    'rome-prefixes': { type: 'number', default: d.romePrefixes, min: 0, integer: true, describe: 'context prefixes averaged for the key' },
    'rome-keep-facts': { type: 'number', default: d.romeKeepFacts, min: 0, integer: true, describe: 'also keep (KL) the subject\'s other facts and this many known facts of any relation (0: only ten of the relation\'s)' },
    'rome-key-steps': { type: 'number', default: d.romeKeySteps, min: 0, integer: true, describe: 'Adam steps refitting the rank-one key direction together with δ, other facts held (0: ROME\'s closed-form direction)' },
    'rome-key-pool': { type: 'number', default: d.romeKeyPool, min: 1, integer: true, describe: 'known facts (training phrasings, other subjects) held to the base model while the key is refitted' },
    'rome-key-weight': { type: 'number', default: d.romeKeyWeight, min: 0, describe: 'weight of their KL' },
    'rome-key-prefixed': { type: 'number', default: d.romeKeyPrefixed, min: 0, max: 1, describe: 'share of those held prompts read after one of the context prefixes' },
    'rome-key-own': { type: 'boolean', default: d.romeKeyOwn, describe: 'also hold the edited subject\'s other known facts, every training phrasing, while the key is refitted' },
    'rome-key-draw': { type: 'number', default: d.romeKeyDraw, min: 1, integer: true, describe: 'draw this many times --rome-key-pool known-fact prompts and hold the pool\'s size of them the base model is least sure of (1: the seeded draw)' },
    'rome-insert-compare': { type: 'number', default: d.romeInsertCompare, min: 1, integer: true, describe: 'op "insert": candidate layers made; of those where the edit takes, the one with the smallest ‖δ‖ is kept (1: the first that takes)' },
    'rome-forget-compare': { type: 'number', default: d.romeForgetCompare, min: 1, integer: true, describe: 'op "forget": candidate layers tried; of those that forget, the one that lowers the answer least for other subjects sharing it (1: the first that forgets)' },
    'rome-forget-hold': { type: 'number', default: d.romeForgetHold, min: 0, integer: true, describe: 'op "forget": prompts of other subjects with the forgotten answer held while the key is refitted (0: none)' },
  },
  parseOptions(flags) {
    const corpus = flags['stats-corpus'];
    if (typeof corpus === 'string' && !fs.existsSync(corpus)) throw new UsageError(`--stats-corpus ${corpus}: no such file`);
    return {
      ...(typeof flags['stats-corpus'] === 'string' ? { statsCorpus: flags['stats-corpus'] } : {}),
      statsTokens: flags['stats-tokens'] as number,
      ...(typeof flags['stats-cache'] === 'string' ? { statsCache: flags['stats-cache'] } : {}),
      romePrefixes: flags['rome-prefixes'] as number,
      romeKeepFacts: flags['rome-keep-facts'] as number,
      romeKeySteps: flags['rome-key-steps'] as number,
      romeKeyPool: flags['rome-key-pool'] as number,
      romeKeyWeight: flags['rome-key-weight'] as number,
      romeKeyPrefixed: flags['rome-key-prefixed'] as number,
      romeKeyDraw: flags['rome-key-draw'] as number,
      romeKeyOwn: flags['rome-key-own'] as boolean,
      romeForgetCompare: flags['rome-forget-compare'] as number,
      romeForgetHold: flags['rome-forget-hold'] as number,
      romeInsertCompare: flags['rome-insert-compare'] as number,
    };
  },
  check(res, common) {
    const n = res.model.config.layers;
    if (common.layer === n - 1) {
      throw new UsageError(`--layer ${common.layer}: ROME cannot edit the last layer (its MLP output at the subject cannot reach the prediction); choose 0–${n - 2}`);
    }
  },
  edit: romeBatch,
};
