// probe-gen's full generator through real child processes, on the fixture world.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '../../..');
const BIN = join(root, 'tools/probe-gen/dist/main.js');
const world = (f: string) => join(root, 'fixtures/world', f);
const records = (f: string) => join(root, 'fixtures/records', f);
const STUB = join(root, 'fixtures/probe-gen/paraphraser.mjs');

if (!existsSync(BIN)) throw new Error(`build first (npx turbo run build): ${BIN} is missing`);

type Rec = Record<string, any>;
interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
  recs: Rec[];
}

function run(args: string[], input?: string): Result {
  const r = spawnSync(process.execPath, [BIN, ...args], { input: input ?? '', encoding: 'utf8', timeout: 60_000 });
  const recs = r.status === 0 ? r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Rec) : [];
  return { code: r.status, stdout: r.stdout, stderr: r.stderr, recs };
}

const readNd = (f: string): Rec[] => readFileSync(f, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Rec);
const edits = readNd(world('edits.ndjson'));
const kbFacts = readNd(world('facts.ndjson'));
const bank = JSON.parse(readFileSync(world('templates.json'), 'utf8')).relations as Record<string, { prompts: { train: string[]; heldout: string[] } }>;
const fill = (tpl: string, s: string) => tpl.split('{}').join(s);
const probesOf = (rs: Rec[]) => rs.filter((r) => r.kind === 'probe');

const all = run(['--roles', 'all', world('edits.ndjson')]);

t.test('every role on the world edits: counts per role, and every probe fully labelled', async (t) => {
  t.equal(all.code, 0, all.stderr);
  const ps = probesOf(all.recs);
  const by = (role: string, split?: string) => ps.filter((p) => p.role === role && (split === undefined || p.split === split));
  const inserts = edits.filter((e) => e.op !== 'forget');
  const forgets = edits.filter((e) => e.op === 'forget');
  t.equal(all.recs.filter((r) => r.kind === 'fact').length, edits.length, 'every fact kept');
  t.equal(by('edit').length, edits.length, 'one edit probe per fact');
  // train paraphrases: the relation's train prompts except the fact's own
  const wantTrain = edits.reduce((n, e) => n + bank[e.relation].prompts.train.filter((p) => p !== e.prompt).length, 0);
  t.equal(by('paraphrase', 'train').length, wantTrain, 'bank train paraphrases');
  const heldout = edits.reduce((n, e) => n + bank[e.relation].prompts.heldout.length, 0);
  t.ok(by('paraphrase', 'test').length > 0 && by('paraphrase', 'test').length <= heldout, 'held-out paraphrases (minus any that are trained on elsewhere)');
  t.equal(by('counterfactual', 'test').length, inserts.length + forgets.length, 'one counterfactual per fact (forget: any answer but the true one)');
  // generation: up to 3 prompts of the subject's other relations (same subject type), else the subject alone
  const types = JSON.parse(readFileSync(world('templates.json'), 'utf8')).relations as Record<string, { subject_type: string }>;
  const wantGen = edits.reduce((n, e) => n + Math.max(1, Math.min(3, Object.keys(types).filter((r) => r !== e.relation && types[r].subject_type === types[e.relation].subject_type).length)), 0);
  t.equal(by('generation').length, wantGen, '--generations 3');
  t.ok(by('neighborhood', 'test').length >= edits.length, 'neighbourhood test probes');
  t.ok(by('neighborhood', 'train').length > 0, 'neighbourhood train probes');
  t.equal(by('context').length, 0, 'no contexts without --contexts');
  // replay: 0.25 of the train probes, capped by the general text available
  const nTrain = ps.filter((p) => p.split === 'train' && p.role !== 'general').length;
  const pool = new Set(readNd(world('eval/general.ndjson')).map((g) => g.prompt)).size;
  t.equal(by('general', 'train').length, Math.min(pool, Math.round(0.25 * nTrain)));
  for (const p of ps) {
    if (typeof p.fact_id !== 'string' || !['train', 'test'].includes(p.split) || !['new', 'true', 'unchanged', 'abstain'].includes(p.expect) || typeof p.role !== 'string') {
      t.fail(`probe without fact_id/role/split/expect: ${JSON.stringify(p)}`);
      break;
    }
  }
  const keys = ps.map((p) => `${p.fact_id}|${p.role}|${p.prompt}|${p.target}|${p.expect}`);
  t.equal(new Set(keys).size, keys.length, 'no duplicate probes');
  t.equal(new Set(ps.map((p) => p.id)).size, ps.length, 'probe ids unique');
  // expectations per role
  for (const p of by('edit')) {
    const f = edits.find((e) => e.id === p.fact_id)!;
    t.same([p.target, p.expect], f.op === 'forget' ? [f.target_true, 'abstain'] : [f.target_new, 'new']);
  }
  for (const p of by('counterfactual')) {
    const f = edits.find((e) => e.id === p.fact_id)!;
    t.same([p.target, p.expect, p.prompt], [f.target_true, 'abstain', fill(f.prompt, f.subject)], 'the old answer must lose');
  }
});

