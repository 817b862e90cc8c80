/**
 * Scoring sequences with a causal LM: for a prompt and a continuation, the
 * log-probability of every continuation token, the model's argmax at each of
 * those positions, and (on request) the whole next-token distribution after
 * the prompt. One batched forward per batch, logits only at the rows read.
 *
 * Greedy equivalence: greedy decoding of |cont| tokens from the prompt
 * reproduces `cont` exactly when the argmax at every continuation position
 * (teacher-forced on `cont`) equals the token there, because each greedy step
 * then sees the same prefix. So `fullMatch` needs no generation.
 */
import { noGrad } from '../tensor/index.js';
import type { CausalLM } from '../models/causal-lm.js';
import type { Tokenizer } from '../models/loader.js';

export interface SeqRequest {
  prompt: number[];
  /** May be empty: then only the prediction after the prompt is read. */
  cont: number[];
  /** Keep log-softmax of the next-token distribution after the prompt (for KL). */
  keepDist?: boolean;
}

export interface SeqScore {
  /** log P(cont[j] | prompt, cont[<j]) per continuation token. */
  tokenLogprobs: Float64Array;
  /** Argmax token at each continuation position (at least one: the prediction after the prompt). */
  argmax: Int32Array;
  /** log-softmax after the prompt, when keepDist. */
  dist?: Float64Array;
}

/** log-softmax of one row in float64. */
export function logSoftmaxRow(row: Float32Array | Float64Array): Float64Array {
  let m = -Infinity;
  for (let i = 0; i < row.length; i++) if (row[i] > m) m = row[i];
  let z = 0;
  for (let i = 0; i < row.length; i++) z += Math.exp(row[i] - m);
  const lz = m + Math.log(z);
  const out = new Float64Array(row.length);
  for (let i = 0; i < row.length; i++) out[i] = row[i] - lz;
  return out;
}

function argmaxOf(row: Float32Array): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

/**
 * Score sequences in batches (sorted by length to keep padding low; results
 * come back in request order). Sequences must fit the model's positions.
 */
export function scoreSequences(model: CausalLM, reqs: readonly SeqRequest[], opts: { batchSize?: number } = {}): SeqScore[] {
  const bs = Math.max(1, opts.batchSize ?? 32);
  const V = model.config.vocabSize;
  const pad = model.config.padTokenId ?? model.config.eosTokenId ?? 0;
  const out: SeqScore[] = new Array(reqs.length);
  const order = reqs.map((_, i) => i).sort((a, b) => reqs[a].prompt.length + reqs[a].cont.length - (reqs[b].prompt.length + reqs[b].cont.length));
  for (let s = 0; s < order.length; s += bs) {
    const idx = order.slice(s, s + bs);
    const B = idx.length;
    const T = Math.max(...idx.map((i) => reqs[i].prompt.length + Math.max(reqs[i].cont.length - 1, 0)));
    const ids = new Int32Array(B * T).fill(pad);
    const mask = new Uint8Array(B * T);
    const rows: number[] = [];
    const rowStart: number[] = [];
    idx.forEach((i, b) => {
      const { prompt, cont } = reqs[i];
      if (prompt.length === 0) throw new RangeError(`scoring: request ${i} has an empty prompt`);
      // the last continuation token is never an input, so it needs no position
      const seq = prompt.concat(cont.slice(0, Math.max(cont.length - 1, 0)));
      ids.set(seq, b * T);
      mask.fill(1, b * T, b * T + seq.length);
      rowStart.push(rows.length);
      const n = Math.max(cont.length, 1);
      for (let j = 0; j < n; j++) rows.push(b * T + prompt.length - 1 + j);
    });
    const { logits } = noGrad(() => model.forward(ids, [B, T], { attentionMask: mask, logitsAt: Int32Array.from(rows) }));
    const L = logits.data;
    idx.forEach((i, b) => {
      const { cont, keepDist } = reqs[i];
      const n = Math.max(cont.length, 1);
      const tokenLogprobs = new Float64Array(cont.length);
      const am = new Int32Array(n);
      let dist: Float64Array | undefined;
      for (let j = 0; j < n; j++) {
        const r = rowStart[b] + j;
        const row = L.subarray(r * V, (r + 1) * V);
        am[j] = argmaxOf(row);
        if (j < cont.length || (j === 0 && keepDist)) {
          const ls = logSoftmaxRow(row);
          if (j < cont.length) tokenLogprobs[j] = ls[cont[j]];
          if (j === 0 && keepDist) dist = ls;
        }
      }
      out[i] = dist ? { tokenLogprobs, argmax: am, dist } : { tokenLogprobs, argmax: am };
    });
  }
  return out;
}

/**
 * Token ids of a prompt and of a target continuing it. The target is scored
 * as the text that follows the prompt after one space (CounterFact's
 * convention `prompt + " " + target`): the ids of the joined text, minus the
 * prompt's ids when those are a prefix (true for word-splitting tokenizers:
 * GPT-2 BPE, Metaspace, SentencePiece); otherwise the target encoded alone
 * with a leading space and no special tokens.
 */
export function encodePair(tok: Tokenizer, prompt: string, target: string): { prompt: number[]; cont: number[] } {
  const p = tok.encode(prompt);
  if (target.length === 0) return { prompt: p, cont: [] };
  const joined = /^\s/.test(target) || prompt.length === 0 || /\s$/.test(prompt) ? prompt + target : prompt + ' ' + target;
  const full = tok.encode(joined);
  let prefix = full.length > p.length;
  for (let i = 0; prefix && i < p.length; i++) if (full[i] !== p[i]) prefix = false;
  if (prefix) return { prompt: p, cont: full.slice(p.length) };
  return { prompt: p, cont: tok.encode(/^\s/.test(target) ? target : ' ' + target, { addSpecialTokens: false }) };
}

/** KL(P‖Q) in nats from two log-probability vectors. */
export function klFromLogprobs(logP: Float64Array, logQ: Float64Array): number {
  if (logP.length !== logQ.length) throw new RangeError(`kl: distributions of ${logP.length} and ${logQ.length} entries`);
  let kl = 0;
  for (let i = 0; i < logP.length; i++) {
    const p = Math.exp(logP[i]);
    if (p > 0) kl += p * (logP[i] - logQ[i]);
  }
  return Math.max(kl, 0);
}
