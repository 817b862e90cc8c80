/**
 * Words a model's tokenizer cannot spell. A word-level tokenizer (the
 * fixture model's) turns every word outside its vocabulary into one unknown
 * token (`<unk>`); training on it teaches "<unk>", and scoring it counts any
 * unknown word as the answer. So an answer with an unknown word is refused
 * (DESIGN: "an answer the tokenizer cannot spell is an error, never a silent
 * <unk>"), and an `<unk>` target never counts as a success.
 *
 * Byte-level BPE tokenizers (GPT-2, Llama with byte fallback) spell every
 * string: for them these functions always find nothing.
 *
 *   unknownWords(tokenizer, 'The capital is Paris')  // → ['Paris'] on the fixture model
 *   if (hasUnknownToken(tokenizer, targetIds)) …      // validate: not a success
 */
import * as fs from 'node:fs';
import type { Tokenizer } from './loader.js';

const unkIds = new WeakMap<Tokenizer, number | null>();

/** The id of the tokenizer's unknown token (tokenizer.json's model.unk_token), or null when it has none. */
export function unknownTokenId(tokenizer: Tokenizer): number | null {
  const known = unkIds.get(tokenizer);
  if (known !== undefined) return known;
  let id: number | null = null;
  try {
    const json = JSON.parse(fs.readFileSync(tokenizer.file, 'utf-8')) as { model?: { unk_token?: unknown } };
    const unk = json.model?.unk_token;
    if (typeof unk === 'string') id = tokenizer.tokenToId(unk) ?? null;
  } catch {
    // Tokenizer.load has read this file already; a tokenizer without one has no unknown token
  }
  unkIds.set(tokenizer, id);
  return id;
}

/** Whether token ids contain the tokenizer's unknown token. */
export function hasUnknownToken(tokenizer: Tokenizer, ids: readonly number[]): boolean {
  const unk = unknownTokenId(tokenizer);
  return unk !== null && ids.includes(unk);
}

/**
 * The words of `text` (split on white space, outer punctuation removed)
 * that the tokenizer encodes with its unknown token, in order, each once.
 */
export function unknownWords(tokenizer: Tokenizer, text: string): string[] {
  const unk = unknownTokenId(tokenizer);
  if (unk === null) return [];
  // Fast path: the whole text at once; most texts are fully known.
  if (!tokenizer.encode(` ${text}`, { addSpecialTokens: false }).includes(unk)) return [];
  const out: string[] = [];
  for (const word of text.split(/\s+/)) {
    if (word === '' || out.includes(word)) continue;
    if (!tokenizer.encode(` ${word}`, { addSpecialTokens: false }).includes(unk)) continue;
    // Name the word without the punctuation around it when that is what is unknown.
    const bare = word.replace(/^[\p{P}\p{S}]+|[\p{P}\p{S}]+$/gu, '');
    const shown = bare !== '' && tokenizer.encode(` ${bare}`, { addSpecialTokens: false }).includes(unk) ? bare : word;
    if (!out.includes(shown)) out.push(shown);
  }
  return out;
}

/** Whether the tokenizer spells every word of `text`. */
export function spellsAll(tokenizer: Tokenizer, text: string): boolean {
  const unk = unknownTokenId(tokenizer);
  return unk === null || !tokenizer.encode(` ${text}`, { addSpecialTokens: false }).includes(unk);
}

/** A fact's answer fields with words the tokenizer cannot spell. */
export interface UnknownAnswer {
  field: 'target_new' | 'target_true';
  words: string[];
}

/**
 * Checks facts' spelling for a tool: answers with unknown words are
 * returned (the tool refuses them unless --allow-unknown); unknown words in
 * subjects and prompts are counted for one warning at the end (summary()).
 */
export class SpellingCheck {
  private factsWithUnknownText = 0;
  private unknownTextWords = 0;
  private firstExample: string | null = null;
  constructor(readonly tokenizer: Tokenizer) {}

  /** The answers of `fact` with unknown words (target_new, target_true when present). */
  answers(fact: { subject?: unknown; prompt?: unknown; target_new?: unknown; target_true?: unknown; id?: unknown; [k: string]: unknown }): UnknownAnswer[] {
    const out: UnknownAnswer[] = [];
    for (const field of ['target_new', 'target_true'] as const) {
      const t = fact[field];
      if (typeof t !== 'string') continue;
      const words = unknownWords(this.tokenizer, t);
      if (words.length > 0) out.push({ field, words });
    }
    const text = [fact.subject, typeof fact.prompt === 'string' ? fact.prompt.replace('{}', ' ') : undefined].filter((s): s is string => typeof s === 'string').join(' ');
    const words = unknownWords(this.tokenizer, text);
    if (words.length > 0) {
      this.factsWithUnknownText++;
      this.unknownTextWords += words.length;
      this.firstExample ??= `fact ${JSON.stringify(String(fact.id))}: ${words.slice(0, 5).map((w) => JSON.stringify(w)).join(', ')}`;
    }
    return out;
  }

  /** The error message for an unknown answer (the InputError's detail; its field is `a.field`). */
  static message(factId: unknown, a: UnknownAnswer): string {
    const list = a.words.map((w) => JSON.stringify(w)).join(', ');
    return `fact ${JSON.stringify(String(factId))}: the model's tokenizer cannot spell ${list} (${a.words.length > 1 ? 'they become' : 'it becomes'} its unknown token); use an answer the model can write, or --allow-unknown to go on (never counted as a success)`;
  }

  /** One warning line about unknown words in subjects and prompts, or null when there were none. */
  summary(): string | null {
    if (this.factsWithUnknownText === 0) return null;
    return `warning: ${this.unknownTextWords} word(s) in the subject or prompt of ${this.factsWithUnknownText} fact(s) are unknown to the model's tokenizer (they become its unknown token); first: ${this.firstExample}`;
  }
}
