/**
 * The registry's writer lock: a file created with O_EXCL holding the owner's
 * pid, host and process start time. Writers (cron jobs, CI, a person) wait
 * for it; readers never take it (every write is an atomic rename).
 *
 * Stale locks (owner killed) are broken: on the same host a lock is stale when
 * its pid is gone, a zombie, or a different process with the same pid (start
 * time differs); from another host, when not refreshed for `staleMs` (holders
 * touch the file every 30 s). Breaking is
 * itself guarded by a second O_EXCL file (`lock.break`) and the lock's bytes
 * are re-read under it, so two waiters cannot both break, and a fresh lock
 * taken in between is never removed. (The guard is held for microseconds; if
 * its holder is killed inside that window the guard is broken the same way.)
 */
import { open, readFile, unlink, stat, utimes } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import * as os from 'node:os';

export interface LockOptions {
  /** Give up waiting after this long (ms). Default 60 000. */
  timeoutMs?: number;
  /** A lock from another host is considered abandoned after this long (ms). Default 10 minutes. */
  staleMs?: number;
}

export interface LockOwner {
  pid: number;
  host: string;
  start: string | null;
  acquired_at: string;
}

export class LockTimeoutError extends Error {
  constructor(file: string, owner: LockOwner | null, waitedMs: number) {
    const who = owner ? `pid ${owner.pid} on ${owner.host} since ${owner.acquired_at}` : 'an unknown process';
    super(`registry is locked by ${who} (${file}); gave up after ${Math.round(waitedMs / 1000)} s`);
    this.name = 'LockTimeoutError';
  }
}

/** Process start time from /proc (clock ticks since boot), to tell a reused pid from the owner; null off Linux. */
function procStart(pid: number): { start: string; zombie: boolean } | null {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return { start: fields[19] ?? '', zombie: fields[0] === 'Z' || fields[0] === 'X' };
  } catch {
    return null;
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function parseOwner(text: string): LockOwner | null {
  try {
    const o = JSON.parse(text) as Partial<LockOwner>;
    if (typeof o.pid === 'number' && typeof o.host === 'string') return { pid: o.pid, host: o.host, start: o.start ?? null, acquired_at: String(o.acquired_at ?? '') };
  } catch {
    /* unreadable: judged by age below */
  }
  return null;
}

/** Grace for a lock file that exists but has no owner written yet (creator between open and write). */
const UNWRITTEN_GRACE_MS = 2000;

async function isStale(file: string, text: string, staleMs: number): Promise<boolean> {
  const owner = parseOwner(text);
  let ageMs = 0;
  try {
    ageMs = Date.now() - (await stat(file)).mtimeMs;
  } catch {
    return false; // gone already: not ours to break
  }
  if (!owner) return ageMs > UNWRITTEN_GRACE_MS;
  if (owner.host !== os.hostname()) return ageMs > staleMs;
  if (owner.pid === process.pid) return false;
  if (!pidAlive(owner.pid)) return true;
  const p = procStart(owner.pid);
  if (p === null) return false;
  if (p.zombie) return true;
  return owner.start !== null && p.start !== owner.start;
}

async function tryCreate(file: string, owner: LockOwner): Promise<boolean> {
  let fh;
  try {
    fh = await open(file, 'wx');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
  try {
    await fh.writeFile(JSON.stringify(owner) + '\n');
    await fh.sync();
  } finally {
    await fh.close();
  }
  return true;
}

async function readText(file: string): Promise<string | null> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

/** How often a holder refreshes the lock's mtime, so other hosts judge staleness by inactivity, not by age. */
const HEARTBEAT_MS = 30_000;

export class FileLock {
  private released = false;
  private readonly heartbeat: NodeJS.Timeout;
  private constructor(readonly file: string, readonly owner: LockOwner) {
    this.heartbeat = setInterval(() => {
      const now = new Date();
      utimes(file, now, now).catch(() => undefined);
    }, HEARTBEAT_MS);
    this.heartbeat.unref();
  }

  static currentOwner(): LockOwner {
    return { pid: process.pid, host: os.hostname(), start: procStart(process.pid)?.start ?? null, acquired_at: new Date().toISOString() };
  }

  /** Wait for and take the lock at `file`. */
  static async acquire(file: string, opts: LockOptions = {}): Promise<FileLock> {
    const timeoutMs = opts.timeoutMs ?? 60_000;
    const staleMs = opts.staleMs ?? 10 * 60_000;
    const t0 = Date.now();
    let delay = 2;
    for (;;) {
      const owner = FileLock.currentOwner();
      if (await tryCreate(file, owner)) return new FileLock(file, owner);
      const text = await readText(file);
      if (text !== null && (await isStale(file, text, staleMs))) {
        await breakStale(file, text, staleMs);
        continue;
      }
      const waited = Date.now() - t0;
      if (waited >= timeoutMs) throw new LockTimeoutError(file, text === null ? null : parseOwner(text), waited);
      await sleep(delay + Math.random() * delay);
      delay = Math.min(delay * 2, 50);
    }
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    clearInterval(this.heartbeat);
    // Only remove the file if it is still ours (it could have been broken as stale by mistake).
    const text = await readText(this.file);
    if (text !== null && parseOwner(text)?.pid === this.owner.pid && parseOwner(text)?.acquired_at === this.owner.acquired_at) {
      await unlink(this.file).catch(() => undefined);
    }
  }
}

/** Remove a stale lock, re-checking its exact bytes under the break guard. */
async function breakStale(file: string, seen: string, staleMs: number): Promise<void> {
  const guard = `${file}.break`;
  const me = FileLock.currentOwner();
  if (!(await tryCreate(guard, me))) {
    const g = await readText(guard);
    if (g !== null && (await isStale(guard, g, staleMs))) {
      // Re-read before removing so a guard taken meanwhile by a live process survives.
      if ((await readText(guard)) === g) await unlink(guard).catch(() => undefined);
    } else {
      await sleep(1 + Math.random() * 3);
    }
    return;
  }
  try {
    const now = await readText(file);
    if (now === seen) await unlink(file).catch(() => undefined);
  } finally {
    await unlink(guard).catch(() => undefined);
  }
}

/** Run `fn` holding the lock at `file`. */
export async function withLock<T>(file: string, opts: LockOptions, fn: () => Promise<T>): Promise<T> {
  const lock = await FileLock.acquire(file, opts);
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}
