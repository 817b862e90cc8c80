#!/usr/bin/env bash
# Forget every fact the world states about one person (issue 20): the facts
# of SUBJECT from FACTS (default: the fixture world's facts.ndjson) as
# `op: forget`, their probes (held-out paraphrases, neighbours, generations),
# one LoRA forget of them all (METHOD=rome|memit|patcher for another
# method), validated with the forget gates, merged into REF (default live)
# and promoted on pass. LoRA is the default because it is the forget that
# passes validate's default gates here (ROME's forgets cost kl 0.1–0.3;
# tools/lora-train/README.md, "Unlearning").
#
#   scripts/flows/forget-person.sh "Nalan Tenfelson"
#   METHOD=rome scripts/flows/forget-person.sh "Nalan Tenfelson" my-facts.ndjson
set -euo pipefail
subject=${1:?usage: forget-person.sh SUBJECT [FACTS]}
facts=${2:-$(dirname "$0")/../../fixtures/world/facts.ndjson}
node -e '
const [file, subject] = process.argv.slice(1);
for (const l of require("fs").readFileSync(file, "utf8").split("\n")) {
  if (!l.trim()) continue;
  const f = JSON.parse(l);
  if (f.kind === "fact" && f.subject === subject) console.log(JSON.stringify({ ...f, op: "forget", target_new: undefined }));
}' "$facts" "$subject" \
  | probe-gen --roles edit,paraphrase,neighborhood,generation \
  | lora-train --method "${METHOD:-lora}" ${REGISTRY_ARGS:-} \
  | validate ${VALIDATE_ARGS:-} \
  | adapter-merge merge --into "${REF:-live}" --validator "${VALIDATOR:-validate}" --message "forget $subject" ${REGISTRY_ARGS:-}
