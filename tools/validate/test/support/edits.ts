/**
 * Reference adapters for tests (not shipped: test support), written as real
 * bundles:
 *
 * - `rankOneHeadEdit`: a ROME-style rank-one edit in closed form on the LM
 *   head. With k the final hidden state at the edit prompt's last token and
 *   C the (regularised) second moment of hidden states over general text,
 *   ΔW = b (C⁻¹k)ᵀ / (kᵀC⁻¹k): at k the new answer's logit rises by b, and
 *   other contexts move in proportion to their whitened overlap with k
 *   (small), as in ROME's key-value update.
 * - `randomLora`: large random LoRA weights on every MLP projection — a
 *   deliberately harmful adapter.
 */
import * as path from 'node:path';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createManifest, sha256Hex, type ManifestInput } from '@catechism/core/adapters';
import { LoraAdapter, mlpModules, saveLora, type CausalLM, type Tokenizer } from '@catechism/core/models';
import { AdamW, fromData, matmul, neg, noGrad, sum, transpose, zeros, type Tensor } from '@catechism/core/tensor';
import { mlpInputFrom, mlpInputHooks } from '@catechism/core/edit';
import { encodePair, fillSubject, type FactLike, type ProbeLike } from '@catechism/core/metrics';
import { solveSpd } from '@catechism/core/merge';

/** Final normalised hidden states (the LM head's input) at every real token of each text. */
export function headInputs(model: CausalLM, ids: number[][]): Float64Array[] {
  const c = model.config;
  const H = c.hidden;
  const out: Float64Array[] = [];
  for (const seq of ids) {
    const captured: { resid?: Float32Array } = {};
    noGrad(() =>
      model.forward(Int32Array.from(seq), [1, seq.length], {
        skipLogits: true,
        hooks: { [`layers.${c.layers - 1}.resid_post`]: { capture: (x) => (captured.resid = x.data.slice()) } },
      }),
    );
    const r = captured.resid!;
    // the final norm in float64: LayerNorm (centred, with bias) or RMSNorm
    const centred = model.arch.normKind === 'layernorm';
    const g = model.weight(`${model.arch.finalNorm}.weight`).data;
    const b = centred ? model.weight(`${model.arch.finalNorm}.bias`).data : null;
    for (let t = 0; t < seq.length; t++) {
      const x = r.subarray(t * H, (t + 1) * H);
      let mu = 0;
      if (centred) {
        for (const v of x) mu += v;
        mu /= H;
      }
      let v2 = 0;
      for (const v of x) v2 += (v - mu) ** 2;
      const inv = 1 / Math.sqrt(v2 / H + c.normEps);
      const y = new Float64Array(H);
      for (let i = 0; i < H; i++) y[i] = (x[i] - mu) * inv * g[i] + (b ? b[i] : 0);
      out.push(y);
    }
  }
  return out;
}

export interface RankOneOptions {
  /** Texts whose hidden states estimate C (general text; more is better). */
  covarianceTexts: string[];
  /** How far above the current best logit the new answer's first token goes at the edit prompt. Default 4. */
  margin?: number;
  /** Ridge on C relative to its mean diagonal. Default 0.01. */
  ridge?: number;
}

