/**
 * What an adapter is tested on: its facts and probes sorted into the sets
 * each metric reads (edit, paraphrase, neighbourhood, forget, retain, suite,
 * unrelated prompts, general text, generation prompts).
 */

/** The fields of a `fact` record this module reads. */
export interface FactLike {
  id: string;
  subject: string;
  prompt: string;
  target_new?: string;
  target_true?: string;
  op?: string;
  prompts?: { paraphrase?: string[]; neighborhood?: string[]; generation?: string[] };
  [k: string]: unknown;
}

/** The fields of a `probe` record this module reads. */
export interface ProbeLike {
  id?: string;
  fact_id?: string;
  role: string;
  split?: string;
  prompt: string;
  target?: string;
  expect?: string;
  /** Some probe sets carry the stored answer next to the target. */
  target_true?: string;
  [k: string]: unknown;
}

export interface SuiteItem {
  prompt: string;
  /** The answer scored (target_new for edits, target_true for forget/neighbourhood/retain). */
  target: string;
  /** The competing answer, for P(target) > P(alt). */
  alt?: string;
  expect?: string;
  fact_id?: string;
  role: string;
  id?: string;
  /** The item's relation (retain probes), for stratified samples. */
  relation?: string;
  /**
   * Scored but left out of the metrics (a retain probe about an edited
   * fact): scoring the whole shared set keeps its batches — and so its
   * floating-point results — the same for every adapter.
   */
  excluded?: boolean;
}

export interface EvalSuite {
  edit: SuiteItem[];
  paraphrase: SuiteItem[];
  neighborhood: SuiteItem[];
  forget: SuiteItem[];
  retain: SuiteItem[];
  suite: SuiteItem[];
  /** Prompts whose next-token distribution should not move (KL). */
  unrelated: string[];
  /** Texts for perplexity. */
  general: string[];
  /** Prompts for greedy generation (fluency). */
  generation: string[];
}

export interface SharedSets {
  /** Probes of facts not edited (target = the known answer). */
  retain?: readonly ProbeLike[];
  /** Retain probes to score but leave out of the metrics (about the edited facts). */
  retainExcluded?: ReadonlySet<ProbeLike>;
  /** General text (probe `prompt` = the whole text). */
  general?: readonly ProbeLike[];
  /** User regression probes (--suite). */
  suite?: readonly ProbeLike[];
}

export function fillSubject(template: string, subject: string): string {
  return template.split('{}').join(subject);
}

/**
 * Sort a set of facts and the probes about them into an EvalSuite.
 *
 * - insert facts: `edit` probes (any split; target_new) — one made from the
 *   fact's own prompt when there is none; held-out `paraphrase` probes
 *   (split `test`) and CounterFact `prompts.paraphrase`; `neighborhood`
 *   probes (split `test`) and `prompts.neighborhood` (target_true, competing
 *   with target_new).
 * - forget facts: their `edit` and `paraphrase` probes score target_true;
 *   their held-out `neighborhood` probes are scored like an insert's (other
 *   subjects must keep their answers when one fact is forgotten).
 * - `generation` probes / `prompts.generation` feed fluency; without any,
 *   the edit and paraphrase prompts do.
 * - `general` probes are general text; `context` and `counterfactual`
 *   probes are not scored (yet).
 * - probes whose fact_id is not one of `facts` are ignored here (the caller
 *   routes them to the shared sets).
 */
