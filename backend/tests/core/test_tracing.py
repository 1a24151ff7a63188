"""app/core/tracing.py in process; tests/test_live_tracing.py sends a real trace."""

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from httpx import ASGITransport, AsyncClient
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from app.core import supabase
from app.core.tracing import HideEmailsProcessor, UntracedPathsMiddleware
from tests.utils.servers import BACKEND_DIR
from tests.utils.supabase import FakeSupabase

# What app/main.py loaded and installed, as JSON, in a fresh interpreter. The
# OpenTelemetry API comes with FastAPI, and redis loads the SDK's metrics: only
# the parts tracing adds are looked for.
PROBE = """
import json, logging, sys
from opentelemetry import trace
from app.main import app
print(json.dumps({
    "modules": sorted(
        name for name in sys.modules
        if name.startswith(("opentelemetry.sdk.trace", "opentelemetry.exporter", "opentelemetry.instrumentation"))
    ),
    "provider": type(trace.get_tracer_provider()).__name__,
    "middleware": [m.cls.__name__ for m in app.user_middleware],
    "log_filters": [type(f).__name__ for f in logging.getLogger().handlers[0].filters],
}))
"""


def probe_app(otlp_endpoint: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=BACKEND_DIR,
        env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_endpoint},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    probed: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return probed


@pytest.mark.slow  # two fresh interpreters importing the app
def test_without_an_endpoint_nothing_is_loaded_or_installed() -> None:
    off = probe_app("")  # empty is unset

    assert off["modules"] == []
    assert off["provider"] == "ProxyTracerProvider"
    assert "UntracedPathsMiddleware" not in off["middleware"]
    assert "TraceIdFilter" not in off["log_filters"]
    # What the same probe sees with tracing on.
    on = probe_app("http://127.0.0.1:4318")
    assert "opentelemetry.sdk.trace" in on["modules"]
    assert "opentelemetry.instrumentation.sqlalchemy" in on["modules"]
    assert "opentelemetry.instrumentation.httpx" in on["modules"]
    assert on["provider"] == "TracerProvider"
    assert "UntracedPathsMiddleware" in on["middleware"]
    assert "TraceIdFilter" in on["log_filters"]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    """A provider of the test's own: the global one stays unset (tracing off)."""
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(HideEmailsProcessor())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.mark.parametrize(
    ("key", "value", "hidden"),
    [
        (
            "url.path",
            "/api/v1/password-recovery/ada.lovelace@example.com",
            "/api/v1/password-recovery/[email]",
        ),
        ("url.query", "email_to=ada.lovelace%40example.com", "email_to=[email]"),
        ("url.path", "/api/v1/users/me", "/api/v1/users/me"),
    ],
)
def test_spans_hide_email_addresses_in_paths(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    key: str,
    value: str,
    hidden: str,
) -> None:
    provider.get_tracer("test").start_span("POST", attributes={key: value}).end()

    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes[key] == hidden


@pytest.fixture
async def instrumented_engine(provider: TracerProvider) -> AsyncIterator[AsyncEngine]:
    """An engine instrumented as app/core/tracing.py does, with the test's provider."""
    engine = create_async_engine("sqlite+aiosqlite://")
    SQLAlchemyInstrumentor().instrument(
        engine=engine.sync_engine, tracer_provider=provider, skip_dep_check=True
    )
    yield engine
    SQLAlchemyInstrumentor().uninstrument()
    await engine.dispose()


async def test_untraced_paths_make_no_sql_spans(
    instrumented_engine: AsyncEngine, exporter: InMemorySpanExporter
) -> None:
    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        async with instrumented_engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        await PlainTextResponse("ok")(scope, receive, send)

    transport = ASGITransport(UntracedPathsMiddleware(endpoint))
    async with AsyncClient(transport=transport, base_url="http://test") as client:
        await client.get("/api/v1/utils/health-check/")
        await client.get("/metrics")
        assert exporter.get_finished_spans() == ()

        await client.get("/api/v1/users/me")
    spans = exporter.get_finished_spans()
    assert "SELECT 1" in [(s.attributes or {}).get("db.statement") for s in spans]


async def test_outgoing_calls_are_spans_of_the_request(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    fake_supabase: FakeSupabase,
) -> None:
    """The Supabase JWKS fetch, as the app instruments httpx."""
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    try:
        with provider.get_tracer("test").start_as_current_span("request") as request:
            await supabase.verify_supabase_token(fake_supabase.token())
    finally:
        HTTPXClientInstrumentor().uninstrument()

    (fetch,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert fetch.attributes is not None and fetch.parent is not None
    assert fetch.attributes["http.url"] == fake_supabase.url + supabase.JWKS_PATH
    assert fetch.parent.span_id == request.get_span_context().span_id
