/**
 * validate through real child processes (built dist/main.js) on the golden
 * GPT-2 checkpoint: a closed-form rank-one edit passes the default gates, a
 * random large LoRA fails them, metrics match a direct computation, the base
 * model alone has efficacy 0 on counterfactuals (fed by probe-gen through a
 * pipe), --strict/--gate exit codes, history appends, and the HTML page.
 */
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { probeGenIntoValidate } from './support/pipe.js';
import { loadModel, loadLora } from '@catechism/core/models';
import { noGrad } from '@catechism/core/tensor';
import { Registry } from '@catechism/core/registry';
import { encodePair } from '@catechism/core/metrics';
import { modelSha256 } from '@catechism/core/edit';
import { rankOneHeadEdit, randomLora, writeAdapterBundle } from './support/edits.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../../..');
const MAIN = path.resolve(here, '../dist/main.js');
const PROBE_GEN = path.resolve(root, 'tools/probe-gen/dist/main.js');
const MODEL = path.join(root, 'fixtures/golden/gpt2');

if (!existsSync(MAIN)) throw new Error(`${MAIN} is missing: build first (npx turbo run build)`);

const tmp = mkdtempSync(path.join(os.tmpdir(), 'validate-cli-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));

const { model, tokenizer } = loadModel(MODEL);
const tok = tokenizer!;
const V = model.config.vocabSize;

function nextLogprobs(ids: number[]): Float64Array {
  const { logits } = noGrad(() => model.forward(Int32Array.from(ids), [1, ids.length]));
  const row = Array.from(logits.data.subarray((ids.length - 1) * V, ids.length * V));
  const m = Math.max(...row);
  const lse = m + Math.log(row.reduce((s, x) => s + Math.exp(x - m), 0));
  return Float64Array.from(row, (x) => x - lse);
}
const argmax = (a: ArrayLike<number>): number => {
  let b = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[b]) b = i;
  return b;
};

const fact = { id: 'cap-fr', subject: 'france', prompt: 'the capital of {} is', target_new: 'rome', target_true: 'paris', op: 'insert' };
const general = [
  'the city of paris is in france .', 'the language of spain is spain .', 'the eiffel tower is in paris .', 'the colosseum is in rome .',
  'madrid is the capital of spain .', 'the capital of italy is rome .', 'rome is a city in italy .', 'the language of france is french .',
];
// keys for C: general text plus prompts of the same shape about other subjects (ROME estimates C on broad text)
const covariance = [...general, 'the capital of spain is', 'the capital of italy is', 'the language of france is', 'the language of italy is', 'the city of rome is', 'the city of madrid is', 'the eiffel tower is in', 'the colosseum is in'];
const neighbours = ['the capital of spain is', 'the capital of italy is'];
const probes = neighbours.map((prompt) => ({ kind: 'probe', fact_id: 'cap-fr', role: 'neighborhood', split: 'test', prompt, expect: 'unchanged' }));
const retain: Array<[string, string]> = [['the capital of italy is', 'rome'], ['the capital of spain is', 'madrid'], ['the eiffel tower is in', 'paris'], ['the language of spain is', 'spain'], ['the colosseum is in', 'rome'], ['madrid is a city in', 'spain']];
const RETAIN = path.join(tmp, 'retain.ndjson');
const GENERAL = path.join(tmp, 'general.ndjson');
writeFileSync(RETAIN, retain.map(([p, tg], i) => JSON.stringify({ kind: 'probe', fact_id: `r${i}`, role: 'edit', split: 'test', prompt: p, target: tg, expect: 'true' })).join('\n') + '\n');
writeFileSync(GENERAL, general.map((g, i) => JSON.stringify({ kind: 'probe', id: `g${i}`, role: 'general', split: 'test', prompt: g, expect: 'unchanged' })).join('\n') + '\n');
const COMMON = ['--model', MODEL, '--retain', RETAIN, '--general', GENERAL];

const goodLora = rankOneHeadEdit(model, tok, fact, { covarianceTexts: covariance, margin: 1, ridge: 0.001 });
const badLora = randomLora(model, 'bad', 3, { std: 1 });
const GOOD = path.join(tmp, 'good');
const BAD = path.join(tmp, 'bad');
// validate refuses a bundle made for other weights: these are made for the golden model
const BASE = { base_model: { name: MODEL, sha256: modelSha256(MODEL) } };
const goodRec = writeAdapterBundle(GOOD, goodLora, [fact], probes, BASE);
const badRec = writeAdapterBundle(BAD, badLora, [fact], probes, { id: 'bad', ...BASE });
const ADAPTERS = path.join(tmp, 'adapters.ndjson');
writeFileSync(ADAPTERS, JSON.stringify(goodRec) + '\n' + JSON.stringify(badRec) + '\n');

function run(args: string[], input = '') {
  const r = spawnSync(process.execPath, [MAIN, ...args], { input, cwd: tmp, encoding: 'utf8' });
  const records = r.stdout.split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as Record<string, any>);
  return { code: r.status, stderr: r.stderr, records, reports: records.filter((x) => x.kind === 'report') };
}

