/**
 * attrib's record-level logic: one fact in, its ranked loci out. The
 * algorithms live in @catechism/core's attrib module.
 */
import type { CausalLM, Tokenizer } from '@catechism/core/models';
import type { Fact, Locus } from '@catechism/core/records';
import { Rng, fnv1a32 } from '@catechism/core';
import {
  AttribInputError, SITE_KINDS, attributionPatch, causalTrace, gradXAct, moduleOf, prepareFact, siteCandidates,
  type AttribInput, type GradXActResult, type LocusCandidate, type SelectRule, type SiteKind, type TraceResult,
} from '@catechism/core/attrib';

export const METHODS = ['patch', 'atp', 'grad-x-act', 'expert'] as const;
export type Method = (typeof METHODS)[number];

export interface AttribOptions {
  methods: Method[];
  samples: number;
  noise: number;
  topK: number;
  select: SelectRule;
  sites: SiteKind[];
  target: 'true' | 'new';
  moduleScore: 'signed' | 'abs';
  batchRows: number;
  seed: number;
}

export interface FactResult {
  input: AttribInput;
  loci: Locus[];
  traces: Partial<Record<'patch' | 'atp', TraceResult>>;
  gxa?: GradXActResult;
}

/** FNV-1a of the fact id mixed with the seed: each fact's noise is the same whatever else is in the stream. */
export function factSeed(seed: number, id: string): number {
  return fnv1a32(id, seed);
}

function rank(fact: Fact, method: string, cands: LocusCandidate[], k: number): Locus[] {
  return cands.slice(0, k).map((c, i) => ({ kind: 'locus', fact_id: fact.id, ...c, method, rank: i + 1 }) as Locus);
}

/** The fact's target string for `--target`. */
export function factTarget(fact: Fact, which: 'true' | 'new'): string | undefined {
  const t = which === 'true' ? fact.target_true : fact.target_new;
  return typeof t === 'string' && t !== '' ? t : undefined;
}

/** Throws AttribInputError (from core) for facts that cannot be traced. */
export function attribFact(model: CausalLM, tok: Tokenizer, fact: Fact, o: AttribOptions): FactResult {
  const target = factTarget(fact, o.target) ?? factTarget(fact, o.target === 'true' ? 'new' : 'true');
  if (target === undefined) throw new AttribInputError(`fact has neither target_true nor target_new`, `target_${o.target}`);
  let input: AttribInput;
  try {
    input = prepareFact(tok, fact.prompt, fact.subject, target);
  } catch (e) {
    // the target the user chose, not prepareFact's generic name
    if (e instanceof AttribInputError && e.field === 'target') throw new AttribInputError(e.message, target === fact.target_true ? 'target_true' : 'target_new');
    throw e;
  }
  const loci: Locus[] = [];
  const traces: FactResult['traces'] = {};
  const seed = factSeed(o.seed, fact.id);
  let gxa: GradXActResult | undefined;
  for (const m of o.methods) {
    if (m === 'patch' || m === 'atp') {
      // patch and atp of one fact share their noise draws (same seed), so they are comparable
      const opts = { samples: o.samples, noise: o.noise, rng: new Rng(seed), kinds: SITE_KINDS, batchRows: o.batchRows };
      const tr = m === 'patch' ? causalTrace(model, input, opts) : attributionPatch(model, input, opts);
      traces[m] = tr;
      loci.push(...rank(fact, m, siteCandidates(model, tr.effects, input.ids.length, input.subject, o.select, o.sites), o.topK));
    } else if (m === 'grad-x-act') {
      gxa ??= gradXAct(model, input);
      const key = o.moduleScore === 'abs' ? 'abs' : 'score';
      const cands = gxa.modules
        .map((s) => ({ site: s.site, layer: s.layer, module: s.module, score: s[key] }))
        .sort((a, b) => Math.abs(b.score) - Math.abs(a.score));
      loci.push(...rank(fact, m, cands, o.topK));
    } else {
      if (!(model.config.experts > 0)) throw new Error(`--method expert needs a mixture-of-experts model (this is ${model.config.modelType})`);
      gxa ??= gradXAct(model, input);
      const cands = gxa.experts
        .map((e) => ({
          site: `layers.${e.layer}.experts.${e.expert}`, layer: e.layer, module: moduleOf(model, 'mlp', e.layer, e.expert),
          expert: e.expert, score: e.score, route_freq: e.routeFreq,
        }))
        .sort((a, b) => b.score - a.score);
      loci.push(...rank(fact, m, cands, o.topK));
    }
  }
  return { input, loci, traces, ...(gxa ? { gxa } : {}) };
}
