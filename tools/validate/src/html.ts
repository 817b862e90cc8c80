/**
 * `--html FILE`: one self-contained page per run — for each report, the
 * verdict, the failing gates, the metric table (with each gate), and
 * before/after probability charts per fact, drawn with vega-lite and
 * rendered to inline SVG on the server (no browser, no scripts in the page).
 */
import { compile, type TopLevelSpec } from 'vega-lite';
import { View, parse } from 'vega';
import type { ItemRow } from '@catechism/core/metrics';
import { METRICS } from '@catechism/core/metrics';
import type { AdapterResult } from './validate.js';

const esc = (s: string): string => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function fmt(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(2) : v.toFixed(a < 1 ? 4 : 2);
}

const ROLE_LABEL: Record<string, string> = { edit: 'edit', paraphrase: 'paraphrase', neighborhood: 'neighbour', forget: 'forget' };

/** SVG of one fact's chart: P(answer) before/after for every probe of the fact. */
export async function factChartSvg(factId: string, rows: readonly ItemRow[]): Promise<string> {
  // one row per probe ("[answer vs competitor] prompt"), two columns: P(answer) and P(competitor), before/after bars
  const values: Array<Record<string, unknown>> = [];
  const cut = (x: string, n: number) => (x.length > n ? x.slice(0, n - 1) + '…' : x);
  rows.forEach((r, i) => {
    const answer = `${cut(r.target || '(top-1 kept)', 16)}${r.alt !== undefined ? ` vs ${cut(r.alt, 16)}` : ''}`;
    const probe = `${i + 1}. ${ROLE_LABEL[r.list] ?? r.list} [${answer}] ${cut(r.prompt, 48)}`;
    if (r.target !== '') {
      values.push({ probe, series: 'before', measure: 'P(answer)', p: r.p_before });
      values.push({ probe, series: 'after', measure: 'P(answer)', p: r.p_after });
    }
    if (r.alt !== undefined && r.p_alt_before !== undefined && r.p_alt_after !== undefined) {
      values.push({ probe, series: 'before', measure: 'P(competitor)', p: r.p_alt_before });
      values.push({ probe, series: 'after', measure: 'P(competitor)', p: r.p_alt_after });
    }
  });
  const spec: TopLevelSpec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: factId, anchor: 'start', fontSize: 13 },
    data: { values },
    width: 200,
    height: { step: 18 },
    mark: { type: 'bar', tooltip: true },
    encoding: {
      column: { field: 'measure', type: 'nominal', title: null, sort: ['P(answer)', 'P(competitor)'], header: { labelFontSize: 12, labelFontWeight: 'bold' } },
      y: { field: 'probe', type: 'nominal', title: null, sort: null, axis: { labelLimit: 460, labelFontSize: 11 } },
      yOffset: { field: 'series', sort: ['before', 'after'] },
      x: { field: 'p', type: 'quantitative', title: 'probability', scale: { domain: [0, 1] } },
      color: { field: 'series', type: 'nominal', title: null, sort: ['before', 'after'], scale: { domain: ['before', 'after'], range: ['#9aa5b1', '#2b6cb0'] } },
    },
    config: { font: 'sans-serif', view: { stroke: '#e2e8f0' } },
  };
  const view = new View(parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

export interface HtmlOptions {
  title?: string;
  /** Charts for at most this many facts per report (the rest are counted). Default 24. */
  maxFacts?: number;
}

/** The whole page. */
export async function renderHtml(results: readonly AdapterResult[], opts: HtmlOptions = {}): Promise<string> {
  const maxFacts = opts.maxFacts ?? 24;
  const parts: string[] = [];
  for (const { report, rows } of results) {
    const id = report.adapter_id;
    const gates = new Map<string, string>();
    for (const g of (report.gates as string[] | undefined) ?? []) gates.set(/^[a-z0-9_]+/.exec(g)![0], g);
    const failing = new Set(report.failures.map((f) => f.split(' ')[0]));
    // quality metrics in the table; counts and cost on one line under it
    const minor = (k: string) => k.startsWith('n_') || ['adapter_bytes', 'eval_seconds', 'probes_per_second', 'peak_rss_mib'].includes(k);
    const minorLine = Object.entries(report.metrics)
      .filter(([k]) => minor(k))
      .map(([k, v]) => `${esc(k)} <b>${esc(fmt(v))}</b>`)
      .join(' · ');
    const se = (report.standard_errors as Record<string, number> | undefined) ?? {};
    const metricRows = Object.entries(report.metrics)
      .filter(([k]) => !minor(k))
      .map(([k, v]) => {
        const cls = failing.has(k) ? 'fail' : gates.has(k) ? 'ok' : '';
        const e = se[k] !== undefined ? `± ${fmt(se[k])}` : '';
        return `<tr class="${cls}"><td><code>${esc(k)}</code></td><td class="num">${esc(fmt(v))}</td><td class="num">${esc(e)}</td><td>${esc(gates.get(k) ?? '')}</td><td class="desc">${esc(METRICS[k]?.describe ?? '')}</td></tr>`;
      })
      .join('\n');
    const byFact = new Map<string, ItemRow[]>();
    for (const r of rows) {
      const k = r.fact_id ?? '(no fact)';
      const l = byFact.get(k) ?? [];
      l.push(r);
      byFact.set(k, l);
    }
    const charts: string[] = [];
    for (const [fid, rs] of [...byFact].slice(0, maxFacts)) charts.push(`<figure>${await factChartSvg(fid, rs)}</figure>`);
    const more = byFact.size > maxFacts ? `<p class="note">${byFact.size - maxFacts} more facts not charted.</p>` : '';
    const verdict = report.pass ? '<span class="badge pass">PASS</span>' : '<span class="badge failb">FAIL</span>';
    const fails = report.failures.length > 0 ? `<ul class="failures">${report.failures.map((f) => `<li>${esc(f)}</li>`).join('')}</ul>` : '';
    const skipped = ((report.gates_skipped as string[] | undefined) ?? []).length > 0 ? `<p class="note">Gates not applicable (metric not measured): ${esc((report.gates_skipped as string[]).join(', '))}</p>` : '';
    const notes = [...((report.notes as string[] | undefined) ?? []), ...((report.forced as string[] | undefined) ?? []).map((f) => `forced: ${f}`)];
    const noteHtml = notes.length > 0 ? `<ul class="failures">${notes.map((n) => `<li>${esc(n)}</li>`).join('')}</ul>` : '';
    const sub = [report.adapter_version !== undefined ? `version ${String(report.adapter_version)}` : '', report.adapter_sha256 ? `sha256 ${String(report.adapter_sha256).slice(0, 12)}` : '', `base ${String(report.base_model)}`]
      .filter(Boolean)
      .join(' · ');
    parts.push(`<section>
<h2>${esc(id)} ${verdict}</h2>
<p class="sub">${esc(sub)}</p>
${fails}${noteHtml}${skipped}
<table><thead><tr><th>metric</th><th>value</th><th>std. error</th><th>gate</th><th>meaning</th></tr></thead><tbody>
${metricRows}
</tbody></table>
<p class="note">${minorLine}</p>
<h3>Probabilities per fact, before → after</h3>
<div class="charts">${charts.join('\n')}</div>${more}
</section>`);
  }
  const title = opts.title ?? 'validate report';
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1100px;color:#1a202c;padding:0 16px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 2px;display:flex;gap:10px;align-items:center}
h3{font-size:15px;margin:18px 0 6px} .sub,.note{color:#555;font-size:13px;margin:2px 0 8px}
.badge{font-size:12px;padding:2px 8px;border-radius:10px;color:#fff;font-weight:600} .pass{background:#2f855a} .failb{background:#c53030}
table{border-collapse:collapse;font-size:13px;width:100%} th,td{border-bottom:1px solid #e2e8f0;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f7fafc} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap} td.desc{color:#4a5568}
tr.fail td{background:#fff5f5} tr.fail td:first-child{border-left:3px solid #c53030} tr.ok td:first-child{border-left:3px solid #2f855a}
ul.failures{color:#c53030;font-size:13px;margin:4px 0 8px} .charts{display:flex;flex-wrap:wrap;gap:12px} figure{margin:0}
section{border-top:2px solid #e2e8f0;margin-top:12px}
</style></head><body>
<h1>${esc(title)}</h1>
<p class="sub">${results.length} report(s), written ${esc(new Date().toISOString())}. Metric definitions: tools/validate/README.md.</p>
${parts.join('\n')}
</body></html>
`;
}
