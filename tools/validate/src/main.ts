#!/usr/bin/env node
/**
 * validate: adapter records in, one report per adapter out (after every
 * input record, passed through in order). See README.md.
 */
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fixtureWorldOf, InputError, packageVersion, runTool, UsageError } from '@catechism/core/cli';
import type { AnyRecord } from '@catechism/core/records';
import { SpellingCheck } from '@catechism/core/models';
import { modelsDir, worldDir } from '@catechism/core/fixtures';
import { parseGate, resolveGates, type ConceptLike, type FactLike, type ProbeLike } from '@catechism/core/metrics';
import { fileExists, loadAdapter, readConceptFile, readProbeFile, validateBaseline, validateLoaded, type AdapterResult, type LoadedAdapter, type ValidateContext } from './validate.js';
import { resolveEvalSets } from './sets.js';
import { appendHistory } from './history.js';
import { hashBundleDir } from '@catechism/core/adapters';
import { randomUUID } from 'node:crypto';
import { isKind } from '@catechism/core/records';

/** Exit status with --strict when any adapter fails a gate (0 ok, 1 runtime failure, 2 bad input/usage). */
export const EXIT_GATE_FAILED = 3;

interface Args {
  gate: string[];
  strict: boolean;
  baseline: boolean;
  html?: string;
  retain?: string;
  general?: string;
  world?: string;
  suite?: string;
  force: boolean;
  retainN: number;
  generalN: number;
  record: boolean;
  fluency: boolean;
  genTokens: number;
  batchSize: number;
  runtime: 'engine' | 'onnx';
  onnxDir?: string;
  concepts?: string;
  erasureSite?: string;
}

