/**
 * Loading a Hugging Face model directory: config.json, weights
 * (model.safetensors or shards + index), tokenizer.json.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { fromData, type Tensor } from '../tensor/index.js';
import { ModelLoadError, expectedWeights, readConfig } from './config.js';
import { Checkpoint, SafetensorsError } from './safetensors.js';
import { CausalLM } from './causal-lm.js';
import { archOf } from './arch/index.js';

/** Text ↔ token ids, from tokenizer.json (via @huggingface/tokenizers). */
export class Tokenizer {
  private constructor(private readonly tok: HfTokenizer, readonly file: string) {}

  static load(dir: string): Tokenizer {
    const file = path.join(dir, 'tokenizer.json');
    if (!fs.existsSync(file)) throw new ModelLoadError(`model directory ${dir} has no tokenizer.json`);
    let json: unknown;
    let cfg: unknown = {};
    try {
      json = JSON.parse(fs.readFileSync(file, 'utf-8'));
    } catch (e) {
      throw new ModelLoadError(`${file}: not valid JSON (${(e as Error).message})`);
    }
    const cfgFile = path.join(dir, 'tokenizer_config.json');
    if (fs.existsSync(cfgFile)) {
      try {
        cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf-8'));
      } catch (e) {
        throw new ModelLoadError(`${cfgFile}: not valid JSON (${(e as Error).message})`);
      }
    }
    try {
      return new Tokenizer(new HfTokenizer(json as object, cfg as object), file);
    } catch (e) {
      throw new ModelLoadError(`${file}: cannot build the tokenizer (${(e as Error).message})`);
    }
  }

  /**
   * Token ids of `text`. As in Hugging Face, special tokens (e.g. Llama's
   * BOS) are added by the tokenizer's post-processor unless
   * `addSpecialTokens: false` — pass that for continuations.
   */
  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    return this.tok.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true }).ids;
  }

  decode(ids: readonly number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    return this.tok.decode(ids.slice(), { skip_special_tokens: opts.skipSpecialTokens ?? false });
  }

  tokenToId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.tok.id_to_token(id);
  }
}

export interface LoadedModel {
  model: CausalLM;
  tokenizer: Tokenizer | null;
  dir: string;
}

/**
 * Load a model directory. Every weight the config implies must be present
 * with the right shape; extra tensors (e.g. GPT-2's attn.bias buffers) are
 * ignored. Half-precision weights are converted to float32; float32 weights
 * are used in place where aligned.
 */
export function loadModel(dir: string, opts: { tokenizer?: boolean } = {}): LoadedModel {
  const config = readConfig(dir);
  let ck: Checkpoint;
  try {
    ck = Checkpoint.open(dir);
  } catch (e) {
    if (e instanceof SafetensorsError) throw new ModelLoadError(e.message);
    throw e;
  }
  const weights = new Map<string, Tensor>();
  const arch = archOf(config);
  for (const [name, shape] of expectedWeights(config)) {
    // the family may know other spellings (GPT-2 saved from GPT2Model has no `transformer.` prefix)
    const names = arch.checkpointNames(name);
    const src = names.find((n) => ck.has(n)) ?? names[names.length - 1];
    const info = ck.info(src);
    if (!info) throw new ModelLoadError(`model ${dir}: tensor '${name}' is missing from the checkpoint`);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new ModelLoadError(
        `model ${dir}: tensor '${src}' has shape [${info.shape.join(', ')}] but config.json implies [${shape.join(', ')}]`,
      );
    }
    let data: Float32Array;
    try {
      data = ck.float32(src);
    } catch (e) {
      if (e instanceof SafetensorsError) throw new ModelLoadError(e.message);
      throw e;
    }
    weights.set(name, fromData(data, shape));
  }
  const tokenizer = opts.tokenizer === false ? null : Tokenizer.load(dir);
  return { model: new CausalLM(config, weights), tokenizer, dir };
}
