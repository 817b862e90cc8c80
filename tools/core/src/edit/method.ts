/**
 * The edit-method interface: what every editing algorithm behind
 * `lora-train --method NAME` is given and what it gives back.
 *
 * A method turns one batch of facts (with their probes and loci) into one or
 * more edits, each an adapter (the one LoRA/PEFT form) plus the facts it
 * states and the figures that go into its manifest. The caller (lora-train's
 * batch loop) writes every edit through the one bundle writer
 * (`writeEditBundle`), so a method never touches files.
 *
 * Adding a method: one file exporting an `EditMethod`, and one line in
 * `EDIT_METHODS` (edit/methods.ts). Its options are declared here too, so
 * lora-train offers them (under the method's heading in --help) and nothing
 * else does.
 */
import type { CausalLM, Tokenizer } from '../models/index.js';
import type { LoraAdapter } from '../models/lora.js';
import type { Tensor } from '../tensor/index.js';
import type { EditFact, Rec, TemplateBank } from './data.js';

/** One option a method adds to lora-train (yargs' option shape, kept small). */
export interface MethodOption {
  type: 'number' | 'string' | 'boolean' | 'array';
  describe: string;
  default?: number | string | boolean;
  choices?: readonly string[];
  /** Checked before any work: integer, ≥ min, ≤ max (numbers). */
  min?: number;
  max?: number;
  integer?: boolean;
}

/** The loaded model and the world-side resources every method may use. */
export interface EditResources {
  model: CausalLM;
  tokenizer: Tokenizer;
  /** As written into the manifest's base_model. */
  modelName: string;
  modelSha: string;
  /** Training paraphrases per relation (templates.json), when given. */
  templates: TemplateBank | null;
  /** General text, one document per entry (retention, key statistics, prefixes). */
  corpus: string[];
  /** Facts the model is known to answer (what an edit must leave alone). */
  known: Rec[];
  /**
   * Whether training paraphrases were asked for (lora-train --use-templates;
   * false: probes only). Recorded in a method's hyperparameters; unset: true.
   */
  useTemplates?: boolean;
  /**
   * The base model's weights when `model`'s carry a folded adapter
   * (lora-train --over): general text has nothing to do with the facts that
   * adapter carries, so its retention is read from these, and drift does
   * not pile up over rounds of edits made one on top of another.
   */
  baseWeights?: ReadonlyMap<string, Tensor>;
  /** The facts that folded adapter carries (its manifest's), for lora's --replay. */
  overFacts?: EditFact[];
}

/** One batch of the input: the facts to edit and their records. */
export interface EditBatch {
  facts: EditFact[];
  /** Every record that fed this batch, in input order (hashed into data_sha256). */
  records: Rec[];
  probes: Rec[];
  loci: Rec[];
}

export interface EditCall<O> {
  res: EditResources;
  batch: EditBatch;
  /** Index of the batch (0-based) and how many there are, for progress. */
  index: number;
  count: number;
  /** The run's --seed plus the batch index. */
  seed: number;
  /** Options common to every method (already checked). */
  common: { layer?: number; targets?: string[]; /** --top-k: train the top loci's modules (lora); absent, loci do not choose lora's targets. */ topK?: number };
  /** The method's own options, parsed and checked. */
  options: O;
  log: (msg: string) => void;
}

/** One edit made: written as one bundle. */
export interface MadeEdit {
  adapter: LoraAdapter;
  /** The facts this bundle states (a subset of the batch for per-fact methods). */
  facts: EditFact[];
  /** The records hashed into data_sha256 (the facts' records for a per-fact method). */
  records: Rec[];
  /** Manifest `hyperparameters` (everything that changes the weights). */
  hyperparameters: Record<string, unknown>;
  /** Manifest `training` (outcome figures). */
  training: Record<string, unknown>;
  /** One line for stderr after the bundle is written. */
  summary: string;
  /**
   * Further files written into the bundle beside the PEFT files, by name
   * (content-addressed with it): AlphaEdit's key memory.
   */
  files?: Record<string, Uint8Array>;
}

export interface EditMethod<O = Record<string, unknown>> {
  /** The --method value and the manifest's `method`. */
  name: string;
  /** One paragraph for lora-train --help. */
  describe: string;
  /** The fact ops it accepts; another op is refused by name before any work. */
  ops: ReadonlyArray<'insert' | 'forget'>;
  /**
   * True when every edit it makes states one fact and stands alone (ROME):
   * measurements read each such bundle back by itself, not together with
   * the others of the run.
   */
  perFact?: boolean;
  /** Options it adds to lora-train, by flag name (kebab-case). */
  options: Record<string, MethodOption>;
  /** Turn the parsed flags (kebab-case keys) into the method's options; throw UsageError for a bad value. */
  parseOptions(flags: Record<string, unknown>): O;
  /** Checks that need the model (a layer out of range): UsageError. */
  check?(res: EditResources, common: EditCall<O>['common'], options: O): void;
  /**
   * Make the batch's edits. All or nothing: when any fact cannot be edited,
   * throw EditRefusedError and nothing of the batch is written.
   */
  edit(call: EditCall<O>): Promise<MadeEdit[]> | MadeEdit[];
}

/** A method could not make an edit: nothing is written (exit 1, a runtime failure, not bad input). */
export class EditRefusedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'EditRefusedError';
  }
}
