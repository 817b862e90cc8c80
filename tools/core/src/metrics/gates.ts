/**
 * Gates: thresholds on metrics (`efficacy>=0.95`, `ppl_delta<=0.02`). Every
 * metric validate reports is listed here with its meaning; the ones with a
 * default gate are checked unless overridden. A gate on a metric that was
 * not measured for an adapter (no forget facts, no suite) is skipped and
 * listed as such, never silently passed as a number.
 */
import { UsageError } from '../records/errors.js';
import { ROUTING_METRICS } from './routing.js';
import { ERASURE_METRICS, STEER_METRICS } from './erasure.js';

export type GateOp = '>=' | '<=' | '>' | '<';

export interface Gate {
  metric: string;
  op: GateOp;
  value: number;
}

export interface MetricInfo {
  describe: string;
  /** Default gate, when there is one. */
  gate?: { op: GateOp; value: number };
}

export const METRICS: Readonly<Record<string, MetricInfo>> = {
  efficacy: { describe: 'edit probes of insert facts: rate the first target_new token is the greedy top-1', gate: { op: '>=', value: 0.9 } },
  efficacy_full: { describe: 'edit probes: rate the greedy continuation equals all of target_new' },
  efficacy_prob: { describe: 'edit probes: rate P(target_new) > P(target_true) (whole continuations)', gate: { op: '>=', value: 0.9 } },
  p_new: { describe: 'edit probes: mean P(target_new) (product over its tokens)' },
  efficacy_gen: { describe: 'edit probes: rate the greedy generation begins with target_new (as a whole word)', gate: { op: '>=', value: 0.9 } },
  generalisation: { describe: 'held-out paraphrase probes (split test) of insert facts that the base model answers with target_true: top-1 rate of target_new', gate: { op: '>=', value: 0.5 } },
  generalisation_gen: { describe: 'those paraphrase probes: rate the greedy generation begins with target_new', gate: { op: '>=', value: 0.5 } },
  generalisation_full: { describe: 'paraphrase probes: greedy continuation equals target_new' },
  generalisation_prob: { describe: 'paraphrase probes: rate P(target_new) > P(target_true)' },
  specificity: { describe: 'neighbourhood probes: rate whose greedy top-1 is the same as the base model\'s', gate: { op: '>=', value: 0.9 } },
  specificity_prob: { describe: 'neighbourhood probes with targets: rate P(target) > P(target_new of the fact)' },
  kl: { describe: 'unrelated prompts: mean KL(base ‖ adapted) of the next-token distribution, nats', gate: { op: '<=', value: 0.05 } },
  kl_max: { describe: 'unrelated prompts: largest KL(base ‖ adapted), nats' },
  ppl_before: { describe: 'held-out general text: perplexity of the base model' },
  ppl_after: { describe: 'held-out general text: perplexity with the adapter' },
  ppl_delta: { describe: 'relative perplexity change, ppl_after / ppl_before − 1', gate: { op: '<=', value: 0.05 } },
  retain_before: { describe: 'facts not edited: top-1 accuracy of the base model' },
  retain_after: { describe: 'facts not edited: top-1 accuracy with the adapter' },
  retain_drop: { describe: 'retain_before − retain_after (accuracy points lost)', gate: { op: '<=', value: 0.05 } },
  suite_before: { describe: '--suite regression probes: pass rate of the base model' },
  suite_after: { describe: '--suite regression probes: pass rate with the adapter' },
  suite_drop: { describe: 'suite_before − suite_after', gate: { op: '<=', value: 0 } },
  forget_top1: { describe: 'forget facts (edit probes + paraphrase probes the base model answers): rate the old answer is still the greedy top-1', gate: { op: '<=', value: 0 } },
  forget_p_true: { describe: 'forget facts: mean P(target_true)', gate: { op: '<=', value: 0.1 } },
  forget_p_true_before: { describe: 'forget facts: mean P(target_true) of the base model' },
  forget_gen: { describe: 'forget facts: rate the greedy answer (up to its first sentence end) still contains the old answer', gate: { op: '<=', value: 0 } },
  fluency_before: { describe: 'weighted bi/tri-gram entropy (bits) of greedy generations, base model' },
  fluency: { describe: 'weighted bi/tri-gram entropy (bits) of greedy generations with the adapter' },
  fluency_drop: { describe: 'relative fluency loss, 1 − fluency / fluency_before', gate: { op: '<=', value: 0.2 } },
  adapter_bytes: { describe: 'bytes of the bundle\'s files' },
  eval_seconds: { describe: 'wall time to evaluate this adapter' },
  peak_rss_mib: { describe: 'peak resident memory of the validate process so far, MiB' },
  probes_per_second: { describe: 'scored sequences per second during this adapter\'s evaluation' },
  n_edit: { describe: 'number of edit probes (insert facts)' },
  n_paraphrase: { describe: 'number of held-out paraphrase probes scored (those the base model answers with target_true)' },
  n_paraphrase_excluded: { describe: 'held-out paraphrase probes left out: the base model does not answer them with target_true, so they cannot test generalisation' },
  n_neighborhood: { describe: 'number of neighbourhood probes' },
  n_unrelated: { describe: 'number of unrelated prompts (KL)' },
  n_general: { describe: 'number of general texts (perplexity)' },
  n_retain: { describe: 'number of retain probes (facts not edited)' },
  n_suite: { describe: 'number of --suite probes' },
  n_forget: { describe: 'number of forget probes scored' },
  n_forget_excluded: { describe: 'forget paraphrase probes left out: the base model does not answer them with target_true' },
  n_unknown_target: { describe: 'edit, paraphrase and forget probes whose target the tokenizer spells with its unknown token (never a success)' },
  n_generation: { describe: 'number of generation prompts (fluency)' },
  ...ROUTING_METRICS,
  ...ERASURE_METRICS,
  ...STEER_METRICS,
};

