/**
 * lora-train as a library: records in, adapter bundles written, `adapter`
 * records out. A loop over batches of facts that calls the chosen edit
 * method (core's EDIT_METHODS) and writes each edit it makes through the one
 * bundle writer. The CLI (main.ts) is a thin layer over `trainEdits`; the
 * measuring harness is measure.ts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { InputError, UsageError } from '@catechism/core/records';
import type { InputRecord } from '@catechism/core/records';
import { loadModel, type CausalLM, type LoraAdapter, type Tokenizer } from '@catechism/core/models';
import type { AdapterRecord } from '@catechism/core/adapters';
import { findModelDir, worldDefaults, type WorldDefaults } from '@catechism/core/cli';
import {
  EDIT_METHODS, EditRefusedError, checkFact, dataSha256, editMethod, inputFacts, loadTemplateBank, memoryFileIn, modelSha256, readCorpusLines, readNdjson, replaceWeights,
  testProbes, writeEditBundle, type EditBatch, type EditFact, type EditMethod, type EditResources, type Rec,
} from '@catechism/core/edit';
import { Registry, RegistryError } from '@catechism/core/registry';
import { foldAdapters, loadParent } from '@catechism/core/merge';

export { EditRefusedError };

/** The registry ref whose AlphaEdit key memory a new batch preserves by default. */
export const LIVE_REF = 'live';

/** What a run of edits is told (the CLI's flags; scripts and tests build it directly). */
export interface TrainArgs {
  seed: number;
  out?: string;
  registry?: string;
  /** The edit method's name (EDIT_METHODS). */
  method: string;
  /** Facts per batch (0: all in one). */
  batch: number;
  layer?: number;
  targets?: string[];
  /** Train the top-k loci's modules (absent: loci do not choose the targets). */
  topK?: number;
  /** The method's own options by flag name (`rank`, `retain-weight`); one not given takes its declared default. */
  options?: Record<string, unknown>;
  createdAt?: string;
  /**
   * Train over this adapter (--over): a bundle directory, or with a registry
   * a ref, hash or adapter id. Its update is folded into the weights first, so
   * the edits are made on the model as it is served; the new adapter is a
   * delta on top of it (merge the two, e.g. `adapter-merge --into REF`).
   */
  over?: string;
}

export const DEFAULT_ARGS: Omit<TrainArgs, 'seed'> = { method: 'lora', batch: 0 };

/** The files that make the resources, beside the model (each defaults to the fixture world's when the model is a fixture model). */
export interface ResourceArgs {
  model?: string;
  templates?: string;
  retainCorpus?: string;
  knownFacts?: string;
  /** Training paraphrases from the templates (default true; false: probes only). */
  useTemplates?: boolean;
}

/** Loaded model plus the world-side resources the methods use. */
export type Resources = EditResources;

export interface TrainContext {
  log: (msg: string) => void;
}

/**
 * The resources around a loaded model: templates, retention corpus, known
 * facts — given files, else the fixture world's when the model is a bundled
 * fixture model (a note naming the flag otherwise).
 */
export function resourcesFrom(
  lm: { model: CausalLM; tokenizer: Tokenizer; name: string; sha256: string }, defaults: WorldDefaults, args: ResourceArgs, log: (m: string) => void = () => {},
): Resources {
  for (const [flag, f] of [['--templates', args.templates], ['--retain-corpus', args.retainCorpus], ['--known-facts', args.knownFacts]] as const) {
    if (f && !fs.existsSync(f)) throw new UsageError(`${flag} ${f}: no such file`);
  }
  const useTemplates = args.useTemplates ?? true;
  const pick = (given: string | undefined, name: string, flag: string, what: string): string | undefined => {
    if (given) return given;
    const f = defaults.file(name);
    if (f === undefined) log(defaults.missing(name, flag, what)!);
    return f;
  };
  const tfile = useTemplates ? pick(args.templates, 'templates.json', '--templates', 'training paraphrases (or --no-use-templates)') : undefined;
  const cfile = pick(args.retainCorpus, 'train.txt', '--retain-corpus', 'general text for retention');
  const kfile = pick(args.knownFacts, 'facts.ndjson', '--known-facts', 'known facts to keep');
  return {
    model: lm.model,
    tokenizer: lm.tokenizer,
    modelName: lm.name,
    modelSha: lm.sha256,
    templates: tfile ? loadTemplateBank(tfile) : null,
    corpus: cfile ? readCorpusLines(cfile, 50000) : [],
    known: kfile ? readNdjson(kfile) : [],
    useTemplates,
  };
}

