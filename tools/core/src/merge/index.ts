export * from './linalg.js';
export * from './methods.js';
export * from './bundles.js';
export * from './fold.js';
export * from './negation.js';
