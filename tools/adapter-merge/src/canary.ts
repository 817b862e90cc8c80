/**
 * `adapter-merge canary REF ID --traffic FILE`: the candidate against what
 * REF serves now, on prompts a serving system logged. Three figures:
 *
 *   disagreement  share of prompts whose greedy answer (--answer-tokens
 *                 tokens) differs between live and the candidate
 *   kl            mean KL(live ‖ candidate) of the next-token distribution
 *                 at the end of the prompt (nats)
 *   leak          share of prompts where the candidate's greedy answer
 *                 begins with an edited fact's target_new while the prompt
 *                 does not mention that fact's subject, and live's answer
 *                 did not already begin with it: the edit spilled over to
 *                 other subjects
 *
 * Thresholds (flags, else the registry config's `canary`) decide pass or
 * refuse; the `canary` record is stored with the candidate's bundle, and
 * `promote` to REF refuses a bundle whose latest canary on REF refused it.
 */
import { readFile } from 'node:fs/promises';
import { InputError, UsageError } from '@catechism/core/cli';
import { logSoftmax, noGrad } from '@catechism/core/tensor';
import { Registry, defaultRegistryDir, type CanaryRecord } from './core.js';
import { loadParent, type ParentBundle } from './merge-lib.js';
import { checkBaseModel, libError, loadBase } from './merge.js';
import type { Ctx } from './commands.js';

const text = (s: string) => new Promise<void>((resolve, reject) => process.stdout.write(s, (err) => (err ? reject(err) : resolve())));

export interface CanaryArgs {
  traffic?: string;
  promote: boolean;
  'max-disagreement'?: number;
  'max-kl'?: number;
  'max-leak'?: number;
  'answer-tokens': number;
}

/** The prompts of a traffic log: NDJSON lines with a string `prompt`; errors name the line and field. */
export async function readTraffic(file: string): Promise<string[]> {
  let body: string;
  try {
    body = await readFile(file, 'utf8');
  } catch (e) {
    throw new UsageError(`--traffic: cannot read ${file}: ${(e as Error).message}`);
  }
  const prompts: string[] = [];
  body.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch {
      throw new InputError('not valid JSON', { source: file, record: i + 1 });
    }
    const p = (v as { prompt?: unknown } | null)?.prompt;
    if (typeof p !== 'string' || p.length === 0) throw new InputError(`expected a non-empty string, got ${p === undefined ? 'nothing' : JSON.stringify(p)}`, { source: file, record: i + 1, field: 'prompt' });
    prompts.push(p);
  });
  if (prompts.length === 0) throw new InputError(`${file}: no prompts`);
  return prompts;
}

