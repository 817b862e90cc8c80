// Whole pipelines through real child processes and real pipes: the record
// layer as every tool sees it, exercised through probe-gen.
import t from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const PROBE_GEN = join(root, 'tools/probe-gen/dist/main.js');
const fixture = (name: string): string => join(root, 'fixtures/records', name);
const tmp = mkdtempSync(join(tmpdir(), 'catechism-pipeline-'));
if (!existsSync(PROBE_GEN)) {
  // `npm test` builds first; running this file alone needs `npm run build`.
  throw new Error(`${PROBE_GEN} is missing: run \`npm run build\` first`);
}

const parseLines = (text: string): unknown[] => text.split('\n').filter((l) => l.length > 0).map((l) => JSON.parse(l));

interface Result {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

function probeGen(args: string[], input?: string | Buffer, env: Record<string, string> = {}): Result {
  const r = spawnSync(process.execPath, [PROBE_GEN, ...args], { input: input ?? '', env: { ...process.env, ...env }, maxBuffer: 256 * 1024 * 1024 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

function collect(child: ChildProcess): Promise<Result> {
  const out: Buffer[] = [];
  let err = '';
  child.stdout?.on('data', (c: Buffer) => out.push(c));
  child.stderr?.on('data', (c: Buffer) => (err += c));
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout: Buffer.concat(out), stderr: err })));
}

const sh = (args: string[]): string => args.map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');

/** Runs `probe-gen a… | probe-gen b…` in bash, a real OS pipe between them. */
function pipe2(a: string[], b: string[]): [Result, Result] {
  const node = sh([process.execPath, PROBE_GEN]);
  const script = `${node} ${sh(a)} | ${node} ${sh(b)}; echo "status:\${PIPESTATUS[0]},\${PIPESTATUS[1]}" >&2`;
  const r = spawnSync('bash', ['-c', script], { maxBuffer: 256 * 1024 * 1024 });
  const stderr = r.stderr.toString();
  const m = /status:(\d+),(\d+)\n$/.exec(stderr);
  const rest = stderr.replace(/status:\d+,\d+\n$/, '');
  return [
    { code: m ? Number(m[1]) : null, stdout: Buffer.alloc(0), stderr: rest },
    { code: m ? Number(m[2]) : null, stdout: r.stdout, stderr: rest },
  ];
}

const allKinds = parseLines(readFileSync(fixture('all-kinds.ndjson'), 'utf8'));

t.test('NDJSON → Arrow → NDJSON through pipes is lossless for every kind', async (t) => {
  const [a, b] = pipe2(['--passthrough', '--format', 'arrow', fixture('all-kinds.ndjson')], ['--passthrough']);
  t.equal(a.code, 0, a.stderr);
  t.equal(b.code, 0, b.stderr);
  t.same(parseLines(b.stdout.toString()), allKinds);
  // and Arrow → Arrow → NDJSON (Arrow detected on stdin of the second tool)
  writeFileSync(join(tmp, 'all.arrow'), probeGen(['--passthrough', '--format', 'arrow', fixture('all-kinds.ndjson')]).stdout);
  const [c, d] = pipe2(['--passthrough', '--format', 'arrow', join(tmp, 'all.arrow')], ['--passthrough']);
  t.equal(c.code, 0, c.stderr);
  t.same(parseLines(d.stdout.toString()), allKinds);
});

t.test('probe-gen writes the same records in Arrow as in NDJSON', async (t) => {
  const nd = probeGen([fixture('facts.ndjson'), fixture('all-kinds.ndjson')]);
  const [, viaArrow] = pipe2(['--format', 'arrow', fixture('facts.ndjson'), fixture('all-kinds.ndjson')], ['--passthrough']);
  t.equal(nd.code, 0);
  t.same(parseLines(viaArrow.stdout.toString()), parseLines(nd.stdout.toString()));
});

