/** lora-train as a library: the batch loop (lib.ts) and the measuring harness (measure.ts). */
export * from './lib.js';
export * from './measure.js';
