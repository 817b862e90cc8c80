/**
 * Merging bundles on the tiny golden checkpoints: cat merges equal running
 * the adapters together, negation cancels, manifests trace parents, export
 * folds adapters into weights that reproduce the adapted logits.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeSyntheticBundle, readBundle, sha256Hex } from '../src/adapters/index.js';
import { loadLora, loadModel, type ActiveAdapter, type CausalLM } from '../src/models/index.js';
import { exportMerged, loadParent, mergeBundles, scoreAnswer, writeMergedBundle, MergeError } from '../src/merge/index.js';
import { ALPHAEDIT_MEMORY_FILE, bundleMemory, combineMemories, readMemory, serializeMemory, type AlphaEditMemory } from '../src/edit/alphaedit-memory.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const GOLDEN = path.join(ROOT, 'fixtures/golden');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cat-merge-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

const IDS = Int32Array.from([5, 17, 42, 8, 63, 11, 29]);

function logits(model: CausalLM, adapters: ActiveAdapter[]): Float32Array {
  model.setAdapters(adapters);
  const out = model.forward(IDS, [1, IDS.length]).logits.data.slice();
  model.setAdapters([]);
  return out;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

// gpt2 golden: hidden 32, mlp 128, vocab 96, tied head. Synthetic targets are [out, in].
const GPT2_TARGETS = {
  a: { 'transformer.h.0.mlp.c_proj': [32, 128], 'transformer.h.1.attn.c_attn': [96, 32] } as Record<string, [number, number]>,
  b: { 'transformer.h.1.attn.c_attn': [96, 32], 'transformer.h.1.mlp.c_fc': [128, 32] } as Record<string, [number, number]>,
  c: { lm_head: [96, 32], 'transformer.h.0.attn.c_proj': [32, 32] } as Record<string, [number, number]>,
};

async function bundle(name: string, seed: number, targets: Record<string, [number, number]>, rank = 2, extra = {}) {
  const dir = path.join(tmp, name);
  await writeSyntheticBundle(dir, { seed, id: name, rank, targets, pass: true, manifest: extra });
  // synthetic factors are tiny (std 0.02); make their effect visible in the logits
  return loadParent(dir);
}

t.test('cat merge: logits equal running both adapters at once; manifest traces parents', async (t) => {
  const { model } = loadModel(path.join(GOLDEN, 'gpt2'), { tokenizer: false });
  const a = await bundle('a', 1, GPT2_TARGETS.a, 2);
  const b = await bundle('b', 2, GPT2_TARGETS.b, 3);
  for (const ad of [a, b]) for (const m of ad.adapter.modules.values()) m.B.data.forEach((v, i, arr) => (arr[i] = v * 40));
  const merged = mergeBundles([a, b], { method: 'cat', weights: [1, -0.5], author: 'tester', created_at: '2026-01-02T00:00:00.000Z' });
  t.equal(merged.adapter.r, 5);
  const both = logits(model, [{ adapter: a.adapter }, { adapter: b.adapter, scale: -0.5 }]);
  const base = logits(model, []);
  t.ok(maxAbsDiff(both, base) > 1e-3, 'the adapters change the logits (test is meaningful)');
  const viaMerge = logits(model, [{ adapter: merged.adapter }]);
  t.ok(maxAbsDiff(viaMerge, both) < 1e-5, `merged = both at once (${maxAbsDiff(viaMerge, both)})`);
  const m = merged.manifest;
  t.equal(m.method, 'merge-cat');
  t.same(m.parents, [{ id: 'a', sha256: a.sha256 }, { id: 'b', sha256: b.sha256 }]);
  t.same(m.fact_ids, ['a-fact', 'b-fact']);
  t.equal(m.facts.length, 2);
  t.equal(m.probes.length, 2);
  t.equal(m.author, 'tester');
  t.same(m.validation, []);
  const mm = m.merge as { parents: { block: unknown; weight: number; data_sha256: string }[]; parameters: unknown };
  t.same(mm.parents.map((p) => p.block), [{ offset: 0, rank: 2 }, { offset: 2, rank: 3 }]);
  t.same(mm.parameters, { weights: [1, -0.5] });
  t.equal(mm.parents[1].data_sha256, b.manifest.data_sha256);
  t.equal(m.data_sha256, sha256Hex(`${a.manifest.data_sha256}\n${b.manifest.data_sha256}`));
  // written and re-read: a valid bundle, same weights through PEFT loading
  const out = path.join(tmp, 'merged-cat');
  const w = await writeMergedBundle(out, merged);
  const rb = await readBundle(out);
  t.equal(rb.sha256, w.sha256);
  t.equal(rb.adapterConfig.r, 5);
  const again = logits(model, [{ adapter: loadLora(out) }]);
  t.ok(maxAbsDiff(again, both) < 1e-5, 'the written bundle loads and gives the same logits');
});

t.test('cat past full rank (a live that takes a batch every night): re-factored, the same logits, recorded', async (t) => {
  const { model } = loadModel(path.join(GOLDEN, 'gpt2'), { tokenizer: false });
  // every module here has full rank 32 (hidden 32): two rank-20 parents stack to 40
  const targets = { 'transformer.h.0.mlp.c_proj': [32, 128], 'transformer.h.1.mlp.c_fc': [128, 32] } as Record<string, [number, number]>;
  const a = await bundle('big-a', 7, targets, 20);
  const b = await bundle('big-b', 8, targets, 20);
  for (const ad of [a, b]) for (const m of ad.adapter.modules.values()) m.B.data.forEach((v, i, arr) => (arr[i] = v * 40));
  const merged = mergeBundles([a, b], { method: 'cat', created_at: '2026-01-02T00:00:00.000Z' });
  t.equal(merged.adapter.r, 32);
  const both = logits(model, [{ adapter: a.adapter }, { adapter: b.adapter }]);
  t.ok(maxAbsDiff(both, logits(model, [])) > 1e-3, 'the adapters change the logits (test is meaningful)');
  t.ok(maxAbsDiff(logits(model, [{ adapter: merged.adapter }]), both) < 1e-5, 'merged = both at once');
  const mm = merged.manifest.merge as { parents: { block?: unknown }[]; parameters: Record<string, unknown>; energy: Record<string, number> };
  t.same(mm.parameters.compacted, { from: 40, to: 32 });
  t.same(mm.parents.map((p) => p.block), [undefined, undefined], 'no rank blocks to ablate');
  for (const e of Object.values(mm.energy)) t.ok(Math.abs(e - 1) < 1e-9, 'nothing dropped');
});

t.test('negate: an adapter merged with its negation has no effect; svd at full rank equals cat', async (t) => {
  const { model } = loadModel(path.join(GOLDEN, 'gpt2'), { tokenizer: false });
  const a = await bundle('n-a', 5, GPT2_TARGETS.a, 2);
  for (const m of a.adapter.modules.values()) m.B.data.forEach((v, i, arr) => (arr[i] = v * 40));
  const neg = mergeBundles([a], { method: 'negate' });
  t.equal(neg.manifest.method, 'negate');
  t.equal(neg.manifest.id, 'n-a.negate');
  const negDir = path.join(tmp, 'n-a-neg');
  await writeMergedBundle(negDir, neg);
  const negP = await loadParent(negDir);
  const both = mergeBundles([a, negP], { method: 'cat' });
  const base = logits(model, []);
  t.ok(maxAbsDiff(logits(model, [{ adapter: a.adapter }]), base) > 1e-3);
  t.ok(maxAbsDiff(logits(model, [{ adapter: both.adapter }]), base) < 1e-5, 'a + negate(a) = base');
  const svd = mergeBundles([a, negP], { method: 'svd', rank: 4 });
  t.ok(maxAbsDiff(logits(model, [{ adapter: svd.adapter }]), base) < 1e-5, 'svd of a + negate(a) = base');
  for (const e of Object.values((svd.manifest.merge as { energy: Record<string, number> }).energy)) t.equal(e, 1, 'zero matrix: nothing lost');
  const scaled = mergeBundles([a], { method: 'scale', by: 2 });
  const twice = logits(model, [{ adapter: a.adapter, scale: 2 }]);
  t.ok(maxAbsDiff(logits(model, [{ adapter: scaled.adapter }]), twice) < 1e-5, 'scale --by 2');
  const b = await bundle('n-b', 6, GPT2_TARGETS.b, 3);
  const cat = mergeBundles([a, b], { method: 'cat' });
  const full = mergeBundles([a, b], { method: 'svd', rank: 5 });
  t.ok(maxAbsDiff(logits(model, [{ adapter: full.adapter }]), logits(model, [{ adapter: cat.adapter }])) < 1e-5, 'svd full rank = cat');
});

t.test('base model mismatch, bad weights and arity are clear errors', async (t) => {
  const a = await bundle('x-a', 7, GPT2_TARGETS.a);
  const other = await bundle('x-b', 8, GPT2_TARGETS.a, 2, { base_model: { name: 'other-base', sha256: sha256Hex('other') } });
  t.throws(() => mergeBundles([a, other], { method: 'cat' }), /base model mismatch: x-a .* synthetic-base .*x-b .* other-base/);
  t.throws(() => mergeBundles([a, a], { method: 'cat', weights: [1] }), /--weights has 1 value\(s\) but there are 2 adapters/);
  t.throws(() => mergeBundles([a, a], { method: 'negate' }), /negate takes exactly one adapter, got 2/);
  t.throws(() => mergeBundles([a], { method: 'scale' }), /scale needs --by/);
  t.throws(() => mergeBundles([], { method: 'cat' }), MergeError);
  await t.rejects(loadParent(path.join(tmp, 'x-a'), 'f'.repeat(64)), /adapter record says sha256 ffffffffffff/);
  await t.rejects(loadParent(path.join(tmp, 'nope')), /no such bundle directory/);
});

t.test('AlphaEdit key memories: a merge carries them, summed, less any a sibling extends; negation carries none', async (t) => {
  const mem = (edits: number, scale: number, ext?: string): AlphaEditMemory => ({
    dim: 3, edits, cov: new Map([[0, Float64Array.from({ length: 9 }, (_, i) => scale * (i + 1))]]), ...(ext ? { extends: ext } : {}),
  });
  const withKeys = async (name: string, seed: number, m: AlphaEditMemory) => {
    const dir = path.join(tmp, name);
    await writeSyntheticBundle(dir, { seed, id: name, rank: 2, targets: GPT2_TARGETS.a, pass: true });
    fs.writeFileSync(path.join(dir, ALPHAEDIT_MEMORY_FILE), serializeMemory(m).bytes);
    return loadParent(dir);
  };
  const m1 = mem(2, 1);
  const sha1 = serializeMemory(m1).sha256;
  const live = await withKeys('mem-live', 11, m1);
  const next = await withKeys('mem-next', 12, mem(4, 3, sha1)); // trained against live's memory
  const other = await withKeys('mem-other', 13, mem(1, 10)); // trained without it
  const plain = await bundle('mem-plain', 14, GPT2_TARGETS.a);

  const keysOf = (files: Record<string, Uint8Array> | undefined) => {
    if (!files?.[ALPHAEDIT_MEMORY_FILE]) return null;
    const f = path.join(tmp, `keys-${Math.random().toString(16).slice(2)}.safetensors`);
    fs.writeFileSync(f, files[ALPHAEDIT_MEMORY_FILE]);
    return readMemory(f);
  };
  const a = keysOf(mergeBundles([live, next], { method: 'cat' }).files)!;
  t.equal(a.edits, 4, 'live + a batch built on live: the batch\'s memory (4 edits), not 6');
  t.same([...a.cov.get(0)!], [...mem(4, 3).cov.get(0)!]);
  const b = keysOf(mergeBundles([live, other, plain], { method: 'cat' }).files)!;
  t.equal(b.edits, 3, 'independent memories add up; a bundle without one adds nothing');
  t.same([...b.cov.get(0)!], [...mem(0, 11).cov.get(0)!]);
  t.equal(keysOf(mergeBundles([plain], { method: 'cat' }).files), null, 'no parent with a memory: none');
  t.equal(keysOf(mergeBundles([live], { method: 'negate' }).files), null, 'a negation states no new edit: no memory');

  const merged = mergeBundles([live, other], { method: 'cat', created_at: '2026-01-02T00:00:00.000Z' });
  const out = path.join(tmp, 'mem-merged');
  const written = await writeMergedBundle(out, merged);
  t.ok(written.files.some((f) => f.path === ALPHAEDIT_MEMORY_FILE), 'the written bundle lists the memory (it is in the content hash)');
  t.equal(bundleMemory(out)!.edits, 3);

  t.throws(() => combineMemories([{ ...m1, sha256: 'a' }, { ...mem(1, 1), dim: 4, sha256: 'b' }]), /different widths/);
  t.same(combineMemories([{ ...m1, sha256: sha1 }, { ...m1, sha256: sha1 }])?.edits, 2, 'the same memory twice counts once');
});

t.test('export: folded model directories reproduce the adapted logits (gpt2 Conv1D + tied head, llama)', async (t) => {
  for (const arch of ['gpt2', 'llama'] as const) {
    const src = path.join(GOLDEN, arch);
    const { model } = loadModel(src, { tokenizer: false });
    const targets = arch === 'gpt2' ? { ...GPT2_TARGETS.a, ...GPT2_TARGETS.c } : { 'model.layers.0.mlp.down_proj': [32, 64], 'model.layers.1.self_attn.q_proj': [32, 32], lm_head: [96, 32] } as Record<string, [number, number]>;
    const p = await bundle(`exp-${arch}`, 9, targets as Record<string, [number, number]>, 3);
    for (const m of p.adapter.modules.values()) m.B.data.forEach((v, i, arr) => (arr[i] = v * 40));
    const active = [{ adapter: p.adapter, scale: 1.5 }];
    const want = logits(model, active);
    t.ok(maxAbsDiff(want, logits(model, [])) > 1e-3, `${arch}: the adapter matters`);
    const out = path.join(tmp, `export-${arch}`);
    const res = exportMerged(src, model, active, out);
    t.ok(res.files.includes('tokenizer.json'), 'tokenizer copied');
    t.equal(res.untied, arch === 'gpt2', 'a lm_head target unties a tied head');
    const { model: exported } = loadModel(out, { tokenizer: false });
    const got = logits(exported, []);
    t.ok(maxAbsDiff(got, want) < 1e-4, `${arch}: exported logits = adapted logits (${maxAbsDiff(got, want)})`);
    if (arch === 'gpt2') t.same(Array.from(exported.weight('transformer.wte.weight').data.slice(0, 8)), Array.from(model.weight('transformer.wte.weight').data.slice(0, 8)), 'embedding untouched');
    t.throws(() => exportMerged(src, model, active, out), /exists and is not empty/);
  }
});

t.test('scoreAnswer: log-prob of the answer and top-1 follow the adapters', async (t) => {
  const { model } = loadModel(path.join(GOLDEN, 'gpt2'), { tokenizer: false });
  const prompt = [5, 17, 42], answer = [8, 63];
  const s = scoreAnswer(model, [], prompt, answer);
  // reference by hand from the full logits
  const all = model.forward(Int32Array.from([...prompt, ...answer]), [1, 5]).logits.data;
  const V = 96;
  let ref = 0;
  for (const [j, tok] of answer.entries()) {
    const row = all.subarray((2 + j) * V, (3 + j) * V);
    const mx = Math.max(...row);
    const lse = mx + Math.log(row.reduce((acc, v) => acc + Math.exp(v - mx), 0));
    ref += row[tok] - lse;
  }
  t.ok(Math.abs(s.logprob - ref) < 1e-4, `${s.logprob} vs ${ref}`);
  const row0 = all.subarray(2 * V, 3 * V);
  t.equal(s.top1, row0.indexOf(Math.max(...row0)));
});
