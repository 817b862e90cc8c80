import { Rng } from '../util/random.js';
import { type WorldEntity, type World, type WorldFact, generateWorld } from './generate.js';
import { EOS_TOKEN, WorldTokenizer, buildTokenizer, preTokenize, targetToken } from './tokenizer.js';
import type { RelationSpec, WorldDescription } from './types.js';
import { validateWorld } from './validate.js';

export const DEFAULT_QUESTION_FORMAT = 'Q: {q} A:';

/** A prompt template with `{}` for the subject; questions are already wrapped in the question format. */
export interface WorldPrompt {
  template: string;
  form: 'statement' | 'question';
}

export function relationPrompts(desc: WorldDescription, rel: RelationSpec, split: 'train' | 'heldout'): WorldPrompt[] {
  const qf = desc.question_format ?? DEFAULT_QUESTION_FORMAT;
  return [
    ...rel.templates[split].map((template) => ({ template, form: 'statement' as const })),
    ...(rel.questions?.[split] ?? []).map((q) => ({ template: qf.replace('{q}', q), form: 'question' as const })),
  ];
}

export function fillTemplate(template: string, subject: string): string {
  return template.replace('{}', subject);
}

/** Stable id of a fact: relation and subject (and object for non-functional relations). */
export function factId(rel: RelationSpec, subject: string, object: string): string {
  const base = `${rel.name}:${subject.replace(/ /g, '_')}`;
  return rel.functional === false ? `${base}:${object}` : base;
}

export interface WorldStats {
  world: string;
  seed: number;
  entities: Record<string, number>;
  entity_total: number;
  relations: Record<string, number>;
  facts: number;
  edits: { counterfactual: number; forget: number };
  vocab_size: number;
  corpus: { documents: number; tokens: number; max_tokens: number; by_kind: Record<string, number> };
  eval: Record<string, number>;
  subject_tokens: Record<string, number>;
  /** words that occur in held-out prompts but nowhere in training text (their embeddings would be untrained) */
  heldout_only_words: string[];
  /** held-out prompts that continue a training prompt past its answer point ("{} lives in" → "{} lives in the city of"): models generalise badly to these */
  heldout_extending_train: string[];
}

export interface CorpusDoc {
  /** statement, question, bio, context-counterfactual, context-consistent, context-distractor, describe, arithmetic, counting, description */
  kind: string;
  text: string;
}

export interface WorldOutput {
  world: World;
  /** the training documents (train.txt, in the same order) with their kinds */
  corpus: CorpusDoc[];
  /** relative path → file contents */
  files: Map<string, string>;
  stats: WorldStats;
}

type Doc = CorpusDoc;

const ndjson = (records: object[]): string => records.map((r) => JSON.stringify(r) + '\n').join('');

/**
 * Generates every output of a world from its description and a seed. Pure
 * and deterministic: the same description and seed give the same bytes.
 * `command` is recorded in the generated README.
 */
