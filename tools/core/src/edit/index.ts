/**
 * Editing algorithms behind `lora-train`: examples from fact/probe records,
 * LoRA training (SFT, two-phase distillation, forgetting, retention), ROME
 * rank-one edits with cached key statistics, and bundle writing.
 */
export * from './data.js';
export * from './model-util.js';
export * from './lora-train.js';
export * from './rome.js';
export * from './bundle.js';
export * from './quality.js';
export * from './null-space.js';
export * from './method.js';
export * from './lora-method.js';
export * from './rome-method.js';
export * from './methods.js';
export * from './memit.js';
export * from './rank-one-forget.js';
export * from './leace.js';
export * from './steer.js';
export * from './patcher.js';
