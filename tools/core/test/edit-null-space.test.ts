/**
 * The null-space constraint (AlphaEdit-style) of LoRA edits: the dominant
 * key subspace is found, and lora_A projected out of it gives ΔW·k ≈ 0 for
 * keys inside it while keys outside keep their response.
 */
import t from 'tap';
import { fromData } from '../src/tensor/index.js';
import { Rng } from '../src/util/random.js';
import { dominantKeySubspace, projectOut } from '../src/edit/null-space.js';

t.test('dominantKeySubspace finds the span of strong keys; projectOut silences them', async (t) => {
  const D = 24;
  const rng = new Rng(3);
  // keys = strong components in dims 0..3 (scaled 10) + weak noise (0.01) elsewhere
  const N = 400;
  const keys = new Float32Array(N * D);
  for (let i = 0; i < N; i++) for (let j = 0; j < D; j++) keys[i * D + j] = (j < 4 ? 10 : 0.01) * rng.normal();
  const sub = dominantKeySubspace(fromData(keys, [N, D]), 4, { seed: 1 });
  t.equal(sub.k, 4);
  t.equal(sub.count, N);
  t.ok(sub.energy > 0.999, `energy inside ${sub.energy}`);
  // the basis is orthonormal
  for (let a = 0; a < 4; a++) {
    for (let b = 0; b < 4; b++) {
      let s = 0;
      for (let i = 0; i < D; i++) s += sub.basis[i * 4 + a] * sub.basis[i * 4 + b];
      t.ok(Math.abs(s - (a === b ? 1 : 0)) < 1e-4, `QᵀQ[${a},${b}] = ${s.toFixed(6)}`);
    }
  }
  const r = 3;
  const A = fromData(Float32Array.from({ length: r * D }, () => rng.normal()), [r, D]);
  projectOut(A, sub);
  const resp = (k: (j: number) => number) => {
    let m = 0;
    for (let a = 0; a < r; a++) {
      let s = 0;
      for (let j = 0; j < D; j++) s += A.data[a * D + j] * k(j);
      m = Math.max(m, Math.abs(s));
    }
    return m;
  };
  t.ok(resp((j) => (j === 1 ? 1 : 0)) < 1e-3, 'a preserved direction gets no response');
  t.ok(resp((j) => (j === 10 ? 1 : 0)) > 1e-2, 'a direction outside keeps its response');
  t.throws(() => dominantKeySubspace(fromData(keys, [N, D]), D), /protected rank/);
});
