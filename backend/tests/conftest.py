"""Fixtures: a fresh test database (never the app's own), migrated by Alembic;
each test runs in a transaction rolled back at its end. Helpers are in tests/utils."""

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from alembic import command
from httpx import AsyncClient
from sqlalchemy import URL
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import delete
from sqlmodel.ext.asyncio.session import AsyncSession

# The Supabase routes are mounted only when Supabase is configured: the suite
# runs with a secret of its own (tests point it elsewhere where they need to),
# and tests of the unconfigured app start one without it.
os.environ.setdefault(
    "SUPABASE_JWT_SECRET", "tests-supabase-jwt-secret-0123456789abcdef"
)

from app import jobs
from app.core.config import settings
from app.core.db import create_engine
from app.models import AuditEvent, AuthAttempt, Item, Role, User
from tests.utils import factories
from tests.utils.api import auth_headers, client_using
from tests.utils.database import alembic_config, empty_database
from tests.utils.servers import free_port
from tests.utils.smtp import SmtpSink
from tests.utils.supabase import FakeSupabase, serve_fake_supabase

TESTS_DIR = Path(__file__).parent
# Directories whose tests run real servers, clusters or engines: each gets its
# marker and `slow`, so `-m "not slow"` is the inner loop (see pyproject.toml).
GROUP_MARKERS = {
    "compose": "docker",
    "deploy": "deploy",
    "faults": "faults",
    "fuzz": "fuzz",
    "stack": "stack",
    "swarm": "docker",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        group = GROUP_MARKERS.get(item.path.relative_to(TESTS_DIR).parts[0])
        if group:
            item.add_marker(group)
            item.add_marker("slow")


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[URL]:
    yield from empty_database("test", tmp_path_factory.mktemp("db"))


@pytest.fixture
def scratch_database_url(tmp_path: Path) -> Iterator[URL]:
    """An empty database of its own, for tests of migrations and startup scripts."""
    yield from empty_database("test_scratch", tmp_path)


@pytest.fixture(scope="session")
def migrated_database_url(database_url: URL) -> URL:
    command.upgrade(alembic_config(database_url), "head")
    return database_url


@pytest.fixture(scope="session")
async def engine(migrated_database_url: URL) -> AsyncIterator[AsyncEngine]:
    test_engine = create_engine(migrated_database_url)
    yield test_engine
    await test_engine.dispose()


@pytest.fixture(autouse=True)
def _no_real_email(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's .env must not make tests send mail; the smtp fixtures turn it on."""
    monkeypatch.setattr(settings, "SMTP_HOST", None)
    monkeypatch.setattr(settings, "EMAIL_RETRY_WAIT_SECONDS", 0)


@pytest.fixture
async def db(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[AsyncSession]:
    """A session whose commits become savepoints of one transaction rolled back after the test."""
    async with engine.connect() as connection:
        transaction = await connection.begin()

        def join() -> AsyncSession:
            return AsyncSession(
                bind=connection,
                join_transaction_mode="create_savepoint",
                expire_on_commit=False,
            )

        session = join()
        # Jobs run in process after the response, in this transaction (the
        # queue and its worker are tested in tests/jobs).
        monkeypatch.setattr(jobs, "in_process", True)
        monkeypatch.setattr(jobs, "sessions", join)
        yield session
        await session.close()
        await transaction.rollback()


@pytest.fixture
async def client(db: AsyncSession) -> AsyncIterator[AsyncClient]:
    async def get_test_db() -> AsyncIterator[AsyncSession]:
        yield db

    async with client_using(get_test_db) as ac:
        yield ac


@pytest.fixture
async def committing_client(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[AsyncClient]:
    """A client whose requests get their own sessions and really commit, for concurrency
    tests. Rows it leaves are deleted afterwards."""
    sessions = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
    monkeypatch.setattr(jobs, "in_process", True)
    monkeypatch.setattr(jobs, "sessions", sessions)

    async def get_committing_db() -> AsyncIterator[AsyncSession]:
        async with sessions() as session:
            yield session

    async with client_using(get_committing_db) as ac:
        yield ac
    async with sessions() as session:
        await session.exec(delete(Item))
        await session.exec(delete(User))
        await session.exec(delete(AuthAttempt))
        await session.exec(delete(AuditEvent))
        await session.commit()


@pytest.fixture
def smtp_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpSink]:
    """Plain SMTP on a free loopback port, with the app's settings pointed at it."""
    sink = SmtpSink(host="127.0.0.1", port=free_port())
    controller = Controller(sink, hostname=sink.host, port=sink.port)
    controller.start()
    monkeypatch.setattr(settings, "SMTP_HOST", sink.host)
    monkeypatch.setattr(settings, "SMTP_PORT", sink.port)
    monkeypatch.setattr(settings, "SMTP_TLS", False)
    monkeypatch.setattr(settings, "SMTP_SSL", False)
    monkeypatch.setattr(settings, "SMTP_USER", None)
    monkeypatch.setattr(settings, "SMTP_PASSWORD", None)
    monkeypatch.setattr(settings, "EMAILS_FROM_EMAIL", "noreply@example.com")
    yield sink
    controller.stop()


@pytest.fixture
def fake_supabase(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSupabase]:
    yield from serve_fake_supabase(monkeypatch)


@pytest.fixture
async def user(db: AsyncSession) -> User:
    return await factories.create_user(db)


@pytest.fixture
async def superuser(db: AsyncSession) -> User:
    return await factories.create_user(db, is_superuser=True)


@pytest.fixture
async def admin(db: AsyncSession) -> User:
    return await factories.create_user(db, role=Role.admin)


@pytest.fixture
async def user_headers(db: AsyncSession, user: User) -> dict[str, str]:
    return await auth_headers(db, user)


@pytest.fixture
async def superuser_headers(db: AsyncSession, superuser: User) -> dict[str, str]:
    return await auth_headers(db, superuser)


@pytest.fixture
async def admin_headers(db: AsyncSession, admin: User) -> dict[str, str]:
    return await auth_headers(db, admin)


@pytest.fixture
async def item(db: AsyncSession, user: User) -> Item:
    return await factories.create_item(db, owner=user)
