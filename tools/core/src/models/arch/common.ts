/**
 * What every architecture description provides (see ./index.ts), the
 * config.json readers they share, and the compute pieces more than one
 * family uses (LayerNorm, RMSNorm, SwiGLU).
 */
import { layerNorm, mul, rmsNorm, silu, type Tensor } from '../../tensor/index.js';
import type { ModelConfig } from '../config.js';

export class ModelLoadError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ModelLoadError';
  }
}

export type Json = Record<string, unknown>;

/** The config fields every family reads the same way (parseConfig fills them before asking the family). */
export type CommonConfig = Pick<ModelConfig, 'modelType' | 'vocabSize' | 'eosTokenId' | 'eosTokenIds' | 'padTokenId' | 'bosTokenId'>;

/** The common fields but model_type (families put model_type and family first). */
export function withoutType(c: CommonConfig): Omit<CommonConfig, 'modelType'> {
  const { modelType: _, ...rest } = c;
  return rest;
}

/** A dense MLP: projections reading the normalised residual, and the output projection. */
export interface DenseMlp {
  /** Input projections in the order the family's activation takes them (GPT-2: [c_fc]; SwiGLU: [gate, up]). */
  in: string[];
  /** Output projection; its input is the MLP key (ROME's k). */
  out: string;
}

/** Module names (checkpoint names, canonical form) of one decoder layer. */
export interface LayerModules {
  /** Norm before attention and before the MLP (weights `<name>.weight`, and `.bias` for LayerNorm). */
  attnNorm: string;
  mlpNorm: string;
  /** One fused [q; k; v] projection (GPT-2's c_attn) or separate q, k, v. */
  qkv: { fused: string } | { q: string; k: string; v: string };
  /** Attention output projection (writes `layers.{i}.attn`). */
  attnOut: string;
  /** Dense MLP (its output is `layers.{i}.mlp`), or null for a sparse-MoE layer. */
  mlp: DenseMlp | null;
  /** Sparse MoE: the router and expert e's MLP (`'*'` gives the glob over experts), or null. */
  moe: { router: string; expert(e: number | '*'): DenseMlp } | null;
}

/**
 * How an architecture's compute reaches the weights. CausalLM's `lin`
 * applies the active LoRA adapters; edit helpers use base weights only.
 */
export interface ArchOps {
  /** x through linear module `mod` (bias included, layout from the description); `gelu` fused after. */
  lin(mod: string, x: Tensor, activation?: 'gelu'): Tensor;
  /** A weight by canonical name. */
  weight(name: string): Tensor;
}

/** What a family says about itself; built with defineArch. */
export interface ArchSpec<F extends string = string> {
  /** ModelConfig.family. */
  family: F;
  /** config.json `model_type`s this family runs. */
  modelTypes: readonly string[];
  /** config.json → ModelConfig; `common` holds the fields read the same way for every family. */
  parseConfig(cfg: Json, file: string, common: CommonConfig): ModelConfig;
  /** Every weight the config implies, with its shape, by canonical name, in checkpoint order. */
  expectedWeights(c: ModelConfig): Map<string, number[]>;
  tokenEmbedding: string;
  /** Learned position embedding module, or null (RoPE on q and k). */
  positionEmbedding: string | null;
  finalNorm: string;
  /** LayerNorm (centred, with bias) or RMSNorm. */
  normKind: 'layernorm' | 'rmsnorm';
  /** Matrices stored [in, out] (GPT-2's Conv1D; PEFT's fan_in_fan_out). lm_head is always a Linear [out, in]. */
  fanInFanOut: boolean;
  layer(i: number): LayerModules;
  /** The MLP key (input of `mlp.out`) from the normalised residual x. */
  mlpKeys(ops: ArchOps, mlp: DenseMlp, x: Tensor): Tensor;
  /** Canonical form of a module or weight name (GPT-2: with the `transformer.` prefix). Default: unchanged. */
  canonical?(name: string): string;
  /** Names to look for in a checkpoint for a canonical weight name, in order. Default: the name itself. */
  checkpointNames?(name: string): string[];
}

/** A family's full description: its spec plus what follows from it. */
export interface ArchDescription<F extends string = string> extends Required<ArchSpec<F>> {
  /** The LM head module (a Linear; reads the token embedding when tied). */
  readonly lmHead: 'lm_head';
  /** Weight layout of a linear module. */
  layout(mod: string): 'in_out' | 'out_in';
  /** Normalise x with norm module `mod`. */
  norm(ops: ArchOps, mod: string, x: Tensor, eps: number): Tensor;
}

export function defineArch<F extends string>(spec: ArchSpec<F>): ArchDescription<F> {
  const canonical = spec.canonical ?? ((n: string) => n);
  return {
    ...spec,
    canonical,
    checkpointNames: spec.checkpointNames ?? ((n: string) => [n]),
    lmHead: 'lm_head',
    layout: (mod) => (spec.fanInFanOut && mod !== 'lm_head' ? 'in_out' : 'out_in'),
    norm: spec.normKind === 'layernorm'
      ? (ops, mod, x, eps) => layerNorm(x, ops.weight(`${mod}.weight`), ops.weight(`${mod}.bias`), eps)
      : (ops, mod, x, eps) => rmsNorm(x, ops.weight(`${mod}.weight`), eps),
  };
}

/** silu(x·gateᵀ) ⊙ (x·upᵀ): the gated MLP of Llama and of Mixtral's experts. */
export function swiGluKeys(ops: ArchOps, mlp: DenseMlp, x: Tensor): Tensor {
  return mul(silu(ops.lin(mlp.in[0], x)), ops.lin(mlp.in[1], x));
}

// config.json readers

export function int(cfg: Json, file: string, ...keys: string[]): number {
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

export function optInt(cfg: Json, key: string): number | null {
  const v = cfg[key];
  if (typeof v === 'number' && Number.isInteger(v)) return v;
  if (Array.isArray(v) && typeof v[0] === 'number') return v[0] as number; // some configs list several eos ids
  return null;
}

export function num(cfg: Json, key: string, dflt: number, file: string): number {
  const v = cfg[key];
  if (v === undefined || v === null) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
    throw new ModelLoadError(`${file}: "${key}" must be a positive number, got ${JSON.stringify(v)}`);
  }
  return v;
}