/** Load the model (--model, else the bundled fixture model) and its resources, as the CLI does (for scripts and tests). */
export function loadResources(args: ResourceArgs, log?: (m: string) => void): Resources {
  const found = findModelDir(args.model);
  const { model, tokenizer } = loadModel(found.dir);
  return resourcesFrom({ model, tokenizer: tokenizer!, name: found.name, sha256: modelSha256(found.dir) }, worldDefaults(found), args, log);
}

function fail(rec: InputRecord, field: string | undefined, detail: string): never {
  throw new InputError(detail, { source: rec.source, record: rec.index, ...(field ? { field } : {}) });
}

/** Group facts into batches of `size` (0 = all) with their probes and loci. */
export function planBatches(inputs: InputRecord[], size: number): EditBatch[] {
  const facts = inputFacts(inputs);
  const seen = new Set(facts.map((x) => x.fact.id));
  for (const r of inputs) {
    const k = r.record.kind;
    if ((k === 'probe' || k === 'locus') && typeof r.record.fact_id === 'string' && !seen.has(r.record.fact_id) && r.record.role !== 'general') {
      // probes of facts not in the input are passed through untouched (another tool's business)
      continue;
    }
    if (k === 'probe' && r.record.role !== 'general' && r.record.split === 'train' && typeof r.record.target !== 'string') {
      fail(r, 'target', 'a train probe needs a target to train on');
    }
  }
  // no facts but `concept` records (--method leace): one batch of them
  const concepts = inputs.filter((r) => r.record.kind === 'concept').map((r) => r.record as Rec);
  if (facts.length === 0 && concepts.length > 0) return [{ facts: [], records: concepts, probes: [], loci: [] }];
  const n = size > 0 ? size : Math.max(1, facts.length);
  const out: EditBatch[] = [];
  for (let s = 0; s < facts.length; s += n) {
    const group = facts.slice(s, s + n);
    const ids = new Set(group.map((g) => g.fact.id));
    const records: Rec[] = [];
    const probes: Rec[] = [];
    const loci: Rec[] = [];
    for (const r of inputs) {
      const rec = r.record as Rec;
      if (rec.kind === 'fact' && ids.has(rec.id as string)) records.push(rec);
      else if ((rec.kind === 'probe' || rec.kind === 'locus') && ids.has(rec.fact_id as string)) {
        records.push(rec);
        (rec.kind === 'probe' ? probes : loci).push(rec);
      }
    }
    out.push({ facts: group.map((g) => g.fact), records, probes, loci });
  }
  return out;
}

/**
 * Where the bundles go, checked before any training: exactly one of --out
 * and --registry, and an --out that exists must be a directory (a file there
 * would otherwise fail only after minutes of training).
 */
export function checkDestination(out: string | undefined, registry: string | undefined): void {
  if (out && registry) throw new UsageError('--out and --registry exclude each other: give one place for the adapter bundles');
  if (!out && !registry) throw new UsageError('give --out DIR or --registry DIR (or set $CATECHISM_REGISTRY) for the adapter bundles');
  if (out && fs.existsSync(out) && !fs.statSync(out).isDirectory()) throw new UsageError(`--out ${out}: exists and is not a directory`);
}

/** The method registered under `name`; a usage error listing the methods otherwise. */
export function methodNamed(name: string): EditMethod<unknown> {
  const m = editMethod(name);
  if (!m) throw new UsageError(`--method ${name}: no such edit method (choose one of ${EDIT_METHODS.map((x) => x.name).join(', ')})`);
  return m;
}

/**
 * A method's options from flags by name: a flag not given takes its declared
 * default; declared integer/min bounds are checked here, the rest by the
 * method's parseOptions (usage errors naming the flag).
 */
export function methodOptions(method: EditMethod<unknown>, flags: Record<string, unknown> = {}): unknown {
  const unknown = Object.keys(flags).filter((k) => !(k in method.options));
  if (unknown.length) throw new UsageError(`--${unknown[0]}: not an option of --method ${method.name}`);
  const full: Record<string, unknown> = {};
  for (const [name, o] of Object.entries(method.options)) {
    const v = flags[name] ?? o.default;
    if (v !== undefined && o.type === 'number') {
      const n = v as number;
      if (typeof n !== 'number' || Number.isNaN(n)) throw new UsageError(`--${name}: expected a number, got ${String(v)}`);
      const min = o.min ?? -Infinity;
      const max = o.max ?? Infinity;
      if ((o.integer && !Number.isInteger(n)) || n < min || n > max) {
        const range = `${Number.isFinite(min) ? ` ≥ ${min}` : ''}${Number.isFinite(min) && Number.isFinite(max) ? ' and' : ''}${Number.isFinite(max) ? ` ≤ ${max}` : ''}`;
        throw new UsageError(`--${name}: expected ${o.integer ? 'an integer' : 'a number'}${range}, got ${n}`);
      }
    }
    if (v !== undefined) full[name] = v;
  }
  return method.parseOptions(full);
}

