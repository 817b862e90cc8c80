export * from './registry.js';
export { FileLock, LockTimeoutError, withLock, type LockOptions, type LockOwner } from './lock.js';
