/**
 * validate's fixed evaluation sets: the retention probes (facts not edited;
 * their prompts are also the KL prompts) and the general texts
 * (perplexity). They are chosen from files only — never from the stream, and
 * never with --seed — so the same adapter gets the same verdict whatever the
 * seed and whatever else is in the stream. The edited facts themselves are
 * left out later, per adapter (`excludeEdited`).
 */
import * as path from 'node:path';
import { Rng } from '@catechism/core';
import type { ProbeLike } from '@catechism/core/metrics';
import { fileExists, readProbeFile } from './validate.js';

/**
 * The default retention set of a world: its held-out phrasings of every
 * fact (two per fact), prompts no training document and no lora-train
 * retention row contains (lora-train draws those from the relations'
 * training phrasings only; test/retention-disjoint.test.ts checks it).
 */
export const RETAIN_FILE = 'facts-heldout.ndjson';
/** Used only when a world has no held-out phrasings. */
export const RETAIN_FALLBACK_FILE = 'facts-train.ndjson';

/** Seed of the fixed samples (independent of --seed by design). */
export const EVAL_SAMPLE_SEED = 20261;

export interface EvalSets {
  retain: ProbeLike[];
  general: ProbeLike[];
  /** Where each set came from (file paths), or undefined when there is none. */
  retainSource?: string;
  generalSource?: string;
  /** How many items the files held before sampling. */
  retainTotal: number;
  generalTotal: number;
  /** Lines for stderr and the report: missing sets and what they cost. */
  notes: string[];
}

/** The stratum of a retain probe: its relation, else the part of its fact id before ':'. */
export function stratumOf(p: ProbeLike): string {
  if (typeof p.relation === 'string') return p.relation;
  if (typeof p.fact_id === 'string' && p.fact_id.includes(':')) return p.fact_id.slice(0, p.fact_id.indexOf(':'));
  return '';
}

/**
 * At most `n` items, all when there are no more: otherwise a sample
 * stratified by `key` with proportional allocation (largest remainders,
 * ties to the earlier stratum), each stratum shuffled by a fixed-seed Rng.
 * Items keep their original order.
 */
export function stratifiedSample<T>(xs: readonly T[], n: number, key: (x: T) => string, seed = EVAL_SAMPLE_SEED): T[] {
  if (n >= xs.length) return xs.slice();
  if (n <= 0) return [];
  const strata = new Map<string, number[]>();
  xs.forEach((x, i) => {
    const k = key(x);
    const l = strata.get(k) ?? [];
    l.push(i);
    strata.set(k, l);
  });
  const groups = [...strata.values()];
  const quota = groups.map((g) => (g.length * n) / xs.length);
  const take = quota.map((q) => Math.floor(q));
  let left = n - take.reduce((a, b) => a + b, 0);
  const order = groups.map((_, i) => i).sort((a, b) => quota[b] - take[b] - (quota[a] - take[a]) || a - b);
  for (const i of order) {
    if (left === 0) break;
    take[i]++;
    left--;
  }
  const rng = new Rng(seed);
  const chosen: number[] = [];
  groups.forEach((g, i) => chosen.push(...rng.shuffle(g.slice()).slice(0, take[i])));
  return chosen.sort((a, b) => a - b).map((i) => xs[i]);
}

export interface SetOptions {
  /** The model directory validated against. */
  modelDir: string;
  /** The bundled fixture models' directory: models in it were trained on `fixtureWorld`. */
  fixtureModels: string;
  fixtureWorld: string;
  /** --world DIR: a world directory whose eval/ sets fit the model. */
  world?: string;
  retainFile?: string;
  generalFile?: string;
  retainN: number;
  generalN: number;
}

function inside(dir: string, parent: string): boolean {
  const rel = path.relative(path.resolve(parent), path.resolve(dir));
  return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel);
}

/**
 * Resolve the retention and general sets: --retain/--general files, else
 * the eval sets of --world, else (for a bundled fixture model, dense or
 * MoE) the fixture world's. A missing set is a note naming the flag that
 * supplies it.
 */
export function resolveEvalSets(o: SetOptions): EvalSets {
  const worldDir = o.world ?? (inside(o.modelDir, o.fixtureModels) ? o.fixtureWorld : undefined);
  const from = (file: string | undefined, name: string): string | undefined => {
    if (file !== undefined) return file;
    if (worldDir === undefined) return undefined;
    const w = path.join(worldDir, 'eval', name);
    return fileExists(w) ? w : undefined;
  };
  // held-out phrasings first: lora-train's retention KL trains on the training phrasings of every
  // known fact, so a retention set in those phrasings measures what training fitted (issue 17:
  // kl 0.018 there, 0.062 on held-out phrasings for the same adapter)
  const heldout = from(o.retainFile, RETAIN_FILE);
  const retainSource = heldout ?? from(undefined, RETAIN_FALLBACK_FILE);
  const generalSource = from(o.generalFile, 'general.ndjson');
  const retainAll = retainSource !== undefined ? readProbeFile(retainSource) : [];
  const generalAll = generalSource !== undefined ? readProbeFile(generalSource) : [];
  const notes: string[] = [];
  const model = o.modelDir;
  if (heldout === undefined && retainSource !== undefined && o.retainN > 0) {
    notes.push(`retention set ${retainSource}: the world has no eval/${RETAIN_FILE}, so retention is read on training phrasings, which lora-train's retention KL also trains on (kl reads low)`);
  }
  if (o.retainN === 0) notes.push('--retain-n 0: no retention set, so retain_drop is not measured and kl reads the general texts');
  else if (retainSource === undefined) {
    notes.push(
      `no retention set for model ${model}: retain_drop is not measured and kl reads ${generalSource !== undefined && o.generalN > 0 ? 'the general texts' : 'nothing'}; ` +
        'pass --retain FILE (probe records with prompt and target, one per fact the model knows) or --world DIR',
    );
  }
  if (o.generalN === 0) notes.push('--general-n 0: no general text, so ppl_delta is not measured');
  else if (generalSource === undefined) {
    notes.push(`no general text for model ${model}: ppl_delta is not measured; pass --general FILE (probe records whose prompt is a held-out text) or --world DIR`);
  }
  return {
    retain: stratifiedSample(retainAll, o.retainN, stratumOf),
    general: stratifiedSample(generalAll, o.generalN, () => ''),
    ...(retainSource !== undefined ? { retainSource } : {}),
    ...(generalSource !== undefined ? { generalSource } : {}),
    retainTotal: retainAll.length,
    generalTotal: generalAll.length,
    notes,
  };
}
