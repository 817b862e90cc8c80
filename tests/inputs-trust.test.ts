/**
 * Trust at the edges of the tools (issue 18), through the built binaries:
 * answers the model cannot spell, bad rows mid-file, empty input, a corrupt
 * model, a full disk, and `attrib | head -1`.
 */
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdtempSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const main = (tool: string): string => join(root, 'tools', tool, 'dist', 'main.js');
const dense = join(root, 'fixtures/models/dense');
const dir = mkdtempSync(join(tmpdir(), 'catechism-trust-'));

function run(tool: string, args: string[], input = '') {
  const r = spawnSync(process.execPath, [main(tool), ...args], { input, encoding: 'utf8', cwd: dir, env: { ...process.env, CATECHISM_REGISTRY: join(dir, 'registry') }, maxBuffer: 1 << 28 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}
const lines = (s: string): string[] => s.split('\n').filter(Boolean);

const counterfact = join(root, 'fixtures/records/counterfact-sample.json');
const zsre = join(root, 'fixtures/records/zsre-sample.json');
const edits = readFileSync(join(root, 'fixtures/world/edits.ndjson'), 'utf8').split('\n').filter((l) => l.includes('"op":"insert"'));

t.test('an answer the model cannot spell is refused in every tool that loads the model', async (t) => {
  // CounterFact's first record: target_new "English", unknown to the fixture world's tokenizer
  for (const [tool, args] of [
    ['probe-gen', ['--model', dense, counterfact]],
    ['attrib', [counterfact]],
    ['lora-train', ['--out', join(dir, 'never'), counterfact]],
  ] as const) {
    const r = run(tool, [...args]);
    t.equal(r.code, 2, `${tool}: exit 2`);
    t.match(r.stderr, /record 1: field "target_new": fact "counterfact-0": the model's tokenizer cannot spell "English"/, `${tool} names record, field, fact and word`);
    t.notMatch(r.stderr, /\n\s+at /, 'no stack trace');
  }
  t.notOk(existsSync(join(dir, 'never')), 'lora-train trained nothing');
  const z = run('lora-train', ['--out', join(dir, 'never2'), zsre]);
  t.equal(z.code, 2);
  t.match(z.stderr, /"University", "Michigan"/);
  // --allow-unknown goes on, and says how many
  const a = run('probe-gen', ['--model', dense, '--allow-unknown', counterfact]);
  t.equal(a.code, 0, a.stderr);
  t.equal(lines(a.stdout).length, 6, 'three facts and their edit probes');
  t.match(a.stderr, /--allow-unknown: 3 fact\(s\) kept/);
  t.match(a.stderr, /warning: \d+ word\(s\) in the subject or prompt of 3 fact\(s\)/);
});

t.test('--on-bad-record skip: zsRE-MEND rows with an empty alt mid-file are rejected, the rest goes on', async (t) => {
  const rows = Array.from({ length: 40 }, (_, i) => ({ subject: `Person ${i}`, src: `What university did Person ${i} attend?`, alt: i === 20 || i === 31 ? '' : `University ${i}`, answers: ['Yale'] }));
  const file = join(dir, 'zsre-mend.json');
  writeFileSync(file, JSON.stringify(rows));
  const fail = run('probe-gen', [file]);
  t.equal(fail.code, 2);
  t.match(fail.stderr, /zsre-mend\.json: record 21: field "alt": expected a non-empty answer/);
  const rejects = join(dir, 'rejects.ndjson');
  const skip = run('probe-gen', ['--on-bad-record', 'skip', '--rejects', rejects, file]);
  t.equal(skip.code, 4, 'exit 4: finished, some records skipped');
  t.equal(lines(skip.stdout).length, 2 * 38, 'every good row becomes a fact and its probe');
  t.match(skip.stderr, /2 bad record\(s\) skipped, written to .*rejects\.ndjson/);
  const rej = lines(readFileSync(rejects, 'utf8')).map((l) => JSON.parse(l) as { record: number; field: string; value: { alt: string } });
  t.same(rej.map((r) => [r.record, r.field, r.value.alt]), [[21, 'alt', ''], [32, 'alt', '']]);
  t.equal(run('probe-gen', ['--rejects', rejects, file]).code, 2, '--rejects without skip is a usage error');
  // unknown words are skippable too, in attrib
  const at = run('attrib', ['--on-bad-record', 'skip', '--samples', '2', counterfact]);
  t.equal(at.code, 4);
  t.equal(at.stdout, '', 'the three refused facts are left out');
});

t.test('empty input is exit 0 in every tool', async (t) => {
  for (const [tool, args] of [
    ['probe-gen', []],
    ['attrib', []],
    ['lora-train', ['--out', join(dir, 'empty-out')]],
    ['validate', []],
    ['adapter-merge', ['--method', 'cat', '--out', join(dir, 'empty-merge')]],
  ] as const) {
    const r = run(tool, [...args], '');
    t.equal(r.code, 0, `${tool}: ${r.stderr}`);
    t.equal(r.stdout, '');
  }
});

t.test('a corrupt model file is exit 2 everywhere', async (t) => {
  const bad = join(dir, 'bad-model');
  cpSync(dense, bad, { recursive: true });
  truncateSync(join(bad, 'model.safetensors'), 5000);
  const facts = join(dir, 'facts.ndjson');
  writeFileSync(facts, edits.slice(0, 1).join('\n') + '\n');
  for (const [tool, args] of [
    ['probe-gen', ['--check-known', '--roles', 'edit,paraphrase']],
    ['attrib', []],
    ['lora-train', ['--out', join(dir, 'bad-out')]],
    ['validate', ['--baseline']],
  ] as const) {
    const r = run(tool, [...args, '--model', bad, facts]);
    t.equal(r.code, 2, `${tool}: ${r.stderr}`);
    t.match(r.stderr, /model\.safetensors/);
    t.equal(lines(r.stderr.replace(/^.*: (warning|--).*$/gm, '')).length, 1, 'one line');
  }
  copyFileSync(join(dense, 'config.json'), join(bad, 'config.json'));
});

t.test('a full disk is one clear line, exit 1', { skip: !existsSync('/dev/full') && 'no /dev/full' }, async (t) => {
  const r = spawnSync('bash', ['-c', `node ${main('probe-gen')} --roles all --quiet ${join(root, 'fixtures/world/edits.ndjson')} > /dev/full`], { encoding: 'utf8' });
  t.equal(r.status, 1);
  t.match(r.stderr, /^probe-gen: no space left on the device \(write the output\)/);
  t.equal(lines(r.stderr).length, 1);
});

t.test('attrib writes each fact before tracing it: `attrib | head -1` gets it at once', async (t) => {
  const facts = join(dir, 'ten.ndjson');
  writeFileSync(facts, edits.slice(0, 10).join('\n') + '\n');
  const child = spawn(process.execPath, [main('attrib'), facts], { stdio: ['ignore', 'pipe', 'pipe'] });
  const first = await new Promise<string>((resolve) => {
    let buf = '';
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      if (buf.includes('\n')) resolve(buf.split('\n')[0]);
    });
  });
  // The old attrib buffered 64 KiB (the whole run here) before writing anything.
  t.equal(child.exitCode, null, 'the first record came while attrib was still working');
  t.match(JSON.parse(first), { kind: 'fact', id: 'edit-0001' });
  child.stdout.destroy(); // like head -1 exiting
  const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  t.equal(code, 0, 'a closed stdout ends attrib quietly');
});

t.test('attrib shows progress on a terminal, like the others', { skip: !existsSync('/usr/bin/script') && 'no script(1) for a pseudo-terminal' }, async (t) => {
  const facts = join(dir, 'three.ndjson');
  writeFileSync(facts, edits.slice(0, 3).join('\n') + '\n');
  // script(1) gives attrib a terminal for stderr; stdout goes to a file
  const r = spawnSync('script', ['-qec', `${process.execPath} ${main('attrib')} --samples 2 ${facts} > ${join(dir, 'three.out')}`, '/dev/null'], { encoding: 'utf8' });
  t.equal(r.status, 0, r.stdout);
  t.match(r.stdout, /\rattrib: 1 records/, 'a counter after the first fact (the old one waited for 4096 records)');
  t.equal(lines(readFileSync(join(dir, 'three.out'), 'utf8')).filter((l) => l.includes('"kind":"fact"')).length, 3);
});
