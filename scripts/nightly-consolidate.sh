#!/usr/bin/env bash
# Nightly consolidation: merge the adapters collected during the day into a ref
# (default `live`), validate the result and promote it only if it passes.
#
#   scripts/nightly-consolidate.sh INBOX.ndjson [REF]
#
# INBOX holds `adapter` records (e.g. appended by `lora-train | validate` runs).
# On success the inbox is renamed to INBOX.done-<timestamp>; on a refused or
# failed consolidation it is left in place for the next night and the exit
# status is adapter-merge's (1: validation failed or REF moved; 2: bad input).
# Concurrent runs serialise on the registry's lock.
#
# crontab example:
#   15 2 * * * cd /srv/catechism && CATECHISM_REGISTRY=/srv/catechism/registry \
#     scripts/nightly-consolidate.sh /srv/catechism/inbox.ndjson >> /var/log/catechism-nightly.log 2>&1
set -euo pipefail
inbox=${1:?usage: nightly-consolidate.sh INBOX.ndjson [REF]}
ref=${2:-live}
cd "$(dirname "$0")/.."
export PATH="$PWD/node_modules/.bin:$PATH"

stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
if [ ! -s "$inbox" ]; then
  echo "$stamp nightly: $inbox is empty; nothing to consolidate"
  exit 0
fi
echo "$stamp nightly: consolidating $(grep -c '"kind":"adapter"' "$inbox" || true) adapter record(s) into $ref"
adapter-merge --into "$ref" --method cat -m "nightly consolidation $stamp" "$inbox" --text
mv "$inbox" "$inbox.done-$stamp"
adapter-merge log "$ref" --text | tail -n 3
