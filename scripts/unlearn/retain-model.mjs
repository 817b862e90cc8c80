#!/usr/bin/env node
// The unlearning literature's reference for a forget (TOFU's "retain model"):
// a model trained from scratch on the same corpus less the forgotten
// persons' documents. What that model still answers about a person was never
// learnt from the person's own documents: it is inferred from the rest (a
// first name the namesakes share, for instance), and a forget cannot be
// asked to remove more than exact unlearning would (issue 20; lora-train
// README, "A model that never saw them").
//
// make: a copy of WORLD whose train.txt leaves out every document (line)
// naming one of the persons (the full name, not as the tail of a longer
// name: "Nami Wickkoov" is not removed from "Nalu Nami Wickkoov"); then train
// it as the fixture model was (fixtures/models/dense/training.json's command
// with --world OUT):
//   node scripts/unlearn/retain-model.mjs make --world fixtures/world --persons "Dajo Holfel,..." --out /tmp/world-retain
//   node scripts/train-fixture.mjs --arch gpt2 --seed 1 --eval-every 1000 --world /tmp/world-retain --out /tmp/runs/retain
//
// compare: for every fact of each person, every prompt of its relation
// (templates.json's train and held-out prompts), whether the old answer is
// the greedy top-1 and its probability on the base model and on the retain
// model, and on the base model with part of the name replaced by a made-up
// word (name-prior.mjs's ablation: "Dajo Zamrix", "Zamrix Holfel"). Then how
// well that ablation (on the base model alone, no retraining) predicts what
// the retain model answers. --controls: persons kept in both corpora (the
// retrained model should still know them: the retraining's own noise).
//   node scripts/unlearn/retain-model.mjs compare --world fixtures/world --base fixtures/models/dense --retain /tmp/runs/retain --persons "..." [--controls "..."] [--verbose]
// Build first (npx turbo run build).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const [mode, ...argv] = process.argv.slice(2);
const { values: a } = parseArgs({ args: argv, options: {
  world: { type: 'string' }, persons: { type: 'string' }, controls: { type: 'string' }, out: { type: 'string' },
  base: { type: 'string' }, retain: { type: 'string' }, verbose: { type: 'boolean', default: false },
} });
const usage = (msg) => { process.stderr.write(`retain-model: ${msg}\nusage: retain-model.mjs make --world W --persons "A,B" --out DIR | compare --world W --base MODEL --retain MODEL --persons "A,B" [--controls "C,D"] [--verbose]\n`); process.exit(2); };
if (!a.world || !a.persons) usage('--world and --persons are required');
const world = path.resolve(a.world);
const names = (s) => (s ?? '').split(',').map((x) => x.trim()).filter(Boolean);
const persons = names(a.persons);
const esc = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
// the full name, not preceded by another capitalised name word and not followed by a letter
const naming = (list) => new RegExp(`(?<![A-Za-z])(?<![A-Z][a-z]+ )(${list.map(esc).join('|')})(?![A-Za-z])`);

