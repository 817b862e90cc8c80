/**
 * Consolidation that never gets stuck (issue 17 §4), with real adapters and
 * the real validate, through scripts/nightly-consolidate.sh: the inbox holds
 * two adapters trained by lora-train and one deliberately bad adapter (a real
 * one scaled ×30, which wrecks KL and perplexity). The bad one is found by
 * bisection and quarantined with its failing report, the good ones reach
 * live, and the next night's adapter is not blocked by it.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

type Rec = Record<string, unknown>;
const root = fileURLToPath(new URL('..', import.meta.url));
const bin = (name: string): string => join(root, 'node_modules', '.bin', name);
const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
const dir = mkdtempSync(join(tmpdir(), 'catechism-nightly-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const REG = join(dir, 'registry');
const INBOX = join(dir, 'inbox.ndjson');
const ENV = { ...process.env, USER: 'nightly-test', CATECHISM_REGISTRY: REG };
const parse = (s: string): Rec[] => s.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Rec);
const edits = readFileSync(join(root, 'fixtures/world/edits.ndjson'), 'utf8').split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as Rec);
const fact = (id: string): Rec => edits.find((f) => f.id === id)!;

function sh(script: string): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync('bash', ['-c', `set -o pipefail; ${script}`], { cwd: root, env: ENV, maxBuffer: 64 << 20 });
  return { code: r.status, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

/** probe-gen | attrib | lora-train for one fact; returns its adapter record line. */
function train(id: string): string {
  const input = join(dir, `${id}.ndjson`);
  writeFileSync(input, JSON.stringify(fact(id)) + '\n');
  const r = sh(
    [
      [bin('probe-gen'), '--roles', 'edit,paraphrase,context,neighborhood,counterfactual,generation', '--seed', '1', input],
      [bin('attrib'), '--seed', '1', '--quiet'],
      [bin('lora-train'), '--seed', '1', '--quiet', '--out', join(dir, `ad-${id}`)],
    ].map((c) => c.map(q).join(' ')).join(' | '),
  );
  if (r.code !== 0) throw new Error(`training ${id} failed: ${r.stderr}`);
  return JSON.stringify(parse(r.stdout).find((x) => x.kind === 'adapter'));
}

// validate with its default retention set (a stratified 2,000 held-out prompts: a 20-prompt sample read
// kl 0.052 for the second night's candidate once the default targets moved to the last layer, a noisy
// refusal of a good adapter), a smaller general-text sample; specificity opened: neighbourhood probes of
// one-fact adapters on the small fixture model are not what this test is about
const VALIDATOR = [bin('validate'), '--quiet', '--general-n', '10', '--no-fluency', '--gate', 'specificity>=0'].map(q).join(' ');
const nightly = (inbox = INBOX, ref = 'live', ...more: string[]) =>
  sh(`${q(join(root, 'scripts/nightly-consolidate.sh'))} ${q(inbox)} ${q(ref)} --validator ${q(VALIDATOR)} ${more.map(q).join(' ')}`);

const show = (ref: string): Rec => parse(sh(`${q(bin('adapter-merge'))} show ${q(ref)}`).stdout)[0] ?? {};
/** The adapters a ref's bundle was merged from (its manifest's merge.parents). */
const mergedFrom = (ref: string): Rec[] => (show(ref).manifest as { merge: { parents: Rec[] } }).merge.parents;
const liveFacts = (ref = 'live'): string[] => ((show(ref).fact_ids as string[] | undefined) ?? []).slice().sort();

function liveAnswer(id: string, ref = 'live'): string {
  const f = fact(id);
  const r = sh(`${q(bin('adapter-merge'))} explain --ref ${q(ref)} ${q(String(f.prompt).replace('{}', String(f.subject)))}`);
  return String((parse(r.stdout)[0]?.adapted as { top1?: string } | undefined)?.top1 ?? '').trim();
}

// the adapter records both tests use (the second reuses the first's, to train less)
let good1 = '';
let good2 = '';
let badLine = '';
let next = '';

