import { Rng } from '../util/random.js';
import type { NameSpec, SyllableSpec, WorldDescription } from './types.js';

export interface WorldEntity {
  type: string;
  name: string;
  /** position within its type (stable order) */
  index: number;
}

/** One (subject, relation) with its object(s); functional relations have exactly one. */
export interface WorldFact {
  relation: string;
  subject: WorldEntity;
  objects: WorldEntity[];
}

export interface World {
  desc: WorldDescription;
  seed: number;
  entities: Map<string, WorldEntity[]>;
  facts: WorldFact[];
  /** relation → subject name → fact */
  index: Map<string, Map<string, WorldFact>>;
}

const MAX_TRIES_PER_NAME = 200;

function capitalise(s: string): string {
  return s.charAt(0).toUpperCase() + s.slice(1);
}

function syllableName(g: SyllableSpec, rng: Rng): string {
  const n = g.min + rng.int(g.max - g.min + 1);
  let s = '';
  let prev = '';
  for (let i = 0; i < n; i++) {
    let syl = rng.pick(g.syllables);
    while (syl === prev) syl = rng.pick(g.syllables); // "Wickwick" reads badly
    s += syl;
    prev = syl;
  }
  if (g.suffixes && g.suffixes.length > 0) s += rng.pick(g.suffixes);
  return capitalise(s);
}

/** `count` distinct one-word names that avoid every word in `used` (which they are added to). */
function generateNames(what: string, g: SyllableSpec, count: number, used: Set<string>, rng: Rng): string[] {
  const out: string[] = [];
  let tries = 0;
  while (out.length < count) {
    if (++tries > count * MAX_TRIES_PER_NAME) {
      throw new Error(`${what}: could only make ${out.length} of ${count} distinct names from these syllables; add syllables or raise "max"`);
    }
    const name = syllableName(g, rng);
    if (used.has(name) || used.has(name.toLowerCase())) continue;
    used.add(name);
    out.push(name);
  }
  return out;
}

/** Every word used by templates, frames and general text, so generated names never collide with them. */
export function reservedWords(desc: WorldDescription): Set<string> {
  const words = new Set<string>();
  const add = (t: string) => {
    for (const w of t.replace(/\{[^}]*\}/g, ' ').split(/[\s.,?:;!]+/)) if (w) words.add(w);
  };
  for (const r of desc.relations) {
    [...r.templates.train, ...r.templates.heldout, ...(r.questions?.train ?? []), ...(r.questions?.heldout ?? [])].forEach(add);
  }
  [...desc.context.train, ...desc.context.heldout].forEach(add);
  add(desc.question_format ?? '');
  for (const t of Object.values(desc.entity_types)) (t.describe ?? []).forEach(add);
  const d = desc.general.descriptions;
  if (d) {
    d.templates.forEach(add);
    Object.values(d.slots).forEach((v) => v.forEach(add));
  }
  for (const w of ['plus', 'minus', 'is', 'times']) words.add(w);
  return words;
}

/** Makes the entities of every type; names are unique across the whole world. */
export function makeEntities(desc: WorldDescription, rng: Rng): Map<string, WorldEntity[]> {
  const used = reservedWords(desc);
  // listed names are fixed: reserve them first so generated names avoid them
  const listed = (n: NameSpec): n is { list: string[] } => 'list' in n;
  for (const p of Object.values(desc.name_pools ?? {})) if (listed(p.names)) p.names.list.forEach((n) => used.add(n));
  for (const [type, t] of Object.entries(desc.entity_types)) {
    if (!listed(t.names)) continue;
    for (const n of t.names.list.slice(0, t.count ?? t.names.list.length)) {
      if (used.has(n)) throw new Error(`entity_types.${type}: the name "${n}" is also used elsewhere in the world (names must be unique)`);
      used.add(n);
    }
  }
  const pools = new Map<string, string[]>();
  for (const [name, p] of Object.entries(desc.name_pools ?? {})) {
    pools.set(name, listed(p.names) ? p.names.list.slice(0, p.count) : generateNames(`name_pools.${name}`, p.names.generate, p.count, used, rng));
  }
  const out = new Map<string, WorldEntity[]>();
  for (const [type, t] of Object.entries(desc.entity_types)) {
    let names: string[];
    if ('list' in t.names) names = t.names.list.slice(0, t.count ?? t.names.list.length);
    else if ('generate' in t.names) names = generateNames(`entity_types.${type}`, t.names.generate, t.count as number, used, rng);
    else names = composeNames(type, t.names.compose, t.count as number, pools, used, rng);
    out.set(type, names.map((name, index) => ({ type, name, index })));
  }
  return out;
}

