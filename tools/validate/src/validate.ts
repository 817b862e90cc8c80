/**
 * validate as a library: evaluate adapters (each alone, on the base model)
 * on their facts and probes plus shared retention sets, and build one
 * `report` record per adapter.
 */
import { readFileSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { InputError, type Report } from '@catechism/core/records';
import { readBundle } from '@catechism/core/adapters';
import { loadLora, type CausalLM, type Tokenizer } from '@catechism/core/models';
import { peakRssKib } from '@catechism/core/cli';
import { withLock } from '@catechism/core/registry';
import { historyTarget } from './history.js';
import { Rng } from '@catechism/core';
import {
  buildSuite, checkGates, computeMetricsSe, encodeSuite, erasureProbeMetrics, erasureProbeRows, steerProbeMetrics, lastTokenActivations, itemRows, observe, routingMetrics,
  type ConceptLike, type FactLike, type Gate, type ItemRow, type ProbeLike, type SeqScore, type SharedSets,
} from '@catechism/core/metrics';

export interface ValidateContext {
  model: CausalLM;
  tokenizer: Tokenizer;
  modelName: string;
  /** sha256 of the model's weights (as `modelSha256` computes it); the report's `base_model_sha256`. */
  modelSha256?: string;
  gates: Gate[];
  shared: SharedSets;
  batchSize?: number;
  genTokens?: number;
  noGeneration?: boolean;
  log?: (msg: string) => void;
  /** Notes every report carries (missing evaluation sets). */
  notes?: string[];
  /**
   * The base model's scores, kept across the adapters of one run: the
   * shared sets (retention, general text) are scored once, not once per
   * adapter. Holds the base model's state only.
   */
  baseCache?: Map<string, SeqScore>;
  /** This run's identity: a report counts only for the bundle, base model and run it names. */
  run?: { tool: string; version: string; id: string; started_at: string };
  /**
   * `concept` records (stream, --concepts): an adapter that erases a concept
   * (its hyperparameters name it, or the records hold one concept) gets the
   * erasure probe's metrics, read at `erasureSite` (default: the site the
   * adapter names, else the middle layer's MLP output). `probeModel`: the
   * engine model the activations are read from (with --runtime onnx too).
   */
  concepts?: readonly ConceptLike[];
  erasureSite?: string;
  probeModel?: CausalLM;
}

/** The schema's `report` record as validate writes it: always with its thresholds. */
export interface ReportRecord extends Report {
  thresholds: Record<string, number>;
}

export interface AdapterResult {
  report: ReportRecord;
  rows: ItemRow[];
}

/**
 * Records of one kind from an NDJSON file, leniently (only `fields` are
 * required, as strings): a probe file (world eval files: general texts carry
 * no fact_id) or a concept file (--concepts). Another kind is refused.
 */
function readKindFile<T>(file: string, kind: string, fields: readonly string[]): T[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new InputError(`cannot read: ${(e as Error).message}`, { source: file });
  }
  const out: T[] = [];
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    let r: Record<string, unknown>;
    try {
      r = JSON.parse(line) as Record<string, unknown>;
    } catch (e) {
      throw new InputError(`not valid JSON (${(e as Error).message})`, { source: file, record: i + 1 });
    }
    if (r === null || typeof r !== 'object' || r.kind !== kind) throw new InputError(`expected a ${kind} record (kind "${kind}")`, { source: file, record: i + 1, field: 'kind' });
    for (const f of fields) if (typeof r[f] !== 'string') throw new InputError('missing required field (expected string)', { source: file, record: i + 1, field: f });
    out.push(r as unknown as T);
  });
  return out;
}

/** Probe records of an NDJSON file (--retain, --general, --suite). */
export function readProbeFile(file: string): ProbeLike[] {
  return readKindFile<ProbeLike>(file, 'probe', ['prompt']);
}

/** Concept records of an NDJSON file, for the erasure probe (--concepts). */
export function readConceptFile(file: string): ConceptLike[] {
  return readKindFile<ConceptLike>(file, 'concept', ['concept', 'prompt', 'label']);
}

/** A seeded sample of n items (all when n ≥ length), in their original order. (validate's own sets use stratifiedSample with a fixed seed.) */
export function sample<T>(xs: readonly T[], n: number, seed: number): T[] {
  if (n >= xs.length) return xs.slice();
  const idx = new Rng(seed).shuffle(xs.map((_, i) => i)).slice(0, n).sort((a, b) => a - b);
  return idx.map((i) => xs[i]);
}