/** --layer must name one of the model's layers; the method may refuse more (ROME: not the last one). */
export function checkLayer(model: CausalLM, layer: number | undefined): void {
  if (layer === undefined) return;
  const n = model.config.layers;
  if (!(Number.isInteger(layer) && layer >= 0 && layer < n)) {
    throw new UsageError(`--layer ${layer}: the model has ${n} layers (0–${n - 1})`);
  }
}

/** Facts whose op the method does not edit: refused (exit 2) by fact id, before any work. */
function checkOps(method: EditMethod<unknown>, batches: readonly EditBatch[], inputs: readonly InputRecord[]): void {
  for (const b of batches) {
    for (const f of b.facts) {
      if (method.ops.includes(f.op)) continue;
      const other = EDIT_METHODS.filter((m) => m.ops.includes(f.op)).map((m) => `--method ${m.name}`);
      const at = inputs.find((r) => r.record.kind === 'fact' && r.record.id === f.id);
      throw new InputError(
        `fact ${f.id}: --method ${method.name} ${method.ops.length ? `edits ${method.ops.map((o) => `"${o}"`).join(' and ')} facts only, not "${f.op}"` : 'reads no facts (it learns from concept records)'}${other.length ? `; use ${other.join(' or ')}` : ''}`,
        { ...(at ? { source: at.source, record: at.index } : {}), field: 'op' },
      );
    }
  }
}

/**
 * Into a registry, a method learns what the live ref already holds, unless
 * told otherwise: AlphaEdit preserves live's key memory (the file its bundle
 * carries; --preserved FILE overrides), so the new batch leaves every edit
 * already in live where it is; patcher avoids the neurons live's patches
 * repurpose (--avoid-neurons-of DIR overrides), so the two can be merged.
 */
async function withRegistryMemory(method: EditMethod<unknown>, args: TrainArgs, ctx: TrainContext): Promise<Record<string, unknown> | undefined> {
  const flags = args.options;
  const wants = (flag: string) => flag in method.options && flags?.[flag] === undefined;
  if (!args.registry || !(wants('preserved') || wants('avoid-neurons-of'))) return flags;
  const reg = new Registry(args.registry);
  if (!fs.existsSync(path.join(reg.root, 'registry.json'))) return flags;
  const head = await reg.head(LIVE_REF).catch(() => null);
  if (!head) return flags;
  const live = `ref ${LIVE_REF} (${head.adapter_id} v${head.adapter_version})`;
  if (wants('avoid-neurons-of')) {
    ctx.log(`${method.name}: avoiding the neurons patched in ${live}`);
    return { ...flags, 'avoid-neurons-of': reg.objectPath(head.bundle) };
  }
  const file = memoryFileIn(reg.objectPath(head.bundle));
  if (!fs.existsSync(file)) {
    ctx.log(`${method.name}: ${live} carries no key memory: no earlier edit is preserved`);
    return flags;
  }
  ctx.log(`${method.name}: preserving the edits of ${live}: its key memory ${file}`);
  return { ...flags, preserved: file };
}

/** What --over names: the bundle the new edits are made on top of. */
export interface OverBundle {
  id: string;
  version: number;
  sha256: string;
  dir: string;
  adapter: LoraAdapter;
  /** The facts it carries (its manifest's). */
  facts: EditFact[];
}

/**
 * Find the bundle --over names: a bundle directory, else (with a registry) a
 * ref, `REF@N`, hash prefix or adapter id. In a registry with no ref yet, or
 * a ref with no history (the first batch ever into `live`), a ref name is
 * null: there is nothing to train over. Any other name that matches nothing
 * is a usage error, and a bundle made for another base model is refused.
 */
