// Shared test helpers. kernels cannot depend on @catechism/core (core depends
// on kernels), so the seeded generator here is a small local one.
import * as k from '../src/index.js';

export { k };

/** Seeded uniform generator (mulberry32), deterministic per seed. */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randn(n: number, r: () => number, scale = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (r() * 2 - 1) * scale;
  return a;
}

/** Max |got − want| / (atol + rtol·|want|) ≤ 1 ⇔ close. Returns the first offending index or -1. */
export function firstMismatch(got: ArrayLike<number>, want: ArrayLike<number>, atol: number, rtol: number): number {
  if (got.length !== want.length) return -2;
  for (let i = 0; i < got.length; i++) {
    const g = got[i], w = want[i];
    if (Number.isNaN(w)) { if (!Number.isNaN(g)) return i; continue; }
    if (!Number.isFinite(w)) { if (g !== w) return i; continue; }
    if (!(Math.abs(g - w) <= atol + rtol * Math.abs(w))) return i;
  }
  return -1;
}

type T = { ok(v: unknown, msg: string): unknown };

export function close(t: T, got: ArrayLike<number>, want: ArrayLike<number>, msg: string, atol = 1e-5, rtol = 1e-5): void {
  const i = firstMismatch(got, want, atol, rtol);
  t.ok(i === -1, i === -1 ? msg : `${msg}: index ${i}: got ${i >= 0 ? got[i] : 'length ' + got.length}, want ${i >= 0 ? want[i] : want.length}`);
}

/** SIMD levels this CPU can run (every test runs each of them). */
export function simdLevels(): k.SimdLevel[] {
  const best = k.bestSimd();
  return best === 'avx512' ? ['scalar', 'avx2', 'avx512'] : best === 'avx2' ? ['scalar', 'avx2'] : ['scalar'];
}
