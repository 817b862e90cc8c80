/**
 * World description: the JSON file that defines a synthetic world (entity
 * types, name pools, relations, surface templates, general text). The
 * generator turns it plus a seed into facts, a corpus, eval sets and a
 * tokenizer. Field-by-field documentation lives in fixtures/world/README.md.
 */

/** How the names of a pool or an entity type are made. */
export type NameSpec =
  | { list: string[] }
  | { generate: SyllableSpec }
  | { compose: ComposeSpec };

/** Names from syllables: `min`..`max` syllables, capitalised, optional suffix. */
export interface SyllableSpec {
  syllables: string[];
  min: number;
  max: number;
  suffixes?: string[];
}

/** Multi-word names assembled from name pools, e.g. [["given","family"]]. */
export interface ComposeSpec {
  parts: string[][];
  /** relative weight of each entry of `parts` (default: equal) */
  weights?: number[];
}

export interface PoolSpec {
  count: number;
  names: { list: string[] } | { generate: SyllableSpec };
}

export interface EntityTypeSpec {
  /** number of entities; with `names.list` defaults to the list length */
  count?: number;
  names: NameSpec;
  /** general-text sentences about each entity, `{}` = its name, e.g. "{} is a city." */
  describe?: string[];
}

export type AssignSpec =
  | { mode: 'random' }
  /** every object used about equally often */
  | { mode: 'balanced' }
  /** every object used at most once */
  | { mode: 'unique' }
  /** follow earlier functional relations from the subject: ["born_in","located_in",...] */
  | { mode: 'derive'; path: string[] }
  /** pick one object o with relation(o) = subject (e.g. a capital among a country's cities) */
  | { mode: 'inverse'; relation: string };

export interface WorldTemplateSet {
  /** templates seen in training */
  train: string[];
  /** held-out paraphrases: never in the training corpus */
  heldout: string[];
}

export interface RelationSpec {
  name: string;
  subject: string;
  object: string;
  /** one object per subject (default true) */
  functional?: boolean;
  /** for non-functional relations: how many objects per subject, [min, max] */
  objects?: [number, number];
  /** fraction of subjects that have this relation (default 1) */
  coverage?: number;
  assign: AssignSpec;
  /** statement prompts: `{}` = subject, the object follows as the next word */
  templates: WorldTemplateSet;
  /** questions about the subject (`{}` = subject), wrapped by `question_format` */
  questions?: WorldTemplateSet;
}

export interface GeneralSpec {
  /** number of general-text documents (train + held-out) */
  documents: number;
  /** fraction of general documents held out for perplexity */
  heldout_fraction: number;
  /** "a plus b is c" / "a minus b is c" with operands 0..max */
  arithmetic?: { max: number };
  /** runs of consecutive numbers */
  counting?: { max: number; min_length: number; max_length: number };
  /** sentences from templates with named slots: "The {animal} is {color}." */
  descriptions?: { templates: string[]; slots: Record<string, string[]> };
}

export interface CorpusSpec {
  /** how many times each fact is stated with each training template */
  statement_repeats?: number;
  /** how many times each fact is asked with each training question */
  question_repeats?: number;
  /** short multi-fact biographies of subjects */
  bios?: number;
  /** in-context documents (state a fact, then use it) */
  context_docs?: number;
  /** shares of in-context documents: contradicting / agreeing with the world / about another fact */
  context_mix?: { counterfactual: number; consistent: number; distractor: number };
}

export interface EvalSpec {
  /** held-out paraphrase prompts per fact (capped by the number of held-out prompts) */
  paraphrase_per_fact?: number;
  /** in-context counterfactual prompts (training frames) */
  context?: number;
  /** in-context counterfactual prompts with held-out frames */
  context_heldout_frames?: number;
}

export interface WorldDescription {
  name: string;
  description?: string;
  /** longest document in tokens, including the end-of-text token (default 48) */
  max_seq_len?: number;
  /** largest allowed vocabulary (default 1500) */
  max_vocab?: number;
  name_pools?: Record<string, PoolSpec>;
  entity_types: Record<string, EntityTypeSpec>;
  relations: RelationSpec[];
  /** wraps a question: `{q}` = question text; the answer follows (default "Q: {q} A:") */
  question_format?: string;
  /** frames stating a fact in context: `{fact}` = "Subject template target" */
  context: WorldTemplateSet;
  corpus?: CorpusSpec;
  eval?: EvalSpec;
  edits?: { counterfactual: number; forget: number };
  general: GeneralSpec;
}

/** Thrown for an invalid world description; lists every problem found. */
export class WorldValidationError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid world description:\n  - ${problems.join('\n  - ')}`);
    this.name = 'WorldValidationError';
  }
}
