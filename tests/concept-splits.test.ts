/**
 * scripts/unlearn/concepts.mjs, the concept records behind the LEACE figures
 * (tools/lora-train/README.md, "LEACE read by validate's erasure probe"): which
 * subjects it holds out (`split: test`) by default, with --offset, and with
 * --stratify answer (every third holder of each answer), read against the
 * world's facts independently of the script.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

interface Fact { kind: string; id: string; relation: string; target_true: string; subject: string; prompt: string }
interface Concept { kind: string; id: string; label: string; prompt: string; split: string }
const root = fileURLToPath(new URL('..', import.meta.url));
const relations = ['works_for', 'lives_in', 'plays_sport'];
const facts = readFileSync(join(root, 'fixtures/world/facts.ndjson'), 'utf8').split('\n').filter(Boolean)
  .map((l) => JSON.parse(l) as Fact).filter((f) => f.kind === 'fact' && relations.includes(f.relation));
const answerOf = new Map(facts.map((f) => [f.id, f.target_true]));

function concepts(...args: string[]): { status: number | null; rows: Concept[]; stderr: string } {
  const r = spawnSync('node', [join(root, 'scripts/unlearn/concepts.mjs'), '--facts', 'fixtures/world/facts.ndjson', ...args], { cwd: root });
  const rows = r.stdout.toString().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Concept);
  return { status: r.status, rows, stderr: r.stderr.toString() };
}
const held = (rows: Concept[]) => new Set(rows.filter((r) => r.split === 'test').map((r) => r.id));

t.test('default and --offset: every third subject of a relation, the offset choosing which', async (t) => {
  const base = concepts('--test', '3');
  t.equal(base.status, 0, base.stderr);
  t.equal(base.rows.length, 660, '220 subjects of each of three relations');
  t.same(held(base.rows), held(concepts('--test', '3', '--offset', '2').rows), 'the default offset is the last of each three');
  const thirds = [0, 1, 2].map((o) => held(concepts('--test', '3', '--offset', String(o)).rows));
  for (const r of relations) {
    const ids = facts.filter((f) => f.relation === r).slice(0, 220).map((f) => f.id);
    thirds.forEach((h, o) => t.same(ids.filter((id) => h.has(id)), ids.filter((_, i) => i % 3 === o), `${r}, offset ${o}`));
  }
  // the three thirds partition the subjects
  t.equal(thirds.reduce((n, h) => n + h.size, 0), 660);
  t.equal(new Set(thirds.flatMap((h) => [...h])).size, 660);
});

t.test('--stratify answer: every third holder of each answer held out', async (t) => {
  for (const o of [0, 2]) {
    const { status, rows, stderr } = concepts('--test', '3', '--offset', String(o), '--stratify', 'answer');
    t.equal(status, 0, stderr);
    const h = held(rows);
    for (const r of relations) {
      const byAnswer = new Map<string, string[]>();
      for (const f of facts.filter((f) => f.relation === r).slice(0, 220)) byAnswer.set(f.target_true, [...(byAnswer.get(f.target_true) ?? []), f.id]);
      let ok = true;
      for (const [, ids] of byAnswer) ok &&= ids.every((id, i) => h.has(id) === (i % 3 === o));
      t.ok(ok, `${r}, offset ${o}: within each answer, holders ${o}, ${o + 3}, … held out`);
    }
    if (o === 2) {
      // an answer with two holders or fewer is never held out at offset 2, so every held-out answer is in the fit too
      const fitted = new Set(rows.filter((r) => r.split === 'train').map((r) => `${r.label} ${answerOf.get(r.id)}`));
      t.ok(rows.filter((r) => r.split === 'test').every((r) => fitted.has(`${r.label} ${answerOf.get(r.id)}`)));
    }
  }
});

t.test('bad flags are refused by name', async (t) => {
  const off = concepts('--test', '3', '--offset', '3');
  t.not(off.status, 0);
  t.match(off.stderr, /--offset: an integer in 0\.\.2, got 3/);
  const strat = concepts('--stratify', 'subject');
  t.not(strat.status, 0);
  t.match(strat.stderr, /--stratify: none or answer, got subject/);
});
