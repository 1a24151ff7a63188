from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import URL, event
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import Receive, Scope, Send

from app.core import metrics
from app.core.config import settings
from app.core.db import create_engine


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_an_error_past_the_app_is_counted_as_a_500() -> None:
    async def failing(_scope: Scope, _receive: Receive, _send: Send) -> None:
        raise RuntimeError("a bug")

    middleware = metrics.MetricsMiddleware(failing, routes=[])
    labels = {"method": "GET", "route": metrics.UNMATCHED, "status": "500"}
    before = sample("http_requests_total", **labels)

    async def receive() -> dict[str, object]:
        return {"type": "http.request"}

    async def send(_message: object) -> None:
        raise AssertionError("nothing is sent")

    scope = {"type": "http", "method": "GET", "path": "/"}
    with pytest.raises(RuntimeError):
        await middleware(scope, receive, send)

    assert sample("http_requests_total", **labels) - before == 1


@pytest.fixture
async def pool_engine(migrated_database_url: URL) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(migrated_database_url)
    yield engine
    for name, listener in (
        ("checkout", metrics._checked_out),
        ("checkin", metrics._checked_in),
    ):
        event.remove(engine.sync_engine, name, listener)
    await engine.dispose()


async def test_pool_gauges_follow_the_connections(
    pool_engine: AsyncEngine,
) -> None:
    size_before = sample("db_pool_size")
    in_use_before = sample("db_pool_connections_in_use")

    metrics.instrument_pool(pool_engine)
    async with pool_engine.connect(), pool_engine.connect():
        assert sample("db_pool_connections_in_use") - in_use_before == 2
    assert sample("db_pool_connections_in_use") == in_use_before

    if pool_engine.dialect.name == "postgresql":
        assert sample("db_pool_size") - size_before == settings.DB_POOL_SIZE
