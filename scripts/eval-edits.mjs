#!/usr/bin/env node
// Edit quality measured the strict way (issue 17): train edits through
// lora-train's own path (trainEdits), then read back EVERY fact the model
// knows (the world's eval/facts-heldout.ndjson: two held-out phrasings per
// fact, prompts lora-train's retention never trains on) before and after,
// and print one markdown table row per case:
//
//   case | method | n | efficacy | paraphrase | neighbourhood | kl | retain_drop | forgotten | kind | gates
//
// efficacy: target_new top-1 on the fact's prompt; paraphrase: the relation's
// held-out templates (never trained on); neighbourhood: read-back prompts of
// the edited relations (other subjects) the base model answered and still
// does; kl: mean KL(base ‖ edited), next token, over the read-back prompts of
// every fact not edited (a stderr line and the JSON's figures.kl_base_right /
// kl_base_wrong split it by whether the base model answers the prompt
// rightly: an edit that moves a wrong answer to the truth adds kl too);
// retain_drop: top-1 accuracy on them before − after;
// forgotten: forget facts' old answer no longer top-1 (own prompt + the
// held-out phrasings where the base model answers the old answer, as
// paraphrase counts only phrasings the base model answers and validate keeps
// a forget paraphrase); kind: of those prompts, the new answer is an object
// of the relation. gates: validate's defaults (kl ≤ 0.05, retain_drop ≤ 0.05,
// efficacy ≥ 0.95, paraphrase ≥ 0.8; forgetting: forgotten = 1, kind = 1).
// ROME edits are single edits, each measured alone (kl and retain_drop are
// means over the edits; the largest is in the JSON).
//
// Usage:
//   node scripts/eval-edits.mjs [--world fixtures/world] [--model fixtures/models/dense]
//     [--method lora|rome] [--op insert|forget] [--source edits|facts] [--relation R]
//     [--skip 60] [--count 10] [--batch 0] [--seed 0] [--set key=json ...] [--label TEXT]
//     [--header] [--json FILE] [--readback FILE] [--keep DIR]
//   --keep: move the trained bundles to DIR (new) instead of deleting them.
//   --each: read every adapter back alone (with --batch 1: single-fact adapters), not their sum.
//   --readback: the probes read back (default <world>/eval/facts-heldout.ndjson, phrasings no
//     training ever saw, two per fact, as validate's default retention set; lora-train's
//     retention KL trains on training phrasings only, so the two never share a prompt;
//     <world>/eval/facts-train.ndjson: one training phrasing per fact, the old read-back,
//     which measures what retention training fitted).
//   --source edits: the world's edits.ndjson (requests of --op), from --skip on;
//   --source facts: counterfactuals made from facts.ndjson (optionally one --relation):
//     a seeded order of the facts, from --skip on, each moved to another object of
//     its relation (seeded); these facts never were edit requests.
//   --forget-target abstain (op forget): each forget fact also gets probe-gen's abstain probe
//     (--forget-target abstain: a train `counterfactual` probe teaching --abstain-text, default
//     "unknown"), which the methods edit toward; kind % then also counts the abstention as an
//     answer of the right kind, and the row adds its share (abstain %) after kind %, e.g.
//     "95.0 (abstain 60.0)". Default any: probe-gen's first form only, outputs as before.
//   --detail (op forget): one stderr line per forget prompt (own + held-out): P(old), the top-1
//     answer and whether it is of the relation's kind (use it on the tuning split).
//   Forget rows also print P(old) (the old answer's first token after each forget prompt, own +
//   held-out, adapters on): its mean (validate's forget_p_true, gate ≤ 0.1), its largest value and
//   how many prompts are above 0.1, over every own and held-out prompt (the row's forgotten % /
//   kind % skip held-out phrasings the base model does not answer with the old answer, e.g.
//   world-b's "{} can speak" → "the" for 141 of 142 known facts, which cannot show the kind).
//   The JSON has them as figures.forget_p_old{,_max,_over,_n}.
//   --base-phrasings: no training; per held-out phrasing of the read-back file, the base model's
//     top-1 over the known facts: right %, of the relation's kind %, the commonest other answers
//     (which phrasings the base model itself never answers in kind); then exits.
//   --set: a lora-train option: one of the run's (layer, batch, targets, topK, templates,
//     retainCorpus, knownFacts, useTemplates) or the method's by flag name, kebab-case or
//     camelCase (e.g. --set retain-weight=30 --set retainFacts=0 --set layer=1).
// Build first (npm run build). Run it with `nice`: it trains.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const { DEFAULT_ARGS, loadResources, trainEdits, counterfactualFacts, editInputs, readbackAdapters, readbackFailures } = await import(path.join(root, 'tools/lora-train/dist/index.js'));
const { readNdjson, checkFact, editMethod, editReadback, lastLogits, encodeTrainingPair, top1 } = await import(path.join(root, 'tools/core/dist/edit/index.js'));
const { loadLora } = await import(path.join(root, 'tools/core/dist/models/index.js'));

