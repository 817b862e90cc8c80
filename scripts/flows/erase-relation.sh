#!/usr/bin/env bash
# Erase a relation as a concept (issue 20): `concept` records labelling
# PER_RELATION (default 200) prompts of RELATION's facts against as many of
# the other relations' (a third of each held out as split "test"), the
# LEACE eraser at the MLP output of LAYER (default 2), validated (harm gates,
# and the erasure probe on the held-out concept records:
# erasure_probe_gap<=0.03 by default), merged into REF and promoted only if
# the merged REF passes the same gates. On the fixture model the held-out
# probe still reads the relation (0.92 → 0.66 against chance 0.50 for
# works_for), so with the default gates live is refused; see
# tools/lora-train/README.md, "LEACE read by validate's erasure probe".
#
#   scripts/flows/erase-relation.sh works_for
set -euo pipefail
relation=${1:?usage: erase-relation.sh RELATION [FACTS]}
facts=${2:-$(dirname "$0")/../../fixtures/world/facts.ndjson}
# the concept records go to the eraser and to both validators: live's
# validator sees only the merged bundle, so it reads them from the file
concepts=$(mktemp "${TMPDIR:-/tmp}/erase-relation.XXXXXX")
trap 'rm -f "$concepts"' EXIT
node -e '
// PER prompts of RELATION against as many of the other relations (taken in
// turn, so each is represented): two balanced classes, so a probe at chance
// reads 50%; every third prompt of each class held out (split test)
const [file, relation, per] = process.argv.slice(1);
const byRelation = new Map();
for (const l of require("fs").readFileSync(file, "utf8").split("\n")) {
  if (!l.trim()) continue;
  const f = JSON.parse(l);
  if (f.kind !== "fact" || !f.relation) continue;
  if (!byRelation.has(f.relation)) byRelation.set(f.relation, []);
  byRelation.get(f.relation).push(f);
}
if (!byRelation.has(relation)) { console.error(`erase-relation: no facts of relation ${relation} in ${file}`); process.exit(2); }
const own = byRelation.get(relation).slice(0, Number(per));
const others = [...byRelation.entries()].filter(([r]) => r !== relation).map(([, fs]) => fs);
const rest = [];
for (let i = 0; rest.length < own.length && others.some((fs) => i < fs.length); i++) for (const fs of others) if (i < fs.length && rest.length < own.length) rest.push(fs[i]);
for (const [label, fs] of [[relation, own], ["other", rest]]) fs.forEach((f, n) => console.log(JSON.stringify({ kind: "concept", concept: relation, prompt: f.prompt.replace("{}", f.subject), label, id: f.id, split: n % 3 === 2 ? "test" : "train" })));
' "$facts" "$relation" "${PER_RELATION:-200}" > "$concepts"
lora-train --method leace --layer "${LAYER:-2}" ${REGISTRY_ARGS:-} "$concepts" \
  | validate ${VALIDATE_ARGS:-} \
  | adapter-merge merge --into "${REF:-live}" --validator "${VALIDATOR:-validate} --concepts $concepts" --message "erase $relation" ${REGISTRY_ARGS:-}
