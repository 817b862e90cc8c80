/**
 * Writing an edit as an adapter bundle: PEFT files + catechism.json,
 * atomically (writeBundle stages and renames), into a directory or a
 * registry.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { adapterRecord, writeBundle, type AdapterRecord } from '../adapters/bundle.js';
import { MANIFEST_FORMAT, MANIFEST_FORMAT_VERSION, type BundleManifest } from '../adapters/manifest.js';
import { peftAdapterConfig, peftAdapterTensors, type LoraAdapter } from '../models/lora.js';
import { serializeSafetensors } from '../models/safetensors.js';
import { Registry } from '../registry/index.js';
import { canonicalJson } from '../adapters/fsio.js';
import type { Rec } from './data.js';

/** adapter_config.json and adapter_model.safetensors bytes, as saveLora writes them (PEFT layout). */
export function peftFiles(adapter: LoraAdapter, baseModel: string): { config: Record<string, unknown>; weights: Uint8Array } {
  return { config: peftAdapterConfig(adapter, baseModel), weights: serializeSafetensors(peftAdapterTensors(adapter), { format: 'pt' }) };
}

/** One value when every fact agrees, else null (the manifest's source/author). */
function common(facts: readonly Rec[], key: string): string | null {
  const vals = new Set(facts.map((f) => (typeof f[key] === 'string' ? (f[key] as string) : null)));
  return vals.size === 1 ? [...vals][0] : null;
}

export interface EditBundleSpec {
  adapter: LoraAdapter;
  method: string;
  baseModel: { name: string; sha256: string };
  facts: Rec[];
  /** The probes that test the edit (test split). */
  probes: Rec[];
  dataSha256: string;
  seed: number;
  hyperparameters: Record<string, unknown>;
  /** Training outcome figures (steps, loss, train accuracy). */
  training?: Record<string, unknown>;
  createdAt?: string;
  /** Further files of the bundle by name (MadeEdit.files). */
  files?: Record<string, Uint8Array>;
}

/**
 * The bundle id: `<method>-<16 hex>` of the training records' hash, the
 * hyperparameters, the seed and the base model. The same inputs give the
 * same id (a rerun bumps nothing silently); another seed or another flag
 * gives another adapter, so another id.
 */
export function editBundleId(spec: Pick<EditBundleSpec, 'method' | 'dataSha256' | 'hyperparameters' | 'seed' | 'baseModel'>): string {
  const key = canonicalJson({ data_sha256: spec.dataSha256, hyperparameters: spec.hyperparameters, seed: spec.seed, base_model_sha256: spec.baseModel.sha256 });
  return `${spec.method}-${createHash('sha256').update(key).digest('hex').slice(0, 16)}`;
}

export function editManifest(spec: EditBundleSpec): BundleManifest {
  const facts: Rec[] = spec.facts.map((f) => ({ ...f, kind: 'fact' }));
  const confs = facts.map((f) => f.confidence).filter((c): c is number => typeof c === 'number');
  return {
    format: MANIFEST_FORMAT,
    format_version: MANIFEST_FORMAT_VERSION,
    id: editBundleId(spec),
    version: 1,
    method: spec.method,
    base_model: spec.baseModel,
    targets: spec.adapter.targets(),
    rank: spec.adapter.r,
    fact_ids: facts.map((f) => f.id as string),
    facts,
    source: common(facts, 'source'),
    author: common(facts, 'author'),
    // the weakest fact bounds the adapter's confidence
    confidence: confs.length === facts.length && confs.length > 0 ? Math.min(...confs) : null,
    data_sha256: spec.dataSha256,
    parents: [],
    probes: spec.probes,
    created_at: spec.createdAt ?? new Date().toISOString(),
    validation: [],
    seed: spec.seed,
    hyperparameters: spec.hyperparameters,
    ...(spec.training ? { training: spec.training } : {}),
  };
}

/**
 * Write the bundle to `out/<id>` (or `out/<id>.<n>` when taken), or into a
 * registry; returns the `adapter` record.
 */
export async function writeEditBundle(spec: EditBundleSpec, where: { out?: string; registry?: string }): Promise<AdapterRecord> {
  const manifest = editManifest(spec);
  const { config, weights } = peftFiles(spec.adapter, spec.baseModel.name);
  const contents = { adapterConfig: config, weights, manifest, ...(spec.files ? { extraFiles: spec.files } : {}) };
  if (where.registry) {
    const stage = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-train-'));
    try {
      const dir = path.join(stage, manifest.id);
      await writeBundle(dir, contents);
      const reg = new Registry(where.registry);
      const { bundle } = await reg.add(dir);
      return adapterRecord(manifest, { path: path.resolve(reg.objectPath(bundle.sha256)), sha256: bundle.sha256 });
    } finally {
      fs.rmSync(stage, { recursive: true, force: true });
    }
  }
  if (!where.out) throw new RangeError('writeEditBundle: give an output directory or a registry');
  let dir = path.join(where.out, manifest.id);
  for (let n = 2; fs.existsSync(dir); n++) dir = path.join(where.out, `${manifest.id}.${n}`);
  const { sha256 } = await writeBundle(dir, contents);
  // absolute: the record travels down a pipe to tools that may run in another directory
  return adapterRecord(manifest, { path: path.resolve(dir), sha256 });
}