t.test('a good edit passes the default gates, a random large LoRA fails specificity', async (t) => {
  const r = run([ADAPTERS, ...COMMON, '--no-record']);
  t.equal(r.code, 0, r.stderr);
  t.same(r.records.map((x) => (x.kind === 'adapter' ? x.id : x.kind === 'report' ? `report:${x.adapter_id}` : x.kind)),
    ['cap-fr', 'report:cap-fr', 'bad', 'report:bad'], 'each adapter record comes back, in order, followed by its report');
  t.equal(r.reports.length, 2);
  const [good, bad] = r.reports;
  t.equal(good.adapter_id, 'cap-fr');
  t.equal(good.pass, true, JSON.stringify(good.failures));
  t.same(good.failures, []);
  t.equal(good.metrics.efficacy, 1);
  t.equal(good.metrics.specificity, 1);
  t.equal(bad.pass, false);
  t.ok(bad.failures.some((f: string) => f.startsWith('kl ')), 'KL gate fails');
  t.ok(bad.failures.some((f: string) => f.startsWith('specificity ')), 'neighbourhood gate fails');
  t.ok(bad.failures.length >= 3);
  for (const rep of r.reports) {
    t.type(rep.created_at, 'string');
    t.ok(rep.metrics.adapter_bytes > 0);
    t.ok(rep.metrics.eval_seconds > 0);
    t.ok(rep.metrics.peak_rss_mib > 10);
    t.same(Object.keys(rep.thresholds).sort(), rep.gates.map((g: string) => /^[a-z0-9_]+/.exec(g)![0]).sort());
  }

  // independent recomputation, in this process, from model.forward logits
  const { prompt, cont } = encodePair(tok, 'the capital of france is', 'rome');
  const alt = encodePair(tok, 'the capital of france is', 'paris').cont;
  for (const [rep, dir] of [[good, GOOD], [bad, BAD]] as const) {
    model.setAdapters([{ adapter: loadLora(dir) }]);
    const lp = nextLogprobs(prompt);
    t.equal(rep.metrics.efficacy, argmax(lp) === cont[0] ? 1 : 0, `${rep.adapter_id} efficacy`);
    t.ok(Math.abs(rep.metrics.p_new - Math.exp(lp[cont[0]])) < 1e-5, `${rep.adapter_id} P(new)`);
    t.equal(rep.metrics.efficacy_prob, lp[cont[0]] > lp[alt[0]] ? 1 : 0);
    let kl = 0;
    for (const [p] of retain) {
      const ids = tok.encode(p);
      model.setAdapters([{ adapter: loadLora(dir) }]);
      const q = nextLogprobs(ids);
      model.setAdapters([]);
      const b = nextLogprobs(ids);
      for (let v = 0; v < V; v++) kl += Math.exp(b[v]) * (b[v] - q[v]);
    }
    t.ok(Math.abs(rep.metrics.kl - kl / retain.length) < 1e-5, `${rep.adapter_id} KL ${rep.metrics.kl} vs ${kl / retain.length}`);
    model.setAdapters([]);
  }
});

