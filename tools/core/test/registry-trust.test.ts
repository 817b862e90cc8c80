/**
 * Promotion that cannot be fooled (issue 18): a report counts only for the
 * bundle and base model it names; stored reports are sealed (content hash,
 * chain, head record) and named by the promotions they let through; a ref
 * history cut at a line boundary, emptied or deleted is found by verify and
 * refused by every reader instead of silently using an older head.
 */
import t from 'tap';
import { readFileSync, writeFileSync, unlinkSync, existsSync } from 'node:fs';
import * as path from 'node:path';
import { sha256Hex, rewriteManifest, readManifest, hashBundleDir } from '../src/adapters/index.js';
import { Registry } from '../src/registry/index.js';
import { bundleWriter, rejection, tempDir } from './support/registry.js';

const tmp = tempDir('cat-trust-');
const BASE = sha256Hex('synthetic-base');
const write = bundleWriter(tmp);
// n counts the bundles written (some tests derive seeds from it)
let n = 0;
const bundle = (seed: number, pass: boolean | null = null) => (n++, write({ seed, pass }));

function bound(b: { sha256: string; id: string }, pass: boolean, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { kind: 'report', adapter_id: b.id, pass, bundle_sha256: b.sha256, base_model_sha256: BASE, run: { tool: 'validate', id: `run-${pass}` }, failures: pass ? [] : ['kl 0.2 > 0.05'], ...extra };
}

