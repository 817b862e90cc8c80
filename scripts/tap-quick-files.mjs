// Shared by each package's test/quick.test.ts (the quick test files of a
// package run in one tap process): checks that the files it runs are exactly
// the ones package.json's tap `exclude` keeps tap from running on their own,
// and that each is imported, so no file is excluded without being run.
import { readFileSync } from 'node:fs';

/** `files`: the quick files' names (test/NAME.test.ts); `quickUrl`: the quick test file's import.meta.url. */
export function checkQuickFiles(t, files, quickUrl) {
  t.test('the files run here are the ones tap excludes', async (t) => {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', quickUrl), 'utf8'));
    const excluded = pkg.tap.exclude.filter((p) => p !== 'test/support/**').sort();
    t.same(excluded, files.map((f) => `test/${f}.test.ts`).sort());
    const here = readFileSync(new URL(quickUrl), 'utf8');
    for (const f of files) t.ok(here.includes(`import './${f}.test.js';`), `${f}.test.ts is imported`);
  });
}
