export * from './records/index.js';
export * from './cli/index.js';
export * from './tensor/index.js';
export * from './models/index.js';
export * from './util/random.js';
