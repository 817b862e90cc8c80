/**
 * validate's default gates on edits the defaults were never tuned on, read
 * back the way validate reads retention by default: every fact of the
 * world in its held-out phrasings (eval/facts-heldout.ndjson, 2 per fact),
 * prompts lora-train's retention KL never trains on (issue 17: read back on
 * the training phrasings, retention fits its own prompts — kl 0.018 there,
 * 0.062 held out, for the same adapter). Two cases, each one training run
 * (about 10–90 s on the shared machine): 10 and 30 unrelated inserts in one
 * adapter (requests 61–70 and 61–90; tuning used 1–60), and 10 edits of one
 * relation (cities 11–20 of counterfactualFacts moved to other countries;
 * tuning used 1–10 and 21–30), the latter twice: with the LoRA defaults and with --method
 * patcher (one gated neuron per city; tuned on cities 1–10, 21–30 and
 * requests 1–10), and requests 61–70 by patcher; and 10 forget requests in
 * one adapter (the forget gates: the old answer gone, replaced in kind).
 * Skipped when the dense fixture model is absent.
 */
import t, { type Test } from 'tap';
import * as path from 'node:path';
import { worldDir } from '@catechism/core/fixtures';
import { readNdjson } from '@catechism/core/edit';
import { DEFAULT_ARGS, counterfactualFacts, editInputs, readbackAdapters, readbackFailures, trainEdits } from '../src/index.js';
import { fixtureModel } from './support/fixture-model.js';

const fx = fixtureModel('cat-lora-heldout-');
if (fx) {
  const { res, tmp } = fx;
  const readback = path.join(worldDir(), 'eval/facts-heldout.ndjson');
  const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

  const gates = async (t: Test, facts: Record<string, unknown>[], out: string, method = 'lora') => {
    const records = await trainEdits(editInputs(facts), { ...DEFAULT_ARGS, method, seed: 0, out: path.join(tmp, out) }, res, { log: () => {} });
    t.equal(records.length, 1, 'one adapter');
    const f = readbackAdapters(res, records, facts, readback, method)!;
    t.comment(
      `efficacy ${pct(f.efficacy)}, paraphrase ${pct(f.paraphrase)} (n=${f.n.paraphrase}), neighbourhood ${pct(f.neighbourhood)} (n=${f.n.neighbourhood}), ` +
        `kl ${f.kl.toFixed(3)} ± ${f.kl_se.toFixed(3)}, retain_drop ${f.retain_drop.toFixed(3)} ± ${f.retain_drop_se.toFixed(3)} (n=${f.n.retain})`,
    );
    t.ok(f.n.retain >= 2800, `retention over every other fact's held-out phrasings (${f.n.retain})`);
    t.ok(f.efficacy >= 0.95, `efficacy ${pct(f.efficacy)} ≥ 95%`);
    t.ok(f.paraphrase >= 0.8, `held-out paraphrases ${pct(f.paraphrase)} ≥ 80%`);
    t.ok(f.kl <= 0.05, `kl ${f.kl.toFixed(3)} ≤ 0.05 on held-out phrasings`);
    t.ok(f.retain_drop <= 0.05, `retain_drop ${f.retain_drop.toFixed(3)} ≤ 0.05 on held-out phrasings`);
    t.same(readbackFailures(f, 'insert'), [], 'validate\'s default gates pass');
  };

  t.test('held-out: 10 unrelated inserts (requests 61–70) in one adapter', async (t) => {
    const edits = readNdjson(path.join(worldDir(), 'edits.ndjson')).filter((f) => f.op === 'insert').slice(60, 70);
    await gates(t, edits, 'lora-10');
  });

  t.test('held-out: 10 edits of one relation (cities 11–20 moved to other countries)', async (t) => {
    const known = readNdjson(path.join(worldDir(), 'facts.ndjson'));
    const edits = readNdjson(path.join(worldDir(), 'edits.ndjson'));
    const facts = counterfactualFacts(known, { relation: 'located_in', skip: 10, count: 10, exclude: edits });
    t.equal(new Set(facts.map((f) => f.relation)).size, 1, 'one relation');
    // the default targets (the last layer's MLP, with prefixed rows and subject-only MSE there) follow the move
    // on 16 of 20 held-out phrasings, kl 0.016 (README "The last layer's MLP"); at ROME's layer 0, the previous
    // default, 8 of 20 — this case failed the paraphrase gate until then
    await gates(t, facts, 'lora-rel');
  });

  t.test('held-out: 30 unrelated inserts (requests 61–90) in one adapter', async (t) => {
    // the case the previous default failed on kl (0.094 at layer 0); measured at the last layer 0.020
    const edits = readNdjson(path.join(worldDir(), 'edits.ndjson')).filter((f) => f.op === 'insert').slice(60, 90);
    await gates(t, edits, 'lora-30');
  });

  t.test('held-out: 10 forget requests (1–10) in one adapter: the old answer gone, replaced in kind, nothing else harmed', async (t) => {
    // the forget defaults were tuned on facts.ndjson's facts, not these requests; request 1–10 hold
    // "Dajo Wickor can speak", which the base model answers from the first name alone (README, "The first
    // name's reading forgotten too"): without the made-up-surname copies (now the default) one of the 38
    // answered prompts kept Quipelic (P 0.884) and this read failed
    const forgets = readNdjson(path.join(worldDir(), 'edits.ndjson')).filter((f) => f.op === 'forget').slice(0, 10);
    const records = await trainEdits(editInputs(forgets), { ...DEFAULT_ARGS, seed: 0, out: path.join(tmp, 'lora-forget') }, res, { log: () => {} });
    t.equal(records.length, 1, 'one adapter');
    const f = readbackAdapters(res, records, forgets, readback, 'lora')!;
    t.comment(`forgotten ${pct(f.forgotten)}, of the kind ${pct(f.forget_kind)} (n=${f.n.forgotten}), kl ${f.kl.toFixed(3)} ± ${f.kl_se.toFixed(3)}, retain_drop ${f.retain_drop.toFixed(3)}`);
    t.ok(f.n.forgotten >= 30, `the facts' own prompts and the held-out phrasings the base model answers (${f.n.forgotten})`);
    t.same(readbackFailures(f, 'forget'), [], 'old answer gone and of the kind on every prompt, kl and retain_drop under the gates');
  });

  t.test('held-out: the same 10 cities by --method patcher (one gated neuron each)', async (t) => {
    const known = readNdjson(path.join(worldDir(), 'facts.ndjson'));
    const edits = readNdjson(path.join(worldDir(), 'edits.ndjson'));
    const facts = counterfactualFacts(known, { relation: 'located_in', skip: 10, count: 10, exclude: edits });
    // the gate at the prompt's last token of the last layer opens on the city's own phrasings, the held-out
    // ones included, and on almost nothing else (measured: 100 / 90 / 98.6 %, kl 0.003)
    await gates(t, facts, 'patcher-rel', 'patcher');
  });

  t.test('held-out: requests 61–70 (seven people) by --method patcher', async (t) => {
    // the case the subject-token site failed (efficacy 90%, kl 0.318): a two-word name's last token at layer 0
    // does not separate from the same surname after another first name; at the last token it does (measured 0.024)
    const edits = readNdjson(path.join(worldDir(), 'edits.ndjson')).filter((f) => f.op === 'insert').slice(60, 70);
    await gates(t, edits, 'patcher-10', 'patcher');
  });
}