t.test('a CounterFact file (JSON array) gives facts and edit probes', async (t) => {
  const r = probeGen([fixture('counterfact-sample.json')]);
  t.equal(r.code, 0, r.stderr);
  const recs = parseLines(r.stdout.toString()) as Array<Record<string, unknown>>;
  t.same(recs.map((x) => x.kind), ['fact', 'probe', 'fact', 'probe', 'fact', 'probe']);
  t.same(recs[0], {
    kind: 'fact', id: 'counterfact-0', subject: 'Danielle Darrieux', prompt: 'The mother tongue of {} is', target_new: 'English',
    target_true: 'French', relation: 'P103', op: 'insert', source: 'counterfact',
    prompts: {
      paraphrase: [
        'Shayna does this and Yossel goes still and dies. Danielle Darrieux, a native',
        'An album was recorded for Capitol Nashville but never released. Danielle Darrieux spoke the language',
      ],
      neighborhood: ['The mother tongue of Léon Blum is', 'The native language of Montesquieu is'],
      attribute: ['J. R. R. Tolkien is a native speaker of'],
      generation: ["Danielle Darrieux's mother tongue is", 'Where Danielle Darrieux is from, people speak the language of'],
    },
  });
  t.same(recs[3], {
    kind: 'probe', id: 'counterfact-1/edit/0', fact_id: 'counterfact-1', role: 'edit', split: 'train',
    prompt: 'Thomas Joannes Stieltjes Glacier is a part of the continent of', target: 'Asia', expect: 'new',
  });
  // the same from stdin
  const s = probeGen([], readFileSync(fixture('counterfact-sample.json')));
  t.same(s.stdout, r.stdout);
});

t.test('a zsRE file gives question-template facts and probes', async (t) => {
  const r = probeGen(['--no-facts', fixture('zsre-sample.json')]);
  t.equal(r.code, 0, r.stderr);
  t.same(parseLines(r.stdout.toString()), [
    { kind: 'probe', id: 'zsre-84a9e9e96147/edit/0', fact_id: 'zsre-84a9e9e96147', role: 'edit', split: 'train', prompt: 'What university did Watts Humphrey attend?', target: 'University of Michigan', expect: 'new' },
    { kind: 'probe', id: 'zsre-dc656e4b425d/edit/0', fact_id: 'zsre-dc656e4b425d', role: 'edit', split: 'train', prompt: 'Which constellation is eta draconis a part of?', target: 'Ursa Minor', expect: 'new' },
    { kind: 'probe', id: 'zsre-333bd669b605/edit/0', fact_id: 'zsre-333bd669b605', role: 'edit', split: 'train', prompt: 'Which family does Ramalinaceae belong to?', target: 'Noctuidae', expect: 'new' },
  ]);
  const facts = parseLines(probeGen([fixture('zsre-sample.json')]).stdout.toString()) as Array<Record<string, unknown>>;
  t.same(facts[0].locality, [{ prompt: 'nq question: who played desmond doss father in hacksaw ridge', target: 'Hugo Weaving' }]);
  t.same(facts[0].prompts, { paraphrase: ['What university did Watts Humphrey take part in?'] });
});

t.test('forget facts give abstain probes', async (t) => {
  const r = probeGen(['--no-facts', fixture('facts.ndjson')]);
  const probes = parseLines(r.stdout.toString()) as Array<Record<string, unknown>>;
  t.same(probes.map((p) => p.expect), ['new', 'abstain', 'new']);
  t.equal(probes[1].target, '4417');
});

const good = '{"kind":"fact","id":"a","subject":"S","prompt":"{} is","target_new":"x"}\n';

t.test('bad input: exit 2 and one stderr line naming input, record and field', async (t) => {
  const cases: Array<[string, string | Buffer, RegExp]> = [
    ['truncated JSON line', good + good + '{"kind":"fact","id":"b","subj', /^probe-gen: stdin: record 3: invalid JSON \(NDJSON is one record per line\): .+\n$/],
    ['wrong field type', good + '{"kind":"fact","id":"b","subject":"S","prompt":5,"target_new":"x"}\n', /^probe-gen: stdin: record 2: field "prompt": expected string, got number\n$/],
    ['missing required field', good + good + good + '{"kind":"probe","fact_id":"a","role":"edit","split":"train","prompt":"p"}\n', /^probe-gen: stdin: record 4: field "expect": missing required field .+\n$/],
    ['binary garbage', Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13]), /^probe-gen: stdin: record 1: not NDJSON, a JSON array or an Arrow IPC stream \(first bytes: 89 50 4e 47 0d 0a 1a 0a\)\n$/],
    ['not an object', good + '"just a string"\n', /^probe-gen: stdin: record 2: expected a JSON object, got string\n$/],
    ['CounterFact record with a bad field', '[{"case_id":1,"requested_rewrite":{"prompt":"{} is","subject":"S","target_new":{"str":1},"target_true":{"str":"t"}}}]', /^probe-gen: stdin: record 1: field "requested_rewrite.target_new.str": expected string, got number\n$/],
  ];
  for (const [what, input, expected] of cases) {
    const r = probeGen([], input);
    t.equal(r.code, 2, what);
    t.match(r.stderr, expected, what);
    t.notMatch(r.stderr, /\n\s+at /, `${what}: no stack trace`);
  }
  // a truncated Arrow stream
  const arrow = probeGen(['--passthrough', '--format', 'arrow', fixture('all-kinds.ndjson')]).stdout;
  const r = probeGen([], arrow.subarray(0, Math.floor(arrow.length * 0.6)));
  t.equal(r.code, 2);
  t.match(r.stderr, /^probe-gen: stdin: record \d+: invalid or truncated Arrow IPC stream: .+\n$/);
  // the file name is given when the input is a file
  writeFileSync(join(tmp, 'bad.ndjson'), good + '{"kind":"fact","id":7,"subject":"S","prompt":"{} is","target_new":"x"}\n');
  const f = probeGen([fixture('facts.ndjson'), join(tmp, 'bad.ndjson')]);
  t.equal(f.code, 2);
  t.equal(f.stderr, `probe-gen: ${join(tmp, 'bad.ndjson')}: record 2: field "id": expected string, got number\n`);
  // --debug adds the stack
  t.match(probeGen(['--debug'], good + '{').stderr, /\n\s+at /);
});

