// Attribution algorithms on the golden models: identities of causal tracing,
// attribution patching against patching at small noise (a finite difference),
// grad × act against direct finite differences, MoE expert sums.
import t from 'tap';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel, type CausalLM } from '../src/models/index.js';
import { Rng } from '../src/util/random.js';
import { noGrad, scale as scaleT, gather, logSoftmax } from '../src/tensor/index.js';
import {
  AttribInputError, SITE_KINDS, attributionPatch, causalTrace, drawNoise, gradXAct, moduleOf, prepareFact,
  restoredProb, siteCandidates, spearman, type AttribInput,
} from '../src/attrib/index.js';
import type { Hooks } from '../src/models/hooks.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const golden = (n: string) => loadModel(path.join(root, 'fixtures/golden', n));

const FACT = { prompt: '{} works for', subject: 'Dabe Tensunov', target: 'Quonorex' };

function logpWith(model: CausalLM, input: AttribInput, hooks: Hooks): number {
  const T = input.ids.length;
  return noGrad(() => {
    const { logits } = model.forward(Int32Array.from(input.ids), [1, T], { hooks, logitsAt: Int32Array.of(T - 1) });
    return gather(logSoftmax(logits), Int32Array.of(input.target), 1).data[0];
  });
}

for (const name of ['gpt2', 'llama', 'mixtral']) {
  const { model, tokenizer } = golden(name);
  const input = prepareFact(tokenizer, FACT.prompt, FACT.subject, FACT.target);
  const L = model.config.layers;
  const T = input.ids.length;

  t.test(`${name}: subject span and target`, async (t) => {
    const [s0, s1] = input.subject;
    t.ok(s1 > s0, 'non-empty span');
    const own = tokenizer.encode(FACT.subject, { addSpecialTokens: false });
    t.equal(tokenizer.decode(input.ids.slice(s0, s1)).trim(), tokenizer.decode(own).trim(), 'the span holds the subject\'s tokens');
    t.equal(s1 - s0, own.length);
    t.throws(() => prepareFact(tokenizer, 'no placeholder', 'X', 'Y'), AttribInputError);
    t.throws(() => prepareFact(tokenizer, '{} works for', 'X', ''), AttribInputError);
  });

  t.test(`${name}: causal-trace identities`, async (t) => {
    const noise = drawNoise(model, input, { samples: 3, rng: new Rng(7) });
    const tr = causalTrace(model, input, { noiseDraws: noise, batchRows: 40 });
    // restoring the whole last-layer residual at the final position gives the clean output exactly
    const last = tr.effects.resid_post![(L - 1) * T + T - 1];
    t.ok(Math.abs(last - (tr.pClean - tr.pCorrupt)) < 1e-6, `last resid effect ${last} = P_clean − P_corrupt ${tr.pClean - tr.pCorrupt}`);
    // the last layer at any other position cannot reach the prediction
    // (the trace skips those cells; check the claim by running them)
    for (const p of [0, T - 2]) {
      const rp0 = restoredProb(model, input, [{ site: `layers.${L - 1}.mlp`, position: p }], noise);
      t.ok(Math.abs(rp0 - tr.pCorrupt) < 1e-6, `last-layer mlp at ${p} has no effect`);
      t.equal(tr.effects.mlp![(L - 1) * T + p], 0);
    }
    // nor can anything before the subject (clean and corrupted activations agree there)
    const pre = prepareFact(tokenizer, 'so {} works for', FACT.subject, FACT.target);
    t.ok(pre.subject[0] > 0);
    const preNoise = drawNoise(model, pre, { samples: 2, rng: new Rng(8) });
    const preTr = causalTrace(model, pre, { noiseDraws: preNoise, kinds: ['resid_post'] });
    const rpPre = restoredProb(model, pre, [{ site: 'layers.0.resid_post', position: 0 }], preNoise);
    t.ok(Math.abs(rpPre - preTr.pCorrupt) < 1e-6, 'restoring before the subject has no effect');
    t.equal(preTr.effects.resid_post![0], 0);
    t.ok(Math.abs(tr.pCorrupt - tr.pClean) > 1e-5, 'the noise changes the prediction');
    // restoring the full clean embedding recovers P_clean
    const all = input.ids.map((_, p) => ({ site: 'embed', position: p }));
    const rp = restoredProb(model, input, all, noise);
    t.ok(Math.abs(rp - tr.pClean) < 1e-6, `embedding restored: ${rp} vs clean ${tr.pClean}`);
    // restored one at a time agrees with the batched trace
    const site = `layers.0.mlp`;
    const one = restoredProb(model, input, [{ site, position: input.subject[1] - 1 }], noise);
    t.ok(Math.abs(one - tr.pCorrupt - tr.effects.mlp![input.subject[1] - 1]) < 1e-6, 'restoredProb matches the trace cell');
    // batch size does not change the answer
    const tr2 = causalTrace(model, input, { noiseDraws: noise, batchRows: 3 });
    for (const k of SITE_KINDS) {
      let d = 0;
      for (let i = 0; i < L * T; i++) d = Math.max(d, Math.abs(tr.effects[k]![i] - tr2.effects[k]![i]));
      t.ok(d < 1e-6, `${k}: batch rows 40 vs 3 differ by ${d}`);
    }
  });

  t.test(`${name}: noise 0 gives zero effects`, async (t) => {
    const tr = causalTrace(model, input, { samples: 2, noise: 0, rng: new Rng(1) });
    const ap = attributionPatch(model, input, { samples: 2, noise: 0, rng: new Rng(1) });
    t.ok(Math.abs(tr.pClean - tr.pCorrupt) < 1e-6);
    for (const k of SITE_KINDS) {
      t.ok(tr.effects[k]!.every((v) => Math.abs(v) < 1e-6), `patch ${k} all zero`);
      // clean (1 row) and corrupted (2 rows) runs may differ in the last float bits
      t.ok(ap.effects[k]!.every((v) => Math.abs(v) < 1e-6), `atp ${k} all zero`);
    }
  });

  t.test(`${name}: deterministic under the seed`, async (t) => {
    const a = causalTrace(model, input, { samples: 2, rng: new Rng(5), kinds: ['mlp'] });
    const b = causalTrace(model, input, { samples: 2, rng: new Rng(5), kinds: ['mlp'] });
    const c = causalTrace(model, input, { samples: 2, rng: new Rng(6), kinds: ['mlp'] });
    t.same(Array.from(a.effects.mlp!), Array.from(b.effects.mlp!));
    t.notSame(Array.from(a.effects.mlp!), Array.from(c.effects.mlp!));
  });

  t.test(`${name}: atp equals patch to first order (small noise)`, async (t) => {
    // small enough that no MoE routing decision flips (at 0.02 one does in the golden mixtral)
    const noise = drawNoise(model, input, { samples: 2, noise: 0.005, rng: new Rng(3) });
    const tr = causalTrace(model, input, { noiseDraws: noise });
    const ap = attributionPatch(model, input, { noiseDraws: noise });
    t.ok(Math.abs(ap.pCorrupt - tr.pCorrupt) < 1e-6, 'same corrupted probability');
    let maxE = 0;
    let maxD = 0;
    const xs: number[] = [];
    const ys: number[] = [];
    for (const k of SITE_KINDS) {
      for (let i = 0; i < L * T; i++) {
        maxE = Math.max(maxE, Math.abs(tr.effects[k]![i]));
        maxD = Math.max(maxD, Math.abs(tr.effects[k]![i] - ap.effects[k]![i]));
        xs.push(tr.effects[k]![i]);
        ys.push(ap.effects[k]![i]);
      }
    }
    t.ok(maxE > 0, 'effects are not all zero');
    t.ok(maxD < 0.02 * maxE, `max |patch − atp| ${maxD.toExponential(2)} < 2% of max |patch| ${maxE.toExponential(2)}`);
    t.ok(spearman(xs, ys) > 0.8, `rank agreement ${spearman(xs, ys)}`);
  });

  t.test(`${name}: grad × act against finite differences`, async (t) => {
    const g = gradXAct(model, input);
    t.ok(Math.abs(g.logp - logpWith(model, input, {})) < 1e-5, 'log P matches a plain forward');
    const eps = 1e-2;
    // site score summed over positions = d/dα log P with the site's activation scaled by (1 + α)
    for (const site of [`layers.0.mlp`, `layers.0.attn`, `layers.${L - 1}.resid_post`]) {
      const kind = site.split('.')[2] as 'mlp' | 'attn' | 'resid_post';
      const l = Number(site.split('.')[1]);
      let want = 0;
      for (let p = 0; p < T; p++) want += g.sites[kind][l * T + p];
      const at = (a: number) => logpWith(model, input, { [site]: { fn: (x) => scaleT(x, 1 + a) } });
      const fd = (at(eps) - at(-eps)) / (2 * eps);
      t.ok(Math.abs(fd - want) < 0.02 * Math.abs(want) + 2e-3, `${site}: grad·act ${want.toFixed(5)} vs finite difference ${fd.toFixed(5)}`);
    }
    // module score = d/dα log P with the weight scaled by (1 + α)
    const top = g.modules.slice().sort((a, b) => Math.abs(b.score) - Math.abs(a.score)).slice(0, 3);
    for (const m of top) {
      const w = model.weight(m.module + '.weight');
      const orig = w.data.slice();
      const at = (a: number) => {
        for (let i = 0; i < orig.length; i++) w.data[i] = orig[i] * (1 + a);
        try {
          return logpWith(model, input, {});
        } finally {
          w.data.set(orig);
        }
      };
      const fd = (at(eps) - at(-eps)) / (2 * eps);
      t.ok(Math.abs(fd - m.score) < 0.02 * Math.abs(m.score) + 2e-3, `${m.module}: Σ grad⊙W ${m.score.toFixed(5)} vs finite difference ${fd.toFixed(5)}`);
      t.ok(m.abs >= Math.abs(m.score), 'abs ≥ |signed|');
    }
    t.notOk(model.weight(top[0].module + '.weight').requiresGrad, 'weights are frozen again afterwards');
    t.ok(g.modules.every((m) => m.layer >= 0 && /^layers\.\d+\.(mlp|attn)$/.test(m.site)), 'every module maps to a layer site');
  });

  t.test(`${name}: candidates and module names`, async (t) => {
    const tr = causalTrace(model, input, { samples: 2, rng: new Rng(2) });
    const c = siteCandidates(model, tr.effects, T, input.subject, 'subject-last', ['mlp', 'attn']);
    t.equal(c.length, 2 * L, 'one candidate per (kind, layer)');
    for (let i = 1; i < c.length; i++) t.ok(c[i - 1].score >= c[i].score, 'sorted best first');
    t.ok(c.every((x) => x.position === input.subject[1] - 1));
    const mx = siteCandidates(model, tr.effects, T, input.subject, 'max', ['resid_post']);
    for (const x of mx) t.equal(x.score, Math.max(...tr.effects.resid_post!.slice(x.layer * T, (x.layer + 1) * T)));
    const attnMod = moduleOf(model, 'attn', 1)!;
    t.ok(model.linearModules().some(([n]) => n === attnMod), `${attnMod} is a linear module of the checkpoint`);
    const mlpMod = moduleOf(model, 'mlp', 1);
    if (name === 'mixtral') t.equal(mlpMod, undefined);
    else t.ok(model.linearModules().some(([n]) => n === mlpMod), `${mlpMod} is a linear module`);
  });
}

