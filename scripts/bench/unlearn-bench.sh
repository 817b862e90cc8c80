#!/usr/bin/env bash
# Seconds per forgotten fact for each forget method (issue 20) on the dense
# fixture model: N works_for facts made `op: forget`, probes --roles all,
# timed lora-train per method (wall seconds / N). Not part of `npm run bench`
# (it trains); run on an idle machine:  scripts/bench/unlearn-bench.sh [N]
set -euo pipefail
n=${1:-5}
root=$(cd "$(dirname "$0")/../.." && pwd)
export PATH=$root/node_modules/.bin:$PATH
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
grep -m "$n" '"relation":"works_for"' "$root/fixtures/world/facts.ndjson" | sed 's/"op":"insert"/"op":"forget"/' > "$tmp/f.ndjson"
probe-gen --roles all "$tmp/f.ndjson" > "$tmp/p.ndjson"
echo "| method | facts | wall s | s per fact |"
echo "|---|---|---|---|"
for m in lora patcher rome memit; do
  t0=$(date +%s.%N)
  lora-train --method "$m" --out "$tmp/$m" "$tmp/p.ndjson" > /dev/null 2>&1 || { echo "| $m | $n | failed | |"; continue; }
  t1=$(date +%s.%N)
  awk -v m="$m" -v n="$n" -v a="$t0" -v b="$t1" 'BEGIN { printf "| %s | %d | %.1f | %.1f |\n", m, n, b - a, (b - a) / n }'
done
