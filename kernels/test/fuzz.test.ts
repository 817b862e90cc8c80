// Random, mostly-wrong calls: every op must either run or throw a
// TypeError/RangeError — never crash the process or write out of bounds.
import t from 'tap';
import { k, rng } from './helpers.js';

const r = rng(99);
const int = (lo: number, hi: number) => lo + Math.floor(r() * (hi - lo + 1));
/** A length that is right most of the time and otherwise a little off. */
const near = (n: number) => (r() < 0.7 ? n : Math.max(0, n + int(-2, 2)));
const dim = () => (r() < 0.08 ? [-1, 1.5, NaN, 0][int(0, 3)] : int(0, 9));
const f32 = (n: number) => new Float32Array(Math.max(0, n | 0)).map(() => r() * 4 - 2);
const ids = (n: number, hi: number) => new Int32Array(Math.max(0, n | 0)).map(() => int(-1, hi));
// Canaries around every buffer detect out-of-bounds writes.
const CANARY = 12345.5;
function guarded(n: number): { full: Float32Array; view: Float32Array } {
  const len = Math.max(0, n | 0);
  const full = new Float32Array(len + 32).fill(CANARY);
  const view = full.subarray(16, 16 + len);
  view.set(f32(len));
  return { full, view };
}
function intact(g: { full: Float32Array; view: Float32Array }): boolean {
  for (let i = 0; i < 16; i++) if (g.full[i] !== CANARY || g.full[g.full.length - 1 - i] !== CANARY) return false;
  return true;
}

t.test('fuzzed calls throw JS errors or succeed, never crash or write out of bounds', async (t) => {
  let ran = 0, threw = 0, wrongErr = 0, oob = 0;
  const attempt = (f: () => void) => {
    try {
      f();
      ran++;
    } catch (e) {
      if (e instanceof RangeError || e instanceof TypeError) threw++;
      else { wrongErr++; t.fail(`unexpected error ${String(e)}`); }
    }
  };
  for (let it = 0; it < 3000; it++) {
    const a = dim(), b = dim(), c = dim();
    const out = guarded(near(a * b));
    switch (it % 12) {
      case 0: {
        const transA = r() < 0.5, transB = r() < 0.5, batch = int(1, 3);
        const lda = near(transA ? a : c), ldb = near(transB ? c : b), ldc = near(b);
        const sA = near(a * c), sB = near(c * b), sC = near(a * b);
        const A = f32(near(batch * a * c)), B = f32(near(batch * c * b));
        const C = guarded(near(batch * a * b));
        attempt(() => k.gemm({ transA, transB, m: a, n: b, k: c, a: A, lda, b: B, ldb, c: C.view, ldc, batch, strideA: sA, strideB: sB, strideC: sC, bias: r() < 0.3 ? f32(near(b)) : undefined }));
        if (!intact(C)) oob++;
        break;
      }
      case 1: attempt(() => k.softmax(f32(near(a * b)), out.view, a, b, r() < 0.5 ? { causal: true, queryLen: int(0, 4) } : { keyPad: new Uint8Array(near(b)), rowsPerBatch: int(0, 3) })); break;
      case 2: attempt(() => k.binary('add', f32(near(a * b)), [a, b], f32(near(b)), r() < 0.5 ? [b] : [a, 1], out.view)); break;
      case 3: attempt(() => k.reduce('max', f32(near(a * b * c)), [a, b, c], int(-4, 3), out.view)); break;
      case 4: attempt(() => k.permute(f32(near(a * b * c)), [a, b, c], [2, 0, 1], out.view)); break;
      case 5: attempt(() => k.embedding(f32(near(a * b)), a, b, ids(c, a), out.view)); break;
      case 6: attempt(() => k.crossEntropy(f32(near(a * b)), ids(near(a), b), a, b, out.view, r() < 0.5 ? f32(near(a * b)) : null)); break;
      case 7: attempt(() => k.topk(f32(near(a * b)), a, b, int(0, 10), out.view, new Int32Array(near(a * c)))); break;
      case 8: attempt(() => k.layerNorm(f32(near(a * b)), f32(near(b)), f32(near(b)), out.view, a, b, 1e-5, f32(near(a)), f32(near(a)))); break;
      case 9: attempt(() => k.rope(f32(near(a * b * c * 2)), out.view, a, b, c, 2, ids(near(a * c), 100), 10000)); break;
      case 10: attempt(() => k.embeddingBackward(f32(near(c * b)), ids(c, a), out.view, a, b)); break;
      case 11: attempt(() => k.klDiv(f32(near(a * b)), f32(near(a * b)), a, b, out.view, r() < 0.5 ? f32(near(a * b)) : null)); break;
    }
    if (!intact(out)) oob++;
  }
  t.equal(wrongErr, 0, 'only TypeError / RangeError are thrown');
  t.equal(oob, 0, 'no write outside the given buffers');
  t.ok(ran > 300 && threw > 300, `both valid and invalid calls were exercised (ran ${ran}, threw ${threw})`);
});
