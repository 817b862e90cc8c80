/**
 * Through real pipes of the built binaries on the MoE fixture model:
 *
 *   probe-gen | moe-route-distill --emit-routes | validate
 *
 * validate scores the adapter with the routing metrics (route_tv and its
 * gate, route_agree) and passes the route records through unchanged, as
 * attrib does.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cat-moe-pipe-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const env = { ...process.env, PATH: `${path.join(ROOT, 'node_modules/.bin')}:${process.env.PATH}` };
const MOE = path.join(ROOT, 'fixtures/models/moe');

function sh(cmd: string) {
  const r = spawnSync('bash', ['-o', 'pipefail', '-c', cmd], { cwd: tmp, env, encoding: 'utf8', maxBuffer: 1 << 28 });
  return { code: r.status, err: r.stderr };
}
const read = (f: string) => fs.readFileSync(path.join(tmp, f), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);

t.test('probe-gen | moe-route-distill --emit-routes | validate: routing metrics in the report, route records passed through', async (t) => {
  const edit = fs.readFileSync(path.join(ROOT, 'fixtures/world/edits.ndjson'), 'utf8').split('\n')[0];
  fs.writeFileSync(path.join(tmp, 'facts.ndjson'), edit + '\n');
  const r = sh(
    'probe-gen --roles edit,paraphrase facts.ndjson ' +
    '| moe-route-distill --emit-routes --steps 30 --phase-a-steps 0 --retain-facts 50 --neighbours 5 --retain-documents 8 --out adapters -q ' +
    `| tee mid.ndjson | validate --model ${MOE} --no-record --no-fluency --retain-n 300 --general-n 50 -q > out.ndjson`,
  );
  t.equal(r.code, 0, r.err);
  const mid = read('mid.ndjson');
  const out = read('out.ndjson');
  const routes = mid.filter((x) => x.kind === 'route');
  t.ok(routes.length > 0, `${routes.length} route records`);
  t.same(out.filter((x) => x.kind === 'route'), routes, 'validate passes the route records through unchanged, in order');
  const rep = out.find((x) => x.kind === 'report')!;
  const m = rep.metrics as Record<string, number>;
  t.ok(m.route_tv >= 0 && m.route_tv < 1, `route_tv ${m.route_tv}`);
  t.ok(m.n_route_prompts > 0 && m.n_route_tokens > m.n_route_prompts);
  t.ok(m.route_agree > 0 && m.route_agree_before > 0, `agreement ${m.route_agree_before} → ${m.route_agree}`);
  t.ok((rep.gates as string[]).includes('route_tv<=0.05'), 'route_tv is gated by default');
  t.equal(m.efficacy, 1, 'the edit took');

  // attrib passes route records through as well
  fs.writeFileSync(path.join(tmp, 'routes.ndjson'), routes.slice(0, 50).map((x) => JSON.stringify(x)).join('\n') + '\n');
  const a = sh(`attrib --model ${MOE} -q routes.ndjson > attrib.ndjson`);
  t.equal(a.code, 0, a.err);
  t.same(read('attrib.ndjson'), routes.slice(0, 50));
});
