/**
 * Applying H: facts (+ probes) in, one adapter per fact, or one adapter per
 * batch of facts, out — one forward of the base model per fact and one of H
 * per batch, no optimisation.
 *
 * A last-site H (last-site.ts) writes one gated neuron per fact; a batch is
 * its facts' neurons in one bundle (each gate keeps its value to its fact).
 *
 * A subject-site H writes a rank-one δA per fact; a batch (--batch N) is solved MALMEN-style: with K = [k*₁ … k*ₙ] and the
 * generated values Δ = [δ₁ … δₙ], ΔW = Δ (KᵀC⁻¹K)⁻¹ KᵀC⁻¹, the least-squares
 * update (C-weighted) that maps every fact's key to exactly its own δ, stored
 * as a rank-n LoRA (B = Δ, A = (KᵀC⁻¹K)⁻¹ KᵀC⁻¹). For n = 1 it is ROME's A.
 * Summing the n rank-one adapters instead (each A_i k*_i = 1, but A_i k*_j ≠ 0)
 * was measured against it (README).
 */
import { fromData, noGrad } from '@catechism/core/tensor';
import { LoraAdapter, type CausalLM, type Tokenizer } from '@catechism/core/models';
import { cholSolve, cholesky, dataSha256, testProbes, writeEditBundle, type EditFact, type Rec, type TemplateBank } from '@catechism/core/edit';
import type { AdapterRecord } from '@catechism/core/adapters';
import { UsageError } from '@catechism/core/records';
import { targetsHash, type LoadedHyper } from './hypernet.js';
import { FactError, editRow, factPhrasings, featurize, type FactFeatures, type Row } from './features.js';
import { refineBatch, refineDelta, type RefineOptions } from './refine.js';
import { featurizeLast, lastUnits, prefixedRows } from './last-site.js';
import { patchUnitsAdapter, type NeuronGate, type PatchedNeuron } from '@catechism/core/edit';

/** Refuse H made for another base model or other target modules (both sides named). */
export function checkCompatible(h: LoadedHyper, model: CausalLM, modelSha: string, modelName: string, targets?: readonly string[]): void {
  const c = h.config;
  if (c.base_model.sha256 !== modelSha) {
    throw new UsageError(
      `hypernetwork ${c.id} (${h.dir}) was trained for base model ${c.base_model.name} sha256 ${c.base_model.sha256}; ` +
      `--model ${modelName} has sha256 ${modelSha}: retrain it for this model (hypernet-gen train --model ${modelName})`,
    );
  }
  if (targets && targets.length) {
    const want = [...targets].sort().join(',');
    if (want !== [...c.targets].sort().join(',')) {
      throw new UsageError(
        `hypernetwork ${c.id} edits ${c.targets.join(', ')} (targets hash ${targetsHash(c.targets)}); --targets asks for ${targets.join(', ')} (targets hash ${targetsHash(targets)})`,
      );
    }
  }
  const mods = new Set(model.linearModules().map(([n]) => n));
  for (const t of c.targets) if (!mods.has(t)) throw new UsageError(`hypernetwork ${c.id} edits ${t}, which this ${model.config.modelType} model does not have`);
  if (model.config.hidden !== c.hidden) throw new UsageError(`hypernetwork ${c.id} makes values of size ${c.hidden}; the model's hidden size is ${model.config.hidden}`);
}

export interface Generated {
  adapter: LoraAdapter;
  facts: EditFact[];
  deltaNorms: number[];
  phrasings: number[];
  ms: number;
  /** With refine: the target NLL at the last refinement step (one fact: its own; a batch: one, the batch's mean). */
  refinedNll?: number[];
  /** site 'last': each fact's gate and neuron. */
  gates?: NeuronGate[];
  neurons?: Array<{ fact_id: string; module: string; neuron: number }>;
}

/** The values [n, H] as LoRA B columns [H, n] (B = Δᵀ), and each value's norm. */
function valueColumns(delta: Float32Array, n: number, H: number): { B: Float32Array; norms: number[] } {
  const B = new Float32Array(H * n);
  const norms: number[] = [];
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let j = 0; j < H; j++) {
      B[j * n + i] = delta[i * H + j];
      s += delta[i * H + j] ** 2;
    }
    norms.push(Math.sqrt(s));
  }
  return { B, norms };
}

/**
 * site 'last': one gated neuron of the last layer per fact (last-site.ts),
 * the neurons `neuronOffset`… of H's least-used list less those `avoid`
 * names (other patches hold them), so the adapters of one run can be summed (two patches on
 * one neuron do not add).
 */
