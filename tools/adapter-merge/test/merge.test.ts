/**
 * Merging through real child processes: adapter records in (stdin or files),
 * one merged bundle and its record out; --into with a pluggable validator;
 * explain and export on the tiny golden GPT-2.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, readFileSync, existsSync, cpSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeSyntheticBundle, sha256Hex } from '../src/core.js';
import { adapterDelta } from '../src/merge-lib.js';
import { loadLora, loadModel } from '@catechism/core/models';
import { modelSha256 } from '@catechism/core/edit';

const here = path.dirname(fileURLToPath(import.meta.url));
const MAIN = path.join(here, '..', 'dist', 'main.js');
const GPT2 = path.resolve(here, '../../../fixtures/golden/gpt2');
const tmp = mkdtempSync(path.join(tmpdir(), 'cat-amm-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));
const REG = path.join(tmp, 'reg');
const FAKE = path.join(here, '..', 'test-support', 'fake-validator.mjs');
/** A validator command: the fake validator with these arguments (reports bound to the bundle it reads). */
const fake = (...args: string[]) => [process.execPath, FAKE, ...args].map((x) => `'${x}'`).join(' ');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  records: Record<string, unknown>[];
}

function am(args: string[], input = ''): Run {
  // a PATH without any `validate`, so "no validator" is deterministic
  const r = spawnSync(process.execPath, [MAIN, ...args, '--registry', REG], { input, cwd: tmp, env: { ...process.env, USER: 'tester', PATH: '/usr/bin:/bin' } });
  const stdout = r.stdout.toString('utf8');
  const records = stdout.trim().startsWith('{') ? stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>) : [];
  return { code: r.status, stdout, stderr: r.stderr.toString('utf8'), records };
}

