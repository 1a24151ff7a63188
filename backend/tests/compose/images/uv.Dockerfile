# Stands in for ghcr.io/astral-sh/uv:0.13.9: /uv and /uvx (PyPI's static musllinux wheel), FROM scratch.
FROM python:3.11-slim-bookworm AS fetch
RUN python -m pip download --no-deps --only-binary=:all: \
        --platform musllinux_1_1_x86_64 --dest /wheel uv==0.13.9 \
    && python -m zipfile -e /wheel/uv-*.whl /wheel/unpacked \
    && install -m 755 /wheel/unpacked/uv-*.data/scripts/uv /wheel/unpacked/uv-*.data/scripts/uvx /

FROM scratch
COPY --from=fetch /uv /uvx /
ENTRYPOINT ["/uv"]