t.test('no test paraphrase equals any train prompt', async (t) => {
  const ps = probesOf(all.recs);
  const train = new Set(ps.filter((p) => p.split === 'train').map((p) => p.prompt.trim().toLowerCase()));
  const leaks = ps.filter((p) => p.split === 'test' && p.role === 'paraphrase' && train.has(p.prompt.trim().toLowerCase()));
  t.same(leaks, []);
  // and held-out templates never end up in train
  const heldoutAll = new Set(edits.flatMap((e) => bank[e.relation].prompts.heldout.map((h) => fill(h, e.subject))));
  t.same(ps.filter((p) => p.split === 'train' && p.role === 'paraphrase' && heldoutAll.has(p.prompt)), []);
});

t.test('neighbourhood prompts share relation and original answer (checked against facts.ndjson)', async (t) => {
  const known = new Map(kbFacts.map((f) => [`${f.subject}|${f.relation}`, f.target_true as string]));
  const edited = new Set(edits.map((e) => `${e.subject}|${e.relation}`));
  const ns = probesOf(all.recs).filter((p) => p.role === 'neighborhood');
  t.ok(ns.length > 100);
  let bad = 0;
  for (const p of ns) {
    const f = edits.find((e) => e.id === p.fact_id)!;
    const ok =
      p.relation === f.relation &&
      p.subject !== f.subject &&
      known.get(`${p.subject}|${f.relation}`) === f.target_true &&
      p.target === f.target_true &&
      p.expect === 'unchanged' &&
      !edited.has(`${p.subject}|${f.relation}`) &&
      p.prompt === fill(f.prompt, p.subject);
    if (!ok && bad++ < 3) t.fail(`bad neighbour ${JSON.stringify(p)} of ${JSON.stringify(f)}`);
  }
  t.equal(bad, 0);
  // test and train neighbours of a fact are different subjects
  for (const f of edits) {
    const mine = ns.filter((p) => p.fact_id === f.id);
    const test = new Set(mine.filter((p) => p.split === 'test').map((p) => p.subject));
    if (mine.some((p) => p.split === 'train' && test.has(p.subject))) t.fail(`fact ${f.id}: a neighbour is both train and test`);
  }
});

t.test('a CounterFact record gives its own paraphrases, neighbours and generation prompts', async (t) => {
  const r = run(['--roles', 'all', '--general', 'none', '--no-facts', records('counterfact-sample.json')]);
  t.equal(r.code, 0, r.stderr);
  const cf = JSON.parse(readFileSync(records('counterfact-sample.json'), 'utf8'))[0];
  const mine = r.recs.filter((p) => p.fact_id === 'counterfact-0').map(({ id, ...p }) => p);
  const base = { kind: 'probe', fact_id: 'counterfact-0' };
  t.same(mine, [
    { ...base, role: 'edit', split: 'train', prompt: 'The mother tongue of Danielle Darrieux is', target: 'English', expect: 'new' },
    ...cf.paraphrase_prompts.map((prompt: string) => ({ ...base, role: 'paraphrase', split: 'test', prompt, target: 'English', expect: 'new' })),
    ...cf.neighborhood_prompts.map((prompt: string) => ({ ...base, role: 'neighborhood', split: 'test', prompt, target: 'French', expect: 'unchanged' })),
    { ...base, role: 'counterfactual', split: 'test', prompt: 'The mother tongue of Danielle Darrieux is', target: 'French', expect: 'abstain', target_new: 'English' },
    ...cf.generation_prompts.map((prompt: string) => ({ ...base, role: 'generation', split: 'test', prompt, expect: 'new', target_new: 'English' })),
  ]);
});

