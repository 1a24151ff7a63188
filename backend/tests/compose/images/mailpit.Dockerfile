# Stands in for axllent/mailpit:v1.27 (it is NOT Mailpit): SMTP on 1025, upstream's /api/v1/messages and /readyz on 8025.
FROM python:3.11-slim-bookworm
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-aiosmtpd \
    && rm -rf /var/lib/apt/lists/*
COPY mailpit.py /mailpit.py
EXPOSE 1025 8025
ENTRYPOINT ["python3", "/mailpit.py"]
