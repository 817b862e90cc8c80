/**
 * The edit methods lora-train offers, one registration line each: the
 * `--method` choices, their options and their --help headings all come from
 * this list. Adding a method is one file exporting an `EditMethod` (see
 * method.ts) and one line here.
 */
import type { EditMethod } from './method.js';
import { loraMethod } from './lora-method.js';
import { romeMethod } from './rome-method.js';
import { alphaeditMethod, memitMethod } from './memit.js';
import { leaceMethod } from './leace.js';
import { steerMethod } from './steer.js';
import { patcherMethod } from './patcher.js';

export const EDIT_METHODS: ReadonlyArray<EditMethod<unknown>> = [
  loraMethod,
  romeMethod,
  memitMethod,
  alphaeditMethod,
  leaceMethod as EditMethod<unknown>,
  steerMethod as EditMethod<unknown>,
  patcherMethod,
];

/** The method registered under `name`, or undefined. */
export function editMethod(name: string): EditMethod<unknown> | undefined {
  return EDIT_METHODS.find((m) => m.name === name);
}
