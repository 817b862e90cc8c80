// The figures issue 5 asks of a fixture model: top-1 accuracy on probe sets
// and perplexity on held-out general text.
import { noGrad, logSoftmax, argmax } from '@catechism/core';

/**
 * Top-1 accuracy of probes ({prompt, target, probe}); returns {acc, n,
 * correct, misses} with the ids of the probes answered wrongly.
 */
export function top1(model, probes, batchSize = 64) {
  let correct = 0;
  const misses = [];
  const V = model.config.vocabSize;
  const pad = model.config.padTokenId ?? 0;
  noGrad(() => {
    for (let s = 0; s < probes.length; s += batchSize) {
      const part = probes.slice(s, s + batchSize);
      const B = part.length;
      const T = Math.max(...part.map((p) => p.prompt.length));
      const ids = new Int32Array(B * T).fill(pad);
      const mask = new Uint8Array(B * T);
      const last = new Int32Array(B);
      part.forEach((p, b) => {
        ids.set(p.prompt, b * T);
        mask.fill(1, b * T, b * T + p.prompt.length);
        last[b] = b * T + p.prompt.length - 1;
      });
      const { logits } = model.forward(ids, [B, T], { attentionMask: mask, logitsAt: last });
      part.forEach((p, b) => {
        if (argmax(logits.data.subarray(b * V, (b + 1) * V)) === p.target) correct++;
        else misses.push(p.probe.id ?? `${p.probe.fact_id} | ${p.probe.template}`);
      });
    }
  });
  return { acc: probes.length ? correct / probes.length : 0, n: probes.length, correct, misses };
}

/** exp(mean NLL) of every token after the first of each document (end-of-text included). */
export function perplexity(model, docs, batchSize = 64) {
  let nll = 0;
  let count = 0;
  const pad = model.config.padTokenId ?? 0;
  noGrad(() => {
    for (let s = 0; s < docs.length; s += batchSize) {
      const part = docs.slice(s, s + batchSize);
      const B = part.length;
      const T = Math.max(...part.map((d) => d.length - 1));
      const ids = new Int32Array(B * T).fill(pad);
      const mask = new Uint8Array(B * T);
      const rows = [];
      const targets = [];
      part.forEach((d, b) => {
        ids.set(d.slice(0, -1), b * T);
        mask.fill(1, b * T, b * T + d.length - 1);
        for (let t = 0; t + 1 < d.length; t++) {
          rows.push(b * T + t);
          targets.push(d[t + 1]);
        }
      });
      const { logits } = model.forward(ids, [B, T], { attentionMask: mask, logitsAt: Int32Array.from(rows) });
      const lp = logSoftmax(logits);
      const V = model.config.vocabSize;
      targets.forEach((t, r) => {
        nll -= lp.data[r * V + t];
        count++;
      });
    }
  });
  return { ppl: Math.exp(nll / count), tokens: count };
}
