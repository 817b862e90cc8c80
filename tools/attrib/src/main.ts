#!/usr/bin/env node
/**
 * attrib: for each fact, where in the model its answer is produced. Writes
 * every input record through in order, each fact followed by its ranked
 * `locus` records.
 */
import { InputError, UsageError, packageVersion, runTool, spellingScreen, type SpellingScreen } from '@catechism/core/cli';
import type { CausalLM, Tokenizer } from '@catechism/core/models';
import { parseFact, type Fact, type Probe } from '@catechism/core/records';
import { AttribInputError, SELECT_RULES, SITE_KINDS, type SelectRule, type SiteKind } from '@catechism/core/attrib';
import { METHODS, attribFact, type AttribOptions, type Method } from './lib.js';
import { writePlots } from './plot.js';

interface Args {
  method: string[];
  samples: number;
  noise: number;
  'top-k': number;
  select: string;
  sites: string;
  target: string;
  'module-score': string;
  'batch-rows': number;
  plot?: string;
}

function list(values: string[] | string, allowed: readonly string[], flag: string): string[] {
  const out: string[] = [];
  for (const v of ([] as string[]).concat(values).flatMap((s) => String(s).split(','))) {
    const t = v.trim();
    if (t === '') continue;
    if (!allowed.includes(t)) throw new UsageError(`${flag}: unknown value ${JSON.stringify(t)} (one of: ${allowed.join(', ')}) (see --help)`);
    if (!out.includes(t)) out.push(t);
  }
  if (out.length === 0) throw new UsageError(`${flag}: name at least one of ${allowed.join(', ')} (see --help)`);
  return out;
}

function positiveInt(v: number, flag: string): number {
  if (!Number.isInteger(v) || v < 1) throw new UsageError(`${flag}: expected a positive integer, got ${String(v)} (see --help)`);
  return v;
}

