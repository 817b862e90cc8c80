/**
 * Merging adapter bundles: load parents, check they share a base model, run
 * a method, and build the merged bundle's manifest (parents with their
 * bundle hashes, method and parameters, the union of facts and probes) so
 * every fact of the result traces back to the data that made it.
 */
import { readBundle, writeBundle, type FileEntry } from '../adapters/bundle.js';
import { createManifest, type BundleManifest } from '../adapters/manifest.js';
import { sha256Hex } from '../adapters/fsio.js';
import { loadLora, peftAdapterConfig, peftAdapterTensors, type LoraAdapter } from '../models/lora.js';
import { serializeSafetensors } from '../models/safetensors.js';
import { mergeFacts, negateStatements, type NegationStash } from './negation.js';
import { ALPHAEDIT_MEMORY_FILE, bundleMemory, combineMemories, serializeMemory } from '../edit/alphaedit-memory.js';
import { patchedNeurons, type PatchedNeuron } from '../edit/patcher.js';
import { MergeError, mergeCat, mergeDare, mergeSvd, mergeTies, scaleAdapter, type Block, type MergeInput, type MergeResult } from './methods.js';

export const MERGE_METHODS = ['cat', 'linear', 'svd', 'ties', 'dare', 'negate', 'scale'] as const;
export type MergeMethod = (typeof MERGE_METHODS)[number];

/** The manifest `method` a merge writes. */
export function manifestMethod(m: MergeMethod): string {
  return m === 'negate' || m === 'scale' ? m : `merge-${m}`;
}

export interface ParentBundle {
  dir: string;
  sha256: string;
  manifest: BundleManifest;
  adapter: LoraAdapter;
}

/** Read a bundle directory (checked, hashed) and its LoRA weights. `expectSha` guards against a record naming other content. */
export async function loadParent(dir: string, expectSha?: string): Promise<ParentBundle> {
  const b = await readBundle(dir);
  if (expectSha !== undefined && expectSha !== b.sha256) {
    throw new MergeError(`${dir}: the adapter record says sha256 ${expectSha.slice(0, 12)}… but the bundle's content hashes to ${b.sha256.slice(0, 12)}… (changed since the record was written?)`);
  }
  let adapter: LoraAdapter;
  try {
    adapter = loadLora(dir, b.manifest.id);
  } catch (e) {
    throw new MergeError(`${dir}: ${(e as Error).message}`);
  }
  return { dir, sha256: b.sha256, manifest: b.manifest, adapter };
}

export interface MergeOptions {
  method: MergeMethod;
  /** Per-parent weights (cat, linear, svd, ties, dare); default all 1. */
  weights?: number[];
  /** svd, ties, dare: rank of the result. */
  rank?: number;
  /** ties: fraction of entries kept per adapter (default 0.2). */
  density?: number;
  /** dare: drop probability (default 0.9). */
  drop?: number;
  /** dare: seed of the drop masks. */
  seed?: number;
  /** scale: the factor. */
  by?: number;
  id?: string;
  version?: number;
  author?: string | null;
  source?: string | null;
  created_at?: string;
}

export interface MergedBundle {
  adapter: LoraAdapter;
  manifest: BundleManifest;
  result: MergeResult;
  /** Further files of the merged bundle by name: the parents' AlphaEdit key memories, combined. */
  files?: Record<string, Uint8Array>;
}

