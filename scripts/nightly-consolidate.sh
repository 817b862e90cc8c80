#!/usr/bin/env bash
# Nightly consolidation: merge the adapters collected during the day into a ref
# (default `live`), validate the result and promote it only if it passes; when
# it fails, find the adapters that break it (bisection), promote the rest and
# quarantine those, so one bad adapter never blocks every later one.
#
#   scripts/nightly-consolidate.sh INBOX.ndjson [REF] [adapter-merge consolidate options...]
#
# INBOX holds `adapter` records (e.g. appended by `lora-train | validate >> INBOX`
# runs). The work is `adapter-merge consolidate` (see its --help):
# - INBOX.lock: a second run while one is going exits 1 saying another run
#   holds the inbox;
# - INBOX is renamed to INBOX.pending-<time> first (records appended during
#   the run go to a fresh inbox for the next night);
# - adapters that break the candidate are appended, each with its failing
#   report and the reason, to INBOX.quarantine.ndjson (fix and append them to
#   the inbox again to retry);
# - pending files become INBOX.done-<time>; when the validator fails or hangs
#   (--validator-timeout, default 300 s) they stay pending for the next night;
# - a run that finds REF moved by another writer starts again (--attempts 3);
# - --retrain CMD (e.g. --retrain "lora-train"): the night
#   first tries one adapter CMD trains on every fact of REF and the inbox, in
#   place of the sum (summed adapters add their drifts); if that fails it
#   merges and bisects as above.
# Exit status: 0 done (including when adapters were quarantined), 1 failure
# (nothing promoted or quarantined), 2 bad input.
#
# crontab example:
#   15 2 * * * cd /srv/catechism && CATECHISM_REGISTRY=/srv/catechism/registry \
#     scripts/nightly-consolidate.sh /srv/catechism/inbox.ndjson >> /var/log/catechism-nightly.log 2>&1
set -euo pipefail
inbox=${1:?usage: nightly-consolidate.sh INBOX.ndjson [REF] [adapter-merge consolidate options...]}
ref=${2:-live}
shift $(( $# >= 2 ? 2 : 1 ))
case "$inbox" in /*) ;; *) inbox="$PWD/$inbox" ;; esac # before the cd below
cd "$(dirname "$0")/.."
export PATH="$PWD/node_modules/.bin:$PATH"

echo "$(date -u +%Y-%m-%dT%H%M%SZ) nightly: consolidating $inbox into $ref"
status=0
adapter-merge consolidate "$inbox" --into "$ref" --text "$@" || status=$?
if [ "$status" -eq 0 ] && adapter-merge log "$ref" >/dev/null 2>&1; then
  adapter-merge log "$ref" --text | tail -n 3
fi
exit "$status"
