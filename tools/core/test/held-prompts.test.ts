/**
 * Prompts an edit holds to the base model: never one the stream tests with
 * (data.ts, testedPrompts, which LoRA's retention and ROME's keep prompts and
 * key refit leave out), and which known facts ROME keeps (rome-method.ts,
 * romeKeepPrompts): the relation's other subjects, those sharing a word of the
 * subject first; the patcher's value fit keeps those and the subject's other
 * facts (patcher.ts, patcherKeepPrompts).
 */
import t from 'tap';
import { romeKeepPrompts } from '../src/edit/rome-method.js';
import { patcherKeepPrompts } from '../src/edit/patcher.js';
import { romeForgetHeldAndMonitor, romeForgetMonitor } from '../src/edit/rank-one-forget.js';
import { subjectsOtherFacts, testedPrompts, untested, type EditFact, type Rec } from '../src/edit/data.js';

const known: Rec[] = [
  { subject: 'Ana Tel', relation: 'plays', prompt: '{} plays the', target_true: 'oboe' },
  { subject: 'Bo Ruk', relation: 'plays', prompt: '{} plays the', target_true: 'cello' },
  { subject: 'Cy Tel', relation: 'plays', prompt: '{} plays the', target_true: 'harp' },
  { subject: 'Gu Mor', relation: 'plays', prompt: '{} plays the', target_true: 'oboe' },
  { subject: 'Fa Lin', relation: 'speaks', prompt: '{} speaks', target_true: 'Ris' },
  { subject: 'Gu Tel', relation: 'plays', prompt: '{} plays the', target_true: 'oboe' },
];
const fact: EditFact = { id: 'f1', subject: 'Gu Tel', relation: 'plays', prompt: '{} plays the', op: 'forget', target_true: 'oboe' };

t.test('the relation\'s other subjects, those sharing a word first; never the subject itself or another relation', async (t) => {
  t.same(romeKeepPrompts(known, fact, 10), ['Ana Tel plays the', 'Cy Tel plays the', 'Gu Mor plays the', 'Bo Ruk plays the']);
  t.same(romeKeepPrompts(known, fact, 2), ['Ana Tel plays the', 'Cy Tel plays the'], 'n caps it');
});

t.test('a prompt the stream tests with is never held; the next one takes its place', async (t) => {
  const avoid = new Set(['Cy Tel plays the', 'Gu Mor plays the']);
  t.same(romeKeepPrompts(known, fact, 3, avoid), ['Ana Tel plays the', 'Bo Ruk plays the']);
  t.same(romeKeepPrompts(known, fact, 3, new Set()), romeKeepPrompts(known, fact, 3), 'an empty set avoids nothing');
});

t.test('testedPrompts: the test-split probes of the batch\'s own facts, every role', async (t) => {
  const probes: Rec[] = [
    { kind: 'probe', fact_id: 'f1', role: 'neighborhood', split: 'test', prompt: 'Ana Tel plays the' },
    { kind: 'probe', fact_id: 'f1', role: 'paraphrase', split: 'test', prompt: 'Gu Tel is a player of the' },
    { kind: 'probe', fact_id: 'f1', role: 'neighborhood', split: 'train', prompt: 'Gu Mor plays the' },
    { kind: 'probe', fact_id: 'f2', role: 'neighborhood', split: 'test', prompt: 'Bo Ruk plays the' },
  ];
  t.same([...testedPrompts({ facts: [fact], probes })].sort(), ['Ana Tel plays the', 'Gu Tel is a player of the']);
  t.same([...testedPrompts({ facts: [fact], probes: [] })], [], 'no probes: nothing to leave out');
  t.same(untested(['Bo Ruk plays the', 'Ana Tel plays the', 'Cy Tel plays the'], testedPrompts({ facts: [fact], probes })), ['Bo Ruk plays the', 'Cy Tel plays the'], 'untested keeps the rest in order');
});

t.test('the patcher keeps ROME\'s prompts and the subject\'s other facts, never a tested one', async (t) => {
  const withOwn: Rec[] = [...known, { subject: 'Gu Tel', relation: 'speaks', prompt: '{} speaks', target_true: 'Ris' }];
  t.same(patcherKeepPrompts(withOwn, fact, null, new Set()), ['Ana Tel plays the', 'Cy Tel plays the', 'Gu Mor plays the', 'Bo Ruk plays the', 'Gu Tel speaks']);
  t.same(patcherKeepPrompts(withOwn, fact, null, new Set(['Cy Tel plays the', 'Gu Tel speaks'])), ['Ana Tel plays the', 'Gu Mor plays the', 'Bo Ruk plays the']);
});

