"""Prometheus metrics: what they are, the middleware that counts requests, the
database pool's gauges, and the text a scrape gets (GET /metrics,
app/api/routes/metrics.py).

Under gunicorn each worker counts in files of its own in PROMETHEUS_MULTIPROC_DIR
(set by gunicorn.conf.py before the workers start) and a scrape of any worker
sums them all; without it (uvicorn, tests in process) the process's own registry
answers."""

import os
import time
from collections.abc import Iterable, Sequence

from fastapi.routing import iter_route_contexts
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool
from starlette.routing import BaseRoute, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Requests that matched no route (404 scans, CORS preflights, 413s) share this
# label: a raw path would create a series per path a scanner tries.
UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LABELS = ("method", "route", "status")

REQUESTS = Counter("http_requests", "HTTP requests answered, by route template", LABELS)
DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from the request to the end of its answer, by route template",
    LABELS,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
# livesum: a scrape adds up the workers alive now; a dead worker's value goes.
POOL_IN_USE = Gauge(
    "db_pool_connections_in_use",
    "Database connections checked out of the pools",
    multiprocess_mode="livesum",
)
POOL_SIZE = Gauge(
    "db_pool_size",
    "Connections the pools keep (DB_POOL_SIZE per worker); more are opened "
    "up to DB_MAX_OVERFLOW each under load",
    multiprocess_mode="livesum",
)
RATE_LIMIT_REFUSALS = Counter(
    "rate_limit_refusals", "Requests refused with 429, by rate-limit rule", ["rule"]
)
LOGIN_SUCCESSES = Counter("login_successes", "Password logins that opened a session")
LOGIN_FAILURES = Counter(
    "login_failures",
    "Password logins refused: bad_credentials, rate_limited, inactive, unverified",
    ["reason"],
)


class MetricsMiddleware:
    """Counts and times every HTTP request by method, route template (the path
    the route answers, prefixes included, e.g. /api/v1/items/{id}) and status."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = routes  # the application's, included routers and all
        self.templates: dict[int, str] = {}
        # The labelled children, looked up once: labels() takes a lock and
        # validates on every call. Bounded: methods, routes and statuses are.
        self.series: dict[tuple[str, int, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # unless an answer starts: an error raised past the app
        end: float | None = None

        async def send_and_note(message: Message) -> None:
            nonlocal status, end
            if message["type"] == "http.response.start":
                status = message["status"]
            elif not message.get("more_body", False):
                end = time.perf_counter()  # not the background work after it
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "other"
            # What the router chose, if anything: FastAPI leaves the route as
            # declared in its APIRouter (without the include's prefix), or for
            # a mount only the mounted app.
            route = scope.get("route") or scope.get("endpoint")
            key = (method, id(route) if route is not None else 0, status)
            series = self.series.get(key)
            if series is None:
                labels = (method, self.template(route), str(status))
                series = REQUESTS.labels(*labels), DURATION.labels(*labels)
                self.series[key] = series
            series[0].inc()
            series[1].observe((end or time.perf_counter()) - start)

    def template(self, route: object) -> str:
        if route is None:
            return UNMATCHED
        if id(route) not in self.templates:
            for context in iter_route_contexts(self.routes):
                template = context.path_format or UNMATCHED
                self.templates[id(context.original_route)] = template
                if isinstance(context.original_route, Mount):
                    self.templates[id(context.original_route.app)] = template
        return self.templates.get(id(route), UNMATCHED)


def instrument_pool(engine: AsyncEngine) -> None:
    """Keep the pool gauges of `engine`'s connection pool."""
    pool = engine.sync_engine.pool
    if isinstance(pool, QueuePool):
        POOL_SIZE.inc(pool.size())
    event.listen(engine.sync_engine, "checkout", _checked_out)
    event.listen(engine.sync_engine, "checkin", _checked_in)


def _checked_out(*_args: object) -> None:
    POOL_IN_USE.inc()


def _checked_in(*_args: object) -> None:
    POOL_IN_USE.dec()


class _Snapshot(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def exposition(*families: Metric) -> bytes:
    """The Prometheus text of every worker's metrics, and `families` (values
    read at scrape time)."""
    registry = CollectorRegistry()
    registry.register(_Snapshot(families))
    # prometheus_client's own switch, read from the environment at its import.
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY) + generate_latest(registry)
