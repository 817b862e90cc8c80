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

# grep -m, not grep | head: under pipefail, head exiting before grep finished writing killed the demo (SIGPIPE, exit 141)
grep -m "$n" '"op":"insert"' fixtures/world/edits.ndjson > "$work/facts.ndjson"
echo "demo: $n edits from fixtures/world/edits.ndjson; model fixtures/models/dense; output in $work" >&2

# Every probe role but "general": attrib rejects general (replay) probes, whose fact_id is "*",
# as probes of an unknown fact and exits 2. lora-train and validate bring their own general text.
roles=edit,paraphrase,context,neighborhood,counterfactual,generation
set +e
probe-gen --roles "$roles" --seed 1 "$work/facts.ndjson" \
  | attrib --seed 1 \
  | lora-train --seed 1 --out "$work/adapters" \
  | validate --html "$work/report.html" \
  | tee "$work/stream.ndjson" \
  | adapter-merge --into live --registry "$work/registry" -m "demo consolidation" > "$work/merge.ndjson"
status=("${PIPESTATUS[@]}")
set -e
stages=(probe-gen attrib lora-train validate tee adapter-merge)
for i in 0 1 2 3 4; do
  if [ "${status[$i]}" != 0 ]; then echo "demo: ${stages[$i]} failed (exit ${status[$i]}); see its message above" >&2; exit 1; fi
done
[ "${status[5]}" = 0 ] && promoted=yes || promoted=no

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

# Before/after on each edit prompt, read back with `adapter-merge explain`: the base model's
# top-1 answer and live's (or, when the gate refused it, the stored candidate's).
if [ "$promoted" = yes ]; then
  ref=live; label="live"
else
  # the merged adapter record adapter-merge wrote before refusing (none if it failed earlier)
  ref=$(node --input-type=module -e '
    import { readFileSync } from "node:fs";
    const a = readFileSync(process.argv[1], "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l)).filter((r) => r.kind === "adapter");
    if (a.length > 0) console.log(a[a.length - 1].sha256);
  ' "$work/merge.ndjson")
  label="candidate ${ref:0:12} (stored, NOT promoted)"
fi
if [ -n "$ref" ]; then
  : > "$work/explain.ndjson"
  node --input-type=module -e '
    import { readFileSync } from "node:fs";
    for (const l of readFileSync(process.argv[1], "utf8").split("\n").filter(Boolean)) {
      const f = JSON.parse(l);
      console.log(f.prompt.replace("{}", f.subject));
    }
  ' "$work/facts.ndjson" | while IFS= read -r prompt; do
    adapter-merge explain --quiet --ref "$ref" --registry "$work/registry" "$prompt" >> "$work/explain.ndjson"
  done
  echo "before → after ($label):"
  node --input-type=module -e '
    import { readFileSync } from "node:fs";
    const read = (f) => readFileSync(f, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l));
    const facts = read(process.argv[1]), ex = read(process.argv[2]);
    facts.forEach((f, i) => {
      const e = ex[i], want = f.op === "forget" ? null : f.target_new;
      const ok = want === null ? e.adapted.top1.trim() !== f.target_true : e.adapted.top1.trim() === want;
      console.log(`  ${JSON.stringify(e.prompt)}: before ${JSON.stringify(e.base.top1.trim())}, after ${JSON.stringify(e.adapted.top1.trim())}` +
        `  (${want === null ? `forget ${JSON.stringify(f.target_true)}` : `wanted ${JSON.stringify(want)}`}: ${ok ? "yes" : "no"})`);
    });
  ' "$work/facts.ndjson" "$work/explain.ndjson"
fi

if [ "$promoted" = yes ]; then
  echo "promoted to live:"
  adapter-merge log live --registry "$work/registry" --text
else
  echo "not promoted: adapter-merge --into refused (its reason is above: a failing gate, or no passing report); live is unchanged"
fi
echo "report page: $work/report.html"