function generateLast(
  h: LoadedHyper, model: CausalLM, tok: Tokenizer, facts: readonly EditFact[], probes: readonly Rec[], templates: TemplateBank | null, phrasings: number, name: string,
  neuronOffset: number, avoid: readonly PatchedNeuron[],
): Generated {
  const t0 = performance.now();
  const st = h.gate!;
  const n = facts.length;
  const units = lastUnits(model);
  const taken = new Set(avoid.filter((x) => units.some((u) => u.gateMod === x.module)).map((x) => x.neuron));
  const free = st.neurons.filter((i) => !taken.has(i));
  if (neuronOffset + n > free.length) throw new UsageError(`hypernetwork ${h.config.id} has ${free.length} free neurons to repurpose; this run asks for ${neuronOffset + n} (give fewer facts a run)`);
  const feats = facts.map((f) => {
    let rows;
    try {
      rows = prefixedRows(tok, f, factPhrasings(f, probes, templates, phrasings), st.prefixes);
    } catch (e) {
      if (e instanceof FactError) throw e;
      throw new FactError(`fact ${f.id}: ${(e as Error).message}`, f.id, 'target_new');
    }
    return { f: featurizeLast(model, st, f.subject, f.relation, rows.rows[0].targets[0][1], rows.rows, rows.rows.length, rows.plain), phr: rows.rows.length };
  });
  const H = h.config.hidden;
  const Z = feats[0].f.z.length;
  const zData = new Float32Array(n * Z);
  const sc = new Float32Array(n);
  feats.forEach((x, i) => {
    zData.set(x.f.z, i * Z);
    sc[i] = x.f.oRms;
  });
  const delta = noGrad(() => h.net.forward(fromData(zData, [n, Z]), fromData(sc, [n, 1]))).data; // [n, H]
  const { B: U, norms } = valueColumns(delta, n, H);
  const neurons = free.slice(neuronOffset, neuronOffset + n);
  const gates = feats.map((x) => x.f.gate);
  const adapter = patchUnitsAdapter(name, units, H, gates, units.map(() => neurons), fromData(U, [H, n]), model.arch.fanInFanOut);
  return {
    adapter, facts: facts.slice(), deltaNorms: norms, phrasings: feats.map((x) => x.phr), ms: performance.now() - t0, gates,
    neurons: units.flatMap((u) => neurons.map((i, j) => ({ fact_id: facts[j].id, module: u.gateMod, neuron: i }))),
  };
}

/** Features and δ of a group of facts (one model forward per fact, one H forward for the group). */
export function generate(
  h: LoadedHyper, model: CausalLM, tok: Tokenizer, facts: readonly EditFact[], probes: readonly Rec[], templates: TemplateBank | null, phrasings: number, name: string,
  solve: 'lsq' | 'sum' = 'lsq', refine?: RefineOptions, neuronOffset = 0, avoid: readonly PatchedNeuron[] = [],
): Generated {
  if (h.config.site === 'last') {
    if (refine && refine.steps > 0) throw new UsageError(`--refine: hypernetwork ${h.config.id} writes gated neurons at the last token (site "last"); refinement is for the subject site`);
    return generateLast(h, model, tok, facts, probes, templates, phrasings, name, neuronOffset, avoid);
  }
  const t0 = performance.now();
  const c = h.config;
  const feats: FactFeatures[] = [];
  const refining = refine !== undefined && refine.steps > 0;
  const factRows: Row[][] = [];
  const factS: Float32Array[][] = [];
  const nPhr: number[] = [];
  for (const f of facts) {
    let rows;
    try {
      rows = factPhrasings(f, probes, templates, phrasings).map((p) => editRow(tok, f, p));
    } catch (e) {
      if (e instanceof FactError) throw e;
      throw new FactError(`fact ${f.id}: ${(e as Error).message}`, f.id, 'target_new');
    }
    nPhr.push(rows.length);
    const fz = featurize(model, c.layer, h.net.shape, h.chol, f, rows[0].targets[0][1], rows, rows.length, refining && facts.length === 1);
    feats.push(fz.feats);
    factRows.push(rows);
    factS.push(fz.s);
  }
  const n = facts.length;
  const H = c.hidden;
  const D = c.keyDim;
  const Z = feats[0].z.length;
  const zData = new Float32Array(n * Z);
  const sc = new Float32Array(n);
  feats.forEach((f, i) => {
    zData.set(f.z, i * Z);
    sc[i] = f.oRms;
  });
  const delta = Float32Array.from(noGrad(() => h.net.forward(fromData(zData, [n, Z]), fromData(sc, [n, 1]))).data); // [n, H]
  const refinedNll: number[] = [];
  // one fact: its δ alone, with its own rank-one key side (as it was trained); a batch: below, once its key side is solved
  if (refining && n === 1) refinedNll.push(refineDelta(model, c.layer, factRows[0], factS[0], delta, refine!));
  let A: Float32Array;
  if (n === 1) A = feats[0].A;
  else if (solve === 'sum') {
    // the sum of the n rank-one edits (each A_i k*_i = 1, but A_i k*_j ≠ 0): the alternative measured in the README
    A = new Float32Array(n * D);
    feats.forEach((f, i) => A.set(f.A, i * D));
  } else {
    // G = KᵀC⁻¹K (n×n), A = G⁻¹ (C⁻¹K)ᵀ
    const G = new Float64Array(n * n);
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
      let s = 0;
      for (let d = 0; d < D; d++) s += feats[i].kStar[d] * feats[j].cInvK[d];
      G[i * n + j] = s;
    }
    for (let i = 0; i < n; i++) for (let j = 0; j < i; j++) G[i * n + j] = G[j * n + i] = 0.5 * (G[i * n + j] + G[j * n + i]);
    let tr = 0;
    for (let i = 0; i < n; i++) tr += G[i * n + i];
    const L = cholesky(G, n, (1e-6 * tr) / n, 'hypernet batch: key Gram matrix');
    A = new Float32Array(n * D);
    for (let i = 0; i < n; i++) {
      const e = new Float64Array(n);
      e[i] = 1;
      const gi = cholSolve(L, n, e); // row i of G⁻¹
      for (let j = 0; j < n; j++) for (let d = 0; d < D; d++) A[i * D + d] += gi[j] * feats[j].cInvK[d];
    }
  }
  if (refining && n > 1) {
    // MALMEN-style: the batch's values refined together under the batch's own solve (every edit active on every row)
    refinedNll.push(refineBatch(model, c.layer, factRows, A, D, delta, refine!));
  }
  const { B, norms } = valueColumns(delta, n, H);
  const adapter = new LoraAdapter(name, n, n, new Map([[c.targets[0], { A: fromData(A, [n, D]), B: fromData(B, [H, n]) }]]), model.arch.fanInFanOut);
  return { adapter, facts: facts.slice(), deltaNorms: norms, phrasings: nPhr, ms: performance.now() - t0, ...(refining ? { refinedNll } : {}) };
}

