/**
 * The unknown-word rule of every tool that loads a model, in one place:
 * a fact whose answer (target_new, target_true) has a word the model's
 * tokenizer cannot spell is refused (exit 2 naming the fact id, the field
 * and the word) unless --allow-unknown; with --on-bad-record skip it is left
 * out, and so are the probes and loci of it that follow. Unknown words in
 * subjects and prompts get one warning with their count at the end.
 */
import { InputError } from '../records/errors.js';
import type { InputRecord } from '../records/reader.js';
import { SpellingCheck } from '../models/spelling.js';
import type { Tokenizer } from '../models/loader.js';
import type { ToolContext } from './index.js';

export interface SpellingScreen {
  /** Whether to keep this record (false: a refused fact, or a record about one, when skipping). */
  keep(r: InputRecord): boolean;
  /** Logs the warning about subjects and prompts (call once, at the end). */
  finish(): void;
}

export function spellingScreen(ctx: ToolContext<unknown>, tokenizer: Tokenizer): SpellingScreen {
  const check = new SpellingCheck(tokenizer);
  const refused = new Set<string>();
  let allowed = 0;
  return {
    keep(r) {
      const rec = r.record;
      if (rec.kind !== 'fact') return !(typeof rec.fact_id === 'string' && refused.has(rec.fact_id));
      const bad = check.answers(rec as { id?: unknown });
      if (bad.length === 0) return true;
      if (ctx.args['allow-unknown']) {
        allowed++;
        return true;
      }
      refused.add(String(rec.id));
      ctx.reject(r, new InputError(SpellingCheck.message(rec.id, bad[0]), { field: bad[0].field }));
      return false;
    },
    finish() {
      const w = check.summary();
      if (w) ctx.log(w);
      if (allowed > 0) ctx.log(`--allow-unknown: ${allowed} fact(s) kept with answers the tokenizer cannot spell; they never count as a success`);
    },
  };
}