export function buildSuite(facts: readonly FactLike[], probes: readonly ProbeLike[], shared: SharedSets = {}): EvalSuite {
  const s: EvalSuite = { edit: [], paraphrase: [], neighborhood: [], forget: [], retain: [], suite: [], unrelated: [], general: [], generation: [] };
  const byFact = new Map<string, ProbeLike[]>();
  for (const p of probes) {
    if (p.fact_id === undefined) continue;
    const l = byFact.get(p.fact_id) ?? [];
    l.push(p);
    byFact.set(p.fact_id, l);
  }
  const seen = new Set<string>();
  const push = (list: SuiteItem[], item: SuiteItem): void => {
    const key = `${item.role}\u0000${item.prompt}\u0000${item.target}\u0000${item.fact_id ?? ''}`;
    if (seen.has(key)) return;
    seen.add(key);
    list.push(item);
  };
  const generation: string[] = [];
  for (const f of facts) {
    const ps = byFact.get(f.id) ?? [];
    const forget = f.op === 'forget';
    const role = (r: string) => ps.filter((p) => p.role === r);
    if (forget) {
      if (f.target_true === undefined) continue;
      const own = [...role('edit'), ...role('paraphrase').filter((p) => p.split !== 'train')];
      if (role('edit').length === 0) own.unshift({ role: 'edit', prompt: fillSubject(f.prompt, f.subject), fact_id: f.id });
      for (const p of own) push(s.forget, { prompt: p.prompt, target: f.target_true, role: p.role, fact_id: f.id, ...(p.id ? { id: p.id } : {}) });
      for (const t of f.prompts?.paraphrase ?? []) push(s.forget, { prompt: t, target: f.target_true, role: 'paraphrase', fact_id: f.id });
      // neighbours of a forgotten fact keep their own answers; there is no competing answer to compare with
      for (const p of role('neighborhood').filter((q) => q.split !== 'train')) {
        push(s.neighborhood, { prompt: p.prompt, target: p.target ?? '', role: 'neighborhood', fact_id: f.id, ...(p.expect ? { expect: p.expect } : {}) });
      }
      // CounterFact's neighbourhood prompts share the edited fact's true answer
      for (const prompt of f.prompts?.neighborhood ?? []) push(s.neighborhood, { prompt, target: f.target_true, role: 'neighborhood', fact_id: f.id });
    } else {
      if (f.target_new === undefined) continue;
      const alt = f.target_true;
      const edits = role('edit');
      if (edits.length === 0) edits.push({ role: 'edit', prompt: fillSubject(f.prompt, f.subject), fact_id: f.id });
      for (const p of edits) push(s.edit, { prompt: p.prompt, target: f.target_new, ...(alt !== undefined ? { alt } : {}), role: 'edit', fact_id: f.id, ...(p.id ? { id: p.id } : {}) });
      const paras = [...role('paraphrase').filter((p) => p.split !== 'train').map((p) => p.prompt), ...(f.prompts?.paraphrase ?? [])];
      for (const prompt of paras) push(s.paraphrase, { prompt, target: f.target_new, ...(alt !== undefined ? { alt } : {}), role: 'paraphrase', fact_id: f.id });
      // train-split neighbours were regularisation data for the trainer: only held-out ones test it
      for (const p of role('neighborhood').filter((q) => q.split !== 'train')) {
        // without a target only the top-1 (vs the base model) and P(target_new) are read
        push(s.neighborhood, { prompt: p.prompt, target: p.target ?? '', alt: f.target_new, role: 'neighborhood', fact_id: f.id, ...(p.expect ? { expect: p.expect } : {}) });
      }
      for (const prompt of f.prompts?.neighborhood ?? []) push(s.neighborhood, { prompt, target: alt ?? '', alt: f.target_new, role: 'neighborhood', fact_id: f.id });
    }
    for (const p of role('generation')) generation.push(p.prompt);
    for (const g of f.prompts?.generation ?? []) generation.push(g);
    for (const p of role('general').filter((q) => q.split !== 'train')) s.general.push(p.prompt);
  }
  if (generation.length === 0) {
    for (const it of [...s.edit, ...s.paraphrase, ...s.forget]) generation.push(it.prompt);
  }
  s.generation = [...new Set(generation)];
  for (const p of shared.retain ?? []) {
    if (p.target === undefined) continue;
    s.retain.push({
      prompt: p.prompt, target: p.target, role: p.role,
      ...(p.fact_id ? { fact_id: p.fact_id } : {}), ...(p.id ? { id: p.id } : {}), ...(typeof p.relation === 'string' ? { relation: p.relation } : {}),
      ...(shared.retainExcluded?.has(p) ? { excluded: true } : {}),
    });
  }
  for (const p of shared.general ?? []) s.general.push(p.prompt);
  for (const p of shared.suite ?? []) {
    s.suite.push({ prompt: p.prompt, target: p.target ?? '', role: p.role, expect: p.expect ?? 'true', ...(p.fact_id ? { fact_id: p.fact_id } : {}), ...(p.id ? { id: p.id } : {}) });
  }
  // unrelated prompts: the retain set's prompts (other facts); without one, the general texts
  s.unrelated = s.retain.length > 0 ? s.retain.map((r) => r.prompt) : s.general.slice();
  return s;
}
