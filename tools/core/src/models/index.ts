/**
 * Models: Hugging Face checkpoints (GPT-2, Llama/Qwen2/Mistral, Mixtral) on
 * the autograd tensors, with hooks and LoRA. Each family's layout is
 * described once in ./arch (module names, weight layout, MLP keys).
 *
 *   const { model, tokenizer } = loadModel('fixtures/golden/llama');
 *   const { logits } = model.forward(ids, [B, T], { attentionMask, hooks });
 *   model.logprobs(prompts, continuations);          // per-token log-probs
 *   model.generate(prompts, { maxNewTokens: 8 });    // KV cache, greedy/top-p
 *   const lora = model.createLora('edit', [model.arch.layer(5).attnOut], { r: 8 });
 *   model.setAdapters([{ adapter: lora }, { adapter: other, scale: -1 }]);
 *   saveLora(dir, lora); loadLora(dir);              // PEFT format
 *
 * Reference outputs: scripts/golden/make_golden.py → fixtures/golden/.
 */
export * from './safetensors.js';
export * from './config.js';
export * from './hooks.js';
export * from './lora.js';
export * from './causal-lm.js';
export * from './loader.js';
export {
  ARCHS, archOf, archForModelType, attentionModules, baseOps, initWeights, mlpModules, mlpOutput, supportedModelTypes, weightRoles, defineArch, swiGluKeys,
  type ArchDescription, type ArchOps, type ArchSpec, type CommonConfig, type DenseMlp, type LayerModules, type WeightRole,
} from './arch/index.js';
export * from './spelling.js';
