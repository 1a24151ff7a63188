"""A live server to fuzz: scripts/prestart.sh on a PostgreSQL database of its own
(`<POSTGRES_DB>_fuzz`, dropped afterwards), then gunicorn with two uvicorn workers
over real HTTP; and the identities the fuzzer acts as, kept usable whatever the
fuzzed requests do to them."""

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row
from schemathesis.errors import FailureGroup
from sqlalchemy import URL

from tests.conftest import _empty_database, free_port

BACKEND_DIR = Path(__file__).resolve().parents[2]
API_PREFIX = "/api/v1"
SUPERUSER = ("fuzz-admin@example.com", "fuzz-admin-password")
USER = ("fuzz-user@example.com", "fuzz-user-password")
# Operations that may log an identity out or change its account when they succeed.
ACCOUNT_PATHS = ("/users", "/logout", "/reset-password")


@dataclass
class FuzzRun:
    """What one fuzz test did: cases by status code, the operations it called with
    a token that worked (answered other than 401), and its distinct failures (one
    per operation, kind of failure and status code, with the first report)."""

    name: str
    by_status: dict[int, int] = field(default_factory=dict)
    operations: set[str] = field(default_factory=set)
    with_valid_token: set[str] = field(default_factory=set)
    failures: dict[tuple[str, str, int], str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def cases(self) -> int:
        return sum(self.by_status.values())

    def count(self, operation: str, status_code: int, token_owner: str | None) -> None:
        self.by_status[status_code] = self.by_status.get(status_code, 0) + 1
        self.operations.add(operation)
        if token_owner is not None and status_code != 401:
            self.with_valid_token.add(operation)

    def record(self, operation: str, status_code: int, group: FailureGroup) -> None:
        for failure in group.exceptions:
            key = (operation, f"{failure.code} {failure.title}", status_code)
            self.failures.setdefault(key, str(group))

    def report(self) -> str:
        lines = [f"{len(self.failures)} distinct failures in {self.name}:"]
        for (operation, kind, status), text in sorted(self.failures.items()):
            lines += [f"- {operation} -> {status}: {kind}", text]
        return "\n".join(lines)

    def summary(self) -> str:
        statuses = ", ".join(
            f"{status}: {count}" for status, count in sorted(self.by_status.items())
        )
        notes = "".join(f", {note}" for note in self.notes)
        return f"{self.name}: {self.cases} cases ({statuses}), {len(self.failures)} distinct failures{notes}"


RUNS: list[FuzzRun] = []


@pytest.fixture(scope="session")
def runs() -> list[FuzzRun]:
    return RUNS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RUNS:
        return
    terminalreporter.section("fuzzing")
    for run in RUNS:
        terminalreporter.line(run.summary())
    total = sum(run.cases for run in RUNS)
    operations = set().union(*(run.operations for run in RUNS))
    authenticated = set().union(*(run.with_valid_token for run in RUNS))
    terminalreporter.line(
        f"total: {total} cases; {len(authenticated)} of {len(operations)} "
        "operations exercised with a valid token"
    )
    for run in RUNS:
        if run.failures:
            terminalreporter.line(run.report())


@dataclass
class Server:
    base_url: str
    database: psycopg.Connection[dict[str, Any]]
    log_path: Path

    @property
    def api_url(self) -> str:
        return f"{self.base_url}{API_PREFIX}"

    @property
    def schema_url(self) -> str:
        return f"{self.api_url}/openapi.json"


@pytest.fixture(scope="session")
def fuzz_database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[URL]:
    url: URL
    for url in _empty_database("fuzz", tmp_path_factory.mktemp("fuzz-db")):
        if url.get_backend_name() != "postgresql":
            pytest.skip("the fuzz tests run a multi-worker server on PostgreSQL")
        yield url


@pytest.fixture(scope="session")
def server(
    fuzz_database_url: URL, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    tmp_path = tmp_path_factory.mktemp("fuzz-server")
    port = free_port()
    env = {
        # Mail stays unconfigured (unless the developer's .env configures it):
        # nothing the fuzzer triggers is sent, and test-email answers 503.
        **{k: v for k, v in os.environ.items() if not k.startswith("SMTP_")},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "ENVIRONMENT": "local",  # the /private routes are fuzzed too
        "DOCS_ENABLED": "true",
        "LOG_LEVEL": "WARNING",
        "DATABASE_URL": fuzz_database_url.render_as_string(hide_password=False),
        "FIRST_SUPERUSER": SUPERUSER[0],
        "FIRST_SUPERUSER_PASSWORD": SUPERUSER[1],
        # One key for both workers: a token from one must work on the other.
        "SECRET_KEY": "fuzz-server-test-secret-key-0123456789abcdef",
        # The Supabase exchange configured (legacy secret): it answers 401s, not 501.
        "SUPABASE_JWT_SECRET": "fuzz-supabase-jwt-secret-0123456789abcdef",
        # High limits so the fuzzer meets the handlers, not only 429s (which
        # stay documented wherever they can happen).
        "LOGIN_MAX_FAILURES_PER_ACCOUNT": "1000000",
        "LOGIN_MAX_FAILURES_PER_ADDRESS": "1000000",
        "EMAIL_REQUESTS_PER_ADDRESS": "1000000",
        "EMAIL_REQUESTS_PER_CLIENT": "1000000",
        "EMAIL_REQUESTS_PER_ADDRESS_AND_CLIENT": "1000000",
        "LOGIN_MAX_FAILURES_PER_ACCOUNT_ALL_ADDRESSES": "1000000",
        "SIGNUPS_PER_CLIENT": "1000000",
    }
    env.pop("SUPABASE_URL", None)
    prestart = subprocess.run(
        ["bash", "scripts/prestart.sh"],
        cwd=BACKEND_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert prestart.returncode == 0, prestart.stderr
    command = [
        *("gunicorn", "app.main:app", "-k", "uvicorn_worker.UvicornWorker", "-w", "2"),
        *("-b", f"127.0.0.1:{port}", "--control-socket", str(tmp_path / "g.ctl")),
    ]
    log_path = tmp_path / "gunicorn.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        command, cwd=BACKEND_DIR, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base_url = f"http://127.0.0.1:{port}"
    dsn = fuzz_database_url.set(drivername="postgresql").render_as_string(
        hide_password=False
    )
    try:
        _wait_until_up(f"{base_url}{API_PREFIX}/utils/health-check/", log_path)
        with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as database:
            yield Server(base_url=base_url, database=database, log_path=log_path)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _wait_until_up(url: str, log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    pytest.fail(f"gunicorn did not start: {log_path.read_text()}")


@dataclass
class Identity:
    """A user the fuzzer acts as. A fuzzed request may log it out, change its
    email, password or role, or delete it: after such a request the identity is
    marked stale, and before its next use its row is restored and, if its token
    died, it logs in again. The fuzzer never stops on a broken login."""

    name: str
    email: str
    password: str
    server: Server
    user_id: uuid.UUID
    row: dict[str, Any] = field(default_factory=dict)
    token: str | None = None
    issued: set[str] = field(default_factory=set)
    stale: bool = False
    logins: int = 0
    repairs: int = 0

    def snapshot(self) -> None:
        row = self.server.database.execute(
            "SELECT * FROM users WHERE id = %s", (self.user_id,)
        ).fetchone()
        assert row is not None
        self.row = row

    def access_token(self) -> str:
        if self.stale:
            self._repair()
        if self.token is None:
            self.token = self._login()
        return self.token

    def _repair(self) -> None:
        self.stale = False
        self.repairs += 1
        self._restore_row()
        if self.token is not None and not self._token_works(self.token):
            self.token = None

    def _restore_row(self) -> None:
        database = self.server.database
        with database.transaction():
            # Whoever took the email meanwhile gives it back.
            database.execute(
                "DELETE FROM users WHERE lower(email) = lower(%s) AND id <> %s",
                (self.email, self.user_id),
            )
            columns = list(self.row)
            database.execute(
                sql.SQL(
                    "INSERT INTO users ({columns}) VALUES ({values}) "
                    "ON CONFLICT (id) DO UPDATE SET {updates}"
                ).format(
                    columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
                    values=sql.SQL(", ").join(map(sql.Placeholder, columns)),
                    updates=sql.SQL(", ").join(
                        sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(column))
                        for column in columns
                    ),
                ),
                self.row,
            )

    def _token_works(self, token: str) -> bool:
        response = httpx.get(
            f"{self.server.api_url}/users/me",
            headers={"Authorization": f"Bearer {token}"},
        )
        return response.status_code == 200

    def _login(self) -> str:
        self.logins += 1
        response = httpx.post(
            f"{self.server.api_url}/login/access-token",
            data={"username": self.email, "password": self.password},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        self.issued.add(token)
        return token


@dataclass
class Identities:
    user: Identity
    superuser: Identity

    def all(self) -> tuple[Identity, Identity]:
        return (self.user, self.superuser)

    def owner(self, token: str | None) -> str | None:
        """The name of the identity that was issued `token`, if any."""
        for identity in self.all():
            if token in identity.issued:
                return identity.name
        return None

    def refresh(self, token: str) -> str:
        """The live token of the identity that was issued `token` (a case keeps the
        token it was generated with), or `token` itself when none was."""
        for identity in self.all():
            if token in identity.issued:
                return identity.access_token()
        return token

    def note_response(
        self, method: str, path: str, status_code: int, token: str | None
    ) -> None:
        """Mark stale whoever this request may have changed or logged out: an
        account request that succeeded (a superuser's can change the other
        identity's account too), or a 401 to the identity's own token."""
        changed = (
            method.upper() != "GET"
            and status_code < 300
            and path.removeprefix(API_PREFIX).startswith(ACCOUNT_PATHS)
        )
        for identity in self.all():
            if changed or (status_code == 401 and token == identity.token):
                identity.stale = True


@pytest.fixture(scope="session")
def identities(server: Server) -> Identities:
    created = httpx.post(
        f"{server.api_url}/private/users/",
        json={
            "email": USER[0],
            "password": USER[1],
            "full_name": "Fuzz User",
            "is_verified": True,
        },
    )
    assert created.status_code == 200, created.text
    superuser_row = server.database.execute(
        "SELECT id FROM users WHERE email = %s", (SUPERUSER[0],)
    ).fetchone()
    assert superuser_row is not None
    found = Identities(
        user=Identity(
            "user", *USER, server=server, user_id=uuid.UUID(created.json()["id"])
        ),
        superuser=Identity(
            "superuser", *SUPERUSER, server=server, user_id=superuser_row["id"]
        ),
    )
    for identity in found.all():
        identity.snapshot()
    return found
