import t from 'tap';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Tokenizer } from '@huggingface/tokenizers';
import { EOS_TOKEN, PAD_TOKEN, UNK_TOKEN, WorldTokenizer, buildTokenizer, preTokenize } from '../src/world/index.js';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const dir = join(repo, 'fixtures/world');
const tokJson = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8'));
const tokConfig = JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8'));
const hf = new Tokenizer(tokJson, tokConfig);
const vocabList: string[] = [];
for (const [tok, id] of Object.entries<number>(tokJson.model.vocab)) vocabList[id] = tok;
const ours = new WorldTokenizer(vocabList);
const lines = (name: string) => readFileSync(join(dir, name), 'utf8').split('\n').filter(Boolean);

t.test('tokenizer.json follows the Hugging Face tokenizers schema', async (t) => {
  t.equal(tokJson.version, '1.0');
  t.same(tokJson.model.type, 'WordLevel');
  t.equal(tokJson.model.unk_token, UNK_TOKEN);
  t.same(tokJson.pre_tokenizer.type, 'Sequence');
  t.same(tokJson.pre_tokenizer.pretokenizers.map((p: { type: string }) => p.type), ['WhitespaceSplit', 'Metaspace', 'Punctuation']);
  t.match(tokJson.pre_tokenizer.pretokenizers[1], { replacement: '\u2581', prepend_scheme: 'always', split: false });
  t.match(tokJson.pre_tokenizer.pretokenizers[2], { behavior: 'Isolated' });
  t.match(tokJson.decoder, { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'always' });
  for (const k of ['truncation', 'padding', 'normalizer', 'post_processor']) t.equal(tokJson[k], null, `${k} is null`);
  // ids are dense 0..n-1, specials first and marked special
  const ids = Object.values<number>(tokJson.model.vocab).sort((a, b) => a - b);
  t.same(ids, ids.map((_, i) => i), 'vocabulary ids are 0..n-1');
  t.same(
    tokJson.added_tokens.map((a: { id: number; content: string; special: boolean }) => [a.id, a.content, a.special]),
    [[0, EOS_TOKEN, true], [1, PAD_TOKEN, true], [2, UNK_TOKEN, true]],
  );
  for (const a of tokJson.added_tokens) t.equal(tokJson.model.vocab[a.content], a.id, `${a.content} is in the model vocabulary with the same id`);
  t.ok(vocabList.length <= 1500, `${vocabList.length} tokens`);
  t.match(tokConfig, { eos_token: EOS_TOKEN, pad_token: PAD_TOKEN, unk_token: UNK_TOKEN, model_max_length: 48 });
});

t.test('@huggingface/tokenizers encodes the whole corpus like our pre-tokenizer and decodes it back', async (t) => {
  const texts = [
    ...lines('train.txt'),
    ...lines('eval/facts-heldout.ndjson').map((l) => JSON.parse(l)).map((p) => `${p.prompt} ${p.target}`),
    ...lines('eval/context.ndjson').map((l) => JSON.parse(l)).map((p) => `${p.prompt} ${p.target}`),
    ...lines('eval/general.ndjson').map((l) => JSON.parse(l).prompt),
  ];
  let mismatched = 0;
  let unknown = 0;
  let notRoundTrip = 0;
  const unk = hf.token_to_id(UNK_TOKEN);
  for (const text of texts) {
    const enc = hf.encode(text);
    if (JSON.stringify(enc.ids) !== JSON.stringify(ours.encode(text))) mismatched++;
    if (enc.ids.includes(unk as number)) unknown++;
    if (hf.decode(enc.ids) !== text || ours.decode(enc.ids) !== text) notRoundTrip++;
  }
  t.equal(mismatched, 0, `${texts.length} texts: same ids from tokenizers.js and WorldTokenizer`);
  t.equal(unknown, 0, 'no <unk> anywhere in the corpus or eval sets');
  t.equal(notRoundTrip, 0, 'decode(encode(text)) === text');
});

t.test('specific encodings', async (t) => {
  const enc = hf.encode('Q: Where was Zzyzx born? A:');
  t.same(enc.tokens, ['\u2581Q', ':', '\u2581Where', '\u2581was', '\u2581Zzyzx', '\u2581born', '?', '\u2581A', ':']);
  t.equal(enc.ids[4], hf.token_to_id(UNK_TOKEN), 'an unknown word gets the <unk> id');
  t.same(ours.encode('Q: Where was Zzyzx born? A:'), enc.ids);
  t.equal(hf.token_to_id(EOS_TOKEN), 0);
  const withEos = hf.encode(`5 plus 9 is 14.${EOS_TOKEN}`);
  t.equal(withEos.ids[withEos.ids.length - 1], 0, 'the end-of-text token is recognised inside text');
  t.equal(hf.decode(withEos.ids, { skip_special_tokens: true }), '5 plus 9 is 14.');
  // a target after its prompt is the same single token as the target alone
  const prompt = hf.encode('5 plus 9 is').ids;
  const full = hf.encode('5 plus 9 is 14').ids;
  t.same(full.slice(0, prompt.length), prompt);
  t.equal(full.length, prompt.length + 1);
  t.same(hf.encode('14').ids, full.slice(-1));
});

t.test('buildTokenizer and preTokenize on their own', async (t) => {
  t.same(preTokenize('Hi, you.  Yes?'), ['\u2581Hi', ',', '\u2581you', '.', '\u2581Yes', '?']);
  t.same(preTokenize('a?!'), ['\u2581a', '?', '!'], 'each punctuation mark is its own piece');
  const built = buildTokenizer(['b a.', 'c a?'], 16);
  t.same(built.vocab, [EOS_TOKEN, PAD_TOKEN, UNK_TOKEN, '.', '?', '\u2581a', '\u2581b', '\u2581c']);
  const tk = new Tokenizer(built.tokenizer, built.config);
  t.same(tk.encode('c b a.').ids, [7, 6, 5, 3]);
  t.equal(tk.decode([7, 6, 5, 3]), 'c b a.');
  t.same(buildTokenizer(['c a?', 'b a.'], 16).tokenizer, built.tokenizer, 'vocabulary order does not depend on input order');
});
