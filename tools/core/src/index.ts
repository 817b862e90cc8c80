export * from './records/index.js';
export * from './cli/index.js';
export * from './tensor/index.js';
export * from './models/index.js';
export * from './util/random.js';
export * from './adapters/index.js';
export * from './registry/index.js';
// registry/ re-exports these record types of the schema under the names it always used
export type { RefAction, RefEvent, VerifyProblem } from './records/index.js';
export * from './merge/index.js';
export * from './metrics/index.js';
export * from './fixtures/index.js';
export * from './edit/index.js';
export * from './attrib/index.js';
