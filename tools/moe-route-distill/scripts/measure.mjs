#!/usr/bin/env node
// Edit quality of moe-route-distill beside lora-train on the MoE fixture model,
// through the real binaries: the world's counterfactual edit requests
// (fixtures/world/edits.ndjson, inserts, from --skip on, --count of them, one
// train `edit` probe each, as lora-train's measureWorldEdits feeds them) go
// into one adapter; then every fact the model knows is read back
// (<world>/eval/facts-heldout.ndjson: two held-out phrasings per fact, no
// training ever sees them, as validate's default retention set and
// scripts/eval-edits.mjs; core's editReadback) and the routing measured
// (core's routingMetrics, validate's route_* metrics), and one markdown table
// row is printed:
//
//   case | n | efficacy | paraphrase | neighbourhood | kl ± se | retain_drop | route_tv | route_load_shift | route_agree (before → after) | trainable params | seconds
//
// efficacy: target_new top-1 on the fact's prompt; paraphrase: the relation's
// held-out templates (those the base model answers with target_true);
// neighbourhood: read-back prompts of the edited relations (other subjects)
// the base model answered and still does; kl / retain_drop: over every other
// read-back prompt; route_tv: mean total variation of the router
// distributions, base vs adapted, per token and layer, over the read-back
// prompts of facts not edited; route_agree: share of the model's top-k
// experts the teacher (fact in context) also picks on the edit prompts.
//
// Usage:
//   node tools/moe-route-distill/scripts/measure.mjs [--skip 60] [--count 10] [--seed 0]
//     [--tool moe-route-distill|lora-train] [--label TEXT] [--header] [--json FILE]
//     [--world fixtures/world] [--model fixtures/models/moe] [--readback FILE] [--keep DIR] -- [tool flags ...]
//   --keep DIR: write the adapter bundles there and keep them (e.g. for scripts/kl-breakdown.mjs).
//   --readback: default <world>/eval/facts-heldout.ndjson; <world>/eval/facts-train.ndjson is
//     the old read-back (one training phrasing per fact: what retention training fitted).
//   --world: another world (its edits, templates, train.txt and facts go to the tool too);
//     give its --model.
// e.g.
//   ... --tool moe-route-distill                       # router + experts (defaults)
//   ... --tool moe-route-distill -- --experts-only     # the ablation
//   ... --tool lora-train -- --targets experts         # lora-train on every layer's expert output projections
//   ... --tool lora-train                              # lora-train's defaults on the MoE model
// (`--targets experts` is expanded here into the model's expert output modules,
// read from its architecture description.) Build first (npm run build); run with `nice`.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const core = (p) => import(path.join(root, 'tools/core/dist', p));
const { loadModel, loadLora } = await core('models/index.js');
const { readNdjson, loadTemplateBank, editReadback, checkFact } = await core('edit/index.js');
const { routingMetrics } = await core('metrics/index.js');