if (mode === 'make') {
  if (!a.out) usage('make needs --out');
  const out = path.resolve(a.out);
  fs.cpSync(world, out, { recursive: true });
  const lines = fs.readFileSync(path.join(world, 'train.txt'), 'utf8').split('\n');
  const re = naming(persons);
  const kept = lines.filter((l) => !re.test(l));
  const perPerson = Object.fromEntries(persons.map((p) => [p, lines.filter((l) => naming([p]).test(l)).length]));
  if (Object.values(perPerson).some((n) => n === 0)) usage(`no document names ${persons.filter((p) => perPerson[p] === 0).join(', ')}`);
  fs.writeFileSync(path.join(out, 'train.txt'), kept.join('\n'));
  fs.writeFileSync(path.join(out, 'REMOVED.json'), JSON.stringify({ persons, documents_removed: perPerson, documents_kept: kept.filter(Boolean).length }, null, 1) + '\n');
  process.stderr.write(`retain-model: ${out}: ${lines.length - kept.length} documents removed, ${JSON.stringify(perPerson)}\n`);
} else if (mode === 'compare') {
  if (!a.base || !a.retain) usage('compare needs --base and --retain');
  const { loadModel } = await import(path.join(root, 'tools/core/dist/models/index.js'));
  const { scoreAnswer } = await import(path.join(root, 'tools/core/dist/merge/index.js'));
  const base = loadModel(path.resolve(a.base), { tokenizer: true });
  const retain = loadModel(path.resolve(a.retain), { tokenizer: true });
  const facts = fs.readFileSync(path.join(world, 'facts.ndjson'), 'utf8').split('\n').filter(Boolean).map(JSON.parse).filter((f) => f.kind === 'fact');
  const templates = JSON.parse(fs.readFileSync(path.join(world, 'templates.json'), 'utf8'));
  const { MADE_UP_SURNAME: MADE_UP } = await import(path.join(root, 'tools/core/dist/edit/index.js'));
  const read = ({ model, tokenizer }, prompt, answer) => {
    const ans = tokenizer.encode(' ' + answer);
    const r = scoreAnswer(model, [], tokenizer.encode(prompt), ans);
    return { p: Math.exp(r.logprob), top1: r.top1 === ans[0] };
  };
  const rows = [];
  for (const [group, list] of [['removed', persons], ['control', names(a.controls)]]) {
    for (const person of list) {
      const own = facts.filter((f) => f.subject === person);
      if (own.length === 0) usage(`no facts of "${person}" in ${world}`);
      const parts = person.split(' ');
      const first = parts.slice(0, -1).join(' '), last = parts.at(-1);
      for (const f of own) {
        const t = (templates.relations ?? templates)[f.relation]?.prompts;
        if (!t) usage(`templates.json has no prompts for relation ${f.relation}`);
        for (const [split, ws] of [['train', t.train], ['heldout', t.heldout]]) {
          for (const w of ws) {
            const b = read(base, w.replace('{}', person), f.target_true);
            const r = read(retain, w.replace('{}', person), f.target_true);
            const byFirst = read(base, w.replace('{}', `${first} ${MADE_UP}`), f.target_true);
            const byLast = read(base, w.replace('{}', `${MADE_UP} ${last}`), f.target_true);
            rows.push({ group, person, relation: f.relation, split, wording: w, answer: f.target_true, base: b, retain: r, byFirst, byLast });
          }
        }
      }
    }
  }
  const f3 = (x) => x.toFixed(3);
  if (a.verbose) {
    for (const x of rows) {
      process.stdout.write(`${x.group}\t${x.split}\t${x.wording.replace('{}', x.person)} → ${x.answer}\tbase ${x.base.top1 ? 'top1' : '-'} ${f3(x.base.p)}\tretain ${x.retain.top1 ? 'top1' : '-'} ${f3(x.retain.p)}\tfirst+${MADE_UP} ${x.byFirst.top1 ? 'top1' : '-'} ${f3(x.byFirst.p)}\t${MADE_UP}+last ${x.byLast.top1 ? 'top1' : '-'} ${f3(x.byLast.p)}\n`);
    }
  }
  const pc = (k, n) => `${k} of ${n} (${n ? ((100 * k) / n).toFixed(1) : '—'}%)`;
  for (const group of ['removed', 'control']) {
    for (const split of ['train', 'heldout']) {
      const g = rows.filter((x) => x.group === group && x.split === split);
      if (g.length === 0) continue;
      const answered = g.filter((x) => x.base.top1);
      console.log(`${group}, ${split} prompts (${g.length}): old answer top-1 on the base model ${pc(answered.length, g.length)}, on the retain model ${pc(g.filter((x) => x.retain.top1).length, g.length)}; of those the base answers, the retain model too ${pc(answered.filter((x) => x.retain.top1).length, answered.length)}`);
      if (group !== 'removed') continue;
      const inferable = (x) => x.byFirst.top1 || x.byLast.top1;
      const tp = answered.filter((x) => inferable(x) && x.retain.top1).length, fp = answered.filter((x) => inferable(x) && !x.retain.top1).length;
      const fn = answered.filter((x) => !inferable(x) && x.retain.top1).length, tn = answered.filter((x) => !inferable(x) && !x.retain.top1).length;
      console.log(`  of those the base answers: the name ablation says inferable and the retain model answers ${tp}, inferable but the retain model does not ${fp}, not inferable but the retain model answers ${fn}, neither ${tn}`);
    }
  }
} else usage(`unknown mode ${JSON.stringify(mode)}`);
