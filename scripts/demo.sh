#!/usr/bin/env bash
# The main job on the bundled model and world, end to end through real pipes:
#   facts → probe-gen → attrib → lora-train → validate → adapter-merge --into live
# Usage: npm run demo [-- N]   (N counterfactual edits from fixtures/world/edits.ndjson, default 3)
# Everything is written under $DEMO_DIR (default: a new temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-3}
work=${DEMO_DIR:-$(mktemp -d -t catechism-demo.XXXXXX)}
mkdir -p "$work"
export PATH="$PWD/node_modules/.bin:$PATH"

npx turbo run build --output-logs=errors-only >&2

grep '"op":"insert"' fixtures/world/edits.ndjson | head -n "$n" > "$work/facts.ndjson"
echo "demo: $n edits from fixtures/world/edits.ndjson; model fixtures/models/dense; output in $work" >&2

probe-gen --roles all --seed 1 "$work/facts.ndjson" \
  | attrib --seed 1 \
  | lora-train --seed 1 --out "$work/adapters" \
  | validate --html "$work/report.html" \
  | tee "$work/stream.ndjson" \
  | adapter-merge --into live --registry "$work/registry" -m "demo consolidation" > "$work/merge.ndjson" \
  && promoted=yes || promoted=no

node --input-type=module -e '
  import { readFileSync } from "node:fs";
  const rows = readFileSync(process.argv[1], "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l));
  const count = (k) => rows.filter((r) => r.kind === k).length;
  console.log(`records: ${count("fact")} facts, ${count("probe")} probes, ${count("locus")} loci, ${count("adapter")} adapters, ${count("report")} reports`);
  for (const r of rows.filter((r) => r.kind === "report")) {
    const m = r.metrics, f = (x) => (x === undefined ? "-" : x.toFixed(3));
    console.log(`${r.adapter_id}: ${r.pass ? "PASS" : "FAIL"}  efficacy ${f(m.efficacy)}  generalisation ${f(m.generalisation)}  specificity ${f(m.specificity)}  kl ${f(m.kl)}  ppl_delta ${f(m.ppl_delta)}  retain_drop ${f(m.retain_drop)}`);
    for (const why of r.failures ?? []) console.log(`    failing gate: ${why}`);
  }
' "$work/stream.ndjson"

if [ "$promoted" = yes ]; then
  echo "promoted to live:"
  adapter-merge log live --registry "$work/registry" --text
else
  echo "not promoted: adapter-merge --into refused (its reason is above: a failing gate, or no passing report); live is unchanged"
fi
echo "report page: $work/report.html"