t.test('a report counts only when it names this bundle, its base model and its run', async (t) => {
  const reg = new Registry(path.join(tmp, 'r-bind'));
  const b = await bundle(1);
  const other = await bundle(2);
  await reg.add(b.dir);
  await reg.add(other.dir);
  const cases: [string, Record<string, unknown>, RegExp][] = [
    ['hand-written {"pass":true}', { kind: 'report', adapter_id: b.id, pass: true }, /names no bundle/],
    ["another bundle's report", bound(other, true, { adapter_id: b.id }), new RegExp(`about bundle ${other.sha256.slice(0, 12)}, not this one`)],
    ['another base model', bound(b, true, { base_model_sha256: sha256Hex('other-model') }), /measured on base model .* but the adapter's base model is synthetic-base/],
    ['no base model', bound(b, true, { base_model_sha256: undefined }), /names no base model/],
    ['no run', bound(b, true, { run: undefined }), /does not name the validation run/],
  ];
  for (const [what, rep, re] of cases) {
    const e = await rejection(reg.addReport(b.sha256, JSON.parse(JSON.stringify(rep)) as Record<string, unknown>));
    t.equal(e.exitCode, 2, `${what}: a usage error`);
    t.match(e.message, re, what);
  }
  t.same(await reg.attachedReports(b.sha256), [], 'nothing attached');
  await t.rejects(reg.promote('live', { id: b.sha256 }), /no validation report/);
  const ok = await reg.addReport(b.sha256, bound(b, true));
  t.match(ok.report, { report_sha256: /^[0-9a-f]{64}$/, chain: /^[0-9a-f]{64}$/ }, 'stored sealed');
  const { event } = await reg.promote('live', { id: b.sha256 });
  t.equal(event?.report, ok.report.report_sha256, 'the promotion names the report it was let through on');
  t.equal((await reg.verify()).ok, true);
});

t.test('a report shipped in the manifest counts only if it names the bundle as it was validated', async (t) => {
  const reg = new Registry(path.join(tmp, 'r-shipped'));
  // writeSyntheticBundle ships a bound report (as validate appends one: naming the hash before the append)
  const good = await bundle(3, true);
  t.equal((await reg.promote('live', { dir: good.dir })).event?.action, 'promote');
  // a hand-written pass in a manifest does not count
  const forged = await bundle(4, null);
  const m = await readManifest(forged.dir);
  await rewriteManifest(forged.dir, { ...m, validation: [{ kind: 'report', adapter_id: m.id, pass: true }] });
  const e = await rejection(reg.promote('live', { dir: forged.dir }));
  t.match(e.message, /no validation report that counts .* names no bundle/);
  // a copy of good's shipped report does not count for another bundle
  const copied = await bundle(5, null);
  const cm = await readManifest(copied.dir);
  const goodReport = (await readManifest(good.dir)).validation[0];
  await rewriteManifest(copied.dir, { ...cm, validation: [{ ...goodReport, adapter_id: cm.id }] });
  t.match((await rejection(reg.promote('live', { dir: copied.dir }))).message, /about bundle .*, not this one/);
  t.equal((await reg.log('live')).length, 1);
});

t.test('a stored report edited afterwards is found by verify and refused by promote', async (t) => {
  const reg = new Registry(path.join(tmp, 'r-edit'));
  const b = await bundle(6);
  await reg.add(b.dir);
  await reg.addReport(b.sha256, bound(b, false));
  await t.rejects(reg.promote('live', { id: b.sha256 }), /latest validation report failed/);
  const file = path.join(reg.root, 'reports', `${b.sha256}.ndjson`);
  const original = readFileSync(file, 'utf8');
  writeFileSync(file, original.replace('"pass":false', '"pass":true'));
  const v = await reg.verify();
  t.equal(v.ok, false, 'verify finds the edit');
  t.match(v.problems, [{ area: 'reports', target: `${b.sha256}#1`, problem: /changed after it was stored/ }]);
  const e = await rejection(reg.promote('live', { id: b.sha256 }));
  t.equal(e.code, 'E_GATE');
  t.match(e.message, /changed after it was stored/);
  // resealing the edited line (a new report_sha256) still breaks the chain and the head record
  const line = JSON.parse(original.trim()) as Record<string, unknown>;
  line.pass = true;
  const { chain: _c, report_sha256: _r, ...content } = line;
  const { canonicalJson } = await import('../src/adapters/index.js');
  line.report_sha256 = sha256Hex(canonicalJson(content));
  writeFileSync(file, JSON.stringify(line) + '\n');
  t.ok((await reg.verify()).problems.length > 0, 'a resealed edit is still found');
  await t.rejects(reg.promote('live', { id: b.sha256 }), /hash chain broken|rewritten/);
  // deleting the failing latest report (so an older pass would be the latest) is a cut log
  writeFileSync(file, original);
  await reg.addReport(b.sha256, bound(b, true));
  await reg.addReport(b.sha256, bound(b, false, { run: { tool: 'validate', id: 'run-3' } }));
  const three = readFileSync(file, 'utf8').trim().split('\n');
  writeFileSync(file, three.slice(0, 2).join('\n') + '\n');
  t.match((await reg.verify()).problems, [{ area: 'reports', problem: /has 2 line\(s\), but its head record says 3: it was cut/ }]);
  await t.rejects(reg.promote('live', { id: b.sha256 }), /it was cut/);
});

t.test('a promoted-on report edited afterwards breaks the ref history in verify', async (t) => {
  const reg = new Registry(path.join(tmp, 'r-promoted'));
  const b = await bundle(7);
  await reg.add(b.dir);
  await reg.addReport(b.sha256, bound(b, true, { metrics: { kl: 0.01 } }));
  await reg.promote('live', { id: b.sha256 });
  const file = path.join(reg.root, 'reports', `${b.sha256}.ndjson`);
  writeFileSync(file, readFileSync(file, 'utf8').replace('"kl":0.01', '"kl":0.001'));
  const v = await reg.verify();
  t.ok(v.problems.some((p) => p.area === 'ref' && p.target === 'live@1' && /promoted on report [0-9a-f]{12} .* no longer in its validation history/.test(p.problem)), JSON.stringify(v.problems));
});

t.test('a ref history cut at a line boundary, emptied or deleted is detected and refused', async (t) => {
  const mk = async (name: string) => {
    const reg = new Registry(path.join(tmp, name));
    const A = await bundle(10 + n, true);
    const B = await bundle(20 + n, true);
    const C = await bundle(30 + n, true);
    for (const x of [A, B, C]) await reg.promote('live', { dir: x.dir });
    return { reg, file: path.join(reg.root, 'refs', 'live.ndjson'), A, B, C };
  };
  const damaged = async (t: Tap.Test, reg: Registry, re: RegExp) => {
    const v = await reg.verify();
    t.equal(v.ok, false, 'verify fails');
    t.match(v.problems, [{ area: 'ref', target: 'live', problem: re }]);
    // each call starts only when awaited: a promise made early would reject unhandled meanwhile
    const id = (await reg.objects())[0];
    for (const [what, call] of [
      ['log', () => reg.log('live')],
      ['resolve (explain, export, show)', () => reg.resolve('live')],
      ['rollback', () => reg.rollback('live')],
      ['promote', () => reg.promote('live', { id }, { force: true })],
    ] as const) {
      const e = await rejection(call() as Promise<unknown>);
      t.equal(e.code, 'E_CORRUPT', `${what} refuses`);
      t.match(e.message, re);
    }
  };
  {
    const { reg, file } = await mk('r-cut');
    const lines = readFileSync(file, 'utf8').trim().split('\n');
    writeFileSync(file, lines.slice(0, 2).join('\n') + '\n');
    await damaged(t, reg, /has 2 line\(s\), but its head record says 3: it was cut/);
  }
  {
    const { reg, file } = await mk('r-empty');
    writeFileSync(file, '');
    await damaged(t, reg, /live\.ndjson is empty, but its head record says it had 3 line/);
  }
  {
    const { reg, file } = await mk('r-deleted');
    unlinkSync(file);
    t.same(await reg.refs(), ['live'], 'the ref is still listed by its head record');
    await damaged(t, reg, /live\.ndjson is missing, but its head record says it had 3 line/);
  }
  {
    const { reg } = await mk('r-nohead');
    unlinkSync(path.join(reg.root, 'refs', 'live.head'));
    await damaged(t, reg, /live\.head is missing .* the history has 3 lines/);
  }
});

t.test('a write interrupted between the history and its head record is not damage', async (t) => {
  const reg = new Registry(path.join(tmp, 'r-interrupted'));
  const A = await bundle(40, true);
  const B = await bundle(41, true);
  await reg.promote('live', { dir: A.dir });
  const headFile = path.join(reg.root, 'refs', 'live.head');
  const oldHead = readFileSync(headFile, 'utf8');
  await reg.promote('live', { dir: B.dir });
  writeFileSync(headFile, oldHead); // as if killed after renaming the history, before the head
  t.equal((await reg.head('live'))?.bundle, B.sha256, 'readers accept a history one event ahead');
  const v = await reg.verify();
  t.equal(v.ok, true);
  t.match(v.notes, [/head record lags the history by 1 event/]);
  await reg.rollback('live');
  t.same(JSON.parse(readFileSync(headFile, 'utf8')).count, 3, 'the next write catches the head up');
  t.equal((await reg.verify()).notes.length, 0);
  t.ok(existsSync(headFile));
  t.equal((await hashBundleDir(A.dir)).sha256, A.sha256);
});
