#!/usr/bin/env bash
# Erase a relation as a concept (issue 20): `concept` records labelling the
# prompts of RELATION's facts against those of the other relations (a third
# held out as split "test"), the LEACE eraser at the MLP output of LAYER
# (default 2), validated (harm gates, and the erasure probe on the test-split
# concept records lora-train passes through: erasure_probe_gap<=0.03 by
# default, which this eraser does not yet meet on held-out examples — see
# tools/lora-train/README.md), merged into REF and promoted on pass.
#
#   scripts/flows/erase-relation.sh works_for
set -euo pipefail
relation=${1:?usage: erase-relation.sh RELATION [FACTS]}
facts=${2:-$(dirname "$0")/../../fixtures/world/facts.ndjson}
node -e '
const [file, relation, per] = process.argv.slice(1);
const seen = new Map();
for (const l of require("fs").readFileSync(file, "utf8").split("\n")) {
  if (!l.trim()) continue;
  const f = JSON.parse(l);
  if (f.kind !== "fact" || !f.relation) continue;
  const label = f.relation === relation ? relation : "other";
  const n = seen.get(f.relation) ?? 0;
  if (n >= Number(per)) continue;
  seen.set(f.relation, n + 1);
  console.log(JSON.stringify({ kind: "concept", concept: relation, prompt: f.prompt.replace("{}", f.subject), label, id: f.id, split: n % 3 === 2 ? "test" : "train" }));
}' "$facts" "$relation" "${PER_RELATION:-60}" \
  | lora-train --method leace --layer "${LAYER:-2}" ${REGISTRY_ARGS:-} \
  | validate ${VALIDATE_ARGS:-} \
  | adapter-merge merge --into "${REF:-live}" --validator "${VALIDATOR:-validate}" --message "erase $relation" ${REGISTRY_ARGS:-}
