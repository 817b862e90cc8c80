/**
 * Every example the docs show runs (issue 18), in two halves that CI runs side
 * by side (docs-examples.test.ts, docs-examples-2.test.ts): the indented command lines of
 * README.md and each tools/X/README.md, and the `examples` of each tool's
 * --help (read from its main.ts, which is what --help prints), run through
 * a real shell on the fixture model, each must exit 0 and write something.
 *
 * The examples run in order in one scratch directory prepared with the
 * files they name (facts.ndjson, probes.ndjson, adapter records, a bundle
 * out/fact-42/, a registry holding `live`), so an example that drifts from
 * the tools (a flag renamed, a required flag left out) fails here.
 *
 * A synopsis line (with [options], (A | B), … or a CAPITALISED placeholder)
 * is not an example and is not run; `synopsis()` says which.
 *
 * An example can use what an earlier one of the same document wrote (a key
 * pair, an adapter), so a document's examples stay together, in order, in one
 * half: the first half is `FIRST_HALF`'s documents (lora-train's, attrib's,
 * probe-gen's and moe-route-distill's --help; about half the seconds), the
 * second every other one.
 *
 *   cd tests && npx tap docs-examples.test.ts docs-examples-2.test.ts
 *   DOCS_EXAMPLES='adapter-merge --help' npx tap docs-examples.test.ts docs-examples-2.test.ts   # some of them
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, mkdirSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
export const TOOLS = ['probe-gen', 'attrib', 'lora-train', 'validate', 'adapter-merge', 'moe-route-distill', 'hypernet-gen'];
for (const name of TOOLS) {
  if (!existsSync(join(root, 'tools', name, 'dist', 'main.js'))) throw new Error(`tools/${name}/dist/main.js is missing: run \`npm run build\` first`);
}

interface Example {
  cmd: string;
  from: string;
}

/** A usage line rather than a command: options in brackets, alternatives, ellipses, CAPITALISED placeholders. */
export function synopsis(cmd: string): boolean {
  return /\[|\]|…|\.\.\.|\([^)]*\|[^)]*\)|\b[A-Z][A-Z_]{1,}\b/.test(cmd.replace(/'[^']*'|"[^"]*"/g, "''"));
}

const TOOL_START = new RegExp(`^(?:(?:cat|head -\\d+) \\S+ \\| )?(?:${TOOLS.join('|')})\\b`);