t.test('--strict exits 3 when an adapter fails; --gate overrides and is parsed strictly', async (t) => {
  t.equal(run([ADAPTERS, ...COMMON, '--no-record', '--strict', '-q']).code, 3);
  const onlyGood = path.join(tmp, 'good.ndjson');
  writeFileSync(onlyGood, JSON.stringify(goodRec) + '\n');
  t.equal(run([onlyGood, ...COMMON, '--no-record', '--strict', '-q']).code, 0);
  const tight = run([onlyGood, ...COMMON, '--no-record', '--strict', '--gate', 'p_new>=0.999', '--gate', 'efficacy>=1']);
  t.equal(tight.code, 3);
  t.match(tight.reports[0].failures.join('\n'), /p_new .* < 0\.999 \(gate p_new>=0\.999\)/);
  t.equal(tight.reports[0].thresholds.efficacy, 1);
  const unknown = run([onlyGood, ...COMMON, '--gate', 'efficiency>=0.9']);
  t.equal(unknown.code, 2);
  t.match(unknown.stderr, /unknown metric "efficiency"/);
  t.equal(unknown.records.length, 0, 'nothing written on a usage error');
  const syntax = run([onlyGood, ...COMMON, '--gate', 'efficacy=0.9']);
  t.equal(syntax.code, 2);
  t.match(syntax.stderr, /expected METRIC>=NUMBER/);
  const missing = run([path.join(tmp, 'nope.ndjson'), ...COMMON]);
  t.equal(missing.code, 2);
});

t.test('a record naming no bundle is bad input: exit 2, record and field named, no history written', async (t) => {
  const dir = path.join(tmp, 'untouched');
  writeAdapterBundle(dir, goodLora, [fact], probes, BASE);
  const before = readFileSync(path.join(dir, 'catechism.json'), 'utf8');
  const IN = path.join(tmp, 'badpath.ndjson');
  writeFileSync(IN, JSON.stringify({ ...goodRec, path: dir }) + '\n' + JSON.stringify({ ...goodRec, path: path.join(tmp, 'no-such-bundle') }) + '\n');
  const r = run([IN, ...COMMON]);
  t.equal(r.code, 2);
  t.match(r.stderr, /badpath\.ndjson: record 2: field "path": .*no-such-bundle/);
  t.equal(r.reports.length, 0);
  t.equal(readFileSync(path.join(dir, 'catechism.json'), 'utf8'), before, 'the good bundle got no report either');
});

t.test('--suite: regression probes the base model passes must keep passing', async (t) => {
  // the base model's own top-1 answers as targets, so the base passes all of them
  const prompts = ['the eiffel tower is in', 'the colosseum is in', 'madrid is a city in', 'the language of spain is'];
  const SUITE = path.join(tmp, 'suite.ndjson');
  writeFileSync(SUITE, prompts.map((p, i) => JSON.stringify({ kind: 'probe', fact_id: `s${i}`, role: 'edit', split: 'test', prompt: p, target: tok.decode([argmax(nextLogprobs(tok.encode(p)))]), expect: 'true' })).join('\n') + '\n');
  const r = run([ADAPTERS, ...COMMON, '--no-record', '--no-fluency', '--suite', SUITE]);
  t.equal(r.code, 0, r.stderr);
  const [good, bad] = r.reports;
  t.equal(good.metrics.n_suite, 4);
  t.equal(good.metrics.suite_before, 1);
  t.equal(bad.metrics.suite_before, 1);
  // independent: how many suite answers the bad adapter keeps
  const answers = () => prompts.map((p) => argmax(nextLogprobs(tok.encode(p))));
  const baseAnswers = answers();
  model.setAdapters([{ adapter: loadLora(BAD) }]);
  const badAnswers = answers();
  model.setAdapters([]);
  const kept = badAnswers.filter((a, i) => a === baseAnswers[i]).length;
  t.equal(bad.metrics.suite_after, kept / 4);
  t.equal(bad.failures.some((f: string) => f.startsWith('suite_drop ')), kept < 4, 'suite_drop gate fails exactly when an answer was lost');
});

