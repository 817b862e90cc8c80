/**
 * Adapter bundles on disk: a directory holding PEFT's LoRA files
 * (`adapter_config.json`, `adapter_model.safetensors`) and the catechism
 * manifest (`catechism.json`).
 *
 * A bundle's identity is its content hash: sha256 over the canonical listing
 * of its files, one line per regular file, sorted by path (UTF-8 byte order):
 *
 *     <sha256 of the file's bytes><two spaces><relative POSIX path>\n
 *
 * (the `sha256sum` line format), so `cd BUNDLE && find . -type f -printf '%P\n'
 * | LC_ALL=C sort | xargs sha256sum | sha256sum` reproduces it by hand.
 */
import { readFile, rename, rm, mkdir, stat, open } from 'node:fs/promises';
import * as path from 'node:path';
import { atomicWriteFile, fsyncDir, listFilesRecursive, sha256File, sha256Hex, tempName, writeFileDurable } from './fsio.js';
import { BundleManifest, ManifestError, validateManifest } from './manifest.js';

export const CONFIG_FILE = 'adapter_config.json';
export const WEIGHTS_FILE = 'adapter_model.safetensors';
export const MANIFEST_FILE = 'catechism.json';
export const REQUIRED_FILES = [CONFIG_FILE, WEIGHTS_FILE, MANIFEST_FILE] as const;

export interface FileEntry {
  path: string;
  sha256: string;
  size: number;
}

export class BundleError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BundleError';
  }
}

/** The canonical listing text that a bundle hash is computed over. */
export function canonicalListing(files: FileEntry[]): string {
  return files.map((f) => `${f.sha256}  ${f.path}\n`).join('');
}

/** Content hash of a bundle from its file entries (entries must be sorted as listFilesRecursive sorts). */
export function listingHash(files: FileEntry[]): string {
  return sha256Hex(canonicalListing(files));
}

/** Hash every file under `dir` and the bundle as a whole. */
export async function hashBundleDir(dir: string): Promise<{ sha256: string; files: FileEntry[] }> {
  const names = await listFilesRecursive(dir);
  const files: FileEntry[] = [];
  for (const name of names) {
    const { sha256, size } = await sha256File(path.join(dir, ...name.split('/')));
    files.push({ path: name, sha256, size });
  }
  return { sha256: listingHash(files), files };
}

export interface Bundle {
  dir: string;
  sha256: string;
  files: FileEntry[];
  manifest: BundleManifest;
  adapterConfig: Record<string, unknown>;
}

/**
 * Check a safetensors file's framing without parsing tensors: an 8-byte
 * little-endian header length, then that many bytes of JSON object.
 */
export async function checkSafetensorsHeader(file: string): Promise<void> {
  const fh = await open(file, 'r');
  try {
    const { size } = await fh.stat();
    if (size < 8) throw new BundleError(`${file}: not a safetensors file (${size} bytes, shorter than the 8-byte header length)`);
    const lenBuf = Buffer.alloc(8);
    await fh.read(lenBuf, 0, 8, 0);
    const n = lenBuf.readBigUInt64LE(0);
    if (n > BigInt(size - 8) || n > 100_000_000n) throw new BundleError(`${file}: not a safetensors file (header length ${n} exceeds the file size ${size})`);
    const header = Buffer.alloc(Number(n));
    await fh.read(header, 0, header.length, 8);
    let parsed: unknown;
    try {
      parsed = JSON.parse(header.toString('utf8'));
    } catch {
      throw new BundleError(`${file}: not a safetensors file (header is not JSON)`);
    }
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new BundleError(`${file}: not a safetensors file (header is not a JSON object)`);
  } finally {
    await fh.close();
  }
}

async function readJson(file: string, label: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new BundleError(e.code === 'ENOENT' ? `${file}: missing (a bundle needs ${REQUIRED_FILES.join(', ')})` : `${file}: cannot read ${label}: ${e.message}`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new BundleError(`${file}: ${label} is not valid JSON: ${(err as Error).message}`);
  }
}

/** Read just the manifest of a bundle directory (validated). */
export async function readManifest(dir: string): Promise<BundleManifest> {
  const file = path.join(dir, MANIFEST_FILE);
  const raw = await readJson(file, 'the manifest');
  return validateManifest(raw, file);
}

/**
 * Read and check a bundle directory: required files present, manifest valid,
 * adapter config a PEFT-style JSON object, weights framed as safetensors.
 * Returns its content hash too. Throws BundleError / ManifestError.
 */
