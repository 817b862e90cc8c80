import {
  type AssignSpec,
  type RelationSpec,
  type WorldTemplateSet,
  type WorldDescription,
  WorldValidationError,
} from './types.js';

/** Characters allowed in any text of a world: words, digits, single spaces, simple punctuation. */
const TEXT_CHARS = /^[A-Za-z0-9 .,?:;!]*$/;
const PUNCT = /[.,?:;!]/;
const WORD = /^[A-Za-z][A-Za-z0-9]*$/;
const RELATION_NAME = /^[a-z][a-z0-9_]*$/;

type Json = unknown;

function isObj(v: Json): v is Record<string, Json> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
function isStrArray(v: Json): v is string[] {
  return Array.isArray(v) && v.every((s) => typeof s === 'string');
}
function isInt(v: Json): v is number {
  return typeof v === 'number' && Number.isInteger(v);
}

/**
 * Problems with a piece of text that will be tokenised: the tokenizer splits
 * on single spaces and isolates punctuation, so text must be in that normal
 * form for decode(encode(text)) to give back the same string.
 */
export function textProblems(text: string): string[] {
  const out: string[] = [];
  if (!TEXT_CHARS.test(text)) out.push('only letters, digits, spaces and . , ? : ; ! are allowed');
  if (text !== text.trim()) out.push('leading or trailing space');
  if (text.includes('  ')) out.push('double space');
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (!PUNCT.test(c)) continue;
    if (i > 0 && text[i - 1] === ' ') out.push(`space before "${c}"`);
    if (i + 1 < text.length && text[i + 1] !== ' ') out.push(`"${c}" must be followed by a space or end the text`);
    if (i === 0) out.push(`text starts with "${c}"`);
  }
  return [...new Set(out)];
}

function checkTemplate(t: Json, path: string, problems: string[], kind: 'statement' | 'question'): void {
  if (typeof t !== 'string') {
    problems.push(`${path}: must be a string`);
    return;
  }
  const holes = t.split('{}').length - 1;
  if (holes !== 1) {
    problems.push(`${path}: "${t}" must contain "{}" (the subject) exactly once, found ${holes}`);
    return;
  }
  const [before, after] = t.split('{}');
  if (before !== '' && !before.endsWith(' ')) problems.push(`${path}: "${t}": "{}" must follow a space`);
  if (after !== '' && !(after.startsWith(' ') || PUNCT.test(after[0]))) {
    problems.push(`${path}: "${t}": "{}" must be followed by a space or punctuation`);
  }
  // check the text with a stand-in subject so spacing rules apply around it
  for (const p of textProblems(t.replace('{}', 'Subject'))) problems.push(`${path}: "${t}": ${p}`);
  if (kind === 'statement' && after === '') problems.push(`${path}: "${t}": a statement must not end with the subject (the object follows the prompt)`);
  if (kind === 'question' && !t.endsWith('?')) problems.push(`${path}: "${t}": a question must end with "?"`);
}

function checkTemplateSet(v: Json, path: string, problems: string[], kind: 'statement' | 'question' | 'frame'): void {
  if (!isObj(v)) {
    problems.push(`${path}: must be an object {"train": [...], "heldout": [...]}`);
    return;
  }
  if (!isStrArray(v.train) || v.train.length === 0) problems.push(`${path}.train: must be a non-empty array of strings`);
  if (!isStrArray(v.heldout)) problems.push(`${path}.heldout: must be an array of strings`);
  if (kind !== 'frame') {
    if (Array.isArray(v.train)) v.train.forEach((t, i) => checkTemplate(t, `${path}.train[${i}]`, problems, kind));
    if (Array.isArray(v.heldout)) v.heldout.forEach((t, i) => checkTemplate(t, `${path}.heldout[${i}]`, problems, kind));
  }
  if (isStrArray(v.train) && isStrArray(v.heldout)) {
    for (const h of v.heldout) if (v.train.includes(h)) problems.push(`${path}: "${h}" is both a training and a held-out template`);
    const dup = (a: string[]) => a.filter((x, i) => a.indexOf(x) !== i);
    for (const d of new Set([...dup(v.train), ...dup(v.heldout)])) problems.push(`${path}: "${d}" is listed twice`);
  }
}

