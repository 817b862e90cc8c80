/**
 * The Llama family: RMSNorm, RoPE (optionally Llama 3.1-scaled), separate
 * q/k/v projections with grouped-query attention, SwiGLU MLP
 * (`gate_proj`, `up_proj` → `down_proj`), Linear weights [out, in].
 *
 * Variants with the same layout: qwen2 (bias on q/k/v, sliding window only
 * with use_sliding_window) and mistral (sliding_window). Mixtral reuses the
 * config reader and weight list with sparse-MoE layers (./mixtral.ts).
 */
import type { Llama3RopeScaling, ModelConfig } from '../config.js';
import {
  ModelLoadError, defineArch, int, withoutType, type ArchDescription, num, swiGluKeys, type CommonConfig, type Json, type LayerModules,
} from './common.js';

/** Attention and norm names of `model.layers.{i}` (shared with Mixtral). */
export function llamaLayer(i: number, mlp: Pick<LayerModules, 'mlp' | 'moe'>): LayerModules {
  const p = `model.layers.${i}`;
  return {
    attnNorm: `${p}.input_layernorm`,
    mlpNorm: `${p}.post_attention_layernorm`,
    qkv: { q: `${p}.self_attn.q_proj`, k: `${p}.self_attn.k_proj`, v: `${p}.self_attn.v_proj` },
    attnOut: `${p}.self_attn.o_proj`,
    ...mlp,
  };
}

function layer(i: number): LayerModules {
  const p = `model.layers.${i}.mlp`;
  return llamaLayer(i, { mlp: { in: [`${p}.gate_proj`, `${p}.up_proj`], out: `${p}.down_proj` }, moe: null });
}

/** config.json of a Llama-shaped model (llama, qwen2, mistral, and mixtral before its expert keys). */
export function parseLlamaConfig(cfg: Json, file: string, common: CommonConfig, family: ModelConfig['family']): ModelConfig {
  const modelType = common.modelType;
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
  return {
    modelType,
    family,
    ...withoutType(common),
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
}

/** Weights of a Llama-shaped model whose layers are named by `layerOf` (dense or sparse MLPs). */
export function llamaWeights(c: ModelConfig, layerOf: (i: number) => LayerModules): Map<string, number[]> {
  const s = new Map<string, number[]>();
  const H = c.hidden;
  const q = c.heads * c.headDim;
  const kv = c.kvHeads * c.headDim;
  const I = c.intermediate;
  s.set('model.embed_tokens.weight', [c.vocabSize, H]);
  s.set('model.norm.weight', [H]);
  if (!c.tieEmbeddings) s.set('lm_head.weight', [c.vocabSize, H]);
  for (let i = 0; i < c.layers; i++) {
    const L = layerOf(i);
    const a = L.qkv as { q: string; k: string; v: string };
    s.set(`${L.attnNorm}.weight`, [H]);
    s.set(`${L.mlpNorm}.weight`, [H]);
    s.set(`${a.q}.weight`, [q, H]);
    s.set(`${a.k}.weight`, [kv, H]);
    s.set(`${a.v}.weight`, [kv, H]);
    s.set(`${L.attnOut}.weight`, [H, q]);
    if (c.qkvBias) {
      s.set(`${a.q}.bias`, [q]);
      s.set(`${a.k}.bias`, [kv]);
      s.set(`${a.v}.bias`, [kv]);
    }
    if (c.oBias) s.set(`${L.attnOut}.bias`, [H]);
    if (L.moe) {
      s.set(`${L.moe.router}.weight`, [c.experts, H]);
      for (let e = 0; e < c.experts; e++) {
        const x = L.moe.expert(e);
        for (const m of x.in) s.set(`${m}.weight`, [I, H]);
        s.set(`${x.out}.weight`, [H, I]);
      }
    } else if (L.mlp) {
      for (const m of L.mlp.in) s.set(`${m}.weight`, [I, H]);
      s.set(`${L.mlp.out}.weight`, [H, I]);
      if (c.mlpBias) {
        for (const m of L.mlp.in) s.set(`${m}.bias`, [I]);
        s.set(`${L.mlp.out}.bias`, [H]);
      }
    }
  }
  return s;
}

/** The token embedding, final norm and compute shared by every Llama-shaped family. */
export const llamaShape = {
  tokenEmbedding: 'model.embed_tokens',
  positionEmbedding: null,
  finalNorm: 'model.norm',
  normKind: 'rmsnorm',
  fanInFanOut: false,
  mlpKeys: swiGluKeys,
} as const;

export const llama: ArchDescription<'llama'> = defineArch({
  ...llamaShape,
  family: 'llama',
  modelTypes: ['llama', 'qwen2', 'mistral'],
  layer,
  parseConfig: (cfg, file, common) => parseLlamaConfig(cfg, file, common, 'llama'),
  expectedWeights: (c) => llamaWeights(c, layer),
});