/** Drop retain probes about the edited facts (same id, or same subject and relation). */
export function excludeEdited(retain: readonly ProbeLike[], facts: readonly FactLike[]): ProbeLike[] {
  const ids = new Set(facts.map((f) => f.id));
  const keys = new Set(facts.map((f) => `${f.subject}\u0000${typeof f.relation === 'string' ? f.relation : ''}`));
  const subjects = new Set(facts.filter((f) => typeof f.relation !== 'string').map((f) => f.subject));
  return retain.filter((p) => {
    if (p.fact_id !== undefined && ids.has(p.fact_id)) return false;
    const subj = typeof p.subject === 'string' ? p.subject : undefined;
    if (subj === undefined) return true;
    if (subjects.has(subj)) return false;
    return !keys.has(`${subj}\u0000${typeof p.relation === 'string' ? p.relation : ''}`);
  });
}

/**
 * Evaluate one suite before (no adapters) and after (with `active`).
 * Leaves the model with no adapters.
 */
export function evaluate(
  ctx: ValidateContext,
  facts: readonly FactLike[],
  probes: readonly ProbeLike[],
  active: Parameters<CausalLM['setAdapters']>[0],
): { metrics: Record<string, number>; se: Record<string, number>; rows: ItemRow[]; skipped: string[] } {
  const t0 = performance.now();
  // the whole retain set is scored (the same batches for every adapter); the probes about this adapter's facts are left out of the metrics
  const retain = ctx.shared.retain ?? [];
  const kept = new Set(excludeEdited(retain, facts));
  const shared: SharedSets = { ...ctx.shared, retain, retainExcluded: new Set(retain.filter((p) => !kept.has(p))) };
  const suite = buildSuite(facts, probes, shared);
  // learned position embeddings cap the input length (longer prompts are cut); rotary ones do not
  const maxLength = ctx.model.arch.positionEmbedding !== null ? ctx.model.config.maxPositions : undefined;
  const enc = encodeSuite(ctx.tokenizer, suite, maxLength !== undefined ? { maxLength } : {});
  const obsOpts = { batchSize: ctx.batchSize, genTokens: ctx.genTokens, noGeneration: ctx.noGeneration, maxLength };
  ctx.model.setAdapters([]);
  const before = observe(ctx.model, ctx.tokenizer, enc, { ...obsOpts, ...(ctx.baseCache ? { cache: ctx.baseCache } : {}) });
  let after = before;
  if (active.length > 0) {
    ctx.model.setAdapters(active);
    try {
      after = observe(ctx.model, ctx.tokenizer, enc, { ...obsOpts, reference: before });
    } finally {
      ctx.model.setAdapters([]);
    }
  }
  const { metrics, se } = computeMetricsSe(enc, before, after);
  // MoE models: how far the adapter moves the routers, on the same unrelated prompts as kl (core metrics/routing.ts)
  const routing = routingMetrics(ctx.model, ctx.tokenizer, { unrelated: suite.unrelated, excluded: new Set([...shared.retainExcluded!].map((p) => p.prompt)), facts, active, batchSize: ctx.batchSize });
  if (routing) {
    Object.assign(metrics, routing.metrics);
    Object.assign(se, routing.se);
  }
  const secs = (performance.now() - t0) / 1000;
  metrics.eval_seconds = secs;
  metrics.probes_per_second = (before.sequences + (after === before ? 0 : after.sequences)) / secs;
  metrics.peak_rss_mib = peakRssKib() / 1024;
  return { metrics, se, rows: itemRows(enc, before, after), skipped: enc.skipped };
}

function report(ctx: ValidateContext, adapterId: string, metrics: Record<string, number>, se: Record<string, number>, extra: Record<string, unknown>): ReportRecord {
  const verdict = checkGates(metrics, ctx.gates);
  const notes = [...(ctx.notes ?? []), ...((extra.notes as string[] | undefined) ?? [])];
  delete extra.notes;
  return {
    kind: 'report',
    adapter_id: adapterId,
    ...extra,
    base_model: ctx.modelName,
    ...(ctx.modelSha256 !== undefined ? { base_model_sha256: ctx.modelSha256 } : {}),
    metrics,
    standard_errors: se,
    thresholds: verdict.thresholds,
    gates: verdict.gates,
    gates_skipped: verdict.skipped,
    pass: verdict.pass,
    failures: verdict.failures,
    ...(notes.length > 0 ? { notes } : {}),
    created_at: new Date().toISOString(),
  };
}

export interface AdapterInput {
  /** The `adapter` record. */
  record: Record<string, unknown>;
  /** `fact` and `probe` records seen in the stream. */
  streamFacts: readonly FactLike[];
  streamProbes: readonly ProbeLike[];
  /** Directory that relative bundle paths are resolved from. */
  cwd?: string;
}

export interface LoadedAdapter {
  id: string;
  dir: string;
  sha256: string;
  bytes: number;
  facts: FactLike[];
  probes: ProbeLike[];
  active: Parameters<CausalLM['setAdapters']>[0];
  version: number | null;
  /** Checks overridden by --force (bundle hash, base model), one line each; the report records them. */
  forced: string[];
  /** The manifest's hyperparameters (a LEACE bundle names its concept and site). */
  hyperparameters?: Record<string, unknown>;
}

