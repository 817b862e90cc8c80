/**
 * The per-relation template bank: prompts with `{}` for the subject, split
 * into `train` (may be trained on) and `heldout` (only ever tested).
 *
 * Two file shapes are accepted:
 * - the fixture world's templates.json: `{"relations": {"<rel>": {"subject_type", "prompts": {"train": [...], "heldout": [...]}}}}`
 *   (questions already wrapped in the question format);
 * - a plain map: `{"<rel>": {"train": [...], "heldout": [...], "subject_type"?: "..."}}`.
 */
import * as fs from 'node:fs';
import { UsageError } from '@catechism/core/cli';

export interface BankEntry {
  relation: string;
  subjectType?: string;
  train: string[];
  heldout: string[];
}

export interface TemplateBank {
  file: string;
  byRelation: Map<string, BankEntry>;
  /** Template text → relation, to place facts that carry no `relation` field. */
  byTemplate: Map<string, string>;
}

function strings(v: unknown, where: string, file: string): string[] {
  if (v === undefined) return [];
  if (!Array.isArray(v) || v.some((s) => typeof s !== 'string')) throw new UsageError(`--templates ${file}: ${where}: expected an array of strings`);
  for (const [i, s] of (v as string[]).entries()) {
    if (!s.includes('{}')) throw new UsageError(`--templates ${file}: ${where}[${i}]: template ${JSON.stringify(s)} has no "{}" for the subject`);
  }
  return v as string[];
}

export function parseBank(json: unknown, file: string): TemplateBank {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new UsageError(`--templates ${file}: expected a JSON object`);
  const o = json as Record<string, unknown>;
  const rels = (typeof o.relations === 'object' && o.relations !== null ? o.relations : o) as Record<string, unknown>;
  const bank: TemplateBank = { file, byRelation: new Map(), byTemplate: new Map() };
  for (const [name, raw] of Object.entries(rels)) {
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
      if (rels === o) continue; // top-level scalars such as "world" or "question_format"
      throw new UsageError(`--templates ${file}: relations.${name}: expected an object`);
    }
    const r = raw as Record<string, unknown>;
    const split = (typeof r.prompts === 'object' && r.prompts !== null ? r.prompts : r) as Record<string, unknown>;
    const path = r.prompts ? `${name}.prompts` : name;
    const entry: BankEntry = {
      relation: name,
      ...(typeof r.subject_type === 'string' ? { subjectType: r.subject_type } : {}),
      train: strings(split.train, `${path}.train`, file),
      heldout: strings(split.heldout, `${path}.heldout`, file),
    };
    if (entry.train.length + entry.heldout.length === 0) continue;
    bank.byRelation.set(name, entry);
    for (const t of [...entry.train, ...entry.heldout]) if (!bank.byTemplate.has(t)) bank.byTemplate.set(t, name);
  }
  return bank;
}

export function loadBank(file: string): TemplateBank {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf-8');
  } catch (e) {
    throw new UsageError(`--templates ${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new UsageError(`--templates ${file}: not valid JSON (${(e as Error).message})`);
  }
  return parseBank(json, file);
}

/** The bank entry of a fact: by its relation, else by its prompt template. */
export function entryFor(bank: TemplateBank | null, relation: string | undefined, template: string): BankEntry | undefined {
  if (!bank) return undefined;
  if (relation !== undefined) {
    const e = bank.byRelation.get(relation);
    if (e) return e;
  }
  const r = bank.byTemplate.get(template);
  return r === undefined ? undefined : bank.byRelation.get(r);
}