t.test('empty input: no output, exit 0', async (t) => {
  for (const args of [[], ['--format', 'arrow'], ['--passthrough']]) {
    const r = probeGen(args, '');
    t.equal(r.code, 0);
    t.equal(r.stdout.length, 0);
    t.equal(r.stderr, '');
  }
  writeFileSync(join(tmp, 'empty.ndjson'), '');
  const r = probeGen([join(tmp, 'empty.ndjson')]);
  t.equal(r.code, 0);
  t.equal(r.stdout.length, 0);
  t.equal(probeGen(['--passthrough'], '[]').stdout.length, 0);
});

t.test('| head -1 on a long stream ends quietly', async (t) => {
  const script = `
    node -e 'let s=""; for (let i=0;i<300000;i++) s+=JSON.stringify({kind:"fact",id:"f"+i,subject:"S"+i,prompt:"{} is",target_new:"x"})+"\\n"; process.stdout.on("error",()=>process.exit(0)); process.stdout.write(s)' \\
      | node ${JSON.stringify(PROBE_GEN)} | head -1
    echo "status:\${PIPESTATUS[1]}" >&2`;
  const r = spawnSync('bash', ['-c', script], { encoding: 'utf8' });
  t.equal(r.stdout.trim().split('\n').length, 1);
  t.same(JSON.parse(r.stdout), { kind: 'fact', id: 'f0', subject: 'S0', prompt: '{} is', target_new: 'x' });
  t.equal(r.stderr, 'status:0\n', 'probe-gen exit 0, nothing else on stderr');
});

/** Feeds `n` generated fact lines into a child's stdin, honouring backpressure. */
async function feed(child: ChildProcess, n: number): Promise<void> {
  const stdin = child.stdin!;
  let buf = '';
  for (let i = 0; i < n; i++) {
    buf += `{"kind":"fact","id":"f${i}","subject":"Subject ${i}","prompt":"The capital of {} is","target_new":"City ${i % 97}","target_true":"Town ${i % 89}"}\n`;
    if (buf.length >= 1 << 16) {
      const ok = stdin.write(buf);
      buf = '';
      if (!ok) await new Promise((r) => stdin.once('drain', r));
    }
  }
  stdin.end(buf);
}

function countLines(child: ChildProcess): Promise<number> {
  let lines = 0;
  child.stdout!.on('data', (c: Buffer) => {
    for (let i = c.indexOf(10); i >= 0; i = c.indexOf(10, i + 1)) lines++;
  });
  return new Promise((r) => child.stdout!.on('end', () => r(lines)));
}

const MAX_RSS_KIB = 200 * 1024;

/**
 * Starts probe-gen for a memory measurement, without tap's instrumentation.
 * tap runs every child with NODE_OPTIONS=--import=@tapjs/processinfo, and it
 * wraps child_process.spawn so that deleting the variable from `env` does not
 * help: it is put back. On Node 20 that import registers module hooks on a
 * loader worker thread (a second V8 isolate), which took probe-gen's idle RSS
 * from 59 to about 120 MiB and its 1M-record peak to 145–250 MiB. A user's
 * shell runs the tool without it, and that tool is what the bound is about,
 * so `env -u` removes the variable just before node starts.
 */
