/**
 * lookalikePhrasings (lora-train and moe-route-distill --lookalikes): for a
 * forget fact the relation's other subjects with the same old answer come
 * first, then subjects sharing a name token (most shared first); an insert
 * fact gets no same-answer rows; never an edited subject + relation pair;
 * every training phrasing of the chosen facts.
 */
import t from 'tap';
import { lookalikePhrasings } from '../src/edit/quality.js';
import type { EditFact, TemplateBank } from '../src/edit/index.js';

// one token per word is all lookalikePhrasings needs of a tokenizer
const vocab = new Map<string, number>();
const tok = { encode: (s: string) => s.split(/\s+/u).filter(Boolean).map((w) => vocab.get(w) ?? (vocab.set(w, vocab.size), vocab.size - 1)) };
const bank: TemplateBank = {
  train: new Map([['works_for', ['{} works for', '{} is employed by']], ['lives_in', ['{} lives in']]]),
  heldout: new Map([['works_for', ['{} has a job at']], ['lives_in', ['{} resides in']]]),
  contextFrames: [],
};
const known = [
  { subject: 'Rael Berorer', relation: 'works_for', prompt: '{} works for', target_true: 'Norcorex' },
  { subject: 'Rael Berorer', relation: 'lives_in', prompt: '{} lives in', target_true: 'Belport' },
  { subject: 'Sobe Holmor', relation: 'works_for', prompt: '{} works for', target_true: 'Norcorex' },
  { subject: 'Tove Stamten', relation: 'works_for', prompt: '{} works for', target_true: 'Norcorex' },
  { subject: 'Rael Varfeler', relation: 'lives_in', prompt: '{} lives in', target_true: 'Tamharport' },
  { subject: 'Jora Felsunson', relation: 'works_for', prompt: '{} works for', target_true: 'Quocortron' },
];
const forget: EditFact = { id: 'f1', subject: 'Rael Berorer', prompt: '{} works for', relation: 'works_for', target_true: 'Norcorex', op: 'forget' };

t.test('forget: same relation and old answer first, then shared name tokens', async (t) => {
  const two = lookalikePhrasings(known, tok, bank, [forget], 2, 0);
  t.same(new Set(two), new Set(['Sobe Holmor works for', 'Sobe Holmor is employed by', 'Tove Stamten works for', 'Tove Stamten is employed by']), 'the two other Norcorex employees, every training phrasing');
  const three = lookalikePhrasings(known, tok, bank, [forget], 3, 0);
  t.ok(three.includes('Rael Berorer lives in'), 'then the subject\'s own other relation (two shared tokens)');
  const four = lookalikePhrasings(known, tok, bank, [forget], 4, 0);
  t.ok(four.includes('Rael Varfeler lives in'), 'then a subject sharing one token');
  t.notOk(four.some((p) => p.startsWith('Rael Berorer works') || p.startsWith('Rael Berorer is employed')), 'never the edited pair');
  t.notOk(four.some((p) => p.includes('Jora')), 'nothing unrelated');
  t.notOk(four.some((p) => p.includes('has a job at') || p.includes('resides in')), 'never a held-out phrasing');
  t.same(lookalikePhrasings(known, tok, bank, [forget], 0, 0), []);
});

t.test('insert: no same-answer rows, only shared name tokens', async (t) => {
  const insert: EditFact = { ...forget, op: 'insert', target_new: 'Quocortron' };
  const got = lookalikePhrasings(known, tok, bank, [insert], 10, 0);
  t.same(new Set(got), new Set(['Rael Berorer lives in', 'Rael Varfeler lives in']));
});
