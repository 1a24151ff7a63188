"""The request's session (app/core/db.py): opened by get_db when a route asks for
it, closed after the response (COMMIT if it only read), on the real test database."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi import FastAPI, HTTPException
from httpx import ASGITransport, AsyncClient
from sqlalchemy import event, false, func, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import col, delete, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from app.api.deps import SessionDep
from app.core import db as core_db
from app.core.db import CommitReadsSession
from app.models import AuthAttempt


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

    @app.get("/flush-then-404")
    async def flush_then_404(session: SessionDep, key: str) -> None:
        session.add(AuthAttempt(key=key))
        await session.flush()
        raise HTTPException(status_code=404, detail="Not here")

    @app.get("/pending-then-404")
    async def pending_then_404(session: SessionDep, key: str) -> None:
        await session.exec(select(1))
        session.add(AuthAttempt(key=key))
        raise HTTPException(status_code=404, detail="Not here")

    @app.get("/failed-flush-then-404")
    async def failed_flush_then_404(session: SessionDep) -> None:
        session.add(AuthAttempt(key=None))  # type: ignore[arg-type]  # NOT NULL
        try:
            await session.flush()
        except DBAPIError:
            raise HTTPException(status_code=404, detail="Not here") from None

    @app.get("/lost-connection-then-404")
    async def lost_connection_then_404(session: SessionDep) -> None:
        await session.exec(select(1))
        await (await session.connection()).invalidate()  # as when the server goes
        raise HTTPException(status_code=404, detail="Not here")

    @app.get("/update-then-404")
    async def update_then_404(session: SessionDep) -> None:
        await session.exec(update(AuthAttempt).where(false()).values(key="x"))
        raise HTTPException(status_code=404, detail="Not here")

    @app.get("/commit-then-read")
    async def commit_then_read(session: SessionDep, key: str) -> int:
        session.add(AuthAttempt(key=key))
        await session.commit()
        return (await session.exec(select(func.count()).select_from(AuthAttempt))).one()

    @app.get("/failed-select")
    async def failed_select(session: SessionDep) -> None:
        await session.exec(text("SELECT * FROM no_such_table"))  # type: ignore[call-overload]

    @app.get("/query-commit-fails")
    async def query_commit_fails(session: SessionDep) -> int:
        def refuse(_session: Any) -> None:
            raise Boom

        event.listen(session.sync_session, "before_commit", refuse)
        return (await session.exec(select(1))).one()

    @app.get("/no-session")
    async def no_session() -> bool:
        return True

    return app


@pytest.fixture
def opened(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> list[AsyncSession]:
    """Point get_db at the test database; the sessions it opens land in the list."""
    sessions: list[AsyncSession] = []
    factory = async_sessionmaker(
        engine,
        class_=AsyncSession,
        sync_session_class=CommitReadsSession,
        expire_on_commit=False,
    )

    def open_session() -> AsyncSession:
        sessions.append(factory())
        return sessions[-1]

    monkeypatch.setattr(core_db, "session_factory", open_session)
    return sessions


@pytest.fixture
async def session_client(opened: list[AsyncSession]) -> AsyncIterator[AsyncClient]:
    """A client on session_app, get_db on the test database."""
    assert opened == []
    transport = ASGITransport(app=session_app(), raise_app_exceptions=False)
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
    task = asyncio.create_task(app(scope, receive, send))
    await asyncio.wait_for(queried.wait(), timeout=10)
    assert engine.pool.checkedout() == checked_out + 1  # type: ignore[attr-defined]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert not opened[0].in_transaction()
    assert engine.pool.checkedout() == checked_out  # type: ignore[attr-defined]


@pytest.fixture
def transaction_ends(engine: AsyncEngine) -> Iterator[list[str]]:
    """How each transaction on the test engine ended: "commit" or "rollback"."""
    ends: list[str] = []

    def on_commit(_connection: Any) -> None:
        ends.append("commit")

    def on_rollback(_connection: Any) -> None:
        ends.append("rollback")

    event.listen(engine.sync_engine, "commit", on_commit)
    event.listen(engine.sync_engine, "rollback", on_rollback)
    yield ends
    event.remove(engine.sync_engine, "commit", on_commit)
    event.remove(engine.sync_engine, "rollback", on_rollback)


async def attempts(engine: AsyncEngine, key: str) -> int:
    async with engine.connect() as connection:
        statement = select(func.count()).where(col(AuthAttempt.key) == key)
        return int((await connection.execute(statement)).scalar_one())


async def test_read_only_request_ends_with_commit(
    session_client: AsyncClient, transaction_ends: list[str]
) -> None:
    """psycopg keeps its prepared statements through a COMMIT, not a ROLLBACK."""
    assert (await session_client.get("/query")).status_code == 200
    assert (await session_client.get("/query-then-404")).status_code == 404
    assert transaction_ends == ["commit", "commit"]


@pytest.mark.parametrize("path", ["/flush-then-404", "/pending-then-404"])
async def test_uncommitted_writes_are_rolled_back(
    session_client: AsyncClient,
    transaction_ends: list[str],
    engine: AsyncEngine,
    path: str,
) -> None:
    key = f"{uuid.uuid4()}@example.com"
    assert (await session_client.get(path, params={"key": key})).status_code == 404
    assert transaction_ends == ["rollback"]
    assert await attempts(engine, key) == 0


@pytest.mark.parametrize(
    "path", ["/failed-flush-then-404", "/lost-connection-then-404"]
)
async def test_broken_transaction_keeps_the_routes_answer(
    session_client: AsyncClient,
    opened: list[AsyncSession],
    engine: AsyncEngine,
    path: str,
) -> None:
    """A transaction that a failed flush or a lost connection ended is not
    committed: the route's own error is the answer, not a refused COMMIT."""
    checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]

    response = await session_client.get(path)

    assert response.status_code == 404
    assert not opened[0].in_transaction()
    assert engine.pool.checkedout() == checked_out  # type: ignore[attr-defined]


