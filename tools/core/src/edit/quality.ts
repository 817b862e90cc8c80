/**
 * Quick edit-quality figures (CounterFact-style, top-1), used by tests and
 * the benchmark to check lora-train's output; `validate` is the full tool.
 *
 *   efficacy     insert: target_new is top-1 on the edit prompt
 *   paraphrase   insert: the same on held-out templates (never trained on)
 *   neighbourhood other subjects of the same relations that the base model
 *                answers correctly still do
 *   forgotten    forget: the old answer is NOT top-1 on edit + held-out prompts
 */
import type { CausalLM } from '../models/causal-lm.js';
import type { LoraAdapter } from '../models/lora.js';
import type { Tokenizer } from '../models/loader.js';
import { Rng } from '../util/random.js';
import { encodeTrainingPair, type EditFact, type Rec, type TemplateBank } from './data.js';
import { top1 } from './model-util.js';

export interface QualityFigures {
  efficacy: number;
  paraphrase: number;
  neighbourhood: number;
  /** Forget facts: share of their prompts where the old answer is no longer top-1. */
  forgotten: number;
  /** Counts behind each figure. */
  n: { efficacy: number; paraphrase: number; neighbourhood: number; forgotten: number };
}

interface Row {
  ids: number[];
  target: number;
}

function row(tok: Tokenizer, prompt: string, target: string): Row {
  const { promptIds, targetIds } = encodeTrainingPair(tok, prompt, target);
  return { ids: promptIds, target: targetIds[0] };
}

/**
 * Figures for `adapters` (each active alone, scale 1) over their facts.
 * `known` are true facts for neighbourhood prompts; `avoid` lists neighbour
 * prompts used in training (excluded).
 */
export function editQuality(
  model: CausalLM, tok: Tokenizer, edits: Array<{ adapter: LoraAdapter; facts: EditFact[] }>,
  opts: { templates?: TemplateBank | null; known: readonly Rec[]; neighboursPerFact?: number; seed?: number; avoid?: ReadonlySet<string> },
): QualityFigures {
  const rng = new Rng(opts.seed ?? 12345);
  const per = opts.neighboursPerFact ?? 5;
  const prev = model.activeAdapters();
  const acc = { efficacy: [0, 0], paraphrase: [0, 0], neighbourhood: [0, 0], forgotten: [0, 0] };
  try {
    for (const { adapter, facts } of edits) {
      const eff: Row[] = [];
      const para: Row[] = [];
      const forg: Row[] = [];
      const neigh: Row[] = [];
      const subjects = new Set(facts.map((f) => f.subject));
      for (const f of facts) {
        const prompt = f.prompt.replace('{}', f.subject);
        const held = (f.relation ? opts.templates?.heldout.get(f.relation) : undefined) ?? [];
        if (f.op === 'insert') {
          eff.push(row(tok, prompt, f.target_new!));
          for (const h of held) para.push(row(tok, h.replace('{}', f.subject), f.target_new!));
        } else {
          forg.push(row(tok, prompt, f.target_true!));
          for (const h of held) forg.push(row(tok, h.replace('{}', f.subject), f.target_true!));
        }
        const same = opts.known.filter(
          (k) => k.relation === f.relation && typeof k.subject === 'string' && !subjects.has(k.subject) && typeof k.prompt === 'string' && typeof k.target_true === 'string',
        );
        let taken = 0;
        for (const k of rng.shuffle(same.slice())) {
          if (taken >= per) break;
          const p = (k.prompt as string).replace('{}', k.subject as string);
          if (opts.avoid?.has(p)) continue;
          neigh.push(row(tok, p, k.target_true as string));
          taken++;
        }
      }
      // neighbours the base model answers correctly: knowledge that must survive the edit
      model.setAdapters([]);
      const baseNeigh = neigh.length ? top1(model, neigh.map((r) => r.ids)) : [];
      const known = neigh.filter((r, i) => baseNeigh[i] === r.target);
      model.setAdapters([{ adapter }]);
      const score = (rows: Row[], key: 'efficacy' | 'paraphrase' | 'forgotten', want: boolean) => {
        if (!rows.length) return;
        const p = top1(model, rows.map((r) => r.ids));
        rows.forEach((r, i) => {
          acc[key][1]++;
          if ((p[i] === r.target) === want) acc[key][0]++;
        });
      };
      score(eff, 'efficacy', true);
      score(para, 'paraphrase', true);
      score(forg, 'forgotten', false);
      if (known.length) {
        const p = top1(model, known.map((r) => r.ids));
        p.forEach((t, i) => {
          acc.neighbourhood[1]++;
          if (t === known[i].target) acc.neighbourhood[0]++;
        });
      }
    }
  } finally {
    model.setAdapters(prev);
  }
  const frac = ([a, b]: number[]) => (b ? a / b : NaN);
  return {
    efficacy: frac(acc.efficacy),
    paraphrase: frac(acc.paraphrase),
    neighbourhood: frac(acc.neighbourhood),
    forgotten: frac(acc.forgotten),
    n: { efficacy: acc.efficacy[1], paraphrase: acc.paraphrase[1], neighbourhood: acc.neighbourhood[1], forgotten: acc.forgotten[1] },
  };
}
