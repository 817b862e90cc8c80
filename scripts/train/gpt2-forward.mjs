// GPT-2 forward pass for training, on the same weights and ops as
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
  const w = (n) => model.weights.get(n);
  const [B, T] = dims;
  const H = c.hidden;
  const hd = c.headDim;
  const pos = new Int32Array(B * T);
  for (let b = 0; b < B; b++) {
    let n = 0;
    for (let t = 0; t < T; t++) pos[b * T + t] = mask[b * T + t] ? n++ : 0;
  }
  let h = reshape(add(indexSelect(w('transformer.wte.weight'), 0, ids), indexSelect(w('transformer.wpe.weight'), 0, pos)), [B, T, H]);
  for (let i = 0; i < c.layers; i++) {
    const p = `transformer.h.${i}`;
    const x = layerNorm(h, w(`${p}.ln_1.weight`), w(`${p}.ln_1.bias`), c.normEps);
    const qkv = linear(x, w(`${p}.attn.c_attn.weight`), w(`${p}.attn.c_attn.bias`), 'in_out');
    const qkvh = permute(reshape(qkv, [B, T, 3, c.heads, hd]), [2, 0, 3, 1, 4]);
    const part = (j) => reshape(slice(qkvh, 0, j, j + 1), [B, c.heads, T, hd]);
    const o = attention(part(0), part(1), part(2), { causal: true, scale: 1 / Math.sqrt(hd), keyPad: mask });
    const a = linear(reshape(permute(o, [0, 2, 1, 3]), [B, T, H]), w(`${p}.attn.c_proj.weight`), w(`${p}.attn.c_proj.bias`), 'in_out');
    h = add(h, a);
    const x2 = layerNorm(h, w(`${p}.ln_2.weight`), w(`${p}.ln_2.bias`), c.normEps);
    const f = geluNew(linear(x2, w(`${p}.mlp.c_fc.weight`), w(`${p}.mlp.c_fc.bias`), 'in_out'));
    h = add(h, linear(f, w(`${p}.mlp.c_proj.weight`), w(`${p}.mlp.c_proj.bias`), 'in_out'));
  }
  const sel = indexSelect(reshape(h, [B * T, H]), 0, rows);
  const xf = layerNorm(sel, w('transformer.ln_f.weight'), w('transformer.ln_f.bias'), c.normEps);
  return linear(xf, w('transformer.wte.weight'));
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
