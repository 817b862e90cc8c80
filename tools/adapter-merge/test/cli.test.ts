/** adapter-merge through real child processes: records out, --text, exit codes, one-line errors. */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, readFileSync, writeFileSync, chmodSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { readRecords } from '@catechism/core';
import { writeSyntheticBundle, FileLock, sha256Hex } from '../src/core.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const MAIN = path.join(here, '..', 'dist', 'main.js');
const tmp = mkdtempSync(path.join(tmpdir(), 'cat-am-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  raw: Buffer;
  records: Record<string, unknown>[];
}

function am(args: string[], opts: { input?: string; env?: Record<string, string>; registry?: string | null } = {}): Run {
  const reg = opts.registry === undefined ? ['--registry', path.join(tmp, 'reg')] : opts.registry === null ? [] : ['--registry', opts.registry];
  const r = spawnSync(process.execPath, [MAIN, ...args, ...reg], { input: opts.input ?? '', cwd: tmp, env: { ...process.env, USER: 'tester', ...(opts.env ?? {}) } });
  const stdout = r.stdout.toString('utf8');
  let records: Record<string, unknown>[] = [];
  if (!stdout.startsWith('\xff') && stdout.trim().startsWith('{')) records = stdout.trim().split('\n').map((l) => JSON.parse(l));
  return { code: r.status, stdout, stderr: r.stderr.toString('utf8'), raw: r.stdout, records };
}

/** One line on stderr, prefixed with the tool's name, no stack trace. */
function oneLineError(t: Tap.Test, r: Run, code: number, re: RegExp): void {
  t.equal(r.code, code, `exit ${code}: ${r.stderr}`);
  const lines = r.stderr.trim().split('\n');
  t.equal(lines.length, 1, 'one line');
  t.match(lines[0], /^adapter-merge: /);
  t.match(lines[0], re);
  t.notMatch(r.stderr, /\n\s+at /, 'no stack trace');
}

let A: { dir: string; sha256: string }, B: { dir: string; sha256: string }, C: { dir: string; sha256: string };

t.before(async () => {
  const mk = async (name: string, seed: number, pass: boolean | null) => {
    const dir = path.join(tmp, name);
    const { sha256 } = await writeSyntheticBundle(dir, { seed, pass, id: name });
    return { dir, sha256 };
  };
  A = await mk('fact-a', 1, true);
  B = await mk('fact-b', 2, false);
  C = await mk('fact-c', 3, null);
});

const COMMANDS = ['merge', 'consolidate', 'add', 'promote', 'rollback', 'log', 'show', 'refs', 'report', 'verify', 'explain', 'export'];

t.test('--help lists the commands and examples; exit 0', async (t) => {
  const r = am(['--help'], { registry: null });
  t.equal(r.code, 0);
  const direct = spawnSync(MAIN, ['--version']);
  t.equal(direct.status, 0, 'dist/main.js is executable (the npm bin)');
  t.match(direct.stdout.toString(), /^\d+\.\d+\.\d+/);
  for (const c of COMMANDS) t.match(r.stdout, new RegExp(`\\n\\s*${c}  +\\S`), `the overview lists ${c}`);
  for (const c of ['CATECHISM_REGISTRY', 'Examples:']) t.match(r.stdout, c);
});

t.test('every command has its own --help with its own synopsis and only its own flags', async (t) => {
  const synopsis: Record<string, string> = {
    add: 'add BUNDLE_DIR', promote: 'promote REF BUNDLE_DIR|ID', rollback: 'rollback REF [--to VERSION]', log: 'log REF', show: 'show ID', refs: 'refs',
    report: 'report ID [FILES...]', verify: 'verify', explain: 'explain --ref REF', export: 'export --ref REF DIR', merge: 'merge [FILES] --method M', consolidate: 'consolidate INBOX',
  };
  for (const c of COMMANDS) {
    const r = am([c, '--help'], { registry: null });
    t.equal(r.code, 0, `${c} --help`);
    t.ok(r.stdout.startsWith(`Usage: adapter-merge ${synopsis[c]}`), `${c} --help starts with its synopsis: ${r.stdout.split('\n')[0]}`);
    t.match(r.stdout, 'Examples:');
  }
  const promote = am(['promote', '--help'], { registry: null }).stdout;
  t.match(promote, '--force');
  t.notMatch(promote, '--method', 'promote does not offer merge flags');
  t.notMatch(am(['log', '--help'], { registry: null }).stdout, '--force', 'log does not offer --force');
  t.match(am(['consolidate', '--help'], { registry: null }).stdout, '--quarantine');
  t.match(am(['merge', '--help'], { registry: null }).stdout, '--validator-timeout');
});

t.test('an unknown command is a usage error that lists the commands', async (t) => {
  for (const argv of [['promte', 'live', 'x'], ['--registry', '/nowhere', 'verfy']]) {
    const r = am(argv, { registry: null });
    t.equal(r.code, 2, `${argv.join(' ')}: exit 2`);
    t.match(r.stderr, /^adapter-merge: unknown command "(promte|verfy)" \(and no file of that name to merge\); the commands are:/);
    for (const c of COMMANDS) t.match(r.stderr, new RegExp(`\\n  ${c} `), `lists ${c}`);
    t.notMatch(r.stderr, /no such file|ENOENT/);
    t.equal(r.stdout, '');
  }
  // a file of records is still merged without a command word
  const recs = path.join(tmp, 'none.ndjson');
  writeFileSync(recs, '');
  // empty input is exit 0 in every tool (nothing to merge, nothing written)
  const empty = am([recs, '--out', path.join(tmp, 'm-none')]);
  t.equal(empty.code, 0, empty.stderr);
  t.match(empty.stderr, /no records in .*none\.ndjson: nothing to merge/);
  t.notOk(existsSync(path.join(tmp, 'm-none')), 'no bundle written');
});

t.test('merge usage errors: exit 2, one line (merging itself is tested in merge.test.ts)', async (t) => {
  oneLineError(t, am([]), 2, /say where the merged bundle goes: --out DIR, --add .*--into REF/);
  oneLineError(t, am(['--out', path.join(tmp, 'm-x'), '--method', 'bogus']), 2, /--method: expected one of cat, linear, svd, ties, dare, negate, scale, got "bogus"/);
  oneLineError(t, am(['explain', '--ref', 'live']), 2, /explain: expected `adapter-merge explain --ref REF "prompt"`/);
  oneLineError(t, am(['export', 'out']), 2, /export: expected `adapter-merge export --ref REF DIR`/);
});

t.test('the registry workflow end to end', async (t) => {
  const added = am(['add', A.dir, B.dir]);
  t.equal(added.code, 0, added.stderr);
  t.match(added.records, [
    { kind: 'adapter', id: 'fact-a', sha256: A.sha256, added: true, path: path.join(tmp, 'reg', 'objects', A.sha256) },
    { kind: 'adapter', id: 'fact-b', sha256: B.sha256, added: true },
  ]);
  t.match(am(['add', A.dir]).records, [{ sha256: A.sha256, added: false }], 'add is idempotent');

  const p1 = am(['promote', 'live', A.sha256.slice(0, 8), '-m', 'first fact', '--author', 'alice']);
  t.equal(p1.code, 0, p1.stderr);
  t.match(p1.records, [{ kind: 'ref_event', ref: 'live', version: 1, action: 'promote', bundle: A.sha256, why: 'first fact', who: 'alice', previous: null }]);

  oneLineError(t, am(['promote', 'live', 'fact-b']), 1, /refusing to promote fact-b v1 .* latest validation report failed/);
  oneLineError(t, am(['promote', 'live', './fact-c']), 1, /has no validation report/);

  // A report counts only when it names the bundle, its base model and its run: a hand-written pass is refused.
  oneLineError(t, am(['report', 'fact-b'], { input: '{"kind":"report","adapter_id":"fact-b","pass":true,"metrics":{"efficacy":1},"failures":[]}\n' }), 2, /stdin: record 1: report not attached to fact-b v1 \([0-9a-f]{12}\): it names no bundle/);
  const boundTo = (sha: string) => ({ bundle_sha256: sha, base_model_sha256: sha256Hex('synthetic-base'), run: { tool: 'validate', id: 'r1' } });
  oneLineError(t, am(['report', 'fact-b'], { input: JSON.stringify({ kind: 'report', adapter_id: 'fact-b', pass: true, metrics: {}, failures: [], ...boundTo(A.sha256) }) + '\n' }), 2, /it is about bundle [0-9a-f]{12}, not this one/);
  // Attach a passing report through stdin; other records pass through.
  const reports = [
    { kind: 'note', text: 'passes through' },
    { kind: 'report', adapter_id: 'fact-b', pass: true, metrics: { esr: 1 }, failures: [], ...boundTo(B.sha256) },
  ];
  const rep = am(['report', 'fact-b', '-m', 'revalidated'], { input: reports.map((r) => JSON.stringify(r)).join('\n') + '\n' });
  t.equal(rep.code, 0, rep.stderr);
  t.match(rep.records, [{ kind: 'note', text: 'passes through' }, { kind: 'report', adapter_id: 'fact-b', pass: true, recorded_by: 'tester' }]);
  oneLineError(t, am(['report', 'fact-b'], { input: JSON.stringify({ kind: 'report', adapter_id: 'fact-a', pass: true, metrics: {}, failures: [] }) + '\n' }), 2, /stdin: record 1: report is about adapter "fact-a"/);

  const p2 = am(['promote', 'live', 'fact-b']);
  t.match(p2.records, [{ version: 2, action: 'promote', bundle: B.sha256, previous: A.sha256, who: 'tester', report: rep.records[1].report_sha256 }]);
  const p3 = am(['promote', 'live', 'fact-c', '--force', '-m', 'hotfix']);
  t.match(p3.records, [{ version: 3, action: 'force', forced_over: 'it has no validation report', why: 'hotfix' }]);
  t.match(p3.stderr, /forced: it has no validation report \(logged in live@3\)/);
  const same = am(['promote', 'live', 'fact-c', '--force']);
  t.equal(same.code, 0);
  t.match(same.stderr, /already points to fact-c/);
  t.match(same.records, [{ version: 3 }], 'a no-op prints the current event');

  const rb = am(['rollback', 'live', '-m', 'c broke things']);
  t.match(rb.records, [{ version: 4, action: 'rollback', bundle: B.sha256, to_version: 2, why: 'c broke things' }]);
  const rb2 = am(['rollback', 'live', '--to', '3', '--text']);
  t.match(rb2.stdout, /^live@5  \S+  rollback to @3  fact-c v1  /);

  const log = am(['log', 'live']);
  t.same(log.records.map((e) => [e.version, e.action, (e.bundle as string).slice(0, 8)]), [
    [1, 'promote', A.sha256.slice(0, 8)],
    [2, 'promote', B.sha256.slice(0, 8)],
    [3, 'force', C.sha256.slice(0, 8)],
    [4, 'rollback', B.sha256.slice(0, 8)],
    [5, 'rollback', C.sha256.slice(0, 8)],
  ]);
  const logText = am(['log', 'live', '--text']);
  t.equal(logText.stdout.trim().split('\n').length, 5);
  t.match(logText.stdout, /live@1 .* by alice {2}"first fact"/);

  const show = am(['show', 'live@2']);
  t.equal(show.code, 0, show.stderr);
  t.match(show.records[0], { kind: 'adapter', id: 'fact-b', sha256: B.sha256, refs: [{ ref: 'live', versions: [2, 4], current: false }] });
  t.same((show.records[0].validation as { pass: boolean }[]).map((r) => r.pass), [false, true]);
  t.match((show.records[0].manifest as Record<string, unknown>).facts, [{ id: 'fact-b-fact' }]);
  const showText = am(['show', 'fact-b', '--text']);
  t.match(showText.stdout, /adapter {5}fact-b v1 {2}method lora {2}rank 2/);
  t.match(showText.stdout, /#1 FAIL {2}shipped in the bundle/);
  t.match(showText.stdout, /#2 pass {2}recorded .* by tester/);
  t.match(showText.stdout, /live {2}versions 2, 4/);

  const refs = am(['refs']);
  t.match(refs.records, [{ ref: 'live', version: 5 }]);

  const v = am(['verify']);
  t.equal(v.code, 0);
  t.match(v.records, [{ kind: 'registry_verify', ok: true, objects: 3, refs: 1, reports: 1, problems: [] }]);
});

t.test('usage errors exit 2 with one line', async (t) => {
  oneLineError(t, am(['promote', 'live']), 2, /promote: expected `adapter-merge promote REF BUNDLE_DIR\|ID`, got "live"/);
  oneLineError(t, am(['rollback']), 2, /expected `adapter-merge rollback REF/);
  oneLineError(t, am(['promote', 'a/b/c', 'fact-a']), 2, /invalid ref name "a\/b\/c"/); // one namespace level (a/b) is a ref
  oneLineError(t, am(['promote', 'live', './no-such-dir']), 2, /no such bundle directory/);
  oneLineError(t, am(['show', 'zzz']), 2, /nothing in .* matches "zzz"/);
  oneLineError(t, am(['log', 'canary']), 2, /no ref named "canary" .*\(refs: live\)/);
  oneLineError(t, am(['promote', 'live', 'fact-a', '--to', '2']), 2, /Unknown argument: to/);
  oneLineError(t, am(['rollback', 'live', '--to', '99']), 2, /live has versions 1\.\.5/);
  oneLineError(t, am(['verify', '--bogus']), 2, /Unknown argument/);
  const bad = path.join(tmp, 'bad-bundle');
  await writeSyntheticBundle(bad, { seed: 9 });
  const m = JSON.parse(readFileSync(path.join(bad, 'catechism.json'), 'utf8'));
  m.base_model.sha256 = 'nope';
  writeFileSync(path.join(bad, 'catechism.json'), JSON.stringify(m));
  oneLineError(t, am(['add', bad]), 2, /invalid manifest: \$\.base_model\.sha256: expected a sha256/);
  oneLineError(t, am(['log', 'live'], { registry: path.join(tmp, 'nowhere') }), 2, /no registry at .*nowhere/);
  t.notOk(existsSync(path.join(tmp, 'nowhere')), 'read commands never create a registry');
});

t.test('$CATECHISM_REGISTRY picks the registry', async (t) => {
  const r = am(['log', 'live'], { registry: null, env: { CATECHISM_REGISTRY: path.join(tmp, 'reg') } });
  t.equal(r.code, 0, r.stderr);
  t.equal(r.records.length, 5);
});

t.test('--format arrow carries the same records', async (t) => {
  const r = am(['log', 'live', '--format', 'arrow']);
  t.equal(r.code, 0, r.stderr);
  t.same([...r.raw.subarray(0, 4)], [0xff, 0xff, 0xff, 0xff], 'an Arrow IPC stream');
  const back: Record<string, unknown>[] = [];
  for await (const { record } of readRecords(['-'], { stdin: Readable.from([r.raw]) })) back.push(record);
  t.same(back, am(['log', 'live']).records);
});

t.test('corruption: show and rollback refuse it, verify reports it with exit 1', async (t) => {
  const reg = path.join(tmp, 'reg-corrupt');
  t.equal(am(['promote', 'live', A.dir], { registry: reg }).code, 0);
  t.equal(am(['promote', 'live', B.dir, '--force'], { registry: reg }).code, 0);
  const f = path.join(reg, 'objects', A.sha256, 'catechism.json');
  chmodSync(f, 0o644);
  writeFileSync(f, readFileSync(f, 'utf8').replace('"fact-a"', '"fact-z"'));
  oneLineError(t, am(['show', A.sha256], { registry: reg }), 1, new RegExp(`object ${A.sha256} is corrupted`));
  oneLineError(t, am(['rollback', 'live'], { registry: reg }), 1, /is corrupted/);
  const v = am(['verify'], { registry: reg });
  t.equal(v.code, 1);
  t.match(v.records, [{ kind: 'registry_verify', ok: false, problems: [{ area: 'object', target: A.sha256 }, { area: 'ref', target: 'live@1' }] }]);
  t.match(v.stderr, /has 2 problem\(s\)/);
  const vt = am(['verify', '--text'], { registry: reg });
  t.equal(vt.code, 1);
  t.match(vt.stdout, /2 PROBLEM\(S\)\nPROBLEM object /);
  // Re-adding the original bundle repairs it.
  const fix = am(['add', A.dir], { registry: reg });
  t.match(fix.stderr, /repaired: fact-a/);
  t.equal(am(['verify'], { registry: reg }).code, 0);
});

t.test('a held lock: the writer waits, then fails naming the holder (exit 1)', async (t) => {
  const reg = path.join(tmp, 'reg-locked');
  t.equal(am(['add', A.dir], { registry: reg }).code, 0);
  const lock = await FileLock.acquire(path.join(reg, 'lock'));
  try {
    oneLineError(t, am(['promote', 'live', 'fact-a', '--lock-timeout', '0.3'], { registry: reg }), 1, new RegExp(`registry is locked by pid ${process.pid}`));
    t.equal(am(['log', 'live', '--text'], { registry: reg }).code, 2, 'readers do not wait for the lock');
  } finally {
    await lock.release();
  }
  t.equal(am(['promote', 'live', 'fact-a'], { registry: reg }).code, 0);
});

t.test('trust through the CLI: an edited report and a cut history are found by verify and refused', async (t) => {
  const reg = path.join(tmp, 'reg-trust');
  const r0 = am(['add', C.dir], { registry: reg });
  t.equal(r0.code, 0, r0.stderr);
  const failing = { kind: 'report', adapter_id: 'fact-c', pass: false, metrics: { kl: 0.2 }, failures: ['kl 0.2 > 0.05'], bundle_sha256: C.sha256, base_model_sha256: sha256Hex('synthetic-base'), run: { tool: 'validate', id: 'r2' } };
  t.equal(am(['report', 'fact-c'], { registry: reg, input: JSON.stringify(failing) + '\n' }).code, 0);
  oneLineError(t, am(['promote', 'live', 'fact-c'], { registry: reg }), 1, /latest validation report failed/);
  // today's attack: edit "pass":false → true in the stored report
  const file = path.join(reg, 'reports', `${C.sha256}.ndjson`);
  writeFileSync(file, readFileSync(file, 'utf8').replace('"pass":false', '"pass":true'));
  const v = am(['verify', '--text'], { registry: reg });
  t.equal(v.code, 1, 'verify finds the edited report');
  t.match(v.stdout, /PROBLEM reports [0-9a-f]{64}#1: report does not count: it was changed after it was stored/);
  oneLineError(t, am(['promote', 'live', 'fact-c'], { registry: reg }), 1, /no validation report that counts .* changed after it was stored/);
  t.match(am(['show', 'fact-c', '--text'], { registry: reg }).stdout, /#1 pass {2}recorded .*\[does not count: it was changed after it was stored/, 'show says which reports do not count');
  t.match(am(['show', 'fact-c'], { registry: reg }).records[0], { validation_refused: [/changed after it was stored/] });
  // a history cut at a line boundary: rollback and explain refuse rather than use the older head
  const reg2 = path.join(tmp, 'reg-cut');
  for (const d of [A.dir, B.dir, C.dir]) t.equal(am(['promote', 'live', d, '--force'], { registry: reg2 }).code, 0);
  const hist = path.join(reg2, 'refs', 'live.ndjson');
  writeFileSync(hist, readFileSync(hist, 'utf8').trim().split('\n').slice(0, 2).join('\n') + '\n');
  oneLineError(t, am(['rollback', 'live'], { registry: reg2 }), 1, /the history of ref "live" is damaged: live\.ndjson has 2 line\(s\), but its head record says 3: it was cut/);
  oneLineError(t, am(['explain', '--ref', 'live', 'hello'], { registry: reg2 }), 1, /it was cut/);
  oneLineError(t, am(['log', 'live'], { registry: reg2 }), 1, /it was cut/);
  const vc = am(['verify'], { registry: reg2 });
  t.equal(vc.code, 1);
  t.match(vc.records, [{ ok: false, problems: [{ area: 'ref', target: 'live', problem: /it was cut/ }] }]);
});
