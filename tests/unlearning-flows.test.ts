/**
 * Unlearning flows through real pipes (issue 20): scripts/flows/undo-insert.sh
 * takes back an insert that `live` holds. A ROME insert of one world edit is
 * promoted into live on a temporary registry; the flow negates it and merges
 * the negation into live through validate. Live then states `op: forget` of
 * the inserted answer, its report passes the forget gates (old answer not
 * top-1, not generated), and the model with live's adapter no longer answers
 * the inserted target.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const tmp = mkdtempSync(join(tmpdir(), 'cat-flows-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));
const env = { ...process.env, PATH: `${join(root, 'node_modules', '.bin')}:${process.env.PATH}`, CATECHISM_REGISTRY: join(tmp, 'registry'), CATECHISM_CACHE: join(tmp, 'cache') };
// side-effect gates opened as in pipeline-helpers.ts (a one-fact edit on the small fixture model); the forget gates stay at their defaults
const VALIDATOR = "validate --gate 'kl<=10' --gate 'specificity>=0' --gate 'ppl_delta<=10' --gate 'retain_drop<=1' --gate 'fluency_drop<=100'";
const sh = (cmd: string, extra: Record<string, string> = {}) => spawnSync('bash', ['-c', cmd], { cwd: tmp, env: { ...env, ...extra }, encoding: 'utf8', maxBuffer: 64 << 20 });
const records = (s: string) => s.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);

t.test('undo-insert.sh: live takes the insert back as a forget of the inserted answer', async (t) => {
  const fact = JSON.parse(readFileSync(join(root, 'fixtures/world/edits.ndjson'), 'utf8').split('\n')[0]);
  t.equal(fact.op, 'insert');
  writeFileSync(join(tmp, 'fact.ndjson'), JSON.stringify(fact) + '\n');
  const ins = sh(`probe-gen --roles edit,paraphrase fact.ndjson | lora-train --method rome > insert.ndjson && adapter-merge merge --into live --validator "$V" < insert.ndjson > /dev/null`, { V: VALIDATOR });
  t.equal(ins.status, 0, ins.stderr);
  const flow = sh(`${join(root, 'scripts/flows/undo-insert.sh')} insert.ndjson`, { VALIDATOR });
  t.equal(flow.status, 0, flow.stderr);
  t.match(flow.stderr, /live → live v2/);
  const out = records(flow.stdout);
  const live = out.filter((r) => r.kind === 'adapter').at(-1)!;
  const manifest = JSON.parse(readFileSync(join(String(live.path), 'catechism.json'), 'utf8'));
  t.match(manifest.facts, [{ id: fact.id, op: 'forget', target_true: fact.target_new }], 'live states the forget of the inserted answer');
  t.equal((manifest.merge.parents as { method: string }[]).at(-1)!.method, 'negate', 'the negation merged into what live held');
  const report = out.filter((r) => r.kind === 'report').at(-1)! as { pass: boolean; metrics: Record<string, number> };
  t.equal(report.pass, true);
  t.equal(report.metrics.forget_top1, 0, 'the inserted answer is nowhere top-1');
  t.equal(report.metrics.forget_gen, 0, 'nor generated');
  // the model with live's adapter against the insert alone: the inserted answer is gone again
  const { loadModel, loadLora } = await import('@catechism/core/models');
  const { scoreAnswer } = await import('@catechism/core/merge');
  const { defaultModelDir } = await import('@catechism/core/fixtures');
  const { model, tokenizer } = loadModel(defaultModelDir(), { tokenizer: true });
  const prompt = tokenizer!.encode(String(fact.prompt).replace('{}', String(fact.subject)));
  const answer = tokenizer!.encode(` ${fact.target_new}`);
  const insertRec = records(readFileSync(join(tmp, 'insert.ndjson'), 'utf8')).find((r) => r.kind === 'adapter')!;
  const withInsert = scoreAnswer(model, [{ adapter: loadLora(String(insertRec.path)) }], prompt, answer);
  const withLive = scoreAnswer(model, [{ adapter: loadLora(String(live.path)) }], prompt, answer);
  t.equal(tokenizer!.decode([withInsert.top1]).trim(), String(fact.target_new).split(' ')[0], 'the insert stated it');
  t.ok(withLive.logprob < withInsert.logprob - 2, `log P(inserted answer) ${withInsert.logprob.toFixed(2)} → ${withLive.logprob.toFixed(2)}`);
  t.not(withLive.top1, withInsert.top1);
});