export async function findOver(over: string, registry: string | undefined, modelSha: string): Promise<OverBundle | null> {
  let dir = over;
  let sha: string | undefined;
  if (!(fs.existsSync(over) && fs.statSync(over).isDirectory())) {
    if (!registry) throw new UsageError(`--over ${over}: no such bundle directory (a ref, hash or adapter id needs --registry DIR)`);
    const reg = new Registry(registry);
    const refs = fs.existsSync(path.join(reg.root, 'registry.json')) ? await reg.refs() : [];
    try {
      sha = await reg.resolve(over);
    } catch (e) {
      if (!(e instanceof RegistryError)) throw e;
      // the first batch of a new registry, or a ref with no history yet: nothing to train over
      if (e.code === 'E_NOT_FOUND' && (refs.length === 0 || refs.includes(over))) return null;
      throw new UsageError(`--over ${over}: ${e.message}${refs.length ? ` (refs: ${refs.join(', ')})` : ''}`);
    }
    dir = reg.objectPath(sha);
  }
  const b = await loadParent(dir, sha);
  if (b.manifest.base_model.sha256 !== modelSha) {
    throw new UsageError(`--over ${over}: bundle ${b.manifest.id} v${b.manifest.version} is an adapter of base model ${b.manifest.base_model.name} (${b.manifest.base_model.sha256.slice(0, 12)}…), not of the model loaded (${modelSha.slice(0, 12)}…)`);
  }
  return { id: b.manifest.id, version: b.manifest.version, sha256: b.sha256, dir, adapter: b.adapter, facts: b.manifest.facts.map((f) => checkFact(f)) };
}

/**
 * Fold `over`'s update into the model's weights (W += B·A, as
 * `adapter-merge export` does); returns the function that puts the base
 * weights back. A bundle that trains a tied output head cannot be folded
 * into a model that reads its head from the embeddings: refused.
 */
export function foldOver(model: CausalLM, over: OverBundle): () => void {
  const { weights, untied } = foldAdapters(model, [{ adapter: over.adapter }]);
  if (untied) throw new UsageError(`--over: bundle ${over.id} v${over.version} changes the tied output head; it cannot be folded into this model's weights to train over`);
  return replaceWeights(model, weights);
}

/** Make and write the edits of every batch; returns the adapter records in batch order. */
export async function trainEdits(inputs: InputRecord[], args: TrainArgs, res: Resources, ctx: TrainContext): Promise<AdapterRecord[]> {
  const over = args.over === undefined ? null : await findOver(args.over, args.registry, res.modelSha);
  if (args.over !== undefined && !over) ctx.log(`--over ${args.over}: nothing promoted there yet; training on the base model`);
  if (!over) return trainEditsOn(inputs, args, res, ctx, null);
  ctx.log(`training over ${over.id} v${over.version} (${over.sha256.slice(0, 12)}): its update is folded into the weights; the new adapters are deltas on top of it`);
  const baseWeights = new Map(res.model.weights);
  const restore = foldOver(res.model, over);
  try {
    return await trainEditsOn(inputs, args, { ...res, baseWeights, overFacts: over.facts }, ctx, over);
  } finally {
    restore();
  }
}

async function trainEditsOn(inputs: InputRecord[], args: TrainArgs, res: Resources, ctx: TrainContext, over: OverBundle | null): Promise<AdapterRecord[]> {
  const method = methodNamed(args.method);
  const options = methodOptions(method, await withRegistryMemory(method, args, ctx));
  checkDestination(args.out, args.registry);
  checkLayer(res.model, args.layer);
  const common = { ...(args.layer !== undefined ? { layer: args.layer } : {}), ...(args.targets ? { targets: args.targets } : {}), ...(args.topK !== undefined ? { topK: args.topK } : {}) };
  method.check?.(res, common, options);
  const batches = planBatches(inputs, args.batch);
  checkOps(method, batches, inputs);
  if (batches.length === 0) ctx.log('no fact records in the input: nothing to train');
  const out: AdapterRecord[] = [];
  const base = { name: res.modelName, sha256: res.modelSha };
  for (const [index, batch] of batches.entries()) {
    const seed = args.seed + index;
    const made = await method.edit({ res, batch, index, count: batches.length, seed, common, options, log: ctx.log });
    const tests = testProbes(batch);
    const probesForManifest = tests.length > 0 ? tests : batch.probes.filter((p) => p.role === 'edit');
    for (const m of made) {
      const ids = new Set(m.facts.map((f) => f.id));
      const rec = await writeEditBundle(
        {
          adapter: m.adapter, method: method.name, baseModel: base, facts: m.facts, probes: probesForManifest.filter((p) => ids.has(p.fact_id as string)),
          dataSha256: dataSha256(m.records), seed, training: m.training,
          // what the delta was trained on top of: part of the bundle id, and what --into must merge it with
          hyperparameters: over ? { ...m.hyperparameters, trained_over: { id: over.id, version: over.version, sha256: over.sha256 } } : m.hyperparameters,
          ...(args.createdAt ? { createdAt: args.createdAt } : {}),
          ...(m.files ? { files: m.files } : {}),
        },
        { out: args.out, registry: args.registry },
      );
      ctx.log(`${m.summary} → ${rec.path}`);
      out.push(rec);
    }
  }
  return out;
}
