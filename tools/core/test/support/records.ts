/** Helpers the record tests share (test support: excluded from tap's test files, never shipped). */
import { InputError } from '../../src/records/index.js';

/** The InputError `fn` throws; fails when it returns or throws anything else. */
export function errorOf(fn: () => unknown): InputError {
  try {
    fn();
  } catch (e) {
    if (e instanceof InputError) return e;
    throw e;
  }
  throw new Error('expected an InputError');
}
