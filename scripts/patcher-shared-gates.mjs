#!/usr/bin/env node
// Can one patcher gate serve several facts? (issue 19: 1,000 edits need more than the last layer's
// 512 neurons at one neuron a fact.) One last-token gate of the last layer is fitted with core's
// fitGates on G facts of one relation at once (their training templates as positives; every position
// of every known fact's prompt, and 80 other subjects' training phrasings as hard negatives; margin
// 0.25), as a neuron shared by facts moved to one target would need. Read on held-out templates:
// how many of the members' it opens on, and how many of other subjects' (which it must not).
// Three disjoint groups per size; G = 1 is today's patcher.
//
//   node scripts/patcher-shared-gates.mjs [WORLD fixtures/world] [MODEL fixtures/models/dense] [RELATION lives_in] [SIZES 1,4,8,16]
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { loadModel } = await import(root+'/tools/core/dist/models/index.js');
const { fitGates, mlpNormedInputs, PATCHER_DEFAULTS } = await import(root+'/tools/core/dist/edit/patcher.js');
const world = process.argv[2] ?? 'fixtures/world', modelDir = process.argv[3] ?? 'fixtures/models/dense';
const rel = process.argv[4] ?? 'lives_in';
const sizes = (process.argv[5] ?? '1,4,8,16').split(',').map(Number);
const { model, tokenizer: tok } = loadModel(root+'/'+modelDir);
const H = model.config.hidden, L = model.config.layers - 1;
const facts = fs.readFileSync(`${root}/${world}/facts.ndjson`,'utf8').split('\n').filter(Boolean).map(JSON.parse);
const T = JSON.parse(fs.readFileSync(`${root}/${world}/templates.json`,'utf8')).relations;
const lastRows = (prompts) => { const rows = prompts.map(p=>tok.encode(p)); const { X, offsets } = mlpNormedInputs(model, L, rows); const out = new Float32Array(rows.length*H); rows.forEach((r,i)=>out.set(X.subarray((offsets[i]+r.length-1)*H,(offsets[i]+r.length)*H), i*H)); return out; };
// negatives: every position of every known fact's prompt
const known = facts.map(f=>f.prompt.replace('{}', f.subject));
const knownRows = known.map(p=>tok.encode(p));
const { X: Xneg, offsets } = mlpNormedInputs(model, L, knownRows);
const relFacts = facts.filter(f=>f.relation===rel);
const score = (g, X) => { const out=[]; for (let r=0;r<X.length/H;r++){ let s=g.b; for(let a=0;a<H;a++) s+=g.w[a]*X[r*H+a]; out.push(s);} return out; };
for (const G of sizes) {
  const trials = 3; let openHeld=0, nHeld=0, leakHeld=0, nOther=0, leaks=0, openTrain=0, nTrain=0;
  for (let t=0;t<trials;t++) {
    const members = relFacts.slice(t*G, t*G+G), others = relFacts.filter(f=>!members.includes(f)).slice(0,80);
    const P = lastRows(members.flatMap(f=>T[rel].templates.train.map(x=>x.replace('{}', f.subject))));
    const hard = lastRows(others.flatMap(f=>T[rel].templates.train.map(x=>x.replace('{}', f.subject))));
    const exclude = new Set(); facts.forEach((f,i)=>{ if(members.some(m=>m.subject===f.subject&&f.relation===rel)) exclude.add(offsets[i]+knownRows[i].length-1); });
    const [g] = fitGates(Xneg, H, [P], [exclude], [hard], { ...PATCHER_DEFAULTS, gateMargin: 0.25 });
    leaks += g.leaks;
    const ps = score(g, P); openTrain += ps.filter(s=>s>g.tau).length; nTrain += ps.length;
    const held = score(g, lastRows(members.flatMap(f=>T[rel].templates.heldout.map(x=>x.replace('{}', f.subject)))));
    openHeld += held.filter(s=>s>g.tau).length; nHeld += held.length;
    const oth = score(g, lastRows(relFacts.filter(f=>!members.includes(f)).slice(80,160).flatMap(f=>T[rel].templates.heldout.map(x=>x.replace('{}', f.subject)))));
    leakHeld += oth.filter(s=>s>g.tau).length; nOther += oth.length;
  }
  console.log(`${rel} G=${G}: train open ${openTrain}/${nTrain}, held-out member phrasings open ${openHeld}/${nHeld}, non-members' held-out phrasings open ${leakHeld}/${nOther}, negatives leaking ${leaks} (3 trials)`);
}