export async function runCanary(ctx: Ctx, rest: string[]): Promise<void> {
  const a = ctx.args;
  if (rest.length !== 2 || a.traffic === undefined) throw new UsageError('canary: expected `adapter-merge canary REF ID --traffic FILE`');
  const [ref, id] = rest;
  const k = a['answer-tokens'];
  if (!Number.isInteger(k) || k < 1) throw new UsageError(`--answer-tokens: expected a whole number ≥ 1, got ${String(k)}`);
  const prompts = await readTraffic(a.traffic);
  const reg = new Registry(a.registry ?? defaultRegistryDir(), { timeoutMs: (a['lock-timeout'] ?? 60) * 1000 });
  let cand: ParentBundle, live: ParentBundle | null, cfg;
  try {
    await reg.requireExists();
    const sha = await reg.resolve(id);
    cand = await loadParent((await reg.get(sha)).path, sha);
    const head = await reg.head(ref);
    live = head ? await loadParent((await reg.get(head.bundle)).path, head.bundle) : null;
    cfg = await reg.config();
  } catch (e) {
    throw libError(e);
  }
  const thresholds = {
    disagreement: a['max-disagreement'] ?? cfg.canary.disagreement,
    kl: a['max-kl'] ?? cfg.canary.kl,
    leak: a['max-leak'] ?? cfg.canary.leak,
  };
  const base = await loadBase(ctx, true, cand.manifest.base_model.name);
  await checkBaseModel(ctx, cand, base.dir);
  if (live && live.manifest.base_model.sha256 !== cand.manifest.base_model.sha256) throw new UsageError(`${ref}'s bundle and the candidate were made for different base models (${live.manifest.base_model.sha256.slice(0, 12)} vs ${cand.manifest.base_model.sha256.slice(0, 12)})`);
  const tok = base.tokenizer!;
  const model = base.model;
  const ids = prompts.map((p) => tok.encode(p));
  const liveSet = live ? [{ adapter: live.adapter, scale: live.manifest.scale ?? 1 }] : [];
  const candSet = [{ adapter: cand.adapter, scale: cand.manifest.scale ?? 1 }];

  /** Next-token log-probabilities at each prompt's last position and the greedy answers, with `set` active. */
  const run = (set: typeof liveSet) => {
    const prev = model.activeAdapters();
    model.setAdapters(set);
    try {
      const V = model.config.vocabSize;
      const lps = noGrad(() =>
        ids.map((p) => {
          const { logits } = model.forward(Int32Array.from(p), [1, p.length], { logitsAt: Int32Array.from([p.length - 1]) });
          return Float64Array.from(logSoftmax(logits).data.subarray(0, V));
        }),
      );
      const answers = model.generate(ids, { maxNewTokens: k, greedy: true }).map((g) => tok.decode(g));
      return { lps, answers };
    } finally {
      model.setAdapters(prev);
    }
  };
  const L = run(liveSet);
  const C = run(candSet);
  const facts = cand.manifest.facts
    .filter((f) => typeof f.target_new === 'string' && (f.target_new as string).trim() !== '' && typeof f.subject === 'string' && f.op !== 'forget')
    .map((f) => ({ id: String(f.id), subject: String(f.subject), target: (f.target_new as string).trim() }));
  let disagree = 0, kl = 0, leaks = 0;
  const examples: { prompt: string; live: string; candidate: string; fact: string }[] = [];
  prompts.forEach((p, i) => {
    const la = L.answers[i].trim(), ca = C.answers[i].trim();
    if (la !== ca) disagree++;
    const lp = L.lps[i], cp = C.lps[i];
    let d = 0;
    for (let v = 0; v < lp.length; v++) d += Math.exp(lp[v]) * (lp[v] - cp[v]);
    kl += Math.max(0, d);
    const leak = facts.find((f) => !p.includes(f.subject) && ca.startsWith(f.target) && !la.startsWith(f.target));
    if (leak) {
      leaks++;
      if (examples.length < 5) examples.push({ prompt: p, live: la, candidate: ca, fact: leak.id });
    }
  });
  const n = prompts.length;
  const metrics = { disagreement: disagree / n, kl: kl / n, leak: leaks / n, n_prompts: n };
  const failures: string[] = [];
  for (const key of ['disagreement', 'kl', 'leak'] as const) {
    if (metrics[key] > thresholds[key]) failures.push(`${key} ${+metrics[key].toFixed(4)} > ${thresholds[key]}`);
  }
  const rec: CanaryRecord = {
    kind: 'canary',
    ref,
    bundle: cand.sha256,
    adapter_id: cand.manifest.id,
    live: live?.sha256 ?? null,
    metrics,
    thresholds,
    pass: failures.length === 0,
    failures,
    traffic: a.traffic,
    leaks: examples,
  };
  const meta = { message: a.message ?? null, author: a.author ?? null };
  let stored: CanaryRecord;
  try {
    stored = await reg.addCanary(rec, meta);
  } catch (e) {
    throw libError(e);
  }
  ctx.log(`canary ${cand.manifest.id} (${cand.sha256.slice(0, 12)}) vs ${ref}${live ? ` (${live.sha256.slice(0, 12)})` : ' (empty: base model)'} on ${n} prompt(s): disagreement ${metrics.disagreement.toFixed(3)}, kl ${metrics.kl.toFixed(4)}, leak ${metrics.leak.toFixed(3)}: ${rec.pass ? 'PASS' : `REFUSED (${failures.join('; ')})`}`);
  for (const x of examples) ctx.log(`  leak (${x.fact}): ${JSON.stringify(x.prompt)} → ${JSON.stringify(x.candidate)} (live: ${JSON.stringify(x.live)})`);
  if (a.text) await text(`${cand.sha256.slice(0, 12)}  ${cand.manifest.id}  ${rec.pass ? 'pass' : 'REFUSED'}  disagreement=${metrics.disagreement.toFixed(3)} kl=${metrics.kl.toFixed(4)} leak=${metrics.leak.toFixed(3)}\n`);
  else await ctx.out.write(stored);
  if (!rec.pass) {
    // a refusal is a runtime outcome (exit 1), not bad input; the record must be out first
    await ctx.out.end();
    throw new Error(`canary refused ${cand.manifest.id} for ${ref}: ${failures.join('; ')}`);
  }
  if (a.promote) {
    try {
      const r = await reg.promote(ref, { id: cand.sha256 }, meta);
      if (r.event) {
        ctx.log(`${ref} → ${cand.manifest.id} v${cand.manifest.version} (${cand.sha256.slice(0, 12)})`);
        if (!a.text) await ctx.out.write(r.event);
      }
    } catch (e) {
      throw libError(e);
    }
  }
}