await runTool<Args>({
  name: 'validate',
  version: packageVersion(import.meta.url),
  describe:
    'Proves an adapter works and harms nothing: for each `adapter` record, loads its bundle on the base model and measures ' +
    'efficacy, generalisation (teacher-forced and by greedy generation), specificity (neighbourhood, KL), retention (perplexity, facts not edited, --suite), forgetting, ' +
    'fluency and cost, each with its standard error, over fixed evaluation sets (never --seed or the stream); checks gates; writes one `report` record per adapter after passing every input record through, and appends ' +
    'the report to the bundle\'s validation history. Probe records in the stream about an adapter\'s facts are used with the bundle\'s own probes.',
  examples: [
    ['adapter-merge show fact-42 | validate', 'validate a stored adapter (its report goes to the registry\'s history)'],
    ["validate adapter.ndjson --gate 'efficacy>=0.95' --gate 'ppl_delta<=0.02' --strict", 'stricter gates; exit 3 if any adapter fails'],
    ['probe-gen edits.ndjson | validate --baseline', 'the base model alone on the edits (efficacy 0 for counterfactuals)'],
    ['validate adapter.ndjson --html report.html --no-record', 'a readable page with charts; history untouched'],
  ],
  options: {
    gate: { type: 'string', array: true, default: [], describe: 'gate METRIC>=N | METRIC<=N (also > <); replaces that metric\'s default (repeatable)' },
    strict: { type: 'boolean', default: false, describe: `exit ${EXIT_GATE_FAILED} when any adapter fails a gate` },
    baseline: { type: 'boolean', default: false, describe: 'also report the base model alone (adapter_id "base") on all the facts and probes' },
    html: { type: 'string', describe: 'write a readable HTML page (metric tables, before/after charts) to FILE' },
    retain: { type: 'string', describe: 'probes of facts the model knows, not edited (retention accuracy, KL prompts); default with a bundled fixture model (dense or MoE): the world\'s eval/facts-heldout.ndjson (held-out phrasings no training uses)' },
    general: { type: 'string', describe: 'general-text probes for perplexity; default with a bundled fixture model: the world\'s eval/general.ndjson' },
    world: { type: 'string', describe: 'a world directory (scripts/make-world.mjs --out) whose eval/ sets fit --model: the default --retain and --general' },
    suite: { type: 'string', describe: 'your regression probes (expect true/new: target stays top-1; unchanged: top-1 as base; abstain: target not top-1)' },
    'retain-n': { type: 'number', default: 2000, describe: 'largest retention set: a larger file is sampled, stratified by relation, with a fixed seed (not --seed); 0: none' },
    'general-n': { type: 'number', default: 500, describe: 'largest general set: a larger file is sampled with a fixed seed; 0: none' },
    force: { type: 'boolean', default: false, describe: 'validate a bundle whose hash differs from its record\'s, or against a model other than its base model (the report records it)' },
    record: { type: 'boolean', default: true, describe: 'append each report to its bundle\'s validation history (--no-record: don\'t)' },
    fluency: { type: 'boolean', default: true, describe: 'greedy generations for fluency (--no-fluency: skip)' },
    'gen-tokens': { type: 'number', default: 16, describe: 'new tokens per generation (fluency, and the greedy answers of forget prompts)' },
    'batch-size': { type: 'number', default: 32, describe: 'sequences per forward pass' },
    runtime: { choices: ['engine', 'onnx'], default: 'engine', describe: 'score with our engine, or with onnxruntime-node (CPU) on the ONNX export of each model state (base; base + adapter)' },
    concepts: { type: 'string', describe: '`concept` records (NDJSON) for the erasure probe, besides those in the stream: a linear probe trained on half of the held-out (split test) examples reads the other half before and after each adapter (erasure_probe_acc, erasure_probe_chance; gate erasure_probe_gap<=0.03); a steering adapter gets steer_shift instead (gate >=0.5: its other side\'s prompts read as its own by a probe of the base model)' },
    'erasure-site': { type: 'string', describe: 'the hook site the erasure probe reads (e.g. layers.2.mlp, layers.3.resid_post); default the site a LEACE adapter names, else the middle layer\'s MLP output' },
    'onnx-dir': { type: 'string', describe: '--runtime onnx: where exports are looked up (by the state in their export.json, e.g. from adapter-merge export --format onnx) and written; default a temporary directory' },
  },
  async run(ctx) {
    const a = ctx.args;
    let anyFailed = false;
    const gates = resolveGates(a.gate.map(parseGate));
    for (const [k, v] of [['--retain-n', a.retainN], ['--general-n', a.generalN], ['--batch-size', a.batchSize], ['--gen-tokens', a.genTokens]] as const) {
      if (!Number.isInteger(v) || v < 0 || (k === '--batch-size' && v === 0)) throw new UsageError(`${k}: expected a non-negative integer, got ${v}`);
    }

    // every record passes through as it comes; adapters, facts and probes are kept for the evaluation
    const adapters: Array<{ record: AnyRecord; source: string; index: number }> = [];
    const facts: FactLike[] = [];
    const probes: ProbeLike[] = [];
    const concepts: ConceptLike[] = a.concepts !== undefined ? readConceptFile(a.concepts) : [];
    for await (const batch of ctx.readBatches()) {
      ctx.progress.tick(batch.length);
      for (const { record, source, index } of batch) {
        if (record.kind === 'adapter') adapters.push({ record, source, index });
        else if (isKind(record, 'fact')) facts.push(record);
        else if (isKind(record, 'probe')) probes.push(record);
        else if (isKind(record, 'concept')) concepts.push(record);
      }
      // adapter records are re-emitted with their report (below): appending a report
      // to a plain bundle's manifest changes its content hash, and the record must
      // describe the bundle as it is when it leaves this tool
      await ctx.out.writeBatch(batch.filter((b) => b.record.kind !== 'adapter').map((b) => b.record));
    }
    if (adapters.length === 0 && !a.baseline) {
      ctx.log('no adapter records in the input: nothing to validate (use --baseline to measure the base model)');
      return;
    }

    // the runner finds, checks and loads the model (one wording in every tool)
    const modelDir = ctx.modelDir().dir;
    if (a.world !== undefined && !fileExists(path.join(a.world, 'eval'))) throw new UsageError(`--world ${a.world}: no eval/ directory (a world made by scripts/make-world.mjs is expected)`);
    const lm = await ctx.model();
    // --runtime onnx: the same model state scored by onnxruntime-node (core onnx/runtime.ts)
    const model = a.runtime === 'onnx'
      ? (await import('@catechism/core/onnx')).onnxRuntimeModel(lm.model, { modelDir, baseSha256: lm.sha256(), ...(a.onnxDir !== undefined ? { dir: a.onnxDir } : {}), log: ctx.log })
      : lm.model;
    const tokenizer = lm.tokenizer!;
    // Fixed evaluation sets (files only: never the stream's records, never --seed), so the verdict
    // does not depend on either; each adapter's own facts are left out of them in evaluate().
    const sets = resolveEvalSets({
      // a fixture model's own world (dense-b: world-b)
      modelDir, fixtureModels: modelsDir(), fixtureWorld: fixtureWorldOf(modelDir) ?? worldDir(), ...(a.world !== undefined ? { world: a.world } : {}),
      ...(a.retain !== undefined ? { retainFile: a.retain } : {}), ...(a.general !== undefined ? { generalFile: a.general } : {}),
      retainN: a.retainN, generalN: a.generalN,
    });
    for (const n of sets.notes) ctx.log(n);
    if (sets.retainSource !== undefined && a.retainN > 0) ctx.log(`retention set: ${sets.retain.length} of ${sets.retainTotal} probes of ${sets.retainSource}`);
    const ignored = probes.filter((p) => p.role === 'general').length;
    if (ignored > 0) ctx.log(`${ignored} general probes in the stream are not scored: perplexity reads the fixed general set only, so the stream cannot move the verdict`);
    const shared = {
      retain: sets.retain,
      general: sets.general,
      suite: a.suite !== undefined ? readProbeFile(a.suite) : [],
    };
    const modelSha = lm.sha256();
    const vctx: ValidateContext = {
      model, tokenizer, modelName: a.model ?? path.relative(process.cwd(), modelDir) ?? modelDir, modelSha256: modelSha, gates, shared,
      batchSize: a.batchSize, genTokens: a.genTokens, noGeneration: !a.fluency, log: ctx.log, notes: sets.notes, baseCache: new Map(),
      concepts, probeModel: lm.model, ...(a.erasureSite !== undefined ? { erasureSite: a.erasureSite } : {}),
      run: { tool: 'validate', version: packageVersion(import.meta.url), id: randomUUID(), started_at: new Date().toISOString() },
    };

    const results: AdapterResult[] = [];
    const baselineFacts: FactLike[] = [...facts];
    const baselineProbes: ProbeLike[] = [...probes];
    // every bundle is read and checked before anything is evaluated or recorded:
    // a bad one is bad input (exit 2) and leaves no history behind
    const loadedAll: LoadedAdapter[] = [];
    const spelling = new SpellingCheck(tokenizer);
    for (const { record, source, index } of adapters) {
      try {
        const loaded = await loadAdapter({ record, streamFacts: facts, streamProbes: probes }, model, { modelSha256: modelSha, modelDir, force: a.force, lock: a.record });
        for (const f of loaded.forced) ctx.log(`warning: ${f}; going on because of --force`);
        // an answer the tokenizer cannot spell would be scored as <unk>: refused unless --allow-unknown
        // (and then it never counts as a success, see metrics)
        for (const f of loaded.facts) {
          const bad = spelling.answers(f);
          if (bad.length === 0) continue;
          if (!a['allow-unknown']) throw new InputError(`adapter ${loaded.id}: ${SpellingCheck.message(f.id, bad[0])}`, { field: bad[0].field });
          ctx.log(`warning: adapter ${loaded.id}: ${SpellingCheck.message(f.id, bad[0])}; kept because of --allow-unknown (never counted as a success)`);
        }
        loadedAll.push(loaded);
      } catch (e) {
        if (e instanceof InputError) throw e.locate({ source, record: index });
        if (e instanceof Error && ['BundleError', 'ManifestError', 'ModelLoadError', 'SafetensorsError'].includes(e.name)) {
          throw new InputError(e.message, { source, record: index, field: 'path' });
        }
        throw e;
      }
    }
    for (const [i, loaded] of loadedAll.entries()) {
      const res = validateLoaded(vctx, loaded);
      let adapterRecord = adapters[i].record;
      ctx.log(`${loaded.id}: ${res.report.pass ? 'pass' : 'FAIL'}${res.report.failures.length ? ' — ' + res.report.failures.join('; ') : ''}`);
      if (a.record) {
        const t = await appendHistory(loaded.dir, res.report);
        ctx.log(`${loaded.id}: report appended to ${t.kind === 'registry' ? `registry ${t.registry} (reports/${t.sha256}.ndjson)` : `${t.dir}/catechism.json (validation)`}`);
        if (t.kind === 'manifest' && 'sha256' in adapterRecord) {
          adapterRecord = { ...adapterRecord, sha256: (await hashBundleDir(loaded.dir)).sha256 };
        }
      }
      await ctx.out.write(adapterRecord);
      if (!res.report.pass) anyFailed = true;
      results.push(res);
      for (const f of loaded.facts) if (!baselineFacts.some((g) => g.id === f.id)) baselineFacts.push(f);
      for (const p of loaded.probes) if (!baselineProbes.includes(p)) baselineProbes.push(p);
      await ctx.out.write(res.report);
    }
    if (a.baseline) {
      const res = validateBaseline(vctx, baselineFacts, baselineProbes);
      results.push(res);
      await ctx.out.write(res.report);
    }
    if (a.html !== undefined) {
      // vega is loaded only when a page is asked for (it is most of the start-up time)
      const { renderHtml } = await import('./html.js');
      writeFileSync(a.html, await renderHtml(results, { title: `validate — ${results.length} report(s)` }));
      ctx.log(`wrote ${a.html}`);
    }
    if (a.strict && anyFailed) ctx.exitCode = EXIT_GATE_FAILED;
  },
});
