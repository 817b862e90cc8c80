/**
 * The one reader of a template bank (templates.json): per relation, prompts
 * with `{}` for the subject, split into `train` (may be trained on) and
 * `heldout` (only ever tested), plus the world's context frames.
 *
 * Two file shapes are accepted:
 * - the fixture world's templates.json: `{"relations": {"<rel>": {"subject_type", "prompts": {"train": [...], "heldout": [...]}}},
 *   "context": {"train": ["... {fact} ..."]}}` (questions already wrapped in the question format);
 * - a plain map: `{"<rel>": {"train": [...], "heldout": [...], "subject_type"?: "..."}}`.
 *
 * probe-gen and lora-train (`--templates`) both read it here.
 */
import * as fs from 'node:fs';
import { UsageError } from './errors.js';

export interface TemplateEntry {
  relation: string;
  subjectType?: string;
  train: string[];
  heldout: string[];
}

export interface Templates {
  file: string;
  byRelation: Map<string, TemplateEntry>;
  /** Template text → relation, to place facts that carry no `relation` field. */
  byTemplate: Map<string, string>;
  /** Context frames with `{fact}` (the world file's `context.train`), when the file has them. */
  contextFrames?: string[];
}

function strings(v: unknown, where: string, file: string, flag: string, slot = '{}'): string[] {
  if (v === undefined) return [];
  if (!Array.isArray(v) || v.some((s) => typeof s !== 'string')) throw new UsageError(`${flag} ${file}: ${where}: expected an array of strings`);
  for (const [i, s] of (v as string[]).entries()) {
    if (!s.includes(slot)) throw new UsageError(`${flag} ${file}: ${where}[${i}]: template ${JSON.stringify(s)} has no "${slot}" for the ${slot === '{}' ? 'subject' : 'fact'}`);
  }
  return v as string[];
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Reads a parsed templates.json; a bad shape is a UsageError naming `flag`, the file and the path inside it. */
export function parseTemplates(json: unknown, file: string, flag = '--templates'): Templates {
  if (!isObject(json)) throw new UsageError(`${flag} ${file}: expected a JSON object`);
  const world = isObject(json.relations);
  const rels = world ? (json.relations as Record<string, unknown>) : json;
  const bank: Templates = { file, byRelation: new Map(), byTemplate: new Map() };
  for (const [name, raw] of Object.entries(rels)) {
    if (!isObject(raw)) {
      if (!world) continue; // top-level scalars such as "world" or "question_format"
      throw new UsageError(`${flag} ${file}: relations.${name}: expected an object`);
    }
    const split = isObject(raw.prompts) ? raw.prompts : raw;
    const path = raw.prompts ? `${name}.prompts` : name;
    const entry: TemplateEntry = {
      relation: name,
      ...(typeof raw.subject_type === 'string' ? { subjectType: raw.subject_type } : {}),
      train: strings(split.train, `${path}.train`, file, flag),
      heldout: strings(split.heldout, `${path}.heldout`, file, flag),
    };
    if (entry.train.length + entry.heldout.length === 0) continue;
    bank.byRelation.set(name, entry);
    for (const t of [...entry.train, ...entry.heldout]) if (!bank.byTemplate.has(t)) bank.byTemplate.set(t, name);
  }
  if (world && isObject(json.context) && json.context.train !== undefined) {
    bank.contextFrames = strings(json.context.train, 'context.train', file, flag, '{fact}');
  }
  return bank;
}

/** Reads and parses a templates.json file (UsageError when unreadable or malformed). */
export function readTemplates(file: string, flag = '--templates'): Templates {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf-8');
  } catch (e) {
    throw new UsageError(`${flag} ${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new UsageError(`${flag} ${file}: not valid JSON (${(e as Error).message})`);
  }
  return parseTemplates(json, file, flag);
}

/** A fact's entry: by its relation, else by its prompt template. */
export function templateEntryFor(bank: Templates | null, relation: string | undefined, template: string): TemplateEntry | undefined {
  if (!bank) return undefined;
  if (relation !== undefined) {
    const e = bank.byRelation.get(relation);
    if (e) return e;
  }
  const r = bank.byTemplate.get(template);
  return r === undefined ? undefined : bank.byRelation.get(r);
}
