#!/usr/bin/env bash
# A trainer that picks the method by the fact's op: inserts by lora-train's
# default (distilled LoRA), forgets by `lora-train --method patcher` (a gated
# neuron per fact: the forget that passes validate's forget gates on the
# fixture world, where LoRA leaves the old answer on a held-out phrasing).
# Reads fact and probe records on stdin (each probe goes with its fact),
# writes what lora-train writes: the records, then one adapter record per
# bundle (at most two). Options are passed to both runs (e.g. --model M
# --seed 0 --quiet). Made for `adapter-merge consolidate --retrain`, which
# stacks the two bundles into one candidate:
#
#   scripts/nightly-consolidate.sh INBOX.ndjson live --retrain "scripts/train-by-op.sh"
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export PATH="$here/../node_modules/.bin:$PATH"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/in.ndjson"
node -e '
  const fs = require("node:fs");
  const [input, inserts, forgets] = process.argv.slice(1);
  const recs = fs.readFileSync(input, "utf8").split("\n").filter((l) => l.trim() !== "").map((l) => JSON.parse(l));
  const forget = new Set(recs.filter((r) => r.kind === "fact" && r.op === "forget").map((r) => String(r.id)));
  const isForget = (r) => (r.kind === "fact" ? forget.has(String(r.id)) : forget.has(String(r.fact_id)));
  fs.writeFileSync(inserts, recs.filter((r) => !isForget(r)).map((r) => JSON.stringify(r) + "\n").join(""));
  fs.writeFileSync(forgets, recs.filter(isForget).map((r) => JSON.stringify(r) + "\n").join(""));
' "$tmp/in.ndjson" "$tmp/inserts.ndjson" "$tmp/forgets.ndjson"
if grep -q '"kind":"fact"' "$tmp/inserts.ndjson"; then lora-train "$@" "$tmp/inserts.ndjson"; fi
if grep -q '"kind":"fact"' "$tmp/forgets.ndjson"; then lora-train --method patcher "$@" "$tmp/forgets.ndjson"; fi