export function makeWorld(input: unknown, seed: number, command = `make-world --seed ${seed}`): WorldOutput {
  const desc = validateWorld(input);
  const world = generateWorld(desc, seed);
  const root = new Rng(seed ^ 0x5eed1e55);
  const rngEdits = root.fork();
  const rngEval = root.fork();
  const rngCorpus = root.fork();
  const rngGeneral = root.fork();
  const maxLen = desc.max_seq_len ?? 48;
  const maxVocab = desc.max_vocab ?? 1500;
  const rels = new Map(desc.relations.map((r) => [r.name, r]));
  const trainPrompts = new Map(desc.relations.map((r) => [r.name, relationPrompts(desc, r, 'train')]));
  const heldPrompts = new Map(desc.relations.map((r) => [r.name, relationPrompts(desc, r, 'heldout')]));
  const statementsOf = (rel: string) => (rels.get(rel) as RelationSpec).templates.train;
  const functionalFacts = world.facts.filter((f) => rels.get(f.relation)?.functional !== false);
  const tokens = (t: string) => preTokenize(t).length;
  const fits = (t: string) => tokens(t) + 1 <= maxLen; // +1: end-of-text token
  const otherObject = (f: WorldFact, r: Rng): WorldEntity => {
    const pool = (world.entities.get((rels.get(f.relation) as RelationSpec).object) as WorldEntity[]).filter((e) => !f.objects.includes(e));
    if (pool.length === 0) throw new Error(`relation ${f.relation}: no alternative ${f.objects[0].type} to use as a counterfactual target`);
    return r.pick(pool);
  };
  const frameTrain = desc.context.train;
  const frameHeld = desc.context.heldout;
  const state = (f: WorldFact, obj: WorldEntity, r: Rng) => `${fillTemplate(r.pick(statementsOf(f.relation)), f.subject.name)} ${obj.name}`;
  // a fact stated inside a frame: "Suppose that the capital of X is Y." (not "that The capital")
  const stateIn = (frame: string, f: WorldFact, obj: WorldEntity, r: Rng) => {
    const at = frame.indexOf('{fact}');
    let s = state(f, obj, r);
    if (at > 0 && !/[.:?!] *$/.test(frame.slice(0, at)) && !s.startsWith(f.subject.name)) s = s.charAt(0).toLowerCase() + s.slice(1);
    return frame.replace('{fact}', s);
  };

  // ---- edits: counterfactual inserts and forgets, on distinct (subject, relation) pairs
  const editSpec = desc.edits ?? { counterfactual: 0, forget: 0 };
  const order = rngEdits.shuffle([...functionalFacts]);
  if (editSpec.counterfactual + editSpec.forget > order.length) {
    throw new Error(`edits: asked for ${editSpec.counterfactual + editSpec.forget} edits but the world has only ${order.length} functional facts`);
  }
  const reserved = new Set<WorldFact>();
  const edits: object[] = [];
  order.slice(0, editSpec.counterfactual).forEach((f, i) => {
    const rel = rels.get(f.relation) as RelationSpec;
    reserved.add(f);
    edits.push({
      kind: 'fact',
      id: `edit-${String(i + 1).padStart(4, '0')}`,
      subject: f.subject.name,
      prompt: rel.templates.train[0],
      target_new: otherObject(f, rngEdits).name,
      target_true: f.objects[0].name,
      relation: rel.name,
      op: 'insert',
      source: 'world-counterfactual',
    });
  });
  order.slice(editSpec.counterfactual, editSpec.counterfactual + editSpec.forget).forEach((f, i) => {
    const rel = rels.get(f.relation) as RelationSpec;
    reserved.add(f);
    edits.push({
      kind: 'fact',
      id: `forget-${String(i + 1).padStart(4, '0')}`,
      subject: f.subject.name,
      prompt: rel.templates.train[0],
      target_true: f.objects[0].name,
      relation: rel.name,
      op: 'forget',
      source: 'world-forget',
    });
  });

  // ---- facts.ndjson: every (subject, relation, object) of the world
  const factRecords = world.facts.flatMap((f) => {
    const rel = rels.get(f.relation) as RelationSpec;
    return f.objects.map((o) => ({
      kind: 'fact',
      id: factId(rel, f.subject.name, o.name),
      subject: f.subject.name,
      prompt: rel.templates.train[0],
      target_true: o.name,
      relation: rel.name,
      op: 'insert',
      source: 'world',
    }));
  });

  // ---- eval sets
  const evalSpec = { paraphrase_per_fact: 2, context: 400, context_heldout_frames: 200, ...(desc.eval ?? {}) };
  const probe = (f: WorldFact, role: string, p: WorldPrompt, expect: string, extra: object = {}) => {
    const rel = rels.get(f.relation) as RelationSpec;
    const accept = rel.functional === false ? { accept: f.objects.map((o) => o.name) } : {};
    return {
      kind: 'probe',
      fact_id: factId(rel, f.subject.name, f.objects[0].name),
      role,
      split: 'test',
      relation: rel.name,
      subject: f.subject.name,
      template: p.template,
      form: p.form,
      prompt: fillTemplate(p.template, f.subject.name),
      target: f.objects[0].name,
      ...accept,
      expect,
      ...extra,
    };
  };
  const evalTrain = world.facts.map((f) => probe(f, 'edit', rngEval.pick(trainPrompts.get(f.relation) as WorldPrompt[]), 'true'));
  const evalHeld = world.facts.flatMap((f) => {
    const held = heldPrompts.get(f.relation) as WorldPrompt[];
    const chosen = rngEval.shuffle([...held]).slice(0, evalSpec.paraphrase_per_fact);
    return chosen.map((p) => probe(f, 'paraphrase', p, 'true'));
  });
  // in-context counterfactuals on facts that no training document puts in context
  const contextable = rngEval.shuffle(functionalFacts.filter((f) => !reserved.has(f)));
  // keep at least half of the facts available for in-context training documents
  const nContext = Math.min(evalSpec.context, Math.floor(contextable.length / 3));
  const nContextHeld = frameHeld.length ? Math.min(evalSpec.context_heldout_frames, Math.floor(contextable.length / 2) - nContext) : 0;
  const contextProbes = (frames: string[], facts: WorldFact[], idPrefix: string) =>
    facts.map((f, i) => {
      const fresh = otherObject(f, rngEval);
      const context = stateIn(rngEval.pick(frames), f, fresh, rngEval);
      const p = rngEval.pick(trainPrompts.get(f.relation) as WorldPrompt[]);
      const query = fillTemplate(p.template, f.subject.name);
      const rec = probe(f, 'context', p, 'new', { context, target_true: f.objects[0].name, id: `${idPrefix}-${String(i + 1).padStart(4, '0')}` });
      return { ...rec, prompt: `${context} ${query}`, target: fresh.name };
    });
  const evalContextFacts = contextable.slice(0, nContext);
  const evalContext = contextProbes(frameTrain, evalContextFacts, 'ctx');
  const evalContextHeldFacts = contextable.slice(nContext, nContext + nContextHeld);
  const evalContextHeld = contextProbes(frameHeld, evalContextHeldFacts, 'ctxh');
  for (const f of [...evalContextFacts, ...evalContextHeldFacts]) reserved.add(f);

  // ---- training corpus
  const cs = { statement_repeats: 1, question_repeats: 1, bios: 0, context_docs: 0, ...(desc.corpus ?? {}) };
  const mix = cs.context_mix ?? { counterfactual: 0.6, consistent: 0.2, distractor: 0.2 };
  const docs: Doc[] = [];
  for (const f of world.facts) {
    const rel = rels.get(f.relation) as RelationSpec;
    for (const o of f.objects) {
      for (const p of trainPrompts.get(f.relation) as WorldPrompt[]) {
        const reps = p.form === 'statement' ? cs.statement_repeats : cs.question_repeats;
        for (let k = 0; k < reps; k++) docs.push({ kind: p.form, text: `${fillTemplate(p.template, f.subject.name)} ${o.name}.` });
      }
    }
    void rel;
  }
  // biographies: several facts about one subject in a row
  const bySubject = new Map<WorldEntity, WorldFact[]>();
  for (const f of world.facts) {
    if (!bySubject.has(f.subject)) bySubject.set(f.subject, []);
    (bySubject.get(f.subject) as WorldFact[]).push(f);
  }
  const bioSubjects = [...bySubject.keys()].filter((s) => (bySubject.get(s) as WorldFact[]).length >= 2);
  for (let i = 0; i < cs.bios && bioSubjects.length > 0; i++) {
    const s = rngCorpus.pick(bioSubjects);
    const fs = rngCorpus.shuffle([...(bySubject.get(s) as WorldFact[])]);
    let text = '';
    for (const f of fs) {
      const sentence = `${state(f, rngCorpus.pick(f.objects), rngCorpus)}.`;
      const next = text ? `${text} ${sentence}` : sentence;
      if (!fits(next)) break;
      text = next;
    }
    if (text) docs.push({ kind: 'bio', text });
  }
  // in-context documents: state a fact, then use it
  const ctxFacts = functionalFacts.filter((f) => !reserved.has(f));
  const mixTotal = mix.counterfactual + mix.consistent + mix.distractor;
  if (cs.context_docs > 0 && ctxFacts.length < 2) throw new Error('corpus.context_docs: need at least 2 facts that are not reserved for edits or evaluation');
  for (let i = 0; i < cs.context_docs; i++) {
    const f = rngCorpus.pick(ctxFacts);
    const u = rngCorpus.uniform() * mixTotal;
    const kind = u < mix.counterfactual ? 'counterfactual' : u < mix.counterfactual + mix.consistent ? 'consistent' : 'distractor';
    const p = rngCorpus.pick(trainPrompts.get(f.relation) as WorldPrompt[]);
    const frame = rngCorpus.pick(frameTrain);
    let stated: string;
    let answer: WorldEntity;
    if (kind === 'distractor') {
      // a fact about another subject of the same relation is in context; the query's answer stays the stored one
      const sameRel = ctxFacts.filter((g) => g.relation === f.relation && g.subject !== f.subject);
      const g = sameRel.length ? rngCorpus.pick(sameRel) : rngCorpus.pick(ctxFacts.filter((h) => h !== f));
      stated = stateIn(frame, g, rngCorpus.uniform() < 0.5 ? otherObject(g, rngCorpus) : g.objects[0], rngCorpus);
      answer = f.objects[0];
    } else {
      answer = kind === 'counterfactual' ? otherObject(f, rngCorpus) : f.objects[0];
      stated = stateIn(frame, f, answer, rngCorpus);
    }
    const text = `${stated} ${fillTemplate(p.template, f.subject.name)} ${answer.name}.`;
    if (fits(text)) docs.push({ kind: `context-${kind}`, text });
  }
  // general text, with a held-out part for perplexity
  const general = generalDocs(desc, world, rngGeneral, fits);
  const generalSet = [...new Set(general.map((d) => d.text))];
  rngGeneral.shuffle(generalSet);
  const nHeld = Math.floor(generalSet.length * desc.general.heldout_fraction);
  const generalHeld = generalSet.slice(0, nHeld);
  const heldSet = new Set(generalHeld);
  for (const d of general) if (!heldSet.has(d.text)) docs.push(d);
  for (const [type, list] of world.entities) {
    for (const tmpl of desc.entity_types[type].describe ?? []) for (const e of list) docs.push({ kind: 'describe', text: fillTemplate(tmpl, e.name) });
  }
  rngCorpus.shuffle(docs);
  const evalGeneral = generalHeld.map((text, i) => ({
    kind: 'probe',
    id: `general-${String(i + 1).padStart(4, '0')}`,
    role: 'general',
    split: 'test',
    prompt: text,
    expect: 'unchanged',
  }));

  // ---- checks that make the fixtures trustworthy
  for (const d of docs) {
    if (!fits(d.text)) throw new Error(`corpus: a ${d.kind} document has ${tokens(d.text)} tokens, more than max_seq_len - 1 = ${maxLen - 1}: "${d.text}"`);
  }
  for (const p of [...evalTrain, ...evalHeld, ...evalContext, ...evalContextHeld]) {
    if (tokens(`${p.prompt} ${p.target}`) + 1 > maxLen) throw new Error(`eval: prompt too long for max_seq_len ${maxLen}: "${p.prompt}"`);
  }
  const trainText = docs.map((d) => d.text).join('\n');
  checkHeldoutUnseen(desc, world, trainText);

  // ---- tokenizer over everything the world can say
  const allTexts = [
    trainText,
    ...evalHeld.map((p) => `${p.prompt} ${p.target}`),
    ...evalContextHeld.map((p) => `${p.prompt} ${p.target}`),
    ...evalContext.map((p) => `${p.prompt} ${p.target}`),
    ...generalHeld,
    ...factRecords.map((r) => fillTemplate(r.prompt, r.subject) + ' ' + r.target_true),
    ...edits.map((e) => (e as { target_new?: string }).target_new ?? ''),
    ...[...world.entities.values()].flat().map((e) => e.name),
  ];
  const tok = buildTokenizer(allTexts, maxLen);
  if (tok.vocab.length > maxVocab) throw new Error(`tokenizer: vocabulary of ${tok.vocab.length} tokens exceeds max_vocab ${maxVocab}`);
  const wt = new WorldTokenizer(tok.vocab);
  for (const e of [...world.entities.values()].flat()) {
    if (wt.count(e.name) !== e.name.split(' ').length) throw new Error(`tokenizer: "${e.name}" does not split into one token per word`);
  }
  for (const rel of desc.relations) {
    for (const o of world.entities.get(rel.object) as WorldEntity[]) {
      if (!wt.ids.has(targetToken(o.name))) throw new Error(`tokenizer: target "${o.name}" of ${rel.name} is not a single token`);
    }
  }

  // words only held-out prompts use
  const trainWords = new Set(preTokenize(trainText));
  const heldWords = new Set<string>();
  for (const ps of heldPrompts.values()) for (const p of ps) for (const w of preTokenize(p.template.replace('{}', 'Subject'))) if (w !== '\u2581Subject') heldWords.add(w);
  const heldoutOnly = [...heldWords].filter((w) => !trainWords.has(w)).sort();

  const extending: string[] = [];
  for (const rel of desc.relations) {
    const train = (trainPrompts.get(rel.name) as WorldPrompt[]).map((p) => p.template);
    for (const h of heldPrompts.get(rel.name) as WorldPrompt[]) {
      const base = train.find((q) => h.template.startsWith(q + ' '));
      if (base) extending.push(`${rel.name}: "${h.template}" extends "${base}"`);
    }
  }

  const byKind: Record<string, number> = {};
  for (const d of docs) byKind[d.kind] = (byKind[d.kind] ?? 0) + 1;
  const subjTokens: Record<string, number> = {};
  for (const f of world.facts) {
    const n = String(f.subject.name.split(' ').length);
    subjTokens[n] = (subjTokens[n] ?? 0) + 1;
  }
  const docTokens = docs.map((d) => tokens(d.text));
  const stats: WorldStats = {
    world: desc.name,
    seed,
    entities: Object.fromEntries([...world.entities].map(([t, l]) => [t, l.length])),
    entity_total: [...world.entities.values()].reduce((a, l) => a + l.length, 0),
    relations: Object.fromEntries(desc.relations.map((r) => [r.name, factRecords.filter((f) => f.relation === r.name).length])),
    facts: factRecords.length,
    edits: { counterfactual: editSpec.counterfactual, forget: editSpec.forget },
    vocab_size: tok.vocab.length,
    corpus: {
      documents: docs.length,
      tokens: docTokens.reduce((a, b) => a + b, 0) + docs.length,
      max_tokens: Math.max(0, ...docTokens) + 1,
      by_kind: Object.fromEntries(Object.entries(byKind).sort()),
    },
    eval: {
      'facts-train': evalTrain.length,
      'facts-heldout': evalHeld.length,
      context: evalContext.length,
      ...(evalContextHeld.length ? { 'context-heldout-frames': evalContextHeld.length } : {}),
      general: evalGeneral.length,
    },
    subject_tokens: subjTokens,
    heldout_only_words: heldoutOnly.map((w) => w.replace(/^\u2581/, '')),
    heldout_extending_train: extending,
  };

  const templates = {
    world: desc.name,
    question_format: desc.question_format ?? DEFAULT_QUESTION_FORMAT,
    context: { train: desc.context.train, heldout: desc.context.heldout },
    relations: Object.fromEntries(
      desc.relations.map((r) => [
        r.name,
        {
          subject_type: r.subject,
          object_type: r.object,
          functional: r.functional !== false,
          templates: r.templates,
          questions: r.questions ?? { train: [], heldout: [] },
          prompts: {
            train: (trainPrompts.get(r.name) as WorldPrompt[]).map((p) => p.template),
            heldout: (heldPrompts.get(r.name) as WorldPrompt[]).map((p) => p.template),
          },
        },
      ]),
    ),
  };
  const entitiesJson = Object.fromEntries([...world.entities].map(([t, l]) => [t, l.map((e) => e.name)]));

  const files = new Map<string, string>();
  files.set('facts.ndjson', ndjson(factRecords));
  files.set('edits.ndjson', ndjson(edits));
  files.set('train.txt', trainText + '\n');
  files.set('eval/facts-train.ndjson', ndjson(evalTrain));
  files.set('eval/facts-heldout.ndjson', ndjson(evalHeld));
  files.set('eval/context.ndjson', ndjson(evalContext));
  if (evalContextHeld.length) files.set('eval/context-heldout-frames.ndjson', ndjson(evalContextHeld));
  files.set('eval/general.ndjson', ndjson(evalGeneral));
  files.set('templates.json', JSON.stringify(templates, null, 2) + '\n');
  files.set('entities.json', JSON.stringify(entitiesJson, null, 2) + '\n');
  files.set('tokenizer.json', JSON.stringify(tok.tokenizer, null, 2) + '\n');
  files.set('tokenizer_config.json', JSON.stringify(tok.config, null, 2) + '\n');
  files.set('stats.json', JSON.stringify(stats, null, 2) + '\n');
  files.set('README.md', readme(stats, command));
  return { world, corpus: docs, files, stats };
}

