// The model-dependent parts (context prefixes, already_known) on the small golden gpt2,
// checked against greedy decoding done here with the model library directly.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel } from '@catechism/core/models';

const root = join(dirname(fileURLToPath(import.meta.url)), '../../..');
const BIN = join(root, 'tools/probe-gen/dist/main.js');
const MODEL = join(root, 'fixtures/golden/gpt2');
if (!existsSync(BIN)) throw new Error(`build first (npx turbo run build): ${BIN} is missing`);

type Rec = Record<string, any>;
function run(args: string[], input: string): { code: number | null; stderr: string; stdout: string; recs: Rec[] } {
  const r = spawnSync(process.execPath, [BIN, ...args], { input, encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, stderr: r.stderr, stdout: r.stdout, recs: r.status === 0 ? r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Rec) : [] };
}

// The golden model's vocabulary is a few lower-case words.
const { model, tokenizer } = loadModel(MODEL);
const prompts = ['the capital of france is', 'the capital of italy is', 'the language of spain is'];
const greedyWord = (p: string): string | null => {
  const [g] = model.generate([tokenizer!.encode(p)], { maxNewTokens: 1, greedy: true, eosTokenId: null });
  const tok = tokenizer!.idToToken(g[0]) ?? '';
  return tok.startsWith('\u2581') && tok.length > 1 ? tok.slice(1) : null;
};

t.test('--check-known flags exactly the facts whose target the model already produces', async (t) => {
  const facts: Rec[] = [];
  prompts.forEach((p, i) => {
    const subject = p.split(' ')[3];
    const w = greedyWord(p);
    if (w !== null) facts.push({ kind: 'fact', id: `known-${i}`, subject, prompt: p.replace(subject, '{}'), target_new: w });
    // a target the model does not produce first
    const other = ['rome', 'paris', 'madrid'].find((x) => x !== w)!;
    facts.push({ kind: 'fact', id: `new-${i}`, subject, prompt: p.replace(subject, '{}'), target_new: other });
  });
  const wantKnown = facts.filter((f) => f.id.startsWith('known-')).map((f) => f.id);
  t.ok(wantKnown.length > 0, 'the golden model answers at least one prompt with a whole word');
  // two facts per subject and prompt: distinct relations keep them from being conflicts
  const withRel = facts.map((f) => JSON.stringify({ ...f, relation: f.id })).join('\n');
  const r = run(['--roles', 'edit', '--check-known', '--model', MODEL], withRel);
  t.equal(r.code, 0, r.stderr);
  const flagged = r.recs.filter((x) => x.kind === 'fact' && x.already_known).map((x) => x.id);
  t.same(flagged, wantKnown);
  t.ok(r.recs.filter((x) => x.kind === 'probe' && wantKnown.includes(x.fact_id)).every((p) => p.already_known === true), 'their probes carry the flag too');
  t.match(r.stderr, new RegExp(`${wantKnown.length} fact\\(s\\) flagged already_known`));
  const skip = run(['--roles', 'edit', '--skip-known', '--model', MODEL], withRel);
  t.equal(skip.code, 0, skip.stderr);
  t.same(skip.recs.filter((x) => x.kind === 'probe').map((p) => p.fact_id), facts.filter((f) => !wantKnown.includes(f.id)).map((f) => f.id), '--skip-known: no probes for them');
  t.equal(skip.recs.filter((x) => x.kind === 'fact').length, facts.length, 'the facts are still written');
});

t.test('--contexts N: N model-generated prefixes per fact, seeded', async (t) => {
  const fact = JSON.stringify({ kind: 'fact', id: 'f', subject: 'france', prompt: 'the capital of {} is', target_new: 'rome', target_true: 'paris' });
  const r = run(['--contexts', '3', '--context-length', '5', '--model', MODEL, '--seed', '1'], fact);
  t.equal(r.code, 0, r.stderr);
  const ctx = r.recs.filter((x) => x.role === 'context');
  t.equal(ctx.length, 3, '--contexts brings the context role along');
  for (const p of ctx) {
    t.equal(p.prompt, `${p.context} the capital of france is`, 'context prefixed to the edit prompt');
    t.match(p.context, /^the\b.*[.!?]$/, 'starts from the prompt\'s first word, ends a sentence');
    t.same([p.split, p.target, p.expect], ['train', 'rome', 'new']);
  }
  t.equal(run(['--contexts', '3', '--context-length', '5', '--model', MODEL, '--seed', '1'], fact).stdout, r.stdout, 'same seed, same contexts');
  const other = run(['--contexts', '3', '--context-length', '5', '--model', MODEL, '--seed', '2'], fact);
  t.not(other.stdout, r.stdout, 'another seed, other contexts');
});

t.test('no model is loaded without --contexts or --check-known', async (t) => {
  const fact = JSON.stringify({ kind: 'fact', id: 'f', subject: 'france', prompt: 'the capital of {} is', target_new: 'rome' });
  const r = run(['--roles', 'all', '--model', join(root, 'no-such-model')], fact);
  t.equal(r.code, 2, 'a --model given is still checked');
  t.match(r.stderr, /--model .*no-such-model: not a model directory/);
  t.equal(run(['--roles', 'all'], fact).code, 0, 'without --model nothing model-related is needed');
});

t.test('a bundled fixture model brings its own world: dense-b draws neighbours from world-b', async (t) => {
  const worldB = join(root, 'fixtures/world-b/facts.ndjson');
  const denseB = join(root, 'fixtures/models/dense-b');
  if (!existsSync(join(denseB, 'config.json'))) return t.skip('no dense-b fixture model');
  const { readFileSync } = await import('node:fs');
  const first = JSON.parse(readFileSync(worldB, 'utf8').split('\n')[0]) as Rec;
  const fact = JSON.stringify({ ...first, target_true: undefined, target_new: 'Nowhere' }) + '\n';
  const known = new Set(readFileSync(worldB, 'utf8').split('\n').filter(Boolean).map((l) => (JSON.parse(l) as Rec).subject));
  const withB = run(['--roles', 'neighborhood', '--model', denseB, '--allow-unknown'], fact);
  t.equal(withB.code, 0, withB.stderr);
  const subjects = withB.recs.filter((r) => r.role === 'neighborhood').map((r) => (r.prompt as string).replace(/ is located in$/, ''));
  t.ok(subjects.length > 0, 'neighbours found in world-b');
  t.ok(subjects.every((s) => known.has(s)), 'every neighbour is a world-b subject');
  const noModel = run(['--roles', 'neighborhood'], fact);
  t.equal(noModel.recs.filter((r) => r.role === 'neighborhood').length, 0, 'without a model the default world (world-a) has no such subject');
});