function spawnMeasured(args: string[]): ChildProcess {
  const unset = ['NODE_OPTIONS', ...Object.keys(process.env).filter((k) => k.startsWith('_TAPJS_PROCESSINFO_'))].flatMap((k) => ['-u', k]);
  return spawn('env', [...unset, process.execPath, PROBE_GEN, ...args], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, CATECHISM_REPORT_MAXRSS: '1' },
  });
}

t.test('1,000,000 records through probe-gen stay under 200 MB', async (t) => {
  const child = spawnMeasured([]);
  const lines = countLines(child);
  const [result] = await Promise.all([collect(child), feed(child, 1_000_000)]);
  t.equal(result.code, 0, result.stderr);
  t.equal(await lines, 2_000_000, 'each fact and its probe');
  const rss = Number(/maxrss_kib=(\d+)/.exec(result.stderr)?.[1]);
  t.ok(rss > 0, 'peak RSS reported');
  // Peak RSS is flat in the input length (115–145 MiB measured for 1M records
  // and about the same for 2M, higher when the machine is loaded): node and
  // yargs ~59 MiB at start, then V8's young generation (2 × 16 MiB
  // semi-spaces) and old-space headroom; nothing accumulates. A tool that
  // held its output would pass 200 MiB (the output alone is 290 MB).
  t.ok(rss < MAX_RSS_KIB, `peak RSS ${(rss / 1024).toFixed(0)} MiB < 200 MiB`);
});

t.test('Arrow output of a long stream also stays bounded', async (t) => {
  const child = spawnMeasured(['--passthrough', '--format', 'arrow']);
  let bytes = 0;
  child.stdout!.on('data', (c: Buffer) => (bytes += c.length));
  const [result] = await Promise.all([collect(child), feed(child, 200_000)]);
  t.equal(result.code, 0, result.stderr);
  t.ok(bytes > 0);
  const rss = Number(/maxrss_kib=(\d+)/.exec(result.stderr)?.[1]);
  t.ok(rss > 0 && rss < MAX_RSS_KIB, `peak RSS ${(rss / 1024).toFixed(0)} MiB < 200 MiB`);
});

t.test('NDJSON in and out never loads apache-arrow (part of the memory budget)', async (t) => {
  // A module-resolution hook logs every module probe-gen loads; apache-arrow
  // costs about 11 MiB of resident memory at import, so only Arrow input or
  // output may load it.
  const log = join(tmp, 'resolved.txt');
  const hooks = join(tmp, 'log-hooks.mjs');
  writeFileSync(
    hooks,
    `import { appendFileSync } from 'node:fs';
export async function resolve(specifier, context, next) {
  const r = await next(specifier, context);
  appendFileSync(${JSON.stringify(log)}, r.url + '\\n');
  return r;
}
`,
  );
  const register = `data:text/javascript,import{register}from'node:module';register(${encodeURIComponent(JSON.stringify(pathToFileURL(hooks).href))});`;
  const loaded = (args: string[]): string[] => {
    writeFileSync(log, '');
    const r = spawnSync(process.execPath, ['--import', register, PROBE_GEN, ...args], { input: readFileSync(fixture('all-kinds.ndjson')) });
    t.equal(r.status, 0, r.stderr.toString());
    return readFileSync(log, 'utf8').split('\n').filter((u) => u.includes('/node_modules/apache-arrow/'));
  };
  t.same(loaded(['--passthrough']), [], 'NDJSON → NDJSON');
  t.same(loaded([]), [], 'NDJSON → probes in NDJSON');
  t.not(loaded(['--passthrough', '--format', 'arrow']).length, 0, 'but Arrow output does load it');
});

t.test('progress goes to stderr only when it is a TTY, and not with --quiet', async (t) => {
  const input = join(tmp, 'progress.ndjson');
  writeFileSync(input, Array.from({ length: 20000 }, (_, i) => `{"kind":"n","i":${i}}\n`).join(''));
  // Not a TTY: nothing on stderr (checked throughout this file too).
  t.equal(probeGen(['--passthrough', input]).stderr, '');
  if (spawnSync('script', ['--version']).status !== 0) {
    t.skip('util-linux `script` not found: cannot give the tool a TTY');
    return;
  }
  const tty = (extra: string[]): string =>
    spawnSync('script', ['-qec', `${sh([process.execPath, PROBE_GEN, '--passthrough', ...extra, input])} > /dev/null`, '/dev/null'], { encoding: 'utf8' }).stdout;
  t.match(tty([]), /\rprobe-gen: \d+ records/);
  t.notMatch(tty(['--quiet']), /records/);
});