/** A rank-one LoRA on `lm_head` that makes `target_new`'s first token the top-1 after the fact's prompt. */
export function rankOneHeadEdit(model: CausalLM, tok: Tokenizer, fact: FactLike, opts: RankOneOptions): LoraAdapter {
  if (fact.target_new === undefined) throw new RangeError(`fact ${fact.id} has no target_new`);
  const H = model.config.hidden;
  const { prompt, cont } = encodePair(tok, fillSubject(fact.prompt, fact.subject), fact.target_new);
  const keys = headInputs(model, [prompt]);
  const k = keys[keys.length - 1];
  const xs = headInputs(model, opts.covarianceTexts.map((t) => tok.encode(t).slice(0, model.config.maxPositions)).filter((s) => s.length > 0));
  const C = new Float64Array(H * H);
  for (const x of xs) for (let i = 0; i < H; i++) for (let j = 0; j < H; j++) C[i * H + j] += x[i] * x[j];
  let tr = 0;
  for (let i = 0; i < H; i++) tr += C[i * H + i] / Math.max(xs.length, 1);
  for (let i = 0; i < H * H; i++) C[i] /= Math.max(xs.length, 1);
  const u = solveSpd(C, H, k, (opts.ridge ?? 0.01) * (tr / H));
  let ku = 0;
  for (let i = 0; i < H; i++) ku += k[i] * u[i];
  // logits at the edit prompt, to size the update
  const V = model.config.vocabSize;
  const logits = noGrad(() => model.forward(Int32Array.from(prompt), [1, prompt.length], { logitsAt: Int32Array.of(prompt.length - 1) })).logits.data;
  let best = -Infinity;
  for (let i = 0; i < V; i++) if (i !== cont[0] && logits[i] > best) best = logits[i];
  const b = best - logits[cont[0]] + (opts.margin ?? 4);
  const A = new Float32Array(H);
  for (let i = 0; i < H; i++) A[i] = u[i] / ku;
  const B = new Float32Array(V);
  B[cont[0]] = b;
  const modules = new Map([['lm_head', { A: fromData(A, [1, H]), B: fromData(B, [V, 1]) }]]);
  return new LoraAdapter(fact.id, 1, 1, modules, false);
}

/** Large random LoRA weights on every MLP projection (a harmful adapter). */
export function randomLora(model: CausalLM, name: string, seed: number, opts: { r?: number; std?: number } = {}): LoraAdapter {
  // projection by projection (every layer's first input, …, every layer's output), the order the draws follow
  const layers = Array.from({ length: model.config.layers }, (_, l) => mlpModules(model.arch, model.config, l)).flat();
  const roles = layers.length > 0 ? layers[0].in.length + 1 : 0;
  const targets: string[] = [];
  for (let j = 0; j < roles; j++) for (const m of layers) targets.push(j < m.in.length ? m.in[j] : m.out);
  return model.createLora(name, targets, { r: opts.r ?? 4, seed, initBStd: opts.std ?? 1 });
}

/** Write `lora` as a bundle directory (PEFT files + catechism.json) for `facts`; returns the `adapter` record. */
export function writeAdapterBundle(
  dir: string,
  lora: LoraAdapter,
  facts: FactLike[],
  probes: ProbeLike[],
  extra: Partial<ManifestInput> = {},
): Record<string, unknown> {
  mkdirSync(dir, { recursive: true });
  saveLora(dir, lora, { baseModel: 'test-base' });
  const manifest = createManifest({
    id: lora.name,
    version: 1,
    method: lora.r === 1 ? 'rome' : 'lora',
    base_model: { name: 'test-base', sha256: sha256Hex('test-base') },
    targets: lora.targets(),
    rank: lora.r,
    fact_ids: facts.map((f) => f.id),
    facts: facts.map((f) => ({ kind: 'fact', ...f })),
    probes: probes.map((p) => ({ kind: 'probe', ...p })),
    data_sha256: sha256Hex(JSON.stringify(facts)),
    created_at: new Date().toISOString(),
    ...extra,
  });
  writeFileSync(path.join(dir, 'catechism.json'), JSON.stringify(manifest, null, 2) + '\n');
  return {
    kind: 'adapter', id: manifest.id, version: 1, path: dir, method: manifest.method, base_model: manifest.base_model,
    targets: manifest.targets, rank: manifest.rank, fact_ids: manifest.fact_ids, data_sha256: manifest.data_sha256, created_at: manifest.created_at,
  };
}

/** MLP keys (inputs of the MLP output projection, [T, intermediate]) of layer `l` for one sequence. */
function mlpKeys(model: CausalLM, l: number, ids: number[]): Tensor {
  const into: { resid?: Tensor; attn?: Tensor } = {};
  noGrad(() => model.forward(Int32Array.from(ids), [1, ids.length], { skipLogits: true, hooks: mlpInputHooks(l, into) }));
  return noGrad(() => mlpInputFrom(model, l, into.resid!, into.attn!));
}

