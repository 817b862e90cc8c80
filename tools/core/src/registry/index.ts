export * from './registry.js';
export * from './governance.js';
export { FileLock, LockTimeoutError, withLock, type LockOptions, type LockOwner } from './lock.js';
