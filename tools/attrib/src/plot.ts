/**
 * `--plot DIR`: per fact, causal-trace heatmaps (layers × token positions,
 * one panel per site kind, as in ROME's figures) and a bar chart of module
 * scores, drawn with vega-lite and rendered to SVG on the server.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { TopLevelSpec } from 'vega-lite';
import type { Tokenizer } from '@catechism/core/models';
import type { FactResult } from './lib.js';

const KIND_TITLE: Record<string, string> = {
  resid_post: 'Residual stream (restored)',
  mlp: 'MLP output (restored)',
  attn: 'Attention output (restored)',
};
const KIND_SCHEME: Record<string, string> = { resid_post: 'purples', mlp: 'greens', attn: 'reds' };

async function toSvg(spec: TopLevelSpec): Promise<string> {
  // vega is loaded only when a plot is asked for (it is most of the start-up time)
  const [{ compile }, { View, parse }] = await Promise.all([import('vega-lite'), import('vega')]);
  const view = new View(parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Safe file stem for a fact id. */
export function fileStem(id: string): string {
  return id.replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 120) || 'fact';
}

/** The heatmap SVG of one trace (patch or atp). */
export async function traceSvg(factId: string, method: string, res: FactResult, tok: Tokenizer): Promise<string | null> {
  const tr = res.traces[method as 'patch' | 'atp'];
  if (!tr) return null;
  const T = tr.tokens.length;
  // label every position by its token, starring the subject's tokens (as ROME does)
  const labels = tr.tokens.map((id, t) => {
    const s = tok.decode([id]).replace(/\s/g, '␣') || `#${id}`;
    const star = t >= tr.subject[0] && t < tr.subject[1] ? '*' : '';
    return `${String(t).padStart(2, '0')} ${s}${star}`;
  });
  const panels = Object.entries(tr.effects).map(([kind, e]) => {
    const values: Array<Record<string, unknown>> = [];
    for (let l = 0; l < tr.layers; l++) for (let t = 0; t < T; t++) values.push({ layer: l, token: labels[t], effect: e![l * T + t] });
    return {
      title: { text: KIND_TITLE[kind] ?? kind, fontSize: 12 },
      data: { values },
      width: { step: Math.max(10, Math.min(36, Math.floor(420 / tr.layers))) },
      height: { step: 20 },
      mark: { type: 'rect' as const },
      encoding: {
        x: { field: 'layer', type: 'ordinal' as const, title: 'layer', axis: { labelAngle: 0 } },
        y: { field: 'token', type: 'ordinal' as const, title: null, sort: labels, axis: { labelLimit: 160, labelFont: 'monospace' } },
        color: {
          field: 'effect', type: 'quantitative' as const, title: method === 'patch' ? 'ΔP' : 'ΔP (est.)',
          scale: { scheme: KIND_SCHEME[kind] ?? 'blues' },
          legend: { orient: 'bottom' as const, gradientLength: 140, titleFontSize: 10 },
        },
      },
      resolve: { scale: { color: 'independent' } },
    };
  });
  const spec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: {
      text: `${factId}: ${method === 'patch' ? 'causal trace' : 'attribution patching'} of P(${JSON.stringify(tok.decode([tr.target]).trim())})`,
      subtitle: `P clean ${tr.pClean.toFixed(4)}, corrupted ${tr.pCorrupt.toFixed(4)}; * = subject tokens (noised); cell = P(restored) − P(corrupted)`,
      anchor: 'start', fontSize: 14,
    },
    hconcat: panels,
    resolve: { scale: { color: 'independent' } },
    config: { font: 'sans-serif', view: { stroke: '#cbd5e0' }, axis: { labelFontSize: 10 } },
  } as unknown as TopLevelSpec;
  return toSvg(spec);
}

/** Bar chart of grad × weight per module (the top `n` by magnitude). */
export async function moduleSvg(factId: string, res: FactResult, n = 24): Promise<string | null> {
  if (!res.gxa) return null;
  const rows = res.gxa.modules.slice().sort((a, b) => Math.abs(b.score) - Math.abs(a.score)).slice(0, n);
  const values = rows.map((m) => ({ module: m.module, score: m.score, sign: m.score >= 0 ? 'raises log P' : 'lowers log P' }));
  const spec: TopLevelSpec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: `${factId}: module scores (Σ ∂log P/∂W ⊙ W), top ${rows.length} by magnitude`, anchor: 'start', fontSize: 14 },
    data: { values },
    width: 360,
    height: { step: 16 },
    mark: { type: 'bar' },
    encoding: {
      y: { field: 'module', type: 'nominal', sort: null, title: null, axis: { labelLimit: 320, labelFont: 'monospace' } },
      x: { field: 'score', type: 'quantitative', title: 'grad × weight' },
      color: { field: 'sign', type: 'nominal', title: null, scale: { domain: ['raises log P', 'lowers log P'], range: ['#2b6cb0', '#c05621'] } },
    },
    config: { font: 'sans-serif', view: { stroke: '#cbd5e0' } },
  };
  return toSvg(spec);
}

/** Write every picture of one fact into dir; returns the files written. */
export async function writePlots(dir: string, factId: string, res: FactResult, tok: Tokenizer): Promise<string[]> {
  fs.mkdirSync(dir, { recursive: true });
  const out: string[] = [];
  for (const m of ['patch', 'atp']) {
    const svg = await traceSvg(factId, m, res, tok);
    if (svg) {
      const f = path.join(dir, `${fileStem(factId)}.${m}.svg`);
      fs.writeFileSync(f, svg);
      out.push(f);
    }
  }
  const bars = await moduleSvg(factId, res);
  if (bars) {
    const f = path.join(dir, `${fileStem(factId)}.modules.svg`);
    fs.writeFileSync(f, bars);
    out.push(f);
  }
  return out;
}
