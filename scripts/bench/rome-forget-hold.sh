#!/usr/bin/env bash
# ROME forget with and without the answer's other holders held in the key
# refit (--rome-forget-hold), side by side: the 3 works_for forgets of
# unlearn-bench.sh, alternated twice, key statistics cached first. Trains;
# run on an idle machine:  scripts/bench/rome-forget-hold.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
export PATH=$root/node_modules/.bin:$PATH
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
grep -m 3 '"relation":"works_for"' "$root/fixtures/world/facts.ndjson" | sed 's/"op":"insert"/"op":"forget"/' > "$tmp/f.ndjson"
probe-gen --roles all "$tmp/f.ndjson" > "$tmp/p.ndjson"
# the key statistics of layers 0–1 into the cache, untimed
for l in 0 1; do lora-train --method rome --layer $l --rome-key-steps 0 --rome-forget-compare 1 --out "$tmp/warm$l" "$tmp/p.ndjson" > /dev/null 2>&1 || true; done
uptime
echo "| run | facts | wall s | s per fact |"
echo "|---|---|---|---|"
for run in "hold 0:--rome-forget-hold 0" "default:" "hold 0:--rome-forget-hold 0" "default:"; do
  name=${run%%:*}; args=${run#*:}
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  lora-train --method rome $args --out "$tmp/run" "$tmp/p.ndjson" > /dev/null 2>&1
  t1=$(date +%s.%N)
  rm -rf "$tmp/run"
  awk -v m="$name" -v a="$t0" -v b="$t1" 'BEGIN { printf "| %s | 3 | %.1f | %.1f |\n", m, b - a, (b - a) / 3 }'
done
uptime
