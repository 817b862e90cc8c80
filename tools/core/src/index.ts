export * from './records/index.js';
export * from './cli/index.js';
export * from './tensor/index.js';
export * from './models/index.js';
export * from './util/random.js';
export * from './adapters/index.js';
export * from './registry/index.js';
export * from './world/index.js';
