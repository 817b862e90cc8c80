/**
 * Models: Hugging Face checkpoints (GPT-2, Llama/Qwen2/Mistral, Mixtral) on
 * the autograd tensors, with hooks and LoRA.
 *
 *   const { model, tokenizer } = loadModel('fixtures/golden/llama');
 *   const { logits } = model.forward(ids, [B, T], { attentionMask, hooks });
 *   model.logprobs(prompts, continuations);          // per-token log-probs
 *   model.generate(prompts, { maxNewTokens: 8 });    // KV cache, greedy/top-p
 *   const lora = model.createLora('edit', ['c_attn'], { r: 8 });
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
export * from './spelling.js';
