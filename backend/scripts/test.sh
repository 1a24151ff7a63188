#!/usr/bin/env bash
# THE test command: installs what it needs, then runs the whole suite against
# PostgreSQL and the database-dependent part again against SQLite (the groups
# marked stack, docker, deploy, fuzz and faults run once: they check
# infrastructure, fuzz a live server, or run a PostgreSQL cluster or a Docker
# Engine of their own; `queue`, the job queue and its workers, exists on
# PostgreSQL only), with one coverage report that fails under 90%.
# The inner loop while coding: `uv run pytest -m "not slow"`.
# PostgreSQL comes from POSTGRES_SERVER/PORT/USER/PASSWORD/DB (default
# 127.0.0.1:5432, user postgres); the suite creates and drops its own
# `<POSTGRES_DB>_test` database. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/ensure-uv.sh
bash scripts/install-stack-tools.sh  # Adminer, PHP, Chromium, Redis (started if down)

export ENVIRONMENT=local  # the suite covers the local-only routes too
SECRET_KEY="$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
export SECRET_KEY
export POSTGRES_SERVER="${POSTGRES_SERVER:-127.0.0.1}"
export POSTGRES_PORT="${POSTGRES_PORT:-5432}"
export POSTGRES_USER="${POSTGRES_USER:-postgres}"
export POSTGRES_DB="${POSTGRES_DB:-app}"
unset DATABASE_URL

uv run coverage erase
echo "== PostgreSQL (${POSTGRES_SERVER}:${POSTGRES_PORT}) =="
uv run coverage run -m pytest "$@"
echo "== SQLite =="
DATABASE_URL="sqlite+aiosqlite:///$(mktemp -d)/app.db" \
    uv run coverage run -m pytest \
    -m "not (stack or docker or deploy or fuzz or faults or queue)" "$@"
uv run coverage combine --quiet
uv run coverage report
