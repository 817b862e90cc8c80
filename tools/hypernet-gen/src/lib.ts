/**
 * hypernet-gen as a library: train a hypernetwork H for one base model and
 * one edited module (train.ts), and turn facts into adapters with it in
 * one forward pass each (apply.ts). The CLI (main.ts) is a thin layer.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { InputError, UsageError, type InputRecord } from '@catechism/core/records';
import { fixturesDir } from '@catechism/core/fixtures';
import { EditDataError, checkFact, inputFacts as checkedInputFacts, loadTemplateBank, readCorpusLines, readNdjson, type EditFact, type Rec, type TemplateBank } from '@catechism/core/edit';

export * from './hypernet.js';
export * from './features.js';
export * from './train.js';
export * from './apply.js';
export * from './refine.js';
export * from './last-site.js';

/**
 * The shipped hypernetwork for a bundled fixture model (fixtures/hypernet/<model>),
 * or undefined when there is none.
 */
export function shippedHypernet(modelDir: string): string | undefined {
  let fx: string;
  try {
    fx = fixturesDir();
  } catch {
    return undefined;
  }
  const rel = path.relative(path.join(fx, 'models'), path.resolve(modelDir));
  if (rel === '' || rel.startsWith('..') || path.isAbsolute(rel)) return undefined;
  const dir = path.join(fx, 'hypernet', rel);
  return fs.existsSync(path.join(dir, 'hypernet.json')) ? dir : undefined;
}

export function loadTemplates(file: string | undefined): TemplateBank | null {
  return file ? loadTemplateBank(file) : null;
}

export function readLines(file: string | undefined, limit = 50000): string[] {
  return file ? readCorpusLines(file, limit) : [];
}

export function readFacts(file: string | undefined): Rec[] {
  return file ? readNdjson(file) : [];
}

/** The insert facts of the input, checked (record number and field on error); forget facts and duplicate ids are refused. */
export function inputFacts(inputs: readonly InputRecord[]): EditFact[] {
  return checkedInputFacts(inputs, {
    ops: ['insert'],
    why: (f) => `fact ${f.id}: hypernet-gen writes insert edits (H generates the value of target_new); forget it with lora-train`,
  }).map((x) => x.fact);
}

/** Training edits from a file of fact records (insert, with target_new); errors name the line. */
export function trainingFacts(file: string): EditFact[] {
  if (!fs.existsSync(file)) throw new UsageError(`--facts ${file}: no such file`);
  return readNdjson(file).map((r, i) => {
    try {
      const f = checkFact(r);
      if (f.op !== 'insert') throw new EditDataError(`fact ${f.id}: training edits are inserts`, { field: 'op' });
      return f;
    } catch (e) {
      if (e instanceof EditDataError) throw new InputError(e.message, { source: file, record: i + 1, ...(e.where?.field ? { field: e.where.field } : {}) });
      throw e;
    }
  });
}
