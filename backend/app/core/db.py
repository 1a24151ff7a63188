import sqlite3
from collections.abc import AsyncIterator
from contextlib import suppress
from typing import Any

import psycopg
from sqlalchemy import URL, event
from sqlalchemy.exc import DBAPIError, PendingRollbackError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import ORMExecuteState, SessionTransaction
from sqlmodel import Session, select
from sqlmodel.ext.asyncio.session import AsyncSession

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


_WROTE = "app.wrote"


class CommitReadsSession(Session):
    """The app's sessions: close() ends a transaction that only read with COMMIT
    instead of ROLLBACK (the same effect). psycopg forgets its prepared statements
    on every ROLLBACK, so PostgreSQL parsed and planned every query of every
    request anew: its CPU per GET /users/me went from ~200 to ~100 us, 12-20% of
    the request's app and database CPU (in-process A/B, 16 rounds). A transaction
    that wrote anything, flushed or not, is rolled back as before."""

    def close(self) -> None:
        try:
            if (
                self.in_transaction()
                and not self.info.get(_WROTE)
                and not (self.new or self.dirty or self.deleted)
            ):
                # Unless a failed flush or a lost connection ended it: ROLLBACK below.
                with suppress(PendingRollbackError):
                    self.commit()
        finally:
            super().close()


@event.listens_for(CommitReadsSession, "do_orm_execute")
def _note_statement(state: ORMExecuteState) -> None:
    if not state.is_select:
        state.session.info[_WROTE] = True


@event.listens_for(CommitReadsSession, "after_flush")
def _note_flush(session: Session, _context: Any) -> None:
    session.info[_WROTE] = True


@event.listens_for(CommitReadsSession, "after_transaction_end")
def _forget_writes(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the transaction itself, not a savepoint
        session.info.pop(_WROTE, None)


engine = create_engine(settings.SQLALCHEMY_DATABASE_URI)
session_factory = async_sessionmaker(
    engine,
    class_=AsyncSession,
    sync_session_class=CommitReadsSession,
    expire_on_commit=False,
)


async def get_db() -> AsyncIterator[AsyncSession]:
    async with session_factory() as session:
        yield session


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


def mark_written(session: AsyncSession) -> None:
    """Note a write made on the session's connection outside the ORM (a deferred
    job), so that closing the session rolls it back, not commits it, if left
    uncommitted."""
    session.info[_WROTE] = True
