import t from 'tap';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Tokenizer } from '@huggingface/tokenizers';
import { makeWorld } from '../src/world/index.js';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const fixtureDir = join(repo, 'fixtures/world');
const worldJson = (): Record<string, any> => JSON.parse(readFileSync(join(fixtureDir, 'world.json'), 'utf8'));
// the exact command scripts/make-world.mjs records in the README
const COMMAND = 'node scripts/make-world.mjs --world fixtures/world/world.json --seed 1 --out fixtures/world';

const out1 = makeWorld(worldJson(), 1, COMMAND);
const lines = (s: string) => s.split('\n').filter((l) => l !== '');
const records = (name: string): any[] => lines(out1.files.get(name) as string).map((l) => JSON.parse(l));

t.test('same seed → identical bytes; different seed → different world', async (t) => {
  // same seed: the next test compares with the files make-world.mjs wrote in another process
  const other = makeWorld(worldJson(), 2, COMMAND);
  t.not(other.files.get('facts.ndjson'), out1.files.get('facts.ndjson'));
  t.not(other.files.get('entities.json'), out1.files.get('entities.json'));
  t.not(other.files.get('train.txt'), out1.files.get('train.txt'));
});

t.test('committed fixtures are what the generator makes now', async (t) => {
  for (const [name, text] of out1.files) {
    t.ok(readFileSync(join(fixtureDir, name), 'utf8') === text, `fixtures/world/${name} is current (re-run: ${COMMAND})`);
  }
});

const entities: Record<string, string[]> = JSON.parse(out1.files.get('entities.json') as string);
const facts = records('facts.ndjson');
const truth = new Map<string, string>(facts.map((f) => [`${f.relation}|${f.subject}`, f.target_true]));
const templates = JSON.parse(out1.files.get('templates.json') as string);
const train = out1.files.get('train.txt') as string;
const trainLines = lines(train);
const subjectSets: Record<string, Set<string>> = Object.fromEntries(Object.entries(entities).map(([k, v]) => [k, new Set(v)]));

t.test('world size and shape', async (t) => {
  const total = Object.values(entities).reduce((a, l) => a + l.length, 0);
  t.ok(total >= 200 && total <= 600, `a few hundred entities (${total})`);
  t.ok(facts.length >= 1000 && facts.length <= 2000, `1,000–2,000 facts (${facts.length})`);
  t.ok(Object.keys(templates.relations).length >= 8, 'about ten relations');
  const ids = new Set(facts.map((f) => f.id));
  t.equal(ids.size, facts.length, 'fact ids are unique');
  for (const f of facts) {
    if (!(f.kind === 'fact' && f.op === 'insert' && f.source === 'world' && !('target_new' in f) && f.prompt.includes('{}'))) {
      t.fail(`bad fact record ${JSON.stringify(f)}`);
      break;
    }
  }
  t.same(out1.stats.heldout_only_words, [], 'every word of a held-out prompt is seen in training');
  t.same(out1.stats.heldout_extending_train, [], 'no held-out prompt merely extends a training prompt');
  const all = Object.values(entities).flat();
  t.equal(new Set(all).size, all.length, 'entity names are unique across types');
});

t.test('the world is consistent', async (t) => {
  const get = (rel: string, s: string) => truth.get(`${rel}|${s}`);
  for (const city of entities.city) t.ok(entities.country.includes(get('located_in', city) as string), `${city} is in a country`);
  for (const country of entities.country) {
    t.equal(get('located_in', get('capital', country) as string), country, `the capital of ${country} lies in ${country}`);
  }
  const langs = entities.country.map((c) => get('official_language', c));
  t.equal(new Set(langs).size, langs.length, 'every country has its own language');
  let ok = 0;
  for (const p of entities.person) {
    const native = get('official_language', get('located_in', get('born_in', p) as string) as string);
    if (get('speaks', p) === native) ok++;
  }
  t.equal(ok, entities.person.length, 'every person speaks the language of their birth country');
  for (const c of entities.company) t.ok(entities.city.includes(get('headquartered_in', c) as string));
});

