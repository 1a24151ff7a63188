import logging
from typing import Any

import pytest
from sqlalchemy import event, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from tenacity import stop_after_attempt, wait_none

from app.backend_pre_start import wait_for_database
from app.core.db import create_engine
from tests.utils.servers import free_port


async def test_wait_for_database_returns_when_up(engine: AsyncEngine) -> None:
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        await wait_for_database(engine)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    # Asked once, answered at once (SQLite begins with BEGIN IMMEDIATE).
    assert statements.count("SELECT 1") == 1


async def test_wait_for_database_gives_up_after_bounded_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = create_engine(
        make_url(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    )
    bounded = wait_for_database.retry_with(stop=stop_after_attempt(3), wait=wait_none())
    with caplog.at_level(logging.WARNING), pytest.raises(OperationalError):
        await bounded(dead)
    await dead.dispose()
    assert len([r for r in caplog.records if "Retrying" in r.getMessage()]) == 2
