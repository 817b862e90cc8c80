// Words the fixture model's word-level tokenizer cannot spell become <unk>:
// real CounterFact/zsRE answers ("Paris", "English") are such words.
import t from 'tap';
import { Tokenizer, SpellingCheck, hasUnknownToken, spellsAll, unknownTokenId, unknownWords } from '../dist/models/index.js';
import { defaultModelDir } from '../dist/fixtures/index.js';

const tok = Tokenizer.load(defaultModelDir());

t.test('unknown words of real answers are found and named', async (t) => {
  t.not(unknownTokenId(tok), null);
  t.same(unknownWords(tok, 'Paris'), ['Paris']);
  t.same(unknownWords(tok, 'University of Michigan'), ['University', 'Michigan']);
  t.same(unknownWords(tok, 'in Paris.'), ['Paris'], 'punctuation around the word is not part of the name');
  t.notOk(spellsAll(tok, 'English'));
  t.ok(hasUnknownToken(tok, tok.encode(' Paris', { addSpecialTokens: false })));
});

t.test('words of the fixture world are known', async (t) => {
  t.same(unknownWords(tok, 'Dabe Tensunov works for'), []);
  t.ok(spellsAll(tok, 'Norsynex'));
  t.notOk(hasUnknownToken(tok, tok.encode(' Norsynex', { addSpecialTokens: false })));
});

t.test('SpellingCheck: answers are returned per field, prompt words counted once for the warning', async (t) => {
  const c = new SpellingCheck(tok);
  const bad = c.answers({ id: 'counterfact-0', subject: 'Danielle Darrieux', prompt: 'The mother tongue of {} is', target_new: 'English', target_true: 'French' });
  t.same(bad.map((b) => b.field), ['target_new', 'target_true']);
  t.same(bad[0].words, ['English']);
  t.match(SpellingCheck.message('counterfact-0', bad[0]), /fact "counterfact-0".*"English".*--allow-unknown/);
  t.same(c.answers({ id: 'w', subject: 'Dabe Tensunov', prompt: '{} works for', target_new: 'Norsynex' }), []);
  t.match(c.summary()!, /^warning: \d+ word\(s\) in the subject or prompt of 1 fact\(s\)/);
});