function checkNames(v: Json, path: string, problems: string[], pools: Set<string>, allowCompose: boolean): void {
  if (!isObj(v)) {
    problems.push(`${path}: must be an object with one of "list", "generate"${allowCompose ? ', "compose"' : ''}`);
    return;
  }
  const keys = ['list', 'generate', 'compose'].filter((k) => k in v);
  if (keys.length !== 1) {
    problems.push(`${path}: needs exactly one of "list", "generate"${allowCompose ? ', "compose"' : ''} (found ${keys.length ? keys.join(', ') : 'none'})`);
    return;
  }
  if ('list' in v) {
    if (!isStrArray(v.list) || v.list.length === 0) problems.push(`${path}.list: must be a non-empty array of strings`);
    else {
      v.list.forEach((n, i) => {
        if (!n.split(' ').every((w) => WORD.test(w))) problems.push(`${path}.list[${i}]: "${n}" must be words of letters/digits separated by single spaces`);
      });
      const seen = new Set<string>();
      for (const n of v.list) {
        if (seen.has(n)) problems.push(`${path}.list: "${n}" is listed twice`);
        seen.add(n);
      }
    }
  } else if ('generate' in v) {
    const g = v.generate;
    if (!isObj(g)) problems.push(`${path}.generate: must be an object`);
    else {
      if (!isStrArray(g.syllables) || g.syllables.length < 2 || !g.syllables.every((s) => /^[a-z]+$/.test(s))) {
        problems.push(`${path}.generate.syllables: must be at least 2 lowercase syllables`);
      }
      if (!isInt(g.min) || g.min < 1) problems.push(`${path}.generate.min: must be an integer >= 1`);
      if (!isInt(g.max) || (isInt(g.min) && g.max < g.min)) problems.push(`${path}.generate.max: must be an integer >= min`);
      if (g.suffixes !== undefined && (!isStrArray(g.suffixes) || !g.suffixes.every((s) => /^[a-z]*$/.test(s)))) {
        problems.push(`${path}.generate.suffixes: must be an array of lowercase strings`);
      }
    }
  } else {
    if (!allowCompose) {
      problems.push(`${path}: "compose" is only allowed for entity types, not name pools`);
      return;
    }
    const c = v.compose;
    if (!isObj(c) || !Array.isArray(c.parts) || c.parts.length === 0) {
      problems.push(`${path}.compose.parts: must be a non-empty array of pool-name arrays`);
      return;
    }
    c.parts.forEach((p, i) => {
      if (!isStrArray(p) || p.length === 0) problems.push(`${path}.compose.parts[${i}]: must be a non-empty array of pool names`);
      else for (const name of p) if (!pools.has(name)) problems.push(`${path}.compose.parts[${i}]: unknown name pool "${name}" (define it in name_pools)`);
    });
    if (c.weights !== undefined) {
      if (!Array.isArray(c.weights) || c.weights.length !== c.parts.length || !c.weights.every((w) => typeof w === 'number' && w >= 0)) {
        problems.push(`${path}.compose.weights: must be one non-negative number per entry of parts`);
      }
    }
  }
}

function checkAssign(
  a: Json,
  path: string,
  rel: Record<string, Json>,
  earlier: Map<string, Record<string, Json>>,
  problems: string[],
): void {
  if (!isObj(a) || typeof a.mode !== 'string') {
    problems.push(`${path}: must be an object with "mode" (random, balanced, unique, derive, inverse)`);
    return;
  }
  const functional = rel.functional !== false;
  switch (a.mode as AssignSpec['mode']) {
    case 'random':
    case 'balanced':
      return;
    case 'unique':
      if (!functional) problems.push(`${path}: mode "unique" needs a functional relation`);
      return;
    case 'derive': {
      if (!functional) problems.push(`${path}: mode "derive" needs a functional relation`);
      if (!isStrArray(a.path) || a.path.length === 0) {
        problems.push(`${path}.path: must be a non-empty array of earlier relation names`);
        return;
      }
      let type = rel.subject;
      for (const step of a.path) {
        const r = earlier.get(step);
        if (!r) {
          problems.push(`${path}.path: "${step}" is not a relation defined before "${String(rel.name)}"`);
          return;
        }
        if (r.functional === false) problems.push(`${path}.path: "${step}" is not functional`);
        if (r.subject !== type) {
          problems.push(`${path}.path: "${step}" starts from type "${String(r.subject)}" but the path is at type "${String(type)}"`);
          return;
        }
        type = r.object;
      }
      if (type !== rel.object) problems.push(`${path}.path: ends at type "${String(type)}" but the relation's object type is "${String(rel.object)}"`);
      return;
    }
    case 'inverse': {
      if (!functional) problems.push(`${path}: mode "inverse" needs a functional relation`);
      const r = typeof a.relation === 'string' ? earlier.get(a.relation) : undefined;
      if (!r) {
        problems.push(`${path}.relation: must name a relation defined before "${String(rel.name)}"`);
        return;
      }
      if (r.subject !== rel.object || r.object !== rel.subject) {
        problems.push(`${path}.relation: "${String(a.relation)}" must go from "${String(rel.object)}" to "${String(rel.subject)}"`);
      }
      if (r.functional === false) problems.push(`${path}.relation: "${String(a.relation)}" is not functional`);
      return;
    }
    default:
      problems.push(`${path}.mode: unknown mode "${String(a.mode)}" (random, balanced, unique, derive, inverse)`);
  }
}

