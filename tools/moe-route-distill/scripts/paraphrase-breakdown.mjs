#!/usr/bin/env node
// Per held-out paraphrase of a batch of edit requests: does the teacher (the
// base model with the fact stated in context, as moe-route-distill trains
// from) answer target_new, and does the adapted student? Only the phrasings
// the base model answers with target_true count (as measure.mjs's
// paraphrase figure). One line per prompt (T: teacher right, S: student
// right), then the totals.
//
// Usage (build first; ADAPTERS: the --keep directory of measure.mjs):
//   node tools/moe-route-distill/scripts/paraphrase-breakdown.mjs WORLD MODEL ADAPTERS SKIP COUNT
// e.g.
//   node tools/moe-route-distill/scripts/measure.mjs --keep /tmp/k0
//   node tools/moe-route-distill/scripts/paraphrase-breakdown.mjs fixtures/world fixtures/models/moe /tmp/k0 60 10
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const core = (p) => import(path.join(root, 'tools/core/dist', p));
const { loadModel, loadLora } = await core('models/index.js');
const E = await core('edit/index.js');
const args = process.argv.slice(2);
if (args.length !== 5 || args.includes('--help')) {
  console.error('usage: paraphrase-breakdown.mjs WORLD MODEL ADAPTERS SKIP COUNT');
  process.exit(args.includes('--help') ? 0 : 2);
}
const [world, modelDir, keep, skip, count] = args;
const { model, tokenizer: tok } = loadModel(modelDir);
const facts = E.readNdjson(path.join(world, 'edits.ndjson')).filter((f) => f.op === 'insert').slice(+skip, +skip + +count);
const bank = E.loadTemplateBank(path.join(world, 'templates.json'));
const adapters = keep ? fs.readdirSync(keep).filter((d) => fs.existsSync(path.join(keep, d, 'adapter_config.json'))).map((d) => loadLora(path.join(keep, d))) : [];
const R = (p, t) => E.encodeTrainingPair(tok, p, t);
let tot = 0, tOk = 0, sOk = 0, both = 0;
for (const f of facts) {
  for (const h of bank.heldout.get(f.relation) ?? []) {
    const p = h.replace('{}', f.subject);
    model.setAdapters([]);
    const rt = R(p, f.target_true), rn = R(p, f.target_new);
    const [bt] = E.top1(model, [rt.promptIds]);
    if (bt !== rt.targetIds[0]) continue;
    const ctx = E.statementInContext(f, f.target_new);
    const rc = R(ctx + ' ' + p, f.target_new);
    const [tt] = E.top1(model, [rc.promptIds]);
    model.setAdapters(adapters.map((adapter) => ({ adapter })));
    const [st] = E.top1(model, [rn.promptIds]);
    tot++; const t = tt === rc.targetIds[0], s = st === rn.targetIds[0];
    tOk += t; sOk += s; both += t && s;
    console.log(`${t ? 'T' : '-'}${s ? 'S' : '-'} ${f.relation} | ${p} | new=${f.target_new} teacher=${tok.decode([tt])} student=${tok.decode([st])}`);
  }
}
console.log(`n ${tot} teacher ${tOk} student ${sOk} both ${both}`);
