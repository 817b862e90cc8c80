/**
 * validate as a library: evaluate adapters (each alone, on the base model)
 * on their facts and probes plus shared retention sets, and build one
 * `report` record per adapter.
 */
import { readFileSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { InputError } from '@catechism/core/records';
import { readBundle } from '@catechism/core/adapters';
import { loadLora, type CausalLM, type Tokenizer } from '@catechism/core/models';
import { peakRssKib } from '@catechism/core/cli';
import { Rng } from '@catechism/core';
import {
  buildSuite, checkGates, computeMetrics, encodeSuite, itemRows, observe,
  type FactLike, type Gate, type ItemRow, type ProbeLike, type SharedSets,
} from '@catechism/core/metrics';

export interface ValidateContext {
  model: CausalLM;
  tokenizer: Tokenizer;
  modelName: string;
  gates: Gate[];
  shared: SharedSets;
  batchSize?: number;
  genTokens?: number;
  noGeneration?: boolean;
  log?: (msg: string) => void;
  /** sha256 of the model's weights and this run's identity: a report counts only for the bundle and base model it names. */
  modelSha256?: string;
  run?: { tool: string; version: string; id: string; started_at: string };
}

export interface ReportRecord {
  kind: 'report';
  adapter_id: string;
  metrics: Record<string, number>;
  thresholds: Record<string, number>;
  pass: boolean;
  failures: string[];
  [k: string]: unknown;
}

export interface AdapterResult {
  report: ReportRecord;
  rows: ItemRow[];
}

/** Read probe records from an NDJSON file, leniently (world eval files: general texts carry no fact_id). */
export function readProbeFile(file: string): ProbeLike[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new InputError(`cannot read: ${(e as Error).message}`, { source: file });
  }
  const out: ProbeLike[] = [];
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (e) {
      throw new InputError(`not valid JSON (${(e as Error).message})`, { source: file, record: i + 1 });
    }
    const r = v as Record<string, unknown>;
    if (r === null || typeof r !== 'object' || r.kind !== 'probe') throw new InputError('expected a probe record (kind "probe")', { source: file, record: i + 1, field: 'kind' });
    if (typeof r.prompt !== 'string') throw new InputError('missing required field (expected string)', { source: file, record: i + 1, field: 'prompt' });
    out.push(r as unknown as ProbeLike);
  });
  return out;
}

/** A seeded sample of n items (all when n ≥ length), in their original order. */
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
): { metrics: Record<string, number>; rows: ItemRow[]; skipped: string[] } {
  const t0 = performance.now();
  const shared: SharedSets = { ...ctx.shared, retain: excludeEdited(ctx.shared.retain ?? [], facts) };
  const suite = buildSuite(facts, probes, shared);
  const maxLength = ctx.model.config.family === 'gpt2' ? ctx.model.config.maxPositions : undefined;
  const enc = encodeSuite(ctx.tokenizer, suite, maxLength !== undefined ? { maxLength } : {});
  const obsOpts = { batchSize: ctx.batchSize, genTokens: ctx.genTokens, noGeneration: ctx.noGeneration, maxLength };
  ctx.model.setAdapters([]);
  const before = observe(ctx.model, ctx.tokenizer, enc, obsOpts);
  let after = before;
  if (active.length > 0) {
    ctx.model.setAdapters(active);
    try {
      after = observe(ctx.model, ctx.tokenizer, enc, obsOpts);
    } finally {
      ctx.model.setAdapters([]);
    }
  }
  const metrics = computeMetrics(enc, before, after);
  const secs = (performance.now() - t0) / 1000;
  metrics.eval_seconds = secs;
  metrics.probes_per_second = (before.sequences + (after === before ? 0 : after.sequences)) / secs;
  metrics.peak_rss_mib = peakRssKib() / 1024;
  return { metrics, rows: itemRows(enc, before, after), skipped: enc.skipped };
}

function report(ctx: ValidateContext, adapterId: string, metrics: Record<string, number>, extra: Record<string, unknown>): ReportRecord {
  const verdict = checkGates(metrics, ctx.gates);
  return {
    kind: 'report',
    adapter_id: adapterId,
    ...extra,
    base_model: ctx.modelName,
    metrics,
    thresholds: verdict.thresholds,
    gates: verdict.gates,
    gates_skipped: verdict.skipped,
    pass: verdict.pass,
    failures: verdict.failures,
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
}

/** Load an adapter record's bundle, its facts and probes (manifest's plus the stream's about its facts). */
export async function loadAdapter(input: AdapterInput, model: CausalLM): Promise<LoadedAdapter> {
  const rec = input.record;
  if (typeof rec.path !== 'string' || rec.path === '') throw new InputError('expected the bundle directory (string)', { field: 'path' });
  const dir = path.resolve(input.cwd ?? process.cwd(), rec.path);
  const bundle = await readBundle(dir);
  const m = bundle.manifest;
  const id = typeof rec.id === 'string' ? rec.id : m.id;
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
  return { id, dir, sha256: bundle.sha256, bytes, facts: [...facts.values()], probes, active: [{ adapter: lora, scale }], version: m.version };
}

export function validateLoaded(ctx: ValidateContext, a: LoadedAdapter): AdapterResult {
  const { metrics, rows, skipped } = evaluate(ctx, a.facts, a.probes, a.active);
  metrics.adapter_bytes = a.bytes;
  for (const s of skipped) ctx.log?.(`${a.id}: skipped ${s}`);
  const extra: Record<string, unknown> = { adapter_sha256: a.sha256, bundle_sha256: a.sha256, ...(ctx.modelSha256 ? { base_model_sha256: ctx.modelSha256 } : {}), ...(ctx.run ? { run: ctx.run } : {}), path: a.dir };
  if (a.version !== null) extra.adapter_version = a.version;
  if (a.facts.length === 0) ctx.log?.(`${a.id}: the bundle names no facts with targets; only harm metrics are measured`);
  return { report: report(ctx, a.id, metrics, extra), rows };
}

/** The base model alone on a set of facts and probes (`--baseline`): its report has adapter_id "base". */
export function validateBaseline(ctx: ValidateContext, facts: readonly FactLike[], probes: readonly ProbeLike[]): AdapterResult {
  const { metrics, rows, skipped } = evaluate(ctx, facts, probes, []);
  for (const s of skipped) ctx.log?.(`base: skipped ${s}`);
  return { report: report(ctx, 'base', metrics, { baseline: true }), rows };
}

export function fileExists(p: string): boolean {
  try {
    statSync(p);
    return true;
  } catch {
    return false;
  }
}