function uniqueBy<T>(items: T[], key: (t: T) => string): T[] {
  const seen = new Set<string>();
  return items.filter((t) => {
    const k = key(t);
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

/** Check the parents share one base model; returns it. */
export function commonBase(parents: readonly ParentBundle[]): BundleManifest['base_model'] {
  const base = parents[0].manifest.base_model;
  for (const p of parents.slice(1)) {
    if (p.manifest.base_model.sha256 !== base.sha256) {
      throw new MergeError(
        `base model mismatch: ${parents[0].manifest.id} (${parents[0].dir}) was made for ${base.name} (sha256 ${base.sha256.slice(0, 12)}…), ` +
          `${p.manifest.id} (${p.dir}) for ${p.manifest.base_model.name} (sha256 ${p.manifest.base_model.sha256.slice(0, 12)}…); adapters of different base models cannot be merged`,
      );
    }
  }
  return base;
}

/**
 * What several bundles state together: one fact per id (a later bundle's
 * other op replacing an earlier one) and the probes of the facts that won.
 * A merge's manifest carries these, and consolidation by retraining trains on them.
 */
export function mergeStatements(manifests: readonly Pick<BundleManifest, 'facts' | 'probes'>[]): { facts: Record<string, unknown>[]; probes: Record<string, unknown>[] } {
  const facts = mergeFacts(manifests.map((m) => m.facts));
  const won = new Map(facts.map((f) => [String(f.id), f]));
  const probes = uniqueBy(
    manifests.flatMap((m) => m.probes.filter((q) => {
      const f = won.get(String(q.fact_id));
      return !f || m.facts.includes(f) || !m.facts.some((g) => String(g.id) === String(q.fact_id));
    })),
    (x) => JSON.stringify(x),
  );
  return { facts, probes };
}

/** Merge parent bundles into one adapter and its manifest. */
export function mergeBundles(parents: readonly ParentBundle[], opts: MergeOptions): MergedBundle {
  if (parents.length === 0) throw new MergeError('no adapter records in the input: nothing to merge');
  const m = opts.method;
  if ((m === 'negate' || m === 'scale') && parents.length !== 1) {
    throw new MergeError(`${m} takes exactly one adapter, got ${parents.length} (${parents.map((p) => p.manifest.id).join(', ')})`);
  }
  const base = commonBase(parents);
  const weights = opts.weights ?? parents.map(() => 1);
  if (weights.length !== parents.length) throw new MergeError(`--weights has ${weights.length} value(s) but there are ${parents.length} adapters`);
  if (weights.some((w) => !Number.isFinite(w))) throw new MergeError(`--weights: every weight must be a finite number, got ${weights.join(',')}`);
  const patched = checkPatches(parents, m, weights);
  // a parent's own manifest scale (e.g. −1 from an earlier negate written as scale) is part of its delta
  const inputs: MergeInput[] = parents.map((p, i) => ({ adapter: p.adapter, weight: weights[i] * (p.manifest.scale ?? 1) }));
  const name = opts.id ?? defaultId(m, parents);
  let result: MergeResult;
  const params: Record<string, unknown> = {};
  switch (m) {
    case 'cat':
    case 'linear':
      result = mergeCat(inputs, name);
      params.weights = weights;
      if (result.compacted) params.compacted = result.compacted;
      break;
    case 'svd':
      result = mergeSvd(inputs, opts.rank ?? NaN, name);
      Object.assign(params, { weights, rank: opts.rank });
      break;
    case 'ties': {
      const density = opts.density ?? 0.2;
      result = mergeTies(inputs, { rank: opts.rank ?? NaN, density }, name);
      Object.assign(params, { weights, rank: opts.rank, density });
      break;
    }
    case 'dare': {
      const drop = opts.drop ?? 0.9;
      const seed = opts.seed ?? 0;
      result = mergeDare(inputs, { rank: opts.rank ?? NaN, drop, seed }, name);
      Object.assign(params, { weights, rank: opts.rank, drop, seed });
      break;
    }
    case 'negate':
    case 'scale': {
      const by = m === 'negate' ? -1 : opts.by;
      if (by === undefined || !Number.isFinite(by)) throw new MergeError(`scale needs --by S (a finite number), got ${String(opts.by)}`);
      result = { adapter: scaleAdapter(parents[0].adapter, by * (parents[0].manifest.scale ?? 1), name) };
      params.by = by;
      break;
    }
    default:
      throw new MergeError(`unknown merge method "${String(m)}" (known: ${MERGE_METHODS.join(', ')})`);
  }
  // a negation states the opposite of its parent (an insert becomes a forget of that answer); a
  // merge keeps one fact per id, a later parent's other op replacing an earlier one, with its probes
  let facts: Record<string, unknown>[];
  let probes: Record<string, unknown>[];
  let negation: NegationStash | undefined;
  if (m === 'negate') {
    ({ facts, probes, negation } = negateStatements(parents[0].manifest));
  } else {
    ({ facts, probes } = mergeStatements(parents.map((p) => p.manifest)));
  }
  const factIds = uniqueBy(parents.flatMap((p) => p.manifest.fact_ids), (x) => x);
  const blocks: (Block | undefined)[] = result.blocks ?? parents.map(() => undefined);
  const manifest = createManifest({
    id: name,
    version: opts.version ?? 1,
    method: manifestMethod(m),
    base_model: { ...base },
    targets: [...result.adapter.modules.keys()],
    rank: result.adapter.r,
    fact_ids: factIds,
    facts,
    // the merged data is its parents' data: hash their data hashes in order
    data_sha256: sha256Hex(parents.map((p) => p.manifest.data_sha256).join('\n')),
    source: opts.source ?? 'adapter-merge',
    author: opts.author ?? null,
    confidence: minConfidence(parents),
    parents: parents.map((p) => ({ id: p.manifest.id, sha256: p.sha256 })),
    probes,
    ...(opts.created_at ? { created_at: opts.created_at } : {}),
    validation: [],
    ...(negation ? { negation } : {}),
    ...(patched.length ? { patched_neurons: patched } : {}),
    merge: {
      method: m,
      parameters: params,
      parents: parents.map((p, i) => ({
        id: p.manifest.id,
        version: p.manifest.version,
        sha256: p.sha256,
        method: p.manifest.method,
        weight: weights[i],
        rank: p.adapter.r,
        fact_ids: p.manifest.fact_ids,
        source: p.manifest.source,
        author: p.manifest.author,
        confidence: p.manifest.confidence,
        data_sha256: p.manifest.data_sha256,
        created_at: p.manifest.created_at,
        ...(blocks[i] ? { block: blocks[i] } : {}),
      })),
      ...(result.energy ? { energy: result.energy } : {}),
      ...(result.residual ? { residual: result.residual } : {}),
      ...(result.exact && Object.values(result.exact).some((e) => !e) ? { randomized_svd: Object.keys(result.exact).filter((k) => !result.exact![k]) } : {}),
    },
  });
  // AlphaEdit's key memory follows the edits it protects into an additive
  // merge; a negation or a scaling states no new edit, so it carries none
  const memory = m === 'negate' || m === 'scale' ? null : combineMemories(parents.map((p) => bundleMemory(p.dir)).filter((x) => x !== null));
  return { adapter: result.adapter, manifest, result, ...(memory ? { files: { [ALPHAEDIT_MEMORY_FILE]: serializeMemory(memory).bytes } } : {}) };
}

/**
 * Gated-neuron patches (lora-train --method patcher) add only one way: summed
 * at weight 1 (cat / linear), each on its own neuron. Their LoRA pair
 * removes the neuron's base weights and writes a gate, so a scaled, negated,
 * sparsified or truncated copy, or two patches on one neuron, is not the
 * edit any more: refused, naming the bundles. Returns every patched neuron
 * of the result (the merged manifest's `patched_neurons`).
 */
function checkPatches(parents: readonly ParentBundle[], m: MergeMethod, weights: readonly number[]): PatchedNeuron[] {
  const per = parents.map((p) => patchedNeurons(p.manifest));
  const withPatch = parents.filter((_, i) => per[i].length > 0);
  if (withPatch.length === 0) return [];
  const ids = withPatch.map((p) => p.manifest.id).join(', ');
  if (m !== 'cat' && m !== 'linear') {
    throw new MergeError(
      `${ids}: gated-neuron patches (--method patcher) cannot be ${m === 'negate' ? 'negated' : m === 'scale' ? 'scaled' : `merged by ${m}`}: their weights are not linear in the edit; ` +
        (m === 'negate' || m === 'scale' ? 'take the edit out by rolling back or re-merging live without it' : 'merge them with --method cat'),
    );
  }
  parents.forEach((p, i) => {
    if (per[i].length && (weights[i] !== 1 || (p.manifest.scale ?? 1) !== 1)) {
      throw new MergeError(`${p.manifest.id}: a gated-neuron patch (--method patcher) merges at weight 1 only (got ${weights[i] * (p.manifest.scale ?? 1)})`);
    }
  });
  const owner = new Map<string, string>();
  const all: PatchedNeuron[] = [];
  parents.forEach((p, i) => {
    for (const n of per[i]) {
      const key = `${n.module}#${n.neuron}`;
      const other = owner.get(key);
      if (other !== undefined && other !== p.manifest.id) {
        throw new MergeError(
          `${other} and ${p.manifest.id} both patch neuron ${n.neuron} of ${n.module}: two patches on one neuron do not add; ` +
            `make ${p.manifest.method === 'hypernet' ? 'it again with hypernet-gen' : 'one again with lora-train --method patcher'} --avoid-neurons-of <the other bundle> (into a registry, live\'s are avoided by default)`,
        );
      }
      if (other === undefined) {
        owner.set(key, p.manifest.id);
        all.push(n);
      }
    }
  });
  return all;
}

function minConfidence(parents: readonly ParentBundle[]): number | null {
  const cs = parents.map((p) => p.manifest.confidence);
  if (cs.some((c) => c === null)) return null;
  return Math.min(...(cs as number[]));
}

function defaultId(m: MergeMethod, parents: readonly ParentBundle[]): string {
  if (m === 'negate' || m === 'scale') return `${parents[0].manifest.id}.${m}`;
  return `merge-${m}-${sha256Hex(parents.map((p) => p.sha256).join('\n')).slice(0, 12)}`;
}

/** Write a merged bundle directory (atomic; `dir` must not exist); returns its content hash. */
export async function writeMergedBundle(dir: string, merged: { adapter: LoraAdapter; manifest: BundleManifest; files?: Record<string, Uint8Array> }): Promise<{ sha256: string; files: FileEntry[] }> {
  return writeBundle(dir, {
    ...(merged.files ? { extraFiles: merged.files } : {}),
    // alpha = r in a merged adapter: every scale is folded into B
    adapterConfig: peftAdapterConfig(merged.adapter, merged.manifest.base_model.name),
    weights: serializeSafetensors(peftAdapterTensors(merged.adapter), { format: 'pt' }),
    manifest: merged.manifest,
  });
}