t.test('probe-gen | validate --baseline: the base model has efficacy 0 on counterfactuals', async (t) => {
  if (!existsSync(PROBE_GEN)) {
    t.skip('probe-gen is not built');
    return;
  }
  // counterfactuals by construction: among one-token answers, target_true is the one the base model
  // finds most likely after the prompt and target_new the least likely
  const subjects = ['france', 'spain', 'italy'];
  const words = ['paris', 'rome', 'madrid', 'tower', 'city', 'language'];
  const facts = subjects.map((s, i) => {
    const prompt = `the capital of ${s} is`;
    const lp = nextLogprobs(encodePair(tok, prompt, 'x').prompt);
    const ranked = words.map((w) => ({ w, ids: encodePair(tok, prompt, w).cont })).filter((x) => x.ids.length === 1).sort((a, b) => lp[b.ids[0]] - lp[a.ids[0]]);
    return { kind: 'fact', id: `cf-${i}`, subject: s, prompt: 'the capital of {} is', target_new: ranked[ranked.length - 1].w, target_true: ranked[0].w, op: 'insert' };
  });
  const FACTS = path.join(tmp, 'facts.ndjson');
  writeFileSync(FACTS, facts.map((f) => JSON.stringify(f)).join('\n') + '\n');
  const { code, out, err } = await probeGenIntoValidate(FACTS, ['--baseline', ...COMMON], tmp);
  t.equal(code, 0, err);
  const recs = out.trim().split('\n').map((l) => JSON.parse(l));
  t.equal(recs.filter((r) => r.kind === 'fact').length, 3, 'facts pass through');
  t.ok(recs.filter((r) => r.kind === 'probe').length >= 3, 'probes pass through');
  const rep = recs[recs.length - 1];
  t.equal(rep.kind, 'report');
  t.equal(rep.adapter_id, 'base');
  t.equal(rep.baseline, true);
  t.equal(rep.metrics.n_edit, 3);
  t.equal(rep.metrics.efficacy, 0);
  t.equal(rep.metrics.efficacy_prob, 0);
  t.equal(rep.metrics.kl, 0);
  t.equal(rep.metrics.ppl_delta, 0);
  t.equal(rep.pass, false);
  t.match(rep.failures.join('\n'), /efficacy 0 < 0\.9/);
});