const { values: a } = parseArgs({
  options: {
    world: { type: 'string', default: 'fixtures/world' },
    model: { type: 'string' },
    method: { type: 'string', default: 'lora' },
    op: { type: 'string', default: 'insert' },
    source: { type: 'string', default: 'edits' },
    relation: { type: 'string' },
    skip: { type: 'string', default: '0' },
    count: { type: 'string', default: '10' },
    batch: { type: 'string', default: '0' },
    seed: { type: 'string', default: '0' },
    set: { type: 'string', multiple: true, default: [] },
    label: { type: 'string' },
    header: { type: 'boolean', default: false },
    json: { type: 'string' },
    readback: { type: 'string' },
    keep: { type: 'string' },
    each: { type: 'boolean', default: false },
    'forget-target': { type: 'string', default: 'any' },
    'abstain-text': { type: 'string', default: 'unknown' },
    detail: { type: 'boolean', default: false },
    'base-phrasings': { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});
if (a.help) {
  console.log(fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').filter((l) => l.startsWith('//')).map((l) => l.slice(3)).join('\n'));
  process.exit(0);
}
const world = path.resolve(a.world);
const model = path.resolve(a.model ?? path.join(root, 'fixtures/models/dense'));
const skip = Number(a.skip);
const count = Number(a.count);
const seed = Number(a.seed);

/** Edit requests of the case. */
function caseFacts() {
  const edits = readNdjson(path.join(world, 'edits.ndjson'));
  if (a.source === 'edits') return edits.filter((f) => f.op === a.op).slice(skip, skip + count);
  if (a.source !== 'facts') throw new Error(`--source: edits or facts, got ${a.source}`);
  return counterfactualFacts(readNdjson(path.join(world, 'facts.ndjson')), { relation: a.relation, skip, count, seed, op: a.op, exclude: edits });
}

if (a['base-phrasings']) {
  const res = loadResources({ model, templates: path.join(world, 'templates.json'), retainCorpus: path.join(world, 'train.txt'), knownFacts: path.join(world, 'facts.ndjson') });
  const tok = res.tokenizer;
  const rb = readNdjson(a.readback ? path.resolve(a.readback) : path.join(world, 'eval/facts-heldout.ndjson')).filter((p) => typeof p.relation === 'string');
  const kinds = new Map();
  const byT = new Map();
  for (const p of rb) {
    const ids = encodeTrainingPair(tok, p.prompt, p.target);
    (kinds.get(p.relation) ?? kinds.set(p.relation, new Set()).get(p.relation)).add(ids.targetIds[0]);
    const tpl = `${p.relation}\t${JSON.stringify(typeof p.template === 'string' ? p.template : p.prompt.replace(p.subject, '{}'))}`;
    (byT.get(tpl) ?? byT.set(tpl, []).get(tpl)).push(ids);
  }
  res.model.setAdapters([]);
  const pct = (x) => (100 * x).toFixed(1);
  console.log('relation\tphrasing\tn\tright %\tof the kind %\tother answers');
  for (const [tpl, ids] of [...byT].sort((x, y) => (x[0] < y[0] ? -1 : 1))) {
    const rel = tpl.split('\t')[0];
    const pred = top1(res.model, ids.map((x) => x.promptIds));
    let right = 0;
    let kind = 0;
    const other = new Map();
    pred.forEach((t, i) => {
      if (t === ids[i].targetIds[0]) right++;
      if (kinds.get(rel).has(t)) kind++;
      else other.set(tok.decode([t]), (other.get(tok.decode([t])) ?? 0) + 1);
    });
    console.log(`${tpl}\t${ids.length}\t${pct(right / ids.length)}\t${pct(kind / ids.length)}\t${[...other].sort((x, y) => y[1] - x[1]).slice(0, 3).map(([w, c]) => `${JSON.stringify(w)}: ${c}`).join(', ')}`);
  }
  process.exit(0);
}
const facts = caseFacts();
if (facts.length === 0) throw new Error('no facts for this case');
if (a['forget-target'] !== 'any' && a['forget-target'] !== 'abstain') throw new Error(`--forget-target: any or abstain, got ${a['forget-target']}`);
const abstainText = a['forget-target'] === 'abstain' ? a['abstain-text'] : undefined;
if (abstainText !== undefined && !abstainText.trim()) throw new Error('--abstain-text: must not be empty');
const inputs = editInputs(facts);
if (abstainText !== undefined) {
  // probe-gen --forget-target abstain's train probe for each forget fact: the edit prompt, the abstention as `new`
  for (const fact of facts.filter((x) => x.op === 'forget')) {
    inputs.push({
      record: { kind: 'probe', id: `${fact.id}/counterfactual/0`, fact_id: fact.id, role: 'counterfactual', split: 'train', prompt: fact.prompt.replace('{}', fact.subject), target: abstainText, expect: 'new', target_true: fact.target_true },
      source: 'edits', index: inputs.length + 1,
    });
  }
}
// --set: the run's own fields and the resources' files by name, anything else a method option (flag name)
const RUN_KEYS = new Set(['layer', 'batch', 'targets', 'topK', 'seed']);
const RESOURCE_KEYS = new Set(['templates', 'retainCorpus', 'knownFacts', 'useTemplates']);
const run = {};
const resources = {};
const options = {};
for (const kv of a.set) {
  const i = kv.indexOf('=');
  if (i < 0) throw new Error(`--set ${kv}: expected key=value`);
  const v = kv.slice(i + 1);
  let parsed;
  try { parsed = JSON.parse(v); } catch { parsed = v; }
  const key = kv.slice(0, i);
  if (RUN_KEYS.has(key)) run[key] = parsed;
  else if (RESOURCE_KEYS.has(key)) resources[key] = parsed;
  else options[key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)] = parsed;
}
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'eval-edits-'));
process.env.CATECHISM_CACHE ??= path.join(os.tmpdir(), 'eval-edits-cache');
const args = { ...DEFAULT_ARGS, seed, out: tmp, method: a.method, batch: Number(a.batch), options, ...run };
const resourceArgs = {
  model, templates: path.join(world, 'templates.json'), retainCorpus: path.join(world, 'train.txt'), knownFacts: path.join(world, 'facts.ndjson'),
  ...resources,
};
const res = loadResources(resourceArgs);
if (abstainText !== undefined && res.tokenizer.decode(res.tokenizer.encode(` ${abstainText}`)).trim() !== abstainText.trim()) {
  // as probe-gen refuses it: a word-level vocabulary without the word makes it the unknown token
  throw new Error(`--abstain-text ${JSON.stringify(abstainText)}: the model's tokenizer does not encode it (it reads back as ${JSON.stringify(res.tokenizer.decode(res.tokenizer.encode(` ${abstainText}`)))}); the fixture models know "not"`);
}
const t0 = Date.now();
let records = [];
let refused = null;
const log = (m) => process.stderr.write(`  ${m}\n`);
if (a.method === 'rome') {
  // one run per fact, so a fact ROME refuses is counted and the others still measured
  const refusals = [];
  for (const f of facts) {
    try {
      records.push(...(await trainEdits(inputs.filter((r) => r.record.id === f.id || r.record.fact_id === f.id), args, res, { log })));
    } catch (e) {
      if (e.name !== 'EditRefusedError') throw e;
      refusals.push(f.id);
    }
  }
  if (refusals.length) refused = `refused ${refusals.length}: ${refusals.join(' ')}`;
} else {
  try {
    records = await trainEdits(inputs, args, res, { log });
  } catch (e) {
    if (e.name !== 'EditRefusedError') throw e;
    refused = e.message;
  }
}
const seconds = (Date.now() - t0) / 1000;
const readbackFile = a.readback ? path.resolve(a.readback) : path.join(world, 'eval/facts-heldout.ndjson');
/** readbackAdapters (lora-train's measure.ts) with the abstention counted as an acceptable forget answer. */
function readbackAbstain() {
  if (records.length === 0) return null;
  const byId = new Map(facts.map((x) => [x.id, checkFact(x)]));
  const ads = records.map((r) => ({ adapter: loadLora(r.path), facts: r.fact_ids.map((id) => byId.get(id)) }));
  const groups = editMethod(a.method)?.perFact || a.each
    ? ads.map((x) => ({ adapters: [x.adapter], facts: x.facts }))
    : [{ adapters: ads.map((x) => x.adapter), facts: ads.flatMap((x) => x.facts) }];
  const readback = readNdjson(readbackFile).map((p) => ({
    prompt: p.prompt, target: p.target,
    ...(typeof p.subject === 'string' ? { subject: p.subject } : {}), ...(typeof p.relation === 'string' ? { relation: p.relation } : {}),
  }));
  return editReadback(res.model, res.tokenizer, groups, { templates: res.templates, readback, abstain: abstainText });
}
// --each: every adapter read back alone (kl, retain_drop: means over them), as ROME's always are
const f = abstainText === undefined && !a.each ? readbackAdapters(res, records, facts, readbackFile, a.method) : readbackAbstain();
/**
 * P(old answer's first token) after each forget prompt (the fact's own prompt and its relation's
 * held-out phrasings, as the read-back's forgotten %), every adapter of the run active
 * (ROME: each fact's own). Mean (validate's forget_p_true), max, and the count above 0.1.
 */