export interface LoadOptions {
  /** sha256 of the model's weights: the bundle's base model must be this one. Unchecked when absent. */
  modelSha256?: string;
  /** The model directory (for messages). */
  modelDir?: string;
  /** Go on past a hash mismatch (recorded in `forced`). */
  force?: boolean;
  /**
   * Read a plain bundle under its history lock (`<dir>.lock`), so a
   * concurrent validate appending its report (temp file → rename inside
   * the bundle) is never seen half-way. Needs write access beside the bundle.
   */
  lock?: boolean;
}

/** Load an adapter record's bundle, its facts and probes (manifest's plus the stream's about its facts). */
export async function loadAdapter(input: AdapterInput, model: CausalLM, opts: LoadOptions = {}): Promise<LoadedAdapter> {
  const rec = input.record;
  if (typeof rec.path !== 'string' || rec.path === '') throw new InputError('expected the bundle directory (string)', { field: 'path' });
  const dir = path.resolve(input.cwd ?? process.cwd(), rec.path);
  const bundle = opts.lock && historyTarget(dir).kind === 'manifest'
    ? await withLock(`${dir}.lock`, { timeoutMs: 60_000 }, () => readBundle(dir))
    : await readBundle(dir);
  const m = bundle.manifest;
  const id = typeof rec.id === 'string' ? rec.id : m.id;
  // a report counts only for the exact bundle and base model it names: refuse to score anything else
  const forced: string[] = [];
  const refuse = (what: string, field: string): void => {
    if (!opts.force) throw new InputError(`${what}; pass --force to validate it anyway (the report records that)`, { field });
    forced.push(what);
  };
  if (typeof rec.sha256 === 'string' && rec.sha256 !== bundle.sha256) {
    refuse(`the bundle ${dir} has sha256 ${bundle.sha256}, not the record's ${rec.sha256} (its files changed after the record was written)`, 'sha256');
  }
  if (opts.modelSha256 !== undefined && m.base_model.sha256 !== opts.modelSha256) {
    refuse(
      `adapter ${id} was made for base model ${m.base_model.name} (sha256 ${m.base_model.sha256}), but the model ${opts.modelDir ?? ''} has sha256 ${opts.modelSha256}; pass its base model with --model DIR`,
      'base_model.sha256',
    );
  }
  const factIds = new Set<string>([...m.fact_ids, ...(Array.isArray(rec.fact_ids) ? (rec.fact_ids as string[]) : [])]);
  const facts = new Map<string, FactLike>();
  for (const f of m.facts as FactLike[]) facts.set(f.id, f);
  for (const f of input.streamFacts) if (factIds.has(f.id) && !facts.has(f.id)) facts.set(f.id, f);
  const probes = [...(m.probes as ProbeLike[]), ...input.streamProbes.filter((p) => p.fact_id !== undefined && factIds.has(p.fact_id))];
  const lora = loadLora(dir, id);
  const scale = typeof rec.scale === 'number' ? rec.scale : (m.scale ?? 1);
  // shape mismatches surface here, before any evaluation
  model.setAdapters([{ adapter: lora, scale }]);
  model.setAdapters([]);
  let bytes = 0;
  for (const f of bundle.files) bytes += f.size;
  const hp = m.hyperparameters !== null && typeof m.hyperparameters === 'object' ? { hyperparameters: m.hyperparameters as Record<string, unknown> } : {};
  return { id, dir, sha256: bundle.sha256, bytes, facts: [...facts.values()], probes, active: [{ adapter: lora, scale }], version: m.version, forced, ...hp };
}

function logExclusions(ctx: ValidateContext, id: string, metrics: Record<string, number>): void {
  const ex = metrics.n_paraphrase_excluded ?? 0;
  if (ex > 0) ctx.log?.(`${id}: ${ex} of ${ex + (metrics.n_paraphrase ?? 0)} test paraphrases left out of generalisation: the base model does not answer them with target_true`);
  const fx = metrics.n_forget_excluded ?? 0;
  if (fx > 0) ctx.log?.(`${id}: ${fx} forget paraphrases left out: the base model does not answer them with target_true`);
  if ((metrics.n_unknown_target ?? 0) > 0) ctx.log?.(`${id}: ${metrics.n_unknown_target} probes have a target the tokenizer spells as its unknown token: never counted as a success`);
}

/**
 * The erasure probe (core metrics/erasure.ts) for an adapter, when concept
 * records are given: the concept the adapter names (LEACE's hyperparameters),
 * else the only one in the records. Empty when there is nothing to measure.
 * A steering adapter (its hyperparameters name `toward`) gets the steering
 * probe instead (STEER_METRICS): steering moves a concept, it does not erase it.
 */