t.test('mixtral: expert scores sum to the MoE block, routing frequencies to top-k', async (t) => {
  const { model, tokenizer } = golden('mixtral');
  const input = prepareFact(tokenizer, FACT.prompt, FACT.subject, FACT.target);
  const g = gradXAct(model, input);
  const E = model.config.experts;
  const K = model.config.expertsPerTok;
  const T = input.ids.length;
  t.equal(g.experts.length, E * model.config.layers);
  for (let l = 0; l < model.config.layers; l++) {
    const ex = g.experts.filter((e) => e.layer === l);
    const s = ex.reduce((a, e) => a + e.score, 0);
    let block = 0;
    for (let p = 0; p < T; p++) block += g.sites.mlp[l * T + p];
    t.ok(Math.abs(s - block) < 1e-4 * Math.max(1, Math.abs(block)), `layer ${l}: Σ experts ${s} = MoE block ${block}`);
    t.ok(Math.abs(ex.reduce((a, e) => a + e.routeFreq, 0) - K) < 1e-9, `layer ${l}: frequencies sum to ${K}`);
    t.ok(ex.every((e) => e.routeFreq >= 0 && e.routeFreq <= 1 + 1e-12));
    const m = moduleOf(model, 'mlp', l, 0)!;
    t.ok(model.linearModules().some(([n]) => n === m), `${m} exists`);
  }
});

