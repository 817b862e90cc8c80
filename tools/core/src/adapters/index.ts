export * from './manifest.js';
export * from './bundle.js';
export * from './synthetic.js';
export { atomicWriteFile, fsyncDir, mkdirDurable, sha256File, sha256Hex, canonicalJson, listFilesRecursive, compareBytes } from './fsio.js';
