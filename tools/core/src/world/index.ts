export * from './types.js';
export { validateWorld, textProblems, promptConflicts } from './validate.js';
export * from './generate.js';
export * from './tokenizer.js';
export * from './corpus.js';