/**
 * Checks a parsed world description and returns it typed. Throws
 * WorldValidationError listing every problem (with its JSON path).
 */
export function validateWorld(input: unknown): WorldDescription {
  const problems: string[] = [];
  if (!isObj(input)) throw new WorldValidationError(['the world description must be a JSON object']);
  const w = input;
  if (typeof w.name !== 'string' || w.name === '') problems.push('name: must be a non-empty string');
  for (const k of ['max_seq_len', 'max_vocab'] as const) {
    if (w[k] !== undefined && (!isInt(w[k]) || (w[k] as number) < 8)) problems.push(`${k}: must be an integer >= 8`);
  }

  const pools = new Set<string>();
  if (w.name_pools !== undefined) {
    if (!isObj(w.name_pools)) problems.push('name_pools: must be an object');
    else {
      for (const [name, p] of Object.entries(w.name_pools)) {
        pools.add(name);
        if (!isObj(p)) {
          problems.push(`name_pools.${name}: must be an object {"count", "names"}`);
          continue;
        }
        if (!isInt(p.count) || p.count < 1) problems.push(`name_pools.${name}.count: must be an integer >= 1`);
        checkNames(p.names, `name_pools.${name}.names`, problems, pools, false);
      }
    }
  }

  const types = new Set<string>();
  const multiWordTypes = new Set<string>();
  if (!isObj(w.entity_types) || Object.keys(w.entity_types).length === 0) problems.push('entity_types: must be a non-empty object');
  else {
    for (const [name, t] of Object.entries(w.entity_types)) {
      types.add(name);
      const path = `entity_types.${name}`;
      if (!isObj(t)) {
        problems.push(`${path}: must be an object`);
        continue;
      }
      checkNames(t.names, `${path}.names`, problems, pools, true);
      const names = t.names as Record<string, Json> | undefined;
      const hasList = isObj(names) && isStrArray(names.list);
      if (t.count === undefined) {
        if (!hasList) problems.push(`${path}.count: required unless names is a list`);
      } else if (!isInt(t.count) || t.count < 1) problems.push(`${path}.count: must be an integer >= 1`);
      else if (hasList && (t.count as number) > (names.list as string[]).length) {
        problems.push(`${path}.count: ${String(t.count)} is more than the ${(names.list as string[]).length} names listed`);
      }
      if (isObj(names) && ('compose' in names || (hasList && (names.list as string[]).some((n) => n.includes(' '))))) multiWordTypes.add(name);
      if (t.describe !== undefined) {
        if (!isStrArray(t.describe)) problems.push(`${path}.describe: must be an array of strings`);
        else t.describe.forEach((d, i) => checkTemplate(d, `${path}.describe[${i}]`, problems, 'statement'));
      }
    }
  }

  const earlier = new Map<string, Record<string, Json>>();
  if (!Array.isArray(w.relations) || w.relations.length === 0) problems.push('relations: must be a non-empty array');
  else {
    w.relations.forEach((r, i) => {
      const path = `relations[${i}]`;
      if (!isObj(r)) {
        problems.push(`${path}: must be an object`);
        return;
      }
      const label = typeof r.name === 'string' ? `${path} (${r.name})` : path;
      if (typeof r.name !== 'string' || !RELATION_NAME.test(r.name)) problems.push(`${path}.name: must match ${RELATION_NAME}`);
      else if (earlier.has(r.name)) problems.push(`${label}: relation name is used twice`);
      for (const k of ['subject', 'object'] as const) {
        if (typeof r[k] !== 'string' || !types.has(r[k] as string)) problems.push(`${label}.${k}: "${String(r[k])}" is not an entity type`);
      }
      if (typeof r.object === 'string' && multiWordTypes.has(r.object)) {
        problems.push(`${label}.object: type "${r.object}" has multi-word names, but every target must be a single token`);
      }
      if (r.functional !== undefined && typeof r.functional !== 'boolean') problems.push(`${label}.functional: must be true or false`);
      if (r.functional === false) {
        const o = r.objects;
        if (!Array.isArray(o) || o.length !== 2 || !isInt(o[0]) || !isInt(o[1]) || o[0] < 1 || o[1] < o[0]) {
          problems.push(`${label}.objects: a non-functional relation needs "objects": [min, max] with 1 <= min <= max`);
        }
      } else if (r.objects !== undefined) problems.push(`${label}.objects: only for non-functional relations`);
      if (r.coverage !== undefined && (typeof r.coverage !== 'number' || !(r.coverage > 0 && r.coverage <= 1))) {
        problems.push(`${label}.coverage: must be a number in (0, 1]`);
      }
      checkAssign(r.assign, `${label}.assign`, r, earlier, problems);
      checkTemplateSet(r.templates, `${label}.templates`, problems, 'statement');
      if (r.questions !== undefined) checkTemplateSet(r.questions, `${label}.questions`, problems, 'question');
      if (typeof r.name === 'string') earlier.set(r.name, r);
    });
  }

  const qf = w.question_format;
  if (qf !== undefined) {
    if (typeof qf !== 'string' || qf.split('{q}').length !== 2) problems.push('question_format: must be a string containing "{q}" once');
    else for (const p of textProblems(qf.replace('{q}', 'Question?'))) problems.push(`question_format: "${qf}": ${p}`);
  }

  if (!isObj(w.context)) problems.push('context: must be an object {"train": [...], "heldout": [...]} of frames with "{fact}"');
  else {
    checkTemplateSet(w.context, 'context', problems, 'frame');
    for (const key of ['train', 'heldout'] as const) {
      const frames = w.context[key];
      if (!isStrArray(frames)) continue;
      frames.forEach((f, i) => {
        if (f.split('{fact}').length !== 2) problems.push(`context.${key}[${i}]: "${f}" must contain "{fact}" once`);
        else for (const p of textProblems(f.replace('{fact}', 'Subject is fact'))) problems.push(`context.${key}[${i}]: "${f}": ${p}`);
      });
    }
  }

  if (w.corpus !== undefined) {
    if (!isObj(w.corpus)) problems.push('corpus: must be an object');
    else {
      for (const k of ['statement_repeats', 'question_repeats', 'bios', 'context_docs']) {
        const v = w.corpus[k];
        if (v !== undefined && (!isInt(v) || v < 0)) problems.push(`corpus.${k}: must be an integer >= 0`);
      }
      const m = w.corpus.context_mix;
      if (m !== undefined) {
        if (!isObj(m) || !['counterfactual', 'consistent', 'distractor'].every((k) => typeof m[k] === 'number' && (m[k] as number) >= 0)) {
          problems.push('corpus.context_mix: must be {"counterfactual", "consistent", "distractor"} with non-negative numbers');
        } else if ((m.counterfactual as number) + (m.consistent as number) + (m.distractor as number) <= 0) {
          problems.push('corpus.context_mix: shares must not all be zero');
        }
      }
    }
  }
  if (w.eval !== undefined) {
    if (!isObj(w.eval)) problems.push('eval: must be an object');
    else for (const k of ['paraphrase_per_fact', 'context', 'context_heldout_frames']) {
      const v = w.eval[k];
      if (v !== undefined && (!isInt(v) || v < 0)) problems.push(`eval.${k}: must be an integer >= 0`);
    }
  }
  if (w.edits !== undefined) {
    if (!isObj(w.edits) || !isInt(w.edits.counterfactual) || !isInt(w.edits.forget) || w.edits.counterfactual < 0 || w.edits.forget < 0) {
      problems.push('edits: must be {"counterfactual": n, "forget": n} with integers >= 0');
    }
  }

  const g = w.general;
  if (!isObj(g)) problems.push('general: must be an object');
  else {
    if (!isInt(g.documents) || g.documents < 0) problems.push('general.documents: must be an integer >= 0');
    if (typeof g.heldout_fraction !== 'number' || !(g.heldout_fraction >= 0 && g.heldout_fraction < 1)) {
      problems.push('general.heldout_fraction: must be a number in [0, 1)');
    }
    const kinds = ['arithmetic', 'counting', 'descriptions'].filter((k) => g[k] !== undefined);
    if (isInt(g.documents) && g.documents > 0 && kinds.length === 0) problems.push('general: needs at least one of arithmetic, counting, descriptions');
    if (g.arithmetic !== undefined && (!isObj(g.arithmetic) || !isInt(g.arithmetic.max) || g.arithmetic.max < 1)) {
      problems.push('general.arithmetic.max: must be an integer >= 1');
    }
    if (g.counting !== undefined) {
      const c = g.counting;
      if (!isObj(c) || !isInt(c.max) || !isInt(c.min_length) || !isInt(c.max_length) || c.min_length < 2 || c.max_length < c.min_length || c.max < c.max_length) {
        problems.push('general.counting: must be {"max", "min_length", "max_length"} with 2 <= min_length <= max_length <= max');
      }
    }
    if (g.descriptions !== undefined) {
      const d = g.descriptions;
      if (!isObj(d) || !isStrArray(d.templates) || d.templates.length === 0 || !isObj(d.slots)) {
        problems.push('general.descriptions: must be {"templates": [...], "slots": {"name": [...]}}');
      } else {
        for (const [k, v] of Object.entries(d.slots)) {
          if (!isStrArray(v) || v.length === 0) problems.push(`general.descriptions.slots.${k}: must be a non-empty array of strings`);
        }
        d.templates.forEach((t, i) => {
          for (const m of t.matchAll(/\{([^}]*)\}/g)) {
            if (!(m[1] in (d.slots as object))) problems.push(`general.descriptions.templates[${i}]: unknown slot "{${m[1]}}"`);
          }
          for (const p of textProblems(t.replace(/\{[^}]*\}/g, 'word'))) problems.push(`general.descriptions.templates[${i}]: "${t}": ${p}`);
        });
      }
    }
  }

  if (problems.length === 0) problems.push(...promptConflicts(w as unknown as WorldDescription));
  if (problems.length > 0) throw new WorldValidationError(problems);
  return w as unknown as WorldDescription;
}

