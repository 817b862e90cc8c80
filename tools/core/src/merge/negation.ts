/**
 * What a negated adapter states. Negation (`adapter-merge --method negate`,
 * scale −1) takes back what its parent did, so its facts are the parent's
 * with the op turned round:
 *
 * - an insert of answer N (target_new N; or target_true N alone, "teach as
 *   is") becomes `op: forget` of N (target_true N): validate then applies the
 *   forget gates to the negation (N must no longer be produced), and
 *   `--into REF` replaces REF's insert of that fact by the forget;
 * - a forget of answer T becomes an insert that restores T (target_new T).
 *
 * The probes that test those facts turn with them: the answer the parent
 * taught (expect `new`/`true`) is now one that must not come (expect
 * `abstain`), and the reverse. Neighbourhood probes keep `unchanged`.
 *
 * The parent's own facts and probes ride along in the manifest's `negation`
 * field, so negating a negation restores them exactly (as the weights are:
 * −(−B) = B bit for bit), whatever the per-fact mapping could not say
 * (an insert's target_true, a forget's abstain probes).
 */

type Obj = Record<string, unknown>;

/** The manifest field that keeps a negation's parent's facts and probes. */
export interface NegationStash {
  facts: Obj[];
  probes: Obj[];
}

const isForget = (f: Obj) => f.op === 'forget';

/** One fact with its op turned round (see the module comment). */
export function negateFact(f: Obj): Obj {
  const { target_new: tn, target_true: tt, ...rest } = f;
  if (isForget(f)) {
    // restore the forgotten answer
    return { ...rest, op: 'insert', ...(tt !== undefined ? { target_new: tt } : {}) };
  }
  const answer = tn ?? tt;
  return { ...rest, op: 'forget', ...(answer !== undefined ? { target_true: answer } : {}) };
}

const TURNED_ROLES = new Set(['edit', 'paraphrase', 'context', 'generation']);

/** One probe of a negated fact: the answer taught must now not come, and the reverse. */
export function negateProbe(p: Obj, fact: Obj | undefined): Obj {
  if (!fact || !TURNED_ROLES.has(String(p.role))) return p;
  if (isForget(fact)) {
    // the parent forgot `target_true`: it is taught again
    if (p.expect !== 'abstain') return p;
    const { target_true: _t, ...rest } = p;
    const restored = fact.target_true;
    return { ...rest, expect: 'new', ...(typeof restored === 'string' ? { target: restored } : {}) };
  }
  if (p.expect !== 'new' && p.expect !== 'true') return p;
  const answer = fact.target_new ?? fact.target_true;
  const { target_new: _n, ...rest } = p;
  return { ...rest, expect: 'abstain', ...(typeof answer === 'string' ? { target: answer } : {}) };
}

function stashOf(manifest: Obj): NegationStash | null {
  const s = manifest.negation;
  if (s === null || typeof s !== 'object' || Array.isArray(s)) return null;
  const { facts, probes } = s as Obj;
  return Array.isArray(facts) && Array.isArray(probes) ? { facts: facts as Obj[], probes: probes as Obj[] } : null;
}

/**
 * The facts and probes of `parent` negated, and the stash to keep in the
 * negation's manifest. A parent that is itself a negation gives back what it
 * negated, exactly.
 */
export function negateStatements(parent: { facts: Obj[]; probes: Obj[] } & Obj): { facts: Obj[]; probes: Obj[]; negation: NegationStash } {
  const negation = { facts: parent.facts, probes: parent.probes };
  const stash = stashOf(parent);
  if (stash) return { facts: stash.facts, probes: stash.probes, negation };
  const byId = new Map(parent.facts.map((f) => [String(f.id), f]));
  return {
    facts: parent.facts.map(negateFact),
    probes: parent.probes.map((p) => negateProbe(p, byId.get(String(p.fact_id)))),
    negation,
  };
}

/**
 * The facts of a merge, one per id, in first-seen order: a later parent's
 * fact with a different op replaces an earlier one (a forget or negation of
 * an insert REF holds takes it back), else the first is kept.
 */
export function mergeFacts(lists: ReadonlyArray<readonly Obj[]>): Obj[] {
  const out = new Map<string, Obj>();
  for (const facts of lists) {
    for (const f of facts) {
      const id = String(f.id);
      const prev = out.get(id);
      if (!prev || (prev.op ?? 'insert') !== (f.op ?? 'insert')) out.set(id, f);
    }
  }
  return [...out.values()];
}
