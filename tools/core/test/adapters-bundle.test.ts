import t from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, mkdirSync, rmSync, symlinkSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { validateRecord } from '../src/records/index.js';
import { readBundle, writeBundle, writeSyntheticBundle, hashBundleDir, encodeSafetensorsF32, adapterRecord, BundleError, ManifestError, canonicalListing } from '../src/adapters/index.js';

const tmp = mkdtempSync(path.join(tmpdir(), 'cat-bundle-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));

async function rejectsWith(p: Promise<unknown>, cls: new (...a: never[]) => Error, re: RegExp): Promise<boolean> {
  try {
    await p;
  } catch (e) {
    return e instanceof cls && re.test((e as Error).message);
  }
  return false;
}

/** Independent reference: the documented coreutils pipeline. */
function shellHash(dir: string): string {
  return execFileSync('bash', ['-c', `cd "$1" && find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum | cut -c1-64`, 'x', dir], { encoding: 'utf8' }).trim();
}

t.test('a written bundle reads back, and its hash matches sha256sum', async (t) => {
  const dir = path.join(tmp, 'b1');
  const w = await writeSyntheticBundle(dir, { seed: 7, pass: true, targets: { 'model.layers.0.mlp.down_proj': [8, 12], 'model.layers.1.mlp.down_proj': [8, 12] } });
  t.same(readdirSync(dir).sort(), ['adapter_config.json', 'adapter_model.safetensors', 'catechism.json']);
  const b = await readBundle(dir);
  t.equal(b.sha256, w.sha256);
  t.equal(b.sha256, shellHash(dir), 'hash equals the coreutils pipeline');
  t.equal(b.manifest.id, 'synthetic-7');
  t.equal(b.adapterConfig.peft_type, 'LORA');
  t.same(b.manifest.targets, ['model.layers.0.mlp.down_proj', 'model.layers.1.mlp.down_proj']);
  // Subdirectories and extra files take part in the hash the same way.
  mkdirSync(path.join(dir, 'docs'));
  writeFileSync(path.join(dir, 'docs', 'README.md'), 'hello\n');
  const b2 = await readBundle(dir);
  t.not(b2.sha256, b.sha256);
  t.equal(b2.sha256, shellHash(dir));
  t.match(canonicalListing(b2.files), /^[0-9a-f]{64}  adapter_config\.json\n/);
});

t.test('one flipped byte changes the hash; same content elsewhere hashes the same', async (t) => {
  const a = path.join(tmp, 'same-a');
  const b = path.join(tmp, 'same-b');
  await writeSyntheticBundle(a, { seed: 3 });
  await writeSyntheticBundle(b, { seed: 3 });
  const ha = (await hashBundleDir(a)).sha256;
  t.equal((await hashBundleDir(b)).sha256, ha, 'content-addressed: location does not matter');
  const f = path.join(b, 'adapter_model.safetensors');
  const bytes = readFileSync(f);
  bytes[bytes.length - 1] ^= 1;
  writeFileSync(f, bytes);
  t.not((await hashBundleDir(b)).sha256, ha);
});

t.test('safetensors encoding is well framed (decoded independently)', async (t) => {
  const data = new Float32Array([1, -2, 3.5, 0.25, 5, 6]);
  const buf = Buffer.from(encodeSafetensorsF32([{ name: 'w', shape: [2, 3], data }]));
  const n = Number(buf.readBigUInt64LE(0));
  t.equal((8 + n) % 8, 0, 'header padded to 8 bytes');
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  t.same(header.w, { dtype: 'F32', shape: [2, 3], data_offsets: [0, 24] });
  const body = buf.subarray(8 + n);
  const back = Array.from({ length: 6 }, (_, i) => body.readFloatLE(i * 4));
  t.same(back, Array.from(data));
  t.throws(() => encodeSafetensorsF32([{ name: 'w', shape: [4], data }]), /holds 4 values/);
});

t.test('bad bundles are refused with the reason', async (t) => {
  const good = path.join(tmp, 'good');
  await writeSyntheticBundle(good, { seed: 9 });
  await t.rejects(readBundle(path.join(tmp, 'nope')), /no such bundle directory/);
  await t.rejects(readBundle(path.join(good, 'catechism.json')), /a bundle is a directory/);

  const missing = path.join(tmp, 'missing');
  await writeSyntheticBundle(missing, { seed: 10 });
  rmSync(path.join(missing, 'adapter_model.safetensors'));
  await t.rejects(readBundle(missing), { name: 'BundleError', message: /missing adapter_model\.safetensors/ });

  const badJson = path.join(tmp, 'badjson');
  await writeSyntheticBundle(badJson, { seed: 11 });
  writeFileSync(path.join(badJson, 'catechism.json'), '{"id": ');
  await t.rejects(readBundle(badJson), /the manifest is not valid JSON/);

  const badManifest = path.join(tmp, 'badmanifest');
  await writeSyntheticBundle(badManifest, { seed: 12 });
  const m = JSON.parse(readFileSync(path.join(badManifest, 'catechism.json'), 'utf8'));
  m.rank = 'two';
  writeFileSync(path.join(badManifest, 'catechism.json'), JSON.stringify(m));
  t.ok(await rejectsWith(readBundle(badManifest), ManifestError, /\$\.rank: expected a positive integer/));

  const badWeights = path.join(tmp, 'badweights');
  await writeSyntheticBundle(badWeights, { seed: 13 });
  writeFileSync(path.join(badWeights, 'adapter_model.safetensors'), Buffer.from([255, 255, 255, 255, 0, 0, 0, 0, 1]));
  await t.rejects(readBundle(badWeights), /not a safetensors file \(header length/);

  const noPeft = path.join(tmp, 'nopeft');
  await writeSyntheticBundle(noPeft, { seed: 14 });
  writeFileSync(path.join(noPeft, 'adapter_config.json'), '{"r": 2}');
  await t.rejects(readBundle(noPeft), /missing "peft_type"/);

  const link = path.join(tmp, 'link');
  await writeSyntheticBundle(link, { seed: 15 });
  symlinkSync('/etc/hostname', path.join(link, 'extra'));
  t.ok(await rejectsWith(readBundle(link), BundleError, /symlink/));
});

t.test('writeBundle is all-or-nothing and never overwrites', async (t) => {
  const dir = path.join(tmp, 'w1');
  const { manifest } = await writeSyntheticBundle(dir, { seed: 21 });
  await t.rejects(writeSyntheticBundle(dir, { seed: 22 }), /already exists/);
  const bad = { ...manifest, rank: -1 };
  await t.rejects(writeBundle(path.join(tmp, 'w2'), { adapterConfig: { peft_type: 'LORA' }, weights: new Uint8Array(8), manifest: bad }), /\$\.rank/);
  await t.rejects(writeBundle(path.join(tmp, 'w3'), { adapterConfig: { peft_type: 'LORA' }, weights: new Uint8Array(8), manifest, extraFiles: { '../escape': 'x' } }), /bad file name/);
  const left = readdirSync(tmp).filter((n) => n.startsWith('.w') || n === 'w2' || n === 'w3');
  t.same(left, [], 'no staging directories or partial bundles left behind');
});

t.test('adapterRecord carries the DESIGN fields', async (t) => {
  const dir = path.join(tmp, 'rec');
  const parent = 'c'.repeat(64);
  const { manifest, sha256 } = await writeSyntheticBundle(dir, { seed: 31, pass: false, manifest: { scale: -1, parents: [{ id: 'older', sha256: parent }] } });
  const r = adapterRecord(manifest, { path: dir, sha256 });
  t.match(r, { kind: 'adapter', id: 'synthetic-31', version: 1, path: dir, sha256, method: 'lora', rank: 2, scale: -1 });
  t.same(r.parents, [parent], 'parents as content hashes, as the record schema asks');
  t.same(r.fact_ids, manifest.fact_ids);
  t.doesNotThrow(() => validateRecord(r), 'valid as an adapter record for the other tools');
  t.doesNotThrow(() => validateRecord(manifest.validation[0] ?? { kind: 'report', adapter_id: 'x', metrics: {}, pass: true, failures: [] }));
});
