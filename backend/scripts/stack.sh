#!/usr/bin/env bash
# The Docker Compose stack without Docker, on loopback: Traefik in front of two
# backend replicas (gunicorn + uvicorn workers), the jobs worker (on PostgreSQL),
# Adminer (PHP's built-in server) and an SMTP sink, after scripts/prestart.sh. Traefik uses the same routers,
# middlewares and services as in Docker: the files in ../traefik/dynamic/.
# Optionally Prometheus (STACK_PROMETHEUS=true), scraping the replicas' /metrics
# and Traefik's own metrics (its internal entrypoint `metrics`).
#
# Usage: bash scripts/stack.sh start|stop|status|run
#   start   start everything in the background, wait until it answers (bounded
#           by STACK_START_TIMEOUT), print the URLs; on failure, stop what was
#           started and show the logs' tails
#   stop    stop everything started by `start` (by PID, TERM then KILL)
#   status  say what runs, with URLs
#   run     start, stay in the foreground, stop everything on Ctrl-C / TERM
#
# Database: the usual DATABASE_URL / POSTGRES_* variables (environment, then the
# top-level .env), as for the app. Adminer logs into PostgreSQL only.
# Needs the project's virtualenv (`uv sync`), traefik (dev dependency), php-cli,
# php-pgsql and adminer (scripts/install-stack-tools.sh), curl.
#
# Settings (environment variables), with their defaults:
#   STACK_STATE_DIR         ${TMPDIR:-/tmp}/fastapi-stack-$UID: PIDs, logs, generated config
#   STACK_PROXY_PORT        8880   Traefik, API and docs (Docker: 80)
#   STACK_ADMINER_PORT      8881   Traefik, Adminer (Docker: 8080)
#   STACK_DASHBOARD_PORT    8890   Traefik dashboard (Docker: 8090)
#   STACK_METRICS_PORT      8892   Traefik's Prometheus metrics, entrypoint `metrics`
#                                  (Docker: 8082, never published)
#   STACK_BACKEND_PORT      8801   first backend replica; replica N listens on +N-1
#   STACK_REPLICAS          2      backend replicas behind the load balancer
#   STACK_BACKEND_PORTS     (unset) the replicas' ports, e.g. "8801 8802": wins
#                                  over the two above
#   STACK_WORKERS           2      uvicorn workers per replica
#   STACK_ADMINER_PHP_PORT  8882   PHP's server for Adminer, behind Traefik
#   STACK_SMTP_PORT         8825   SMTP sink (aiosmtpd, prints messages to its log);
#                                  the backends send their email there
#   STACK_HEALTHCHECK_INTERVAL 1s  Traefik's active health check of the replicas
#   STACK_TRAEFIK_LOG_LEVEL INFO   DEBUG shows each retry of a request
#   STACK_START_TIMEOUT     60     seconds for prestart, and again for start-up
#   STACK_PROMETHEUS        false  true: also Prometheus (Debian's `prometheus`,
#                                  scripts/install-stack-tools.sh), its data in STATE_DIR
#   STACK_PROMETHEUS_PORT   8899   its web UI and HTTP API (Docker: 9090)
#   STACK_SCRAPE_INTERVAL   5s     how often it scrapes the replicas and Traefik
#   STACK_VENV              backend/.venv
#   DOMAIN                  localhost  host name the routers answer on
#   PROXY_GOMAXPROCS        1      cores Traefik's Go runtime runs on (as in Docker)
# Production mode, as in docker-compose.yml (HTTPS, certificates over ACME):
#   PROXY_HTTPS             false  true: STACK_PROXY_PORT redirects to HTTPS, the API
#                                  and the dashboard (/traefik, basic auth) are on
#                                  STACK_HTTPS_PORT, Adminer over HTTPS; no dashboard port
#   STACK_HTTPS_PORT        8843   Traefik, HTTPS (Docker: 443)
#   ACME_CA_SERVER          Let's Encrypt production (staging: see ../.env)
#   ACME_EMAIL              (none)  account email (Let's Encrypt refuses example.com)
#   ACME_CHALLENGE          tls    tls (TLS-ALPN-01 on the HTTPS port, as in Docker) or
#                                  http (HTTP-01 on STACK_PROXY_PORT)
#   Certificates are kept in STATE_DIR/acme.json across restarts. A private ACME
#   CA's root (tests): LEGO_CA_CERTIFICATES=PEM path, read by Traefik.
# Every server listens on 127.0.0.1 only. Linux (uses /proc and setsid).
set -euo pipefail

