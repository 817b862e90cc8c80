/**
 * Small, well-formed synthetic bundles for tests, fixtures and demos of the
 * registry: PEFT LoRA tensors (`lora_A` [r, in], `lora_B` [out, r], F32)
 * filled from the seeded Rng, plus a valid manifest.
 */
import { Rng } from '../util/random.js';
import { hashBundleDir, rewriteManifest, writeBundle, type FileEntry } from './bundle.js';
import { createManifest, type BundleManifest, type ManifestInput, type ReportRecord } from './manifest.js';
import { sha256Hex } from './fsio.js';
import { gpt2 } from '../models/arch/gpt2.js';
import { serializeSafetensors, type TensorToWrite } from '../models/safetensors.js';

/**
 * Encode F32 tensors as safetensors bytes, through the one writer
 * (models/safetensors.ts serializeSafetensors: names sorted, header padded
 * to 8 bytes).
 */
export function encodeSafetensorsF32(tensors: { name: string; shape: number[]; data: Float32Array }[], metadata: Record<string, string> = { format: 'pt' }): Uint8Array {
  const byName: Record<string, TensorToWrite> = {};
  for (const t of tensors) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (n !== t.data.length) throw new Error(`${t.name}: shape ${JSON.stringify(t.shape)} holds ${n} values, data has ${t.data.length}`);
    byName[t.name] = { shape: t.shape, data: t.data };
  }
  return serializeSafetensors(byName, metadata);
}

export interface SyntheticBundleOptions {
  seed: number;
  id?: string;
  version?: number;
  rank?: number;
  /** Module names with their [out, in] shapes (default: a GPT-2 layer-1 MLP output projection, 32 → 16). */
  targets?: Record<string, [number, number]>;
  /** A report to ship inside the bundle (`pass` true/false), or none. */
  pass?: boolean | null;
  manifest?: Partial<ManifestInput>;
}

/** Write a synthetic bundle to `dir` (must not exist); returns its manifest and content hash. */
export async function writeSyntheticBundle(dir: string, opts: SyntheticBundleOptions): Promise<{ manifest: BundleManifest; sha256: string; files: FileEntry[] }> {
  const rng = new Rng(opts.seed);
  const rank = opts.rank ?? 2;
  const targets = opts.targets ?? { [gpt2.layer(1).mlp!.out]: [16, 32] };
  const id = opts.id ?? `synthetic-${opts.seed}`;
  const tensors: { name: string; shape: number[]; data: Float32Array }[] = [];
  for (const [mod, [out, inp]] of Object.entries(targets)) {
    const a = new Float32Array(rank * inp).map(() => rng.normal() * 0.02);
    const b = new Float32Array(out * rank).map(() => rng.normal() * 0.02);
    tensors.push({ name: `base_model.model.${mod}.lora_A.weight`, shape: [rank, inp], data: a });
    tensors.push({ name: `base_model.model.${mod}.lora_B.weight`, shape: [out, rank], data: b });
  }
  const factId = `${id}-fact`;
  const validation: ReportRecord[] =
    opts.pass === null || opts.pass === undefined ? [] : [{ kind: 'report', adapter_id: id, pass: opts.pass, metrics: { esr: opts.pass ? 1 : 0 }, failures: opts.pass ? [] : ['esr below 0.9'], created_at: '2026-01-01T00:00:00.000Z' }];
  const manifest = createManifest({
    id,
    version: opts.version ?? 1,
    method: 'lora',
    base_model: { name: 'synthetic-base', sha256: sha256Hex('synthetic-base') },
    targets: Object.keys(targets),
    rank,
    fact_ids: [factId],
    facts: [{ kind: 'fact', id: factId, subject: 'Synthetic', prompt: '{} is a', target_new: 'test', op: 'insert' }],
    data_sha256: sha256Hex(`data-${opts.seed}`),
    created_at: '2026-01-01T00:00:00.000Z',
    probes: [{ kind: 'probe', fact_id: factId, role: 'edit', split: 'test', prompt: 'Synthetic is a', target: 'test', expect: 'new' }],
    validation,
    ...opts.manifest,
  });
  const adapterConfig = {
    peft_type: 'LORA',
    r: rank,
    lora_alpha: rank,
    target_modules: Object.keys(targets),
    base_model_name_or_path: manifest.base_model.name,
    bias: 'none',
    task_type: 'CAUSAL_LM',
  };
  const shipped = manifest.validation;
  const first = await writeBundle(dir, { adapterConfig, weights: encodeSafetensorsF32(tensors), manifest: { ...manifest, validation: [] } });
  if (shipped.length === 0) return { manifest, ...first };
  // the shipped report names the bundle as it was validated (without the report), as validate's do
  const bound = shipped.map((r) => ({ bundle_sha256: first.sha256, base_model_sha256: manifest.base_model.sha256, run: { tool: 'synthetic', id: `synthetic-${opts.seed}` }, ...r }));
  const final = { ...manifest, validation: bound };
  await rewriteManifest(dir, final);
  return { manifest: final, ...(await hashBundleDir(dir)) };
}