t.test('spearman', async (t) => {
  t.equal(spearman([1, 2, 3, 4], [10, 20, 30, 40]), 1);
  t.equal(spearman([1, 2, 3, 4], [4, 3, 2, 1]), -1);
  // ties get average ranks: ranks (0.5,0.5,2,3) vs (0,1,2,3)
  t.ok(Math.abs(spearman([1, 1, 2, 3], [1, 2, 3, 4]) - 0.9486832980505138) < 1e-12);
  t.throws(() => spearman([1], [1, 2]));
});

t.test('world tokenizer: subject span by words; a subject merged into another word is not found', async (t) => {
  const { Tokenizer } = await import('../src/models/index.js');
  const tok = Tokenizer.load(path.join(root, 'fixtures/world'));
  const inp = prepareFact(tok, 'the boss of {} works for', 'Dabe Tensunov', 'Quonorex');
  t.same(inp.ids.slice(inp.subject[0], inp.subject[1]), tok.encode('Dabe Tensunov', { addSpecialTokens: false }));
  t.ok(inp.subject[0] > 0);
  const err = t.throws(() => prepareFact(tok, '{}s works for', 'Dabe', 'Quonorex')) as AttribInputError;
  t.ok(err instanceof AttribInputError);
  t.equal(err.field, 'subject');
  t.match(err.message, /not found in the tokens/);
});
