#!/usr/bin/env bash
# Undo an earlier insert by negation (issue 20): the insert's adapter record(s)
# in (files or stdin), negated (its facts become `op: forget` of the inserted
# answers), merged into REF (default live), validated there, promoted on pass.
#
#   scripts/flows/undo-insert.sh insert-adapter.ndjson
#   REF=live VALIDATOR='validate --gate kl<=0.05' scripts/flows/undo-insert.sh a.ndjson
#
# Uses $CATECHISM_REGISTRY (or --registry in $REGISTRY_ARGS) like the tools.
set -euo pipefail
adapter-merge merge --method negate --add ${REGISTRY_ARGS:-} "$@" \
  | adapter-merge merge --into "${REF:-live}" --validator "${VALIDATOR:-validate}" --message "undo by negation" ${REGISTRY_ARGS:-}
