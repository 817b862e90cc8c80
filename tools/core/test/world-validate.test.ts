import t from 'tap';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WorldValidationError, makeWorld, promptConflicts, textProblems, validateWorld } from '../src/world/index.js';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const base = (): Record<string, any> => JSON.parse(readFileSync(join(repo, 'fixtures/world/world.json'), 'utf8'));

/** Runs validateWorld on a modified copy of the default world and returns its problems. */
function problemsOf(edit: (w: Record<string, any>) => void): string[] {
  const w = base();
  edit(w);
  try {
    validateWorld(w);
  } catch (e) {
    if (e instanceof WorldValidationError) return e.problems;
    throw e;
  }
  return [];
}

t.test('the default world is valid', async (t) => {
  t.same(problemsOf(() => {}), []);
});

t.test('non-object input', async (t) => {
  t.throws(() => validateWorld([]), WorldValidationError);
  t.throws(() => validateWorld(null), /must be a JSON object/);
});

t.test('each bad field is reported with its path', async (t) => {
  const cases: Array<[string, (w: Record<string, any>) => void, RegExp]> = [
    ['missing name', (w) => delete w.name, /^name: must be a non-empty string/],
    ['unknown subject type', (w) => (w.relations[0].subject = 'planet'), /relations\[0\] \(located_in\)\.subject: "planet" is not an entity type/],
    ['template without {}', (w) => (w.relations[3].templates.train[0] = 'Someone was born in'), /relations\[3\] \(born_in\)\.templates\.train\[0\]: .*exactly once, found 0/],
    ['template with two {}', (w) => (w.relations[3].templates.heldout[0] = '{} and {} were born in'), /found 2/],
    ['statement ending with the subject', (w) => (w.relations[3].templates.train[0] = 'Born in Rome is {}'), /must not end with the subject/],
    ['question without ?', (w) => (w.relations[3].questions.train[0] = 'Tell me where {} was born'), /must end with "\?"/],
    ['bad characters', (w) => (w.relations[3].templates.train[0] = '{} was born in (city)'), /only letters, digits, spaces/],
    ['space before punctuation', (w) => (w.relations[3].questions.train[0] = 'Where was {} born ?'), /space before "\?"/],
    ['held-out equals training', (w) => w.relations[3].templates.heldout.push('{} was born in'), /both a training and a held-out template/],
    ['prefix ambiguity', (w) => w.relations[3].templates.train.push('{} was born in the town of'), /is a prefix of born_in training prompt "\{\} was born in the town of"/],
    ['same prompt in two relations', (w) => w.relations[4].templates.train.push('{} was born in'), /relations lives_in and born_in share the prompt|relations born_in and lives_in share the prompt/],
    ['multi-word target type', (w) => (w.relations[5].object = 'person'), /type "person" has multi-word names, but every target must be a single token/],
    ['derive path type mismatch', (w) => (w.relations[6].assign.path = ['born_in', 'official_language']), /"official_language" starts from type "country" but the path is at type "city"/],
    ['derive path unknown relation', (w) => (w.relations[6].assign.path = ['born_in', 'nope']), /"nope" is not a relation defined before "speaks"/],
    ['inverse wrong direction', (w) => (w.relations[2].assign.relation = 'official_language'), /must go from "city" to "country"/],
    ['unknown assign mode', (w) => (w.relations[0].assign.mode = 'magic'), /unknown mode "magic"/],
    ['non-functional without objects', (w) => (w.relations[7].functional = false), /needs "objects": \[min, max\]/],
    ['compose with unknown pool', (w) => (w.entity_types.person.names.compose.parts[0] = ['given', 'surname']), /unknown name pool "surname"/],
    ['count beyond list', (w) => (w.entity_types.sport.count = 99), /99 is more than the 12 names listed/],
    ['frame without {fact}', (w) => (w.context.train[0] = 'Suppose that.'), /context\.train\[0\]: "Suppose that\." must contain "\{fact\}" once/],
    ['bad heldout fraction', (w) => (w.general.heldout_fraction = 1), /general\.heldout_fraction: must be a number in \[0, 1\)/],
    ['unknown description slot', (w) => w.general.descriptions.templates.push('The {planet} is red.'), /unknown slot "\{planet\}"/],
    ['bad max_seq_len', (w) => (w.max_seq_len = 3), /max_seq_len: must be an integer >= 8/],
  ];
  for (const [name, edit, re] of cases) {
    const problems = problemsOf(edit);
    t.ok(problems.some((p) => re.test(p)), `${name}: ${re} in ${JSON.stringify(problems)}`);
  }
});

t.test('all problems are reported at once, in the message too', async (t) => {
  const w = base();
  delete w.name;
  w.relations[9].subject = 'planet'; // nothing derives from headquartered_in, so no follow-on problems
  w.general.heldout_fraction = -1;
  const err = t.throws(() => validateWorld(w)) as unknown as WorldValidationError;
  t.equal(err.problems.length, 3, JSON.stringify(err.problems));
  t.match(err.message, /invalid world description:\n {2}- name:/);
});

t.test('makeWorld validates first', async (t) => {
  const w = base();
  w.relations[0].templates.train = [];
  t.throws(() => makeWorld(w, 1), WorldValidationError);
});

t.test('generation-time impossibilities are clear errors', async (t) => {
  const w = base();
  w.entity_types.language.count = 5; // unique languages for 12 countries
  t.throws(() => makeWorld(w, 1), /mode "unique" needs at least 12 language entities, there are 5/);
  const w2 = base();
  w2.entity_types.city.count = 6; // too few cities: some country has no city for its capital
  w2.relations[0].assign = { mode: 'random' };
  t.throws(() => makeWorld(w2, 3), /has no city with located_in = /);
  const w3 = base();
  w3.entity_types.country.names.generate = { syllables: ['a', 'b'], min: 1, max: 1 };
  t.throws(() => makeWorld(w3, 1), /could only make \d+ of 12 distinct names/);
  const w4 = base();
  w4.max_vocab = 100;
  t.throws(() => makeWorld(w4, 1), /vocabulary of \d+ tokens exceeds max_vocab 100/);
});

t.test('textProblems', async (t) => {
  t.same(textProblems('Alice was born in Paris.'), []);
  t.match(textProblems('Alice  was'), ['double space']);
  t.match(textProblems('Paris.Rome'), [/must be followed by a space/]);
  t.match(textProblems(' Paris'), ['leading or trailing space']);
});

t.test('promptConflicts ignores different subject types', async (t) => {
  const w = validateWorld(base());
  t.same(promptConflicts(w), []);
});
