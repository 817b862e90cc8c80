/**
 * AlphaEdit's key memory: what a later batch needs from the earlier ones to
 * leave their edits where they are (Fang et al. 2025, sequential editing).
 * Per edited layer, Cₚ = Σ k kᵀ over every earlier edit's keys.
 *
 * It travels as a file inside the adapter bundle (`alphaedit_keys.safetensors`),
 * so it is content-addressed with the bundle and moves with it through the
 * registry: lora-train --method alphaedit writes it, adapter-merge carries
 * the parents' memories into the merged bundle (`combineMemories`), and the
 * next `lora-train --method alphaedit --registry R` reads the live ref's
 * one as its preserved set.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { UsageError } from '../records/errors.js';
import { readSafetensors, serializeSafetensors } from '../models/safetensors.js';

/** The file name of the key memory inside a bundle. */
export const ALPHAEDIT_MEMORY_FILE = 'alphaedit_keys.safetensors';

export interface AlphaEditMemory {
  dim: number;
  /** Facts whose keys are in it. */
  edits: number;
  /** layer → Σ k kᵀ, [dim·dim] row-major float64. */
  cov: Map<number, Float64Array>;
  /**
   * sha256 of the memory file this one was built on (the preserved set its
   * batch was trained against): that memory's keys are already inside this one.
   */
  extends?: string;
}

/** The memory's file bytes (float32 tensors `layer.L`) and their sha256. */
export function serializeMemory(m: AlphaEditMemory): { bytes: Buffer; sha256: string } {
  const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const [l, c] of [...m.cov.entries()].sort((a, b) => a[0] - b[0])) tensors[`layer.${l}`] = { shape: [m.dim, m.dim], data: Float32Array.from(c) };
  const meta: Record<string, string> = { edits: String(m.edits), kind: 'alphaedit-preserved-keys' };
  if (m.extends) meta.extends = m.extends;
  const bytes = Buffer.from(serializeSafetensors(tensors, meta));
  return { bytes, sha256: createHash('sha256').update(bytes).digest('hex') };
}

/** A memory file, with the sha256 of its bytes; `what` names it in errors (the flag, or the bundle). */
export function readMemory(file: string, what = `--preserved ${file}`): AlphaEditMemory & { sha256: string } {
  let bytes: Buffer;
  let st: ReturnType<typeof readSafetensors>;
  try {
    bytes = fs.readFileSync(file);
    st = readSafetensors(file);
  } catch (e) {
    throw new UsageError(`${what}: not an AlphaEdit key memory (${(e as Error).message})`);
  }
  if (st.metadata.kind !== 'alphaedit-preserved-keys') throw new UsageError(`${what}: not an AlphaEdit key memory (metadata kind ${JSON.stringify(st.metadata.kind)})`);
  const cov = new Map<number, Float64Array>();
  let dim = 0;
  for (const name of st.names()) {
    const m = /^layer\.(\d+)$/.exec(name);
    if (!m) continue;
    dim = st.info(name).shape[0];
    cov.set(Number(m[1]), Float64Array.from(st.float32(name)));
  }
  const ext = st.metadata.extends;
  return { dim, edits: Number(st.metadata.edits ?? 0), cov, ...(typeof ext === 'string' && ext !== '' ? { extends: ext } : {}), sha256: createHash('sha256').update(bytes).digest('hex') };
}

/** Where a bundle keeps its memory. */
export function memoryFileIn(bundleDir: string): string {
  return path.join(bundleDir, ALPHAEDIT_MEMORY_FILE);
}

/** The memory a bundle directory carries, or null when it has none. */
export function bundleMemory(bundleDir: string): (AlphaEditMemory & { sha256: string }) | null {
  const file = memoryFileIn(bundleDir);
  return fs.existsSync(file) ? readMemory(file, `${bundleDir}: ${ALPHAEDIT_MEMORY_FILE}`) : null;
}

/**
 * The memory of a merge of bundles: the sum of the parents' memories, less
 * any a sibling was built on (a batch trained against live's memory already
 * holds live's keys: merging it into live keeps its memory, not the sum) and
 * less duplicates. Null when no parent has one. Memories of different key
 * widths cannot be merged (a RangeError naming both).
 */
export function combineMemories(memories: ReadonlyArray<AlphaEditMemory & { sha256: string }>): AlphaEditMemory | null {
  const seen = new Set<string>();
  const unique = memories.filter((m) => (seen.has(m.sha256) ? false : (seen.add(m.sha256), true)));
  const inside = new Set(unique.map((m) => m.extends).filter((s): s is string => typeof s === 'string'));
  const kept = unique.filter((m) => !inside.has(m.sha256));
  if (kept.length === 0) return null;
  if (kept.length === 1) {
    const { sha256: _s, ...m } = kept[0];
    return m;
  }
  const dim = kept[0].dim;
  const cov = new Map<number, Float64Array>();
  let edits = 0;
  for (const m of kept) {
    if (m.dim !== dim) throw new RangeError(`AlphaEdit key memories of different widths cannot be merged: ${kept[0].sha256.slice(0, 12)}… has ${dim}, ${m.sha256.slice(0, 12)}… ${m.dim}`);
    edits += m.edits;
    for (const [l, c] of m.cov) {
      const acc = cov.get(l);
      if (!acc) cov.set(l, Float64Array.from(c));
      else for (let i = 0; i < c.length; i++) acc[i] += c[i];
    }
  }
  return { dim, edits, cov };
}
