/**
 * Activation hooks at named sites.
 *
 * Sites (same for every architecture; see scripts/golden/archs.py for the
 * reference definitions):
 *   embed                  residual stream entering layer 0, [B,T,H]
 *   layers.{i}.attn        attention output after the output projection, [B,T,H]
 *   layers.{i}.mlp         MLP (or whole MoE block) output, [B,T,H]
 *   layers.{i}.resid_post  residual stream after layer i, [B,T,H]
 *   layers.{i}.router      router logits before softmax, [B,T,E]
 *   layers.{i}.experts.{e} expert e's routing-weighted contribution, zero for
 *                          tokens not routed to it, [B,T,H]
 * T is the number of tokens in this forward call (with a KV cache, only the
 * new ones).
 */
import { Tensor, add, indexAdd, mul, reshape, zeros, fromData } from '../tensor/index.js';

/** Positions as [batch row, token index] pairs. */
export type Positions = ReadonlyArray<readonly [number, number]>;

export interface SiteHook {
  /**
   * Make the activation a gradient leaf: a tensor with the same values that
   * requires grad, so `capture` gets one whose `.grad` is filled by backward
   * even when nothing upstream is trainable (attribution on a frozen model).
   * Gradient does not flow further upstream from this site.
   */
  leaf?: boolean;
  /** Called with the activation as computed (before patch/add). Call
   *  `x.retainGrad()` here to read its gradient after backward. */
  capture?: (x: Tensor, site: string) => void;
  /** Replace: `value` [B,T,D] everywhere, or rows [n,D] at `positions`. */
  patch?: { value: Tensor; positions?: Positions };
  /** Add: `value` broadcastable to [B,T,D] everywhere, or rows [n,D] at `positions`. */
  add?: { value: Tensor; positions?: Positions };
  /** Any differentiable transformation, applied last. */
  fn?: (x: Tensor, site: string) => Tensor;
}

export type Hooks = Record<string, SiteHook>;

function checkPositions(pos: Positions, B: number, T: number, site: string): Int32Array {
  const rows = new Int32Array(pos.length);
  const seen = new Set<number>();
  pos.forEach(([b, t], i) => {
    if (!Number.isInteger(b) || !Number.isInteger(t) || b < 0 || b >= B || t < 0 || t >= T) {
      throw new RangeError(`hook at ${site}: position [${b}, ${t}] is outside the batch [${B}, ${T}]`);
    }
    const r = b * T + t;
    if (seen.has(r)) throw new RangeError(`hook at ${site}: position [${b}, ${t}] is listed twice`);
    seen.add(r);
    rows[i] = r;
  });
  return rows;
}

/** Rows [n,D] scattered into a zero [B,T,D] tensor (differentiable in `value`). */
function scatterRows(value: Tensor, rows: Int32Array, B: number, T: number, D: number, site: string): Tensor {
  if (value.shape.length !== 2 || value.shape[0] !== rows.length || value.shape[1] !== D) {
    throw new RangeError(`hook at ${site}: value has shape [${value.shape.join(', ')}], expected [${rows.length}, ${D}] (one row per position)`);
  }
  return reshape(indexAdd(zeros([B * T, D]), 0, rows, value), [B, T, D]);
}

/** Apply the hook registered for `site` (if any) to activation x [B,T,D]. */
export function applyHook(hooks: Hooks | undefined, site: string, xIn: Tensor): Tensor {
  let x = xIn;
  const h = hooks?.[site];
  if (!h) return x;
  const [B, T, D] = x.shape;
  if (h.leaf) x = fromData(x.data, x.shape, { requiresGrad: true });
  if (h.capture) h.capture(x, site);
  let y = x;
  if (h.patch) {
    const { value, positions } = h.patch;
    if (!positions) {
      if (value.shape.length !== 3 || value.shape[0] !== B || value.shape[1] !== T || value.shape[2] !== D) {
        throw new RangeError(`hook at ${site}: patch value has shape [${value.shape.join(', ')}], expected [${B}, ${T}, ${D}]`);
      }
      y = value;
    } else {
      const rows = checkPositions(positions, B, T, site);
      const keep = new Float32Array(B * T).fill(1);
      for (const r of rows) keep[r] = 0;
      y = add(mul(y, fromData(keep, [B, T, 1])), scatterRows(value, rows, B, T, D, site));
    }
  }
  if (h.add) {
    const { value, positions } = h.add;
    if (!positions) y = add(y, value);
    else y = add(y, scatterRows(value, checkPositions(positions, B, T, site), B, T, D, site));
  }
  if (h.fn) {
    y = h.fn(y, site);
    if (y.shape.length !== 3 || y.shape[0] !== B || y.shape[1] !== T || y.shape[2] !== D) {
      throw new RangeError(`hook at ${site}: fn returned shape [${y.shape.join(', ')}], expected [${B}, ${T}, ${D}]`);
    }
  }
  return y;
}

/** Every site name of a model with `layers` layers and `experts` experts per layer. */
export function siteNames(layers: number, experts = 0): string[] {
  const out = ['embed'];
  for (let i = 0; i < layers; i++) {
    out.push(`layers.${i}.attn`, `layers.${i}.mlp`, `layers.${i}.resid_post`);
    if (experts > 0) {
      out.push(`layers.${i}.router`);
      for (let e = 0; e < experts; e++) out.push(`layers.${i}.experts.${e}`);
    }
  }
  return out;
}