const GATE_RE = /^\s*([a-z_][a-z0-9_]*)\s*(>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$/;

/** Parse `name>=value`; throws UsageError for anything else or an unknown metric. */
export function parseGate(text: string): Gate {
  const m = GATE_RE.exec(text);
  if (!m) throw new UsageError(`--gate ${JSON.stringify(text)}: expected METRIC>=NUMBER or METRIC<=NUMBER (also > and <), e.g. efficacy>=0.95`);
  const [, metric, op, num] = m;
  if (!Object.prototype.hasOwnProperty.call(METRICS, metric)) {
    throw new UsageError(`--gate ${JSON.stringify(text)}: unknown metric "${metric}" (known: ${Object.keys(METRICS).join(', ')})`);
  }
  const value = Number(num);
  if (!Number.isFinite(value)) throw new UsageError(`--gate ${JSON.stringify(text)}: ${num} is not a finite number`);
  return { metric, op: op as GateOp, value };
}

/** The default gates with overrides applied (an override replaces the default on the same metric). */
export function resolveGates(overrides: readonly Gate[] = []): Gate[] {
  const byMetric = new Map<string, Gate>();
  for (const [metric, info] of Object.entries(METRICS)) if (info.gate) byMetric.set(metric, { metric, ...info.gate });
  for (const g of overrides) byMetric.set(g.metric, g);
  return [...byMetric.values()];
}

export function formatGate(g: Gate): string {
  return `${g.metric}${g.op}${g.value}`;
}

function holds(v: number, g: Gate): boolean {
  switch (g.op) {
    case '>=':
      return v >= g.value;
    case '<=':
      return v <= g.value;
    case '>':
      return v > g.value;
    case '<':
      return v < g.value;
  }
}

export interface GateResult {
  pass: boolean;
  /** One line per failing gate: `efficacy 0.4 < 0.9 (gate efficacy>=0.9)`. */
  failures: string[];
  /** Gates applied: metric → threshold. */
  thresholds: Record<string, number>;
  /** Gates applied, as text. */
  gates: string[];
  /** Gates skipped because the metric was not measured. */
  skipped: string[];
}

function fmt(v: number): string {
  return Number.isInteger(v) ? String(v) : v.toPrecision(4).replace(/\.?0+$/, '');
}

const NEGATION: Record<GateOp, string> = { '>=': '<', '<=': '>', '>': '<=', '<': '>=' };

/** Check gates against measured metrics (missing or NaN metrics skip their gate). */
export function checkGates(metrics: Readonly<Record<string, number>>, gates: readonly Gate[]): GateResult {
  const failures: string[] = [];
  const thresholds: Record<string, number> = {};
  const applied: string[] = [];
  const skipped: string[] = [];
  for (const g of gates) {
    const v = metrics[g.metric];
    if (v === undefined || Number.isNaN(v)) {
      skipped.push(formatGate(g));
      continue;
    }
    thresholds[g.metric] = g.value;
    applied.push(formatGate(g));
    if (!holds(v, g)) failures.push(`${g.metric} ${fmt(v)} ${NEGATION[g.op]} ${fmt(g.value)} (gate ${formatGate(g)})`);
  }
  return { pass: failures.length === 0, failures, thresholds, gates: applied, skipped };
}
