/**
 * config.json of a Hugging Face model directory, normalised to one shape for
 * the three architecture families this package runs.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export class ModelLoadError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ModelLoadError';
  }
}

export type ArchFamily = 'gpt2' | 'llama' | 'mixtral';

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

const FAMILY: Record<string, ArchFamily> = {
  gpt2: 'gpt2',
  llama: 'llama',
  qwen2: 'llama',
  mistral: 'llama',
  mixtral: 'mixtral',
};

type Json = Record<string, unknown>;

function int(cfg: Json, file: string, ...keys: string[]): number {
  for (const k of keys) {
    const v = cfg[k];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) {
      throw new ModelLoadError(`${file}: "${k}" must be a positive integer, got ${JSON.stringify(v)}`);
    }
    return v;
  }
  throw new ModelLoadError(`${file}: missing "${keys[0]}"`);
}

function optInt(cfg: Json, key: string): number | null {
  const v = cfg[key];
  if (typeof v === 'number' && Number.isInteger(v)) return v;
  if (Array.isArray(v) && typeof v[0] === 'number') return v[0] as number; // some configs list several eos ids
  return null;
}

function num(cfg: Json, key: string, dflt: number, file: string): number {
  const v = cfg[key];
  if (v === undefined || v === null) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
    throw new ModelLoadError(`${file}: "${key}" must be a positive number, got ${JSON.stringify(v)}`);
  }
  return v;
}

export function parseConfig(raw: unknown, file = 'config.json'): ModelConfig {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new ModelLoadError(`${file}: must be a JSON object`);
  const cfg = raw as Json;
  const modelType = cfg.model_type;
  if (typeof modelType !== 'string') throw new ModelLoadError(`${file}: missing "model_type"`);
  const family = FAMILY[modelType];
  if (!family) {
    throw new ModelLoadError(`${file}: unknown model_type "${modelType}" (supported: ${Object.keys(FAMILY).join(', ')})`);
  }
  const common = {
    modelType,
    family,
    vocabSize: int(cfg, file, 'vocab_size'),
    eosTokenId: optInt(cfg, 'eos_token_id'),
    eosTokenIds: (Array.isArray(cfg.eos_token_id) ? cfg.eos_token_id : [cfg.eos_token_id]).filter(
      (x): x is number => typeof x === 'number' && Number.isInteger(x),
    ),
    padTokenId: optInt(cfg, 'pad_token_id'),
    bosTokenId: optInt(cfg, 'bos_token_id'),
  };
  if (family === 'gpt2') {
    const hidden = int(cfg, file, 'n_embd', 'hidden_size');
    const heads = int(cfg, file, 'n_head', 'num_attention_heads');
    if (hidden % heads !== 0) throw new ModelLoadError(`${file}: n_embd ${hidden} is not divisible by n_head ${heads}`);
    if (cfg.scale_attn_by_inverse_layer_idx === true || cfg.reorder_and_upcast_attn === true || cfg.scale_attn_weights === false) {
      throw new ModelLoadError(`${file}: scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn / scale_attn_weights=false are not supported`);
    }
    const act = cfg.activation_function ?? 'gelu_new';
    if (act !== 'gelu_new' && act !== 'gelu_pytorch_tanh') {
      throw new ModelLoadError(`${file}: activation_function "${String(act)}" is not supported (gelu_new only)`);
    }
    return {
      ...common,
      hidden,
      layers: int(cfg, file, 'n_layer', 'num_hidden_layers'),
      heads,
      kvHeads: heads,
      headDim: hidden / heads,
      intermediate: typeof cfg.n_inner === 'number' ? int(cfg, file, 'n_inner') : 4 * hidden,
      normEps: num(cfg, 'layer_norm_epsilon', 1e-5, file),
      maxPositions: int(cfg, file, 'n_positions', 'n_ctx'),
      ropeTheta: 0,
      ropeScaling: null,
      tieEmbeddings: cfg.tie_word_embeddings !== false,
      qkvBias: true,
      oBias: true,
      mlpBias: true,
      experts: 0,
      expertsPerTok: 0,
      slidingWindow: null,
    };
  }
  const hidden = int(cfg, file, 'hidden_size');
  const heads = int(cfg, file, 'num_attention_heads');
  const kvHeads = typeof cfg.num_key_value_heads === 'number' ? int(cfg, file, 'num_key_value_heads') : heads;
  if (heads % kvHeads !== 0) {
    throw new ModelLoadError(`${file}: num_attention_heads ${heads} is not a multiple of num_key_value_heads ${kvHeads}`);
  }
  const headDim = typeof cfg.head_dim === 'number' ? int(cfg, file, 'head_dim') : hidden / heads;
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    throw new ModelLoadError(`${file}: head dimension ${headDim} must be an even integer for RoPE`);
  }
  const act = cfg.hidden_act ?? 'silu';
  if (act !== 'silu') throw new ModelLoadError(`${file}: hidden_act "${String(act)}" is not supported (silu only)`);
  let ropeScaling: Llama3RopeScaling | null = null;
  if (cfg.rope_scaling !== undefined && cfg.rope_scaling !== null) {
    const rs = cfg.rope_scaling as Json;
    const kind = rs.rope_type ?? rs.type;
    if (kind !== 'llama3') throw new ModelLoadError(`${file}: rope_scaling of type ${JSON.stringify(kind)} is not supported (llama3 only)`);
    const where = `${file} rope_scaling`;
    ropeScaling = {
      factor: num(rs, 'factor', NaN, where),
      lowFreqFactor: num(rs, 'low_freq_factor', NaN, where),
      highFreqFactor: num(rs, 'high_freq_factor', NaN, where),
      originalMaxPositions: int(rs, where, 'original_max_position_embeddings'),
    };
    if (Object.values(ropeScaling).some((v) => Number.isNaN(v)) || ropeScaling.highFreqFactor <= ropeScaling.lowFreqFactor) {
      throw new ModelLoadError(`${where}: needs factor, low_freq_factor < high_freq_factor and original_max_position_embeddings`);
    }
  }
  const attnBias = cfg.attention_bias === true;
  const out: ModelConfig = {
    ...common,
    hidden,
    layers: int(cfg, file, 'num_hidden_layers'),
    heads,
    kvHeads,
    headDim,
    intermediate: int(cfg, file, 'intermediate_size'),
    normEps: num(cfg, 'rms_norm_eps', 1e-6, file),
    maxPositions: typeof cfg.max_position_embeddings === 'number' ? int(cfg, file, 'max_position_embeddings') : 0,
    ropeTheta: num(cfg, 'rope_theta', 10000, file),
    ropeScaling,
    tieEmbeddings: cfg.tie_word_embeddings === true,
    qkvBias: modelType === 'qwen2' || attnBias,
    oBias: modelType !== 'qwen2' && attnBias,
    mlpBias: cfg.mlp_bias === true,
    experts: 0,
    expertsPerTok: 0,
    slidingWindow:
      typeof cfg.sliding_window === 'number' && (modelType !== 'qwen2' || cfg.use_sliding_window === true) ? cfg.sliding_window : null,
  };
  if (family === 'mixtral') {
    out.experts = int(cfg, file, 'num_local_experts');
    out.expertsPerTok = int(cfg, file, 'num_experts_per_tok');
    if (out.expertsPerTok > out.experts) {
      throw new ModelLoadError(`${file}: num_experts_per_tok ${out.expertsPerTok} exceeds num_local_experts ${out.experts}`);
    }
  }
  return out;
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
 * Expected shape of every weight, by checkpoint name. GPT-2 names are given
 * with the `transformer.` prefix; checkpoints saved from GPT2Model omit it
 * and the loader accepts both.
 */