export interface RomeOptions {
  /** Texts whose MLP keys estimate C = E[k kᵀ]. */
  covarianceTexts: string[];
  /** Layer to edit; default the middle one. */
  layer?: number;
  /** Steps of the value optimisation (stops early once P(new) ≥ 0.9). Default 100. */
  steps?: number;
  /** AdamW learning rate of the value (ROME's 0.5 by default). */
  lr?: number;
  ridge?: number;
}

/**
 * ROME (Meng et al. 2022) on a dense MLP, as a rank-one LoRA on layer L's
 * MLP output projection: the key k is that projection's input at the
 * subject's last token; the value change δ (added to the MLP output there)
 * is optimised with AdamW to make target_new likely; then
 * ΔW = δ (C⁻¹k)ᵀ / (kᵀC⁻¹k) with C the second moment of keys over general text.
 */
export function romeMlpEdit(model: CausalLM, tok: Tokenizer, fact: FactLike, opts: RomeOptions): LoraAdapter {
  const c = model.config;
  if (fact.target_new === undefined) throw new RangeError(`fact ${fact.id} has no target_new`);
  const l = opts.layer ?? Math.floor((c.layers - 1) / 2);
  const mlp = model.arch.layer(l).mlp;
  if (!mlp) throw new RangeError('romeMlpEdit: dense MLPs only (this layer is a sparse mixture of experts)');
  const H = c.hidden;
  const F = c.intermediate;
  const promptText = fillSubject(fact.prompt, fact.subject);
  const { prompt, cont } = encodePair(tok, promptText, fact.target_new);
  const cut = fact.prompt.indexOf('{}');
  const s = tok.encode(fact.prompt.slice(0, cut) + fact.subject).length - 1;
  if (s < 0 || s >= prompt.length) throw new RangeError(`romeMlpEdit: cannot locate the subject of ${fact.id} in its prompt`);
  // 1. the value: δ at the MLP output of the subject's last token
  const delta = zeros([1, H], { requiresGrad: true });
  const opt = new AdamW([delta], { lr: opts.lr ?? 0.5, weightDecay: 0 });
  const hooks = { [`layers.${l}.mlp`]: { add: { value: delta, positions: [[0, s]] as Array<[number, number]> } } };
  for (let step = 0; step < (opts.steps ?? 100); step++) {
    const { logprobs } = model.continuationLogprobs([prompt], [cont], { hooks });
    const lp = sum(logprobs);
    if (lp.item() > Math.log(0.9)) break;
    neg(lp).backward();
    opt.step();
    opt.zeroGrad();
  }
  // 2. the key and C
  const k = mlpKeys(model, l, prompt).data.slice(s * F, (s + 1) * F);
  const C = new Float64Array(F * F);
  let n = 0;
  for (const text of opts.covarianceTexts) {
    const ids = tok.encode(text).slice(0, c.maxPositions);
    if (ids.length === 0) continue;
    const K = mlpKeys(model, l, ids);
    const kk = noGrad(() => matmul(transpose(K, 0, 1), K)).data;
    for (let i = 0; i < F * F; i++) C[i] += kk[i];
    n += ids.length;
  }
  let tr = 0;
  for (let i = 0; i < F; i++) tr += C[i * F + i] / Math.max(n, 1);
  for (let i = 0; i < F * F; i++) C[i] /= Math.max(n, 1);
  const u = solveSpd(C, F, Float64Array.from(k), (opts.ridge ?? 0.01) * (tr / F));
  let ku = 0;
  for (let i = 0; i < F; i++) ku += k[i] * u[i];
  const A = new Float32Array(F);
  for (let i = 0; i < F; i++) A[i] = u[i] / ku;
  const B = Float32Array.from(delta.data);
  const modules = new Map([[mlp.out, { A: fromData(A, [1, F]), B: fromData(B, [H, 1]) }]]);
  return new LoraAdapter(fact.id, 1, 1, modules, model.arch.fanInFanOut);
}
