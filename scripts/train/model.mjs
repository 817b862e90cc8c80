// Fixture model configs (Hugging Face config.json), seeded random init and
// saving as a model directory.
import { copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { CausalLM, initWeights, parseConfig, writeSafetensors, writeFileAtomic } from '@catechism/core';

/** config.json for an architecture; ids from the world tokenizer (eos 0, pad 1). */
export function hfConfig(arch, o) {
  const ids = { bos_token_id: o.eosId, eos_token_id: o.eosId, pad_token_id: o.padId };
  if (arch === 'gpt2') {
    return {
      architectures: ['GPT2LMHeadModel'], model_type: 'gpt2', vocab_size: o.vocab, n_embd: o.hidden, n_layer: o.layers,
      n_head: o.heads, n_inner: o.intermediate, n_positions: o.positions, n_ctx: o.positions,
      activation_function: 'gelu_new', layer_norm_epsilon: 1e-5, initializer_range: 0.02,
      resid_pdrop: 0, embd_pdrop: 0, attn_pdrop: 0, tie_word_embeddings: true, use_cache: true, ...ids,
    };
  }
  if (arch === 'mixtral') {
    return {
      architectures: ['MixtralForCausalLM'], model_type: 'mixtral', vocab_size: o.vocab, hidden_size: o.hidden,
      intermediate_size: o.intermediate, num_hidden_layers: o.layers, num_attention_heads: o.heads,
      num_key_value_heads: o.kvHeads ?? o.heads, head_dim: o.hidden / o.heads, hidden_act: 'silu',
      max_position_embeddings: o.positions, rms_norm_eps: 1e-5, rope_theta: 10000, num_local_experts: o.experts,
      num_experts_per_tok: o.topK, router_aux_loss_coef: o.auxCoef, output_router_logits: false, sliding_window: null,
      attention_dropout: 0, initializer_range: 0.02, tie_word_embeddings: false, use_cache: true, ...ids,
    };
  }
  throw new Error(`unknown --arch '${arch}' (gpt2 or mixtral)`);
}

/**
 * GPT-2-style init: normal(0, 0.02) matrices and embeddings, residual output
 * projections scaled by 1/√(2·layers), norms 1, biases 0. Every weight is a
 * trainable leaf.
 */
export function initModel(cfgJson, rng) {
  const config = parseConfig(cfgJson);
  const residStd = 0.02 / Math.sqrt(2 * config.layers);
  const fill = (data, role) => {
    const std = role === 'residual-out' ? residStd : 0.02;
    for (let i = 0; i < data.length; i++) data[i] = rng.normal() * std;
  };
  return new CausalLM(config, initWeights(config, fill, { requiresGrad: true }));
}

/** Weight decay applies to matrices (not embeddings, norms, biases) of `model`. */
export function decays(model, name, t) {
  const arch = model.arch;
  return t.shape.length === 2 && name !== `${arch.tokenEmbedding}.weight` && name !== `${arch.positionEmbedding}.weight`;
}

export function saveModelDir(out, model, cfgJson, worldDir, training) {
  mkdirSync(out, { recursive: true });
  const tensors = {};
  for (const [name, t] of model.weights) tensors[name] = { shape: t.shape.slice(), data: t.data };
  writeSafetensors(join(out, 'model.safetensors'), tensors, { format: 'pt' });
  writeFileAtomic(join(out, 'config.json'), JSON.stringify(cfgJson, null, 2) + '\n');
  copyFileSync(join(worldDir, 'tokenizer.json'), join(out, 'tokenizer.json'));
  copyFileSync(join(worldDir, 'tokenizer_config.json'), join(out, 'tokenizer_config.json'));
  writeFileAtomic(join(out, 'training.json'), JSON.stringify(training, null, 2) + '\n');
}
