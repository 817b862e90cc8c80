export * from './probes.js';
export * from './bank.js';
export * from './generator.js';
export * from './paraphraser.js';
