"""Tracing as deployed: gunicorn with two workers, OTEL_EXPORTER_OTLP_ENDPOINT
pointing at a local OTLP/HTTP receiver (tests/utils/otlp.py)."""

import json
from pathlib import Path

import httpx
import pytest
from sqlalchemy import URL

from tests.utils.otlp import ReceivedSpan, otlp_receiver
from tests.utils.servers import (
    GUNICORN,
    SUPERUSER,
    free_port,
    prestart,
    server_env,
    serving,
)

# It runs prestart.sh and a server of its own.
pytestmark = pytest.mark.slow

REQUEST_ID = "traced-login-1"


def ancestors(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[str]:
    """The names of `span`'s parents, nearest first."""
    by_id = {s.span_id: s for s in spans}
    names = []
    while span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        names.append(span.name)
    return names


def traced_login(
    database_url: URL, tmp_path: Path, *flags: str
) -> tuple[ReceivedSpan, list[ReceivedSpan], Path]:
    """Serve the app on gunicorn (two workers, `flags`) with tracing on, poll its
    health check, ask for /metrics, log in once, stop it. The login's server
    span, every span received and the server's log file."""
    log_path = tmp_path / "gunicorn.log"
    with otlp_receiver() as receiver:
        port = str(free_port())
        env = server_env(
            database_url,
            PORT=port,
            ENVIRONMENT="staging",  # JSON log lines
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
            OTEL_SERVICE_NAME="backend-under-test",
        )
        prestart(env)
        command = [
            *GUNICORN,
            *("-w", "2", *flags, "-b", f"127.0.0.1:{port}", "--access-logfile", "-"),
            *("--control-socket", str(tmp_path / "gunicorn.ctl")),
        ]
        with serving(command, env, log_path):  # polls the health check
            base_url = f"http://127.0.0.1:{port}"
            assert httpx.get(f"{base_url}/metrics").status_code in (200, 404)
            login = httpx.post(
                f"{base_url}/api/v1/login/access-token",
                data={"username": SUPERUSER[0], "password": SUPERUSER[1]},
                headers={"X-Request-ID": REQUEST_ID},
            )
            assert login.status_code == 200
        # Stopped: each worker has flushed its last spans, and its log lines.
        spans = receiver.received()

    (server,) = [span for span in spans if span.kind == "SERVER"]
    assert server.name == "POST /api/v1/login/access-token"
    assert server.attributes["http.response.status_code"] == 200
    assert server.service_name == "backend-under-test"
    # One trace: the health checks and the scrape made none.
    assert {span.trace_id for span in spans} == {server.trace_id}
    database = database_url.get_backend_name()  # postgresql or sqlite
    sql = [span for span in spans if span.attributes.get("db.system") == database]
    statements = [span.attributes.get("db.statement", "") for span in sql]
    assert any(s.startswith("SELECT users.") for s in statements), statements
    assert any(s.startswith("INSERT INTO user_sessions ") for s in statements)
    for span in sql:
        assert span.kind == "CLIENT"
        assert server.name in ancestors(span, spans), span
    return server, spans, log_path


def test_a_request_arrives_as_one_trace_with_its_sql_spans(
    scratch_database_url: URL, tmp_path: Path
) -> None:
    server, _spans, log_path = traced_login(scratch_database_url, tmp_path)

    output = log_path.read_text().splitlines()
    # gunicorn's master writes a few plain lines before the app sets up logging.
    lines = [json.loads(line) for line in output if line.startswith("{")]
    ours = [line for line in lines if line.get("request_id") == REQUEST_ID]
    assert ours, log_path.read_text()
    assert {line.get("trace_id") for line in ours} == {server.trace_id}
    assert all("trace_id" not in line for line in lines if line not in ours)


def test_preloaded_workers_send_their_traces_too(
    scratch_database_url: URL, tmp_path: Path
) -> None:
    """gunicorn.conf.py does not preload: each worker imports the app, and sets up
    tracing, after the fork. Preloaded, the master does, and the SDK starts its
    exporter thread again in each worker."""
    traced_login(scratch_database_url, tmp_path, "--preload")
