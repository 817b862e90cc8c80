// On the fixture knowledge model: the traced peak is real (restoring the top
// locus alone recovers at least half the clean probability on average over
// the world's facts) and atp ranks sites like patch. Skipped, with a note,
// until fixtures/models/dense is committed.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { defaultModelDir, worldDir } from '../src/fixtures/index.js';
import { loadModel } from '../src/models/index.js';
import { Rng } from '../src/util/random.js';
import {
  SITE_KINDS, attributionPatch, causalTrace, drawNoise, prepareFact, restoredProb, siteCandidates, spearman, type AttribInput,
} from '../src/attrib/index.js';

const dir = defaultModelDir();
const present = fs.existsSync(path.join(dir, 'config.json'));

t.test('fixture model: top locus recovers the clean probability; atp agrees with patch', { skip: present ? false : `fixture model ${dir} is not there yet` }, async (t) => {
  const { model, tokenizer } = loadModel(dir);
  const facts = fs.readFileSync(path.join(worldDir(), 'facts.ndjson'), 'utf-8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
  const inputs: AttribInput[] = [];
  // facts the model knows (clean P of the answer's first token > 0.2), every 37th for a spread of relations; the first 20 known
  for (let i = 0; i < facts.length && inputs.length < 40; i += 37) {
    const f = facts[i];
    if (f.kind !== 'fact' || !f.target_true) continue;
    inputs.push(prepareFact(tokenizer, f.prompt, f.subject, f.target_true));
  }
  let frac = 0;
  let fracSubj = 0;
  let rho = 0;
  let n = 0;
  for (const inp of inputs) {
    if (n >= 20) break;
    const noise = drawNoise(model, inp, { samples: 5, rng: new Rng(11) });
    const tr = causalTrace(model, inp, { noiseDraws: noise });
    if (tr.pClean < 0.2) continue;
    const ap = attributionPatch(model, inp, { noiseDraws: noise });
    const xs: number[] = [];
    const ys: number[] = [];
    for (const k of SITE_KINDS) {
      xs.push(...tr.effects[k]!);
      ys.push(...ap.effects[k]!);
    }
    rho += spearman(xs, ys);
    // attrib's default rule (max: the traced peak) over mlp and attn sites
    const top = siteCandidates(model, tr.effects, inp.ids.length, inp.subject, 'max', ['mlp', 'attn'])[0];
    frac += restoredProb(model, inp, [{ site: top.site, position: top.position! }], noise) / tr.pClean;
    const subj = siteCandidates(model, tr.effects, inp.ids.length, inp.subject, 'subject-last', ['mlp', 'attn'])[0];
    fracSubj += restoredProb(model, inp, [{ site: subj.site, position: subj.position! }], noise) / tr.pClean;
    n++;
  }
  t.ok(n >= 4, `${n} known facts traced`);
  t.comment(`mean P(top locus restored)/P(clean) = ${(frac / n).toFixed(3)} (subject-last rule: ${(fracSubj / n).toFixed(3)}), mean Spearman(atp, patch) = ${(rho / n).toFixed(3)} over ${n} facts`);
  t.ok(frac / n >= 0.5, `top locus recovers ${(frac / n).toFixed(3)} of the clean probability on average`);
  t.ok(rho / n > 0.5, `atp ranks sites like patch (Spearman ${(rho / n).toFixed(3)})`);
});