t.test('reports are appended to the validation history: manifest of a plain bundle, registry log of a stored one', async (t) => {
  const dir = path.join(tmp, 'hist');
  writeAdapterBundle(dir, goodLora, [fact], probes, BASE);
  const rec = path.join(tmp, 'hist.ndjson');
  writeFileSync(rec, JSON.stringify({ ...goodRec, path: 'hist' }) + '\n');
  const a = run([rec, ...COMMON, '--no-fluency']);
  const b = run([rec, ...COMMON, '--no-fluency']);
  t.equal(a.code, 0, a.stderr);
  t.equal(b.code, 0, b.stderr);
  const m = JSON.parse(readFileSync(path.join(dir, 'catechism.json'), 'utf8'));
  t.equal(m.validation.length, 2);
  t.same(m.validation.map((x: any) => x.created_at), [a.reports[0].created_at, b.reports[0].created_at]);
  t.same(m.validation[1].metrics, b.reports[0].metrics);
  t.notOk(existsSync(`${dir}.lock`), 'lock released');
  // two runs at once: the lock serialises the rewrites, neither entry is lost
  const errs: string[] = ['', ''];
  const both = await Promise.all([0, 1].map((k) => new Promise<number | null>((res) => {
    const p = spawn(process.execPath, [MAIN, rec, ...COMMON, '--no-fluency', '-q'], { cwd: tmp, stdio: ['ignore', 'ignore', 'pipe'] });
    p.stderr.on('data', (d) => (errs[k] += d));
    p.on('close', res);
  })));
  t.same(both, [0, 0], errs.join('\n'));
  t.equal(JSON.parse(readFileSync(path.join(dir, 'catechism.json'), 'utf8')).validation.length, 4);
  t.notOk(a.reports[0].metrics.fluency !== undefined, '--no-fluency skips generation');

  // stored in a registry: the report goes to reports/<sha>.ndjson, the object is untouched
  const regDir = path.join(tmp, 'registry');
  const reg = new Registry(regDir);
  // a registry keeps only reports that name the adapter's own base model: this bundle records MODEL's hash
  const own = path.join(tmp, 'own-base');
  const ownRec = writeAdapterBundle(own, goodLora, [fact], probes, { base_model: { name: MODEL, sha256: modelSha256(MODEL) } });
  const { bundle } = await reg.add(own);
  const stored = path.join(regDir, 'objects', bundle.sha256);
  const srec = path.join(tmp, 'stored.ndjson');
  writeFileSync(srec, JSON.stringify({ ...ownRec, path: stored }) + '\n');
  const c = run([srec, ...COMMON, '--no-fluency']);
  t.equal(c.code, 0, c.stderr);
  const hist = await reg.validationHistory(await reg.get(bundle.sha256));
  t.equal(hist.length, 1);
  t.equal(hist[0].adapter_id, 'cap-fr');
  t.equal(hist[0].pass, true);
  t.same(hist[0].metrics, c.reports[0].metrics);
  t.equal((await reg.verify()).ok, true);
  t.equal(c.reports[0].adapter_sha256, bundle.sha256);
});

t.test('--html writes one page with the metric tables and an SVG chart per fact', async (t) => {
  const html = path.join(tmp, 'report.html');
  const r = run([ADAPTERS, ...COMMON, '--no-record', '--baseline', '--html', html]);
  t.equal(r.code, 0, r.stderr);
  const page = readFileSync(html, 'utf8');
  t.match(page, /^<!doctype html>/);
  t.equal((page.match(/<section>/g) ?? []).length, 3, 'one section per report');
  t.ok((page.match(/<svg/g) ?? []).length >= 3, 'charts rendered to SVG');
  t.match(page, /<td><code>efficacy<\/code><\/td>/);
  t.match(page, /class="fail"><td><code>kl<\/code>/, 'failing gates are marked');
  t.match(page, /edit \[rome vs paris\] the capital of france is/);
  t.notMatch(page, /<script/, 'static page');
  const chromium = ['chromium', 'chromium-browser'].find((c) => spawnSync('which', [c]).status === 0);
  if (!chromium) {
    t.skip('chromium not installed: screenshot check skipped (apt-get install -y chromium)');
    return;
  }
  const png = path.join(tmp, 'report.png');
  const s = spawnSync(chromium, [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run',
    `--user-data-dir=${mkdtempSync(path.join(os.tmpdir(), 'chromium-'))}`, `--screenshot=${png}`, '--window-size=1200,1600', `file://${html}`,
  ], { timeout: 60_000 });
  t.equal(s.status, 0, String(s.stderr));
  t.ok(existsSync(png) && statSync(png).size > 20_000, 'a non-trivial screenshot');
});

t.test('the adapter record leaving validate carries the hash of the bundle as it now is', async (t) => {
  // appending a report to a plain bundle's manifest changes the bundle, so the
  // re-emitted record must name the new content hash (adapter-merge checks it)
  const { hashBundleDir } = await import('@catechism/core/adapters');
  const copy = path.join(tmp, 'rehash');
  cpSync(goodRec.path, copy, { recursive: true });
  const before = (await hashBundleDir(copy)).sha256;
  const rec = { ...goodRec, path: copy, sha256: before };
  const r = run([...COMMON], JSON.stringify(rec) + '\n');
  t.equal(r.code, 0, r.stderr);
  const out = r.records.find((x) => x.kind === 'adapter');
  const after = (await hashBundleDir(copy)).sha256;
  t.not(after, before, 'the report was appended to the manifest');
  t.equal(out?.sha256, after, 'the record names the new hash');
});

