/**
 * The ROME key refit's held prompts read after context prefixes
 * (rome-method.ts, withPrefixes): which prompts get one, and which.
 */
import t from 'tap';
import { withPrefixes } from '../src/edit/rome-method.js';

const prompts = ['a is', 'b is', 'c is', 'd is', 'e is', 'f is'];
const prefixes = ['News:', 'Note that'];

t.test('share 0 or no prefixes leaves the prompts as they are', async (t) => {
  t.same(withPrefixes(prompts, prefixes, 0), prompts);
  t.same(withPrefixes(prompts, [], 1), prompts);
});

t.test('share 1 reads every prompt after the prefixes in turn', async (t) => {
  t.same(withPrefixes(prompts, prefixes, 1), ['News: a is', 'Note that b is', 'News: c is', 'Note that d is', 'News: e is', 'Note that f is']);
});

t.test('a share spreads the prefixed prompts evenly and keeps the order', async (t) => {
  t.same(withPrefixes(prompts, prefixes, 0.5), ['a is', 'News: b is', 'c is', 'Note that d is', 'e is', 'News: f is']);
  const third = withPrefixes(prompts, prefixes, 1 / 3);
  t.equal(third.filter((p, i) => p !== prompts[i]).length, 2, 'a third of six: two prefixed');
  t.same(third.map((p) => p.replace(/^(News:|Note that) /, '')), prompts, 'the same prompts underneath');
});