await runTool<Args>({
  name: 'attrib',
  // attrib reads and writes records only: a registry means nothing to it
  without: ['registry'],
  version: packageVersion(import.meta.url),
  describe:
    'Finds where in the model each fact\'s answer (target_true by default) is produced. For every `fact` record it writes ranked ' +
    '`locus` records (site, module to adapt, layer, expert, method, score, rank) right after the fact; every record passes through ' +
    'unchanged and in order. Methods: patch (causal tracing: noise the subject\'s embeddings, restore one clean activation at a time), ' +
    'atp (attribution patching, its first-order estimate), grad-x-act (gradient × weight per linear module), expert (MoE: gradient × ' +
    'output per expert, with how often the router picks it for the subject and final tokens). Select rule (--select, patch/atp): ' +
    'a site\'s score is its largest indirect effect over positions (max, the default: the traced peak), its effect at the ' +
    'subject\'s last token (subject-last, ROME\'s edit site), at the final token (last) or the mean (mean); sites rank by score, highest first. grad-x-act ranks modules by |score|; ' +
    'expert ranks experts by score.',
  examples: [
    ['probe-gen facts.ndjson | attrib', 'causal tracing on the default fixture model, top 3 MLP/attention sites per fact'],
    ['attrib --method patch,atp --plot traces/ facts.ndjson', 'both estimates, with heatmaps per fact'],
    ['attrib --method grad-x-act --top-k 5 facts.ndjson', 'modules by gradient × weight'],
    ['attrib --method expert --model fixtures/models/moe facts.ndjson', 'experts of a mixture-of-experts model'],
  ],
  options: {
    method: { type: 'string', array: true, default: ['patch'], describe: `methods, comma-separated or repeated: ${METHODS.join(', ')}` },
    samples: { type: 'number', default: 10, describe: 'noise samples averaged over (patch, atp)' },
    noise: { type: 'number', default: 3, describe: 'noise standard deviation in units of the token-embedding standard deviation' },
    'top-k': { type: 'number', default: 3, describe: 'loci per fact and method' },
    select: { type: 'string', default: 'max', describe: `how a site's per-position effects become its score: ${SELECT_RULES.join(', ')}` },
    sites: { type: 'string', default: 'mlp,attn', describe: `site kinds that become loci (patch, atp): ${SITE_KINDS.join(', ')}` },
    target: { type: 'string', default: 'true', describe: 'which answer to trace: true (target_true, what the model knows) or new (target_new)' },
    'module-score': { type: 'string', default: 'signed', describe: 'grad-x-act module score: signed (Σ grad⊙W) or abs (Σ|grad⊙W|)' },
    'batch-rows': { type: 'number', default: 64, describe: 'rows per batched forward pass (restored runs × samples)' },
    plot: { type: 'string', describe: 'write per-fact SVG pictures here: causal-trace heatmaps and module score bars' },
  },
  run: async (ctx) => {
    const a = ctx.args;
    const opts: AttribOptions = {
      methods: list(a.method, METHODS, '--method') as Method[],
      samples: positiveInt(a.samples, '--samples'),
      noise: a.noise,
      topK: positiveInt(a['top-k'], '--top-k'),
      select: list(a.select, SELECT_RULES, '--select')[0] as SelectRule,
      sites: list(a.sites, SITE_KINDS, '--sites') as SiteKind[],
      target: list(a.target, ['true', 'new'], '--target')[0] as 'true' | 'new',
      moduleScore: list(a['module-score'], ['signed', 'abs'], '--module-score')[0] as 'signed' | 'abs',
      batchRows: positiveInt(a['batch-rows'], '--batch-rows'),
      seed: a.seed,
    };
    if (!(Number.isFinite(opts.noise) && opts.noise >= 0)) throw new UsageError(`--noise: expected a number ≥ 0, got ${String(a.noise)} (see --help)`);

    let lm: { model: CausalLM; tokenizer: Tokenizer; screen: SpellingScreen } | null = null;
    const load = async () => {
      if (lm) return lm;
      // the runner loads the model once, with the same checks and wording in every tool
      const { model, tokenizer, dir } = await ctx.model();
      // experts are a property of the architecture, not of one family's name
      if (opts.methods.includes('expert') && !(model.config.experts > 0)) {
        throw new UsageError(`--method expert needs a mixture-of-experts model; ${dir} is ${model.config.modelType}`);
      }
      lm = { model, tokenizer: tokenizer!, screen: spellingScreen(ctx, tokenizer!) };
      return lm;
    };

    const facts = new Set<string>();
    const bad: string[] = [];
    // Facts are checked here, not by the reader: a known fact (target_true only, as in the
    // world's facts.ndjson) is traceable, so parseFact's rules for known facts apply (below).
    // Facts refused for unknown words (--on-bad-record skip): they and their probes are left out.
    const refused = new Set<string>();
    for await (const at of ctx.read({ validate: false })) {
      const { record, source, index } = at;
      if (record.kind === 'fact' && typeof record.id === 'string' && typeof record.subject === 'string' && record.id !== '' && !(await load()).screen.keep(at)) {
        refused.add(record.id);
        continue;
      }
      if (record.kind === 'probe' && refused.has(record.fact_id as string)) continue;
      await ctx.out.write(record);
      if (record.kind === 'probe') {
        const p = record as Probe;
        // general-text (replay) probes belong to no fact (probe-gen gives them fact_id "*")
        if (p.role !== 'general' && (typeof p.fact_id !== 'string' || !facts.has(p.fact_id))) {
          // reported per record; the record has passed through, and the run ends with exit 2
          const e = new InputError(`probe for unknown fact ${JSON.stringify(p.fact_id)} (no fact record with that id came before it)`, { source, record: index, field: 'fact_id' });
          bad.push(e.message);
          ctx.log(e.message);
        }
        continue;
      }
      if (record.kind !== 'fact') continue;
      let f: Fact;
      try {
        // the one fact definition (core's schema), with the rules for known facts: target_true alone will do
        f = parseFact(record, { known: true });
      } catch (e) {
        if (!(e instanceof InputError)) throw e;
        const err = e.locate({ source, record: index });
        bad.push(err.message);
        ctx.log(err.message);
        continue;
      }
      facts.add(f.id);
      const { model, tokenizer } = await load();
      // The fact reaches the next tool (or `| head -1`) before the slow part, not 64 KiB later.
      await ctx.out.flush();
      try {
        const res = attribFact(model, tokenizer, f, opts);
        await ctx.out.writeBatch(res.loci);
        await ctx.out.flush();
        if (a.plot) await writePlots(a.plot, f.id, res, tokenizer);
      } catch (e) {
        if (!(e instanceof AttribInputError)) throw e;
        const err = new InputError(e.message, { source, record: index, ...(e.field ? { field: e.field } : {}) });
        bad.push(err.message);
        ctx.log(err.message);
      }
      ctx.progress.tick();
    }
    // `lm` is set inside load(); read it through a cast so TS does not narrow it to null here
    (lm as { screen: SpellingScreen } | null)?.screen.finish();
    if (bad.length > 0) {
      // flush what passed through before the error exit (runTool exits without flushing)
      await ctx.out.end();
      throw new InputError(`${bad.length} bad record(s); first: ${bad[0]}`);
    }
  },
});