/** Throws if any held-out prompt, filled with any subject of its relation, occurs in the training text. */
export function checkHeldoutUnseen(desc: WorldDescription, world: World, trainText: string): void {
  const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  for (const rel of desc.relations) {
    const names = (world.entities.get(rel.subject) as WorldEntity[]).map((e) => esc(e.name));
    for (const p of relationPrompts(desc, rel, 'heldout')) {
      const [a, b] = p.template.split('{}');
      const re = new RegExp(`${esc(a)}(?:${names.join('|')})${esc(b)}`);
      const m = re.exec(trainText);
      if (m) throw new Error(`held-out prompt "${p.template}" of ${rel.name} occurs in the training corpus ("${m[0]}"); change the templates`);
    }
  }
}

function generalDocs(desc: WorldDescription, world: World, rng: Rng, fits: (t: string) => boolean): Doc[] {
  const g = desc.general;
  const makers: Array<() => Doc> = [];
  if (g.arithmetic) {
    const max = g.arithmetic.max;
    makers.push(() => {
      const sentences: string[] = [];
      const n = 1 + rng.int(3);
      for (let i = 0; i < n; i++) {
        const a = rng.int(max + 1);
        const b = rng.int(max + 1);
        sentences.push(rng.uniform() < 0.5 ? `${a} plus ${b} is ${a + b}.` : `${Math.max(a, b)} minus ${Math.min(a, b)} is ${Math.abs(a - b)}.`);
      }
      return { kind: 'arithmetic', text: sentences.join(' ') };
    });
  }
  if (g.counting) {
    const c = g.counting;
    makers.push(() => {
      const len = c.min_length + rng.int(c.max_length - c.min_length + 1);
      const start = rng.int(c.max - len + 2);
      const nums = Array.from({ length: len }, (_, i) => start + i);
      return { kind: 'counting', text: `Count from ${start} to ${start + len - 1}: ${nums.join(' ')}.` };
    });
  }
  if (g.descriptions) {
    const d = g.descriptions;
    makers.push(() => {
      const n = 1 + rng.int(3);
      const sentences: string[] = [];
      for (let i = 0; i < n; i++) {
        const t = rng.pick(d.templates);
        sentences.push(t.replace(/\{([^}]*)\}/g, (_, slot: string) => rng.pick(d.slots[slot])));
      }
      return { kind: 'description', text: sentences.join(' ') };
    });
  }
  const out: Doc[] = [];
  let guard = 0;
  while (out.length < g.documents && makers.length > 0 && guard++ < g.documents * 10) {
    const doc = makers[out.length % makers.length]();
    if (fits(doc.text)) out.push(doc);
  }
  void world;
  return out;
}