BACKEND_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_DIR="$(dirname "$BACKEND_DIR")"
STATE_DIR="${STACK_STATE_DIR:-${TMPDIR:-/tmp}/fastapi-stack-$(id -u)}"
HOST=127.0.0.1
PROXY_PORT="${STACK_PROXY_PORT:-8880}"
ADMINER_PORT="${STACK_ADMINER_PORT:-8881}"
DASHBOARD_PORT="${STACK_DASHBOARD_PORT:-8890}"
METRICS_PORT="${STACK_METRICS_PORT:-8892}"
if [ -n "${STACK_BACKEND_PORTS:-}" ]; then
    read -r -a BACKEND_PORTS <<<"${STACK_BACKEND_PORTS//,/ }"
else
    BACKEND_PORTS=()
    for ((i = 0; i < ${STACK_REPLICAS:-2}; i++)); do
        BACKEND_PORTS+=($((${STACK_BACKEND_PORT:-8801} + i)))
    done
fi
REPLICAS=${#BACKEND_PORTS[@]}
WORKERS="${STACK_WORKERS:-2}"
ADMINER_PHP_PORT="${STACK_ADMINER_PHP_PORT:-8882}"
SMTP_PORT="${STACK_SMTP_PORT:-8825}"
HEALTHCHECK_INTERVAL="${STACK_HEALTHCHECK_INTERVAL:-1s}"
TRAEFIK_LOG_LEVEL="${STACK_TRAEFIK_LOG_LEVEL:-INFO}"
START_TIMEOUT="${STACK_START_TIMEOUT:-60}"
PROMETHEUS="$(echo "${STACK_PROMETHEUS:-false}" | tr '[:upper:]' '[:lower:]')"
PROMETHEUS_PORT="${STACK_PROMETHEUS_PORT:-8899}"
SCRAPE_INTERVAL="${STACK_SCRAPE_INTERVAL:-5s}"
VENV="${STACK_VENV:-$BACKEND_DIR/.venv}"
DOMAIN="${DOMAIN:-localhost}"
HTTPS="$(echo "${PROXY_HTTPS:-false}" | tr '[:upper:]' '[:lower:]')"
HTTPS_PORT="${STACK_HTTPS_PORT:-8843}"
ACME_CHALLENGE="${ACME_CHALLENGE:-tls}"
if [ "$HTTPS" = true ]; then
    ENTRYPOINTS=("web $PROXY_PORT" "websecure $HTTPS_PORT" "adminer $ADMINER_PORT")
    API_URL="https://$DOMAIN:$HTTPS_PORT"
    ADMINER_SCHEME=https
else
    ENTRYPOINTS=("web $PROXY_PORT" "adminer $ADMINER_PORT" "dashboard $DASHBOARD_PORT")
    API_URL="http://$DOMAIN:$PROXY_PORT"
    ADMINER_SCHEME=http
fi
ADMINER_CONF=/etc/adminer/conf.php

log() { echo "stack: $*" >&2; }
die() {
    log "$*"
    exit 1
}

# --- processes -------------------------------------------------------------
# Each process runs in its own session (setsid), so its whole group (gunicorn's
# workers, PHP's) is signalled at once; "<name>.pid" holds "PID START_TIME", the
# start time guarding against a recycled PID.

# Fields 3 (state) and 22 (start time) of /proc/PID/stat; the command name
# before them may hold spaces.
proc_stat() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f"$2"; }
start_time() { proc_stat "$1" 20; }

alive() { # name -> 0 when the process recorded for it runs (a zombie does not)
    local file="$STATE_DIR/$1.pid" pid started
    [ -f "$file" ] || return 1
    read -r pid started <"$file"
    [ -n "$pid" ] && [ "$(start_time "$pid")" = "$started" ] &&
        [ "$(proc_stat "$pid" 1)" != Z ]
}

started() { # names of the processes started, in order
    [ ! -f "$STATE_DIR/processes" ] || cat "$STATE_DIR/processes"
}

pid_of() { cut -d' ' -f1 "$STATE_DIR/$1.pid"; }

launch() { # name command... ; output goes to <name>.log
    local name="$1"
    shift
    setsid "$@" >"$STATE_DIR/$name.log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid $(start_time "$pid")" >"$STATE_DIR/$name.pid"
    echo "$name" >>"$STATE_DIR/processes"
}

stop_one() { # name: TERM to the process group, KILL after 15 s
    local name="$1" pid
    if ! alive "$name"; then
        rm -f "$STATE_DIR/$name.pid"
        return 0
    fi
    pid="$(pid_of "$name")"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do
        alive "$name" || break
        sleep 0.1
    done
    if alive "$name"; then
        log "$name ($pid) did not stop in 15 s: KILL"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    # The group too: workers left by a master that was killed.
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$STATE_DIR/$name.pid"
}