/** Indented command lines of a Markdown file that start with a tool (or `cat FILE | tool`, `head -N FILE | tool`). */
function readmeExamples(file: string): Example[] {
  const out: Example[] = [];
  // an indented line ending in `\` continues on the next indented line
  const lines = readFileSync(join(root, file), 'utf8').replace(/\\\n {4,}/g, ' ').split('\n');
  for (const line of lines) {
    const m = /^ {4}(\S.*)$/.exec(line);
    if (!m) continue;
    // the description after a command: "# …" or a run of 3+ spaces
    const cmd = m[1].replace(/\s+#\s.*$/, '').split(/\s{3,}/)[0].trim();
    if (TOOL_START.test(cmd) && !synopsis(cmd)) out.push({ cmd, from: file });
  }
  return out;
}

/**
 * Every `examples: [[cmd, what], …]` list of a tool's main.ts, as --help shows
 * them (adapter-merge has one list per subcommand).
 */
function helpExamples(tool: string): Example[] {
  const file = `tools/${tool}/src/main.ts`;
  const src = readFileSync(join(root, file), 'utf8');
  const out: Example[] = [];
  for (let start = src.indexOf('examples: ['); start >= 0; start = src.indexOf('examples: [', start + 1)) {
    let depth = 0;
    let end = start + 'examples: '.length;
    for (let i = end; i < src.length; i++) {
      if (src[i] === '[') depth++;
      else if (src[i] === ']' && --depth === 0) {
        end = i + 1;
        break;
      }
    }
    const literal = src.slice(start + 'examples: '.length, end);
    // a list built from a variable (adapter-merge's read-out subcommands share one builder) is found below
    if (!/^\[\s*\[/.test(literal)) continue;
    const list = new Function(`return ${literal};`)() as Array<[string, string]>;
    out.push(...list.map(([cmd]) => ({ cmd, from: `${tool} --help` })).filter((e) => !synopsis(e.cmd)));
  }
  // example pairs on their own line, passed to a builder: ['adapter-merge log live --text', 'who promoted …'],
  for (const m of src.matchAll(/^\s*(\['(?:[^'\\]|\\.)*',\s*'(?:[^'\\]|\\.)*'\]),?\s*$/gm)) {
    const [cmd] = new Function(`return ${m[1]};`)() as [string, string];
    if (TOOL_START.test(cmd) && !synopsis(cmd) && !out.some((e) => e.cmd === cmd)) out.push({ cmd, from: `${tool} --help` });
  }
  if (out.length === 0) throw new Error(`${file}: no examples`);
  return out;
}

export const readmes = ['README.md', ...TOOLS.map((x) => `tools/${x}/README.md`)];
// a command shown in a README and again in --help runs once (named by both)
export const examples: Example[] = [];
for (const e of [...readmes.flatMap(readmeExamples), ...TOOLS.flatMap(helpExamples)]) {
  const same = examples.find((x) => x.cmd === e.cmd);
  if (same) same.from += ` and ${e.from}`;
  else examples.push({ ...e });
}

/** The documents whose examples the first half runs (by the first document showing each). */
const FIRST_HALF = new Set([
  'tools/lora-train/README.md', 'lora-train --help', 'tools/attrib/README.md', 'attrib --help',
  'tools/probe-gen/README.md', 'probe-gen --help', 'moe-route-distill --help',
]);

/** Runs one half of the examples in its own scratch directory, prepared the same way for both. */
export function runExamples(part: 1 | 2): void {
  // the scratch directory
  const dir = mkdtempSync(join(tmpdir(), 'catechism-docs-'));
  symlinkSync(join(root, 'fixtures'), join(dir, 'fixtures'));
  const bin = join(dir, 'bin');
  mkdirSync(bin);
  // The external paraphraser of probe-gen's example: the protocol of tools/probe-gen/README.md
  // (requests in, {"id","paraphrases"} out); its "paraphrase" is the prompt reworded trivially.
  writeFileSync(
    join(bin, 'my-llm'),
    `#!/usr/bin/env node
let buf = '';
process.stdin.on('data', (d) => (buf += d)).on('end', () => {
  for (const line of buf.split('\\n').filter(Boolean)) {
    const r = JSON.parse(line);
    process.stdout.write(JSON.stringify({ id: r.id, paraphrases: ['As is well known, ' + r.prompt] }) + '\\n');
  }
});
`,
  );
  chmodSync(join(bin, 'my-llm'), 0o755);
  const env = {
    ...process.env,
    PATH: `${bin}:${join(root, 'node_modules', '.bin')}:${process.env.PATH}`,
    CATECHISM_REGISTRY: join(dir, 'registry'),
    CATECHISM_CACHE: join(dir, 'cache'),
    HOME: dir,
  };

  function sh(cmd: string, registry = join(dir, 'registry')): { code: number | null; stdout: string; stderr: string } {
    const r = spawnSync('bash', ['-o', 'pipefail', '-c', cmd], { cwd: dir, env: { ...env, CATECHISM_REGISTRY: registry }, encoding: 'utf8', maxBuffer: 1 << 30 });
    return { code: r.status, stdout: r.stdout, stderr: r.stderr };
  }

  function setup(cmd: string): void {
    const r = sh(cmd);
    if (r.code !== 0) throw new Error(`setup: ${cmd}: exit ${r.code}\n${r.stderr}`);
  }

  // About 50 examples, a dozen of which train an adapter: minutes on two cores, more on a loaded machine.
  t.setTimeout(30 * 60 * 1000);

  t.test(`every example runs on the fixture model: exit 0, output written (half ${part} of 2)`, async (t) => {
    // Three world edits (as the demo), which the fixture model can spell; the files the examples name.
    const edits = readFileSync(join(root, 'fixtures/world/edits.ndjson'), 'utf8').split('\n').filter((l) => l.includes('"op":"insert"'));
    writeFileSync(join(dir, 'facts.ndjson'), edits.slice(0, 3).join('\n') + '\n');
    writeFileSync(join(dir, 'edits.ndjson'), edits.slice(0, 3).join('\n') + '\n');
    writeFileSync(join(dir, 'facts3.ndjson'), edits.slice(0, 3).join('\n') + '\n');
    setup('probe-gen --roles edit,paraphrase,neighborhood facts.ndjson > probes.ndjson');
    setup('probe-gen facts.ndjson --format arrow > in.arrow');
    setup('cp fixtures/records/counterfact-sample.json counterfact.json');
    setup('lora-train --out setup-adapters/ probes.ndjson > adapter.ndjson && cp adapter.ndjson adapters.ndjson && cp adapter.ndjson a.ndjson && cp adapter.ndjson inbox.ndjson');
    // The registry every example starts from (a fresh copy each): out/fact-42/ stored with a
    // passing report; live promoted four times (fact-42, a half-scaled copy, and again), so
    // that rollback, show, explain and export have a history to work on.
    setup('adapter-merge adapter.ndjson --method cat --id fact-42 --out out/fact-42 > /dev/null');
    setup('adapter-merge adapter.ndjson --method scale --by 0.5 --id half --out out/half > /dev/null');
    setup('adapter-merge add out/fact-42/ | validate > /dev/null');
    setup('for b in fact-42 half fact-42 half; do adapter-merge promote live out/$b/ --force -m setup > /dev/null || exit 1; done');
    setup('mkdir -p reg && cp -r registry/. reg/ && cp -r registry registry-base');
    // validate appends its report to a plain bundle's manifest (its hash changes), and some
    // examples overwrite the files others read: each example starts from these files as prepared.
    setup('mkdir pristine && cp -r facts.ndjson facts3.ndjson inbox.ndjson edits.ndjson probes.ndjson in.arrow counterfact.json adapter.ndjson adapters.ndjson a.ndjson setup-adapters out pristine/');

    // DOCS_EXAMPLES=REGEX runs only the examples (or sources) it matches, when working on one.
    const only = process.env.DOCS_EXAMPLES ? new RegExp(process.env.DOCS_EXAMPLES) : null;
    for (const e of examples) {
      // a command shown in several documents runs with the first one that shows it
      if (FIRST_HALF.has(e.from.split(' and ')[0]) !== (part === 1)) continue;
      if (only && !only.test(`${e.from}: ${e.cmd}`)) continue;
      // Each example gets the base registry as it was. `--into live` examples start where
      // live does not exist yet (the first consolidation): merged into a live that already
      // holds the same fixture fact, the gates refuse it, as they should.
      setup('rm -rf setup-adapters out/fact-42 out/half && cp -r pristine/. .');
      const registry = join(mkdtempSync(join(dir, 'reg-')), 'registry');
      if (!/--into\b/.test(e.cmd)) setup(`cp -r registry-base ${registry}`);
      const t0 = Date.now();
      const r = sh(e.cmd, registry);
      const what = `${e.from}: ${e.cmd}`;
      // the seconds each example took, so the slow ones can be found in CI's log
      t.comment(`${((Date.now() - t0) / 1000).toFixed(1)} s: ${what}`);
      // validate --strict documents exit 3 for an adapter that fails a gate: a finished check,
      // not a broken example (it must still have written its records).
      const codeOk = r.code === 0 || (r.code === 3 && /validate\b[^|]*--strict/.test(e.cmd));
      const ok = codeOk && (r.stdout.trim() !== '' || wroteFiles(e.cmd));
      t.ok(ok, what, ok ? {} : { code: r.code, stderr: r.stderr.split('\n').slice(-6).join('\n'), stdout: r.stdout.slice(0, 300) });
    }
  });

  /** Examples that redirect their output into a file or directory count what they wrote there. */
  function wroteFiles(cmd: string): boolean {
    const m = />\s*(\S+)\s*$/.exec(cmd) ?? /--(?:out|html|plot)\s+(\S+)/.exec(cmd) ?? /export --ref \S+ (\S+)/.exec(cmd);
    if (!m) return false;
    const p = join(dir, m[1]);
    if (!existsSync(p)) return false;
    try {
      return readdirSync(p).length > 0;
    } catch {
      return readFileSync(p).length > 0;
    }
  }
}
