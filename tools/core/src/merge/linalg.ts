/**
 * Kept so that imports of merge/linalg.js keep working: the one float64
 * linear-algebra module is util/linalg.ts.
 */
export * from '../util/linalg.js';
