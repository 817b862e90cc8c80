/**
 * AlphaEdit in sequence through the registry (issue 19): the key memory of
 * earlier edits travels inside the bundles, through real pipes.
 * `lora-train --method alphaedit --registry R` writes its batch's memory into
 * the bundle; `adapter-merge --into live` carries it into live; the next
 * batch into the same registry takes live's memory as its preserved set
 * (without --preserved) and its memory extends live's, so promoting it keeps
 * that memory (4 edits) instead of adding the two (6). Short value fits (the
 * update's quality is measured elsewhere: MEMIT.md); a stand-in validator passes.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readMemory } from '@catechism/core/edit';

const root = fileURLToPath(new URL('..', import.meta.url));
const tmp = mkdtempSync(join(tmpdir(), 'cat-alphaedit-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));
const env = { ...process.env, PATH: `${join(root, 'node_modules', '.bin')}:${process.env.PATH}`, CATECHISM_REGISTRY: join(tmp, 'registry'), CATECHISM_CACHE: join(tmp, 'cache') };
const VALIDATOR = `'${process.execPath}' '${join(root, 'tools/adapter-merge/test-support/fake-validator.mjs')}' pass`;
const sh = (cmd: string) => spawnSync('bash', ['-c', cmd], { cwd: tmp, env: { ...env, V: VALIDATOR }, encoding: 'utf8', maxBuffer: 64 << 20 });
const lastAdapter = (s: string) => s.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>).filter((r) => r.kind === 'adapter').at(-1)!;
const memoryOf = (rec: Record<string, unknown>) => readMemory(join(String(rec.path), 'alphaedit_keys.safetensors'), String(rec.id));
const manifestOf = (rec: Record<string, unknown>) => JSON.parse(readFileSync(join(String(rec.path), 'catechism.json'), 'utf8'));

t.test('the key memory goes from a batch into live and from live into the next batch', async (t) => {
  const edits = readFileSync(join(root, 'fixtures/world/edits.ndjson'), 'utf8').split('\n').filter(Boolean).slice(0, 4);
  writeFileSync(join(tmp, 'b1.ndjson'), edits.slice(0, 2).join('\n') + '\n');
  writeFileSync(join(tmp, 'b2.ndjson'), edits.slice(2, 4).join('\n') + '\n');
  const train = (batch: string) => sh(`probe-gen ${batch} | lora-train --method alphaedit --v-steps 20 --refine-steps 0 --keep-other 0 --seed 0`);
  const promote = (rec: string) => sh(`adapter-merge merge --into live --validator "$V" < ${rec}`);

  const b1 = train('b1.ndjson');
  t.equal(b1.status, 0, b1.stderr);
  t.notMatch(b1.stderr, /preserving/, 'an empty registry has nothing to preserve');
  writeFileSync(join(tmp, 'a1.ndjson'), b1.stdout);
  const a1 = lastAdapter(b1.stdout);
  const m1 = memoryOf(a1);
  t.equal(m1.edits, 2, 'batch 1 carries the keys of its 2 edits');
  t.equal(m1.extends, undefined, 'and extends no earlier memory');
  t.equal(manifestOf(a1).training.preserved_keys.sha256, m1.sha256, 'the manifest names the memory file by its hash');

  const p1 = promote('a1.ndjson');
  t.equal(p1.status, 0, p1.stderr);
  const live1 = lastAdapter(p1.stdout);
  t.equal(memoryOf(live1).sha256, m1.sha256, 'live carries batch 1\'s memory, byte for byte');

  const b2 = train('b2.ndjson');
  t.equal(b2.status, 0, b2.stderr);
  t.match(b2.stderr, /alphaedit: preserving the edits of ref live/);
  writeFileSync(join(tmp, 'a2.ndjson'), b2.stdout);
  const a2 = lastAdapter(b2.stdout);
  const h2 = manifestOf(a2).hyperparameters;
  t.equal(h2.preserved_edits, 2, 'batch 2 was solved against live\'s 2 edits');
  t.equal(h2.preserved_sha256, m1.sha256, 'named by content, not by path');
  const m2 = memoryOf(a2);
  t.equal(m2.edits, 4);
  t.equal(m2.extends, m1.sha256, 'batch 2\'s memory extends live\'s');
  const grew = [...m2.cov.get(0)!].some((v, i) => Math.abs(v - m1.cov.get(0)![i]) > 1e-6);
  t.ok(grew, 'batch 2 added its own keys');

  const p2 = promote('a2.ndjson');
  t.equal(p2.status, 0, p2.stderr);
  const live2 = lastAdapter(p2.stdout);
  t.same(manifestOf(live2).fact_ids.sort(), ['edit-0001', 'edit-0002', 'edit-0003', 'edit-0004']);
  const mLive = memoryOf(live2);
  t.equal(mLive.edits, 4, 'live keeps batch 2\'s memory (4 edits), not the sum of both (6)');
  t.equal(mLive.sha256, m2.sha256);
});