t.test('targets are single tokens, subjects 1–3 tokens, documents fit', async (t) => {
  const tok = new Tokenizer(JSON.parse(out1.files.get('tokenizer.json') as string), JSON.parse(out1.files.get('tokenizer_config.json') as string));
  const unk = tok.token_to_id('<unk>');
  const vocab = tok.get_vocab();
  t.ok(vocab.size <= 1500, `vocabulary ${vocab.size} <= 1500`);
  const targets = new Set([...facts.map((f) => f.target_true), ...records('edits.ndjson').map((e) => e.target_new).filter(Boolean)]);
  for (const target of targets) {
    const ids = tok.encode(target).ids;
    if (ids.length !== 1 || ids[0] === unk) t.fail(`target "${target}" is ${JSON.stringify(ids)}`);
  }
  t.pass(`${targets.size} distinct targets are single known tokens`);
  const lengths = new Set<number>();
  for (const s of new Set(facts.map((f) => f.subject))) lengths.add(tok.encode(s).ids.length);
  t.same([...lengths].sort(), [1, 2, 3], 'subjects have 1, 2 and 3 tokens');
  let longest = 0;
  for (const line of trainLines) longest = Math.max(longest, tok.encode(line).ids.length + 1);
  t.ok(longest <= 48, `longest document ${longest} tokens with end-of-text <= 48`);
});

t.test('held-out prompts never occur in the training corpus', async (t) => {
  let checked = 0;
  const bySubjectType: Record<string, string[]> = {};
  for (const [rel, r] of Object.entries<any>(templates.relations)) bySubjectType[rel] = entities[r.subject_type];
  for (const [rel, r] of Object.entries<any>(templates.relations)) {
    t.ok(r.prompts.heldout.length > 0, `${rel} has held-out prompts`);
    for (const p of r.prompts.heldout) {
      t.notOk(r.prompts.train.includes(p), `"${p}" is not also a training prompt`);
      const [a, b] = p.split('{}');
      const candidates = trainLines.filter((l) => l.includes(a) && l.includes(b));
      for (const s of bySubjectType[rel]) {
        const filled = p.replace('{}', s);
        if (candidates.some((l) => l.includes(filled))) t.fail(`"${filled}" occurs in train.txt`);
        checked++;
      }
    }
  }
  t.ok(checked > 1000, `${checked} filled held-out prompts checked`);
  // and the training prompts do occur (the check above is not vacuous)
  const p0 = templates.relations.born_in.prompts.train[0].replace('{}', entities.person[0]);
  t.ok(train.includes(p0), `"${p0}" occurs in train.txt`);
});

t.test('edits are real counterfactuals and forgets', async (t) => {
  const edits = records('edits.ndjson');
  const inserts = edits.filter((e) => e.op === 'insert');
  const forgets = edits.filter((e) => e.op === 'forget');
  t.ok(inserts.length >= 20 && forgets.length >= 5, `${inserts.length} inserts, ${forgets.length} forgets`);
  t.equal(new Set(edits.map((e) => e.id)).size, edits.length, 'edit ids unique');
  t.equal(new Set(edits.map((e) => `${e.relation}|${e.subject}`)).size, edits.length, 'one edit per (subject, relation)');
  for (const e of inserts) {
    const type = templates.relations[e.relation].object_type;
    if (e.target_new === e.target_true || !entities[type].includes(e.target_new) || truth.get(`${e.relation}|${e.subject}`) !== e.target_true) {
      t.fail(`bad counterfactual ${JSON.stringify(e)}`);
    }
  }
  for (const e of forgets) {
    if ('target_new' in e || truth.get(`${e.relation}|${e.subject}`) !== e.target_true) t.fail(`bad forget ${JSON.stringify(e)}`);
  }
});

/** Parses "Subject <statement template> Object" against the training statement templates. */
function parseStatement(text: string): { rel: string; subject: string; object: string } | null {
  for (const [rel, r] of Object.entries<any>(templates.relations)) {
    const subjects = subjectSets[r.subject_type];
    for (const tmpl of r.templates.train as string[]) {
      const [a, b] = tmpl.split('{}');
      for (const v of [a, a.charAt(0).toLowerCase() + a.slice(1)]) {
        if (!text.startsWith(v)) continue;
        const words = text.slice(v.length).split(' ');
        for (let k = 1; k <= 3 && k < words.length; k++) {
          const s = words.slice(0, k).join(' ').replace(/[,.?:;!]$/, '');
          const rest = text.slice(v.length + s.length);
          if (!subjects.has(s) || !rest.startsWith(b + ' ')) continue;
          const object = rest.slice(b.length + 1);
          if (subjectSets[r.object_type].has(object)) return { rel, subject: s, object };
        }
      }
    }
  }
  return null;
}

