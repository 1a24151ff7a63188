"""Fixtures: a fresh test database (never the app's own), migrated by Alembic;
each test runs in a transaction rolled back at its end."""

import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from aiosmtpd.controller import Controller
from alembic import command
from alembic.config import Config
from httpx import ASGITransport, AsyncClient, Client
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

from app import crud, jobs
from app.core import security
from app.core.config import settings
from app.core.db import create_engine, get_db
from app.main import app
from app.models import AuthAttempt, Item, Role, User
from tests import factories

T = TypeVar("T")

BACKEND_DIR = Path(__file__).resolve().parents[1]


def _postgres_admin_dsn(url: URL) -> str:
    admin = url.set(drivername="postgresql", database="postgres")
    return admin.render_as_string(hide_password=False)


def _recreate_postgres_database(url: URL) -> None:
    assert url.database
    with psycopg.connect(_postgres_admin_dsn(url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{url.database}"')


def _drop_postgres_database(url: URL) -> None:
    with psycopg.connect(_postgres_admin_dsn(url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')


def alembic_config(url: URL) -> Config:
    config = Config(str(BACKEND_DIR / "alembic.ini"))
    config.set_main_option(
        "sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%")
    )
    config.attributes["configure_logger"] = False
    return config


def _empty_database(suffix: str, tmp_dir: Path) -> Iterator[URL]:
    """A new, empty database beside the configured one (`<name>_<suffix>`, or a temp
    SQLite file), dropped afterwards. The app's own database is never touched."""
    app_url = settings.SQLALCHEMY_DATABASE_URI
    if app_url.get_backend_name() == "sqlite":
        yield app_url.set(database=str(tmp_dir / f"{suffix}.db"))
        return
    url = app_url.set(database=f"{app_url.database}_{suffix}")
    _recreate_postgres_database(url)
    yield url
    _drop_postgres_database(url)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[URL]:
    yield from _empty_database("test", tmp_path_factory.mktemp("db"))


@pytest.fixture
def scratch_database_url(tmp_path: Path) -> Iterator[URL]:
    """An empty database of its own, for tests of migrations and startup scripts."""
    yield from _empty_database("test_scratch", tmp_path)


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


@asynccontextmanager
async def client_using(
    get_session: Callable[[], AsyncIterator[AsyncSession]],
    *,
    raise_app_exceptions: bool = True,
) -> AsyncIterator[AsyncClient]:
    """An HTTP client on the app whose requests take their session from `get_session`.
    An unhandled error is raised into the test, or with `raise_app_exceptions=False`
    comes back as the bare 500 a real server sends."""
    app.dependency_overrides[get_db] = get_session
    try:
        transport = ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        async with AsyncClient(transport=transport, base_url="http://test") as ac:
            yield ac
    finally:
        app.dependency_overrides.clear()


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
        await session.commit()


@dataclass
class SmtpSink:
    """A real SMTP server on loopback (aiosmtpd) that keeps what it receives."""

    host: str
    port: int
    messages: list[EmailMessage] = field(default_factory=list)
    recipients: list[list[str]] = field(default_factory=list)

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 Message accepted for delivery"


def wait_until(
    probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05
) -> T:
    """Poll `probe` until it returns something other than None or False."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def live_login(client: Client, email: str, password: str) -> dict[str, str]:
    """The Authorization header for a user, from a running server's login route."""
    answer = client.post(
        "/api/v1/login/access-token", data={"username": email, "password": password}
    )
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


async def auth_headers(session: AsyncSession, user: User) -> dict[str, str]:
    """Bearer headers of a new login session of `user` (as after a password login)."""
    user_session, _ = await crud.create_session(
        session=session, user=user, client_address="127.0.0.1", user_agent="tests"
    )
    token = security.create_access_token(user.id, user_session.id)
    return {"Authorization": f"Bearer {token}"}


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