t.test('a bad adapter in the inbox is quarantined; the rest reaches live; the next night is not blocked', async (t) => {
  good1 = train('edit-0001');
  good2 = train('edit-0003');
  // the bad one: a real adapter scaled ×30
  const bad = sh(`echo ${q(train('edit-0005'))} | ${q(bin('adapter-merge'))} --method scale --by 30 --out ${q(join(dir, 'bad'))}`);
  t.equal(bad.code, 0, bad.stderr);
  const badRec = parse(bad.stdout).find((x) => x.kind === 'adapter')!;
  badLine = JSON.stringify(badRec);
  writeFileSync(INBOX, [good1, badLine, good2].join('\n') + '\n');

  const night1 = nightly();
  t.equal(night1.code, 0, night1.stderr);
  t.match(night1.stdout, /live: promoted [0-9a-f]{12} \(v1\); 2 adapter\(s\) consolidated, 1 quarantined .*; 5 validation\(s\)/);
  // the ×30 adapter breaks the whole merge (its failures list starts with the efficacy gates: it even
  // overwrites the good edits' answers; stderr shortens the list, so no one gate is asserted here)
  t.match(night1.stderr, /trial 1: live \+ \[.*\] → [0-9a-f]{12}: FAIL \(/, 'the whole inbox fails');
  t.same(liveFacts(), ['edit-0001', 'edit-0003'], 'live holds the two good adapters, not the bad one');
  t.equal(liveAnswer('edit-0001'), fact('edit-0001').target_new);
  t.equal(liveAnswer('edit-0003'), fact('edit-0003').target_new);
  const quarantined = parse(readFileSync(`${INBOX}.quarantine.ndjson`, 'utf8'));
  t.same(quarantined.map((x) => x.kind), ['adapter', 'report']);
  // the reason quotes the report's failures, shortened (the efficacy gates come first); the report has them all
  t.match(quarantined[0], { sha256: badRec.sha256, quarantine: { ref: 'live', reason: /^its latest validation report failed \(failures: / } });
  t.match(quarantined[1], { kind: 'report', pass: false, bundle_sha256: /^[0-9a-f]{64}$/, base_model_sha256: /^[0-9a-f]{64}$/, run: { tool: 'validate' } });
  t.ok((quarantined[1].failures as string[]).some((f) => /^kl [0-9.]+ > 0\.05/.test(f)), 'its report fails the kl gate');
  t.notOk(readdirSync(dir).some((f) => f.includes('.pending-')), 'nothing left pending');

  // the next night: a new adapter reaches live although the bad one came before it
  next = train('edit-0007');
  appendFileSync(INBOX, next + '\n');
  const night2 = nightly();
  t.equal(night2.code, 0, night2.stderr);
  t.match(night2.stdout, /live: promoted [0-9a-f]{12} \(v2\); 1 adapter\(s\) consolidated, 0 quarantined; 1 validation\(s\)/);
  t.same(liveFacts(), ['edit-0001', 'edit-0003', 'edit-0007']);
  t.equal(liveAnswer('edit-0007'), fact('edit-0007').target_new);
  const v = sh(`${q(bin('adapter-merge'))} verify`);
  t.equal(v.code, 0, v.stderr);
  t.ok(existsSync(`${INBOX}.quarantine.ndjson`));
});

t.test('--retrain: the night trains one adapter on every fact; a failing trainer falls back to the sum', async (t) => {
  const inbox = join(dir, 'inbox-retrain.ndjson');
  const TRAINER = [bin('lora-train'), '--seed', '1', '--quiet'].map(q).join(' ');
  // the same inbox as above, the ×30 adapter included: retraining learns its fact anew from the statement and
  // never uses its weights, so the one candidate passes and nothing is quarantined
  writeFileSync(inbox, [good1, badLine, good2].join('\n') + '\n');
  const night1 = nightly(inbox, 'retrained', '--retrain', TRAINER);
  t.equal(night1.code, 0, night1.stderr);
  t.match(night1.stdout, /retrained: promoted [0-9a-f]{12} \(v1\), retrained from 3 fact\(s\); 3 adapter\(s\) consolidated, 0 quarantined; 1 validation\(s\)/);
  t.match(night1.stderr, /retraining 3 fact\(s\) \(\d+ probes\) of 3 pending adapter\(s\)/);
  t.same(liveFacts('retrained'), ['edit-0001', 'edit-0003', 'edit-0005']);
  const parents1 = mergedFrom('retrained');
  t.equal(parents1.length, 1, 'one trained adapter, not the three summed');
  t.match(parents1[0], { method: 'lora', fact_ids: ['edit-0001', 'edit-0005', 'edit-0003'] });
  for (const id of ['edit-0001', 'edit-0003', 'edit-0005']) t.equal(liveAnswer(id, 'retrained'), fact(id).target_new, `${id} answered by the retrained adapter`);
  t.notOk(existsSync(`${inbox}.quarantine.ndjson`), 'nothing quarantined');

  // the next night's trainer fails: the night still promotes, by the sum of the ref and the new adapter
  appendFileSync(inbox, next + '\n');
  const night2 = nightly(inbox, 'retrained', '--retrain', 'exit 3');
  t.equal(night2.code, 0, night2.stderr);
  t.match(night2.stderr, /retraining failed: trainer "exit 3" exited with status 3/);
  t.match(night2.stdout, /retrained: promoted [0-9a-f]{12} \(v2\), retraining refused; 1 adapter\(s\) consolidated, 0 quarantined; 1 validation\(s\)/);
  t.same(liveFacts('retrained'), ['edit-0001', 'edit-0003', 'edit-0005', 'edit-0007']);
  t.equal(mergedFrom('retrained').length, 2, 'the ref and the new adapter, summed');
  t.equal(liveAnswer('edit-0007', 'retrained'), fact('edit-0007').target_new);
});
