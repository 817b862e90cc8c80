// The CLI layer through a real child process: a tiny tool defined inline
// on top of the built dist/cli (the build runs before the tests).
import t from 'tap';
import { cudaUnavailable } from '@catechism/kernels';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const cliUrl = new URL('../dist/cli/index.js', import.meta.url).href;
const TOOL = `
import { runTool, InputError } from ${JSON.stringify(cliUrl)};
await runTool({
  name: 'demo-tool',
  version: '9.8.7',
  describe: 'A demo tool.',
  examples: [['demo-tool in.ndjson', 'copy in.ndjson']],
  options: { mode: { type: 'string', default: 'copy' } },
  async run(ctx) {
    if (ctx.args.mode === 'runtime') throw new Error('disk on fire');
    if (ctx.args.mode === 'input') throw new InputError('expected string, got number', { source: 'x.ndjson', record: 3, field: 'prompt' });
    if (ctx.args.mode === 'seed') { await ctx.out.write({ kind: 'n', seed: ctx.args.seed, u: ctx.rng.uniform(), device: ctx.args.device }); return; }
    for await (const { record } of ctx.read()) { ctx.progress.tick(); await ctx.out.write(record); }
  },
});
`;

// Written to a file so it runs like a real binary (argv[1] is the script).
const script = join(mkdtempSync(join(tmpdir(), 'catechism-cli-')), 'demo-tool.mjs');
writeFileSync(script, TOOL);

function run(args: string[], input = '', env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [script, ...args], {
    input,
    encoding: 'utf8',
    env: { ...process.env, ...env },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

t.test('ok run copies records, exit 0, nothing on stderr when not a TTY', async (t) => {
  const r = run([], '{"kind":"a","x":1}\n{"kind":"b"}\n');
  t.equal(r.code, 0);
  t.equal(r.stdout, '{"kind":"a","x":1}\n{"kind":"b"}\n');
  t.equal(r.stderr, '');
});

t.test('--help shows usage, the common options and examples; --version', async (t) => {
  const h = run(['--help']);
  t.equal(h.code, 0);
  for (const s of ['demo-tool', 'A demo tool.', '--format', '--seed', '--model', '--device', '--registry', '--quiet', '--debug', 'Examples:', 'copy in.ndjson']) {
    t.ok(h.stdout.includes(s), `help mentions ${s}`);
  }
  t.equal(run(['--version']).stdout.trim(), '9.8.7');
});

t.test('usage errors exit 2 with one line', async (t) => {
  for (const args of [['--bogus'], ['--format', 'xml'], ['--device', 'tpu'], ['--seed', 'abc'], ['--seed', '1.5']]) {
    const r = run(args);
    t.equal(r.code, 2, args.join(' '));
    t.equal(r.stderr.trim().split('\n').length, 1);
    t.match(r.stderr, /^demo-tool: /);
  }
});

t.test('bad input exits 2 with one line naming file, record and field', async (t) => {
  const r = run(['--mode', 'input']);
  t.equal(r.code, 2);
  t.equal(r.stderr, 'demo-tool: x.ndjson: record 3: field "prompt": expected string, got number\n');
  const d = run(['--mode', 'input', '--debug']);
  t.equal(d.code, 2);
  t.match(d.stderr, /\n\s+at /, 'stack only with --debug');
});

t.test('runtime failures exit 1', async (t) => {
  const r = run(['--mode', 'runtime']);
  t.equal(r.code, 1);
  t.equal(r.stderr, 'demo-tool: disk on fire\n');
});

t.test('--seed seeds the rng; --device is checked', async (t) => {
  const a = JSON.parse(run(['--mode', 'seed', '--seed', '7']).stdout);
  const b = JSON.parse(run(['--mode', 'seed', '--seed', '7']).stdout);
  const c = JSON.parse(run(['--mode', 'seed', '--seed', '8', '--device', 'cpu']).stdout);
  t.equal(a.seed, 7);
  t.equal(a.u, b.u);
  t.not(a.u, c.u);
  t.equal(a.device, 'cpu');
  t.equal(c.device, 'cpu');
  // Without a usable GPU, --device cuda is a runtime failure naming what is missing, not a silent CPU run.
  const g = run(['--mode', 'seed', '--device', 'cuda']);
  if (cudaUnavailable() === null) t.equal(g.code, 0, 'a usable GPU: the run goes on');
  else t.equal(g.code, 1);
  if (cudaUnavailable() !== null) t.match(g.stderr, /^demo-tool: --device cuda: (no usable GPU|this build of @catechism\/kernels has no CUDA backend|the CUDA kernels were not built for this GPU)/);
});

t.test('--format arrow writes an Arrow IPC stream', async (t) => {
  const r = spawnSync(process.execPath, [script, '--format', 'arrow'], { input: '{"kind":"a"}\n' });
  t.equal(r.status, 0);
  t.same([...r.stdout.subarray(0, 4)], [0xff, 0xff, 0xff, 0xff]);
});

t.test('CATECHISM_REPORT_MAXRSS=1 reports peak memory', async (t) => {
  const r = run([], '', { CATECHISM_REPORT_MAXRSS: '1' });
  t.match(r.stderr, /^maxrss_kib=\d+\n$/);
});

t.test('a closed stdout ends the tool quietly with exit 0', async (t) => {
  const child = spawn(process.execPath, [script], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (c) => (stderr += c));
  child.stdin.on('error', () => {});
  // Read the first chunk, then close our end of the pipe like `head -1` does.
  child.stdout.once('data', () => child.stdout.destroy());
  const line = JSON.stringify({ kind: 'x', pad: 'y'.repeat(200) }) + '\n';
  const feed = async () => {
    for (let i = 0; i < 200000 && !child.stdin.destroyed; i++) {
      if (!child.stdin.write(line)) await new Promise((r) => child.stdin.once('drain', r));
    }
    child.stdin.end();
  };
  feed().catch(() => {});
  const code = await new Promise<number | null>((r) => child.on('close', (c) => r(c)));
  t.equal(code, 0);
  t.equal(stderr, '');
});