stop_all() {
    [ -f "$STATE_DIR/processes" ] || return 0
    local name
    # The proxy first (no new requests), then the others, last started first.
    stop_one traefik
    for name in $(tac "$STATE_DIR/processes"); do
        stop_one "$name"
    done
    rm -f "$STATE_DIR/processes"
}

# --- readiness ---------------------------------------------------------------

http_ok() { # url [curl options]
    local status
    status="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" 2>/dev/null || true)"
    [ "$status" = 200 ]
}

proxy_ok() { # scheme port path: through Traefik to DOMAIN (resolved to HOST); -k
    # because until the ACME order is done Traefik serves its default certificate
    http_ok "$1://$DOMAIN:$2$3" --resolve "$DOMAIN:$2:$HOST" -k
}

all_replicas_up() { # Traefik's health check has seen every replica answer
    local up
    up="$(curl -s --max-time 2 "http://$HOST:$DASHBOARD_PORT/api/http/services/backend@file" |
        grep -o '"http://[0-9.:]*":"UP"' | wc -l)"
    [ "$up" -eq "$REPLICAS" ]
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

wait_for() { # description deadline command...; fails early when a process died
    local what="$1" deadline="$2" name
    shift 2
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || die "timed out waiting for $what"
        for name in $(started); do
            alive "$name" || die "$name exited (log: $STATE_DIR/$name.log)"
        done
        sleep 0.1
    done
}

urls() {
    cat <<EOF
API:        $API_URL/api/v1/  (docs: $API_URL/docs)
Adminer:    $ADMINER_SCHEME://$DOMAIN:$ADMINER_PORT/
Dashboard:  $([ "$HTTPS" = true ] && echo "$API_URL/traefik/dashboard/ (basic auth)" ||
        echo "http://$DOMAIN:$DASHBOARD_PORT/dashboard/")
SMTP sink:  $HOST:$SMTP_PORT (messages in $STATE_DIR/smtp.log)
Metrics:    http://$HOST:$METRICS_PORT/metrics (Traefik), /metrics on each replica$(
        [ "$PROMETHEUS" != true ] || printf '\nPrometheus: http://%s:%s/' "$HOST" "$PROMETHEUS_PORT")
Replicas:   $(for i in $(seq 1 "$REPLICAS"); do printf 'http://%s:%s ' "$HOST" "${BACKEND_PORTS[i - 1]}"; done)
State, logs: $STATE_DIR
EOF
}

# --- start -------------------------------------------------------------------

write_configs() {
    mkdir -p "$STATE_DIR/adminer" "$STATE_DIR/traefik"
    printf '<?php include "%s";\n' "$ADMINER_CONF" >"$STATE_DIR/adminer/index.php"
    # Traefik's static configuration, explicit: with --configFile Traefik looks
    # nowhere else (it would otherwise read /etc/traefik/traefik.yml or
    # ./traefik.yml, if any, and then ignore every flag and TRAEFIK_* variable).
    local entrypoint name port
    {
        cat <<EOF
# Generated by scripts/stack.sh: the static part of ../traefik's configuration
# for loopback ports; routers, middlewares and services are in providers.file.
global:
  checkNewVersion: false
  sendAnonymousUsage: false
log:
  level: $TRAEFIK_LOG_LEVEL
  noColor: true
# JSON lines, with the request id, as in docker-compose.yml: the replicas log
# every request, the proxy its errors, retries and slow requests.
accessLog:
  filePath: $STATE_DIR/traefik-access.log
  format: json
  fields:
    headers:
      names:
        X-Request-Id: keep
  filters:
    statusCodes: ["400-599"]
    retryAttempts: true
    minDuration: 1s
api:
  dashboard: true
  basePath: $([ "$HTTPS" = true ] && echo /traefik || echo /)
providers:
  file:
    directory: $REPO_DIR/traefik/dynamic
    watch: true
# Traefik's own metrics, on the internal entrypoint "metrics" only (no router of
# ../traefik/dynamic uses it), as in docker-compose.yml.
metrics:
  prometheus:
    entryPoint: metrics
    addRoutersLabels: true
EOF
        if [ "$HTTPS" = true ]; then
            acme_config
        fi
        echo "entryPoints:"
        for entrypoint in "${ENTRYPOINTS[@]}"; do
            read -r name port <<<"$entrypoint"
            cat <<EOF
  $name:
    address: "$HOST:$port"
    http:
      aliasHeadersStrategy: delete
EOF
            if [ "$name" = web ] && [ "$HTTPS" = true ]; then
                cat <<EOF
      redirections:
        entryPoint:
          to: websecure
          scheme: https
EOF
            fi
        done
        cat <<EOF
  metrics:
    address: "$HOST:$METRICS_PORT"
    http:
      aliasHeadersStrategy: delete
EOF
    } >"$STATE_DIR/traefik/traefik.yml"
    [ "$PROMETHEUS" != true ] || prometheus_config
}

