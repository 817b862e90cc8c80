/**
 * The ONNX graph of a causal LM, for every family the arch descriptions
 * define: the builder reads module names, weight layout, norm kind,
 * positions (learned or RoPE), fused or separate q/k/v, and dense or sparse
 * MLPs from `model.arch`, and reproduces CausalLM.forward's arithmetic with
 * standard ONNX ops (opset 17; no contrib ops, so any runtime loads it).
 *
 * Inputs: input_ids, attention_mask (int64 [batch, sequence]); outputs:
 * logits (float32 [batch, sequence, vocab]) and, for MoE models, the router
 * logits of every layer (router_logits.{i}, [batch, sequence, experts]).
 * Positions are computed from the mask as CausalLM does (running count of
 * real tokens; padding gets 0), so left-padded batches score the same.
 *
 * The hidden state stays [batch·sequence, hidden] between layers, so every
 * projection is one Gemm reading the weight in its stored layout (transB for
 * [out, in] Linear weights, none for GPT-2's [in, out] Conv1D).
 */
import type { ActiveAdapter, CausalLM } from '../models/causal-lm.js';
import { ropeInvFreq } from '../models/config.js';
import type { LayerModules } from '../models/arch/index.js';
import { foldAdapters } from '../merge/fold.js';
import type { Tensor } from '../tensor/index.js';
import { GraphBuilder } from './graph.js';
import { DT, type ModelMsg, type ValueInfoMsg } from './proto.js';

export const OPSET = 17;
/** ONNX IR version that goes with opset 17. */
export const IR_VERSION = 8;

export interface GraphOptions {
  /** Also output each MoE layer's router logits (default true for MoE models). */
  routerLogits?: boolean;
  /**
   * Past keys and values in and out: inputs past_key_values.{i}.key/.value
   * [batch, kv heads, past, head dim] (past may be 0), attention_mask then
   * covers past + new tokens; outputs present.{i}.key/.value (past + new).
   */
  kvCache?: boolean;
}

/** Masked attention scores get this instead of −∞, so a row with no visible key stays finite. */
const MASKED = -1e30;

/**
 * The graph of `model` with `adapters` folded into its weights.
 * Returns the ModelProto message (without metadata) and whether a tied
 * lm_head had to be untied (an adapter on lm_head).
 */