t.test('a zsRE record gives its rephrase as a test paraphrase and its locality question as a neighbour', async (t) => {
  const r = run(['--roles', 'all', '--general', 'none', '--no-facts', records('zsre-sample.json')]);
  t.equal(r.code, 0, r.stderr);
  const mine = r.recs.filter((p) => p.fact_id === 'zsre-84a9e9e96147');
  const para = mine.filter((p) => p.role === 'paraphrase');
  t.same(para.map((p) => [p.split, p.prompt, p.target, p.expect]), [['test', 'What university did Watts Humphrey take part in?', 'University of Michigan', 'new']]);
  const loc = mine.filter((p) => p.role === 'neighborhood');
  t.same(loc.map((p) => [p.split, p.prompt, p.target, p.expect]), [['test', 'nq question: who played desmond doss father in hacksaw ridge', 'Hugo Weaving', 'unchanged']]);
  t.same(mine.filter((p) => p.role === 'counterfactual').map((p) => p.target), ['Illinois Institute of Technology']);
});

t.test('deterministic for a seed; another seed draws other neighbours', async (t) => {
  const again = run(['--roles', 'all', world('edits.ndjson')]);
  t.equal(again.stdout, all.stdout, 'same seed, same bytes');
  const other = run(['--roles', 'all', '--seed', '7', world('edits.ndjson')]);
  t.equal(other.code, 0);
  t.not(other.stdout, all.stdout);
  // same probe counts for edit and bank paraphrases whatever the seed
  const count = (rs: Rec[], role: string) => rs.filter((p) => p.role === role).length;
  t.equal(count(other.recs, 'edit'), count(all.recs, 'edit'));
});

t.test('other records pass through in order, the general probes come last', async (t) => {
  const input = ['{"kind":"note","n":1}', JSON.stringify(edits[0]), '{"kind":"note","n":2}', JSON.stringify(edits[1])].join('\n');
  const r = run(['--roles', 'all'], input);
  t.equal(r.code, 0, r.stderr);
  const shape = r.recs.map((x) => (x.kind === 'probe' ? (x.role === 'general' ? 'G' : 'p') : x.kind === 'fact' ? 'F' : `n${x.n}`)).join('').replace(/p+/g, 'p').replace(/G+/g, 'G');
  t.equal(shape, 'n1Fpn2FpG');
});

t.test('the external paraphraser through a real child process', async (t) => {
  const fact = JSON.stringify(edits[0]);
  const ok = run(['--roles', 'edit,paraphrase', '--templates', 'none', '--paraphraser', `node ${STUB} ok`, '--paraphrases', '4'], fact);
  t.equal(ok.code, 0, ok.stderr);
  const para = ok.recs.filter((p) => p.role === 'paraphrase');
  t.equal(para.length, 4, 'the subject-less answer is dropped');
  t.same(para.map((p) => p.split).sort(), ['test', 'test', 'train', 'train'], '--paraphrase-test-fraction 0.5');
  t.ok(para.every((p) => p.prompt.includes(edits[0].subject) && p.target === edits[0].target_new));
  t.ok(para.some((p) => p.prompt === `Reportedly, ${edits[0].subject} works for`), '{} in an answer is filled with the subject');
  t.match(ok.stderr, /paraphraser: 4 paraphrase\(s\) for 1 of 1 fact/);

  const cases: Array<[string, string[], RegExp]> = [
    ['non-zero exit', [], /^probe-gen: --paraphraser ".*fail": exited with status 3: paraphraser: model server unreachable\n$/],
    ['hang', ['--paraphraser-timeout', '1'], /^probe-gen: --paraphraser ".*hang": no answer within 1s \(--paraphraser-timeout\); stopped it\n$/],
    ['garbage', [], /^probe-gen: --paraphraser ".*garbage": output line 1 is not JSON: "Sure! Here are some paraphrases:"/],
    ['shape', [], /^probe-gen: --paraphraser ".*shape": output line 1: expected \{"id": "<fact id>", "paraphrases"/],
  ];
  for (const [what, extra, msg] of cases) {
    const mode = what === 'non-zero exit' ? 'fail' : what;
    const started = Date.now();
    const r = run(['--paraphraser', `node ${STUB} ${mode}`, ...extra], fact);
    t.equal(r.code, 1, `${what}: runtime failure, exit 1`);
    t.match(r.stderr, msg, what);
    t.equal(r.stdout, '', `${what}: nothing written`);
    if (what === 'hang') t.ok(Date.now() - started < 15_000, 'the timeout stops it');
  }
  const missing = run(['--paraphraser', 'no-such-command-xyz'], fact);
  t.equal(missing.code, 1);
  t.match(missing.stderr, /exited with status 127/);
});

t.test('conflicting facts: reported, the last kept, or --on-conflict fail', async (t) => {
  const a = { kind: 'fact', id: 'a', subject: 'Dabe Tensunov', prompt: '{} works for', target_new: 'Norsynex', target_true: 'Quonorex', relation: 'works_for' };
  const b = { ...a, id: 'b', target_new: 'Norlumco' };
  const c = { ...b, id: 'c' };
  const input = [a, b, c].map((x) => JSON.stringify(x)).join('\n');
  const r = run(['--roles', 'edit,paraphrase'], input);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stderr, /conflict: fact "b" conflicts with fact "a" \(stdin: record 1\): same subject "Dabe Tensunov" and relation "works_for", "Norsynex" vs "Norlumco"; keeping the later one/);
  t.match(r.stderr, /fact "c" \(stdin: record 3\) repeats fact "b"/);
  const facts = r.recs.filter((x) => x.kind === 'fact');
  t.same(facts.map((f) => [f.id, f.superseded_by, f.duplicate_of]), [['a', 'b', undefined], ['b', undefined, undefined], ['c', undefined, 'b']]);
  t.same([...new Set(probesOf(r.recs).map((p) => p.fact_id))], ['b'], 'only the kept fact has probes');
  const f = run(['--on-conflict', 'fail'], input);
  t.equal(f.code, 2);
  t.match(f.stderr, /^probe-gen: stdin: record 2: field "target_new": fact "b" conflicts with fact "a"/);
});

