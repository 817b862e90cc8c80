import t from 'tap';
import { Tokenizer } from '@huggingface/tokenizers';
import { makeWorld } from '../src/world/index.js';

// A different world: books, authors, publishers — with a non-functional
// relation, a derived one, listed and composed names, shorter sequences.
const library = {
  name: 'library',
  max_seq_len: 32,
  max_vocab: 300,
  name_pools: {
    given: { count: 8, names: { list: ['Ada', 'Ben', 'Cleo', 'Dan', 'Eva', 'Finn', 'Gus', 'Hana'] } },
    family: { count: 10, names: { generate: { syllables: ['mor', 'tal', 'ven', 'os', 'ric', 'ard'], min: 2, max: 2 } } },
  },
  entity_types: {
    author: { count: 20, names: { compose: { parts: [['given', 'family']] } } },
    book: { count: 30, names: { generate: { syllables: ['ka', 'lo', 'mi', 'ter', 'zu', 'pan'], min: 2, max: 3 } }, describe: ['{} is a book.'] },
    genre: { names: { list: ['mystery', 'poetry', 'history', 'romance', 'fantasy', 'travel'] } },
    publisher: { count: 5, names: { generate: { syllables: ['ox', 'bell', 'gate', 'ham'], min: 2, max: 2, suffixes: ['press'] } } },
    town: { names: { list: ['Aldby', 'Brill', 'Corth', 'Dunmere', 'Elstow', 'Fenwick', 'Gorley', 'Hythe'] } },
  },
  relations: [
    {
      name: 'genre_of', subject: 'book', object: 'genre', assign: { mode: 'random' },
      templates: { train: ['{} is a book of', 'The genre of {} is'], heldout: ['The book {} belongs to the genre'] },
      questions: { train: ['What genre is {}?'], heldout: [] },
    },
    {
      name: 'published_by', subject: 'book', object: 'publisher', assign: { mode: 'balanced' },
      templates: { train: ['{} was published by', 'The publisher of {} is'], heldout: ['{} came out from'] },
    },
    {
      name: 'based_in', subject: 'publisher', object: 'town', assign: { mode: 'unique' },
      templates: { train: ['{} is based in', 'The offices of {} are in'], heldout: ['{} has offices in'] },
    },
    {
      name: 'printed_in', subject: 'book', object: 'town', assign: { mode: 'derive', path: ['published_by', 'based_in'] },
      templates: { train: ['{} was printed in'], heldout: ['The town where {} was printed is'] },
    },
    {
      name: 'lives_in', subject: 'author', object: 'town', assign: { mode: 'random' }, coverage: 0.5,
      templates: { train: ['{} lives in', 'The home of {} is'], heldout: ['{} has a home in'] },
    },
    {
      name: 'likes', subject: 'author', object: 'genre', functional: false, objects: [1, 3], assign: { mode: 'random' },
      templates: { train: ['{} likes to read', 'A favourite genre of {} is'], heldout: ['{} enjoys reading'] },
    },
  ],
  question_format: 'Question: {q} Answer:',
  context: { train: ['Recall that {fact}.'], heldout: [] },
  corpus: { bios: 20, context_docs: 60 },
  eval: { paraphrase_per_fact: 1, context: 10 },
  edits: { counterfactual: 5, forget: 2 },
  general: { documents: 60, heldout_fraction: 0.2, arithmetic: { max: 5 }, counting: { max: 12, min_length: 2, max_length: 4 } },
};

t.test('a small alternative world generates, tokenizes and is deterministic', async (t) => {
  const a = makeWorld(library, 7);
  const b = makeWorld(structuredClone(library), 7);
  for (const [name, text] of a.files) t.equal(b.files.get(name), text, `${name} identical for the same seed`);
  t.not(makeWorld(library, 8).files.get('facts.ndjson'), a.files.get('facts.ndjson'), 'another seed, another world');
  t.notOk(a.files.has('eval/context-heldout-frames.ndjson'), 'no held-out frames, no such eval file');

  const s = a.stats;
  t.same(s.entities, { author: 20, book: 30, genre: 6, publisher: 5, town: 8 });
  t.equal(s.relations.lives_in, 10, 'coverage 0.5 of 20 authors');
  t.ok(s.relations.likes >= 20 && s.relations.likes <= 60, `non-functional likes: ${s.relations.likes} facts for 20 authors`);
  t.ok(s.corpus.max_tokens <= 32);
  // words of held-out prompts that training never shows are reported (the default world has none)
  t.same(s.heldout_only_words, ['belongs', 'came', 'enjoys', 'has', 'out', 'reading', 'town', 'where']);

  const facts = a.files.get('facts.ndjson')!.trim().split('\n').map((l) => JSON.parse(l));
  const truth = (rel: string, subj: string) => facts.filter((f) => f.relation === rel && f.subject === subj).map((f) => f.target_true);
  for (const book of a.world.entities.get('book')!) {
    t.same(truth('printed_in', book.name), truth('based_in', truth('published_by', book.name)[0]), `${book.name} is printed where its publisher is`);
  }
  const towns = facts.filter((f) => f.relation === 'based_in').map((f) => f.target_true);
  t.equal(new Set(towns).size, towns.length, 'unique: each publisher in its own town');
  const likes = facts.filter((f) => f.relation === 'likes');
  t.ok(likes.every((f) => f.id === `likes:${f.subject.replace(/ /g, '_')}:${f.target_true}`), 'non-functional fact ids carry the object');

  const probes = a.files.get('eval/facts-train.ndjson')!.trim().split('\n').map((l) => JSON.parse(l));
  const likeProbe = probes.find((p) => p.relation === 'likes');
  t.same([...likeProbe.accept].sort(), truth('likes', likeProbe.subject).sort(), 'non-functional probes list every accepted answer');
  t.ok(probes.some((p) => p.prompt.startsWith('Question: ') && p.prompt.endsWith(' Answer:')), 'question format applied');

  const tok = new Tokenizer(JSON.parse(a.files.get('tokenizer.json')!), JSON.parse(a.files.get('tokenizer_config.json')!));
  const unk = tok.token_to_id('<unk>');
  for (const line of a.files.get('train.txt')!.trim().split('\n')) {
    const ids = tok.encode(line).ids;
    if (ids.includes(unk!) || tok.decode(ids) !== line || ids.length + 1 > 32) t.fail(`bad document "${line}"`);
  }
  for (const f of facts) if (tok.encode(f.target_true).ids.length !== 1) t.fail(`target ${f.target_true} is not one token`);
  t.ok(tok.get_vocab().size <= 300);
});

t.test('the alternative world rejects a multi-word target type', async (t) => {
  const bad = structuredClone(library) as any;
  bad.relations.push({
    name: 'written_by', subject: 'book', object: 'author', assign: { mode: 'random' },
    templates: { train: ['{} was written by'], heldout: [] },
  });
  t.throws(() => makeWorld(bad, 1), /written_by\)\.object: type "author" has multi-word names/);
});
