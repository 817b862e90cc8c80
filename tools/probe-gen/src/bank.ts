/**
 * The per-relation template bank: prompts with `{}` for the subject, split
 * into `train` (may be trained on) and `heldout` (only ever tested). Read by
 * core's one templates.json reader (records/templates.ts), which says the
 * accepted shapes.
 */
import { parseTemplates, readTemplates, templateEntryFor, type TemplateEntry, type Templates } from '@catechism/core/records';

export type BankEntry = TemplateEntry;
export type TemplateBank = Templates;

export function parseBank(json: unknown, file: string): TemplateBank {
  return parseTemplates(json, file, '--templates');
}

export function loadBank(file: string): TemplateBank {
  return readTemplates(file, '--templates');
}

/** The bank entry of a fact: by its relation, else by its prompt template. */
export const entryFor = templateEntryFor;
