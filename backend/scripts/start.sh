#!/usr/bin/env bash
# A backend replica under an orchestrator (deploy/swarm/stack.yml):
#   bash scripts/start.sh gunicorn app.main:app ...
# Migrates first (prestart.sh: replicas starting together take turns on an
# advisory lock), so a new replica serves only a migrated database. On SIGTERM
# (a rolling update, a scale-down) it keeps serving DRAIN_SECONDS (default 5)
# while the proxy, which polls the orchestrator, stops sending requests here;
# then it passes SIGTERM on and the server finishes what it started.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/prestart.sh
"$@" &
server=$!
draining=0
trap 'draining=1; sleep "${DRAIN_SECONDS:-5}"; kill -TERM "$server"' TERM INT
status=0
wait "$server" || status=$?
if [ "$draining" = 1 ]; then  # the trap ran: the server is stopping now
    status=0
    wait "$server" || status=$?
fi
exit "$status"
