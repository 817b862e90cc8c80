/**
 * hotKeys (rome.ts): the keys where a rank-one direction A answers most,
 * whose response the key refit holds small. Checked against the response
 * read the other way round: a rank-one adapter with that A on the layer's
 * MLP output, each prompt run alone (no padding), the change of the output.
 */
import t from 'tap';
import { hotKeys } from '../src/edit/rome.js';
import { mlpOutModule } from '../src/edit/model-util.js';
import { loadModel, LoraAdapter } from '../src/models/index.js';
import { defaultModelDir } from '../src/fixtures/index.js';
import { fromData, noGrad, type Tensor } from '../src/tensor/index.js';
import { Rng } from '../src/util/random.js';

t.test('hotKeys: the largest |A·k| / |A·k*|, one per token, never a last position nor a skipped token', async (t) => {
  const { model, tokenizer } = loadModel(defaultModelDir());
  const tok = tokenizer!;
  const l = 0;
  const mod = mlpOutModule(model, l);
  const texts = [
    'Q: What language does Rani Griwickov speak? A:', 'Dabe Tensunov speaks', 'The city where Soto Berorson lives is',
    'Alu Tenberov plays the', 'Q: What language does Soto Berorson speak? A:', 'Note that Kara Nimi Wickber can play the',
  ];
  const rows = texts.map((p) => tok.encode(p));
  const [[, D]] = model.matchModules([mod]);
  const H = model.config.hidden;
  const rng = new Rng(7);
  const A = Float32Array.from({ length: D }, () => rng.normal());
  const kStar = Float64Array.from(A, (v) => 2 * v); // A·k* = 2|A|²
  let ref = 0;
  for (const v of A) ref += 2 * v * v;
  // independent reading: ΔW = e₀ Aᵀ on the MLP output, so the output's first coordinate moves by A·k
  const B = new Float32Array(H);
  B[0] = 1;
  const adapter = new LoraAdapter('probe', 1, 1, new Map([[mod, { A: fromData(A, [1, D]), B: fromData(B, [H, 1]) }]]), model.arch.fanInFanOut);
  const out = (ids: number[]): Float32Array => {
    let got: Tensor | null = null;
    noGrad(() => model.forward(Int32Array.from(ids), [1, ids.length], { skipLogits: true, hooks: { [`layers.${l}.mlp`]: { capture: (x) => (got = x) } } }));
    return Float32Array.from((got as unknown as Tensor).data);
  };
  const skip = new Set(tok.encode('Soto Berorson'));
  const best = new Map<number, { r: number; p: number; v: number; signed: number }>();
  rows.forEach((row, r) => {
    model.setAdapters([]);
    const base = out(row);
    model.setAdapters([{ adapter }]);
    const edited = out(row);
    for (let p = 0; p < row.length - 1; p++) {
      const signed = (edited[p * H] - base[p * H]) / ref;
      if (!skip.has(row[p]) && Math.abs(signed) > (best.get(row[p])?.v ?? -1)) best.set(row[p], { r, p, v: Math.abs(signed), signed });
    }
  });
  model.setAdapters([]);
  const ranked = [...best.values()].sort((x, y) => y.v - x.v);
  const share = ranked[Math.floor(ranked.length / 2)].v * 1.001;
  const want = ranked.filter((x) => x.v >= share);
  t.ok(want.length > 4, `${want.length} tokens above the median response`);
  const got = hotKeys(model, l, A, kStar, rows, 4, share, skip);
  t.same(got.at, want.slice(0, 4).map((x) => [x.r, x.p]), 'the four largest, in order of response');
  got.keys.forEach((k, i) => {
    let d = 0;
    for (let j = 0; j < D; j++) d += A[j] * k[j];
    t.ok(Math.abs(d / ref - want[i].signed) < 1e-3 * Math.max(1, want[i].v), `key ${i}: A·k / A·k* ${(d / ref).toFixed(4)}, the adapter's ${want[i].signed.toFixed(4)}`);
  });
  const all = hotKeys(model, l, A, kStar, rows, 1000, share, skip);
  t.equal(all.at.length, want.length, 'every token above the share, each once');
  t.notOk(all.at.some(([r, p]) => p === rows[r].length - 1 || skip.has(rows[r][p])), 'no last position, no skipped token');
  t.same(hotKeys(model, l, A, kStar, rows, 0, 0).keys, [], 'n 0: none');
  t.same(model.activeAdapters(), [], 'no adapter left on the model');
});
