// GPT-2 forward pass for training (module names from the model's arch
// description), on the same weights and ops as
// CausalLM.forward, except that gelu_new is composed from tanh: the kernel's
// fused gelu backward returns NaN for pre-activations ≤ −12 (seen at
// 2026-11-23 23:55 UTC; silu/sigmoid near −100 too), which silently skipped most optimiser steps once
// training got going. checkAgainst() compares it with CausalLM.forward.
import {
  add, attention, indexSelect, layerNorm, linear, mul, noGrad, permute, reshape, scale, slice, tanh,
} from '@catechism/core';

const C = Math.sqrt(2 / Math.PI);

function geluNew(x) {
  const inner = scale(add(x, scale(mul(mul(x, x), x), 0.044715)), C);
  return mul(scale(x, 0.5), add(tanh(inner), 1));
}

/** Logits [rows.length, V] at flat rows of a right-padded batch. */
export function gpt2Forward(model, ids, dims, mask, rows) {
  const c = model.config;
  const arch = model.arch;
  const w = (n) => model.weights.get(n);
  const lin = (x, m) => linear(x, w(`${m}.weight`), w(`${m}.bias`), arch.layout(m));
  const ln = (x, m) => layerNorm(x, w(`${m}.weight`), w(`${m}.bias`), c.normEps);
  const [B, T] = dims;
  const H = c.hidden;
  const hd = c.headDim;
  const pos = new Int32Array(B * T);
  for (let b = 0; b < B; b++) {
    let n = 0;
    for (let t = 0; t < T; t++) pos[b * T + t] = mask[b * T + t] ? n++ : 0;
  }
  const wte = w(`${arch.tokenEmbedding}.weight`);
  let h = reshape(add(indexSelect(wte, 0, ids), indexSelect(w(`${arch.positionEmbedding}.weight`), 0, pos)), [B, T, H]);
  for (let i = 0; i < c.layers; i++) {
    const L = arch.layer(i);
    const x = ln(h, L.attnNorm);
    const qkv = lin(x, L.qkv.fused);
    const qkvh = permute(reshape(qkv, [B, T, 3, c.heads, hd]), [2, 0, 3, 1, 4]);
    const part = (j) => reshape(slice(qkvh, 0, j, j + 1), [B, c.heads, T, hd]);
    const o = attention(part(0), part(1), part(2), { causal: true, scale: 1 / Math.sqrt(hd), keyPad: mask });
    const a = lin(reshape(permute(o, [0, 2, 1, 3]), [B, T, H]), L.attnOut);
    h = add(h, a);
    const x2 = ln(h, L.mlpNorm);
    const f = geluNew(lin(x2, L.mlp.in[0]));
    h = add(h, lin(f, L.mlp.out));
  }
  const sel = indexSelect(reshape(h, [B * T, H]), 0, rows);
  const xf = ln(sel, arch.finalNorm);
  return linear(xf, wte); // tied head
}

/** Largest |difference| between this forward's logits and CausalLM.forward's on a batch. */
export function checkAgainst(model, batch) {
  return noGrad(() => {
    const a = gpt2Forward(model, batch.ids, batch.dims, batch.mask, batch.rows);
    const b = model.forward(batch.ids, batch.dims, { attentionMask: batch.mask, logitsAt: batch.rows }).logits;
    let m = 0;
    for (let i = 0; i < a.size; i++) m = Math.max(m, Math.abs(a.data[i] - b.data[i]));
    return m;
  });
}