function composeNames(
  type: string,
  c: { parts: string[][]; weights?: number[] },
  count: number,
  pools: Map<string, string[]>,
  used: Set<string>,
  rng: Rng,
): string[] {
  const weights = c.weights ?? c.parts.map(() => 1);
  const total = weights.reduce((a, b) => a + b, 0);
  const out: string[] = [];
  const seen = new Set<string>();
  let tries = 0;
  while (out.length < count) {
    if (++tries > count * MAX_TRIES_PER_NAME) {
      throw new Error(`entity_types.${type}: could only compose ${out.length} of ${count} distinct names; enlarge the name pools`);
    }
    let r = rng.uniform() * total;
    let k = 0;
    while (k < weights.length - 1 && r >= weights[k]) r -= weights[k++];
    const words = c.parts[k].map((pool) => rng.pick(pools.get(pool) as string[]));
    if (new Set(words).size !== words.length) continue;
    const name = words.join(' ');
    if (seen.has(name) || used.has(name)) continue;
    seen.add(name);
    out.push(name);
  }
  return out;
}

/** Assigns the objects of every relation, in the order the relations are listed. */
export function makeFacts(desc: WorldDescription, entities: Map<string, WorldEntity[]>, rng: Rng): WorldFact[] {
  const facts: WorldFact[] = [];
  const fn = new Map<string, Map<string, WorldEntity>>(); // functional relation → subject → object
  for (const rel of desc.relations) {
    const r = rng.fork();
    const all = entities.get(rel.subject) as WorldEntity[];
    const objects = entities.get(rel.object) as WorldEntity[];
    let subjects = all;
    if (rel.coverage !== undefined && rel.coverage < 1) {
      const k = Math.max(1, Math.round(rel.coverage * all.length));
      subjects = r.shuffle([...all]).slice(0, k).sort((a, b) => a.index - b.index);
    }
    const functional = rel.functional !== false;
    const map = new Map<string, WorldEntity>();
    const deck = (() => {
      let cards: WorldEntity[] = [];
      return () => {
        if (cards.length === 0) cards = r.shuffle([...objects]);
        return cards.pop() as WorldEntity;
      };
    })();
    const a = rel.assign;
    if (a.mode === 'unique' && objects.length < subjects.length) {
      throw new Error(`relation ${rel.name}: mode "unique" needs at least ${subjects.length} ${rel.object} entities, there are ${objects.length}`);
    }
    const uniqueOrder = a.mode === 'unique' ? r.shuffle([...objects]) : [];
    subjects.forEach((s, i) => {
      let objs: WorldEntity[];
      if (!functional) {
        const [lo, hi] = rel.objects as [number, number];
        const n = Math.min(objects.length, lo + r.int(hi - lo + 1));
        const chosen = new Set<WorldEntity>();
        let guard = 0;
        while (chosen.size < n && guard++ < 100 * n) chosen.add(a.mode === 'balanced' ? deck() : r.pick(objects));
        objs = [...chosen].sort((x, y) => x.index - y.index);
      } else if (a.mode === 'random') objs = [r.pick(objects)];
      else if (a.mode === 'balanced') objs = [deck()];
      else if (a.mode === 'unique') objs = [uniqueOrder[i]];
      else if (a.mode === 'derive') {
        let cur: WorldEntity | undefined = s;
        for (const step of a.path) cur = cur && fn.get(step)?.get(cur.name);
        if (!cur) return; // the path breaks (partial coverage upstream): no fact
        objs = [cur];
      } else {
        const inv = fn.get(a.relation) as Map<string, WorldEntity>;
        const candidates = objects.filter((o) => inv.get(o.name)?.name === s.name);
        if (candidates.length === 0) {
          throw new Error(`relation ${rel.name}: ${rel.subject} "${s.name}" has no ${rel.object} with ${a.relation} = "${s.name}" to choose from`);
        }
        objs = [r.pick(candidates)];
      }
      if (functional) map.set(s.name, objs[0]);
      facts.push({ relation: rel.name, subject: s, objects: objs });
    });
    if (functional) fn.set(rel.name, map);
  }
  return facts;
}

export function generateWorld(desc: WorldDescription, seed: number): World {
  const root = new Rng(seed);
  const entities = makeEntities(desc, root.fork());
  const facts = makeFacts(desc, entities, root.fork());
  const index = new Map<string, Map<string, WorldFact>>();
  for (const f of facts) {
    if (!index.has(f.relation)) index.set(f.relation, new Map());
    (index.get(f.relation) as Map<string, WorldFact>).set(f.subject.name, f);
  }
  return { desc, seed, entities, facts, index };
}
