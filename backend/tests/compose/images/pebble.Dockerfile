# Pebble 2.4.0, Let's Encrypt's test ACME server, from Debian (tests only: acme-pebble.yml). No config or certificate inside: the test mounts them.
FROM standin/bookworm:base
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends pebble \
    && rm -rf /var/lib/apt/lists/*
EXPOSE 14000 15000
ENTRYPOINT ["/usr/bin/pebble"]
