import t from 'tap';
import { k, rng, simdLevels } from './helpers.js';

/** Independent float64 decoding of an IEEE binary16 value. */
function halfValue(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}
function bf16Value(h: number): number {
  const b = new DataView(new ArrayBuffer(4));
  b.setUint32(0, h << 16);
  return b.getFloat32(0);
}
/** Reference round-to-nearest-even by exhaustive search over the encodings (via sorted finite values). */
function nearestHalf(x: number, table: Array<[number, number]>): number {
  if (Number.isNaN(x)) return 0x7e00;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a >= 65520) return sign | 0x7c00;
  // binary search in the positive finite halves
  let lo = 0, hi = table.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (table[mid][0] <= a) lo = mid; else hi = mid;
  }
  const [vl, cl] = table[lo], [vh, ch] = table[hi];
  let code: number;
  if (a - vl < vh - a) code = cl;
  else if (a - vl > vh - a) code = ch;
  else code = (cl & 1) === 0 ? cl : ch;
  if (a <= vl) code = cl;
  return sign | code;
}

for (const simd of simdLevels()) {
t.test(`f16 → f32 (${simd}): all 65536 encodings`, async (t) => {
  k.setSimd(simd);
  const src = new Uint16Array(65536).map((_, i) => i);
  const out = new Float32Array(65536);
  k.f16ToF32(src, out);
  let bad = -1;
  for (let i = 0; i < 65536 && bad < 0; i++) {
    const want = halfValue(i);
    if (Number.isNaN(want) ? !Number.isNaN(out[i]) : !Object.is(out[i], want)) bad = i;
  }
  t.equal(bad, -1, 'every half decodes exactly (zeros, subnormals, normals, inf, NaN)');
  t.ok(Object.is(out[0x8000], -0), '-0 keeps its sign');
});

t.test(`f32 → f16 (${simd}) rounds to nearest even`, async (t) => {
  k.setSimd(simd);
  const table: Array<[number, number]> = [];
  for (let c = 0; c < 0x7c00; c++) table.push([halfValue(c), c]);
  const r = rng(21);
  const xs: number[] = [0, -0, 1, -1, 65504, 65519.99, 65520, -65520, 1e6, Infinity, -Infinity, NaN, 2 ** -24, 2 ** -25,
    2 ** -25 * 1.0000001, 2 ** -26, 3 * 2 ** -25, 2 ** -14, 2 ** -14 - 2 ** -25, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 1 + 2 ** -11 + 2 ** -20,
    0.1, 1 / 3, 6e-8, 6.1e-5];
  for (let i = 0; i < 20000; i++) {
    const e = Math.floor(r() * 44) - 28;
    xs.push((r() < 0.5 ? -1 : 1) * (1 + r()) * 2 ** e);
  }
  // Exact ties between adjacent halves (including subnormals).
  for (let c = 0; c < 0x7bff; c += 97) xs.push((halfValue(c) + halfValue(c + 1)) / 2);
  const src = Float32Array.from(xs);
  const out = new Uint16Array(src.length);
  k.f32ToF16(src, out);
  let bad = -1;
  for (let i = 0; i < src.length && bad < 0; i++) {
    const want = nearestHalf(src[i], table);
    const got = out[i];
    if (Number.isNaN(src[i]) ? (got & 0x7c00) !== 0x7c00 || (got & 0x3ff) === 0 : got !== want) bad = i;
  }
  t.equal(bad, -1, bad >= 0 ? `x=${src[bad]}: got 0x${out[bad].toString(16)}, want 0x${nearestHalf(src[bad], table).toString(16)}` : 'all rounded correctly');
  // Round trip of every finite half is exact.
  const halves = new Uint16Array(0x7c00).map((_, i) => i);
  const f = new Float32Array(halves.length);
  k.f16ToF32(halves, f);
  const back = new Uint16Array(halves.length);
  k.f32ToF16(f, back);
  t.same(back, halves, 'f16 → f32 → f16 is the identity on finite values');
  k.setSimd('auto');
});
}

t.test('bf16 conversions', async (t) => {
  const src = new Uint16Array(65536).map((_, i) => i);
  const out = new Float32Array(65536);
  k.bf16ToF32(src, out);
  let bad = -1;
  for (let i = 0; i < 65536 && bad < 0; i++) {
    const want = bf16Value(i);
    if (Number.isNaN(want) ? !Number.isNaN(out[i]) : !Object.is(out[i], want)) bad = i;
  }
  t.equal(bad, -1, 'every bf16 decodes exactly');
  const xs = Float32Array.from([1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, -2.5, Infinity, NaN, 3.4028234e38, 1e-40]);
  const o = new Uint16Array(xs.length);
  k.f32ToBf16(xs, o);
  t.same(Array.from(o.slice(0, 6)), [0x3f80, 0x3f80, 0x3f82, 0x3f81, 0xc020, 0x7f80], 'ties to even, above-tie rounds up');
  t.ok((o[6] & 0x7f80) === 0x7f80 && (o[6] & 0x7f) !== 0, 'NaN stays NaN');
  t.equal(o[7], 0x7f80, 'max float rounds to inf');
  t.equal(bf16Value(o[8]), bf16Value(0x0001) * Math.round(1e-40 / bf16Value(0x0001)), 'subnormal rounds to nearest');
  t.throws(() => k.f32ToBf16(xs, new Uint16Array(2)), /out has length 2/);
  t.throws(() => k.bf16ToF32(new Float32Array(2) as unknown as Uint16Array, new Float32Array(2)), TypeError);
});
