#!/usr/bin/env bash
# Nightly consolidation: merge the adapters collected during the day into a ref
# (default `live`), validate the result and promote it only if it passes.
#
#   scripts/nightly-consolidate.sh INBOX.ndjson [REF]
#
# INBOX holds `adapter` records (e.g. appended by `lora-train | validate >> INBOX`
# runs). The inbox is first renamed to INBOX.pending-<timestamp>, so records
# appended during the run go to a fresh inbox for the next night. On success
# every pending file is renamed to .done-<timestamp>; on a refused or failed
# consolidation they stay pending and the next night merges them again, with
# the exit status of adapter-merge (1: validation failed; 2: bad input).
# Concurrent runs: adapter-merge --into promotes only if REF has not moved
# since it read it (checked under the registry lock); a run that finds REF
# moved merges again, up to 3 times.
#
# crontab example:
#   15 2 * * * cd /srv/catechism && CATECHISM_REGISTRY=/srv/catechism/registry \
#     scripts/nightly-consolidate.sh /srv/catechism/inbox.ndjson >> /var/log/catechism-nightly.log 2>&1
set -euo pipefail
inbox=${1:?usage: nightly-consolidate.sh INBOX.ndjson [REF]}
ref=${2:-live}
case "$inbox" in /*) ;; *) inbox="$PWD/$inbox" ;; esac # before the cd below
cd "$(dirname "$0")/.."
export PATH="$PWD/node_modules/.bin:$PATH"

stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
if [ -s "$inbox" ]; then mv "$inbox" "$inbox.pending-$stamp"; fi
shopt -s nullglob
pending=("$inbox".pending-*)
if [ ${#pending[@]} -eq 0 ]; then
  echo "$stamp nightly: $inbox is empty; nothing to consolidate"
  exit 0
fi
echo "$stamp nightly: consolidating $(cat "${pending[@]}" | grep -c '"kind":"adapter"' || true) adapter record(s) from ${#pending[@]} file(s) into $ref"
errors=$(mktemp)
trap 'rm -f "$errors"' EXIT
for attempt in 1 2 3; do
  status=0
  adapter-merge --into "$ref" --method cat -m "nightly consolidation $stamp" "${pending[@]}" --text 2> >(tee "$errors" >&2) || status=$?
  wait # for tee
  if [ "$status" -eq 0 ] || ! grep -q "moved while merging" "$errors"; then break; fi
  echo "$stamp nightly: $ref moved during attempt $attempt (another writer); merging again" >&2
done
if [ "$status" -ne 0 ]; then
  echo "$stamp nightly: not consolidated (exit $status); ${#pending[@]} pending file(s) kept for the next run" >&2
  exit "$status"
fi
for f in "${pending[@]}"; do mv "$f" "${f/.pending-/.done-}"; done
adapter-merge log "$ref" --text | tail -n 3
