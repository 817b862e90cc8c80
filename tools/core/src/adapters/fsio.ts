/**
 * Durable file-system primitives shared by bundle writing and the registry.
 *
 * Every write that must survive a crash goes: write a temporary file in the
 * same directory tree (same file system, so rename is atomic) → fsync it →
 * rename it over the destination → fsync the destination's directory (so the
 * rename itself is on disk). A process killed at any point leaves either the
 * old file or the new one, never a torn one; leftovers are only temporaries.
 */
import { randomBytes, createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, rename, rm, mkdir, readdir, lstat } from 'node:fs/promises';
import * as path from 'node:path';

/** fsync a directory so that entries created/renamed in it are durable. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** A unique name for a temporary sibling: pid + random, so concurrent writers never collide. */
export function tempName(prefix: string): string {
  return `${prefix}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
}

/** Write bytes to a new file and fsync it (the file must not exist). */
export async function writeFileDurable(file: string, data: Uint8Array | string): Promise<void> {
  const fh = await open(file, 'wx');
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Atomically replace `file` with `data`: temp → fsync → rename → fsync dir.
 * `tmpDir` (default: the file's own directory) must be on the same file system.
 */
export async function atomicWriteFile(file: string, data: Uint8Array | string, tmpDir?: string): Promise<void> {
  const dir = path.dirname(file);
  const tmp = path.join(tmpDir ?? dir, tempName(path.basename(file)));
  try {
    await writeFileDurable(tmp, data);
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  await fsyncDir(dir);
}

/** mkdir -p, then fsync the parent so the new directory entry is durable. */
export async function mkdirDurable(dir: string): Promise<void> {
  const made = await mkdir(dir, { recursive: true });
  if (made !== undefined) await fsyncDir(path.dirname(dir));
}

/** sha256 (hex) and size of a file's bytes, streamed. */
export async function sha256File(file: string): Promise<{ sha256: string; size: number }> {
  const hash = createHash('sha256');
  let size = 0;
  await new Promise<void>((resolve, reject) => {
    const s = createReadStream(file);
    s.on('data', (chunk) => {
      const b = chunk as Buffer;
      size += b.length;
      hash.update(b);
    });
    s.on('error', reject);
    s.on('end', () => resolve());
  });
  return { sha256: hash.digest('hex'), size };
}

export function sha256Hex(data: Uint8Array | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/**
 * Regular files under `dir`, as sorted relative POSIX paths. Symlinks and
 * special files are refused: a bundle must be plain bytes so its hash means
 * something.
 */
export async function listFilesRecursive(dir: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(rel: string): Promise<void> {
    const abs = rel === '' ? dir : path.join(dir, rel);
    const entries = await readdir(abs);
    for (const name of entries) {
      const relName = rel === '' ? name : `${rel}/${name}`;
      if (/[\n\r\\]/.test(name)) throw new Error(`${path.join(dir, relName)}: file names with newlines or backslashes are not allowed in a bundle`);
      const st = await lstat(path.join(dir, relName));
      if (st.isDirectory()) await walk(relName);
      else if (st.isFile()) out.push(relName);
      else throw new Error(`${path.join(dir, relName)}: only regular files and directories are allowed in a bundle (found a symlink or special file)`);
    }
  }
  await walk('');
  return out.sort(compareBytes);
}

/** Order strings by their UTF-8 bytes (locale- and engine-independent). */
export function compareBytes(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/** JSON with object keys sorted recursively: one byte string per value, for hashing. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(sortKeys(value));
}

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(o).sort(compareBytes)) out[k] = sortKeys(o[k]);
    return out;
  }
  return v;
}
