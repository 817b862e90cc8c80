/**
 * Decoder-only causal language models: GPT-2, the Llama family (llama,
 * qwen2, mistral) and Mixtral, on the autograd tensors of ../tensor.
 *
 * One class runs every family; the family's description (./arch) names the
 * modules and picks normalisation (LayerNorm vs RMSNorm), positions (learned
 * vs RoPE), q/k/v (fused vs separate), the MLP (gelu_new vs SwiGLU vs sparse
 * MoE) and the weight layout (Conv1D [in,out] vs Linear [out,in]).
 * Weights never require grad; LoRA adapters and hook values may.
 */
import {
  Tensor, add, attention, attentionQKV, concat, div, fromData, indexAdd, indexSelect, logSoftmax, gather,
  loraLinear, mul, noGrad, permute, reshape, rope, scale, slice, softmax, sum, topk, zeros,
} from '../tensor/index.js';
import { Rng } from '../util/random.js';
import type { ModelConfig } from './config.js';
import { ModelLoadError, expectedWeights, ropeInvFreq } from './config.js';
import { applyHook, type Hooks } from './hooks.js';
import { createLora, type LoraAdapter } from './lora.js';
import { archOf, initWeights, type ArchDescription, type ArchOps, type LayerModules } from './arch/index.js';

/** Keys and values of every layer for the tokens seen so far. */
export class KVCache {
  /** Per layer: keys and values [B, Hkv, S, D] (after RoPE). */
  layers: Array<{ k: Tensor; v: Tensor } | null>;
  /** Attention mask of the cached tokens, [B × length], 1 = real token. */
  mask: Uint8Array;

  constructor(readonly batch: number, nLayers: number) {
    this.layers = new Array(nLayers).fill(null);
    this.mask = new Uint8Array(0);
  }

  get length(): number {
    return this.mask.length / this.batch;
  }
}

export interface ForwardOptions {
  /** [B × S] with 1 for real tokens and 0 for padding; S = cached + new tokens. Default all ones. */
  attentionMask?: Uint8Array;
  /** [B × T] position ids of the new tokens. Default: running count of real tokens (padding-aware). */
  positions?: Int32Array;
  hooks?: Hooks;
  /** Read and extend this cache (generation). */
  kvCache?: KVCache;
  /** Skip the LM head (logits) — e.g. when only hooked activations are wanted. */
  skipLogits?: boolean;
  /**
   * Compute logits only at these flat positions (b·T + t); logits are then
   * [n, V] in this order. Saves the LM head on rows nobody reads (scoring,
   * generation), which dominates for large vocabularies, and the last
   * layer's dense MLP there too (the same values to float rounding: a
   * matrix product's rounding can depend on how many rows it holds).
   */
  logitsAt?: Int32Array;
  /**
   * Start at layer `layer`'s MLP from `h`, the residual stream after that
   * layer's attention ([B, T, hidden], e.g. from `residBeforeMlp`): the
   * embeddings, the earlier layers and that layer's attention are skipped,
   * and their hooks do not fire. An edit that changes nothing before that
   * MLP (the patcher's neurons, a LoRA on the last layer's MLP) then pays
   * only for what it changes; the result is the full forward's, bit for bit.
   * Not with a KV cache. `keys`, when given, are that MLP's keys for `h`
   * (its output projection's input, [B, T, intermediate], e.g. from
   * `mlpStart`): the MLP's norm and input projections are skipped too, which
   * is exact only while no active adapter changes them (refused otherwise).
   */
  fromMlp?: { layer: number; h: Tensor; keys?: Tensor };
}

export interface ForwardResult {
  /** [B, T, V], or [n, V] with `logitsAt`. */
  logits: Tensor;
  /** Mixtral: router logits per layer, each [B, T, E]. */
  routerLogits?: Tensor[];
}

export interface ActiveAdapter {
  adapter: LoraAdapter;
  /** Multiplies the adapter's delta; −1 negates it. Default 1. */
  scale?: number;
}

