/**
 * The measuring harness around lora-train's own path (trainEdits): edits of
 * the fixture world's requests (or counterfactuals made from its known
 * facts) trained and read back. For the quality tests, the benchmark
 * (scripts/bench/lora-train.bench.mjs) and scripts/eval-edits.mjs.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { UsageError } from '@catechism/core/records';
import type { InputRecord } from '@catechism/core/records';
import { loadLora } from '@catechism/core/models';
import { worldFile } from '@catechism/core/fixtures';
import type { AdapterRecord } from '@catechism/core/adapters';
import { Rng } from '@catechism/core';
import {
  LORA_METHOD_DEFAULTS, ROME_KEEP_PROMPTS, checkFact, editMethod, editQuality, editReadback, neighbourFacts, readNdjson, romeKeepPrompts,
  type Objective, type QualityFigures, type ReadbackFigures, type Rec,
} from '@catechism/core/edit';
import { DEFAULT_ARGS, trainEdits, type Resources, type TrainArgs } from './lib.js';

export interface MeasureOptions {
  method: string;
  objective?: Objective;
  /** 'insert': the world's counterfactual edits; 'forget': its forget requests. */
  op: 'insert' | 'forget';
  /** Facts (taken from the start of fixtures/world/edits.ndjson after `skip`). */
  count: number;
  skip?: number;
  /** Facts per adapter (lora); ROME is always one per fact. */
  batch?: number;
  seed?: number;
  steps?: number;
  /** Method options by flag name (e.g. { 'rome-key-steps': 0 }), beside objective and steps. */
  options?: Record<string, unknown>;
  out: string;
  log?: (m: string) => void;
}

export interface Measured {
  figures: QualityFigures;
  seconds: number;
  editsPerSecond: number;
  adapters: number;
  bytesPerAdapter: number;
  records: AdapterRecord[];
}

/**
 * Train edits on the world's edit requests through the same path as the CLI
 * and measure them (top-1 figures, time, bundle bytes). For tests and the
 * benchmark.
 */
export async function measureWorldEdits(res: Resources, opts: MeasureOptions): Promise<Measured> {
  const editsFile = worldFile('edits.ndjson');
  if (!editsFile) throw new UsageError('fixtures/world/edits.ndjson not found');
  const facts = readNdjson(editsFile).filter((f) => f.op === opts.op).slice(opts.skip ?? 0, (opts.skip ?? 0) + opts.count);
  const inputs = editInputs(facts);
  const args: TrainArgs = {
    ...DEFAULT_ARGS, seed: opts.seed ?? 0, out: opts.out, method: opts.method, batch: opts.batch ?? 0,
    options: { ...(opts.method === 'lora' ? { objective: opts.objective, steps: opts.steps } : {}), ...opts.options },
  };
  const neighbours = LORA_METHOD_DEFAULTS.neighbours;
  const t0 = process.hrtime.bigint();
  const records = await trainEdits(inputs, args, res, { log: opts.log ?? (() => {}) });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  let bytes = 0;
  const edits = records.map((r) => {
    for (const f of fs.readdirSync(r.path)) bytes += fs.statSync(path.join(r.path, f)).size;
    return { adapter: loadLora(r.path), facts: r.fact_ids.map((id) => checkFact(facts.find((f) => f.id === id)!)) };
  });
  // neighbour prompts trained on (retention) are not counted as held-out neighbours
  const avoid = new Set<string>();
  for (const e of edits) for (const n of neighbourFacts(res.known, e.facts, neighbours, args.seed)) avoid.add(n.prompt);
  if (opts.method === 'rome') for (const e of edits) for (const f of e.facts) for (const p of romeKeepPrompts(res.known, f, ROME_KEEP_PROMPTS)) avoid.add(p);
  if (opts.method === 'lora') {
    // trainEdits seeds batch i with seed + i
    edits.forEach((e, i) => {
      for (const n of neighbourFacts(res.known, e.facts, neighbours, args.seed + i)) avoid.add(n.prompt);
    });
  }
  const figures = editQuality(res.model, res.tokenizer, edits, { templates: res.templates, known: res.known, neighboursPerFact: 20, avoid });
  return { figures, seconds, editsPerSecond: facts.length / seconds, adapters: records.length, bytesPerAdapter: bytes / Math.max(1, records.length), records };
}

