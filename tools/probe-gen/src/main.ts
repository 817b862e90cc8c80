#!/usr/bin/env node
/**
 * probe-gen: facts in (fact records, CounterFact or zsRE), each fact and its
 * probes out; every other record passes through in order.
 */
import { packageVersion, runTool } from '@catechism/core/cli';
import type { AnyRecord } from '@catechism/core/records';
import { expandRecord } from './probes.js';

interface Args {
  passthrough: boolean;
  facts: boolean;
}

await runTool<Args>({
  name: 'probe-gen',
  version: packageVersion(import.meta.url),
  describe:
    'Turns facts into probes: for each fact, writes the fact (normalised) and then one "edit" probe ' +
    '(the prompt with the subject filled in, target = target_new, expect "new"; for op "forget": target = target_true, expect "abstain"). ' +
    'CounterFact and zsRE records are accepted as facts. Other records pass through unchanged, in order.',
  examples: [
    ['probe-gen facts.ndjson > probes.ndjson', 'probes for the facts in a file'],
    ['probe-gen counterfact.json --format arrow > probes.arrow', 'a CounterFact JSON array, written as an Arrow IPC stream'],
    ['cat facts.ndjson | probe-gen --no-facts | head -1', 'only the probes, from stdin'],
    ['probe-gen --passthrough in.arrow > out.ndjson', 'copy records (validated) without generating probes'],
  ],
  options: {
    passthrough: { type: 'boolean', default: false, describe: 'copy every record (normalised and validated) without generating probes' },
    facts: { type: 'boolean', default: true, describe: 'write each fact before its probes (--no-facts: probes only)' },
  },
  async run(ctx) {
    const options = { keepFacts: ctx.args.facts };
    // Batch by batch: the per-record work is synchronous, the awaits are per batch.
    for await (const batch of ctx.readBatches()) {
      ctx.progress.tick(batch.length);
      const out: AnyRecord[] = [];
      for (const { record } of batch) {
        if (ctx.args.passthrough) out.push(record);
        else expandRecord(record, out, options);
      }
      await ctx.out.writeBatch(out);
    }
  },
});