# The `prometheus` config of ../docker-compose.yml with the loopback ports as targets.
prometheus_config() {
    local port targets=""
    for port in "${BACKEND_PORTS[@]}"; do
        targets="${targets:+$targets, }'$HOST:$port'"
    done
    mkdir -p "$STATE_DIR/prometheus"
    cat >"$STATE_DIR/prometheus/prometheus.yml" <<EOF
# Generated by scripts/stack.sh: docker-compose.yml's "prometheus" config for loopback ports.
global:
  scrape_interval: $SCRAPE_INTERVAL
  evaluation_interval: $SCRAPE_INTERVAL
scrape_configs:
  - job_name: backend
    static_configs:
      - targets: [$targets]
  - job_name: traefik
    static_configs:
      - targets: ['$HOST:$METRICS_PORT']
EOF
}

# Production: docker-compose.yml's resolver `le`, with the dashboard under /traefik.
acme_config() {
    local challenge
    case "$ACME_CHALLENGE" in
    tls) challenge="tlsChallenge: {}" ;;
    http) challenge="httpChallenge: {entryPoint: web}" ;;
    *) die "ACME_CHALLENGE must be tls or http, not '$ACME_CHALLENGE'" ;;
    esac
    cat <<EOF
certificatesResolvers:
  le:
    acme:
      caServer: "${ACME_CA_SERVER:-https://acme-v02.api.letsencrypt.org/directory}"
      storage: $STATE_DIR/acme.json
      $challenge
EOF
    [ -z "${ACME_EMAIL:-}" ] || echo "      email: \"$ACME_EMAIL\""
}

