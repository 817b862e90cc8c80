/**
 * A word-level tokenizer for a synthetic world, written in the Hugging Face
 * tokenizer.json format: WordLevel model; pre-tokenizer Sequence of
 * WhitespaceSplit → Metaspace (prepend "▁" to every word) → Punctuation
 * (isolated); Metaspace decoder. Every word of the world is one token, so
 * every fact target is one token, and decode(encode(text)) === text for text
 * in normal form (single spaces, punctuation attached to the word before it).
 */

export const EOS_TOKEN = '<|endoftext|>';
export const PAD_TOKEN = '<pad>';
export const UNK_TOKEN = '<unk>';
export const SPECIAL_TOKENS = [EOS_TOKEN, PAD_TOKEN, UNK_TOKEN] as const;
/** The Metaspace replacement character (U+2581) marking a word start. */
export const WORD_START = '\u2581';

const PUNCT_CLASS = '\\p{P}\\u0021-\\u002F\\u003A-\\u0040\\u005B-\\u0060\\u007B-\\u007E';
// a run of non-punctuation, or one punctuation mark: Punctuation(Isolated) gives each mark its own piece
const PIECE = new RegExp(`[^${PUNCT_CLASS}]+|[${PUNCT_CLASS}]`, 'gu');

/** Splits text the way the tokenizer.json pre-tokenizer does. */
export function preTokenize(text: string): string[] {
  const out: string[] = [];
  for (const word of text.split(/\s+/)) {
    if (word === '') continue;
    const piece = word.startsWith(WORD_START) ? word : WORD_START + word;
    for (const m of piece.match(PIECE) as RegExpMatchArray) out.push(m);
  }
  return out;
}

/** The token a target word becomes when it follows a prompt (" Paris" → "▁Paris"). */
export function targetToken(word: string): string {
  return WORD_START + word;
}

export interface TokenizerFiles {
  /** tokenizer.json contents (Hugging Face tokenizers format) */
  tokenizer: Record<string, unknown>;
  /** tokenizer_config.json contents (special tokens, for transformers and tokenizers.js) */
  config: Record<string, unknown>;
  /** id → token */
  vocab: string[];
}

/** Builds the tokenizer whose vocabulary is every piece of the given texts. */
export function buildTokenizer(texts: Iterable<string>, maxLength: number): TokenizerFiles {
  const pieces = new Set<string>();
  for (const t of texts) for (const p of preTokenize(t)) pieces.add(p);
  for (const s of SPECIAL_TOKENS) pieces.delete(s);
  // stable order: specials, punctuation, then words by code point
  const punct = [...pieces].filter((p) => !p.startsWith(WORD_START)).sort(byCodePoint);
  const words = [...pieces].filter((p) => p.startsWith(WORD_START)).sort(byCodePoint);
  const vocab = [...SPECIAL_TOKENS, ...punct, ...words];
  const vocabObj: Record<string, number> = {};
  vocab.forEach((tok, id) => (vocabObj[tok] = id));
  const metaspace = { type: 'Metaspace', replacement: WORD_START, prepend_scheme: 'always', split: false };
  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: SPECIAL_TOKENS.map((content, id) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [{ type: 'WhitespaceSplit' }, metaspace, { type: 'Punctuation', behavior: 'Isolated' }],
    },
    post_processor: null,
    decoder: metaspace,
    model: { type: 'WordLevel', vocab: vocabObj, unk_token: UNK_TOKEN },
  };
  const config = {
    tokenizer_class: 'PreTrainedTokenizerFast',
    bos_token: EOS_TOKEN,
    eos_token: EOS_TOKEN,
    pad_token: PAD_TOKEN,
    unk_token: UNK_TOKEN,
    model_max_length: maxLength,
    clean_up_tokenization_spaces: false,
  };
  return { tokenizer, config, vocab };
}

function byCodePoint(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Encodes/decodes with a built vocabulary, without going through a JSON parser. */
export class WorldTokenizer {
  readonly ids: Map<string, number>;
  readonly unkId: number;
  constructor(readonly vocab: readonly string[]) {
    this.ids = new Map(vocab.map((t, i) => [t, i]));
    const unk = this.ids.get(UNK_TOKEN);
    if (unk === undefined) throw new Error(`vocabulary has no ${UNK_TOKEN} token`);
    this.unkId = unk;
  }
  encode(text: string): number[] {
    return preTokenize(text).map((p) => this.ids.get(p) ?? this.unkId);
  }
  decode(ids: readonly number[]): string {
    return ids
      .map((id, i) => {
        const tok = this.vocab[id] ?? UNK_TOKEN;
        const s = tok.split(WORD_START).join(' ');
        return i === 0 && s.startsWith(' ') ? s.slice(1) : s;
      })
      .join('');
  }
  /** Number of tokens of a text (no special tokens added). */
  count(text: string): number {
    return preTokenize(text).length;
  }
}
