/**
 * What explain adds for governance: the approvals recorded for the bundles
 * that make the answer, and for mixture-of-experts models the experts each
 * layer's router picks at the position that predicts the answer (the
 * prompt's last token), without and with the adapters.
 */
import type { ActiveAdapter, CausalLM } from '@catechism/core/models';
import { isMoe, routerProbs, topExperts } from '@catechism/core/metrics';
import { signatureProblem, type Registry } from './core.js';

export interface ExplainApproval {
  ref: string;
  approver: string;
  key_id: string;
  when: string;
  note: string | null;
  /** The signature holds (a tampered approval is listed with false). */
  signature_ok: boolean;
}

/** Every approval in the registry of each of these bundles, by bundle hash. */
export async function approvalsByBundle(reg: Registry, shas: readonly string[]): Promise<Map<string, ExplainApproval[]>> {
  const want = new Set(shas);
  const out = new Map<string, ExplainApproval[]>(shas.map((s) => [s, []]));
  for (const ref of await reg.refs()) {
    for (const a of await reg.approvals(ref).catch(() => [])) {
      if (!want.has(a.bundle)) continue;
      out.get(a.bundle)!.push({ ref: a.ref, approver: a.approver, key_id: a.key_id, when: a.when, note: a.note, signature_ok: signatureProblem(a) === null });
    }
  }
  return out;
}

export interface LayerExperts {
  layer: number;
  base: number[];
  adapted: number[];
  changed: boolean;
}

/** Per layer, the top-k experts at the prompt's last position, base vs adapted; null for a dense model. */
export function answerExperts(model: CausalLM, adapters: ActiveAdapter[], prompt: number[]): LayerExperts[] | null {
  if (!isMoe(model)) return null;
  const prev = model.activeAdapters();
  const route = (set: ActiveAdapter[]) => {
    model.setAdapters(set);
    return routerProbs(model, [prompt]);
  };
  try {
    const b = route([]);
    const a = route(adapters);
    const T = prompt.length, E = b.experts, K = b.topK;
    return Array.from({ length: b.layers }, (_, l) => {
      const off = (l * T + T - 1) * E;
      const base = topExperts(b.probs[0], off, E, K);
      const adapted = topExperts(a.probs[0], off, E, K);
      return { layer: l, base, adapted, changed: [...base].sort().join() !== [...adapted].sort().join() };
    });
  } finally {
    model.setAdapters(prev);
  }
}
