#!/usr/bin/env bash
# Drift watch (cron): validate what a ref (default `live`) serves now on a
# fixed suite plus the tests of every edit it holds, append the figures to the
# ref's watch history, and roll it back to the last good version when a gate
# fails (an automatic rollback, logged in the ref's history with the failing
# figures).
#
#   scripts/watch-live.sh [REF] [validate options...]
#
# The work is `adapter-merge watch REF` (see its --help): it reads the report
# and decides. The validator reads REF's adapter record on stdin
# (`adapter-merge show REF`) and writes one report; by default
#   validate --no-record --quiet [WATCH_SUITE: --suite FILE] [validate options...]
# i.e. validate's fixed evaluation sets (retention, general text, and the
# regression probes of $WATCH_SUITE when set) plus the bundle's own probes: a
# merged bundle carries the probes of every edit merged into it, so the
# accumulated tests of every live edit are run. $WATCH_VALIDATOR replaces the
# whole validator command (a shell command, like adapter-merge's --validator).
# The figures stay outside the bundle's validation history (--no-record); see
# them with `adapter-merge history REF [--html FILE]`.
#
# Exit status: 0 the figures passed, or failed and REF was rolled back;
# 1 failure (REF failed and nothing earlier is good, validator failed, lock);
# 2 bad input.
#
# crontab example (every hour):
#   0 * * * * cd /srv/catechism && CATECHISM_REGISTRY=/srv/catechism/registry \
#     WATCH_SUITE=/srv/catechism/regression.ndjson scripts/watch-live.sh live --model /srv/models/prod \
#     >> /var/log/catechism-watch.log 2>&1
set -euo pipefail
ref=${1:-live}
[ $# -gt 0 ] && shift
cd "$(dirname "$0")/.."
export PATH="$PWD/node_modules/.bin:$PATH"

if [ -n "${WATCH_VALIDATOR:-}" ]; then
  validator=(sh -c "$WATCH_VALIDATOR")
else
  validator=(validate --no-record --quiet)
  [ -n "${WATCH_SUITE:-}" ] && validator+=(--suite "$WATCH_SUITE")
  validator+=("$@")
fi

echo "$(date -u +%Y-%m-%dT%H%M%SZ) watch: validating $ref"
report=$(mktemp)
trap 'rm -f "$report"' EXIT
adapter-merge show "$ref" | "${validator[@]}" > "$report"
status=0
adapter-merge watch "$ref" "$report" --text || status=$?
if [ "$status" -eq 0 ]; then
  adapter-merge log "$ref" --text | tail -n 1
fi
exit "$status"