/** Parses "<prompt filled with subject> Answer." against every training prompt. */
function parseQuery(text: string): { rel: string; subject: string; answer: string } | null {
  const m = /^(.*) (\S+)\.$/.exec(text);
  if (!m) return null;
  for (const [rel, r] of Object.entries<any>(templates.relations)) {
    for (const p of r.prompts.train as string[]) {
      const [a, b] = p.split('{}');
      if (!m[1].startsWith(a) || !m[1].endsWith(b)) continue;
      const s = m[1].slice(a.length, m[1].length - b.length);
      if (subjectSets[r.subject_type].has(s)) return { rel, subject: s, answer: m[2] };
    }
  }
  return null;
}

t.test('in-context documents answer with the in-context fact', async (t) => {
  const frames = (templates.context.train as string[]).map((f) => {
    const [a, b] = f.split('{fact}');
    const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    return new RegExp(`^${esc(a)}(.+?)${esc(b)} (.+)$`);
  });
  // facts under test (edits, in-context eval) are never put in a training context
  const reserved = new Set([
    ...records('edits.ndjson').map((e) => `${e.relation}|${e.subject}`),
    ...records('eval/context.ndjson').map((p) => `${p.relation}|${p.subject}`),
  ]);
  let counterfactual = 0;
  let consistent = 0;
  let distractor = 0;
  for (const line of trainLines) {
    const m = frames.map((re) => re.exec(line)).find(Boolean);
    if (!m) continue;
    const stated = parseStatement(m[1]);
    const query = parseQuery(m[2]);
    if (!stated || !query) {
      t.fail(`cannot parse in-context document "${line}"`);
      continue;
    }
    if (reserved.has(`${stated.rel}|${stated.subject}`)) t.fail(`"${line}" puts a reserved fact in context`);
    if (stated.subject === query.subject && stated.rel === query.rel) {
      if (query.answer !== stated.object) t.fail(`"${line}": answer ${query.answer} ≠ in-context ${stated.object}`);
      if (stated.object === truth.get(`${stated.rel}|${stated.subject}`)) consistent++;
      else counterfactual++;
    } else {
      if (query.answer !== truth.get(`${query.rel}|${query.subject}`)) t.fail(`"${line}": distractor document does not answer with the stored fact`);
      distractor++;
    }
  }
  const kinds = out1.corpus.reduce<Record<string, number>>((a, d) => ((a[d.kind] = (a[d.kind] ?? 0) + 1), a), {});
  t.equal(counterfactual, kinds['context-counterfactual'], `${counterfactual} counterfactual documents parsed`);
  t.equal(consistent, kinds['context-consistent'], `${consistent} consistent documents parsed`);
  t.equal(distractor, kinds['context-distractor'], `${distractor} distractor documents parsed`);
  t.ok(counterfactual > 1000, 'plenty of contradicting documents');
});

t.test('eval sets', async (t) => {
  const ft = records('eval/facts-train.ndjson');
  const fh = records('eval/facts-heldout.ndjson');
  t.equal(ft.length, facts.length, 'one training-template probe per fact');
  for (const p of [...ft, ...fh]) {
    const r = templates.relations[p.relation];
    const pool = p.role === 'edit' ? r.prompts.train : r.prompts.heldout;
    if (p.target !== truth.get(`${p.relation}|${p.subject}`) || !pool.includes(p.template) || p.prompt !== p.template.replace('{}', p.subject)) {
      t.fail(`bad probe ${JSON.stringify(p)}`);
    }
  }
  const ctx = records('eval/context.ndjson');
  t.ok(ctx.length >= 300, `${ctx.length} in-context probes`);
  for (const p of ctx) {
    const stated = parseStatement(p.context.replace(/^[^]*?(?:that |: |, )/, '').replace(/\.$/, ''));
    if (!stated || stated.subject !== p.subject || stated.object !== p.target || p.target === p.target_true || !p.prompt.startsWith(p.context + ' ')) {
      t.fail(`bad in-context probe ${JSON.stringify(p)}`);
    }
  }
  const general = records('eval/general.ndjson');
  t.ok(general.length > 50, `${general.length} held-out general documents`);
  const trainSet = new Set(trainLines);
  t.notOk(general.some((g) => trainSet.has(g.prompt)), 'held-out general documents are not training documents');
});
