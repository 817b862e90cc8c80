/**
 * Appending a report to a bundle's validation history, atomically.
 *
 * - A bundle stored in a registry (its directory is `<registry>/objects/<sha256>`):
 *   the registry's own report log, `reports/<sha256>.ndjson`, through
 *   `Registry.addReport` (lock, temp → fsync → rename), so the stored
 *   bundle's bytes and hash never change.
 * - A plain bundle directory (not stored yet): its manifest's `validation`
 *   array, the history a bundle ships with; `adapter-merge add/promote`
 *   stores it along and promotion's gate reads its last entry. The manifest
 *   is rewritten whole (temp → fsync → rename) holding the old entries plus
 *   the new one, under a lock file beside the bundle (`<dir>.lock`) so
 *   concurrent validate runs never lose an entry.
 */
import * as path from 'node:path';
import { existsSync } from 'node:fs';
import { readManifest, rewriteManifest, type ReportRecord as ManifestReport } from '@catechism/core/adapters';
import { Registry, withLock } from '@catechism/core/registry';

export type HistoryTarget = { kind: 'registry'; registry: string; sha256: string } | { kind: 'manifest'; dir: string };

/** Where a bundle directory's validation history lives. */
export function historyTarget(dir: string): HistoryTarget {
  const abs = path.resolve(dir);
  const parent = path.dirname(abs);
  const root = path.dirname(parent);
  if (path.basename(parent) === 'objects' && existsSync(path.join(root, 'registry.json'))) {
    return { kind: 'registry', registry: root, sha256: path.basename(abs) };
  }
  return { kind: 'manifest', dir: abs };
}

/** Append `report` to the bundle's history; returns where it went. */
export async function appendHistory(dir: string, report: ManifestReport): Promise<HistoryTarget> {
  const t = historyTarget(dir);
  if (t.kind === 'registry') {
    await new Registry(t.registry).addReport(t.sha256, report, { author: 'validate' });
    return t;
  }
  await withLock(`${t.dir}.lock`, { timeoutMs: 60_000 }, async () => {
    const m = await readManifest(t.dir);
    await rewriteManifest(t.dir, { ...m, validation: [...m.validation, report] });
  });
  return t;
}
