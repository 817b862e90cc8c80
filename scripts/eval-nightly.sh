#!/usr/bin/env bash
# The nightly flow, measured with the real tools: each "day" ROUNDS batches
# of COUNT of a world's edit requests go probe-gen | lora-train into an
# inbox (one adapter per batch, trained on the base model), and each "night"
# `adapter-merge consolidate` validates and promotes into the `live` ref of a
# fresh registry, with validate's defaults as the judge. Prints one line per
# night: what was promoted, accepted and quarantined, how many validations,
# and the gate metrics of live's latest passing report.
#
#   scripts/eval-nightly.sh [--world fixtures/world] [--model fixtures/models/dense]
#     [--skip 60] [--count 5] [--rounds 5] [--retrain "lora-train ..." [--retrain-when failed]] [--train "lora-train ..."]
#
#   --skip N: start at the world's edit request N+1 (requests 61–100 are held out from tuning)
#   --train CMD: the day's trainer (default `lora-train --seed 0 --quiet`; --model is added)
#   --retrain CMD: passed to consolidate (--model is added); without it the night sums
#
# Build first (npm run build). Run it with `nice env CATECHISM_THREADS=1`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
world=fixtures/world model=fixtures/models/dense skip=60 count=5 rounds=5 retrain='' when=always train='lora-train --seed 0 --quiet'
while [ $# -gt 0 ]; do
  case "$1" in
    --world) world=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --skip) skip=$2; shift 2 ;;
    --count) count=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --retrain) retrain=$2; shift 2 ;;
    --retrain-when) when=$2; shift 2 ;;
    --train) train=$2; shift 2 ;;
    *) echo "eval-nightly.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
cd "$root"
world=$(realpath "$world") model=$(realpath "$model")
export PATH="$root/node_modules/.bin:$PATH"
work=$(mktemp -d /tmp/eval-nightly-XXXXXX)
trap 'rm -rf "$work"' EXIT
export CATECHISM_REGISTRY="$work/registry"
inbox="$work/inbox.ndjson"
validator="validate --quiet --model $model --world $world"
retrain_args=()
[ -n "$retrain" ] && retrain_args=(--retrain "$retrain --model $model" --retrain-when "$when")

echo "nightly flow: $world, $model; requests $((skip + 1))–$((skip + count * rounds)), $rounds nights × $count; $([ -n "$retrain" ] && echo "retrained ($when) by: $retrain" || echo 'adapters summed')"
for night in $(seq 1 "$rounds"); do
  from=$((skip + (night - 1) * count + 1)) to=$((skip + night * count))
  t0=$(date +%s)
  sed -n "${from},${to}p" "$world/edits.ndjson" \
    | probe-gen --quiet --seed 0 --model "$model" --templates "$world/templates.json" \
        --roles edit,paraphrase,context,neighborhood,counterfactual,generation \
    | $train --model "$model" | grep '"kind":"adapter"' >> "$inbox"
  t1=$(date +%s)
  adapter-merge consolidate "$inbox" --into live --validator "$validator" "${retrain_args[@]}" --quiet > "$work/night.ndjson"
  t2=$(date +%s)
  node -e '
    const fs = require("node:fs");
    const recs = fs.readFileSync(process.argv[1], "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l));
    const c = recs.find((r) => r.kind === "consolidation");
    const line = [`night ${process.argv[2]}: requests ${process.argv[3]}–${process.argv[4]}`,
      `promoted ${c.promoted ? "v" + c.promoted.version : "nothing"}`,
      `accepted ${c.accepted.length}`, `quarantined ${c.quarantined.length}`, `validations ${c.validations}`];
    if (c.retrained) line.push(`retrained ${c.retrained.pass ? "pass" : "refused"} (${c.retrained.facts} facts)`);
    line.push(`train ${process.argv[5]} s`, `night ${process.argv[6]} s`);
    console.log(line.join(" · "));
  ' "$work/night.ndjson" "$night" "$from" "$to" "$((t1 - t0))" "$((t2 - t1))"
  # the gate metrics of live as it stands (its latest report)
  adapter-merge show live | node -e '
    const s = JSON.parse(require("node:fs").readFileSync(0, "utf8").split("\n")[0]);
    const r = (s.validation ?? []).at(-1) ?? {};
    const m = r.metrics ?? {};
    const f = (k) => (typeof m[k] === "number" ? m[k].toFixed(3) : "–");
    console.log(`  live v${s.version}: ${s.fact_ids.length} facts · pass ${r.pass} · efficacy ${f("efficacy")} · generalisation ${f("generalisation")} · specificity ${f("specificity")} · kl ${f("kl")} · retain_drop ${f("retain_drop")}`);
  ' || echo "  live: none yet"
done