t.test('bad facts are bad input naming record and field', async (t) => {
  const good = JSON.stringify(edits[0]);
  const cases: Array<[string, Rec, string[], RegExp]> = [
    ['no {} slot', { ...edits[1], prompt: 'works for' }, [], /^probe-gen: stdin: record 2: field "prompt": expected a template containing "\{\}"/],
    ['empty target', { ...edits[1], target_new: ' ' }, [], /^probe-gen: stdin: record 2: field "target_new": expected a non-empty answer, got an empty string\n$/],
    ['unencodable target', { ...edits[1], target_new: 'Zzyzxq' }, ['--tokenizer', world('')], /^probe-gen: stdin: record 2: field "target_new": fact "edit-0002": the model's tokenizer cannot spell "Zzyzxq"/],
  ];
  for (const [what, rec, extra, msg] of cases) {
    for (const roles of ['edit', 'all']) {
      const r = run(['--roles', roles, ...extra], `${good}\n${JSON.stringify(rec)}\n`);
      t.equal(r.code, 2, `${what} (--roles ${roles})`);
      t.match(r.stderr, msg, what);
    }
  }
  t.equal(run(['--roles', 'all', '--tokenizer', world('')], good).code, 0, 'the world tokenizer encodes the world targets');
  const usage = run(['--roles', 'edit,bogus'], good);
  t.equal(usage.code, 2);
  t.match(usage.stderr, /--roles: unknown role "bogus"/);
});

t.test('--forget-target abstain teaches the abstention answer', async (t) => {
  const forget = edits.find((e) => e.op === 'forget')!;
  const r = run(['--roles', 'counterfactual', '--forget-target', 'abstain', '--abstain-text', 'not', '--templates', world('templates.json')], JSON.stringify(forget));
  t.equal(r.code, 0, r.stderr);
  const cf = probesOf(r.recs);
  t.same(cf.map((p) => [p.split, p.target, p.expect, p.target_true]), [
    ['train', 'not', 'new', forget.target_true],
  ]);
  const withPara = run(['--roles', 'counterfactual,paraphrase', '--forget-target', 'abstain', '--abstain-text', 'not'], JSON.stringify(forget));
  const cf2 = probesOf(withPara.recs).filter((p) => p.role === 'counterfactual');
  t.same(cf2.map((p) => p.split), ['train', 'test'], 'and tests it on a held-out paraphrase');
  const bad = run(['--roles', 'all', '--forget-target', 'abstain', '--tokenizer', world('')], JSON.stringify(forget));
  t.equal(bad.code, 2);
  t.match(bad.stderr, /--abstain-text "unknown" has a word the tokenizer does not know/);
});
