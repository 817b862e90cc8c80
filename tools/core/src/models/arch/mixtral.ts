/**
 * Mixtral: a Llama-shaped model whose MLPs are sparse mixtures of SwiGLU
 * experts (`block_sparse_moe.gate` routes each token to its top-k of
 * `block_sparse_moe.experts.{e}`, each `w1`, `w3` → `w2`).
 */
import type { ModelConfig } from '../config.js';
import { ModelLoadError, defineArch, int, type ArchDescription, type LayerModules } from './common.js';
import { llamaLayer, llamaShape, llamaWeights, parseLlamaConfig } from './llama.js';

function layer(i: number): LayerModules {
  const p = `model.layers.${i}.block_sparse_moe`;
  return llamaLayer(i, {
    mlp: null,
    moe: {
      router: `${p}.gate`,
      expert: (e) => ({ in: [`${p}.experts.${e}.w1`, `${p}.experts.${e}.w3`], out: `${p}.experts.${e}.w2` }),
    },
  });
}

export const mixtral: ArchDescription<'mixtral'> = defineArch({
  ...llamaShape,
  family: 'mixtral',
  modelTypes: ['mixtral'],
  layer,
  parseConfig(cfg, file, common): ModelConfig {
    const out = parseLlamaConfig(cfg, file, common, 'mixtral');
    out.experts = int(cfg, file, 'num_local_experts');
    out.expertsPerTok = int(cfg, file, 'num_experts_per_tok');
    if (out.expertsPerTok > out.experts) {
      throw new ModelLoadError(`${file}: num_experts_per_tok ${out.expertsPerTok} exceeds num_local_experts ${out.experts}`);
    }
    return out;
  },
  expectedWeights: (c) => llamaWeights(c, layer),
});