export interface ApplyArgs {
  /** Facts per adapter (1: one per fact). */
  batch: number;
  phrasings: number;
  /** Gradient steps on each δ after H (0 or absent: H's δ as is, one forward per fact). */
  refine?: RefineOptions;
  seed: number;
  out?: string;
  registry?: string;
  createdAt?: string;
  /** Neurons other patches hold (e.g. the registry's live ref): a last-site H does not repurpose them. */
  avoid?: PatchedNeuron[];
}

/** Generate and write the adapters; returns their records (in input order of facts). */
export async function applyHyper(
  h: LoadedHyper, res: { model: CausalLM; tokenizer: Tokenizer; modelName: string; modelSha: string; templates: TemplateBank | null },
  facts: readonly EditFact[], records: readonly Rec[], a: ApplyArgs, log: (m: string) => void,
): Promise<{ adapters: AdapterRecord[]; msPerAdapter: number[] }> {
  const probes = records.filter((r) => r.kind === 'probe');
  const prev = res.model.activeAdapters();
  res.model.setAdapters([]);
  const adapters: AdapterRecord[] = [];
  const ms: number[] = [];
  try {
    for (let s = 0; s < facts.length; s += a.batch) {
      const group = facts.slice(s, s + a.batch);
      const ids = new Set(group.map((f) => f.id));
      const g = generate(h, res.model, res.tokenizer, group, probes, res.templates, a.phrasings, group.map((f) => f.id).join('+'), 'lsq', a.refine, s, a.avoid);
      const refined = a.refine && a.refine.steps > 0 ? { refine_steps: a.refine.steps, refine_lr: a.refine.lr, refine_max_norm: group.length > 1 ? a.refine.batchMaxNorm : a.refine.maxNorm } : {};
      const mine = records.filter((r) => (r.kind === 'fact' && ids.has(r.id as string)) || (r.kind === 'probe' && ids.has(r.fact_id as string)));
      const rec = await writeEditBundle({
        adapter: g.adapter, method: 'hypernet', baseModel: { name: res.modelName, sha256: res.modelSha }, facts: group, probes: testProbes({ facts: group, probes: mine }),
        dataSha256: dataSha256(mine), seed: a.seed,
        hyperparameters: {
          hypernet: h.config.id, hypernet_sha256: h.config.sha256, layer: h.config.layer, site: h.config.site ?? 'subject', phrasings: a.phrasings, ...refined,
          ...(g.gates ? {} : { batch_solve: group.length > 1 ? 'least-squares' : 'rome-key' }),
        },
        training: {
          hypernet: h.config.id, hypernet_sha256: h.config.sha256, delta_norms: g.deltaNorms, phrasings: g.phrasings, generate_ms: Math.round(g.ms * 10) / 10,
          ...(g.refinedNll ? { refined_nll: g.refinedNll.map((x) => Math.round(x * 1e4) / 1e4) } : {}),
          ...(g.gates ? {
            layer: h.config.layer, neurons: g.neurons,
            gates: g.gates.map((x, j) => ({ fact_id: group[j].id, tau: x.tau, kappa: x.kappa, neg_quantile: x.negQuantile, pos_mean: x.posMean, pos_low: x.posLow, leaks: x.leaks })),
          } : {}),
        },
        ...(a.createdAt ? { createdAt: a.createdAt } : {}),
      }, { out: a.out, registry: a.registry });
      adapters.push(rec);
      ms.push(g.ms);
      log(`hypernet ${rec.id}: ${group.length} fact${group.length > 1 ? 's' : ''} (${group.map((f) => f.id).join(', ')}), ${g.ms.toFixed(1)} ms, ‖δ‖ ${g.deltaNorms.map((x) => x.toFixed(2)).join(' ')}`);
    }
  } finally {
    res.model.setAdapters(prev);
  }
  return { adapters, msPerAdapter: ms };
}
