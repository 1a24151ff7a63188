import sqlite3
from typing import Any

import anyio
import psycopg
from sqlalchemy import URL, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.config import settings


def create_engine(url: URL) -> AsyncEngine:
    if url.get_backend_name() == "sqlite":
        return _create_sqlite_engine(url)
    connect_args: dict[str, Any] = {"connect_timeout": settings.DB_CONNECT_TIMEOUT}
    if settings.DB_STATEMENT_TIMEOUT_MS:
        connect_args["options"] = (
            f"-c statement_timeout={settings.DB_STATEMENT_TIMEOUT_MS}"
        )
    return create_async_engine(
        url,
        pool_size=settings.DB_POOL_SIZE,
        max_overflow=settings.DB_MAX_OVERFLOW,
        pool_timeout=settings.DB_POOL_TIMEOUT,
        pool_recycle=settings.DB_POOL_RECYCLE,
        pool_pre_ping=settings.DB_POOL_PRE_PING,
        connect_args=connect_args,
    )


def _create_sqlite_engine(url: URL) -> AsyncEngine:
    engine = create_async_engine(url, connect_args={"timeout": 30})

    # pysqlite's own transaction handling breaks SAVEPOINTs and ignores
    # foreign keys; take over BEGIN and switch foreign keys on (SQLAlchemy docs).
    # BEGIN IMMEDIATE takes the write lock up front: a transaction that reads
    # then writes waits for a concurrent writer instead of failing "database is locked".
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


engine = create_engine(settings.SQLALCHEMY_DATABASE_URI)
session_factory = async_sessionmaker(
    engine, class_=AsyncSession, expire_on_commit=False
)


def is_unavailability(error: BaseException | None) -> bool:
    """A database error that says "not now" (down, restarting, timed out, busy)
    rather than "this query is wrong"."""
    if isinstance(error, psycopg.OperationalError):
        return True  # connection lost or refused, shutdown, statement timeout, deadlock
    return isinstance(error, sqlite3.OperationalError) and "locked" in str(error)


async def database_ready(session: AsyncSession) -> bool:
    """Whether the database answers a trivial query right now."""
    try:
        await session.exec(select(1))
    except (DBAPIError, SQLAlchemyTimeoutError, OSError):
        return False
    return True


_SESSION_KEY = "app.db_session"


class _SessionSlot:
    """Where DatabaseSessionMiddleware finds the request's session, if one was opened
    (an object, so that a copy of the ASGI scope shares it)."""

    session: AsyncSession | None = None


async def get_db(request: HTTPConnection) -> AsyncSession:
    """The request's session, opened on first use; DatabaseSessionMiddleware closes
    it after the response. A `yield` dependency would do the same, but FastAPI's
    machinery around one cost ~40 us per request (benchmark)."""
    slot: _SessionSlot | None = request.scope.get(_SESSION_KEY)
    if slot is None:
        raise RuntimeError("get_db needs DatabaseSessionMiddleware on the app")
    if slot.session is None:
        slot.session = session_factory()
    return slot.session


_WROTE = "app.wrote"


@event.listens_for(Session, "do_orm_execute")
def _note_statement(state: ORMExecuteState) -> None:
    if not state.is_select:
        state.session.info[_WROTE] = True


@event.listens_for(Session, "after_flush")
def _note_flush(session: Session, _context: Any) -> None:
    session.info[_WROTE] = True


def mark_written(session: AsyncSession) -> None:
    """Note a write made on the session's connection outside the ORM (a deferred
    job), so that end_session rolls it back, not commits it, if left uncommitted."""
    session.info[_WROTE] = True


@event.listens_for(Session, "after_transaction_end")
def _forget_writes(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the transaction itself, not a savepoint
        session.info.pop(_WROTE, None)


async def end_session(session: AsyncSession) -> None:
    """Close the request's session. A transaction that only read ends with COMMIT
    (the same effect as ROLLBACK): psycopg forgets its prepared statements on
    every ROLLBACK, so PostgreSQL parsed and planned every query of every request
    anew (its CPU per GET /users/me: about 200 -> 120 us). Anything written and
    not committed, flushed or not, is rolled back as before. The session is
    closed even if that COMMIT fails (the connection goes back to the pool), in
    one call into the sync session: one greenlet, not two."""
    await session.run_sync(_commit_reads_and_close)


def _commit_reads_and_close(session: Session) -> None:
    try:
        if (
            session.in_transaction()
            and not session.info.get(_WROTE)
            and not (session.new or session.dirty or session.deleted)
        ):
            session.commit()
    finally:
        session.close()


class DatabaseSessionMiddleware:
    """Ends the session get_db opened for the request (end_session), even if the
    request is cancelled."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        slot = scope[_SESSION_KEY] = _SessionSlot()
        try:
            await self.app(scope, receive, send)
        finally:
            if slot.session is not None:
                with anyio.CancelScope(shield=True):
                    await end_session(slot.session)
