/**
 * The setup the fixture-model test files share: the dense fixture model
 * (LORA_TRAIN_TEST_MODEL names another) with its world's resources, and a
 * scratch directory for bundles and the key-statistics cache, removed when
 * the file ends.
 */
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { defaultModelDir } from '@catechism/core/fixtures';
import { loadResources, type Resources } from '../../src/index.js';

/** The model's resources and the scratch directory, or null (the file is skipped) when the model is absent. */
export function fixtureModel(scratchPrefix: string): { res: Resources; tmp: string } | null {
  const dir = process.env.LORA_TRAIN_TEST_MODEL ?? defaultModelDir();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), scratchPrefix));
  t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
  process.env.CATECHISM_CACHE = path.join(tmp, 'cache');
  if (!fs.existsSync(path.join(dir, 'config.json'))) {
    t.skip(`no fixture model at ${dir} (train it, or set LORA_TRAIN_TEST_MODEL)`);
    return null;
  }
  return { res: loadResources({ model: dir }), tmp };
}
