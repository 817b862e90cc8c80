export * from './errors.js';
export * from './schema.js';
export * from './normalise.js';
export * from './reader.js';
export * from './writer.js';
// The Arrow codec (ArrowEncoder, decodeBatch) is not re-exported here: it
// imports apache-arrow, about 11 MB of resident memory at load, which every
// tool would then pay even for NDJSON. The reader and the writer load it on
// the first Arrow input or output; import './arrow.js' for direct use.
export * from './templates.js';
