/**
 * What adapter-merge's CLI tests share (test support: not a test file, never
 * shipped): a temporary directory removed at the end, a runner of the built
 * binary as a real child process against one registry, and the check of a
 * one-line error. The older test files still carry their own copies of `am`;
 * new ones use this.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const MAIN = path.join(here, '..', 'dist', 'main.js');
export const FAKE_VALIDATOR = path.join(here, 'fake-validator.mjs');
export const ROOT = path.resolve(here, '../../..');

export type Rec = Record<string, unknown>;

export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  records: Rec[];
}

/** A temporary directory removed when the test file ends. */
export function tempDir(prefix: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export const parseRecords = (s: string): Rec[] => s.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Rec);

/** Runs `adapter-merge ARGS --registry REG` in `cwd` (USER=tester; `env` added). */
export function amRunner(cwd: string, registry: string, env: Record<string, string> = {}): (args: string[], input?: string) => Run {
  return (args, input = '') => {
    const r = spawnSync(process.execPath, [MAIN, ...args, '--registry', registry], { input, cwd, env: { ...process.env, USER: 'tester', ...env } });
    const stdout = r.stdout.toString('utf8');
    return { code: r.status, stdout, stderr: r.stderr.toString('utf8'), records: parseRecords(stdout) };
  };
}

/** Exit `code` with one line on stderr, prefixed with the tool's name, matching `re`, no stack trace. */
export function oneLineError(t: Tap.Test, r: Run, code: number, re: RegExp): void {
  t.equal(r.code, code, `exit ${code}: ${r.stderr}`);
  const lines = r.stderr.trim().split('\n');
  t.equal(lines.length, 1, `one line: ${r.stderr}`);
  t.match(lines[0], /^adapter-merge: /);
  t.match(lines[0], re);
  t.notMatch(r.stderr, /\n\s+at /, 'no stack trace');
}