function forgetPOld() {
  if (a.op !== 'forget' || records.length === 0) return null;
  const tok = res.tokenizer;
  const kinds = new Map();
  for (const p of readNdjson(readbackFile)) {
    if (typeof p.relation !== 'string') continue;
    const t = encodeTrainingPair(tok, p.prompt, p.target).targetIds[0];
    (kinds.get(p.relation) ?? kinds.set(p.relation, new Set()).get(p.relation)).add(t);
  }
  const ads = records.map((r) => ({ adapter: loadLora(r.path), ids: new Set(r.fact_ids) }));
  const prev = res.model.activeAdapters();
  const ps = [];
  try {
    for (const fact of facts.filter((x) => x.op === 'forget')) {
      const mine = editMethod(a.method)?.perFact ? ads.filter((x) => x.ids.has(fact.id)) : ads;
      res.model.setAdapters(mine.map((x) => ({ adapter: x.adapter })));
      const prompts = [fact.prompt, ...(res.templates?.heldout.get(fact.relation) ?? [])].map((t) => t.replace('{}', fact.subject));
      // --detail also shows the relation's training phrasings (marked train; not in the figures)
      const train = a.detail ? (res.templates?.train.get(fact.relation) ?? []).map((t) => t.replace('{}', fact.subject)).filter((p) => !prompts.includes(p)) : [];
      for (const prompt of [...prompts, ...train]) {
        const isTrain = !prompts.includes(prompt);
        const { promptIds, targetIds } = encodeTrainingPair(tok, prompt, fact.target_true);
        const row = lastLogits(res.model, [promptIds]).data.subarray(0, res.model.config.vocabSize);
        let m = -Infinity;
        let best = 0;
        for (let i = 0; i < row.length; i++) if (row[i] > m) { m = row[i]; best = i; }
        let z = 0;
        for (let i = 0; i < row.length; i++) z += Math.exp(row[i] - m);
        const p = Math.exp(row[targetIds[0]] - m) / z;
        if (!isTrain) ps.push(p);
        if (a.detail) {
          const kind = best !== targetIds[0] && kinds.get(fact.relation)?.has(best);
          process.stderr.write(`  forget${isTrain ? ' train' : ''} ${fact.id} ${JSON.stringify(prompt)} old ${JSON.stringify(fact.target_true)} P(old) ${p.toFixed(3)} top-1 ${JSON.stringify(tok.decode([best]))}${best === targetIds[0] ? ' (old)' : kind ? ' (kind)' : ''}\n`);
        }
      }
    }
  } finally {
    res.model.setAdapters(prev);
  }
  return { forget_p_old: ps.reduce((x, y) => x + y, 0) / ps.length, forget_p_old_max: Math.max(...ps), forget_p_old_over: ps.filter((p) => p > 0.1).length, forget_p_old_n: ps.length };
}
const pOld = forgetPOld();
if (f && pOld) Object.assign(f, pOld);
if (a.keep) {
  fs.mkdirSync(path.dirname(path.resolve(a.keep)), { recursive: true });
  fs.renameSync(tmp, a.keep);
} else fs.rmSync(tmp, { recursive: true, force: true });