export function erasureMetrics(ctx: ValidateContext, a: Pick<LoadedAdapter, 'id' | 'active' | 'hyperparameters'>): Record<string, number> {
  const recs = ctx.concepts ?? [];
  if (recs.length === 0) return {};
  const hp = a.hyperparameters ?? {};
  const names = [...new Set(recs.map((r) => r.concept))];
  const concept = typeof hp.concept === 'string' ? hp.concept : names.length === 1 ? names[0] : undefined;
  if (concept === undefined) {
    ctx.log?.(`${a.id}: concept records of ${names.length} concepts and the adapter names none: no erasure probe`);
    return {};
  }
  const rows = erasureProbeRows(recs, concept);
  if (rows === null) {
    ctx.log?.(`${a.id}: concept ${concept}: fewer than 2 held-out (split test) examples of some label, or one label: no erasure probe`);
    return {};
  }
  const model = ctx.probeModel ?? ctx.model;
  // a steering adapter (it names the label it steers toward) is measured by how far it moves the other side, downstream of where it acts
  const steer = typeof hp.toward === 'string' ? hp.toward : undefined;
  const site = ctx.erasureSite ?? (steer !== undefined ? `layers.${model.config.layers - 1}.resid_post`
    : typeof hp.site === 'string' ? hp.site : `layers.${Math.floor(model.config.layers / 2)}.mlp`);
  const capture = (prompts: readonly string[], adapted: boolean): Float64Array => {
    model.setAdapters(adapted ? a.active : []);
    try {
      return lastTokenActivations(model, ctx.tokenizer, prompts, site, ctx.batchSize ?? 32);
    } finally {
      model.setAdapters([]);
    }
  };
  if (steer !== undefined) {
    const toward = rows.classes.indexOf(steer);
    if (toward < 0) {
      ctx.log?.(`${a.id}: steers toward ${steer}, which no held-out ${concept} record has as its label: no steering probe`);
      return {};
    }
    const m = steerProbeMetrics(rows, model.config.hidden, capture, toward);
    ctx.log?.(`${a.id}: steering probe of ${concept} at ${site}: other side read as ${steer} ${m.steer_toward_before.toFixed(3)} → ${m.steer_toward.toFixed(3)}, ${steer} kept ${m.steer_kept.toFixed(3)} (${m.n_steer_probe} held-out examples)`);
    return m;
  }
  const m = erasureProbeMetrics(rows, model.config.hidden, capture);
  ctx.log?.(`${a.id}: erasure probe of ${concept} at ${site}: ${m.erasure_probe_acc_before.toFixed(3)} → ${m.erasure_probe_acc.toFixed(3)} ± ${m.erasure_probe_gap_se.toFixed(3)} (chance ${m.erasure_probe_chance.toFixed(3)}; shuffled labels read ${m.erasure_probe_null_gap.toFixed(3)} from it; ${m.n_erasure_probe} held-out examples, cross-fitted halves)`);
  return m;
}

export function validateLoaded(ctx: ValidateContext, a: LoadedAdapter): AdapterResult {
  const { metrics, se, rows, skipped } = evaluate(ctx, a.facts, a.probes, a.active);
  Object.assign(metrics, erasureMetrics(ctx, a));
  metrics.adapter_bytes = a.bytes;
  for (const s of skipped) ctx.log?.(`${a.id}: skipped ${s}`);
  logExclusions(ctx, a.id, metrics);
  // bundle_sha256: the bundle as scored (a plain bundle's hash changes again when this report is appended to its manifest)
  const extra: Record<string, unknown> = { adapter_sha256: a.sha256, bundle_sha256: a.sha256, ...(ctx.run ? { run: ctx.run } : {}), path: a.dir };
  if (a.version !== null) extra.adapter_version = a.version;
  if (a.forced.length > 0) extra.forced = a.forced.slice();
  if (a.facts.length === 0) ctx.log?.(`${a.id}: the bundle names no facts with targets; only harm metrics are measured`);
  return { report: report(ctx, a.id, metrics, se, extra), rows };
}

/** The base model alone on a set of facts and probes (`--baseline`): its report has adapter_id "base". */
export function validateBaseline(ctx: ValidateContext, facts: readonly FactLike[], probes: readonly ProbeLike[]): AdapterResult {
  const { metrics, se, rows, skipped } = evaluate(ctx, facts, probes, []);
  for (const s of skipped) ctx.log?.(`base: skipped ${s}`);
  logExclusions(ctx, 'base', metrics);
  return { report: report(ctx, 'base', metrics, se, { baseline: true }), rows };
}

export function fileExists(p: string): boolean {
  try {
    statSync(p);
    return true;
  } catch {
    return false;
  }
}
