#!/usr/bin/env node
// Person forgets measured the way scripts/flows/forget-person.sh makes them
// (issue 20): every fact of one person as `op: forget`, probe-gen's edit,
// paraphrase, neighbourhood and generation probes, one lora-train bundle, then
// validate with its default gates; the flow's first three stages, without a
// registry. --count persons with six facts, a seeded sample of the world's
// (--persons "A,B" names them instead). Prints one line a person (pass, kl,
// forget_top1, forget_p_true, forget_gen, the failed gates) and a summary.
//
//   node scripts/unlearn/forget-persons.mjs [--world fixtures/world] [--model fixtures/models/dense]
//     [--count 20] [--seed 0] [--persons "Nami Wickkoov,..." | --persons-file FILE] [--train-arg=--forget-stop-p=0.001 ...]
//     [--detail] [--json FILE]
// --persons-file: one name a line (scripts/unlearn/persons/ holds the held-out samples the lora-train README reads).
// --detail: for a person that fails, the forget prompts (edit and paraphrase probes, train and test
// split) where the old answer is still top-1, with P(old) before and after.
// CATECHISM_SIMD=avx2|avx512|scalar pins the kernels' ISA (kernels README). Build first; run it with `nice`.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const { values: a } = parseArgs({ options: {
  world: { type: 'string' }, model: { type: 'string' }, count: { type: 'string', default: '20' },
  seed: { type: 'string', default: '0' }, persons: { type: 'string' }, 'persons-file': { type: 'string' }, 'train-arg': { type: 'string', multiple: true, default: [] }, json: { type: 'string' },
  detail: { type: 'boolean', default: false },
} });
const world = path.resolve(a.world ?? path.join(root, 'fixtures/world'));
const modelDir = path.resolve(a.model ?? path.join(root, 'fixtures/models/dense'));
const bin = (n) => path.join(root, 'node_modules/.bin', n);

const facts = fs.readFileSync(path.join(world, 'facts.ndjson'), 'utf8').split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l)).filter((f) => f.kind === 'fact');
const bySubject = new Map();
for (const f of facts) bySubject.set(f.subject, [...(bySubject.get(f.subject) ?? []), f]);

