export * from './validate.js';
export * from './history.js';
export * from './html.js';
export * from './sets.js';
