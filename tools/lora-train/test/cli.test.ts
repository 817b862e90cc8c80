/**
 * The lora-train binary through real processes on the golden GPT-2: records
 * pass through in order with one adapter record per batch, --batch splits,
 * the same seed + records (+ --created-at) give byte-identical bundles, bad
 * input exits 2 naming the record, --registry stores the bundle.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Registry } from '@catechism/core/registry';
import { readSafetensors } from '@catechism/core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../../..');
const BIN = path.resolve(HERE, '../dist/main.js');
const GPT2 = path.join(ROOT, 'fixtures/golden/gpt2');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cat-lora-train-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

const corpus = path.join(tmp, 'corpus.txt');
fs.writeFileSync(corpus, 'the eiffel tower is in paris .\nthe colosseum is in rome .\nmadrid is a city in spain .\n');
const facts = [
  { kind: 'fact', id: 'f1', subject: 'france', prompt: 'the capital of {} is', target_new: 'rome', target_true: 'paris', op: 'insert', source: 's' },
  { kind: 'fact', id: 'f2', subject: 'spain', prompt: 'the capital of {} is', target_new: 'paris', target_true: 'madrid', op: 'insert', source: 's' },
];
const records = [
  facts[0],
  { kind: 'probe', fact_id: 'f1', role: 'edit', split: 'train', prompt: 'the capital of france is', target: 'rome', expect: 'new' },
  { kind: 'note', text: 'passes through' },
  facts[1],
  { kind: 'probe', fact_id: 'f2', role: 'edit', split: 'train', prompt: 'the capital of spain is', target: 'paris', expect: 'new' },
  { kind: 'probe', fact_id: 'f2', role: 'paraphrase', split: 'test', prompt: 'the capital city of spain is', target: 'paris', expect: 'new' },
];
const input = records.map((r) => JSON.stringify(r)).join('\n') + '\n';

function run(args: string[], stdin = input, cwd?: string, steps = 40, env: Record<string, string | undefined> = {}) {
  // --steps is a LoRA option: refused with --method rome
  const lora = !args.includes('rome') && !args.includes('alphaedit') ? ['--steps', String(steps)] : [];
  const r = spawnSync(process.execPath, [BIN, '--model', GPT2, '--retain-corpus', corpus, '--known-facts', '/dev/null', '--no-use-templates', ...lora, ...args], {
    input: stdin, encoding: 'utf8', env: { ...process.env, CATECHISM_REGISTRY: undefined, CATECHISM_CACHE: path.join(tmp, 'cache'), ...env }, ...(cwd ? { cwd } : {}),
  });
  const out = r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  return { code: r.status, out, err: r.stderr };
}

t.test('a relative --out still gives an absolute bundle path (records travel to tools run elsewhere)', async (t) => {
  const r = run(['--objective', 'sft', '--out', 'rel-out', '-q'], input, tmp);
  t.equal(r.code, 0, r.err);
  const a = r.out.find((x) => x.kind === 'adapter')!;
  t.ok(path.isAbsolute(a.path as string), `path ${String(a.path)}`);
  t.ok(fs.existsSync(path.join(a.path as string, 'catechism.json')), 'the bundle is there');
  t.equal(path.dirname(a.path as string), fs.realpathSync(path.join(tmp, 'rel-out')), 'under the --out given, resolved from the working directory');
});

t.test('one adapter per batch; records pass through in order', async (t) => {
  const r = run(['--objective', 'sft', '--batch', '1', '--out', path.join(tmp, 'a'), '-q']);
  t.equal(r.code, 0, r.err);
  t.same(r.out.slice(0, records.length), records, 'inputs first, unchanged, in order');
  const ad = r.out.slice(records.length);
  t.equal(ad.length, 2);
  t.same(ad.map((a) => a.fact_ids), [['f1'], ['f2']]);
  for (const a of ad) {
    // the default targets: the last layer's MLP, input and output projections (the golden model has 2 layers)
    t.match(a, { kind: 'adapter', method: 'lora', rank: 8, targets: ['transformer.h.1.mlp.c_fc', 'transformer.h.1.mlp.c_proj'], version: 1 });
    for (const f of ['adapter_config.json', 'adapter_model.safetensors', 'catechism.json']) t.ok(fs.existsSync(path.join(a.path as string, f)), f);
  }
  const m2 = JSON.parse(fs.readFileSync(path.join(ad[1].path as string, 'catechism.json'), 'utf8'));
  t.same(m2.probes.map((p: { prompt: string }) => p.prompt), ['the capital city of spain is'], 'test-split probes are the tests');
});

t.test('a large batch (--large-batch-above): the last two layers\' MLPs, sft, rank 32, where not given; given flags win', async (t) => {
  // the golden model has 2 layers, so the large-batch targets are both layers' MLPs
  const large = run(['--large-batch-above', '1', '--out', path.join(tmp, 'large'), '-q'], input, undefined, 5);
  t.equal(large.code, 0, large.err);
  const a = large.out.find((x) => x.kind === 'adapter')!;
  t.match(a, { rank: 32, targets: ['transformer.h.0.mlp.c_fc', 'transformer.h.0.mlp.c_proj', 'transformer.h.1.mlp.c_fc', 'transformer.h.1.mlp.c_proj'] });
  const h = JSON.parse(fs.readFileSync(path.join(a.path as string, 'catechism.json'), 'utf8')).hyperparameters;
  t.match(h, { objective: 'sft', rank: 32, steps: 5, large_batch_above: 1, shrink_drop: 0.01 });
  t.notOk('hidden_retain_weight' in h, 'two facts: no hidden-state retention by default (above 300 facts only)');
  // shrunk after training: the same run without the shrink gives the same lora_A and lora_B / scale
  const shrunk = run(['--large-batch-above', '1', '--out', path.join(tmp, 'large-shrunk'), '--seed', '3'], input, undefined, 5);
  t.equal(shrunk.code, 0, shrunk.err);
  t.match(shrunk.err, /shrink: delta × 0\.\d+, training rows solved 100\.0% → 100\.0% \(--shrink-drop 0\.01; read: 1\.000 100\.0%, 0\.500/, 'the scale and the solved share on stderr');
  t.match(shrunk.err, /2 facts, 5 steps in [\d.]+ s, train 100% \(100\.0% shrunk × 0\.\d+\)/, 'the summary names the shrunk share and scale');
  const full = run(['--large-batch-above', '1', '--shrink-drop', '0', '--out', path.join(tmp, 'large-full'), '--seed', '3', '-q'], input, undefined, 5);
  t.equal(full.code, 0, full.err);
  const manifest = (r: typeof full) => JSON.parse(fs.readFileSync(path.join(r.out.find((x) => x.kind === 'adapter')!.path as string, 'catechism.json'), 'utf8'));
  const shrunkM = manifest(shrunk), fullM = manifest(full);
  t.ok(shrunkM.training.shrink_scale > 0.5 && shrunkM.training.shrink_scale < 1, `scale ${shrunkM.training.shrink_scale}`);
  t.match(shrunkM.training, { shrink_solved_full: 1, shrink_solved: 1 });
  t.notOk('shrink_drop' in fullM.hyperparameters, '--shrink-drop 0: no shrink, none recorded');
  t.notOk('shrink_scale' in fullM.training);
  const tensors = (r: typeof full) => readSafetensors(path.join(r.out.find((x) => x.kind === 'adapter')!.path as string, 'adapter_model.safetensors'));
  const st = tensors(shrunk), ft = tensors(full);
  let maxA = 0, maxB = 0;
  for (const k of ft.names()) {
    const x = st.float32(k), y = ft.float32(k);
    for (let i = 0; i < y.length; i++) {
      const d = k.includes('lora_A') ? Math.abs(x[i] - y[i]) : Math.abs(x[i] - y[i] * shrunkM.training.shrink_scale);
      if (k.includes('lora_A')) maxA = Math.max(maxA, d);
      else maxB = Math.max(maxB, d);
    }
  }
  t.equal(maxA, 0, 'lora_A as trained');
  t.ok(maxB < 1e-6, `lora_B = the trained lora_B × the scale (${maxB})`);
  // the retention rows' MLP outputs held (hidden-state retention): recorded, named, and other weights
  const held = run(['--large-batch-above', '1', '--hidden-retain-weight', '3', '--shrink-drop', '0', '--out', path.join(tmp, 'large-held'), '--seed', '3'], input, undefined, 5);
  t.equal(held.code, 0, held.err);
  t.match(manifest(held).hyperparameters, { hidden_retain_weight: 3 });
  t.match(held.err, /the retention rows' MLP outputs held \(--hidden-retain-weight 3\)/, 'the large-batch line names it');
  t.notMatch(shrunk.err, /MLP outputs held/, 'not named where it is off');
  const ht = tensors(held);
  t.ok(ft.names().some((k) => ht.float32(k).some((v, i) => v !== ft.float32(k)[i])), 'held and not held train different weights');
  const bad = run(['--large-batch-above', '1', '--hidden-retain-weight', '-1', '--out', path.join(tmp, 'large-bad'), '-q'], input, undefined, 5);
  t.equal(bad.code, 2, 'a negative weight is a usage error');
  t.match(bad.err, /hidden-retain-weight/);
  const given = run(['--large-batch-above', '1', '--objective', 'distill', '--rank', '4', '--hidden-retain-weight', '1', '--out', path.join(tmp, 'large-given'), '-q'], input, undefined, 5);
  t.equal(given.code, 0, given.err);
  const g = given.out.find((x) => x.kind === 'adapter')!;
  t.match(JSON.parse(fs.readFileSync(path.join(g.path as string, 'catechism.json'), 'utf8')).hyperparameters, { objective: 'distill', rank: 4, hidden_retain_weight: 1 });
  // two facts are not more than 100: the small-batch defaults, as before
  const small = run(['--out', path.join(tmp, 'small'), '-q'], input, undefined, 5);
  const sm = small.out.find((x) => x.kind === 'adapter')!;
  t.match(sm, { rank: 8, targets: ['transformer.h.1.mlp.c_fc', 'transformer.h.1.mlp.c_proj'] });
  const smh = JSON.parse(fs.readFileSync(path.join(sm.path as string, 'catechism.json'), 'utf8')).hyperparameters;
  t.notOk('large_batch_above' in smh);
  t.notOk('hidden_retain_weight' in smh, 'a small batch holds no MLP outputs by default');
});

t.test('same seed and records → same data hash and identical bundle bytes', async (t) => {
  const args = ['--created-at', '2026-01-01T00:00:00Z', '--seed', '4', '-q'];
  const a = run([...args, '--out', path.join(tmp, 'd1')]);
  const b = run([...args, '--out', path.join(tmp, 'd2')]);
  t.equal(a.code, 0, a.err);
  const ra = a.out.at(-1)!;
  const rb = b.out.at(-1)!;
  t.equal(ra.data_sha256, rb.data_sha256);
  t.equal(ra.sha256, rb.sha256, 'bundle content hash equal');
  const w = (r: Record<string, unknown>) => fs.readFileSync(path.join(r.path as string, 'adapter_model.safetensors'));
  t.ok(w(ra).equals(w(rb)), 'weights byte-identical');
  const c = run([...args, '--out', path.join(tmp, 'd3')], input.replace('"rome"', '"madrid"'));
  t.not(c.out.at(-1)!.data_sha256, ra.data_sha256, 'other records, other data hash');
});

t.test('ROME into a registry', async (t) => {
  const reg = path.join(tmp, 'reg');
  const r = run(['--method', 'rome', '--registry', reg, '-q']);
  t.equal(r.code, 0, r.err);
  const ad = r.out.filter((x) => x.kind === 'adapter');
  t.equal(ad.length, 2, 'one ROME bundle per fact');
  for (const a of ad) {
    t.match(a, { method: 'rome', rank: 1 });
    t.ok((a.path as string).startsWith(path.join(reg, 'objects')), 'stored in the registry');
    const cfg = JSON.parse(fs.readFileSync(path.join(a.path as string, 'adapter_config.json'), 'utf8'));
    t.match(cfg, { r: 1, lora_alpha: 1, peft_type: 'LORA' });
  }
  t.ok(fs.readdirSync(path.join(tmp, 'cache', 'rome-stats')).length >= 1, 'key statistics cached');
});

t.test('bad input exits 2 naming the record and field; usage errors exit 2', async (t) => {
  const bad = input + JSON.stringify({ kind: 'fact', id: 'f3', subject: 'italy', prompt: 'capital of italy', target_new: 'rome' }) + '\n';
  const r = run(['--out', path.join(tmp, 'x')], bad);
  t.equal(r.code, 2);
  t.match(r.err, /record 7: field "prompt": .*"\{\}"/);
  t.notOk(fs.existsSync(path.join(tmp, 'x')), 'nothing written');
  const dup = input + JSON.stringify(facts[0]) + '\n';
  const d = run(['--out', path.join(tmp, 'x')], dup);
  t.equal(d.code, 2);
  t.match(d.err, /record 7: field "id": fact id "f1" already used by record 1/);
  const n = run([]);
  t.equal(n.code, 2);
  t.match(n.err, /--out DIR or --registry/);
  const s = run(['--out', path.join(tmp, 'x'), '--retain-share', '1.5']);
  t.equal(s.code, 2);
  t.match(s.err, /--retain-share/);
  const m = run(['--out', path.join(tmp, 'x'), '--targets', 'no_such_module']);
  t.equal(m.code, 2, m.err);
  t.match(m.err, /no_such_module/);
});

t.test('issue 18: usage errors are found before any training (exit 2, nothing written)', async (t) => {
  // the golden GPT-2 has 2 layers
  const l = run(['--out', path.join(tmp, 'l99'), '--layer', '99']);
  t.equal(l.code, 2, l.err);
  t.match(l.err, /--layer 99: the model has \d+ layers/);
  t.notOk(fs.existsSync(path.join(tmp, 'l99')), 'nothing written');
  const file = path.join(tmp, 'a-file');
  fs.writeFileSync(file, 'not a directory');
  const f = run(['--out', file]);
  t.equal(f.code, 2, f.err);
  t.match(f.err, /--out .*a-file: exists and is not a directory/);
  t.equal(fs.readFileSync(file, 'utf8'), 'not a directory', 'the file is untouched');
  t.notOk(/step \d+/.test(f.err), 'refused before training');
  const both = run(['--out', path.join(tmp, 'both'), '--registry', path.join(tmp, 'both-reg')]);
  t.equal(both.code, 2, both.err);
  t.match(both.err, /--out and --registry exclude each other/);
  t.notOk(fs.existsSync(path.join(tmp, 'both')) || fs.existsSync(path.join(tmp, 'both-reg')), 'nothing written');
});

t.test('issue 18: the bundle id covers the seed and the hyperparameters', async (t) => {
  const common = ['--objective', 'sft', '--created-at', '2026-01-01T00:00:00Z', '-q'];
  const id = (args: string[], out: string) => {
    // one step: the id does not depend on how training went
    const r = run([...common, ...args, '--out', path.join(tmp, out)], input, undefined, 1);
    t.equal(r.code, 0, r.err);
    return r.out.at(-1)!.id as string;
  };
  const s0 = id(['--seed', '0'], 'id0');
  const s1 = id(['--seed', '1'], 'id1');
  const s2 = id(['--seed', '2'], 'id2');
  t.equal(new Set([s0, s1, s2]).size, 3, `seeds 0, 1, 2 give three ids: ${s0} ${s1} ${s2}`);
  t.not(id(['--seed', '0', '--rank', '4'], 'idr'), s0, 'another rank, another id');
  t.not(id(['--seed', '0', '--retain-weight', '10'], 'idw'), s0, 'another retention weight, another id');
  t.equal(id(['--seed', '0'], 'id0b'), s0, 'the same inputs and flags give the same id');
  t.match(s0, /^lora-[0-9a-f]{16}$/);
});

t.test('issue 16: with neither --out nor --registry, $CATECHISM_REGISTRY is the registry (as in every tool)', async (t) => {
  const reg = path.join(tmp, 'env-reg');
  const r = run(['--objective', 'sft', '-q'], input, undefined, 1, { CATECHISM_REGISTRY: reg });
  t.equal(r.code, 0, r.err);
  const a = r.out.at(-1)!;
  t.equal(a.kind, 'adapter');
  t.ok((a.path as string).startsWith(path.join(reg, 'objects')), `stored in $CATECHISM_REGISTRY: ${String(a.path)}`);
  // an explicit --out wins over the environment's default
  const o = run(['--objective', 'sft', '-q', '--out', path.join(tmp, 'env-out')], input, undefined, 1, { CATECHISM_REGISTRY: reg });
  t.equal(o.code, 0, o.err);
  t.equal(path.dirname(o.out.at(-1)!.path as string), fs.realpathSync(path.join(tmp, 'env-out')));
  const none = run([], input, undefined, 1);
  t.equal(none.code, 2);
  t.match(none.err, /give --out DIR or --registry DIR \(or set \$CATECHISM_REGISTRY\)/);
});

t.test('issue 16: a method\'s options with another method, and ops a method does not edit, are usage errors before any work', async (t) => {
  const r = run(['--method', 'rome', '--rank', '4', '--out', path.join(tmp, 'mix')]);
  t.equal(r.code, 2, r.err);
  t.match(r.err, /--rank is an option of --method lora; it means nothing with --method rome/);
  const s = run(['--stats-tokens', '100', '--out', path.join(tmp, 'mix')]);
  t.equal(s.code, 2, s.err);
  t.match(s.err, /--stats-tokens is an option of --method rome; it means nothing with --method lora/);
  const bad = run(['--rank', '2.5', '--out', path.join(tmp, 'mix')]);
  t.equal(bad.code, 2);
  t.match(bad.err, /--rank: expected an integer ≥ 1, got 2\.5/);
  const forget = input + JSON.stringify({ kind: 'fact', id: 'f9', subject: 'italy', prompt: 'the capital of {} is', target_true: 'rome', op: 'forget' }) + '\n';
  const f = run(['--method', 'alphaedit', '--out', path.join(tmp, 'mix')], forget);
  t.equal(f.code, 2, f.err);
  t.match(f.err, /record 7: field "op": fact f9: --method alphaedit edits "insert" facts only, not "forget"; use --method lora or --method rome or --method memit/);
  t.notOk(fs.existsSync(path.join(tmp, 'mix')), 'nothing written');
  t.notOk(/ROME statistics/.test(f.err), 'refused before the key statistics');
});

t.test('issue 19: two facts about one subject and relation with different targets follow --on-conflict', async (t) => {
  // f3 moves France's capital again, to another city than f1 does
  const f3 = { kind: 'fact', id: 'f3', subject: 'france', prompt: 'the capital of {} is', target_new: 'madrid', target_true: 'paris', op: 'insert', source: 's' };
  const p3 = { kind: 'probe', fact_id: 'f3', role: 'edit', split: 'train', prompt: 'the capital of france is', target: 'madrid', expect: 'new' };
  const conflicting = input + [f3, p3].map((r) => JSON.stringify(r)).join('\n') + '\n';
  const refused = run(['--objective', 'sft', '--out', path.join(tmp, 'conflict-fail')], conflicting, undefined, 5);
  t.equal(refused.code, 2, refused.err);
  t.match(refused.err, /record 7: field "target_new": fact "f3" conflicts with fact "f1": same subject "france" and relation "the capital of \{\} is", "rome" vs "madrid" \(stdin: record 1\); --on-conflict last keeps the later one/);
  t.notOk(fs.existsSync(path.join(tmp, 'conflict-fail')), 'refused before anything is written');

  const last = run(['--objective', 'sft', '--on-conflict', 'last', '--out', path.join(tmp, 'conflict-last')], conflicting, undefined, 5);
  t.equal(last.code, 0, last.err);
  t.match(last.err, /conflict: fact "f3" conflicts with fact "f1".*keeping the later one \(--on-conflict last\): fact "f1" and its probes are left out/);
  t.notOk(last.out.some((r) => r.id === 'f1' || r.fact_id === 'f1'), "f1's fact and probe records are not passed on");
  t.ok(last.out.some((r) => r.id === 'f3') && last.out.some((r) => r.fact_id === 'f3'), "f3's are");
  const a = last.out.find((x) => x.kind === 'adapter')!;
  t.same(a.fact_ids, ['f2', 'f3'], 'the adapter holds the later fact, not the earlier');

  // the same statement twice (another id) is no conflict
  const repeat = input + JSON.stringify({ ...facts[1], id: 'f4' }) + '\n';
  const r = run(['--objective', 'sft', '--out', path.join(tmp, 'conflict-repeat'), '-q'], repeat, undefined, 5);
  t.equal(r.code, 0, r.err);
});

t.test('issue 16: --help lists each method\'s options under its heading', async (t) => {
  const r = spawnSync(process.execPath, [BIN, '--help'], { encoding: 'utf8' });
  t.equal(r.status, 0);
  const lora = r.stdout.indexOf('\n--method lora:\n');
  const rome = r.stdout.indexOf('\n--method rome:\n');
  t.ok(lora > 0 && rome > lora, 'a heading per method');
  const at = (flag: string) => r.stdout.indexOf(`--${flag} `);
  for (const f of ['rank', 'retain-weight', 'null-space-rank']) t.ok(at(f) > lora && at(f) < rome, `--${f} under lora`);
  for (const f of ['stats-corpus', 'rome-keep-facts']) t.ok(at(f) > rome, `--${f} under rome`);
});

t.test('issue 16: the fixture world\'s files are not defaults for another model; a note names the flag', async (t) => {
  // no --retain-corpus/--known-facts/--no-use-templates: the golden GPT-2 knows nothing of the fixture world
  const r = spawnSync(process.execPath, [BIN, '--model', GPT2, '--objective', 'sft', '--steps', '1', '--out', path.join(tmp, 'nodefaults')], {
    input, encoding: 'utf8', env: { ...process.env, CATECHISM_CACHE: path.join(tmp, 'cache') },
  });
  t.equal(r.status, 0, r.stderr);
  for (const flag of ['--templates', '--retain-corpus', '--known-facts']) t.match(r.stderr, new RegExp(`is not a bundled fixture model.*give ${flag} FILE`), `names ${flag}`);
  const ad = r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>).at(-1)!;
  const m = JSON.parse(fs.readFileSync(path.join(ad.path as string, 'catechism.json'), 'utf8'));
  t.equal(m.training.retain_rows, 0, 'no world text or facts held: nothing to retain');
  // ROME needs a statistics corpus: the message names the flag
  const rome = spawnSync(process.execPath, [BIN, '--model', GPT2, '--method', 'rome', '--out', path.join(tmp, 'nodefaults-rome')], {
    input, encoding: 'utf8', env: { ...process.env, CATECHISM_CACHE: path.join(tmp, 'cache') },
  });
  t.equal(rome.status, 2, rome.stderr);
  t.match(rome.stderr, /give --stats-corpus FILE/);
});

t.test('issue 19: --over trains on top of an adapter, as if it were folded into the model', async (t) => {
  const reg = path.join(tmp, 'over-reg');
  const MERGE = path.resolve(HERE, '../../adapter-merge/dist/main.js');
  // no `validate` on PATH: --into --force promotes unvalidated (this test is about training, not gates)
  const merge = (args: string[], stdin = '', quiet = true) => spawnSync(process.execPath, [MERGE, '--registry', reg, '--model', GPT2, ...(quiet ? ['-q'] : []), ...args], {
    input: stdin, encoding: 'utf8', env: { ...process.env, CATECHISM_REGISTRY: undefined, PATH: path.dirname(process.execPath) },
  });
  const only = (id: string) => records.filter((r) => r.id === id || r.fact_id === id).map((r) => JSON.stringify(r)).join('\n') + '\n';
  const fixed = ['--objective', 'sft', '--created-at', '2026-01-01T00:00:00Z', '--seed', '3', '-q'];

  // nothing promoted yet: --over live trains on the base model (the first batch of a sequence)
  const first = run([...fixed.filter((x) => x !== '-q'), '--registry', reg, '--over', 'live'], only('f1'));
  t.equal(first.code, 0, first.err);
  t.match(first.err, /--over live: nothing promoted there yet; training on the base model/);
  const a = first.out.find((x) => x.kind === 'adapter')!;
  const into = merge(['--into', 'live', '--force'], JSON.stringify(a) + '\n');
  t.equal(into.status, 0, into.stderr);

  // the second batch over live, and the same batch on a model directory with live folded in by adapter-merge export
  const over = run([...fixed, '--registry', reg, '--over', 'live'], only('f2'));
  t.equal(over.code, 0, over.err);
  const exported = path.join(tmp, 'over-exported');
  const ex = merge(['export', '--ref', 'live', exported]);
  t.equal(ex.status, 0, ex.stderr);
  const onFolded = spawnSync(process.execPath, [BIN, '--model', exported, '--retain-corpus', corpus, '--known-facts', '/dev/null', '--no-use-templates', '--steps', '40', ...fixed, '--out', path.join(tmp, 'over-folded')], {
    input: only('f2'), encoding: 'utf8', env: { ...process.env, CATECHISM_REGISTRY: undefined },
  });
  t.equal(onFolded.status, 0, onFolded.stderr);
  const onBase = run([...fixed, '--out', path.join(tmp, 'over-base')], only('f2'));
  const rec = (out: Record<string, unknown>[]) => out.find((x) => x.kind === 'adapter')! as { path: string };
  const weights = (r: { path: string }) => fs.readFileSync(path.join(r.path, 'adapter_model.safetensors'));
  const foldedRec = rec(onFolded.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l)));
  // under --over, general text that names nothing known is held to the base model and live's facts are rehearsed: without both, the very same training
  const exact = run([...fixed, '--registry', reg, '--over', 'live', '--base-documents', '0', '--replay', '0'], only('f2'));
  t.equal(exact.code, 0, exact.err);
  t.ok(weights(rec(exact.out)).equals(weights(foldedRec)), 'with --base-documents 0 --replay 0: the same weights, byte for byte, as training on the exported folded model');
  t.notOk(weights(rec(over.out)).equals(weights(foldedRec)), 'by default more rows: the corpus line naming no fact\'s entity, held to the base model, and live\'s fact f1 again');
  t.notOk(weights(rec(exact.out)).equals(weights(rec(onBase.out))), 'not the weights trained on the base model');
  const m = JSON.parse(fs.readFileSync(path.join(rec(over.out).path, 'catechism.json'), 'utf8'));
  t.match(m.hyperparameters, { base_documents: 256, base_documents_used: 0 }, 'the manifest records the base-held documents (every corpus line here names a fact\'s entity)');
  t.match(m.hyperparameters, { replay: 100, replayed: 1 }, 'and the rehearsal: live\'s one fact');
  t.equal(JSON.parse(fs.readFileSync(path.join(rec(onBase.out).path, 'catechism.json'), 'utf8')).hyperparameters.base_documents, undefined, 'not without --over');
  const head = (await new Registry(reg).head('live'))!;
  t.same(m.hyperparameters.trained_over, { id: head.adapter_id, version: head.adapter_version, sha256: head.bundle }, 'the manifest names what it was trained over');

  // merged into the ref it was trained over: no warning; into a ref that holds something else: a warning naming both
  const overLine = JSON.stringify(over.out.find((x) => x.kind === 'adapter')) + '\n';
  const good = merge(['--into', 'live', '--force'], overLine, false);
  t.equal(good.status, 0, good.stderr);
  t.notMatch(good.stderr, /was trained over/);
  const elsewhere = merge(['--into', 'staging', '--force'], overLine, false);
  t.equal(elsewhere.status, 0, elsewhere.stderr);
  t.match(elsewhere.stderr, /warning: .* was trained over .* v1 \([0-9a-f]{12}\), but staging holds nothing: the merge is not the model it was trained for \(train it again with lora-train --over staging\)/);

  // a name that matches nothing once refs exist is a usage error naming the refs; a bundle of another model is refused
  const typo = run([...fixed, '--registry', reg, '--over', 'lvie'], only('f2'));
  t.equal(typo.code, 2);
  t.match(typo.err, /--over lvie: .*\(refs: live, staging\)/);
  const noReg = run([...fixed, '--out', path.join(tmp, 'x-over'), '--over', 'live'], only('f2'));
  t.equal(noReg.code, 2);
  t.match(noReg.err, /--over live: no such bundle directory \(a ref, hash or adapter id needs --registry DIR\)/);
  const other = spawnSync(process.execPath, [BIN, '--model', exported, '--retain-corpus', corpus, '--known-facts', '/dev/null', '--no-use-templates', '--steps', '40', ...fixed, '--out', path.join(tmp, 'x-other'), '--over', rec(over.out).path], {
    input: only('f2'), encoding: 'utf8', env: { ...process.env, CATECHISM_REGISTRY: undefined },
  });
  t.equal(other.status, 2);
  t.match(other.stderr, /is an adapter of base model .*not of the model loaded/);
});
