/**
 * `adapter-merge history REF --html FILE`: one page with a chart per metric,
 * the metric's value per version of REF (its promotion's validation report
 * and every drift-watch measurement), drawn with vega-lite like validate's
 * report page and rendered to inline SVG here (no browser, no scripts in the
 * page). The vega-lite specs are embedded too (`<script type="application/json">`),
 * so the page can be re-rendered or checked by other tools.
 */
import { writeFile } from 'node:fs/promises';
import { compile, type TopLevelSpec } from 'vega-lite';
import { View, parse } from 'vega';
import type { HistoryPoint } from './commands.js';
import type { RefEvent } from './core.js';

const esc = (s: string): string => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

/** The vega-lite spec of one metric's trend: value per version, a point per measurement, coloured by pass/fail, shaped by source. */
export function metricSpec(metric: string, points: readonly HistoryPoint[]): TopLevelSpec {
  const values = points.map((p, i) => ({ version: p.version, value: p.value, source: p.source, verdict: p.pass ? 'pass' : 'fail', adapter: p.adapter_id, when: p.when, n: i }));
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: metric, anchor: 'start', fontSize: 13 },
    data: { values },
    width: 320,
    height: 160,
    layer: [
      {
        mark: { type: 'line', color: '#9aa5b1' },
        encoding: {
          x: { field: 'version', type: 'ordinal', title: 'version' },
          y: { aggregate: 'mean', field: 'value', type: 'quantitative', title: metric },
        },
      },
      {
        mark: { type: 'point', filled: true, size: 60, tooltip: true },
        encoding: {
          x: { field: 'version', type: 'ordinal' },
          y: { field: 'value', type: 'quantitative' },
          color: { field: 'verdict', type: 'nominal', title: null, scale: { domain: ['pass', 'fail'], range: ['#2f855a', '#c53030'] } },
          shape: { field: 'source', type: 'nominal', title: null, scale: { domain: ['validation', 'watch'], range: ['circle', 'triangle-up'] } },
        },
      },
    ],
    config: { font: 'sans-serif', view: { stroke: '#e2e8f0' } },
  };
}

export async function renderSpec(spec: TopLevelSpec): Promise<string> {
  const view = new View(parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

export async function historyHtml(ref: string, points: readonly HistoryPoint[], log: readonly RefEvent[]): Promise<string> {
  const metrics = [...new Set(points.map((p) => p.metric))].sort();
  const figures: string[] = [];
  for (const m of metrics) {
    const spec = metricSpec(m, points.filter((p) => p.metric === m));
    figures.push(`<figure data-metric="${esc(m)}">${await renderSpec(spec)}<script type="application/json" class="vega-lite">${JSON.stringify(spec).replace(/</g, '\\u003c')}</script></figure>`);
  }
  const rows = log
    .map((e) => {
      const what = e.action === 'rollback' ? `rollback to @${e.to_version}${e.automatic ? ' (automatic)' : ''}` : e.action;
      return `<tr class="${e.automatic ? 'fail' : ''}"><td>@${e.version}</td><td>${esc(e.when)}</td><td>${esc(what)}</td><td>${esc(`${e.adapter_id} v${e.adapter_version}`)}</td><td><code>${esc(e.bundle.slice(0, 12))}</code></td><td>${esc(e.who)}</td><td>${esc(e.why ?? '')}</td></tr>`;
    })
    .join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(ref)}: metric history</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1100px;color:#1a202c;padding:0 16px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:22px 0 6px} .sub{color:#555;font-size:13px}
.charts{display:flex;flex-wrap:wrap;gap:14px} figure{margin:0}
table{border-collapse:collapse;font-size:13px;width:100%} th,td{border-bottom:1px solid #e2e8f0;padding:3px 8px;text-align:left}
th{background:#f7fafc} tr.fail td{background:#fff5f5}
</style></head><body>
<h1>${esc(ref)}: metric history</h1>
<p class="sub">${metrics.length} metric(s), ${log.length} version(s). Circles: the validation report a promotion was let through on; triangles: drift-watch measurements (scripts/watch-live.sh). Red: failing.</p>
<div class="charts">${figures.join('\n')}</div>
<h2>History</h2>
<table><thead><tr><th>version</th><th>when</th><th>action</th><th>adapter</th><th>bundle</th><th>who</th><th>why</th></tr></thead><tbody>
${rows}
</tbody></table>
</body></html>
`;
}

export async function writeHistoryHtml(file: string, ref: string, points: readonly HistoryPoint[], log: readonly RefEvent[]): Promise<void> {
  await writeFile(file, await historyHtml(ref, points, log));
}