// mulberry32 (kernels/test/helpers.ts has the same; core's Rng would draw other persons than the
// samples the lora-train README records): a seeded shuffle of the six-fact persons, sorted by name first
function rng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
let persons;
if (a.persons) persons = a.persons.split(',').map((s) => s.trim());
else if (a['persons-file']) persons = fs.readFileSync(a['persons-file'], 'utf8').split('\n').map((s) => s.trim()).filter(Boolean);
else {
  const pool = [...bySubject].filter(([, fs6]) => fs6.length === 6).map(([s]) => s).sort();
  const r = rng(Number(a.seed));
  for (let i = pool.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [pool[i], pool[j]] = [pool[j], pool[i]];
  }
  persons = pool.slice(0, Number(a.count));
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'forget-persons-'));
const env = { ...process.env, CATECHISM_THREADS: process.env.CATECHISM_THREADS ?? '1' };
const run = (cmd, args, input) => {
  const r = spawnSync(bin(cmd), args, { input, encoding: 'utf8', env, maxBuffer: 256 << 20 });
  if (r.status !== 0 && cmd !== 'validate') throw new Error(`${cmd} exited ${r.status}: ${r.stderr.slice(-2000)}`);
  return r.stdout;
};
// --detail: the base model and core's scorer, to read the old answer on each forget prompt with and without the bundle
const scorer = a.detail ? await (async () => {
  const { loadModel, loadLora } = await import(path.join(root, 'tools/core/dist/models/index.js'));
  const { scoreAnswer } = await import(path.join(root, 'tools/core/dist/merge/index.js'));
  return { ...loadModel(modelDir, { tokenizer: true }), loadLora, scoreAnswer };
})() : undefined;
/** The edit and paraphrase probes whose old answer is still the greedy top-1 with the bundle lora-train wrote. */
function survivors(probes, trained) {
  const { model, tokenizer, loadLora, scoreAnswer } = scorer;
  const bundle = trained.split('\n').filter(Boolean).map((l) => JSON.parse(l)).find((r) => r.kind === 'adapter');
  const adapter = loadLora(String(bundle.path));
  const out = [];
  for (const p of probes.split('\n').filter(Boolean).map((l) => JSON.parse(l))) {
    if (p.kind !== 'probe' || (p.role !== 'edit' && p.role !== 'paraphrase')) continue;
    const prompt = tokenizer.encode(p.prompt);
    const answer = tokenizer.encode(` ${p.target}`);
    const b = scoreAnswer(model, [], prompt, answer);
    const x = scoreAnswer(model, [{ adapter }], prompt, answer);
    if (x.top1 === answer[0]) out.push({ prompt: p.prompt, target: p.target, split: p.split, before: Math.exp(b.logprob), after: Math.exp(x.logprob) });
  }
  return out;
}
const rows = [];
for (const [i, subject] of persons.entries()) {
  const own = bySubject.get(subject);
  if (!own) throw new Error(`no facts of "${subject}" in ${world}/facts.ndjson`);
  const t0 = Date.now();
  const input = own.map((f) => JSON.stringify({ ...f, op: 'forget', target_new: undefined })).join('\n') + '\n';
  const probes = run('probe-gen', ['--roles', 'edit,paraphrase,neighborhood,generation', '--model', modelDir, '--templates', path.join(world, 'templates.json')], input);
  const trained = run('lora-train', ['--model', modelDir, '--templates', path.join(world, 'templates.json'), '--retain-corpus', path.join(world, 'train.txt'), '--known-facts', path.join(world, 'facts.ndjson'),
    '--out', path.join(dir, String(i)), ...a['train-arg']], probes);
  const validated = run('validate', ['--model', modelDir, '--no-record'], trained);
  const report = validated.split('\n').filter(Boolean).map((l) => JSON.parse(l)).find((r) => r.kind === 'report');
  if (!report) throw new Error(`validate wrote no report for "${subject}"`);
  const m = report.metrics;
  const row = { subject, pass: report.pass, kl: m.kl, forget_top1: m.forget_top1, forget_p_true: m.forget_p_true, forget_gen: m.forget_gen, specificity: m.specificity, failed: report.failures ?? [], seconds: (Date.now() - t0) / 1000 };
  rows.push(row);
  if (a.detail && !row.pass) row.survivors = survivors(probes, trained);
  for (const v of row.survivors ?? []) console.log(`  top-1 still: "${v.prompt}" → ${v.target} (${v.split}), P ${v.before.toFixed(3)} → ${v.after.toFixed(3)}`);
  console.log(`${subject}\t${row.pass ? 'pass' : 'FAIL'}\tkl ${m.kl.toFixed(4)}\tforget_top1 ${m.forget_top1.toFixed(3)}\tP(old) ${m.forget_p_true.toFixed(3)}\tgen ${m.forget_gen.toFixed(3)}\tspec ${m.specificity.toFixed(3)}\t${row.seconds.toFixed(0)} s`);
}
const kls = rows.map((r) => r.kl).sort((x, y) => x - y);
console.log(`${rows.filter((r) => r.pass).length} of ${rows.length} pass; kl ${kls[0].toFixed(4)}–${kls.at(-1).toFixed(4)}; failed: ${rows.filter((r) => !r.pass).map((r) => r.subject).join(', ') || 'none'}`);
if (a.json) fs.writeFileSync(a.json, JSON.stringify({ world, model: modelDir, simd: process.env.CATECHISM_SIMD ?? 'best', trainArgs: a['train-arg'], rows }, null, 1));
fs.rmSync(dir, { recursive: true, force: true });
