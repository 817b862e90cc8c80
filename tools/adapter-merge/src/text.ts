/** Readable renderings (`--text`) of what the registry commands otherwise emit as records. */
import type { RefEvent, ShowResult, VerifyResult, StoredReport } from './core.js';

const short = (h: string | null | undefined) => (h ? h.slice(0, 12) : '-');

export function eventLine(e: RefEvent): string {
  const what = e.action === 'rollback' && e.to_version !== undefined ? `rollback to @${e.to_version}` : e.action;
  const parts = [`${e.ref}@${e.version}`, e.when, what.padEnd(8), `${e.adapter_id} v${e.adapter_version}`, short(e.bundle), `(was ${short(e.previous)})`, `by ${e.who}`];
  if (e.why) parts.push(JSON.stringify(e.why));
  if (e.forced_over) parts.push(`[forced over: ${e.forced_over}]`);
  return parts.join('  ');
}

function reportLine(r: StoredReport, i: number, inBundle: boolean, refused: string | null = null): string {
  const metrics = r.metrics && typeof r.metrics === 'object' ? Object.entries(r.metrics).map(([k, v]) => `${k}=${typeof v === 'number' ? +v.toFixed(4) : String(v)}`).join(' ') : '';
  const when = r.recorded_at ? `recorded ${r.recorded_at} by ${r.recorded_by ?? '?'}` : inBundle ? 'shipped in the bundle' : '';
  const fails = Array.isArray(r.failures) && r.failures.length > 0 ? `  failures: ${r.failures.map((f) => (typeof f === 'string' ? f : JSON.stringify(f))).join('; ')}` : '';
  const counts = refused === null ? '' : `  [does not count: ${refused}]`;
  return `  #${i + 1} ${r.pass ? 'pass' : 'FAIL'}  ${when}  ${metrics}${fails}${counts}`.trimEnd();
}

export function showText(s: ShowResult): string {
  const m = s.bundle.manifest;
  const lines = [
    `bundle      ${s.bundle.sha256}`,
    `path        ${s.bundle.path}`,
    `adapter     ${m.id} v${m.version}  method ${m.method}  rank ${m.rank}${m.scale !== undefined ? `  scale ${m.scale}` : ''}`,
    `base model  ${m.base_model.name} (${short(m.base_model.sha256)})`,
    `targets     ${m.targets.join(', ')}`,
    `facts       ${m.fact_ids.length > 0 ? m.fact_ids.join(', ') : 'none'}`,
    `data        ${m.data_sha256}`,
    `parents     ${m.parents.length > 0 ? m.parents.map((p) => `${p.id} (${short(p.sha256)})`).join(', ') : 'none'}`,
    `created     ${m.created_at}`,
    `provenance  source ${m.source ?? '-'}  author ${m.author ?? '-'}  confidence ${m.confidence ?? '-'}`,
    `probes      ${m.probes.length}`,
    `validation  ${s.validation.length === 0 ? 'none' : ''}`.trimEnd(),
  ];
  const shipped = m.validation.length;
  s.validation.forEach((r, i) => lines.push(reportLine(r, i, i < shipped, s.refused[i] ?? null)));
  lines.push(`refs        ${s.refs.length === 0 ? 'none' : ''}`.trimEnd());
  for (const r of s.refs) lines.push(`  ${r.ref}  versions ${r.versions.join(', ')}${r.current ? '  (current)' : ''}`);
  lines.push('files');
  for (const f of s.bundle.files) lines.push(`  ${f.sha256}  ${String(f.size).padStart(10)}  ${f.path}`);
  return lines.join('\n') + '\n';
}

export function verifyText(v: VerifyResult): string {
  const lines = [`registry ${v.registry}: ${v.objects} object(s), ${v.refs} ref(s), ${v.reports} report log(s): ${v.ok ? 'OK' : `${v.problems.length} PROBLEM(S)`}`];
  for (const p of v.problems) lines.push(`PROBLEM ${p.area} ${p.target}: ${p.problem}`);
  for (const n of v.notes) lines.push(`note: ${n}`);
  return lines.join('\n') + '\n';
}