const pct = (x) => (x === undefined || Number.isNaN(x) ? '—' : (100 * x).toFixed(1));
const num = (x) => (x === undefined || Number.isNaN(x) ? '—' : x.toFixed(3));
const label = a.label ?? `${a.source === 'facts' ? `${a.relation ?? 'facts'} cf` : 'edits'} ${skip + 1}–${skip + count}${Number(a.batch) ? ` (batches of ${a.batch}${a.each ? ', each alone' : ''})` : ''}`;
let pass = refused ?? 'refused';
if (f) {
  const fails = readbackFailures(f, a.op);
  pass = (refused ? `${refused}; the rest ` : '') + (fails.length ? `fail (${fails.join(', ')})` : 'pass');
}
if (a.header) {
  console.log('| case | world | method | n | efficacy % | paraphrase % | neighbourhood % | kl | retain_drop | forgotten % | kind % | gates | s |');
  console.log('|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|');
}
const setTxt = a.set.length || abstainText !== undefined ? ` [${[...(abstainText !== undefined ? [`forget-target abstain (${abstainText})`] : []), ...a.set].join(' ')}]` : '';
const kindTxt = abstainText !== undefined ? `${pct(f?.forget_kind)} (abstain ${pct(f?.forget_abstain)})` : pct(f?.forget_kind);
console.log(`| ${label}${setTxt} | ${path.basename(world)} | ${a.method}${a.op === 'forget' ? ' forget' : ''} | ${facts.length} | ${pct(f?.efficacy)} | ${pct(f?.paraphrase)} | ${pct(f?.neighbourhood)} | ${num(f?.kl)} ± ${num(f?.kl_se)} | ${num(f?.retain_drop)} ± ${num(f?.retain_drop_se)} | ${pct(f?.forgotten)} | ${kindTxt} | ${pass} | ${seconds.toFixed(0)} |`);
if (f) console.error(`eval-edits: kl ${num(f.kl)}: ${num(f.kl_base_right)} over the ${f.n.base_right} read-back prompts the base model answers rightly, ${num(f.kl_base_wrong)} over the ${f.n.retain - f.n.base_right} it answers wrongly`);
if (pOld) console.log(`|   P(old): mean ${pOld.forget_p_old.toFixed(3)} (validate's forget_p_true gate ≤ 0.1), max ${pOld.forget_p_old_max.toFixed(3)}, above 0.1 on ${pOld.forget_p_old_over} of ${pOld.forget_p_old_n} prompts (every own and held-out prompt) |`);
if (a.json) fs.appendFileSync(a.json, JSON.stringify({ label, world: path.basename(world), method: a.method, op: a.op, set: a.set, ...(abstainText !== undefined ? { forget_target: 'abstain', abstain_text: abstainText } : {}), facts: facts.length, figures: f, pass, refused, seconds, adapters: records.length }) + '\n');
