/**
 * probe-gen's streaming form: one `edit` probe per fact (`--roles edit`).
 * The other roles need the whole stream: generator.ts.
 */
import { isKind, type AnyRecord, type Fact, type Probe } from '@catechism/core/records';

/** The fact's prompt with the subject in place of every `{}`. */
export function fillPrompt(template: string, subject: string): string {
  return template.split('{}').join(subject);
}

/**
 * The edit probe of one fact. An insert teaches the new target (expect `new`;
 * an insert with only target_true teaches that, expect `true`); a forget asks
 * the model to stop producing the true target (expect `abstain`).
 */
export function probesForFact(fact: Fact): Probe[] {
  const forget = fact.op === 'forget';
  const asIs = !forget && fact.target_new === undefined && fact.target_true !== undefined;
  const target = forget || asIs ? fact.target_true : fact.target_new;
  const probe: Probe = {
    kind: 'probe',
    id: `${fact.id}/edit/0`,
    fact_id: fact.id,
    role: 'edit',
    split: 'train',
    prompt: fillPrompt(fact.prompt, fact.subject),
    ...(target !== undefined ? { target } : {}),
    expect: forget ? 'abstain' : asIs ? 'true' : 'new',
  };
  return [probe];
}

export interface ProbeGenOptions {
  /** Also write each fact (normalised) before its probes; default true. */
  keepFacts?: boolean;
}

/** What one input record becomes, appended to `out`: the fact and its probes, or the record itself. */
export function expandRecord(rec: AnyRecord, out: AnyRecord[], options: ProbeGenOptions = {}): void {
  if (!isKind(rec, 'fact')) {
    out.push(rec);
    return;
  }
  if (options.keepFacts ?? true) out.push(rec);
  for (const p of probesForFact(rec)) out.push(p);
}

/**
 * Turns a record stream into facts-and-probes, passing every other record
 * through unchanged and in order. Deterministic: no randomness.
 */
export async function* probeGen(records: AsyncIterable<AnyRecord>, options: ProbeGenOptions = {}): AsyncGenerator<AnyRecord> {
  for await (const rec of records) {
    const out: AnyRecord[] = [];
    expandRecord(rec, out, options);
    yield* out;
  }
}