export interface GenerateOptions {
  maxNewTokens: number;
  /** Greedy decoding (default when temperature is 0 or absent). */
  greedy?: boolean;
  temperature?: number;
  topP?: number;
  seed?: number;
  /** Stop a row when it emits this id or one of these ids (default: the config's eos ids; null disables). */
  eosTokenId?: number | readonly number[] | null;
  /** Recompute the whole sequence each step instead of using the KV cache (for checking). */
  useCache?: boolean;
  hooks?: Hooks;
}

interface LoraTerm {
  A: Tensor;
  B: Tensor;
  bias?: Tensor;
  factor: number;
}

export class CausalLM {
  private loraTerms = new Map<string, LoraTerm[]>();
  private invFreq: Float64Array | null = null;
  private active: ActiveAdapter[] = [];
  /** The family's layout: module names, weight layout, norms, MLP keys. */
  readonly arch: ArchDescription;
  /** Module-level compute through the active adapters (what the description's mlpKeys/norm call). */
  private readonly ops: ArchOps;

  /**
   * @param weights every tensor of expectedWeights(config), by canonical name
   *   (GPT-2 names with the `transformer.` prefix).
   */
  constructor(readonly config: ModelConfig, readonly weights: Map<string, Tensor>) {
    this.arch = archOf(config);
    this.ops = {
      lin: (mod, x, activation) => this.lin(mod, x, this.arch.layout(mod), mod, activation),
      weight: (name) => this.weights.get(name)!,
    };
    for (const [name, shape] of expectedWeights(config)) {
      const t = weights.get(name);
      if (!t) throw new ModelLoadError(`weight '${name}' is missing`);
      if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
        throw new ModelLoadError(`weight '${name}' has shape [${t.shape.join(', ')}] but the config implies [${shape.join(', ')}]`);
      }
    }
  }

  /** Random weights for a config (benchmarks, tests): norms 1, biases 0, the rest uniform with standard deviation `std`. */
  static random(config: ModelConfig, seed = 0, std = 0.02): CausalLM {
    const rng = new Rng(seed);
    // uniform with the given std (±std·√3) from an inline xorshift32 seeded by
    // the Rng: deterministic and fast enough for 100M+ weights
    const a = (2 * std * Math.sqrt(3)) / 4294967296;
    const off = std * Math.sqrt(3);
    const fill = (data: Float32Array) => {
      let x = rng.nextUint32() | 1;
      for (let i = 0; i < data.length; i++) {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        data[i] = (x >>> 0) * a - off;
      }
    };
    return new CausalLM(config, initWeights(config, fill));
  }

  weight(name: string): Tensor {
    const t = this.weights.get(this.arch.canonical(name));
    if (!t) throw new Error(`no weight '${name}'`);
    return t;
  }

  /** Linear modules LoRA can target: [name, in features, out features]. */
  linearModules(): Array<[string, number, number]> {
    const out: Array<[string, number, number]> = [];
    const a = this.arch;
    const embeddings = new Set([a.tokenEmbedding, a.positionEmbedding]);
    for (const [name, t] of this.weights) {
      if (!name.endsWith('.weight') || t.shape.length !== 2) continue;
      const mod = name.slice(0, -'.weight'.length);
      if (embeddings.has(mod)) continue;
      // Conv1D stores [in, out]; Linear [out, in]. lm_head is a Linear even in GPT-2.
      const inOut = a.layout(mod) === 'in_out';
      out.push([mod, inOut ? t.shape[0] : t.shape[1], inOut ? t.shape[1] : t.shape[0]]);
    }
    if (this.config.tieEmbeddings) out.push([a.lmHead, this.config.hidden, this.config.vocabSize]);
    return out;
  }

  /**
   * Linear modules matching PEFT-style target names: a module matches when
   * its name equals a target or ends with `.<target>` (so a projection's
   * last name part selects that projection in every layer).
   */
  matchModules(targets: readonly string[]): Array<[string, number, number]> {
    const mods = this.linearModules();
    const out: Array<[string, number, number]> = [];
    for (const t of targets) {
      const canon = this.arch.canonical(t);
      const hits = mods.filter(([n]) => n === canon || n.endsWith('.' + t));
      if (hits.length === 0) throw new ModelLoadError(`LoRA target '${t}' matches no linear module of this ${this.config.modelType} model`);
      for (const h of hits) if (!out.some(([n]) => n === h[0])) out.push(h);
    }
    return out;
  }

  /** A fresh LoRA adapter (A random, B zero unless initBStd) on the modules matching `targets`. */
  createLora(name: string, targets: readonly string[], opts: { r: number; alpha?: number; seed?: number; initBStd?: number }): LoraAdapter {
    return createLora(name, this.matchModules(targets), { ...opts, fanInFanOut: this.arch.fanInFanOut });
  }

  /** Activate adapters (replacing the active set). Several at once; scales may be negative. */
  setAdapters(list: ActiveAdapter[]): void {
    const mods = new Map(this.linearModules().map(([n, i, o]) => [n, [i, o] as const]));
    const terms = new Map<string, LoraTerm[]>();
    for (const { adapter, scale = 1 } of list) {
      for (const [modRaw, { A, B, bias }] of adapter.modules) {
        const mod = this.arch.canonical(modRaw);
        const dims = mods.get(mod);
        if (!dims) throw new ModelLoadError(`LoRA adapter ${adapter.name}: target module '${modRaw}' is not a linear module of this model`);
        if (A.shape[1] !== dims[0] || B.shape[0] !== dims[1]) {
          throw new ModelLoadError(
            `LoRA adapter ${adapter.name}: module '${modRaw}' has lora_A [${A.shape.join(', ')}], lora_B [${B.shape.join(', ')}] but the module maps ${dims[0]} → ${dims[1]}`,
          );
        }
        const l = terms.get(mod) ?? [];
        l.push({ A, B, ...(bias ? { bias } : {}), factor: adapter.factor * scale });
        terms.set(mod, l);
      }
    }
    this.loraTerms = terms;
    this.active = list.slice();
  }

  activeAdapters(): ActiveAdapter[] {
    return this.active.slice();
  }

  /**
   * y = base(x) + Σ factor·((x Aᵀ) Bᵀ + bias) over active adapters on this
   * module, as one fused op (then `activation`, fused too).
   */
  private lin(mod: string, x: Tensor, layout: 'out_in' | 'in_out' = 'out_in', weightOf: string = mod, activation?: 'gelu'): Tensor {
    const w = this.weights.get(weightOf + '.weight')!;
    const b = this.weights.get(weightOf + '.bias');
    return loraLinear(x, w, b ?? null, layout, this.loraTerms.get(mod) ?? [], activation);
  }

  /** forward's input check: ids fill [B, T], T > 0, every id inside the vocabulary. */
  protected checkIds(ids: Int32Array, [B, T]: readonly [number, number]): void {
    if (ids.length !== B * T) throw new RangeError(`forward: ${ids.length} ids do not fill a [${B}, ${T}] batch`);
    if (T === 0) throw new RangeError('forward: empty sequence');
    const V = this.config.vocabSize;
    for (let i = 0; i < ids.length; i++) {
      if (!(ids[i] >= 0 && ids[i] < V)) throw new RangeError(`forward: token id ${ids[i]} at ${i} is outside the vocabulary [0, ${V})`);
    }
  }

  /**
   * Forward pass over ids [B × T] (row-major). Differentiable: LoRA weights
   * and hook values receive gradients when the result is backpropagated.
   */
  forward(ids: Int32Array, dims: readonly [number, number], opts: ForwardOptions = {}): ForwardResult {
    const c = this.config;
    const [B, T] = dims;
    this.checkIds(ids, dims);
    const cache = opts.kvCache;
    if (cache && cache.batch !== B) throw new RangeError(`forward: KV cache holds ${cache.batch} rows, batch has ${B}`);
    const past = cache ? cache.length : 0;
    const S = past + T;
    let mask = opts.attentionMask;
    if (mask) {
      if (mask.length !== B * S) throw new RangeError(`forward: attentionMask has ${mask.length} entries, expected B × (cached + new) = ${B * S}`);
    } else if (cache && past > 0) {
      // extend the cached mask with ones for the new tokens
      mask = new Uint8Array(B * S);
      for (let b = 0; b < B; b++) {
        mask.set(cache.mask.subarray(b * past, (b + 1) * past), b * S);
        mask.fill(1, b * S + past, (b + 1) * S);
      }
    }
    if (c.slidingWindow !== null && S > c.slidingWindow) {
      // windowed attention is not implemented; refusing beats silently attending too far
      throw new RangeError(`forward: ${S} tokens exceed the model's sliding_window of ${c.slidingWindow}, which is not supported`);
    }
    const positions = opts.positions ?? defaultPositions(B, T, S, mask);
    if (positions.length !== B * T) throw new RangeError(`forward: positions has ${positions.length} entries, expected ${B * T}`);
    const keyPad = mask; // attention takes 1 = real key, as HF's attention_mask
    const hooks = opts.hooks;
    const H = c.hidden;

    const arch = this.arch;
    const from = opts.fromMlp;
    if (from) {
      if (cache) throw new RangeError('forward: fromMlp cannot be used with a KV cache');
      if (!Number.isInteger(from.layer) || from.layer < 0 || from.layer >= c.layers) throw new RangeError(`forward: fromMlp layer ${from.layer} is outside [0, ${c.layers})`);
      const [hb, ht, hh] = from.h.shape;
      if (from.h.shape.length !== 3 || hb !== B || ht !== T || hh !== H) throw new RangeError(`forward: fromMlp h is [${from.h.shape.join(', ')}], expected [${B}, ${T}, ${H}]`);
      if (from.keys) {
        const mlp = arch.layer(from.layer).mlp;
        if (!mlp) throw new RangeError(`forward: fromMlp keys at layer ${from.layer}, a sparse MoE layer (its keys are per expert)`);
        const [kb, kt, ki] = from.keys.shape;
        if (from.keys.shape.length !== 3 || kb !== B || kt !== T || ki !== c.intermediate) {
          throw new RangeError(`forward: fromMlp keys are [${from.keys.shape.join(', ')}], expected [${B}, ${T}, ${c.intermediate}]`);
        }
        const changed = mlp.in.find((m) => this.loraTerms.has(m));
        if (changed) throw new RangeError(`forward: fromMlp keys were given, but an active adapter changes ${changed}, which computes them`);
      }
    }
    let h: Tensor;
    if (from) {
      h = from.h;
    } else {
      // embeddings
      h = indexSelect(this.weights.get(`${arch.tokenEmbedding}.weight`)!, 0, ids);
      if (arch.positionEmbedding) {
        for (const p of positions) {
          if (p < 0 || p >= c.maxPositions) throw new RangeError(`forward: position ${p} is outside the model's ${c.maxPositions} learned positions`);
        }
        h = add(h, indexSelect(this.weights.get(`${arch.positionEmbedding}.weight`)!, 0, positions));
      }
      h = applyHook(hooks, 'embed', reshape(h, [B, T, H]));
    }

    const routerLogits: Tensor[] = [];
    if (opts.logitsAt && !opts.skipLogits) {
      for (const r of opts.logitsAt) if (!(r >= 0 && r < B * T)) throw new RangeError(`forward: logitsAt row ${r} is outside [0, ${B * T})`);
    }
    const last = c.layers - 1;
    // Only the rows logits are read at need the last layer's MLP: a dense MLP works row by row, so the
    // residual stream is narrowed to them before it (not for an MoE block, whose router logits cover every
    // row, nor when a hook reads that MLP or the stream after it).
    const narrowLast = opts.logitsAt !== undefined && !opts.skipLogits && !arch.layer(last).moe
      && !hooks?.[`layers.${last}.mlp`] && !hooks?.[`layers.${last}.resid_post`];
    for (let i = from ? from.layer : 0; i < c.layers; i++) {
      const L = arch.layer(i);
      if (!from || i > from.layer) {
        const a = applyHook(hooks, `layers.${i}.attn`, this.attentionBlock(i, L, h, B, T, positions, keyPad, cache));
        h = add(h, a);
      }
      // the keys given with fromMlp stand in for this layer's norm and input projections
      let keys = from?.keys && i === from.layer ? from.keys : undefined;
      if (i === last && narrowLast) {
        h = indexSelect(reshape(h, [B * T, H]), 0, opts.logitsAt!);
        if (keys) keys = indexSelect(reshape(keys, [B * T, c.intermediate]), 0, opts.logitsAt!);
      }
      let m: Tensor;
      if (L.moe) {
        const r = this.moeBlock(i, L.moe, arch.norm(this.ops, L.mlpNorm, h, c.normEps), B, T, hooks);
        m = r.out;
        routerLogits.push(r.router);
      } else {
        m = this.ops.lin(L.mlp!.out, keys ?? arch.mlpKeys(this.ops, L.mlp!, arch.norm(this.ops, L.mlpNorm, h, c.normEps)));
      }
      m = applyHook(hooks, `layers.${i}.mlp`, m);
      h = applyHook(hooks, `layers.${i}.resid_post`, add(h, m));
    }
    if (cache) {
      cache.mask = mask ?? new Uint8Array(B * S).fill(1);
    }

    let logits: Tensor;
    if (opts.skipLogits) {
      logits = zeros([B, T, 0]);
    } else {
      if (opts.logitsAt && !narrowLast) h = indexSelect(reshape(h, [B * T, H]), 0, opts.logitsAt);
      const x = arch.norm(this.ops, arch.finalNorm, h, c.normEps);
      // a tied head is still the module `lm_head` for LoRA, reading the embedding matrix
      const head = c.tieEmbeddings ? arch.tokenEmbedding : arch.lmHead;
      logits = this.lin(arch.lmHead, x, 'out_in', head);
    }
    return routerLogits.length > 0 ? { logits, routerLogits } : { logits };
  }

  private attentionBlock(
    i: number, L: LayerModules, h: Tensor, B: number, T: number, positions: Int32Array, keyPad: Uint8Array | undefined, cache?: KVCache,
  ): Tensor {
    const c = this.config;
    const hd = c.headDim;
    const ops = this.ops;
    // learned absolute positions (added to the embeddings) or RoPE on q and k
    const useRope = this.arch.positionEmbedding === null;
    const pos = (t: Tensor) => (useRope ? this.rope(t, positions) : t);
    const x = this.arch.norm(ops, L.attnNorm, h, c.normEps);
    let q: Tensor, k: Tensor, v: Tensor;
    if ('fused' in L.qkv) {
      const qkv = ops.lin(L.qkv.fused, x);
      if (!cache && !useRope) {
        // no cache to fill: attend straight from the fused projection (no head split/merge copies)
        const o = attentionQKV(qkv, c.heads, { causal: true, scale: 1 / Math.sqrt(hd), ...(keyPad ? { keyPad } : {}) });
        return ops.lin(L.attnOut, o);
      }
      // [B,T,3H] → [3,B,heads,T,hd] in one permute; q/k/v are then contiguous blocks
      const qkvh = permute(reshape(qkv, [B, T, 3, c.heads, hd]), [2, 0, 3, 1, 4]);
      const part = (j: number) => reshape(slice(qkvh, 0, j, j + 1), [B, c.heads, T, hd]);
      q = pos(part(0));
      k = pos(part(1));
      v = part(2);
    } else {
      const heads = (t: Tensor, n: number) => permute(reshape(t, [B, T, n, hd]), [0, 2, 1, 3]);
      q = pos(heads(ops.lin(L.qkv.q, x), c.heads));
      k = pos(heads(ops.lin(L.qkv.k, x), c.kvHeads));
      v = heads(ops.lin(L.qkv.v, x), c.kvHeads);
    }
    if (cache) {
      const prev = cache.layers[i];
      if (prev) {
        k = concat([prev.k, k], 2);
        v = concat([prev.v, v], 2);
      }
      cache.layers[i] = { k: k.detach(), v: v.detach() };
    }
    const o = attention(q, k, v, { causal: true, scale: 1 / Math.sqrt(hd), ...(keyPad ? { keyPad } : {}) });
    return ops.lin(L.attnOut, reshape(permute(o, [0, 2, 1, 3]), [B, T, c.heads * hd]));
  }

  /**
   * RoPE on x [B,H,T,D]. Plain RoPE uses the kernel; scaled RoPE (custom
   * frequencies) is x·cos + rotate_half(x)·sin from differentiable ops.
   */
  private rope(x: Tensor, positions: Int32Array): Tensor {
    const c = this.config;
    if (!c.ropeScaling) return rope(x, positions, c.ropeTheta);
    const [B, , T, D] = x.shape;
    const half = D / 2;
    this.invFreq ??= ropeInvFreq(c);
    const cos = new Float32Array(B * T * D);
    const sin = new Float32Array(B * T * D);
    for (let bt = 0; bt < B * T; bt++) {
      for (let j = 0; j < half; j++) {
        // float32 angle, as the reference computes it
        const a = Math.fround(positions[bt] * Math.fround(this.invFreq[j]));
        const cv = Math.cos(a);
        const sv = Math.sin(a);
        cos[bt * D + j] = cos[bt * D + j + half] = cv;
        sin[bt * D + j] = sin[bt * D + j + half] = sv;
      }
    }
    const rot = concat([scale(slice(x, 3, half, D), -1), slice(x, 3, 0, half)], 3);
    return add(mul(x, fromData(cos, [B, 1, T, D])), mul(rot, fromData(sin, [B, 1, T, D])));
  }

  /** Sparse MoE: softmax router → top-k → renormalise → weighted SwiGLU experts. */
  private moeBlock(i: number, moe: NonNullable<LayerModules['moe']>, x: Tensor, B: number, T: number, hooks?: Hooks): { out: Tensor; router: Tensor } {
    const c = this.config;
    const H = c.hidden;
    const N = B * T;
    const E = c.experts;
    const K = c.expertsPerTok;
    const router = applyHook(hooks, `layers.${i}.router`, this.ops.lin(moe.router, x));
    const probs = softmax(reshape(router, [N, E]));
    const top = topk(probs, K);
    const w = reshape(div(top.values, sum(top.values, -1, true)), [N * K, 1]);
    const xf = reshape(x, [N, H]);
    // Dense per-expert contributions only when a hook wants to see or change them.
    const dense = hooks !== undefined && Object.keys(hooks).some((s) => s.startsWith(`layers.${i}.experts.`));
    let out = zeros([N, H]);
    for (let e = 0; e < E; e++) {
      const rows: number[] = [];
      const slots: number[] = [];
      for (let n = 0; n < N; n++) {
        for (let j = 0; j < K; j++) {
          if (top.indices[n * K + j] === e) {
            rows.push(n);
            slots.push(n * K + j);
          }
        }
      }
      let contrib: Tensor | null = null;
      if (rows.length > 0) {
        const r = Int32Array.from(rows);
        const xe = indexSelect(xf, 0, r);
        const ex = moe.expert(e);
        const ye = this.ops.lin(ex.out, this.arch.mlpKeys(this.ops, ex, xe));
        contrib = mul(ye, indexSelect(w, 0, Int32Array.from(slots)));
        if (!dense) {
          out = indexAdd(out, 0, r, contrib);
          continue;
        }
        contrib = indexAdd(zeros([N, H]), 0, r, contrib);
      }
      if (dense) {
        const full = applyHook(hooks, `layers.${i}.experts.${e}`, reshape(contrib ?? zeros([N, H]), [B, T, H]));
        out = add(out, reshape(full, [N, H]));
      }
    }
    return { out: reshape(out, [B, T, H]), router };
  }

  /**
   * Log-probabilities of each continuation token given its prompt (and the
   * continuation tokens before it), batched. Differentiable: returns one
   * tensor [total continuation tokens] plus each item's offset into it.
   */
  continuationLogprobs(
    prompts: number[][], continuations: number[][], opts: { hooks?: Hooks } = {},
  ): { logprobs: Tensor; offsets: number[] } {
    if (prompts.length !== continuations.length) {
      throw new RangeError(`logprobs: ${prompts.length} prompts but ${continuations.length} continuations`);
    }
    const B = prompts.length;
    const lens = prompts.map((p, i) => {
      if (p.length === 0) throw new RangeError(`logprobs: prompt ${i} is empty (the first token has no prediction)`);
      return p.length + continuations[i].length;
    });
    const T = Math.max(...lens);
    const ids = new Int32Array(B * T);
    const mask = new Uint8Array(B * T);
    const pad = this.config.padTokenId ?? this.config.eosTokenId ?? 0;
    const rowIds: number[] = [];
    const targets: number[] = [];
    const offsets: number[] = [];
    for (let b = 0; b < B; b++) {
      const seq = prompts[b].concat(continuations[b]);
      ids.fill(pad, b * T, (b + 1) * T);
      ids.set(seq, b * T);
      mask.fill(1, b * T, b * T + seq.length);
      offsets.push(targets.length);
      for (let j = 0; j < continuations[b].length; j++) {
        rowIds.push(b * T + prompts[b].length + j - 1);
        targets.push(continuations[b][j]);
      }
    }
    offsets.push(targets.length);
    if (targets.length === 0) return { logprobs: zeros([0]), offsets };
    const { logits } = this.forward(ids, [B, T], { attentionMask: mask, hooks: opts.hooks, logitsAt: Int32Array.from(rowIds) });
    const lp = gather(logSoftmax(logits), Int32Array.from(targets), 1);
    return { logprobs: reshape(lp, [targets.length]), offsets };
  }

  /** Per-token log-probabilities of continuations (no gradients), in batches. */
  logprobs(prompts: number[][], continuations: number[][], opts: { batchSize?: number; hooks?: Hooks } = {}): Float32Array[] {
    const bs = opts.batchSize ?? 16;
    const out: Float32Array[] = [];
    for (let s = 0; s < prompts.length; s += bs) {
      const { logprobs, offsets } = noGrad(() =>
        this.continuationLogprobs(prompts.slice(s, s + bs), continuations.slice(s, s + bs), { hooks: opts.hooks }),
      );
      for (let i = 0; i + 1 < offsets.length; i++) out.push(logprobs.data.slice(offsets[i], offsets[i + 1]));
    }
    return out;
  }

  /**
   * Generate continuations of prompts (left-padded into one batch) with a KV
   * cache. Greedy unless temperature > 0; top-p nucleus sampling from a
   * seeded generator. Returns only the new tokens of each row (stopping at
   * and including eos).
   */
  generate(prompts: number[][], opts: GenerateOptions): number[][] {
    const B = prompts.length;
    if (B === 0) return [];
    const maxNew = opts.maxNewTokens;
    if (!Number.isInteger(maxNew) || maxNew < 0) throw new RangeError(`generate: maxNewTokens must be a non-negative integer`);
    const temperature = opts.greedy ? 0 : (opts.temperature ?? 0);
    const topP = opts.topP ?? 1;
    const eosIds = new Set<number>(
      opts.eosTokenId === undefined ? this.config.eosTokenIds : opts.eosTokenId === null ? [] : typeof opts.eosTokenId === 'number' ? [opts.eosTokenId] : opts.eosTokenId,
    );
    const rng = new Rng(opts.seed ?? 0);
    const useCache = opts.useCache ?? true;
    const pad = this.config.padTokenId ?? this.config.eosTokenId ?? 0;
    const L = Math.max(...prompts.map((p) => p.length));
    if (prompts.some((p) => p.length === 0)) throw new RangeError('generate: empty prompt');
    // rows as growing sequences, left-padded to a common length
    const seqs: number[][] = prompts.map((p) => new Array(L - p.length).fill(pad).concat(p));
    const masks: number[][] = prompts.map((p) => new Array(L - p.length).fill(0).concat(new Array(p.length).fill(1)));
    const out: number[][] = prompts.map(() => []);
    const done = new Array(B).fill(false);
    const V = this.config.vocabSize;
    return noGrad(() => {
      const cache = useCache ? new KVCache(B, this.config.layers) : undefined;
      for (let step = 0; step < maxNew && done.some((d) => !d); step++) {
        const S = seqs[0].length;
        const T = useCache && step > 0 ? 1 : S;
        const ids = new Int32Array(B * T);
        const mask = new Uint8Array(B * S);
        for (let b = 0; b < B; b++) {
          ids.set(seqs[b].slice(S - T), b * T);
          mask.set(masks[b], b * S);
        }
        const last = Int32Array.from({ length: B }, (_, b) => b * T + T - 1);
        const { logits } = this.forward(ids, [B, T], { attentionMask: mask, kvCache: cache, hooks: opts.hooks, logitsAt: last });
        for (let b = 0; b < B; b++) {
          // a finished row is fed padding, masked out, so it cannot affect anything
          if (done[b]) {
            seqs[b].push(pad);
            masks[b].push(0);
            continue;
          }
          const row = logits.data.subarray(b * V, (b + 1) * V);
          const next = temperature > 0 ? sampleTopP(row, temperature, topP, rng) : argmax(row);
          out[b].push(next);
          if (eosIds.has(next)) done[b] = true;
          seqs[b].push(next);
          masks[b].push(1);
        }
      }
      return out;
    });
  }
}

