/**
 * Helpers the registry tests share (test support: excluded from tap's test
 * files in package.json, never shipped).
 */
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { writeSyntheticBundle, type SyntheticBundleOptions } from '../../src/adapters/index.js';
import { RegistryError } from '../../src/registry/index.js';

/** A temporary directory removed when the test file ends. */
export function tempDir(prefix: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Writes synthetic bundles into fresh subdirectories of `dir` (b0, b1, …). */
export function bundleWriter(dir: string): (opts: SyntheticBundleOptions) => Promise<{ dir: string; sha256: string; id: string }> {
  let n = 0;
  return async (opts) => {
    const out = path.join(dir, `b${n++}`);
    const r = await writeSyntheticBundle(out, opts);
    return { dir: out, sha256: r.sha256, id: r.manifest.id };
  };
}

/** The RegistryError `p` rejects with; fails when it resolves or rejects with anything else. */
export async function rejection(p: Promise<unknown>): Promise<RegistryError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof RegistryError) return e;
    throw e;
  }
  throw new Error('expected a RegistryError, got success');
}
