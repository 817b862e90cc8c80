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
