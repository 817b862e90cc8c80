export * from './errors.js';
export * from './schema.js';
export * from './normalise.js';
export * from './arrow.js';
export * from './reader.js';
export * from './writer.js';