export function expectedWeights(c: ModelConfig): Map<string, number[]> {
  const s = new Map<string, number[]>();
  const H = c.hidden;
  const V = c.vocabSize;
  if (c.family === 'gpt2') {
    s.set('transformer.wte.weight', [V, H]);
    s.set('transformer.wpe.weight', [c.maxPositions, H]);
    s.set('transformer.ln_f.weight', [H]);
    s.set('transformer.ln_f.bias', [H]);
    if (!c.tieEmbeddings) s.set('lm_head.weight', [V, H]);
    for (let i = 0; i < c.layers; i++) {
      const p = `transformer.h.${i}`;
      for (const ln of ['ln_1', 'ln_2']) {
        s.set(`${p}.${ln}.weight`, [H]);
        s.set(`${p}.${ln}.bias`, [H]);
      }
      // Conv1D: weight [in, out]
      s.set(`${p}.attn.c_attn.weight`, [H, 3 * H]);
      s.set(`${p}.attn.c_attn.bias`, [3 * H]);
      s.set(`${p}.attn.c_proj.weight`, [H, H]);
      s.set(`${p}.attn.c_proj.bias`, [H]);
      s.set(`${p}.mlp.c_fc.weight`, [H, c.intermediate]);
      s.set(`${p}.mlp.c_fc.bias`, [c.intermediate]);
      s.set(`${p}.mlp.c_proj.weight`, [c.intermediate, H]);
      s.set(`${p}.mlp.c_proj.bias`, [H]);
    }
    return s;
  }
  const q = c.heads * c.headDim;
  const kv = c.kvHeads * c.headDim;
  const I = c.intermediate;
  s.set('model.embed_tokens.weight', [V, H]);
  s.set('model.norm.weight', [H]);
  if (!c.tieEmbeddings) s.set('lm_head.weight', [V, H]);
  for (let i = 0; i < c.layers; i++) {
    const p = `model.layers.${i}`;
    s.set(`${p}.input_layernorm.weight`, [H]);
    s.set(`${p}.post_attention_layernorm.weight`, [H]);
    s.set(`${p}.self_attn.q_proj.weight`, [q, H]);
    s.set(`${p}.self_attn.k_proj.weight`, [kv, H]);
    s.set(`${p}.self_attn.v_proj.weight`, [kv, H]);
    s.set(`${p}.self_attn.o_proj.weight`, [H, q]);
    if (c.qkvBias) {
      s.set(`${p}.self_attn.q_proj.bias`, [q]);
      s.set(`${p}.self_attn.k_proj.bias`, [kv]);
      s.set(`${p}.self_attn.v_proj.bias`, [kv]);
    }
    if (c.oBias) s.set(`${p}.self_attn.o_proj.bias`, [H]);
    if (c.family === 'mixtral') {
      s.set(`${p}.block_sparse_moe.gate.weight`, [c.experts, H]);
      for (let e = 0; e < c.experts; e++) {
        const x = `${p}.block_sparse_moe.experts.${e}`;
        s.set(`${x}.w1.weight`, [I, H]);
        s.set(`${x}.w3.weight`, [I, H]);
        s.set(`${x}.w2.weight`, [H, I]);
      }
    } else {
      s.set(`${p}.mlp.gate_proj.weight`, [I, H]);
      s.set(`${p}.mlp.up_proj.weight`, [I, H]);
      s.set(`${p}.mlp.down_proj.weight`, [H, I]);
      if (c.mlpBias) {
        s.set(`${p}.mlp.gate_proj.bias`, [I]);
        s.set(`${p}.mlp.up_proj.bias`, [I]);
        s.set(`${p}.mlp.down_proj.bias`, [H]);
      }
    }
  }
  return s;
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
