/**
 * Architecture descriptions: the one place that knows a model family's
 * layout. Everything else (CausalLM, the config reader, the loader, edit
 * methods, attribution, merging, validation's reference edits, the fixture
 * trainer) asks these descriptions for module names, weight layout, norms
 * and MLP keys instead of spelling names or branching on the family.
 *
 * Each family is one file answering ArchSpec (./common.ts):
 *   - which config.json model_types it runs and how to read them;
 *   - every weight with its shape (expectedWeights, in checkpoint order);
 *   - names: token/position embeddings, final norm, and per layer the two
 *     norms, q/k/v (fused or separate), attention output, the dense MLP's
 *     input and output projections, or the MoE router and experts;
 *   - layout (fanInFanOut: GPT-2's Conv1D stores [in, out]), norm kind,
 *     and how the MLP keys (the input of the MLP output projection, ROME's
 *     k) are computed from the normalised residual.
 *
 * Adding a family (say Qwen2-MoE or Gemma): write `arch/<family>.ts`
 * with `defineArch({...})` (reuse ./llama.ts's pieces when the attention
 * is Llama's), add it to ARCHS below, and add its golden files
 * (scripts/golden/make_golden.py → fixtures/golden/<family>, checked by
 * test/models-golden.test.ts). Nothing else changes.
 */
import { fromData, gelu, linear, type Tensor } from '../../tensor/index.js';
import type { ModelConfig } from '../config.js';
import type { ArchDescription, ArchOps, DenseMlp, LayerModules } from './common.js';
import { gpt2 } from './gpt2.js';
import { llama } from './llama.js';
import { mixtral } from './mixtral.js';

export type { ArchDescription, ArchOps, ArchSpec, CommonConfig, DenseMlp, LayerModules } from './common.js';
export { defineArch, swiGluKeys } from './common.js';

/** Every family this package runs. */
export const ARCHS = [gpt2, llama, mixtral] as const;

export type ArchFamily = (typeof ARCHS)[number]['family'];

/** The description of a config's family (or of a family name). */
export function archOf(c: Pick<ModelConfig, 'family'> | string): ArchDescription {
  const family = typeof c === 'string' ? c : c.family;
  const a = ARCHS.find((x) => x.family === family);
  if (!a) throw new RangeError(`unknown model family '${family}' (known: ${ARCHS.map((x) => x.family).join(', ')})`);
  return a;
}

/** The family that runs a config.json model_type, or undefined. */
export function archForModelType(modelType: string): ArchDescription | undefined {
  return ARCHS.find((x) => x.modelTypes.includes(modelType));
}

/** Every supported model_type, in registration order. */
export function supportedModelTypes(): string[] {
  return ARCHS.flatMap((x) => [...x.modelTypes]);
}

/** The module writing layer l's MLP output: the dense MLP's output projection, or the experts' (`*` glob). */
export function mlpOutput(arch: ArchDescription, l: number): string {
  const L = arch.layer(l);
  return L.mlp ? L.mlp.out : L.moe!.expert('*').out;
}

/** The linear modules of layer l's MLP: a dense MLP's inputs then output; for MoE, every expert's. */
export function mlpModules(arch: ArchDescription, c: ModelConfig, l: number): DenseMlp[] {
  const L = arch.layer(l);
  if (L.mlp) return [L.mlp];
  return Array.from({ length: c.experts }, (_, e) => L.moe!.expert(e));
}

/** The attention modules of a layer: q/k/v (or the fused projection) and the output projection. */
export function attentionModules(L: LayerModules): string[] {
  return [...('fused' in L.qkv ? [L.qkv.fused] : [L.qkv.q, L.qkv.k, L.qkv.v]), L.attnOut];
}

/** What a weight is, for initialisation and weight decay. */
export type WeightRole = 'embedding' | 'norm' | 'bias' | 'residual-out' | 'matrix';

/**
 * The role of every expected weight: embeddings, norm gains, biases, the
 * projections writing into the residual stream (attention output, MLP or
 * expert output), and other matrices.
 */
export function weightRoles(arch: ArchDescription, c: ModelConfig): Map<string, WeightRole> {
  const role = new Map<string, WeightRole>();
  const mark = (mod: string, r: WeightRole) => role.set(`${mod}.weight`, r);
  mark(arch.tokenEmbedding, 'embedding');
  if (arch.positionEmbedding) mark(arch.positionEmbedding, 'embedding');
  mark(arch.finalNorm, 'norm');
  for (let i = 0; i < c.layers; i++) {
    const L: LayerModules = arch.layer(i);
    mark(L.attnNorm, 'norm');
    mark(L.mlpNorm, 'norm');
    mark(L.attnOut, 'residual-out');
    for (const m of mlpModules(arch, c, i)) mark(m.out, 'residual-out');
  }
  const out = new Map<string, WeightRole>();
  for (const name of arch.expectedWeights(c).keys()) out.set(name, name.endsWith('.bias') ? 'bias' : (role.get(name) ?? 'matrix'));
  return out;
}

/**
 * Fresh weights for every expected name, in checkpoint order: norm gains 1,
 * biases 0, every other tensor filled by `fill` (which knows its role).
 */
export function initWeights(
  c: ModelConfig, fill: (data: Float32Array, role: WeightRole) => void, opts: { requiresGrad?: boolean } = {},
): Map<string, Tensor> {
  const arch = archOf(c);
  const roles = weightRoles(arch, c);
  const w = new Map<string, Tensor>();
  for (const [name, shape] of arch.expectedWeights(c)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    const role = roles.get(name)!;
    if (role === 'norm') data.fill(1);
    else if (role !== 'bias') fill(data, role);
    w.set(name, fromData(data, shape, opts.requiresGrad ? { requiresGrad: true } : {}));
  }
  return w;
}

/**
 * ArchOps on base weights only (no adapters): `lin` is a plain linear in the
 * module's layout, with its bias when the model has one, and gelu applied
 * separately (as the edit helpers always computed it).
 */
export function baseOps(arch: ArchDescription, weights: ReadonlyMap<string, Tensor>): ArchOps {
  const weight = (name: string): Tensor => {
    const t = weights.get(arch.canonical(name));
    if (!t) throw new Error(`no weight '${name}'`);
    return t;
  };
  return {
    weight,
    lin(mod, x, activation) {
      const y = linear(x, weight(`${mod}.weight`), weights.get(arch.canonical(`${mod}.bias`)) ?? null, arch.layout(mod));
      return activation === 'gelu' ? gelu(y) : y;
    },
  };
}
