/**
 * Governance through real processes (issue 25): signed approvals for
 * protected refs, risk, namespaced refs, verify finding a tampered approval,
 * and the drift watch (scripts/watch-live.sh) rolling back a failing live
 * version, with `history --html`. Synthetic bundles and the fake validator:
 * no model is loaded here (canary.test.ts and explain-moe.test.ts load one).
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { isRecord, parseRecord } from '@catechism/core/records';
import { Registry, canonicalJson, generateApproverKeys, sha256Hex, writeSyntheticBundle } from '../src/core.js';
import { FAKE_VALIDATOR, ROOT, amRunner, oneLineError, tempDir, type Rec } from '../test-support/cli.js';

const tmp = tempDir('cat-gov-');
const REG = path.join(tmp, 'reg');
const am = amRunner(tmp, REG);
const key = (n: string) => path.join(tmp, `${n}.key`);

const B: Record<string, { dir: string; sha256: string }> = {};
t.before(async () => {
  const mk = async (name: string, seed: number, facts?: Rec[]) => {
    const dir = path.join(tmp, name);
    const { sha256 } = await writeSyntheticBundle(dir, { seed, id: name, pass: true, ...(facts ? { manifest: { facts, fact_ids: facts.map((f) => String(f.id)) } } : {}) });
    B[name] = { dir, sha256 };
  };
  await mk('fact-a', 1);
  await mk('fact-b', 2);
  await mk('fact-c', 3);
  await mk('forget-x', 4, [{ kind: 'fact', id: 'fx', subject: 'Synthetic', prompt: '{} is a', target_true: 'test', op: 'forget' }]);
  await mk('person-y', 5, [{ kind: 'fact', id: 'py', subject: 'Dabe Tensunov', prompt: '{} works for', target_new: 'Norsynex', relation: 'works_for', op: 'insert' }]);
  const k = am(['keygen', '--out', key('alice')]);
  t.equal(k.code, 0, k.stderr);
  t.match(readFileSync(key('alice'), 'utf8'), /^-----BEGIN PRIVATE KEY-----/);
  t.equal(statSync(key('alice')).mode & 0o777, 0o600, 'the private key is readable by its owner only');
  // the others in-process (each process costs a second on a loaded machine)
  for (const n of ['bob', 'carol', 'mallory']) {
    const g = generateApproverKeys();
    writeFileSync(key(n), g.privatePem);
    writeFileSync(`${key(n)}.pub`, g.publicPem);
  }
  t.equal(am(['add', ...Object.values(B).map((b) => b.dir)]).code, 0);
});

t.test('protected ref: unsigned and wrongly signed promotions are refused; two distinct approvers are needed for 2', async (t) => {
  t.equal(am(['add-approver', 'alice', '--key', `${key('alice')}.pub`]).code, 0);
  t.equal(am(['add-approver', 'bob', '--key', `${key('bob')}.pub`]).code, 0);
  const p = am(['protect', 'live', '--approvals', '2']);
  t.equal(p.code, 0, p.stderr);
  oneLineError(t, am(['promote', 'live', 'fact-a', '--force']), 1, /needs 2 approval\(s\) by distinct approvers .*it has 0.*--force does not replace approvals/);
  // a key nobody listed cannot approve
  oneLineError(t, am(['approve', 'live', 'fact-a', '--key', key('mallory')]), 1, /is not an approver of refs without a namespace; nothing recorded/);
  const a1 = am(['approve', 'live', 'fact-a', '--key', key('alice'), '--note', 'sources checked']);
  t.equal(a1.code, 0, a1.stderr);
  t.match(a1.records[0], { kind: 'approval', ref: 'live', bundle: B['fact-a'].sha256, approver: 'alice', note: 'sources checked' });
  t.match(a1.records[0].report, /^[0-9a-f]{64}$/, 'the approval names the report it approves');
  t.equal(parseRecord('approval', a1.records[0]).approver, 'alice', 'a schema record (parseRecord)');
  t.match(a1.stderr, /1 of 2 required/);
  // the same approver twice is one approval
  t.match(am(['approve', 'live', 'fact-a', '--key', key('alice')]).stderr, /already approved/);
  oneLineError(t, am(['promote', 'live', 'fact-a']), 1, /needs 2 approval\(s\).*it has 1/);
  // (bob's approval of fact-b, below, does not count for fact-a either)
  t.equal(am(['approve', 'live', 'fact-b', '--key', key('bob')]).code, 0);
  t.equal(am(['approve', 'live', 'fact-a', '--key', key('bob')]).code, 0);
  const ok = am(['promote', 'live', 'fact-a', '-m', 'two approvals']);
  t.equal(ok.code, 0, ok.stderr);
  const ev = ok.records[0] as Rec & { approvals: string[] };
  t.match(ev, { kind: 'ref_event', action: 'promote', bundle: B['fact-a'].sha256, risk: 'low' });
  t.equal(ev.approvals.length, 2, 'the event names the two approvals it was let through on');
  t.equal(am(['verify']).code, 0);
});

t.test('an approval forged by editing the log is refused by promote and found by verify', async (t) => {
  // bob's approval of fact-b (for live), re-aimed at fact-c, chain and head resealed: only the signature can tell
  const file = path.join(REG, 'approvals', 'live.ndjson');
  const lines = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Rec);
  const i = lines.findIndex((l) => l.bundle === B['fact-b'].sha256);
  t.ok(i >= 0);
  lines[i] = { ...lines[i], bundle: B['fact-c'].sha256, adapter_id: 'fact-c' };
  let prev: string | null = null;
  for (const l of lines) {
    const { chain: _c, ...rest } = l;
    l.chain = sha256Hex(`${prev ?? ''}\n${canonicalJson(rest)}`);
    prev = l.chain as string;
  }
  writeFileSync(file, lines.map((l) => JSON.stringify(l) + '\n').join(''));
  writeFileSync(path.join(REG, 'approvals', 'live.head'), JSON.stringify({ count: lines.length, chain: prev }) + '\n');
  const v = am(['verify']);
  t.equal(v.code, 1, 'verify fails');
  const problems = (v.records[0] as Rec & { problems: { area: string; target: string; problem: string }[] }).problems;
  t.equal(problems.length, 1, JSON.stringify(problems));
  t.match(problems[0], { area: 'approvals', target: `live#${i + 1}`, problem: /bob .*signature does not verify/ });
  t.equal(am(['approve', 'live', 'fact-c', '--key', key('alice')]).code, 0);
  oneLineError(t, am(['promote', 'live', 'fact-c']), 1, /it has 1; not counted: bob \(its signature does not verify/);
  // put the log back as it was signed, for the tests below
  lines[i] = { ...lines[i], bundle: B['fact-b'].sha256, adapter_id: 'fact-b' };
  prev = null;
  for (const l of lines) {
    const { chain: _c, ...rest } = l;
    l.chain = sha256Hex(`${prev ?? ''}\n${canonicalJson(rest)}`);
    prev = l.chain as string;
  }
  writeFileSync(file, lines.map((l) => JSON.stringify(l) + '\n').join(''));
  writeFileSync(path.join(REG, 'approvals', 'live.head'), JSON.stringify({ count: lines.length, chain: prev }) + '\n');
  t.equal(am(['verify']).code, 0, 'verify is clean again');
});

t.test('risk: forget ops and facts about people need an approval on an unprotected ref; --force does not skip it', async (t) => {
  oneLineError(t, am(['promote', 'staging', 'forget-x', '--force']), 1, /needs 1 approval.*high risk \(fx: op forget\)/);
  oneLineError(t, am(['promote', 'staging', 'person-y']), 1, /high risk \(py: relation works_for is about a person\)/);
  const low = am(['promote', 'staging', 'fact-a']);
  t.equal(low.code, 0, 'a low-risk adapter needs none');
  t.match(low.records[0], { risk: 'low' });
  t.notOk('approvals' in low.records[0], 'no approvals were needed');
  t.equal(am(['approve', 'staging', 'forget-x', '--key', key('bob')]).code, 0);
  const hi = am(['promote', 'staging', 'forget-x']);
  t.equal(hi.code, 0, hi.stderr);
  t.match(hi.records[0], { risk: 'high', approvals: [/^[0-9a-f]{64}$/] });
  // a registry nobody can approve in records the risk but cannot ask for approval
  const bare = amRunner(tmp, path.join(tmp, 'reg-bare'));
  const r = bare(['promote', 'live', B['forget-x'].dir]);
  t.equal(r.code, 0, r.stderr);
  t.match(r.records[0], { risk: 'high' });
});

t.test('namespaced refs: each tenant has its own approvers; a tenant\'s key cannot approve another tenant\'s ref', async (t) => {
  // set up in-process (the commands ran through the CLI above)
  const reg = new Registry(REG);
  await reg.addApprover('carol', readFileSync(`${key('carol')}.pub`, 'utf8'), 'acme');
  await reg.addApprover('mallory', readFileSync(`${key('mallory')}.pub`, 'utf8'), 'globex');
  await reg.protect('acme/live', 1);
  oneLineError(t, am(['approve', 'acme/live', 'fact-b', '--key', key('mallory')]), 1, /not an approver of namespace acme \(it approves globex only\)/);
  // nor can acme's key approve the un-namespaced live
  oneLineError(t, am(['approve', 'live', 'fact-b', '--key', key('carol')]), 1, /not an approver of refs without a namespace \(it approves acme only\)/);
  oneLineError(t, am(['promote', 'acme/live', 'fact-b']), 1, /acme\/live is protected/);
  t.equal(am(['approve', 'acme/live', 'fact-b', '--key', key('carol')]).code, 0);
  const r = am(['promote', 'acme/live', 'fact-b']);
  t.equal(r.code, 0, r.stderr);
  t.match(r.records[0], { ref: 'acme/live', bundle: B['fact-b'].sha256 });
  t.same(am(['refs']).records.map((e) => e.ref), ['acme/live', 'live', 'staging'], 'refs lists the namespaced ref');
  t.equal(await reg.resolve('acme/live'), B['fact-b'].sha256, 'a namespaced ref resolves');
  t.equal((await reg.verify()).ok, true);
});

t.test('watch-live.sh rolls back a live version whose figures fail; history --html draws each metric per version', async (t) => {
  const W = path.join(tmp, 'reg-watch');
  const wm = amRunner(tmp, W);
  const wreg = new Registry(W);
  for (const n of ['fact-a', 'fact-b', 'fact-c']) await wreg.promote('live', { dir: B[n].dir });
  const log = () => readFileSync(path.join(W, 'refs', 'live.ndjson'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Rec);
  const watch = (verdict: 'pass' | 'fail') =>
    spawnSync(path.join(ROOT, 'scripts', 'watch-live.sh'), ['live'], {
      env: { ...process.env, USER: 'tester', CATECHISM_REGISTRY: W, WATCH_VALIDATOR: `'${process.execPath}' '${FAKE_VALIDATOR}' ${verdict}` },
    });
  const ok = watch('pass');
  t.equal(ok.status, 0, ok.stderr.toString());
  t.equal(log().length, 3, 'a passing watch changes nothing');
  const bad = watch('fail');
  t.equal(bad.status, 0, bad.stderr.toString());
  t.match(bad.stdout.toString(), /live@3 +FAIL +rolled back to @2/);
  t.match(log()[3], { version: 4, action: 'rollback', to_version: 2, bundle: B['fact-b'].sha256, automatic: true, figures: { efficacy: 0.1 }, failures: ['efficacy 0.1 < 0.9'], who: 'watch-live' });
  // fact-b fails too now: back past fact-c (failed) to fact-a
  t.equal(watch('fail').status, 0);
  t.match(log()[4], { action: 'rollback', to_version: 1, automatic: true });
  // nothing good is left before version 1: exit 1, live stays
  const stuck = watch('fail');
  t.equal(stuck.status, 1);
  t.match(stuck.stderr.toString(), /failed the watch .* no earlier version of live without failing figures/);
  t.equal(log().length, 5);
  const hist = wm(['history', 'live', '--html', path.join(tmp, 'h.html')]);
  t.equal(hist.code, 0, hist.stderr);
  const pts = hist.records as (Rec & { version: number; source: string; metric: string; value: number })[];
  for (const p of pts) parseRecord('history_point', p);
  for (const w of readFileSync(path.join(W, 'watch', 'live.ndjson'), 'utf8').trim().split('\n')) parseRecord('watch', JSON.parse(w));
  t.ok(isRecord('ref_event', log()[3]), 'an automatic rollback is a ref_event');
  t.same(pts.filter((p) => p.source === 'watch').map((p) => [p.metric, p.version, p.value]), [['efficacy', 3, 1], ['efficacy', 3, 0.1], ['efficacy', 4, 0.1], ['efficacy', 5, 0.1]], 'every watch run, per version');
  t.same(pts.filter((p) => p.source === 'validation').map((p) => [p.metric, p.version]), [['esr', 1], ['esr', 2], ['esr', 3]], 'the report each promotion was let through on');
  const html = readFileSync(path.join(tmp, 'h.html'), 'utf8');
  const svgs = html.match(/<svg[\s\S]*?<\/svg>/g) ?? [];
  t.equal(svgs.length, 2, 'one chart per metric (esr of the validation reports, efficacy of the watch)');
  const specs = [...html.matchAll(/<script type="application\/json" class="vega-lite">(.*?)<\/script>/g)].map((m) => JSON.parse(m[1]) as Rec & { layer: unknown[] });
  t.equal(specs.length, 2);
  for (const s of specs) t.match(s, { $schema: /vega-lite\/v6\.json$/, data: { values: Array }, layer: [{ mark: { type: 'line' } }, { mark: { type: 'point' } }] });
  // one point mark per measurement is drawn
  const efficacy = svgs.find((s) => s.includes('efficacy'))!;
  t.equal((efficacy.match(/aria-roledescription="point"/g) ?? []).length, pts.filter((p) => p.metric === 'efficacy').length, 'one drawn point per efficacy measurement');
  t.match(html, /rollback to @2 \(automatic\)/);
  t.equal((await wreg.verify()).ok, true);
});
