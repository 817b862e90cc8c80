/**
 * scripts/train-fixture.mjs end to end on tiny models: it writes a loadable
 * Hugging Face model directory with training.json, and the same seed (and
 * thread count) gives byte-identical weights while another seed does not.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Tokenizer, loadModel } from '../src/models/index.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const SCRIPT = path.join(ROOT, 'scripts/train-fixture.mjs');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cat-train-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

const TINY = ['--hidden', '16', '--layers', '1', '--heads', '2', '--intermediate', '32', '--steps', '4', '--batch', '8',
  '--warmup', '2', '--eval-every', '2', '--eval-sample', '8', '--final-eval', 'sample', '--threads', '1'];

function train(out: string, ...args: string[]): { status: number | null; stderr: string; stdout: string } {
  const r = spawnSync(process.execPath, [SCRIPT, ...TINY, '--out', out, ...args], { encoding: 'utf-8', timeout: 120_000 });
  return { status: r.status, stderr: r.stderr, stdout: r.stdout };
}

t.test('gpt2: a model directory, deterministic under the seed', async (t) => {
  const a = path.join(tmp, 'a');
  const b = path.join(tmp, 'b');
  const c = path.join(tmp, 'c');
  const ra = train(a, '--arch', 'gpt2', '--seed', '3');
  t.equal(ra.status, 0, ra.stderr);
  t.match(ra.stderr, /step 4\/4/, 'progress on stderr');
  t.match(ra.stderr, /eval @2 \(sample\)/, 'periodic evaluation');
  const figures = JSON.parse(ra.stdout);
  t.ok(figures.general_ppl > 1, 'figures on stdout');
  for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'training.json']) {
    t.ok(fs.existsSync(path.join(a, f)), f);
  }
  const cfg = JSON.parse(fs.readFileSync(path.join(a, 'config.json'), 'utf-8'));
  t.equal(cfg.model_type, 'gpt2');
  t.equal(cfg.n_embd, 16);
  const tr = JSON.parse(fs.readFileSync(path.join(a, 'training.json'), 'utf-8'));
  t.equal(tr.seed, 3);
  t.equal(tr.steps, 4);
  t.match(tr.command, /train-fixture\.mjs .*--seed 3/);
  t.ok(tr.wall_seconds.train > 0);
  const m = loadModel(a);
  t.equal(m.model.config.hidden, 16);

  t.equal(train(b, '--arch', 'gpt2', '--seed', '3').status, 0);
  t.ok(fs.readFileSync(path.join(a, 'model.safetensors')).equals(fs.readFileSync(path.join(b, 'model.safetensors'))), 'same seed → identical weights');
  t.equal(train(c, '--arch', 'gpt2', '--seed', '4').status, 0);
  t.notOk(fs.readFileSync(path.join(a, 'model.safetensors')).equals(fs.readFileSync(path.join(c, 'model.safetensors'))), 'another seed → other weights');
});

t.test('mixtral: trains with the load-balancing loss and loads', async (t) => {
  const d = path.join(tmp, 'moe');
  const r = train(d, '--arch', 'mixtral', '--seed', '1', '--experts', '4', '--top-k', '2');
  t.equal(r.status, 0, r.stderr);
  t.match(r.stderr, /aux \d/);
  const m = loadModel(d);
  t.equal(m.model.config.modelType, 'mixtral');
  t.equal(m.model.config.experts, 4);
  t.equal(m.model.config.expertsPerTok, 2);
});

t.test('usage errors exit 2 with a message', async (t) => {
  const r = spawnSync(process.execPath, [SCRIPT, '--arch', 'bert', '--out', path.join(tmp, 'x')], { encoding: 'utf-8' });
  t.equal(r.status, 2);
  t.match(r.stderr, /--arch must be gpt2 or mixtral/);
  const r2 = spawnSync(process.execPath, [SCRIPT, '--arch', 'gpt2', '--out', path.join(tmp, 'x'), '--steps', 'many'], { encoding: 'utf-8' });
  t.equal(r2.status, 2);
  t.match(r2.stderr, /--steps must be an integer/);
});

t.test('--context-repeat: the context documents K times per epoch; a fraction spreads the extra copies evenly', async (t) => {
  const { loadCorpus } = await import(path.join(ROOT, 'scripts/train/data.mjs'));
  const world = path.join(ROOT, 'fixtures/world');
  const tok = Tokenizer.load(world);
  const eos = tok.tokenToId('<|endoftext|>')!;
  const corpus = (r: number) => loadCorpus(world, tok, eos, 64, { contextRepeat: r });
  const one = corpus(1);
  const two = corpus(2);
  const half = corpus(1.5);
  t.ok(one.contextDocs > 100, `${one.contextDocs} context documents`);
  t.equal(two.docs.length, one.docs.length + one.contextDocs, '×2: each context document once more');
  t.equal(half.docs.length, one.docs.length + Math.floor(one.contextDocs / 2), '×1.5: every other one once more');
  // copies follow their document: ×1.5 adds one directly repeated document per extra copy
  const same = (a: Int32Array, b: Int32Array) => a.length === b.length && a.every((v, i) => v === b[i]);
  const repeats = (docs: Int32Array[]) => docs.filter((d, i) => i > 0 && same(d, docs[i - 1])).length;
  t.equal(repeats(half.docs) - repeats(one.docs), Math.floor(one.contextDocs / 2), 'each extra copy right after its document');
});