/**
 * Prompts that make top-1 answers ambiguous: a prompt (training or held-out)
 * that is a strict prefix of a training prompt of the same subject type, e.g.
 * "{} was born in" and "{} was born in the city of" — after "X was born in"
 * the corpus continues with the city half the time and "the" the other half.
 * Also the same prompt used by two relations.
 */
export function promptConflicts(w: WorldDescription): string[] {
  const qf = w.question_format ?? 'Q: {q} A:';
  interface P { rel: string; split: string; text: string; a: string; b: string }
  const bySubject = new Map<string, P[]>();
  for (const r of w.relations) {
    const list = bySubject.get(r.subject) ?? [];
    bySubject.set(r.subject, list);
    for (const split of ['train', 'heldout'] as const) {
      const texts = [...r.templates[split], ...(r.questions?.[split] ?? []).map((q) => qf.replace('{q}', q))];
      for (const text of texts) {
        const [a, b] = text.split('{}');
        list.push({ rel: r.name, split, text, a, b });
      }
    }
  }
  const out: string[] = [];
  for (const list of bySubject.values()) {
    for (const p of list) {
      for (const q of list) {
        if (p === q || q.split !== 'train' || p.a !== q.a) continue;
        if (p.b === q.b && p.rel !== q.rel) {
          out.push(`relations ${p.rel} and ${q.rel} share the prompt "${p.text}"; the answer would be ambiguous`);
        } else if (q.b.startsWith(p.b + ' ')) {
          out.push(`${p.rel} ${p.split} prompt "${p.text}" is a prefix of ${q.rel} training prompt "${q.text}"; after it the corpus continues two ways, so top-1 answers become ambiguous`);
        }
      }
    }
  }
  return [...new Set(out)];
}

export type { RelationSpec, WorldTemplateSet };