export async function readBundle(dir: string): Promise<Bundle> {
  let st;
  try {
    st = await stat(dir);
  } catch {
    throw new BundleError(`${dir}: no such bundle directory`);
  }
  if (!st.isDirectory()) throw new BundleError(`${dir}: a bundle is a directory (with ${REQUIRED_FILES.join(', ')})`);
  let hashed;
  try {
    hashed = await hashBundleDir(dir);
  } catch (err) {
    throw new BundleError((err as Error).message);
  }
  const present = new Set(hashed.files.map((f) => f.path));
  const missing = REQUIRED_FILES.filter((f) => !present.has(f));
  if (missing.length > 0) throw new BundleError(`${dir}: not an adapter bundle: missing ${missing.join(', ')}`);
  const manifest = await readManifest(dir);
  const cfgFile = path.join(dir, CONFIG_FILE);
  const cfg = await readJson(cfgFile, 'the adapter config');
  if (cfg === null || typeof cfg !== 'object' || Array.isArray(cfg)) throw new BundleError(`${cfgFile}: expected a JSON object (PEFT adapter config)`);
  const adapterConfig = cfg as Record<string, unknown>;
  if (typeof adapterConfig.peft_type !== 'string') throw new BundleError(`${cfgFile}: missing "peft_type" (PEFT adapter config, e.g. "LORA")`);
  await checkSafetensorsHeader(path.join(dir, WEIGHTS_FILE));
  return { dir, sha256: hashed.sha256, files: hashed.files, manifest, adapterConfig };
}

export interface BundleContents {
  adapterConfig: Record<string, unknown>;
  /** The safetensors bytes of `adapter_model.safetensors`. */
  weights: Uint8Array;
  manifest: BundleManifest;
  /** Further files (e.g. README.md), by relative path. */
  extraFiles?: Record<string, Uint8Array | string>;
}

/**
 * Write a bundle directory atomically: everything goes into a staging
 * sibling, each file fsynced, then one rename puts it in place. `dir` must
 * not exist. Returns the bundle's content hash.
 */
export async function writeBundle(dir: string, contents: BundleContents): Promise<{ sha256: string; files: FileEntry[] }> {
  const manifest = validateManifest(contents.manifest, `${dir}/${MANIFEST_FILE}`);
  const target = path.resolve(dir);
  const parent = path.dirname(target);
  await mkdir(parent, { recursive: true });
  const exists = await stat(target).then(() => true, () => false);
  if (exists) throw new BundleError(`${dir}: already exists (bundles are immutable; write a new directory)`);
  const staging = path.join(parent, tempName(`.${path.basename(target)}`));
  await mkdir(staging);
  try {
    const files: Record<string, Uint8Array | string> = {
      ...(contents.extraFiles ?? {}),
      [CONFIG_FILE]: JSON.stringify(contents.adapterConfig, null, 2) + '\n',
      [WEIGHTS_FILE]: contents.weights,
      [MANIFEST_FILE]: JSON.stringify(manifest, null, 2) + '\n',
    };
    for (const [rel, data] of Object.entries(files)) {
      if (rel.split('/').some((s) => s === '' || s === '.' || s === '..')) throw new BundleError(`${rel}: bad file name for a bundle`);
      const abs = path.join(staging, ...rel.split('/'));
      await mkdir(path.dirname(abs), { recursive: true });
      await writeFileDurable(abs, data);
    }
    await fsyncDir(staging);
    await rename(staging, target);
  } catch (err) {
    await rm(staging, { recursive: true, force: true });
    throw err;
  }
  await fsyncDir(parent);
  return hashBundleDir(target);
}

/** Replace a bundle's manifest in a directory you are still building (not for stored bundles: that changes the hash). */
export async function rewriteManifest(dir: string, manifest: BundleManifest): Promise<void> {
  const m = validateManifest(manifest, `${dir}/${MANIFEST_FILE}`);
  await atomicWriteFile(path.join(dir, MANIFEST_FILE), JSON.stringify(m, null, 2) + '\n');
}

/** The `adapter` record (DESIGN.md, Records) describing a bundle. */
export interface AdapterRecord {
  kind: 'adapter';
  id: string;
  version: number;
  path: string;
  sha256: string;
  method: string;
  base_model: { name: string; sha256: string };
  targets: string[];
  rank: number;
  fact_ids: string[];
  data_sha256: string;
  /** Parents' content hashes (the record schema's `parents` is a string list; ids are in the manifest). */
  parents: string[];
  created_at: string;
  scale?: number;
  [extra: string]: unknown;
}

export function adapterRecord(manifest: BundleManifest, where: { path: string; sha256: string }): AdapterRecord {
  const rec: AdapterRecord = {
    kind: 'adapter',
    id: manifest.id,
    version: manifest.version,
    path: where.path,
    sha256: where.sha256,
    method: manifest.method,
    base_model: { name: manifest.base_model.name, sha256: manifest.base_model.sha256 },
    targets: [...manifest.targets],
    rank: manifest.rank,
    fact_ids: [...manifest.fact_ids],
    data_sha256: manifest.data_sha256,
    parents: manifest.parents.map((p) => p.sha256),
    created_at: manifest.created_at,
  };
  if (manifest.scale !== undefined) rec.scale = manifest.scale;
  return rec;
}

export { ManifestError };