start() {
    [ -x "$VENV/bin/gunicorn" ] || die "no $VENV/bin/gunicorn: run \`uv sync\` in backend/ first"
    [ -x "$VENV/bin/traefik" ] || die "no $VENV/bin/traefik: run \`uv sync\` in backend/ first"
    command -v php >/dev/null || die "no php: bash scripts/install-stack-tools.sh"
    [ -f "$ADMINER_CONF" ] || die "no $ADMINER_CONF: bash scripts/install-stack-tools.sh"
    command -v curl >/dev/null || die "no curl"
    [ "$PROMETHEUS" != true ] || command -v prometheus >/dev/null ||
        die "no prometheus: bash scripts/install-stack-tools.sh"
    mkdir -p "$STATE_DIR"
    chmod 700 "$STATE_DIR"
    if [ -f "$STATE_DIR/processes" ]; then
        for name in $(started); do
            alive "$name" && die "already running ($STATE_DIR); \`$0 stop\` first"
        done
        rm -f "$STATE_DIR/processes"
    fi
    rm -f "$STATE_DIR"/*.log
    write_configs
    export PATH="$VENV/bin:$PATH"
    cd "$BACKEND_DIR"

    # One signing key for every worker of every replica: a token from one must
    # work on the others. The one the app would use (environment, .env), or a
    # random one for this run.
    if [ -z "${SECRET_KEY:-}" ]; then
        SECRET_KEY="$(python -c 'from app.core.config import settings; print(settings.SECRET_KEY)' 2>/dev/null || true)"
        [ -n "$SECRET_KEY" ] && export SECRET_KEY
    fi

    trap 'log "start failed; stopping"; tail_logs; stop_all' EXIT
    local deadline=$((SECONDS + START_TIMEOUT)) i port servers=""

    # The proxy, Adminer and the SMTP sink first: they come up while prestart runs.
    PYTHONUNBUFFERED=1 launch smtp python -m aiosmtpd -n -l "$HOST:$SMTP_PORT"
    launch adminer php -S "$HOST:$ADMINER_PHP_PORT" -t "$STATE_DIR/adminer"
    for port in "${BACKEND_PORTS[@]}"; do
        servers="${servers:+$servers,}http://$HOST:$port"
    done
    # Traefik skips its resolver, keeping the certificates in it unused, when
    # acme.json is readable by others (a copied or restored file).
    [ ! -f "$STATE_DIR/acme.json" ] || chmod 600 "$STATE_DIR/acme.json"
    (
        # From the state directory: no stray ./traefik.yml around.
        cd "$STATE_DIR"
        GOMAXPROCS="${PROXY_GOMAXPROCS:-1}" \
            DOMAIN="$DOMAIN" PROXY_HTTPS="$HTTPS" BACKEND_SERVERS="$servers" \
            BACKEND_HEALTHCHECK_INTERVAL="$HEALTHCHECK_INTERVAL" \
            ADMINER_URL="http://$HOST:$ADMINER_PHP_PORT" \
            launch traefik traefik --configFile="$STATE_DIR/traefik/traefik.yml"
    )
    if [ "$PROMETHEUS" = true ]; then
        launch prometheus prometheus \
            --config.file="$STATE_DIR/prometheus/prometheus.yml" \
            --storage.tsdb.path="$STATE_DIR/prometheus/data" \
            --web.listen-address="$HOST:$PROMETHEUS_PORT"
    fi

    log "prestart (migrations, first superuser)..."
    timeout "$START_TIMEOUT" bash scripts/prestart.sh >"$STATE_DIR/prestart.log" 2>&1 ||
        die "prestart failed (log: $STATE_DIR/prestart.log)"
    deadline=$((SECONDS + START_TIMEOUT))

    # Only the proxy (127.0.0.1) is trusted for X-Forwarded-For / -Proto.
    for i in $(seq 1 "$REPLICAS"); do
        SMTP_HOST="$HOST" SMTP_PORT="$SMTP_PORT" SMTP_TLS=false SMTP_SSL=false \
            launch "backend-$i" gunicorn app.main:app \
            -k uvicorn_worker.UvicornWorker -w "$WORKERS" -b "$HOST:${BACKEND_PORTS[i - 1]}" \
            --forwarded-allow-ips "$HOST" \
            --control-socket "$STATE_DIR/backend-$i.ctl" \
            --graceful-timeout 10
    done

    # Background jobs: a queue on PostgreSQL only (SQLite runs them in process).
    if [ "$(python -c 'from app import jobs; print(jobs.in_process)')" = False ]; then
        SMTP_HOST="$HOST" SMTP_PORT="$SMTP_PORT" SMTP_TLS=false SMTP_SSL=false \
            launch worker python manage.py worker
    fi

    wait_for "the SMTP sink" "$deadline" port_open "$SMTP_PORT"
    for i in $(seq 1 "$REPLICAS"); do
        wait_for "backend-$i" "$deadline" \
            http_ok "http://$HOST:${BACKEND_PORTS[i - 1]}/api/v1/utils/health-check/"
    done
    wait_for "Adminer" "$deadline" http_ok "http://$HOST:$ADMINER_PHP_PORT/"
    wait_for "Traefik -> Adminer" "$deadline" proxy_ok "$ADMINER_SCHEME" "$ADMINER_PORT" /
    if [ "$HTTPS" = true ]; then
        # No open dashboard in production: the API through the proxy only.
        wait_for "Traefik -> backend" "$deadline" \
            proxy_ok https "$HTTPS_PORT" /api/v1/utils/health-check/
    else
        wait_for "Traefik -> backend" "$deadline" \
            proxy_ok http "$PROXY_PORT" /api/v1/utils/health-check/
        wait_for "Traefik dashboard" "$deadline" http_ok "http://$HOST:$DASHBOARD_PORT/api/version"
        wait_for "every replica in the load balancer" "$deadline" all_replicas_up
    fi
    wait_for "Traefik's metrics" "$deadline" http_ok "http://$HOST:$METRICS_PORT/metrics"
    if [ "$PROMETHEUS" = true ]; then
        wait_for "Prometheus" "$deadline" http_ok "http://$HOST:$PROMETHEUS_PORT/-/ready"
    fi
    trap - EXIT

    urls
}

tail_logs() {
    local file
    for file in "$STATE_DIR"/*.log; do
        [ -s "$file" ] || continue
        echo "--- $file" >&2
        tail -n 15 "$file" >&2
    done
}

status() {
    local name running=0
    if [ -f "$STATE_DIR/processes" ]; then
        for name in $(started); do
            if alive "$name"; then
                echo "$name: running (pid $(pid_of "$name"))"
                running=1
            else
                echo "$name: not running"
            fi
        done
    fi
    if [ "$running" = 1 ]; then
        urls
    else
        echo "stack: not running ($STATE_DIR)"
        return 3
    fi
}

case "${1:-}" in
start) start ;;
stop) stop_all ;;
status) status ;;
run)
    start
    trap 'echo; log "stopping..."; stop_all; exit 0' INT TERM
    log "running; Ctrl-C stops everything"
    while true; do
        sleep 1 &
        wait $! || true
    done
    ;;
*)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 2
    ;;
esac