async def test_uncommitted_statement_is_rolled_back(
    session_client: AsyncClient, transaction_ends: list[str]
) -> None:
    assert (await session_client.get("/update-then-404")).status_code == 404
    assert transaction_ends == ["rollback"]


async def test_reads_after_a_commit_end_with_commit(
    session_client: AsyncClient,
    transaction_ends: list[str],
    engine: AsyncEngine,
) -> None:
    key = f"{uuid.uuid4()}@example.com"
    try:
        response = await session_client.get("/commit-then-read", params={"key": key})
        assert response.status_code == 200
        assert transaction_ends == ["commit", "commit"]
        assert await attempts(engine, key) == 1
    finally:
        async with engine.begin() as connection:
            await connection.execute(
                delete(AuthAttempt).where(col(AuthAttempt.key) == key)
            )


async def test_failed_statement_leaves_a_clean_connection(
    session_client: AsyncClient, engine: AsyncEngine
) -> None:
    checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
    assert (await session_client.get("/failed-select")).status_code == 500
    assert (await session_client.get("/query")).json() == 1
    assert engine.pool.checkedout() == checked_out  # type: ignore[attr-defined]


async def test_failed_commit_still_returns_the_connection(
    session_client: AsyncClient, opened: list[AsyncSession], engine: AsyncEngine
) -> None:
    checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]

    # The answer was sent before the COMMIT failed (the error goes to the server).
    assert (await session_client.get("/query-commit-fails")).json() == 1

    assert not opened[0].in_transaction()
    assert engine.pool.checkedout() == checked_out  # type: ignore[attr-defined]


async def test_other_sessions_are_left_alone(db: AsyncSession) -> None:
    """Only the app's sessions (CommitReadsSession) note their writes."""
    await db.exec(update(AuthAttempt).where(false()).values(key="x"))
    await db.flush()

    assert db.sync_session.info == {}
