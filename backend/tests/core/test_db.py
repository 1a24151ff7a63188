"""The request's session (app/core/db.py): opened by get_db on first use, closed by
DatabaseSessionMiddleware after the response, on the real test database."""

import asyncio
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI, HTTPException
from httpx import ASGITransport, AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.api.deps import SessionDep
from app.core import db as core_db
from app.core.db import DatabaseSessionMiddleware


class Boom(Exception):
    pass


def session_app() -> FastAPI:
    app = FastAPI()

    @app.get("/query")
    async def query(session: SessionDep) -> int:
        return (await session.exec(select(1))).one()

    @app.get("/query-then-404")
    async def query_then_404(session: SessionDep) -> None:
        await session.exec(select(1))
        raise HTTPException(status_code=404, detail="Not here")

    @app.get("/query-then-crash")
    async def query_then_crash(session: SessionDep) -> None:
        await session.exec(select(1))
        raise Boom

    @app.get("/same-session")
    async def same_session(first: SessionDep, second: SessionDep) -> bool:
        return first is second

    @app.get("/no-session")
    async def no_session() -> bool:
        return True

    return app


@pytest.fixture
def opened(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> list[AsyncSession]:
    """Point get_db at the test database; the sessions it opens land in the list."""
    sessions: list[AsyncSession] = []
    factory = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)

    def open_session() -> AsyncSession:
        sessions.append(factory())
        return sessions[-1]

    monkeypatch.setattr(core_db, "session_factory", open_session)
    return sessions


@pytest.fixture
async def session_client() -> AsyncIterator[AsyncClient]:
    """A client on session_app with the middleware (use with `opened`)."""
    app = session_app()
    app.add_middleware(DatabaseSessionMiddleware)
    transport = ASGITransport(app=app, raise_app_exceptions=False)
    async with AsyncClient(transport=transport, base_url="http://test") as ac:
        yield ac


@pytest.mark.parametrize(
    ("path", "status_code"),
    [("/query", 200), ("/query-then-404", 404), ("/query-then-crash", 500)],
)
async def test_session_closed_after_the_response(
    session_client: AsyncClient,
    opened: list[AsyncSession],
    engine: AsyncEngine,
    path: str,
    status_code: int,
) -> None:
    checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]

    response = await session_client.get(path)

    assert response.status_code == status_code
    assert len(opened) == 1
    assert not opened[0].in_transaction()
    assert engine.pool.checkedout() == checked_out  # type: ignore[attr-defined]


async def test_one_session_per_request(
    session_client: AsyncClient, opened: list[AsyncSession]
) -> None:
    assert (await session_client.get("/same-session")).json() is True
    assert (await session_client.get("/same-session")).json() is True
    assert len(opened) == 2


async def test_no_session_opened_when_not_asked_for(
    session_client: AsyncClient, opened: list[AsyncSession]
) -> None:
    assert (await session_client.get("/no-session")).status_code == 200
    assert opened == []


async def test_cancelled_request_still_returns_its_connection(
    opened: list[AsyncSession], engine: AsyncEngine
) -> None:
    app = FastAPI()
    queried = asyncio.Event()

    @app.get("/hang")
    async def hang(session: SessionDep) -> None:
        await session.exec(select(1))
        queried.set()
        await asyncio.Event().wait()

    asgi = DatabaseSessionMiddleware(app)
    checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]

    async def receive() -> dict[str, object]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(_message: object) -> None:
        raise AssertionError("the request was not to answer")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/hang",
        "raw_path": b"/hang",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 1234),
        "server": ("test", 80),
    }
    task = asyncio.create_task(asgi(scope, receive, send))
    await asyncio.wait_for(queried.wait(), timeout=10)
    assert engine.pool.checkedout() == checked_out + 1  # type: ignore[attr-defined]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert not opened[0].in_transaction()
    assert engine.pool.checkedout() == checked_out  # type: ignore[attr-defined]


async def test_get_db_without_the_middleware_fails_loudly(
    opened: list[AsyncSession],
) -> None:
    transport = ASGITransport(app=session_app())
    async with AsyncClient(transport=transport, base_url="http://test") as ac:
        with pytest.raises(RuntimeError, match="DatabaseSessionMiddleware"):
            await ac.get("/query")
    assert opened == []
