"""OpenTelemetry tracing, on when OTEL_EXPORTER_OTLP_ENDPOINT is set. app/main.py
imports this module only then: with tracing off, no part of the SDK, the exporter
or the instrumentations is loaded, and nothing is installed.

FastAPI makes the request spans itself once a tracer provider is set (its native
telemetry); SQLAlchemy and httpx (the outgoing calls: the Supabase JWKS) are
instrumented here. Spans go to the collector over OTLP/HTTP (protobuf), as the
standard OTEL_* variables say: OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
OTEL_EXPORTER_OTLP_HEADERS, OTEL_TRACES_SAMPLER, OTEL_BSP_* and the rest."""

import logging

from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.http import is_untraced
from app.core.logging import hide_emails


def instrument(app: FastAPI, engine: AsyncEngine) -> None:
    """Trace this process's requests, SQL statements and outgoing HTTP calls.

    Called when app/main.py is imported, which each gunicorn worker does after the
    fork (gunicorn.conf.py does not preload): each worker has its own exporter
    thread. Under --preload, the SDK starts that thread again in each worker
    (tests/test_live_tracing.py runs both)."""
    # Service name, sampler...: from the OTEL_* variables. Shut down by `stop`:
    # uvicorn ends a worker by raising SIGTERM again, so no exit handler runs.
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(HideEmailsProcessor())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    # Its declared range ends before SQLAlchemy 2.1, whose engine events it uses
    # are unchanged (tests/test_live_tracing.py sees the SQL spans).
    SQLAlchemyInstrumentor().instrument(
        engine=engine.sync_engine, tracer_provider=provider, skip_dep_check=True
    )
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    app.add_middleware(UntracedPathsMiddleware)


def stop() -> None:
    """Send the spans still queued (at the end of the app's lifespan)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


class HideEmailsProcessor(SpanProcessor):
    """No email address in the request spans' paths and queries (POST
    /password-recovery/{email}), as in the logs (app/core/logging.py)."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for key in ("url.path", "url.query"):
            value = (span.attributes or {}).get(key)
            if isinstance(value, str) and value != (hidden := hide_emails(value)):
                span.set_attribute(key, hidden)


class UntracedPathsMiddleware:
    """No span at all for the paths that FastAPI excludes (app/core/http.py): without
    their request span, each SQL statement they run would start a trace of its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_untraced(scope):
            await self.app(scope, receive, send)
            return
        with suppress_instrumentation():
            await self.app(scope, receive, send)


class TraceIdFilter(logging.Filter):
    """The current span's trace id on the record, as `trace_id`, if there is one."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = trace.format_trace_id(context.trace_id)
        return True
