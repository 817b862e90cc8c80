// The docs' examples, first half, and the check that every README and --help has some (docs-examples.ts).
import t from 'tap';
import { TOOLS, examples, readmes, runExamples, synopsis } from './docs-examples.js';

t.test('examples are found in every README and --help', async (t) => {
  for (const from of [...readmes.filter((f) => f !== 'tools/adapter-merge/README.md'), ...TOOLS.map((x) => `${x} --help`)]) {
    t.ok(examples.some((e) => e.from.split(' and ').includes(from)), `${from} has examples`);
  }
  t.ok(examples.length >= 30, `${examples.length} examples`);
  t.ok(synopsis('probe-gen [options] [files..]') && synopsis('adapter-merge show ID') && synopsis('lora-train (--out DIR | --registry DIR)'));
  t.notOk(synopsis("probe-gen --roles edit,paraphrase --paraphraser 'my-llm --ndjson' facts.ndjson"));
});

runExamples(1);
