// The runner's shared resources (issue 16 §4) through a real child process:
// model() loaded once with its hash, registry() with the same default in every
// tool, defaults() only for a bundled fixture model, and the exit-code field.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir, homedir } from 'node:os';
import { join, resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname, '../../..');
const cliUrl = new URL('../dist/cli/index.js', import.meta.url).href;
const editUrl = new URL('../dist/edit/model-util.js', import.meta.url).href;
const TOOL = `
import { runTool } from ${JSON.stringify(cliUrl)};
import { modelSha256 } from ${JSON.stringify(editUrl)};
await runTool({
  name: 'res-tool',
  version: '1.0.0',
  describe: 'resources',
  examples: [],
  options: { what: { type: 'string', default: 'registry' }, code: { type: 'number' }, need: { type: 'string' } },
  async run(ctx) {
    const a = ctx.args;
    if (a.what === 'registry') {
      await ctx.out.write({ kind: 'r', dir: ctx.registry(), named: ctx.registry({ home: false }) ?? null });
    } else if (a.what === 'defaults') {
      const d = ctx.defaults();
      const rec = { kind: 'd', world: d.world, templates: d.file('templates.json') ?? null, general: d.file('eval/general.ndjson') ?? null };
      if (a.need) rec.needed = d.need(a.need, '--templates', 'training paraphrases');
      await ctx.out.write(rec);
    } else if (a.what === 'model') {
      const m1 = await ctx.model();
      const m2 = await ctx.model();
      await ctx.out.write({ kind: 'm', same: m1 === m2, sameModel: m1.model === m2.model, dir: m1.dir, name: m1.name, sha: m1.sha256(), expected: modelSha256(m1.dir), layers: m1.model.config.layers });
    } else if (a.what === 'code') {
      for await (const _ of ctx.read()) { /* count skips */ }
      if (a.code !== undefined) ctx.exitCode = a.code;
    }
  },
});
`;
const dir = mkdtempSync(join(tmpdir(), 'catechism-cli-res-'));
const script = join(dir, 'res-tool.mjs');
writeFileSync(script, TOOL);

function run(args: string[], env: Record<string, string | undefined> = {}, input = '') {
  const r = spawnSync(process.execPath, [script, ...args], { input, encoding: 'utf8', env: { ...process.env, CATECHISM_REGISTRY: undefined, ...env } });
  return { code: r.status, out: r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>), err: r.stderr };
}

t.test('registry(): --registry, else $CATECHISM_REGISTRY, else ~/.catechism/registry ({ home: false }: none)', async (t) => {
  t.match(run(['--registry', '/x/flag']).out[0], { dir: '/x/flag', named: '/x/flag' });
  t.match(run([], { CATECHISM_REGISTRY: '/x/env' }).out[0], { dir: '/x/env', named: '/x/env' });
  t.match(run(['--registry', '/x/flag'], { CATECHISM_REGISTRY: '/x/env' }).out[0], { dir: '/x/flag' }, 'the flag wins');
  t.same(run([]).out[0], { kind: 'r', dir: join(homedir(), '.catechism', 'registry'), named: null });
});

t.test('defaults(): the world of a bundled fixture model only; a missing one names the flag', async (t) => {
  const dense = run(['--what', 'defaults']).out[0];
  t.equal(dense.world, join(ROOT, 'fixtures/world'));
  t.equal(dense.templates, join(ROOT, 'fixtures/world/templates.json'));
  t.equal(dense.general, join(ROOT, 'fixtures/world/eval/general.ndjson'));
  const b = run(['--what', 'defaults', '--model', join(ROOT, 'fixtures/models/dense-b')]).out[0];
  t.equal(b.world, join(ROOT, 'fixtures/world-b'), 'dense-b was trained on world-b (its training.json)');
  const g = run(['--what', 'defaults', '--model', join(ROOT, 'fixtures/golden/gpt2')]);
  t.match(g.out[0], { world: null, templates: null, general: null });
  const need = run(['--what', 'defaults', '--model', join(ROOT, 'fixtures/golden/gpt2'), '--need', 'templates.json']);
  t.equal(need.code, 2);
  t.match(need.err, /no training paraphrases: --model .*golden\/gpt2 is not a bundled fixture model, so the fixture world's templates.json is not used; give --templates FILE/);
  t.equal(need.err.trim().split('\n').length, 1, 'one line');
});

t.test('model(): loaded once, its weights hashed once; one wording for a missing model', async (t) => {
  const m = run(['--what', 'model']);
  t.equal(m.code, 0, m.err);
  t.match(m.out[0], { same: true, sameModel: true, dir: join(ROOT, 'fixtures/models/dense'), name: 'fixtures/models/dense' });
  t.equal(m.out[0].sha, m.out[0].expected);
  const none = run(['--what', 'model', '--model', join(dir, 'nope')]);
  t.equal(none.code, 2);
  t.match(none.err, /^res-tool: --model .*nope: not a model directory \(no config\.json\)\n$/);
  const noTok = join(dir, 'no-tokenizer');
  mkdirSync(noTok);
  writeFileSync(join(noTok, 'config.json'), '{}');
  const bad = run(['--what', 'model', '--model', noTok]);
  t.equal(bad.code, 2, 'a bad model directory is bad input');
  const fx = run(['--what', 'model'], { CATECHISM_FIXTURES: join(dir, 'nope') });
  t.equal(fx.code, 2);
  t.match(fx.err, /CATECHISM_FIXTURES=.*nope: not a directory/);
});

t.test('exitCode: the tool\'s own status, else 4 when records were skipped, else 0', async (t) => {
  t.equal(run(['--what', 'code', '--code', '3']).code, 3);
  t.equal(run(['--what', 'code']).code, 0);
  const skipped = run(['--what', 'code', '--on-bad-record', 'skip'], {}, '{"kind":"a"}\nnot json\n');
  t.equal(skipped.code, 4);
  t.equal(run(['--what', 'code', '--code', '3', '--on-bad-record', 'skip'], {}, '{"kind":"a"}\nnot json\n').code, 3, 'a status the tool set wins');
});
