// Corpus and eval-set loading for the fixture trainer: tokenised documents,
// length-bucketed padded batches, and probe sets with single-token targets.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** Documents of train.txt as token ids, each followed by the end-of-text id. */
export function loadCorpus(worldDir, tok, eosId, maxLen, { contextRepeat = 1 } = {}) {
  const lines = readFileSync(join(worldDir, 'train.txt'), 'utf-8').split('\n').filter((l) => l.length > 0);
  // context documents open with one of the world's training frames ("Note that {fact}.")
  const frames = contextFramePrefixes(worldDir);
  const docs = [];
  let tokens = 0;
  let contextDocs = 0;
  for (let i = 0; i < lines.length; i++) {
    const ids = tok.encode(lines[i]);
    ids.push(eosId);
    if (ids.length > maxLen) throw new Error(`train.txt line ${i + 1}: ${ids.length} tokens exceed the model's ${maxLen} positions`);
    if (ids.length < 2) continue;
    const isContext = frames.some((f) => lines[i].startsWith(f));
    if (isContext) contextDocs++;
    // a fractional repeat spreads the extra copies evenly over the context documents
    const copies = isContext ? Math.floor(contextDocs * contextRepeat) - Math.floor((contextDocs - 1) * contextRepeat) : 1;
    for (let c = 0; c < copies; c++) {
      docs.push(Int32Array.from(ids));
      tokens += ids.length;
    }
  }
  return { docs, tokens, contextDocs };
}

/** The text before `{fact}` of each training context frame in the world's templates.json. */
function contextFramePrefixes(worldDir) {
  const file = join(worldDir, 'templates.json');
  if (!existsSync(file)) return [];
  const frames = JSON.parse(readFileSync(file, 'utf-8')).context?.train ?? [];
  return frames.map((f) => f.split('{fact}')[0]).filter((p) => p.length > 0);
}

/**
 * One epoch of batches: shuffle the documents, sort each window of
 * `window` batches by length (little padding), then shuffle the batches.
 * Every document is used exactly once per epoch.
 */
export function epochBatches(docs, batchSize, rng, window = 16) {
  const order = rng.shuffle(Array.from(docs.keys()));
  const batches = [];
  const span = batchSize * window;
  for (let s = 0; s < order.length; s += span) {
    const chunk = order.slice(s, s + span).sort((a, b) => docs[a].length - docs[b].length || a - b);
    for (let j = 0; j < chunk.length; j += batchSize) batches.push(chunk.slice(j, j + batchSize));
  }
  return rng.shuffle(batches);
}

/**
 * A padded batch: ids [B × T] (right padding), attention mask, and for
 * next-token prediction the flat rows that have a target plus the targets.
 */
export function makeBatch(docs, idx, padId) {
  const B = idx.length;
  let T = 0;
  for (const i of idx) T = Math.max(T, docs[i].length - 1);
  const ids = new Int32Array(B * T).fill(padId);
  const mask = new Uint8Array(B * T);
  const rows = [];
  const targets = [];
  idx.forEach((d, b) => {
    const doc = docs[d];
    const n = doc.length - 1; // inputs: all but the last token; targets: all but the first
    ids.set(doc.subarray(0, n), b * T);
    mask.fill(1, b * T, b * T + n);
    for (let t = 0; t < n; t++) {
      rows.push(b * T + t);
      targets.push(doc[t + 1]);
    }
  });
  return { ids, mask, dims: [B, T], rows: Int32Array.from(rows), targets: Int32Array.from(targets) };
}

export function readNdjson(file) {
  return readFileSync(file, 'utf-8').split('\n').filter((l) => l.trim().length > 0).map((l) => JSON.parse(l));
}

/** Probes of an eval file as {prompt ids, target id}; every target must be one token. */
export function loadProbes(file, tok) {
  return readNdjson(file).map((p, i) => {
    const t = tok.encode(p.target);
    if (t.length !== 1) throw new Error(`${file} record ${i + 1}: target '${p.target}' is ${t.length} tokens, expected 1`);
    return { prompt: tok.encode(p.prompt), target: t[0], probe: p };
  });
}

/** General-text documents (prompt = whole document) as ids followed by end-of-text. */
export function loadGeneral(file, tok, eosId) {
  return readNdjson(file).map((p) => tok.encode(p.prompt).concat([eosId]));
}
