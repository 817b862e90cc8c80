#!/usr/bin/env bash
# Relearning after an undo by negation (issue 20): N counterfactual inserts of
# the world (one LoRA, lora-train's default method), negated by adapter-merge
# (their facts become `op: forget` of the inserted answers), and the model
# holding both (what `live` holds after scripts/flows/undo-insert.sh) attacked
# by relearn.mjs. Run from the repository root after `npm run build`.
#
#   scripts/unlearn/negation-relearn.sh [DIR] [SKIP] [N] [WORLD] [MODEL]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
export PATH=$root/node_modules/.bin:$PATH
dir=${1:-$(mktemp -d)}; skip=${2:-60}; n=${3:-10}
world=${4:-$root/fixtures/world}; model=${5:-$root/fixtures/models/dense}
mkdir -p "$dir"
node --input-type=module -e "
const lt = await import('$root/tools/lora-train/dist/index.js');
const { readNdjson } = await import('$root/tools/core/dist/edit/index.js');
const fs = await import('node:fs');
const facts = lt.counterfactualFacts(readNdjson('$world/facts.ndjson'), { skip: $skip, count: $n, op: 'insert', exclude: readNdjson('$world/edits.ndjson') });
fs.writeFileSync('$dir/facts.ndjson', facts.map((f) => JSON.stringify(f)).join('\n') + '\n');"
probe-gen --roles edit,paraphrase --model "$model" --templates "$world/templates.json" "$dir/facts.ndjson" > "$dir/probes.ndjson"
lora-train --model "$model" --out "$dir/insert" "$dir/probes.ndjson" | grep '"kind":"adapter"' > "$dir/insert.ndjson"
adapter-merge merge --method negate --out "$dir/negated" "$dir/insert.ndjson" | grep '"kind":"adapter"' > "$dir/negated.ndjson"
cat "$dir/insert.ndjson" "$dir/negated.ndjson" > "$dir/adapters.ndjson"
node "$root/scripts/unlearn/relearn.mjs" --model "$model" --adapters "$dir/adapters.ndjson" --probes "$dir/probes.ndjson" --label "${LABEL:-negation (insert + negate)}" ${RELEARN_ARGS:-}