function fails(t: Tap.Test, r: Run, code: number, re: RegExp): void {
  t.equal(r.code, code, `exit ${code}: ${r.stderr}`);
  const lines = r.stderr.trim().split('\n');
  t.match(lines[lines.length - 1], /^adapter-merge: /);
  t.match(r.stderr, re);
  t.notMatch(r.stderr, /\n\s+at /, 'no stack trace');
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

const TARGETS = {
  a: { 'transformer.h.0.mlp.c_proj': [32, 128], 'transformer.h.1.attn.c_attn': [96, 32] } as Record<string, [number, number]>,
  b: { 'transformer.h.1.attn.c_attn': [96, 32] } as Record<string, [number, number]>,
};
const dirs: Record<string, string> = {};
const shas: Record<string, string> = {};
/** Adapter records naming bundle directories (not in any registry). */
const rec = (name: string) =>
  JSON.stringify({ kind: 'adapter', id: name, version: 1, path: dirs[name], sha256: shas[name], method: 'lora', base_model: { name: 'synthetic-base', sha256: sha256Hex('synthetic-base') }, targets: ['x'], rank: 2, fact_ids: [`${name}-fact`], created_at: '2026-01-01T00:00:00.000Z' });

t.before(async () => {
  const mk = async (name: string, seed: number, targets: Record<string, [number, number]>, rank: number, extra = {}) => {
    dirs[name] = path.join(tmp, name);
    shas[name] = (await writeSyntheticBundle(dirs[name], { seed, id: name, rank, targets, pass: true, manifest: extra })).sha256;
  };
  await mk('a', 1, TARGETS.a, 2);
  await mk('b', 2, TARGETS.b, 3);
  await mk('c', 3, TARGETS.b, 2);
  await mk('d', 5, TARGETS.b, 2);
  await mk('other', 4, TARGETS.b, 2, { base_model: { name: 'other-base', sha256: sha256Hex('other-base') } });
});

t.test('cat from stdin: exact ΔW, parents with hashes, facts, other records pass through in order', async (t) => {
  const out = path.join(tmp, 'm-cat');
  const fact = JSON.stringify({ kind: 'fact', id: 'f1', subject: 'S', prompt: '{} is', target_new: 'x' });
  const r = am(['--method', 'cat', '--weights', '2,-1', '--out', out], [fact, rec('a'), rec('b')].join('\n') + '\n');
  t.equal(r.code, 0, r.stderr);
  t.same(r.records.map((x) => x.kind), ['fact', 'adapter'], 'the fact passes through first, then the merged adapter');
  const m = r.records[1];
  t.equal(m.method, 'merge-cat');
  t.equal(m.rank, 5);
  t.same(m.parents, [shas.a, shas.b]);
  t.same(m.fact_ids, ['a-fact', 'b-fact']);
  t.equal(m.path, out);
  const manifest = JSON.parse(readFileSync(path.join(out, 'catechism.json'), 'utf8'));
  t.same(manifest.parents, [{ id: 'a', sha256: shas.a }, { id: 'b', sha256: shas.b }]);
  t.same(manifest.merge.parameters, { weights: [2, -1] });
  t.equal(manifest.author, 'tester');
  const merged = loadLora(out), la = loadLora(dirs.a), lb = loadLora(dirs.b);
  const mod = 'transformer.h.1.attn.c_attn';
  const want = adapterDelta(la, mod, 2).data.map((v, i) => v + adapterDelta(lb, mod, -1).data[i]);
  t.ok(maxAbsDiff(adapterDelta(merged, mod).data, want) < 1e-6, 'ΔW = 2·ΔWa − ΔWb');
  t.ok(maxAbsDiff(adapterDelta(merged, 'transformer.h.0.mlp.c_proj').data, adapterDelta(la, 'transformer.h.0.mlp.c_proj', 2).data) < 1e-6, 'module only in a is kept');
});

t.test('svd reports the energy kept (stderr and record); full rank keeps all of it; --add stores it', async (t) => {
  const input = [rec('a'), rec('b')].join('\n');
  const low = am(['--method', 'svd', '--rank', '2', '--out', path.join(tmp, 'm-svd2')], input);
  t.equal(low.code, 0, low.stderr);
  t.match(low.stderr, /energy kept at rank 2: transformer\.h\.0\.mlp\.c_proj \d+\.\d+%, transformer\.h\.1\.attn\.c_attn \d+\.\d+%/);
  const e = (low.records[0].merge as { energy: Record<string, number> }).energy;
  t.ok(e['transformer.h.1.attn.c_attn'] > 0.3 && e['transformer.h.1.attn.c_attn'] < 1, 'rank 2 of 5 loses some energy');
  t.equal(e['transformer.h.0.mlp.c_proj'], 1, 'a module of rank 2 fits entirely');
  const full = am(['--method', 'svd', '--rank', '5', '--add'], input);
  t.equal(full.code, 0, full.stderr);
  for (const v of Object.values((full.records[0].merge as { energy: Record<string, number> }).energy)) t.ok(Math.abs(v - 1) < 1e-9);
  t.match(String(full.records[0].path), new RegExp(`^${REG}/objects/`));
  const shown = am(['show', String(full.records[0].sha256)]);
  t.equal(shown.code, 0, shown.stderr);
});

t.test('dare is deterministic under --seed; negate cancels', async (t) => {
  const input = [rec('a'), rec('b')].join('\n');
  const run = (seed: string, out: string) => am(['--method', 'dare', '--drop', '0.5', '--rank', '5', '--seed', seed, '--out', path.join(tmp, out)], input);
  t.equal(run('3', 'd1').code, 0);
  t.equal(run('3', 'd2').code, 0);
  t.equal(run('4', 'd3').code, 0);
  const w = (d: string) => readFileSync(path.join(tmp, d, 'adapter_model.safetensors'));
  t.ok(w('d1').equals(w('d2')), 'same seed, same weights');
  t.notOk(w('d1').equals(w('d3')), 'another seed, other weights');
  const neg = am(['--method', 'negate', '--out', path.join(tmp, 'a-neg')], rec('a'));
  t.equal(neg.code, 0, neg.stderr);
  t.equal(neg.records[0].method, 'negate');
  const both = am(['--method', 'cat', '--out', path.join(tmp, 'a-plus-neg')], [rec('a'), JSON.stringify(neg.records[0])].join('\n'));
  t.equal(both.code, 0, both.stderr);
  const z = loadLora(path.join(tmp, 'a-plus-neg'));
  for (const mod of z.targets()) t.ok(maxAbsDiff(adapterDelta(z, mod).data, new Float64Array(z.modules.get(mod)!.B.shape[0] * z.modules.get(mod)!.A.shape[1])) < 1e-7, `${mod}: a + negate(a) = 0`);
});

t.test('bad input: mismatched base model, missing bundle, bad flags exit 2 with clear messages', async (t) => {
  fails(t, am(['--method', 'cat', '--out', path.join(tmp, 'bad1')], [rec('a'), rec('other')].join('\n')), 2, /base model mismatch: a .*synthetic-base.* other .*other-base/);
  const missing = JSON.stringify({ ...JSON.parse(rec('a')), path: path.join(tmp, 'nowhere'), sha256: 'ab'.repeat(32) });
  fails(t, am(['--method', 'cat', '--out', path.join(tmp, 'bad2')], missing), 2, /stdin: record 1: adapter a: bundle not found \(no bundle directory .*nowhere; no object abababababab/);
  fails(t, am(['--method', 'cat', '--weights', '1', '--out', path.join(tmp, 'bad3')], [rec('a'), rec('b')].join('\n')), 2, /--weights has 1 value\(s\) but there are 2 adapters/);
  fails(t, am(['--method', 'svd', '--out', path.join(tmp, 'bad4')], rec('a')), 2, /--method svd needs --rank R/);
  fails(t, am(['--method', 'negate', '--out', path.join(tmp, 'bad5')], [rec('a'), rec('b')].join('\n')), 2, /negate takes exactly one adapter, got 2/);
  fails(t, am(['--method', 'cat', '--out', path.join(tmp, 'bad6')], JSON.stringify({ kind: 'fact', id: 'f', subject: 's', prompt: '{}', target_new: 'x' })), 2, /no adapter records in stdin/);
  fails(t, am(['--method', 'cat', '--out', dirs.a], rec('a')), 2, /already exists/);
  t.notOk(existsSync(path.join(tmp, 'bad1')), 'nothing written on failure');
});

t.test('--into: refuses without a validator (unless --force), promotes on a passing report, consolidates with what REF holds', async (t) => {
  const noVal = am(['--into', 'live'], [rec('a'), rec('b')].join('\n'));
  fails(t, noVal, 1, /no validator available .* stored as [0-9a-f]{12} but NOT promoted to live; pass --validator CMD, or --force/);
  t.equal(am(['log', 'live']).code, 2, 'live was not created');
  fails(t, am(['--into', 'live', '--validator', fake('fail')], [rec('a'), rec('b')].join('\n')), 1, /refusing to promote .* its latest validation report failed/);
  t.equal(am(['log', 'live']).code, 2, 'a failing report promotes nothing');
  // a validator's report counts only when it names the merged bundle and its base model
  const forged = `cat >/dev/null; echo '{"kind":"report","adapter_id":"live","pass":true}'`;
  fails(t, am(['--into', 'live', '--validator', forged], [rec('a'), rec('b')].join('\n')), 1, /wrote a report that does not count: .* names no bundle .* NOT promoted/);
  fails(t, am(['--into', 'live', '--validator', fake('pass', '--other-bundle')], [rec('a'), rec('b')].join('\n')), 1, /does not count: .* about bundle 000000000000, not this one/);
  t.equal(am(['log', 'live']).code, 2, 'a report about another bundle promotes nothing');
  // the validator reads the adapter record and may inspect the bundle
  const passing = fake('pass');
  const ok = am(['--into', 'live', '--validator', passing, '-m', 'nightly'], [rec('a'), rec('b')].join('\n'));
  t.equal(ok.code, 0, ok.stderr);
  t.same(ok.records.map((x) => x.kind), ['adapter', 'report', 'ref_event']);
  const v1 = ok.records[0];
  t.equal(v1.id, 'live');
  t.equal(v1.version, 1);
  t.equal((ok.records[2] as { action: string }).action, 'promote');
  // consolidation: live (a+b) merged with c; a and b again are skipped (already in live)
  const next = am(['--into', 'live', '--validator', passing], [rec('a'), rec('c')].join('\n'));
  t.equal(next.code, 0, next.stderr);
  t.match(next.stderr, /a \([0-9a-f]{12}\) is already in live or in the merge; skipped/);
  const v2 = next.records[0];
  t.equal(v2.version, 2);
  t.same(v2.parents, [v1.sha256, shas.c]);
  t.equal(v2.rank, 7, 'cat: rank of live (5) + c (2)');
  const log = am(['log', 'live']);
  t.same(log.records.map((e) => e.bundle), [v1.sha256, v2.sha256]);
  // nothing new: nothing happens (c is a parent of live v2; a is a parent of its parent live v1)
  const same = am(['--into', 'live', '--validator', passing], [rec('c'), rec('a')].join('\n'));
  t.equal(same.code, 0);
  t.match(same.stderr, /no new adapters for live; nothing to do/);
  // another writer moves live while we validate: we must not promote over its change
  const sneaky = `tee /tmp/sneaky-$$ >/dev/null; "${process.execPath}" "${MAIN}" promote live "${dirs.c}" --force --registry "${REG}" >/dev/null 2>&1; ${fake('pass')} < /tmp/sneaky-$$; rm -f /tmp/sneaky-$$`;
  fails(t, am(['--into', 'live', '--validator', sneaky], rec('d')), 1, /live moved while merging \(it was [0-9a-f]{12}, now [0-9a-f]{12}\); [0-9a-f]{12} is stored but NOT promoted/);
  const after = am(['log', 'live']).records;
  t.equal(after.length, 3, 'only the other writer\'s promotion was recorded');
  t.equal(after[2].bundle, shas.c);
  // --force without a validator is logged as such
  const forced = am(['--into', 'canary', '--force'], rec('b'));
  t.equal(forced.code, 0, forced.stderr);
  t.equal(forced.records[forced.records.length - 1].action, 'force');
  t.match(String(forced.records[forced.records.length - 1].forced_over), /no validation report/);
});

t.test('explain and export on the golden GPT-2', async (t) => {
  // the synthetic bundles were not made for GPT2 (base-model checks: next test)
  const model = ['--model', GPT2, '--force'];
  const ex = am(['explain', '--ref', 'live@2', 'hello world', ...model]);
  t.equal(ex.code, 0, ex.stderr);
  const e = ex.records[0] as { kind: string; contributions: { id: string; ablation: string; delta_logprob: number; fact_ids: string[] }[]; adapted: { logprob: number }; base: { logprob: number } };
  t.equal(e.kind, 'explain');
  t.same(e.contributions.map((c) => c.id), ['live', 'c'], 'live v2 = (live v1, c)');
  t.match(e.contributions[0].ablation, /rank block 0\.\.4 zeroed/);
  t.same(e.contributions[1].fact_ids, ['c-fact']);
  for (const c of e.contributions) t.type(c.delta_logprob, 'number');
  const txt = am(['explain', '--ref', 'live@1', 'hello', '--target', 'lo', '--text', ...model]);
  t.equal(txt.code, 0, txt.stderr);
  t.match(txt.stdout, /answer "lo"/);
  t.match(txt.stdout, /a v1 [0-9a-f]{12} facts a-fact/);
  // words the tokenizer cannot spell: a --target is refused (it would be scored as <unk>), a prompt warned about
  fails(t, am(['explain', '--ref', 'live@1', 'hello', '--target', 'Paris', ...model]), 2, /--target: the model's tokenizer cannot spell "Paris"/);
  const warned = am(['explain', '--ref', 'live@1', 'Hello World', ...model]);
  t.equal(warned.code, 0, warned.stderr);
  t.match(warned.stderr, /warning: 2 word\(s\) of the prompt are unknown to the model's tokenizer \("Hello", "World"\)/);
  const out = path.join(tmp, 'exported');
  const xp = am(['export', '--ref', 'live@2', out, ...model]);
  t.equal(xp.code, 0, xp.stderr);
  t.same((xp.records[0].files as string[]).slice(0, 3), ['config.json', 'model.safetensors', 'tokenizer.json']);
  // the exported model's logits equal the base model running live's adapter
  const ids = Int32Array.from([3, 14, 15, 92, 65]);
  const { model: exported } = loadModel(out, { tokenizer: false });
  const { model: baseModel } = loadModel(GPT2, { tokenizer: false });
  baseModel.setAdapters([{ adapter: loadLora(String(am(['show', 'live@2']).records[0].path)) }]);
  const want = baseModel.forward(ids, [1, 5]).logits.data;
  const got = exported.forward(ids, [1, 5]).logits.data;
  t.ok(maxAbsDiff(got, want) < 1e-4, `exported logits = adapted logits (${maxAbsDiff(got, want)})`);
  fails(t, am(['export', '--ref', 'live@2', out, ...model]), 2, /exists and is not empty/);
  fails(t, am(['explain', '--ref', 'nosuchref', 'x', ...model]), 2, /nothing in .* matches "nosuchref"/);
  // an svd merge of stored parents: each parent is ablated by subtracting it (approximate, and said so)
  const added = am(['add', dirs.a, dirs.b]);
  t.equal(added.code, 0, added.stderr);
  const svd = am(['--method', 'svd', '--rank', '3', '--add'], added.stdout);
  t.equal(svd.code, 0, svd.stderr);
  const ex2 = am(['explain', '--ref', String(svd.records[0].sha256), 'hello', ...model]);
  t.equal(ex2.code, 0, ex2.stderr);
  const c2 = (ex2.records[0] as { contributions: { id: string; ablation: string; delta_logprob: number | null }[] }).contributions;
  t.same(c2.map((c) => c.id), ['a', 'b']);
  for (const c of c2) {
    t.match(c.ablation, /parent subtracted \(approximate: the svd merge is not linear\)/);
    t.type(c.delta_logprob, 'number');
  }
  // a cat merge past full rank (two rank-20 parents on c_attn, 96 × 32): re-factored at 32, so its parents
  // have no rank blocks and are subtracted, which is exact for cat
  for (const [name, seed] of [['big1', 11], ['big2', 12]] as const) {
    dirs[name] = path.join(tmp, name);
    shas[name] = (await writeSyntheticBundle(dirs[name], { seed, id: name, rank: 20, targets: TARGETS.b, pass: true })).sha256;
  }
  const bigAdded = am(['add', dirs.big1, dirs.big2]);
  t.equal(bigAdded.code, 0, bigAdded.stderr);
  const cat = am(['--add'], bigAdded.stdout);
  t.equal(cat.code, 0, cat.stderr);
  t.equal(cat.records[0].rank, 32, 'rank 40 stacked, re-factored at the full rank 32');
  const ex3 = am(['explain', '--ref', String(cat.records[0].sha256), 'hello', ...model]);
  t.equal(ex3.code, 0, ex3.stderr);
  const c3 = (ex3.records[0] as { contributions: { id: string; ablation: string; delta_logprob: number | null }[] }).contributions;
  t.same(c3.map((c) => c.id), ['big1', 'big2']);
  for (const c of c3) {
    t.match(c.ablation, /parent subtracted \(exact up to rounding: the cat merge was re-factored at full rank/);
    t.type(c.delta_logprob, 'number');
  }
});

t.test('explain and export refuse a model other than the adapter\'s base model, unless --force', async (t) => {
  const gpt2Sha = modelSha256(GPT2);
  const synth = sha256Hex('synthetic-base');
  // a bundle made for GPT2 (its recorded base hash is GPT2's weights' hash) and one made for another model
  dirs.g = path.join(tmp, 'g');
  shas.g = (await writeSyntheticBundle(dirs.g, { seed: 7, id: 'g', rank: 2, targets: TARGETS.b, pass: true, manifest: { base_model: { name: GPT2, sha256: gpt2Sha } } })).sha256;
  t.equal(am(['promote', 'gpt2-ref', dirs.g]).code, 0);
  t.equal(am(['promote', 'other-ref', dirs.c]).code, 0);
  const model = ['--model', GPT2];
  const ok = am(['explain', '--ref', 'gpt2-ref', 'hello', ...model]);
  t.equal(ok.code, 0, ok.stderr);
  t.notMatch(ok.stderr, /warning/);
  // and with no --model: the recorded base_model.name is a model directory, so it is used
  const implicit = am(['explain', '--ref', 'gpt2-ref', 'hello']);
  t.equal(implicit.code, 0, implicit.stderr);
  const want = new RegExp(`adapter c v1 \\(${shas.c.slice(0, 12)}\\) was made for base model synthetic-base \\(sha256 ${synth}\\), but the model ${GPT2.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} has sha256 ${gpt2Sha}; pass its base model with --model DIR, or --force`);
  fails(t, am(['explain', '--ref', 'other-ref', 'hello', ...model]), 2, want);
  const out = path.join(tmp, 'exported-other');
  fails(t, am(['export', '--ref', 'other-ref', out, ...model]), 2, want);
  t.notOk(existsSync(out), 'nothing exported');
  const forced = am(['export', '--ref', 'other-ref', out, ...model, '--force']);
  t.equal(forced.code, 0, forced.stderr);
  t.match(forced.stderr, /warning: adapter c v1 .* has sha256 [0-9a-f]{64}; going on because of --force/);
  t.ok(existsSync(path.join(out, 'model.safetensors')));
  const xg = am(['export', '--ref', 'gpt2-ref', path.join(tmp, 'exported-g'), ...model]);
  t.equal(xg.code, 0, xg.stderr);
});

t.test('--validator-timeout: a validator that hangs is stopped, nothing is promoted, exit 1', async (t) => {
  const pidfile = path.join(tmp, 'hang.pid');
  const before = am(['log', 'live']).records.length;
  const t0 = Date.now();
  const r = am(['--into', 'live', '--validator', `sleep 300 & ${fake('pass', '--hang', '--pidfile', pidfile)}`, '--validator-timeout', '3'], rec('d'));
  const secs = (Date.now() - t0) / 1000;
  fails(t, r, 1, /validator ".*" did not finish within 3 s \(--validator-timeout\); it was stopped; nothing promoted/);
  t.ok(secs < 30, `it gave up after the timeout, not after the validator (${secs.toFixed(1)} s)`);
  t.equal(am(['log', 'live']).records.length, before, 'live did not move');
  const pid = Number(readFileSync(pidfile, 'utf8').trim());
  // Dead, or a zombie nobody reaped yet (an orphan's reaper here may be slow or absent): poll a few seconds.
  const alive = (): boolean => {
    try {
      process.kill(pid, 0);
    } catch {
      return false;
    }
    try {
      return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
    } catch {
      return false;
    }
  };
  for (let i = 0; i < 50 && alive(); i++) await new Promise((r) => setTimeout(r, 100));
  t.notOk(alive(), 'the hung validator was killed');
  fails(t, am(['--into', 'live', '--validator-timeout', '-1'], rec('d')), 2, /--validator-timeout: expected seconds/);
});

t.test('export refuses a base model without a tokenizer (the export would be unusable)', async (t) => {
  const noTok = path.join(tmp, 'gpt2-no-tokenizer');
  cpSync(GPT2, noTok, { recursive: true });
  unlinkSync(path.join(noTok, 'tokenizer.json'));
  const out = path.join(tmp, 'exported-notok');
  fails(t, am(['export', '--ref', 'gpt2-ref', out, '--model', noTok]), 2, /export: the base model .*gpt2-no-tokenizer has no tokenizer\.json/);
  t.notOk(existsSync(out), 'nothing written');
});