t.test('a model of your own without retention sets: a message naming the flags, and the report lists the skipped gates', async (t) => {
  const r = run([ADAPTERS, '--model', MODEL, '--no-record', '--no-fluency']);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stderr, /no retention set for model .*pass --retain FILE/);
  t.match(r.stderr, /no general text for model .*pass --general FILE/);
  for (const rep of r.reports) {
    for (const g of ['retain_drop<=0.05', 'ppl_delta<=0.05', 'kl<=0.05']) t.ok(rep.gates_skipped.includes(g), `${rep.adapter_id}: ${g} skipped`);
    t.equal(rep.notes.length, 2, 'the report says why');
    t.match(rep.notes.join('\n'), /--retain FILE/);
  }
});

t.test('bundle and base-model hashes: a changed bundle or another model is refused (exit 2) unless --force, which the report records', async (t) => {
  const { hashBundleDir } = await import('@catechism/core/adapters');
  const sha = (await hashBundleDir(GOOD)).sha256;
  const ok = run([...COMMON, '--no-record', '--no-fluency'], JSON.stringify({ ...goodRec, sha256: sha }) + '\n');
  t.equal(ok.code, 0, ok.stderr);
  t.equal(ok.reports[0].bundle_sha256, sha, 'bundle_sha256: the bundle scored');
  t.equal(ok.reports[0].base_model_sha256, modelSha256(MODEL), 'base_model_sha256: the weights scored against');
  t.notOk('forced' in ok.reports[0]);

  // the bundle's bytes change after its record was written
  const dir = path.join(tmp, 'tampered');
  cpSync(GOOD, dir, { recursive: true });
  const rec = JSON.stringify({ ...goodRec, path: dir, sha256: (await hashBundleDir(dir)).sha256 }) + '\n';
  writeFileSync(path.join(dir, 'catechism.json'), readFileSync(path.join(dir, 'catechism.json'), 'utf8') + ' ');
  const now = (await hashBundleDir(dir)).sha256;
  const refused = run([...COMMON, '--no-record'], rec);
  t.equal(refused.code, 2, refused.stderr);
  t.match(refused.stderr, /record 1: field "sha256": the bundle .*tampered has sha256 [0-9a-f]{64}, not the record's [0-9a-f]{64}.*--force/);
  t.equal(refused.reports.length, 0, 'no report');
  const forced = run([...COMMON, '--no-record', '--force'], rec);
  t.equal(forced.code, 0, forced.stderr);
  t.equal(forced.reports[0].bundle_sha256, now);
  t.match(forced.reports[0].forced, [/not the record's/]);
  t.match(forced.stderr, /warning: .*going on because of --force/);

  // a bundle made for other weights
  const other = path.join(tmp, 'other-base');
  const orec = writeAdapterBundle(other, goodLora, [fact], probes, { base_model: { name: 'some-other-model', sha256: 'a'.repeat(64) } });
  const wrong = run([...COMMON, '--no-record'], JSON.stringify(orec) + '\n');
  t.equal(wrong.code, 2, wrong.stderr);
  t.match(wrong.stderr, /field "base_model\.sha256": adapter cap-fr was made for base model some-other-model \(sha256 a{64}\), but the model .* has sha256 [0-9a-f]{64}/);
  const wforced = run([...COMMON, '--no-record', '--force'], JSON.stringify(orec) + '\n');
  t.equal(wforced.code, 0, wforced.stderr);
  t.match(wforced.reports[0].forced, [/made for base model some-other-model/]);
  t.equal(wforced.reports[0].base_model_sha256, modelSha256(MODEL));
});