export function buildGraph(model: CausalLM, adapters: readonly ActiveAdapter[], opts: GraphOptions = {}): { model: ModelMsg; untied: boolean; g: GraphBuilder } {
  const c = model.config;
  const arch = model.arch;
  const { weights, untied } = foldAdapters(model, adapters);
  const g = new GraphBuilder();
  const W = (name: string): string => {
    const canon = arch.canonical(name);
    if (g.payload.has(canon)) return canon;
    const t: Tensor | undefined = weights.get(canon);
    if (!t) throw new Error(`onnx export: no weight ${canon}`);
    return g.f32(canon, t.data, [...t.shape]);
  };
  const has = (name: string) => weights.has(arch.canonical(name));
  const H = c.hidden;
  const D = c.headDim;
  const Hq = c.heads;
  const Hkv = c.kvHeads;
  const grp = Hq / Hkv;

  // shapes: [B, T] from the ids, N = B·T
  const ids = 'input_ids';
  const maskIn = 'attention_mask';
  const bt = g.op('Shape', [ids]);
  const shapeOf = (...tail: number[]) => g.op('Concat', [bt, g.i64(tail)], { axis: 0 });
  const flatIds = g.op('Reshape', [ids, g.i64([-1])]);

  // positions: (cumsum(mask) − 1)·mask, CausalLM's padding-aware count
  const cum = g.op('CumSum', [maskIn, g.i64([1], [])]);
  let pos = g.op('Mul', [g.op('Sub', [cum, g.i64([1], [])]), maskIn]);
  const T = g.op('Gather', [bt, g.i64([1], [])], { axis: 0 });
  // with a KV cache the mask covers S = past + T tokens; the new ones are its last T
  const kv = opts.kvCache === true;
  const S = kv ? g.op('Gather', [g.op('Shape', [maskIn]), g.i64([1], [])], { axis: 0 }) : T;
  const P = kv ? g.op('Sub', [S, T]) : '';
  if (kv) pos = g.op('Slice', [pos, g.op('Reshape', [P, g.i64([1])]), g.op('Reshape', [S, g.i64([1])]), g.i64([1])]);

  let h = g.op('Gather', [W(`${arch.tokenEmbedding}.weight`), flatIds], { axis: 0 });
  if (arch.positionEmbedding) {
    h = g.op('Add', [h, g.op('Gather', [W(`${arch.positionEmbedding}.weight`), g.op('Reshape', [pos, g.i64([-1])])], { axis: 0 })]);
  }

  // RoPE tables [B, 1, 1, T, D] (broadcast over kv heads and the query group)
  let cos = '', sin = '';
  if (!arch.positionEmbedding) {
    const half = D / 2;
    let angle: string;
    if (c.ropeScaling) {
      // scaled RoPE: float32 angle, as CausalLM's differentiable path computes it
      const inv = Float32Array.from(ropeInvFreq(c));
      const posF = g.op('Unsqueeze', [g.op('Cast', [pos], { to: DT.FLOAT }), g.i64([-1])]);
      angle = g.op('Cast', [g.op('Mul', [posF, g.f32('rope.inv_freq', inv, [half])])], { to: DT.DOUBLE });
    } else {
      // plain RoPE: float64 angle, as the native kernel computes it
      const inv = Float64Array.from({ length: half }, (_, i) => Math.pow(c.ropeTheta, (-2 * i) / D));
      const posD = g.op('Unsqueeze', [g.op('Cast', [pos], { to: DT.DOUBLE }), g.i64([-1])]);
      angle = g.op('Mul', [posD, g.f64('rope.inv_freq', inv)]);
    }
    const table = (fn: 'Cos' | 'Sin') => {
      const v = g.op('Cast', [g.op(fn, [angle])], { to: DT.FLOAT });
      return g.op('Unsqueeze', [g.op('Concat', [v, v], { axis: -1 }), g.i64([1, 2])]);
    };
    cos = table('Cos');
    sin = table('Sin');
  }
  const rope = (x: string): string => {
    if (!cos) return x;
    const half = D / 2;
    const lo = g.op('Slice', [x, g.i64([0]), g.i64([half]), g.i64([-1])]);
    const hi = g.op('Slice', [x, g.i64([half]), g.i64([D]), g.i64([-1])]);
    const rot = g.op('Concat', [g.op('Neg', [hi]), lo], { axis: -1 });
    return g.op('Add', [g.op('Mul', [x, cos]), g.op('Mul', [rot, sin])]);
  };

  // attention visibility [B, 1, 1, T, S]: causal (query P + t sees keys ≤ P + t) and a real key
  const r = g.op('Range', [g.i64([0], []), T, g.i64([1], [])]);
  const rq = kv ? g.op('Range', [P, S, g.i64([1], [])]) : r;
  const rk = kv ? g.op('Range', [g.i64([0], []), S, g.i64([1], [])]) : r;
  let causal = g.op('GreaterOrEqual', [g.op('Unsqueeze', [rq, g.i64([1])]), g.op('Unsqueeze', [rk, g.i64([0])])]);
  if (c.slidingWindow !== null) {
    // Mistral-style window: query q sees keys q − window < k ≤ q (our engine refuses longer inputs instead)
    const dist = g.op('Sub', [g.op('Unsqueeze', [rq, g.i64([1])]), g.op('Unsqueeze', [rk, g.i64([0])])]);
    causal = g.op('And', [causal, g.op('Less', [dist, g.i64([c.slidingWindow], [])])]);
  }
  const keyOk = g.op('Unsqueeze', [g.op('Cast', [maskIn], { to: DT.BOOL }), g.i64([1, 2, 3])]);
  const visible = g.op('And', [causal, keyOk]);
  const masked = g.scalarF32(MASKED);

  const lin = (mod: string, x: string): string => {
    const inputs = [x, W(`${mod}.weight`)];
    if (has(`${mod}.bias`)) inputs.push(W(`${mod}.bias`));
    return g.op('Gemm', inputs, { transB: arch.layout(mod) === 'out_in' ? 1 : 0 });
  };
  const norm = (mod: string, x: string): string => {
    if (arch.normKind === 'layernorm') {
      return g.op('LayerNormalization', [x, W(`${mod}.weight`), W(`${mod}.bias`)], { axis: -1, epsilon: { float: c.normEps } });
    }
    const ms = g.op('ReduceMean', [g.op('Mul', [x, x])], { axes: [-1], keepdims: 1 });
    const inv = g.op('Reciprocal', [g.op('Sqrt', [g.op('Add', [ms, g.scalarF32(c.normEps)])])]);
    return g.op('Mul', [g.op('Mul', [x, inv]), W(`${mod}.weight`)]);
  };
  const silu = (x: string) => g.op('Mul', [x, g.op('Sigmoid', [x])]);
  // gelu_new = 0.5·x·(1 + tanh u) = x·sigmoid(2u), u = √(2/π)(x + 0.044715x³), as the native kernel
  const gelu = (x: string) => {
    const x3 = g.op('Mul', [g.op('Mul', [x, x]), x]);
    const u = g.op('Mul', [g.op('Add', [x, g.op('Mul', [x3, g.scalarF32(0.044715)])]), g.scalarF32(0.7978845608028654)]);
    return g.op('Mul', [x, g.op('Sigmoid', [g.op('Mul', [u, g.scalarF32(2)])])]);
  };
  const mlpKeys = (mlp: { in: string[] }, x: string) =>
    mlp.in.length === 1 ? gelu(lin(mlp.in[0], x)) : g.op('Mul', [silu(lin(mlp.in[0], x)), lin(mlp.in[1], x)]);

  const pastIn: string[] = [];
  const presentOut: string[] = [];
  const attention = (i: number, L: LayerModules, x: string): string => {
    let q: string, k: string, v: string;
    if ('fused' in L.qkv) [q, k, v] = g.node('Split', [lin(L.qkv.fused, x), g.i64([Hq * D, Hkv * D, Hkv * D])], { axis: 1 }, 3);
    else [q, k, v] = [lin(L.qkv.q, x), lin(L.qkv.k, x), lin(L.qkv.v, x)];
    // grouped-query attention without copying k/v: q [B, Hkv, g, T, D] against k, v [B, Hkv, 1, S, D]
    const perm = [0, 2, 3, 1, 4];
    const q5 = rope(g.op('Transpose', [g.op('Reshape', [q, shapeOf(Hkv, grp, D)])], { perm }));
    let k5 = rope(g.op('Transpose', [g.op('Reshape', [k, shapeOf(Hkv, 1, D)])], { perm }));
    let v5 = g.op('Transpose', [g.op('Reshape', [v, shapeOf(Hkv, 1, D)])], { perm });
    if (kv) {
      // past [B, Hkv, P, D] (after RoPE, as CausalLM's cache) before the new keys and values
      const cat = (past: string, now: string, name: string) => {
        pastIn.push(past);
        const all = g.op('Concat', [g.op('Unsqueeze', [past, g.i64([2])]), now], { axis: 3 });
        presentOut.push(g.output(g.op('Squeeze', [all, g.i64([2])]), name));
        return all;
      };
      k5 = cat(`past_key_values.${i}.key`, k5, `present.${i}.key`);
      v5 = cat(`past_key_values.${i}.value`, v5, `present.${i}.value`);
    }
    const scores = g.op('Mul', [g.op('MatMul', [q5, g.op('Transpose', [k5], { perm: [0, 1, 2, 4, 3] })]), g.scalarF32(1 / Math.sqrt(D))]);
    const p = g.op('Softmax', [g.op('Where', [visible, scores, masked])], { axis: -1 });
    const o = g.op('Transpose', [g.op('MatMul', [p, v5])], { perm: [0, 3, 1, 2, 4] });
    return lin(L.attnOut, g.op('Reshape', [o, g.i64([-1, Hq * D])]));
  };

  const routerOut: string[] = [];
  const moe = (i: number, m: NonNullable<LayerModules['moe']>, x: string): string => {
    const E = c.experts;
    const K = c.expertsPerTok;
    const router = lin(m.router, x);
    if (opts.routerLogits ?? true) routerOut.push(g.output(g.op('Reshape', [router, shapeOf(E)]), `router_logits.${i}`));
    const probs = g.op('Softmax', [router], { axis: -1 });
    const [vals, idx] = g.node('TopK', [probs, g.i64([K])], { axis: -1, largest: 1, sorted: 1 }, 2);
    const w = g.op('Div', [vals, g.op('ReduceSum', [vals, g.i64([-1])], { keepdims: 1 })]);
    // dense-masked routing: each token's weight on every expert (0 off its top-k), every expert on every token
    const dense = g.op('ScatterElements', [g.op('Mul', [probs, g.scalarF32(0)]), idx, w], { axis: 1 });
    // experts stacked [E, in, out] (one batched MatMul per projection instead of E Gemms)
    const stack = (pick: (e: { in: string[]; out: string }) => string): string => {
      const first = weights.get(arch.canonical(`${pick(m.expert(0))}.weight`))!;
      const [rows, cols] = first.shape; // Linear [out, in]
      const data = new Float32Array(E * rows * cols);
      for (let e = 0; e < E; e++) {
        const src = weights.get(arch.canonical(`${pick(m.expert(e))}.weight`))!.data;
        const off = e * rows * cols;
        for (let o = 0; o < rows; o++) for (let j = 0; j < cols; j++) data[off + j * rows + o] = src[o * cols + j];
      }
      return g.f32(`${pick(m.expert('*')).replace('*', 'stacked')}.weight`, data, [E, cols, rows]);
    };
    const ex0 = m.expert(0);
    if (ex0.in.length !== 2) throw new Error('onnx export: MoE experts are expected to be gated (SwiGLU) MLPs');
    const gate = g.op('MatMul', [x, stack((e) => e.in[0])]);
    const up = g.op('MatMul', [x, stack((e) => e.in[1])]);
    const y = g.op('MatMul', [g.op('Mul', [silu(gate), up]), stack((e) => e.out)]); // [E, N, H]
    const wt = g.op('Unsqueeze', [g.op('Transpose', [dense], { perm: [1, 0] }), g.i64([2])]); // [E, N, 1]
    return g.op('ReduceSum', [g.op('Mul', [y, wt]), g.i64([0])], { keepdims: 0 });
  };

  for (let i = 0; i < c.layers; i++) {
    const L = arch.layer(i);
    h = g.op('Add', [h, attention(i, L, norm(L.attnNorm, h))]);
    const x = norm(L.mlpNorm, h);
    const m = L.moe ? moe(i, L.moe, x) : lin(L.mlp!.out, mlpKeys(L.mlp!, x));
    h = g.op('Add', [h, m]);
  }
  const xf = norm(arch.finalNorm, h);
  const headW = weights.has(`${arch.lmHead}.weight`) ? `${arch.lmHead}.weight` : `${arch.tokenEmbedding}.weight`;
  const inputs = [xf, W(headW)];
  if (weights.has(`${arch.lmHead}.bias`)) inputs.push(W(`${arch.lmHead}.bias`));
  const logits = g.output(g.op('Reshape', [g.op('Gemm', inputs, { transB: 1 }), shapeOf(c.vocabSize)]), 'logits');

  const vi = (name: string, elem: number, dims: Array<number | string>): ValueInfoMsg => ({
    name,
    type: { tensor_type: { elem_type: elem, shape: { dim: dims.map((d) => (typeof d === 'number' ? { dim_value: d } : { dim_param: d })) } } },
  });
  const msg: ModelMsg = {
    ir_version: IR_VERSION,
    producer_name: 'catechism',
    producer_version: '',
    graph: {
      node: g.nodes,
      name: `${c.modelType}-causal-lm`,
      initializer: g.initializers,
      input: [
        vi(ids, DT.INT64, ['batch', 'sequence']),
        vi(maskIn, DT.INT64, ['batch', kv ? 'total_sequence' : 'sequence']),
        ...pastIn.map((n) => vi(n, DT.FLOAT, ['batch', Hkv, 'past_sequence', D])),
      ],
      output: [
        vi(logits, DT.FLOAT, ['batch', 'sequence', c.vocabSize]),
        ...routerOut.map((n) => vi(n, DT.FLOAT, ['batch', 'sequence', c.experts])),
        ...presentOut.map((n) => vi(n, DT.FLOAT, ['batch', Hkv, 'total_sequence', D])),
      ],
    },
    opset_import: [{ domain: '', version: OPSET }],
    metadata_props: [],
  };
  return { model: msg, untied, g };
}
