/**
 * The resources every tool shares, owned by the CLI runner so each is found,
 * loaded, worded and defaulted the same way in every tool:
 *
 * - the model (`--model DIR`, else the bundled fixture model): checked with
 *   one wording, loaded once, its weights' sha256 computed once;
 * - the registry (`--registry DIR`, else `$CATECHISM_REGISTRY`, else
 *   `~/.catechism/registry`);
 * - the fixture world's files as defaults (templates.json, train.txt,
 *   facts.ndjson, eval sets) — only when the model is a bundled fixture model,
 *   since another model knows nothing of that world.
 *
 * The model code (and with it the native addon) is imported only when a
 * model is asked for, so tools that never need one start fast.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { CausalLM } from '../models/causal-lm.js';
import type { Tokenizer } from '../models/loader.js';
import { fixturesDir, defaultModelDir } from '../fixtures/index.js';
import { defaultRegistryDir } from '../registry/registry.js';
import { UsageError } from '../records/errors.js';

/** A model directory found and checked (not loaded). */
export interface ModelDir {
  /** The directory (as given, or the bundled default's absolute path). */
  dir: string;
  /** --model as given; undefined for the bundled default. */
  given: string | undefined;
  /** The manifest's base_model.name: --model as given, else the default's path from the repository root (`fixtures/models/dense`). */
  name: string;
  /** The world it was trained on when it is a bundled fixture model, else null. */
  world: string | null;
}

export interface ToolModel extends ModelDir {
  model: CausalLM;
  /** Null only when loaded with `tokenizer: false`. */
  tokenizer: Tokenizer | null;
  /** sha256 of the weights (modelSha256), computed on first use and kept. */
  sha256(): string;
}

/**
 * Find and check a model directory. `fallback` (a base model recorded in a
 * bundle, say) is used when --model is not given and it is a model directory;
 * else the bundled fixture model.
 */
export function findModelDir(given: string | undefined, fallback?: string): ModelDir {
  if (given !== undefined) {
    if (!fs.existsSync(path.join(given, 'config.json'))) throw new UsageError(`--model ${given}: not a model directory (no config.json)`);
    return { dir: given, given, name: given, world: fixtureWorldOf(given) };
  }
  if (fallback !== undefined && fs.existsSync(path.join(fallback, 'config.json'))) {
    return { dir: fallback, given: undefined, name: fallback, world: fixtureWorldOf(fallback) };
  }
  let dir: string;
  try {
    dir = defaultModelDir();
  } catch (e) {
    throw new UsageError(`${(e as Error).message}`);
  }
  if (!fs.existsSync(path.join(dir, 'config.json'))) throw new UsageError(`the default fixture model is missing (${dir}); pass --model DIR`);
  return { dir, given: undefined, name: path.relative(path.dirname(fixturesDir()), dir).split(path.sep).join('/'), world: fixtureWorldOf(dir) };
}

/**
 * The world a model directory was trained on when it is one of the bundled
 * fixture models (under fixtures/models/): its training.json's corpus.world
 * (fixtures/world-b for dense-b), else fixtures/world. Null for any other
 * model.
 */
export function fixtureWorldOf(modelDir: string): string | null {
  let fx: string;
  try {
    fx = fixturesDir();
  } catch {
    return null;
  }
  const real = (p: string) => {
    try {
      return fs.realpathSync(p);
    } catch {
      return path.resolve(p);
    }
  };
  const models = real(path.join(fx, 'models'));
  const rel = path.relative(models, real(modelDir));
  if (rel === '' || rel.startsWith('..') || path.isAbsolute(rel)) return null;
  let world = path.join(fx, 'world');
  try {
    const t = JSON.parse(fs.readFileSync(path.join(modelDir, 'training.json'), 'utf8')) as { corpus?: { world?: unknown } };
    // recorded relative to the repository root (the fixtures directory's parent)
    if (typeof t.corpus?.world === 'string') world = path.resolve(path.dirname(fx), t.corpus.world);
  } catch {
    // no training record: the main world
  }
  return fs.existsSync(world) ? world : null;
}

/** The fixture world's files as defaults, for the model in use. */
export interface WorldDefaults {
  /** The world directory when the model is a bundled fixture model, else null. */
  readonly world: string | null;
  /** `name` (relative to the world, e.g. `eval/general.ndjson`) when the model is a fixture model and the file exists. */
  file(name: string): string | undefined;
  /**
   * The same for a file the run cannot do without: a UsageError naming
   * `flag` when there is none (another model, or a world without the file).
   */
  need(name: string, flag: string, what: string): string;
  /** Why `name` has no default (for a note naming `flag`), or null when it has one. */
  missing(name: string, flag: string, what: string): string | null;
}

export function worldDefaults(model: ModelDir): WorldDefaults {
  const file = (name: string): string | undefined => {
    if (model.world === null) return undefined;
    const f = path.join(model.world, name);
    return fs.existsSync(f) ? f : undefined;
  };
  const missing = (name: string, flag: string, what: string): string | null => {
    if (file(name) !== undefined) return null;
    return model.world === null
      ? `no ${what}: --model ${model.dir} is not a bundled fixture model, so the fixture world's ${path.basename(name)} is not used; give ${flag} FILE`
      : `no ${what}: the fixture world ${model.world} has no ${name}; give ${flag} FILE`;
  };
  return {
    world: model.world,
    file,
    missing,
    need(name, flag, what) {
      const f = file(name);
      if (f === undefined) throw new UsageError(missing(name, flag, what)!);
      return f;
    },
  };
}

/** Load a checked model directory (dynamic import: the native addon only when a model is needed). */
export async function loadToolModel(found: ModelDir, opts: { tokenizer?: boolean } = {}): Promise<ToolModel> {
  const { loadModel } = await import('../models/loader.js');
  const { model, tokenizer } = loadModel(found.dir, { tokenizer: opts.tokenizer !== false });
  const { modelSha256 } = await import('../edit/model-util.js');
  let sha: string | undefined;
  return {
    ...found,
    model,
    tokenizer,
    sha256() {
      if (sha === undefined) {
        try {
          sha = modelSha256(found.dir);
        } catch (e) {
          throw new UsageError(`--model ${found.dir}: cannot hash its weights (${(e as Error).message})`);
        }
      }
      return sha;
    },
  };
}

/** The registry: --registry, else $CATECHISM_REGISTRY, else ~/.catechism/registry (every tool the same). */
export function registryDir(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): { dir: string; from: 'flag' | 'env' | 'home' } {
  if (flag !== undefined && flag !== '') return { dir: flag, from: 'flag' };
  return { dir: defaultRegistryDir(env), from: env.CATECHISM_REGISTRY ? 'env' : 'home' };
}
