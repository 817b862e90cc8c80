/**
 * `adapter-merge explain` for governance (issue 25), through the real
 * binary: who approved the adapter that makes the answer, and on the MoE
 * fixture model the experts each layer picks for the answer before and
 * after the adapter. The registry is set up in-process (cheaper than
 * processes; the commands themselves are tested in governance.test.ts).
 */
import t from 'tap';
import * as path from 'node:path';
import { Registry, generateApproverKeys, writeSyntheticBundle } from '../src/core.js';
import { modelSha256 } from '@catechism/core/edit';
import { ROOT, amRunner, tempDir } from '../test-support/cli.js';

const MOE = path.join(ROOT, 'fixtures', 'models', 'moe');
const tmp = tempDir('cat-explain-gov-');
const REG = path.join(tmp, 'reg');
const am = amRunner(tmp, REG);

t.test('explain lists the approvals and, on a MoE model, the experts per layer before and after the adapter', async (t) => {
  const reg = new Registry(REG);
  const dir = path.join(tmp, 'moe-edit');
  // a strong adapter on layer 2's attention output: the routers of layers 2 and 3 see a different residual, layers 0 and 1 cannot
  await writeSyntheticBundle(dir, {
    seed: 7,
    id: 'moe-edit',
    pass: true,
    targets: { 'model.layers.2.self_attn.o_proj': [128, 128] },
    manifest: { base_model: { name: MOE, sha256: modelSha256(MOE) }, scale: 3000 },
  });
  const alice = generateApproverKeys();
  await reg.addApprover('alice', alice.publicPem, null);
  await reg.protect('live', 1);
  await reg.add(dir);
  await reg.approve('live', 'moe-edit', alice.privatePem, 'routing checked');
  await reg.promote('live', { id: 'moe-edit' });

  const r = am(['explain', '--ref', 'live', 'Dabe Tensunov works for', '--model', MOE]);
  t.equal(r.code, 0, r.stderr);
  const e = r.records[0] as { approvals: unknown[]; contributions: { approvals: unknown[] }[]; experts: { layer: number; base: number[]; adapted: number[]; changed: boolean }[] };
  t.match(e.approvals, [{ ref: 'live', approver: 'alice', note: 'routing checked', signature_ok: true }]);
  t.match(e.contributions[0].approvals, [{ approver: 'alice' }], 'the contribution carries its approvals');
  t.equal(e.experts.length, 4, 'one entry per layer');
  for (const l of e.experts) {
    t.equal(l.base.length, 2, 'top-2 routing');
    t.equal(new Set([...l.base, ...l.adapted].filter((x) => x >= 0 && x < 4)).size >= 2, true);
    t.equal(l.changed, [...l.base].sort().join() !== [...l.adapted].sort().join());
  }
  for (const l of [0, 1]) t.same(e.experts[l].adapted, e.experts[l].base, `layer ${l} routes before the adapted module acts: unchanged`);
  t.ok(e.experts.slice(2).some((l) => l.changed), `the adapter changes the experts of layer 2 or 3: ${JSON.stringify(e.experts)}`);
  const txt = am(['explain', '--ref', 'live', 'Dabe Tensunov works for', '--model', MOE, '--text']);
  t.match(txt.stdout, /approvals of [0-9a-f]{12}: alice for live/);
  t.match(txt.stdout, /layer 3: \[\d, \d\] → \[\d, \d\]/);
});
