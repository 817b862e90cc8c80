export * from './safetensors.js';
export * from './config.js';
export * from './hooks.js';
export * from './lora.js';
export * from './causal-lm.js';
export * from './loader.js';
