/**
 * config.json of a Hugging Face model directory, normalised to one shape for
 * every architecture family this package runs (each family reads its own
 * keys: ./arch/).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ModelLoadError, int, optInt, type Json } from './arch/common.js';
import { archForModelType, archOf, supportedModelTypes, type ArchFamily } from './arch/index.js';

export { ModelLoadError };
export type { ArchFamily };

export interface ModelConfig {
  /** config.json's model_type (gpt2, llama, qwen2, mistral, mixtral). */
  modelType: string;
  family: ArchFamily;
  vocabSize: number;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  /** MLP inner width (gpt2: 4·hidden unless n_inner). */
  intermediate: number;
  normEps: number;
  /** gpt2 learned positions; llama-family max_position_embeddings (informational). */
  maxPositions: number;
  ropeTheta: number;
  /** Llama 3.1-style rope_scaling (rope_type "llama3"), or null. */
  ropeScaling: Llama3RopeScaling | null;
  tieEmbeddings: boolean;
  /** Bias on q/k/v projections (qwen2 always; llama when attention_bias). */
  qkvBias: boolean;
  /** Bias on the attention output projection (llama attention_bias). */
  oBias: boolean;
  /** Bias on the MLP projections (llama mlp_bias). */
  mlpBias: boolean;
  experts: number;
  expertsPerTok: number;
  /** Sliding-window attention span (mistral/mixtral sliding_window; qwen2 with use_sliding_window), or null. */
  slidingWindow: number | null;
  eosTokenId: number | null;
  /** Every end-of-sequence id (Llama 3 configs list several). */
  eosTokenIds: number[];
  padTokenId: number | null;
  bosTokenId: number | null;
}

export interface Llama3RopeScaling {
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositions: number;
}

export function parseConfig(raw: unknown, file = 'config.json'): ModelConfig {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new ModelLoadError(`${file}: must be a JSON object`);
  const cfg = raw as Json;
  const modelType = cfg.model_type;
  if (typeof modelType !== 'string') throw new ModelLoadError(`${file}: missing "model_type"`);
  const arch = archForModelType(modelType);
  if (!arch) {
    throw new ModelLoadError(`${file}: unknown model_type "${modelType}" (supported: ${supportedModelTypes().join(', ')})`);
  }
  return arch.parseConfig(cfg, file, {
    modelType,
    vocabSize: int(cfg, file, 'vocab_size'),
    eosTokenId: optInt(cfg, 'eos_token_id'),
    eosTokenIds: (Array.isArray(cfg.eos_token_id) ? cfg.eos_token_id : [cfg.eos_token_id]).filter(
      (x): x is number => typeof x === 'number' && Number.isInteger(x),
    ),
    padTokenId: optInt(cfg, 'pad_token_id'),
    bosTokenId: optInt(cfg, 'bos_token_id'),
  });
}

export function readConfig(dir: string): ModelConfig {
  const file = path.join(dir, 'config.json');
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new ModelLoadError(`model directory ${dir} does not exist`);
  if (!fs.existsSync(file)) throw new ModelLoadError(`model directory ${dir} has no config.json`);
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf-8'));
  } catch (e) {
    throw new ModelLoadError(`${file}: not valid JSON (${(e as Error).message})`);
  }
  return parseConfig(raw, file);
}

/**
 * Expected shape of every weight, by canonical checkpoint name (the family's
 * description decides the names; GPT-2's carry the `transformer.` prefix).
 */
export function expectedWeights(c: ModelConfig): Map<string, number[]> {
  return archOf(c).expectedWeights(c);
}

/**
 * RoPE inverse frequencies θ^(−2j/d), j < d/2, with Llama 3.1 scaling applied
 * when configured: wavelengths longer than original/low_freq_factor are
 * divided by `factor`, shorter than original/high_freq_factor kept, and the
 * band between interpolated.
 */
export function ropeInvFreq(c: ModelConfig): Float64Array {
  const d = c.headDim;
  const inv = new Float64Array(d / 2);
  for (let j = 0; j < d / 2; j++) inv[j] = 1 / Math.pow(c.ropeTheta, (2 * j) / d);
  const rs = c.ropeScaling;
  if (!rs) return inv;
  const lowWav = rs.originalMaxPositions / rs.lowFreqFactor;
  const highWav = rs.originalMaxPositions / rs.highFreqFactor;
  for (let j = 0; j < inv.length; j++) {
    const wav = (2 * Math.PI) / inv[j];
    if (wav > lowWav) inv[j] /= rs.factor;
    else if (wav >= highWav) {
      const smooth = (rs.originalMaxPositions / wav - rs.lowFreqFactor) / (rs.highFreqFactor - rs.lowFreqFactor);
      inv[j] = ((1 - smooth) * inv[j]) / rs.factor + smooth * inv[j];
    }
  }
  return inv;
}
