"""The fuzzed live server (scripts/prestart.sh, then gunicorn with two uvicorn
workers over real HTTP), the identities the fuzzer acts as, kept usable whatever
the fuzzed requests do to them, and the run's tally."""

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql
from schemathesis.errors import FailureGroup

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
