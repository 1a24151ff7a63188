#!/usr/bin/env bash
# Load benchmark of the API: one command, from a fresh clone.
#
#   bash backend/bench/run.sh [--duration 10] [--warmup 3] [--concurrency 32] [--keep] ...
#   bash backend/bench/run.sh --help
#
# Installs uv and the locked dependencies if needed (scripts/ensure-uv.sh) and
# wrk with apt-get when missing (as root, else through sudo), then runs
# bench/run.py with `uv run`: its docstring says what is measured and how.
# Needs a PostgreSQL that lets POSTGRES_USER create databases:
# POSTGRES_SERVER/PORT/USER/PASSWORD, default 127.0.0.1:5432, user postgres.
# Prints a Markdown table and PASS/FAIL lines; writes bench/results/<timestamp>.json.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/ensure-uv.sh
if ! command -v wrk >/dev/null 2>&1; then
    echo "bench: installing wrk (apt-get)" >&2
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get install -y wrk >/dev/null ||
        { $sudo apt-get update >/dev/null && $sudo apt-get install -y wrk >/dev/null; }
fi
exec uv run python -m bench.run "$@"
