#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")/.."

uv run mypy app tests bench manage.py
uv run ruff check .
uv run ruff format --check .
