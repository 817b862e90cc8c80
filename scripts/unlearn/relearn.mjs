#!/usr/bin/env node
// Relearning resistance (issue 20): does forgotten knowledge come back when
// the edited model is fine-tuned on a few of the forgotten facts? The model
// with every forget adapter of --adapters active is fine-tuned (a fresh LoRA
// of rank --rank on every linear module, AdamW lr --lr, full batch) for
// --steps steps on --k forgotten facts' prompts (the fact's prompt and its
// train paraphrase probes when --probes gives them) with their old answer's
// first token as the label; then the OTHER forgotten facts are read: how many
// give their old answer as greedy top-1 again on their own prompt. --repeats
// draws of the k facts (seeded); smaller is better. The same attack on the
// base model with nothing forgotten is the reference (those facts are top-1
// there already, so it reads how many stay top-1: N − k when the attack harms
// nothing).
//
//   node scripts/unlearn/relearn.mjs --adapters adapters.ndjson [--probes probes.ndjson]
//     [--model fixtures/models/dense] [--k 5] [--steps 20] [--lr 0.001] [--rank 8] [--repeats 3] [--label TEXT] [--json FILE]
// adapters.ndjson: `adapter` records (lora-train's output, forget-eval.mjs --keep DIR's adapters.ndjson,
// adapter-merge negate's); their manifests' op "forget" facts are the forgotten ones.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const { loadModel, loadLora } = await import(path.join(root, 'tools/core/dist/models/index.js'));
const { AdamW, crossEntropy } = await import(path.join(root, 'tools/core/dist/tensor/index.js'));
const { padBatch, padId, top1 } = await import(path.join(root, 'tools/core/dist/edit/model-util.js'));
const { Rng } = await import(path.join(root, 'tools/core/dist/index.js'));

const { values: a } = parseArgs({ options: {
  adapters: { type: 'string' }, probes: { type: 'string' }, model: { type: 'string', default: 'fixtures/models/dense' },
  k: { type: 'string', default: '5' }, steps: { type: 'string', default: '20' }, lr: { type: 'string', default: '0.001' },
  rank: { type: 'string', default: '8' }, repeats: { type: 'string', default: '3' }, label: { type: 'string' }, json: { type: 'string' },
  header: { type: 'boolean', default: false },
} });
if (!a.adapters) throw new Error('--adapters FILE is required');
const lines = (f) => fs.readFileSync(f, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
const adRecs = lines(a.adapters).filter((r) => r.kind === 'adapter');
const probes = a.probes ? lines(a.probes).filter((r) => r.kind === 'probe') : [];
const active = [];
const facts = new Map();
for (const r of adRecs) {
  const m = JSON.parse(fs.readFileSync(path.join(r.path, 'catechism.json'), 'utf8'));
  active.push({ adapter: loadLora(r.path, r.id), scale: typeof r.scale === 'number' ? r.scale : (m.scale ?? 1) });
  for (const f of m.facts) if (f.op === 'forget' && typeof f.target_true === 'string') facts.set(f.id, f);
}
const all = [...facts.values()];
const k = Number(a.k);
if (all.length <= k) throw new Error(`${all.length} forgotten facts: more than --k ${k} are needed`);
const { model, tokenizer: tok } = loadModel(path.resolve(a.model));
const promptOf = (f) => f.prompt.replace('{}', f.subject);
const firstTok = (f) => tok.encode(` ${f.target_true}`)[0];
const trainPrompts = (f) => [promptOf(f), ...probes.filter((p) => p.fact_id === f.id && p.split === 'train' && p.role === 'paraphrase').map((p) => p.prompt)];
const modules = model.linearModules().map(([n]) => n);

/** Fine-tune a fresh LoRA on `train` over the `base` adapters; how many of `others` give the old answer top-1 before/after. */
function attack(base, train, others, seed) {
  const count = () => {
    const got = top1(model, others.map((f) => tok.encode(promptOf(f))));
    return got.filter((t, i) => t === firstTok(others[i])).length;
  };
  model.setAdapters(base);
  const before = count();
  const lora = model.createLora('relearn', modules, { r: Number(a.rank), seed });
  const rows = train.flatMap((f) => trainPrompts(f).map((p) => ({ ids: tok.encode(p), y: firstTok(f) })));
  const { ids, mask, T, last } = padBatch(rows.map((r) => r.ids), padId(model));
  const at = last; // padBatch: each row's last token as a flat index (b · T + length − 1)
  const y = Int32Array.from(rows.map((r) => r.y));
  const opt = new AdamW(lora.parameters(), { lr: Number(a.lr), weightDecay: 0 });
  model.setAdapters([...base, { adapter: lora }]);
  for (let s = 0; s < Number(a.steps); s++) {
    const { logits } = model.forward(ids, [rows.length, T], { attentionMask: mask, logitsAt: at });
    const loss = crossEntropy(logits, y);
    opt.zeroGrad();
    loss.backward();
    opt.step();
  }
  const after = count();
  const trainedBack = top1(model, train.map((f) => tok.encode(promptOf(f)))).filter((t, i) => t === firstTok(train[i])).length;
  model.setAdapters([]);
  return { before, after, trainedBack };
}

const out = [];
for (let r = 0; r < Number(a.repeats); r++) {
  const order = new Rng(100 + r).shuffle(all.slice());
  const train = order.slice(0, k), others = order.slice(k);
  const edited = attack(active, train, others, r);
  const ref = attack([], train, others, r);
  out.push({ edited, ref, others: others.length });
  process.stderr.write(`  draw ${r}: others top-1 ${edited.before} → ${edited.after} of ${others.length} (trained facts back ${edited.trainedBack}/${k}); base model: ${ref.before} → ${ref.after}\n`);
}
const mean = (f) => out.reduce((s, x) => s + f(x), 0) / out.length;
const label = a.label ?? path.basename(a.adapters);
if (a.header) {
  console.log('| case | forgotten facts | k | steps | lr | others back top-1 (mean of draws) | before attack | trained facts back | base model: others top-1 after the same attack |');
  console.log('|---|---|---|---|---|---|---|---|---|');
}
console.log(`| ${label} | ${all.length} | ${k} | ${a.steps} | ${a.lr} | ${mean((x) => x.edited.after).toFixed(1)} / ${out[0].others} | ${mean((x) => x.edited.before).toFixed(1)} | ${mean((x) => x.edited.trainedBack).toFixed(1)} / ${k} | ${mean((x) => x.ref.after).toFixed(1)} / ${out[0].others} |`);
if (a.json) fs.appendFileSync(a.json, JSON.stringify({ label, facts: all.length, k, steps: Number(a.steps), lr: Number(a.lr), rank: Number(a.rank), draws: out }) + '\n');
