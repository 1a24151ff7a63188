#!/usr/bin/env bash
# Soak test of the API: 10 minutes of mixed traffic at a fixed rate.
#
#   bash backend/bench/soak.sh [--minutes 10] [--rate 150] [--warmup 60] [--keep] ...
#   bash backend/bench/soak.sh --help
#
# Installs uv and the locked dependencies if needed (scripts/ensure-uv.sh), then
# runs bench/soak.py with `uv run`: its docstring says what is sent and checked.
# Needs a PostgreSQL that lets POSTGRES_USER create databases:
# POSTGRES_SERVER/PORT/USER/PASSWORD, default 127.0.0.1:5432, user postgres.
# Prints Markdown tables and PASS/FAIL lines; writes bench/results/soak-<timestamp>.json.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/ensure-uv.sh
exec uv run python -m bench.soak "$@"
