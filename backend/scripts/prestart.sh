#!/usr/bin/env bash
# Before the server starts: wait for the database, migrate, create the first superuser.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m app.backend_pre_start
alembic upgrade head
python -m app.initial_data