/**
 * Counterfactual edit requests made from known facts (a world's
 * facts.ndjson), for measuring edits no request file names: a seeded order
 * of the facts (of one relation, or all), skipping those `exclude` names
 * (subject + relation) and the first `skip`, each moved to another object of
 * its relation (seeded). op "forget" keeps the true answer to forget.
 */
export function counterfactualFacts(
  known: readonly Rec[], opts: { relation?: string; skip?: number; count: number; seed?: number; op?: 'insert' | 'forget'; exclude?: readonly Rec[] },
): Rec[] {
  const excluded = new Set((opts.exclude ?? []).map((f) => `${String(f.subject)}\u0000${String(f.relation)}`));
  const objects = new Map<string, string[]>();
  for (const k of known) if (typeof k.relation === 'string' && typeof k.target_true === 'string') (objects.get(k.relation) ?? objects.set(k.relation, []).get(k.relation)!).push(k.target_true);
  const rng = new Rng(1000 + (opts.seed ?? 0));
  const pool = rng.shuffle(known.filter((k) => (!opts.relation || k.relation === opts.relation) && !excluded.has(`${String(k.subject)}\u0000${String(k.relation)}`)));
  const skip = opts.skip ?? 0;
  return pool.slice(skip, skip + opts.count).map((k, i) => {
    const others = [...new Set(objects.get(k.relation as string))].filter((o) => o !== k.target_true).sort();
    const base = { kind: 'fact', id: `cf-${String(skip + i + 1).padStart(4, '0')}`, subject: k.subject, prompt: k.prompt, relation: k.relation, source: 'counterfactual' };
    return opts.op === 'forget'
      ? { ...base, target_true: k.target_true, op: 'forget' }
      : { ...base, target_new: others[rng.int(others.length)], target_true: k.target_true, op: 'insert' };
  });
}

/** Facts plus the probes probe-gen's first form writes (one train `edit` probe per fact), as input records. */
export function editInputs(facts: readonly Rec[]): InputRecord[] {
  const inputs: InputRecord[] = [];
  for (const f of facts) {
    inputs.push({ record: f as InputRecord['record'], source: 'edits', index: inputs.length + 1 });
    const target = (f.op === 'forget' ? f.target_true : f.target_new) as string;
    inputs.push({
      record: { kind: 'probe', id: `${f.id as string}/edit/0`, fact_id: f.id, role: 'edit', split: 'train', prompt: (f.prompt as string).replace('{}', f.subject as string), target, expect: f.op === 'forget' ? 'abstain' : 'new' },
      source: 'edits', index: inputs.length + 1,
    });
  }
  return inputs;
}

/**
 * The strict read-back (editReadback) of trained adapter records over every
 * probe of `readbackFile` (a world's eval/facts-train.ndjson): batch edits
 * (LoRA) active together, a per-fact method's edits (ROME) each alone.
 */
export function readbackAdapters(res: Resources, records: readonly AdapterRecord[], facts: readonly Rec[], readbackFile: string, method: string): ReadbackFigures | null {
  if (records.length === 0) return null;
  const byId = new Map(facts.map((f) => [f.id as string, checkFact(f)]));
  const ads = records.map((r) => ({ adapter: loadLora(r.path), facts: r.fact_ids.map((id) => byId.get(id)!) }));
  const groups = editMethod(method)?.perFact
    ? ads.map((x) => ({ adapters: [x.adapter], facts: x.facts }))
    : [{ adapters: ads.map((x) => x.adapter), facts: ads.flatMap((x) => x.facts) }];
  const readback = readNdjson(readbackFile).map((p) => ({
    prompt: p.prompt as string, target: p.target as string,
    ...(typeof p.subject === 'string' ? { subject: p.subject } : {}), ...(typeof p.relation === 'string' ? { relation: p.relation } : {}),
  }));
  return editReadback(res.model, res.tokenizer, groups, { templates: res.templates, readback });
}

/** validate's default gates on read-back figures: the names of those that fail. */
export function readbackFailures(f: ReadbackFigures, op: 'insert' | 'forget'): string[] {
  const fails: string[] = [];
  if (!(f.kl <= 0.05)) fails.push('kl');
  if (!(f.retain_drop <= 0.05)) fails.push('retain_drop');
  if (op === 'insert') {
    if (!(f.efficacy >= 0.95)) fails.push('efficacy');
    if (!(f.paraphrase >= 0.8)) fails.push('paraphrase');
  } else {
    if (!(f.forgotten >= 1)) fails.push('forgotten');
    if (!(f.forget_kind >= 1)) fails.push('kind');
  }
  return fails;
}