t.test('a ROME forget\'s monitor: other subjects with the forgotten answer, name-sharers first, by prompt then phrasing; never an avoided prompt', async (t) => {
  const templates = { train: new Map([['plays', ['{} plays the', '{} is a player of the']]]), heldout: new Map<string, string[]>() };
  const withStranger: Rec[] = [{ subject: 'Zo Pim', relation: 'plays', prompt: '{} plays the', target_true: 'oboe' }, ...known];
  t.same(romeForgetMonitor(withStranger, templates, fact, new Set()),
    ['Ana Tel plays the', 'Gu Mor plays the', 'Zo Pim plays the', 'Ana Tel is a player of the', 'Gu Mor is a player of the', 'Zo Pim is a player of the'],
    'Bo Ruk and Cy Tel answer otherwise, Fa Lin is another relation, Gu Tel is the fact; Zo Pim shares no word: last');
  t.same(romeForgetMonitor(withStranger, templates, fact, new Set(['Ana Tel plays the', 'Zo Pim is a player of the'])),
    ['Gu Mor plays the', 'Zo Pim plays the', 'Ana Tel is a player of the', 'Gu Mor is a player of the']);
  t.same(romeForgetMonitor(known, null, fact, new Set(), 1), ['Ana Tel plays the'], 'n caps it; no templates: the prompts only');
});

t.test('a ROME forget\'s held answer holders: every other prompt of the monitor\'s list, never one the monitor reads nor an avoided one', async (t) => {
  const templates = { train: new Map([['plays', ['{} plays the', '{} is a player of the']]]), heldout: new Map<string, string[]>() };
  const withStranger: Rec[] = [{ subject: 'Zo Pim', relation: 'plays', prompt: '{} plays the', target_true: 'oboe' }, ...known];
  const all = romeForgetMonitor(withStranger, templates, fact, new Set());
  const { held, monitor } = romeForgetHeldAndMonitor(withStranger, templates, fact, new Set(), 2);
  t.same(held, [all[0], all[2]], 'the 1st and 3rd: a name-sharer\'s prompt and the stranger\'s');
  t.same(monitor, [all[1], ...all.slice(3)], 'the monitor reads the rest, in order');
  t.same(romeForgetHeldAndMonitor(withStranger, templates, fact, new Set(), 0), { held: [], monitor: all }, 'hold 0: the monitor as before');
  const avoid = new Set(['Ana Tel plays the']);
  const a = romeForgetHeldAndMonitor(withStranger, templates, fact, avoid, 10);
  t.notOk([...a.held, ...a.monitor].some((p) => avoid.has(p)), 'an avoided (tested or kept) prompt is neither held nor read');
  t.same(a.held.length, 3, 'every other one of the five left');
  t.same(romeForgetHeldAndMonitor(withStranger, templates, fact, new Set(), 10, 1).monitor.length, 1, 'monitorN caps the monitor');
});

t.test('subjectsOtherFacts: the subject\'s facts of other relations, each prompt and training phrasing once; never the fact\'s relation or another subject', async (t) => {
  const templates = { train: new Map([['speaks', ['{} speaks', 'The native language of {} is']], ['lives', ['{} lives in']]]), heldout: new Map<string, string[]>() };
  const withOwn: Rec[] = [
    ...known,
    { subject: 'Gu Tel', relation: 'speaks', prompt: '{} speaks', target_true: 'Ris' },
    { subject: 'Gu Tel', relation: 'lives', prompt: 'The home of {} is in', target_true: 'Vel' },
    { subject: 'Gu Tel', relation: 'plays', prompt: '{} can play the', target_true: 'oboe' },
  ];
  t.same(subjectsOtherFacts(withOwn, templates, fact), ['Gu Tel speaks', 'The native language of Gu Tel is', 'The home of Gu Tel is in', 'Gu Tel lives in']);
  t.same(subjectsOtherFacts(withOwn, null, fact), ['Gu Tel speaks', 'The home of Gu Tel is in'], 'no templates: the prompts only');
  t.same(subjectsOtherFacts(known, templates, fact), [], 'no other facts of the subject: nothing');
});
