# Stands in for python:3.11-slim-bookworm: Debian's Python 3.11 as /usr/local/bin/python(3), bash, pip.
FROM standin/bookworm:base
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-pip python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/python3 /usr/local/bin/python \
    && ln -s /usr/bin/python3 /usr/local/bin/python3
# Not upstream: uv (in builds FROM this image) trusts its own roots, not this
# machine's egress CA; the system bundle holds that CA.
ENV LANG=C.UTF-8 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]