/**
 * Padding-aware positions (as HF computes them from the attention mask): a
 * real token's position is the number of real tokens before it in its row;
 * padding gets 0 (it is masked out as a key and its output is ignored).
 */
function defaultPositions(B: number, T: number, S: number, mask: Uint8Array | undefined): Int32Array {
  const pos = new Int32Array(B * T);
  const past = S - T;
  for (let b = 0; b < B; b++) {
    let count = 0;
    for (let s = 0; s < S; s++) {
      const real = mask ? mask[b * S + s] !== 0 : true;
      if (s >= past) pos[b * T + s - past] = real ? count : 0;
      if (real) count++;
    }
  }
  return pos;
}

export function argmax(row: Float32Array): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

/** Sample from softmax(row / temperature) restricted to the smallest set with mass ≥ topP. */
export function sampleTopP(row: Float32Array, temperature: number, topP: number, rng: Rng): number {
  let m = -Infinity;
  for (const v of row) if (v > m) m = v;
  const probs = new Float64Array(row.length);
  let z = 0;
  for (let i = 0; i < row.length; i++) {
    probs[i] = Math.exp((row[i] - m) / temperature);
    z += probs[i];
  }
  const order = Array.from(row.keys()).sort((a, b) => probs[b] - probs[a]);
  let keep = order.length;
  if (topP < 1) {
    let acc = 0;
    for (let i = 0; i < order.length; i++) {
      acc += probs[order[i]] / z;
      if (acc >= topP) {
        keep = i + 1;
        break;
      }
    }
  }
  let mass = 0;
  for (let i = 0; i < keep; i++) mass += probs[order[i]];
  let u = rng.uniform() * mass;
  for (let i = 0; i < keep; i++) {
    u -= probs[order[i]];
    if (u <= 0) return order[i];
  }
  return order[keep - 1];
}
