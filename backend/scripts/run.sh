#!/usr/bin/env bash
# Run the API locally in one command: dependencies, migrations, first superuser,
# then the dev server with auto-reload. With no database configured it uses
# the SQLite file backend/app.db. Extra arguments go to `manage.py run`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-uv.sh

uv run python manage.py initdb
exec uv run python manage.py run --reload "$@"