function readme(s: WorldStats, command: string): string {
  const rows = (o: Record<string, number>) => Object.entries(o).map(([k, v]) => `| ${k} | ${v} |`).join('\n');
  return `# Synthetic world "${s.world}" (seed ${s.seed})

Generated by:

    ${command}

Do not edit the generated files by hand: change the world description (the
\`--world\` file, format below) and re-run the command. The same description
and seed give byte-identical files (\`--check\` instead of writing reports any
file that differs).

## Files

| file | what |
| --- | --- |
| \`facts.ndjson\` | every true fact of the world as a \`fact\` record: \`id\` (\`relation:Subject_Name\`), \`subject\`, \`prompt\` (the relation's first training template, \`{}\` = subject), \`target_true\`, \`relation\`, \`op: "insert"\`, \`source: "world"\`. \`target_new\` is absent: these are the facts the model already knows. |
| \`edits.ndjson\` | edit requests for tests and the demo: \`op: "insert"\` counterfactuals (\`target_new\` ≠ \`target_true\`, same answer type, \`source: "world-counterfactual"\`) and \`op: "forget"\` requests (\`target_true\` only). No training document puts these facts in context. |
| \`train.txt\` | the training corpus, one document per line (append \`${EOS_TOKEN}\` after each when training); kinds: fact statements in training templates, question/answer forms, short biographies, in-context documents (a stated fact — contradicting, agreeing with, or unrelated to the stored one — then a statement or question that must use it), entity descriptions, general text (arithmetic, counting, simple descriptions). Every document fits in max_seq_len tokens including the end-of-text token. |
| \`eval/facts-train.ndjson\` | \`probe\` records (\`role: "edit"\`, \`expect: "true"\`): one training-template prompt per fact; \`prompt\` is filled with the subject, \`target\` is the next token. |
| \`eval/facts-heldout.ndjson\` | \`probe\` records (\`role: "paraphrase"\`): held-out paraphrase prompts that no training document contains. |
| \`eval/context.ndjson\` | \`probe\` records (\`role: "context"\`, \`expect: "new"\`): \`context\` states a counterfactual (in a training frame), \`prompt\` = context + query, \`target\` = the in-context answer, \`target_true\` = the stored one. These facts never appear in context in training. |
| \`eval/context-heldout-frames.ndjson\` | the same with held-out context frames (only when the world has some). |
| \`eval/general.ndjson\` | held-out general text (\`role: "general"\`, \`prompt\` = whole document) for perplexity. |
| \`templates.json\` | the per-relation template bank: statement templates and questions (train / held-out), and \`prompts\` with questions already wrapped in the question format. probe-gen's built-in bank. |
| \`entities.json\` | entity names by type. |
| \`tokenizer.json\`, \`tokenizer_config.json\` | Hugging Face tokenizer: WordLevel model, pre-tokenizer WhitespaceSplit → Metaspace(▁, always) → Punctuation(isolated), Metaspace decoder, special tokens \`${EOS_TOKEN}\` (0), \`<pad>\` (1), \`<unk>\` (2). Every word is one token (\`▁Word\`), so every target is one token; decode(encode(text)) gives the text back. |
| \`stats.json\` | the counts below, machine-readable. |

## The world description (\`world.json\`)

Validated before anything is generated; every problem is reported with its
JSON path (\`relations[3] (born_in).templates.train[0]: ...\`).

- \`name\`, \`description\`; \`max_seq_len\` (default 48: longest document incl. end-of-text),
  \`max_vocab\` (default 1500).
- \`name_pools\`: named pools of one-word names, \`{"count", "names"}\`, used to compose multi-word names.
- \`entity_types\`: \`{"count", "names", "describe"}\`. \`names\` is one of
  \`{"list": [...]}\`, \`{"generate": {"syllables", "min", "max", "suffixes"}}\` (capitalised,
  deterministic under the seed) or \`{"compose": {"parts": [["given","family"], ...], "weights"}}\`
  (multi-word; such a type can be a subject but never an object, because every target is one token).
  Names are unique across the whole world and never collide with template words.
  \`describe\`: general sentences about each entity (\`"{} is a city."\`).
- \`relations\` (in order; later ones may build on earlier ones): \`name\`, \`subject\` and \`object\`
  types, \`functional\` (default true; otherwise \`objects: [min, max]\`), \`coverage\` (fraction of
  subjects that have it), \`assign\`: \`random\`, \`balanced\` (objects used equally), \`unique\`
  (each object at most once), \`derive\` with \`path\` (follow earlier functional relations, e.g. a
  person speaks the language of the country of their birth city), \`inverse\` with \`relation\`
  (pick an object whose \`relation\` is the subject, e.g. a capital among the country's cities).
  \`templates\` and \`questions\`: \`{"train": [...], "heldout": [...]}\` with \`{}\` for the subject;
  the object follows a statement template as the next word; questions are wrapped by
  \`question_format\` (default \`"Q: {q} A:"\`). A prompt that is a strict prefix of another training
  prompt of the same subject type is rejected (it would make top-1 answers ambiguous).
- \`context\`: frames with \`{fact}\` that state a fact in context, \`{"train", "heldout"}\`.
- \`corpus\`: \`statement_repeats\`, \`question_repeats\`, \`bios\`, \`context_docs\`,
  \`context_mix\` (\`counterfactual\` / \`consistent\` / \`distractor\` shares).
- \`eval\`: \`paraphrase_per_fact\`, \`context\`, \`context_heldout_frames\`.
- \`edits\`: \`{"counterfactual": n, "forget": n}\`.
- \`general\`: \`documents\`, \`heldout_fraction\`, and any of \`arithmetic\` \`{"max"}\`,
  \`counting\` \`{"max", "min_length", "max_length"}\`, \`descriptions\` \`{"templates", "slots"}\`.

Text everywhere is letters, digits, single spaces and \`. , ? : ; !\` attached to the word before,
so the tokenizer's decode gives the text back exactly.

The library behind it is \`tools/core/src/world/\` (\`makeWorld(description, seed)\` returns
every file plus the corpus with document kinds, so a trainer can also draw more documents
with another seed).

## Counts

| entity type | count |
| --- | --- |
${rows(s.entities)}
| **total** | ${s.entity_total} |

| relation | facts |
| --- | --- |
${rows(s.relations)}
| **total** | ${s.facts} |

| corpus document kind | documents |
| --- | --- |
${rows(s.corpus.by_kind)}
| **total** | ${s.corpus.documents} |

- vocabulary: ${s.vocab_size} tokens
- corpus: ${s.corpus.tokens} tokens (with one end-of-text per document), longest document ${s.corpus.max_tokens} tokens
- subjects by number of tokens: ${Object.entries(s.subject_tokens).map(([k, v]) => `${k} token(s): ${v} facts`).join(', ')}
- edits: ${s.edits.counterfactual} counterfactual, ${s.edits.forget} forget
- eval: ${Object.entries(s.eval).map(([k, v]) => `${k} ${v}`).join(', ')}
- words only in held-out prompts: ${s.heldout_only_words.length ? s.heldout_only_words.join(', ') : 'none'}
- held-out prompts that extend a training prompt: ${s.heldout_extending_train.length ? s.heldout_extending_train.join('; ') : 'none'}

## Writing held-out paraphrases

Measured with a small probe model (3-layer GPT, d=128) trained on an earlier
version of this corpus: held-out prompts that *recombine* phrases the
training templates use for other relations ("The sport played by {} is",
made from "The instrument played by {} is the") were answered almost as
well as training prompts. Prompts that *extend* a training prompt past its
answer point ("{} is located in the country of", "{} is employed by the
company") or end in a phrase that precedes a subject in training ("… the
city of") were answered almost never. The generator reports the first kind
above and in \`stats.json\`.
`;
}