const argv = process.argv.slice(2);
const dash = argv.indexOf('--');
const { values: a } = parseArgs({
  args: dash >= 0 ? argv.slice(0, dash) : argv,
  options: {
    skip: { type: 'string', default: '60' },
    count: { type: 'string', default: '10' },
    seed: { type: 'string', default: '0' },
    tool: { type: 'string', default: 'moe-route-distill' },
    label: { type: 'string' },
    header: { type: 'boolean', default: false },
    json: { type: 'string' },
    world: { type: 'string', default: 'fixtures/world' },
    model: { type: 'string', default: 'fixtures/models/moe' },
    readback: { type: 'string' },
    keep: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});
if (a.help) {
  console.log(fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').filter((l) => l.startsWith('//')).map((l) => l.slice(3)).join('\n'));
  process.exit(0);
}
const world = path.resolve(root, a.world);
const modelDir = path.resolve(root, a.model);
const readbackFile = a.readback ? path.resolve(a.readback) : path.join(world, 'eval/facts-heldout.ndjson');
// the world's side files for the tool when it is not the default world
const worldFlags = path.resolve(root, 'fixtures/world') === world ? [] : [
  '--templates', path.join(world, 'templates.json'), '--retain-corpus', path.join(world, 'train.txt'), '--known-facts', path.join(world, 'facts.ndjson'),
];
const { model, tokenizer } = loadModel(modelDir);
const given = dash >= 0 ? argv.slice(dash + 1) : [];
let extra = given;
const ti = extra.indexOf('--targets');
if (ti >= 0 && extra[ti + 1] === 'experts') {
  const mods = [];
  for (let l = 0; l < model.config.layers; l++) mods.push(model.arch.layer(l).moe.expert('*').out);
  extra = [...extra.slice(0, ti), '--targets', ...mods, ...extra.slice(ti + 2)];
}

const skip = Number(a.skip);
const count = Number(a.count);
const facts = readNdjson(path.join(world, 'edits.ndjson')).filter((f) => f.op === 'insert').slice(skip, skip + count);
const lines = [];
for (const f of facts) {
  lines.push(JSON.stringify(f));
  lines.push(JSON.stringify({ kind: 'probe', id: `${f.id}/edit/0`, fact_id: f.id, role: 'edit', split: 'train', prompt: f.prompt.replace('{}', f.subject), target: f.target_new, expect: 'new' }));
}
const tmp = a.keep ? path.resolve(a.keep) : fs.mkdtempSync(path.join(os.tmpdir(), 'moe-measure-'));
const bin = path.join(root, 'tools', a.tool, 'dist/main.js');
const t0 = process.hrtime.bigint();
const run = spawnSync(process.execPath, [bin, '--model', modelDir, '--seed', a.seed, '--out', tmp, '-q', ...worldFlags, ...extra], { input: lines.join('\n') + '\n', encoding: 'utf8', maxBuffer: 1 << 30 });
const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
if (run.status !== 0) {
  process.stderr.write(run.stderr);
  process.exit(run.status ?? 1);
}
const recs = run.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l)).filter((r) => r.kind === 'adapter');
const byId = new Map(facts.map((f) => [f.id, checkFact(f)]));
const adapters = recs.map((r) => loadLora(r.path));
const edited = recs.flatMap((r) => r.fact_ids.map((id) => byId.get(id)));
let params = 0;
for (const ad of adapters) for (const p of ad.parameters()) params += p.size;
const readback = readNdjson(readbackFile).map((p) => ({ prompt: p.prompt, target: p.target, subject: p.subject, relation: p.relation }));
const templates = loadTemplateBank(path.join(world, 'templates.json'));
const fig = editReadback(model, tokenizer, [{ adapters, facts: edited }], { templates, readback });
const editedKeys = new Set(edited.map((f) => `${f.subject}\u0000${f.relation}`));
const routing = routingMetrics(model, tokenizer, {
  unrelated: readback.map((p) => p.prompt),
  excluded: new Set(readback.filter((p) => editedKeys.has(`${p.subject}\u0000${p.relation}`)).map((p) => p.prompt)),
  facts: edited, active: adapters.map((adapter) => ({ adapter })),
});
const m = routing.metrics;
const pct = (v) => (Number.isNaN(v) ? 'n/a' : (100 * v).toFixed(1));
const label = a.label ?? `${a.tool} ${given.join(' ')}`.trim();
if (a.header) {
  console.log('| case | n | efficacy | paraphrase | neighbourhood | kl ± se | retain_drop | route_tv | route_load_shift | route_agree (before → after) | trainable params | seconds |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
}
console.log(
  `| ${label} | ${facts.length} | ${pct(fig.efficacy)} | ${pct(fig.paraphrase)} | ${pct(fig.neighbourhood)} | ${fig.kl.toFixed(3)} ± ${fig.kl_se.toFixed(3)} | ${fig.retain_drop.toFixed(3)} | ` +
  `${m.route_tv.toFixed(4)} | ${m.route_load_shift.toFixed(4)} | ${m.route_agree_before.toFixed(3)} → ${m.route_agree.toFixed(3)} | ${params} | ${seconds.toFixed(0)} |`,
);
if (a.json) fs.writeFileSync(a.json, JSON.stringify({ label, world: path.relative(root, world), model: path.relative(root, modelDir), readback: path.relative(root, readbackFile), skip, count, seed: Number(a.seed), tool: a.tool, flags: extra, figures: fig, routing: m, routing_se: routing.se, params, seconds }, null, 2) + '\n');
if (!a.keep) fs.rmSync(tmp, { recursive: true, force: true });
