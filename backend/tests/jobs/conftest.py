"""Fixtures of the job tests: committed data in the test database (a worker is
another process), real `manage.py worker` processes, an SMTP server that can go
down and come back on the same port (helpers: tests/utils/jobs.py)."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app import jobs
from app.core.config import settings
from app.core.db import CommitReadsSession
from tests.utils.jobs import (
    FRONTEND,
    Mailbox,
    Sessions,
    WorkerProcess,
    libpq_url,
    worker_env,
)


@pytest.fixture
async def sessions(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Sessions]:
    """Sessions that really commit (a worker process must see the rows), with
    jobs queued in the database; every row is deleted afterwards."""
    factory = async_sessionmaker(
        engine,
        class_=AsyncSession,
        sync_session_class=CommitReadsSession,  # the app's
        expire_on_commit=False,
    )
    monkeypatch.setattr(jobs, "in_process", False)
    monkeypatch.setattr(jobs, "sessions", factory)
    yield factory
    async with factory() as session:
        await session.exec(  # type: ignore[call-overload]
            text(
                "TRUNCATE procrastinate_events, procrastinate_periodic_defers,"
                " procrastinate_jobs, procrastinate_workers, users, user_sessions,"
                " refresh_tokens, auth_attempts, items, audit_events CASCADE"
            )
        )
        await session.commit()


@pytest.fixture
async def queue(migrated_database_url: URL) -> AsyncIterator[Any]:
    """procrastinate's app, open on the test database."""
    async with jobs.opened(libpq_url(migrated_database_url)) as app:
        yield app


@pytest.fixture
def mailbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Mailbox]:
    """The SMTP server (down until the test brings it up), with this process's
    settings pointed at it too."""
    box = Mailbox()
    monkeypatch.setattr(settings, "SMTP_HOST", "127.0.0.1")
    monkeypatch.setattr(settings, "SMTP_PORT", box.port)
    monkeypatch.setattr(settings, "SMTP_TLS", False)
    monkeypatch.setattr(settings, "EMAILS_FROM_EMAIL", "noreply@example.com")
    monkeypatch.setattr(settings, "FRONTEND_HOST", FRONTEND)
    yield box
    box.down()


@pytest.fixture
def start_worker(
    migrated_database_url: URL, mailbox: Mailbox, tmp_path: Path
) -> Iterator[Any]:
    """Start worker processes (`start_worker(**env)`); all stopped after the test."""
    workers: list[WorkerProcess] = []

    def start(database_url: URL | None = None, **extra: str) -> WorkerProcess:
        env = worker_env(database_url or migrated_database_url, mailbox, **extra)
        worker = WorkerProcess(
            env,
            tmp_path / f"worker-{len(workers)}.log",
            tmp_path / f"tmp-{len(workers)}",
        )
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
