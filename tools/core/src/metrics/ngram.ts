/**
 * Fluency as in ROME (Meng et al. 2022, `compute_n_gram_entropy`): for each
 * generated text, the Shannon entropy (bits) of its bigram and trigram
 * frequency distributions, weighted 2/3 and 4/3 and averaged
 * (arithmetically); a corpus's fluency is the mean over its texts. Repetitive
 * (degenerate) text has low entropy. Words are split as NLTK's word
 * tokenizer does for plain text: runs of letters/digits, and each
 * punctuation mark on its own.
 */

export function words(text: string): string[] {
  return text.toLowerCase().match(/[\p{L}\p{N}_'’-]+|[^\s\p{L}\p{N}]/gu) ?? [];
}

/** Entropy in bits of the n-gram frequency distribution of a word list (0 when it has no n-gram). */
export function ngramEntropyBits(tokens: readonly string[], n: number): number {
  const counts = new Map<string, number>();
  for (let i = 0; i + n <= tokens.length; i++) {
    const k = tokens.slice(i, i + n).join('\u0000');
    counts.set(k, (counts.get(k) ?? 0) + 1);
  }
  let total = 0;
  for (const c of counts.values()) total += c;
  if (total === 0) return 0;
  let h = 0;
  for (const c of counts.values()) {
    const p = c / total;
    h -= p * Math.log2(p);
  }
  return h;
}

/** ROME's weighted n-gram entropy of one text. */
export function nGramEntropy(text: string, ns: readonly number[] = [2, 3], weights: readonly number[] = [2 / 3, 4 / 3]): number {
  if (ns.length !== weights.length) throw new RangeError('nGramEntropy: one weight per n');
  const w = words(text);
  let s = 0;
  ns.forEach((n, i) => (s += weights[i] * ngramEntropyBits(w, n)));
  return s / ns.length;
}

/** Mean weighted n-gram entropy over texts (NaN for none). */
export function fluency(texts: readonly string[]): number {
  if (texts.length === 0) return NaN;
  let s = 0;
  for (const t of texts) s += nGramEntropy(t);
  return s / texts.length;
}
